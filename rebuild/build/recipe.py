"""Recipes: the declarative, pinned description of one build (design.md, "Recipe format v1").

`load_recipe(path)` reads the file; `parse_recipe(mapping, source=…)` is pure: it validates
with pydantic models that refuse unknown keys, and every error names the file, the key and
the fix. Nothing here runs anything.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from rebuild.build.limits import DEFAULT as DEFAULT_LIMITS
from rebuild.build.limits import Limits, parse_size
from rebuild.build.variations import BY_NAME, controlling_variation, select_variations
from rebuild.errors import UsageError

NAME_RE = r"^[a-z0-9][a-z0-9._-]*$"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_RE = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9._/-]*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]*))?"
    r"@(?P<digest>sha256:[0-9a-f]{64})$"
)
MEMORY_RE = r"^[1-9][0-9]*[kmg]?$"
MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Docker refuses a memory limit under 6 MiB; above 1 TiB is a typo, not a build.
MIN_MEMORY, MAX_MEMORY = 6 << 20, 1 << 40
MAX_TIMEOUT = 7 * 24 * 3600  # a week: longer is a typo, and overflows the engine's wait
# 9999-12-31T23:59:59Z: the last instant a timestamp in provenance or a tar header can name.
MAX_EPOCH = 253402300799
# Set by rebuild for every run (the sandbox, the clock, a python_lock's venv); a recipe may
# never set them. Every libfaketime setting is reserved: FAKETIME_ONLY_CMDS, say, would stop
# the time variation for most of the build. Variables a variation sets (TZ, LANG, LC_*, …) a
# recipe may set only with that variation off (rebuild.build.variations.ENV_VARIATIONS).
RESERVED_ENV = frozenset({"PATH", "HOME", "SOURCE_DATE_EPOCH", "LD_PRELOAD", "LOCPATH",
                          "VIRTUAL_ENV", "DONT_FAKE_MONOTONIC", "NO_FAKE_STAT"})
RESERVED_ENV_PREFIXES = ("FAKETIME",)


def is_reserved_env(key: str) -> bool:
    return key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecipeInfo(_Strict):
    name: str = Field(pattern=NAME_RE)
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    requirements: tuple[str, ...] = ()
    change: str | None = None


class Source(_Strict):
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    git: str | None = None
    rev: str | None = None
    digest: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        kinds = [k for k in ("path", "url", "git") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("exactly one of path, url or git is required "
                             f"(found {', '.join(kinds) or 'none'})")
        if self.url is not None and self.sha256 is None:
            raise ValueError("a url source needs sha256 = \"<hex>\": the hash of the file, "
                             "so that a changed download is refused")
        if self.sha256 is not None and not HEX64.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if self.git is not None and (self.rev is None or not re.fullmatch(r"[0-9a-f]{40}",
                                                                             self.rev)):
            raise ValueError("a git source needs rev = \"<40-hex commit id>\" "
                             "(a branch or tag can move; a commit cannot)")
        if self.digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", self.digest):
            raise ValueError("digest must look like sha256:<64 hex>; `rebuild lock` writes it")
        return self

    @property
    def kind(self) -> Literal["path", "url", "git"]:
        if self.path is not None:
            return "path"
        return "url" if self.url is not None else "git"


class Environment(_Strict):
    image: str
    python_lock: str | None = None
    # Inside the source tree (where `npm ci` reads it), not beside the recipe: the lock the
    # build installs from is the one fetch downloads for.
    npm_lock: str | None = None
    source_date_epoch: int | Literal["git"]

    @field_validator("npm_lock")
    @classmethod
    def _in_source(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = PurePosixPath(value).parts
        if not parts or value.startswith("/") or ".." in parts or "\\" in value:
            raise ValueError(f"npm_lock {value!r} must be a path inside the source tree, "
                             "relative to its root, e.g. npm_lock = \"package-lock.json\"")
        return value

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if not IMAGE_RE.match(value):
            raise ValueError(
                f"image {value!r} is not pinned by digest; write name:tag@sha256:<hex> "
                "(`rebuild image build images/NAME.toml` prints it)")
        return value

    @field_validator("source_date_epoch", mode="before")
    @classmethod
    def _epoch(cls, value: object) -> object:
        if value == "git":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"must be a non-negative integer (seconds since 1970) or \"git\", "
                             f"not {value!r}; write e.g. source_date_epoch = 1700000000")
        if value > MAX_EPOCH:
            raise ValueError(f"{value} is after the year 9999; write the seconds since 1970 "
                             "of the source's last change, e.g. source_date_epoch = 1700000000")
        return value


class Build(_Strict):
    command: tuple[str, ...] = Field(min_length=1)
    outputs: tuple[str, ...] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    timeout: StrictInt = Field(default=600, gt=0)
    memory: str = Field(default="2g", pattern=MEMORY_RE)

    @field_validator("outputs")
    @classmethod
    def _inside_out(cls, globs: tuple[str, ...]) -> tuple[str, ...]:
        for glob in globs:
            parts = PurePosixPath(glob).parts
            if not glob or glob.startswith("/") or ".." in parts:
                raise ValueError(f"output {glob!r} escapes /out; write a glob relative to "
                                 "/out, such as \"usr/bin/hello\" or \"*.tar.gz\"")
        return globs

    @field_validator("timeout")
    @classmethod
    def _bounded_timeout(cls, timeout: int) -> int:
        if timeout > MAX_TIMEOUT:
            raise ValueError(f"{timeout} seconds is more than a week ({MAX_TIMEOUT}); write "
                             "the build's real limit in seconds, e.g. timeout = 3600")
        return timeout

    @field_validator("memory")
    @classmethod
    def _bounded_memory(cls, memory: str) -> str:
        if not MIN_MEMORY <= memory_bytes(memory) <= MAX_MEMORY:
            raise ValueError(f"memory = {memory!r} is outside 6m to 1024g (Docker needs at "
                             "least 6 MiB); write e.g. memory = \"2g\"")
        return memory

    @field_validator("env")
    @classmethod
    def _not_reserved(cls, env: dict[str, str]) -> dict[str, str]:
        taken = sorted(k for k in env if is_reserved_env(k))
        if taken:
            raise ValueError(f"{', '.join(taken)} is set by rebuild for every run; remove it")
        for key, value in env.items():
            # What execve cannot carry: the key would be cut at "=" or NUL, the value at NUL.
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"{key!r} = {value!r}: a variable's name must be non-empty "
                                 "without \"=\" or NUL, and its value without NUL; rename or "
                                 "remove it")
        return env


class Test(_Strict):
    command: tuple[str, ...] = Field(min_length=1)


ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"


class ChangeRecord(_Strict):
    """`[change]`: what this release changes and its risk (design.md Part 2, "Change records").
    `risk` names a tier of the policy a verifier brings; requirements and hazards are the ids
    test cases carry (JUnit `<property name="requirement" value="REQ-12"/>`)."""

    id: str = Field(pattern=ID_RE)
    risk: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    requirements: tuple[str, ...] = ()
    hazards: tuple[str, ...] = ()
    summary: str = ""

    @field_validator("requirements", "hazards")
    @classmethod
    def _ids(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        bad = [i for i in ids if not re.fullmatch(ID_RE, i)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an id; write ids such as \"REQ-12\" or "
                             "\"HAZ-3\" (letters, digits, . _ : / -)")
        if len(set(ids)) != len(ids):
            raise ValueError("an id is listed twice; list each once")
        return ids


class TestSuite(_Strict):
    """One `[[test]]` suite: a command that writes JUnit XML to /results/<results>."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    command: tuple[str, ...] = Field(min_length=1)
    results: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _test_form(value: Any) -> str:
    return "suites" if isinstance(value, (list, tuple)) else "table"


# Which form a `test` key has decides which model reads it, so an error names that form's keys.
TestTable = Annotated[Annotated[Test, Tag("table")] | Annotated[tuple[TestSuite, ...],
                                                                 Tag("suites")],
                      Discriminator(_test_form)]
_FORM_TAGS = ("table", "suites")


class Check(_Strict):
    vary: tuple[str, ...] = ("all",)

    @field_validator("vary")
    @classmethod
    def _known(cls, vary: tuple[str, ...]) -> tuple[str, ...]:
        try:
            chosen = select_variations(vary)
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("[check] vary: ")) from None
        if not chosen:
            # Two identical runs agreeing proves nothing a verdict of "reproducible" claims.
            raise ValueError(f"{list(vary)} varies nothing, so run b would be a copy of run a "
                             "and the twin build would prove nothing; name at least one "
                             "variation (vary = [\"all\"] is the default)")
        return vary


class LimitsTable(_Strict):
    """`[limits]`: what the build and its downloads may cost (rebuild.limits has defaults)."""

    max_outputs: StrictInt = Field(default=DEFAULT_LIMITS.max_outputs, gt=0)
    max_output_size: int | str = DEFAULT_LIMITS.max_output_size
    max_log_size: int | str = DEFAULT_LIMITS.max_log_size
    max_download_size: int | str = DEFAULT_LIMITS.max_download_size
    download_timeout: StrictInt = Field(default=DEFAULT_LIMITS.download_timeout, gt=0)
    diffoscope_memory: int | str = DEFAULT_LIMITS.diffoscope_memory

    @field_validator("max_output_size", "max_log_size", "max_download_size",
                     "diffoscope_memory", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        try:
            return parse_size(value, what="size")
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("size: ")) from None

    def resolve(self) -> Limits:
        return Limits(**{name: int(getattr(self, name)) for name in Limits.__dataclass_fields__})


class ImageOutput(_Strict):
    """`[image_output]`: the outputs as an OCI image (rebuild.build.output_image)."""

    # "scratch" (nothing under the outputs) or "environment" (the pinned [environment]
    # image); the pinned reference itself is accepted as a synonym of "environment".
    base: str
    path: str = "/"  # where the outputs go: output NAME is PATH/NAME in the image
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("path", "workdir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or ".." in
                                  PurePosixPath(value).parts or "\0" in value):
            raise ValueError(f"{value!r} must be an absolute path in the image without "
                             "\"..\", e.g. \"/app\"")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"{key!r} = {value!r}: a variable's name must be non-empty "
                                 "without \"=\" or NUL, and its value without NUL")
        return env


class Upstream(_Strict):
    """`[upstream]`: the artifact its maintainers published, which `rebuild compare-upstream`
    fetches (hash-verified) and compares bit for bit with the output of the same name."""

    wheel: str
    sha256: str

    @field_validator("wheel")
    @classmethod
    def _address(cls, value: str) -> str:
        name = value.rsplit("/", 1)[-1]
        if not re.match(r"^https?://", value) or not name.endswith(".whl"):
            raise ValueError(f"{value!r} is not the http(s) address of a .whl file; write the "
                             "published wheel's url (`rebuild recipe pypi` writes it)")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not HEX64.match(value):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value

    @property
    def filename(self) -> str:
        """The output this artifact is compared with: the url's last segment."""
        return self.wheel.rsplit("/", 1)[-1]


class Recipe(_Strict):
    recipe: RecipeInfo
    source: Source
    environment: Environment
    build: Build
    # `[test]` (one command, pass or fail) or `[[test]]` (named suites with JUnit results).
    test: TestTable | None = None
    change: ChangeRecord | None = None
    check: Check = Field(default_factory=Check)
    limits: LimitsTable | None = None
    image_output: ImageOutput | None = None
    upstream: Upstream | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A recipe without [limits] or [upstream] is recorded (provenance) as it was before
        # those tables existed.
        data: dict[str, Any] = handler(self)
        # Likewise a recipe without [change], [image_output] or [upstream].
        for optional in ("limits", "change", "image_output", "upstream"):
            if getattr(self, optional) is None:
                data.pop(optional, None)
        return data

    @model_validator(mode="after")
    def _git_epoch(self) -> Recipe:
        if self.environment.source_date_epoch == "git" and self.source.kind != "git":
            raise ValueError("source_date_epoch = \"git\" needs a git source; "
                             "write an integer instead")
        image = self.image_output
        if image is not None and image.base not in ("scratch", "environment",
                                                    self.environment.image):
            raise ValueError(f"[image_output] base = {image.base!r}: write \"scratch\" (the "
                             "outputs alone) or \"environment\" (on the pinned [environment] "
                             "image); no other image is an input of the build")
        names = [suite.name for suite in self.suites]
        if len(set(names)) != len(names):
            raise ValueError("two [[test]] suites share a name; give each its own")
        if isinstance(self.test, tuple) and not self.test:
            raise ValueError("[[test]] lists no suite; add one or remove the key")
        return self

    @property
    def suites(self) -> tuple[TestSuite, ...]:
        """The `[[test]]` suites (none for a recipe with a single `[test]` or no test)."""
        return self.test if isinstance(self.test, tuple) else ()

    @property
    def release(self) -> str:
        return f"{self.recipe.name}@{self.recipe.version}"

    @property
    def bounds(self) -> Limits:
        """The build's limits: the recipe's [limits] over the defaults."""
        return (self.limits or LimitsTable()).resolve()

    @property
    def variations(self) -> tuple[str, ...]:
        return select_variations(self.check.vary)


@dataclass(frozen=True)
class LoadedRecipe:
    """A recipe with where it came from: relative paths resolve against `path.parent`."""

    path: Path
    text: bytes
    recipe: Recipe

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.text).hexdigest()

    def resolve(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()


def memory_bytes(memory: str) -> int:
    """`"2g"` -> 2147483648 (the units Docker's --memory takes)."""
    unit = memory[-1] if memory[-1] in MEMORY_UNITS else ""
    return int(memory.removesuffix(unit)) * MEMORY_UNITS[unit]


def load_recipe(path: Path) -> LoadedRecipe:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the recipe ({exc.strerror}); "
                         "pass the path of a recipes/NAME.toml file") from None
    data = parse_toml(text, str(path))
    return LoadedRecipe(path.resolve(), text, parse_recipe(data, source=str(path)))


def parse_toml(text: bytes, source: str) -> dict[str, Any]:
    """Parse a TOML file rebuild reads (recipe, policy, image definition); any problem is a
    usage error naming the file."""
    try:
        return tomllib.loads(text.decode())
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (byte {exc.start}); save the file as "
                         "UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML ({exc}); fix the syntax") from None
    except RecursionError:
        raise UsageError(f"{source}: not valid TOML (nested too deeply to read); write "
                         "the tables and arrays rebuild's format describes") from None


def parse_recipe(data: dict[str, Any], *, source: str = "<recipe>") -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, Recipe, source)) from None
    _refuse_cancelled_variations(recipe, source)
    return recipe


def _refuse_cancelled_variations(recipe: Recipe, source: str) -> None:
    """A [build] env key that an enabled variation sets would make run b run without that
    variation while the console, the record and `show` said it was varied: refuse it, and
    say how to turn the variation off instead (then the record says so)."""
    enabled = set(recipe.variations)
    lines = []
    for key in sorted(recipe.build.env):
        name = controlling_variation(key)
        if name in enabled:
            lines.append(
                f"{source}: build.env.{key}: {key} belongs to the {name} variation (run b: "
                f"{BY_NAME[name].shown}); set here, it would cancel that variation (or be "
                f"silently overridden) while the record said it ran; remove {key}, or turn "
                f"the variation off: "
                f"[check] vary = [\"all\", \"-{name}\"]")
    if lines:
        raise UsageError("\n".join(lines))


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: file, key, what is wrong and the fix."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p not in _FORM_TAGS]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            lines.append(f"{source}: unknown key {key!r}; {hint}")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing key {key!r}; add it (see the recipe format in "
                         "README.md)")
        else:
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for i, part in enumerate(loc):
        if part.isdigit():
            continue  # an item of a list of tables ([[test]])
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        candidates = _models_in(annotation)
        if not candidates:
            return []
        # A list of tables is the last form listed (`test`: [test], then [[test]]).
        listed = i + 1 < len(loc) and loc[i + 1].isdigit()
        model = candidates[-1] if listed else candidates[0]
    return sorted(model.model_fields)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's type names, through unions, tuples and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found += _models_in(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and not getattr(annotation, "__args__", ()):
        found += _models_in(origin)
    return found


def parse_image_reference(ref: str) -> tuple[str, str | None, str]:
    """`name:tag@sha256:<hex>` -> (name, tag, digest)."""
    match = IMAGE_RE.match(ref)
    if not match:
        raise UsageError(f"image {ref!r} is not pinned by digest; write name:tag@sha256:<hex>")
    return match["repo"], match["tag"], match["digest"]
