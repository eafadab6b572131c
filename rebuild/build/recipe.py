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
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from rebuild.errors import UsageError
from rebuild.build.variations import select_variations

NAME_RE = r"^[a-z0-9][a-z0-9._-]*$"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
IMAGE_RE = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9._/-]*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]*))?"
    r"@(?P<digest>sha256:[0-9a-f]{64})$"
)
MEMORY_RE = r"^[1-9][0-9]*[kmg]?$"
# Set by rebuild itself; a recipe may not override them (TZ, LANG and LC_ALL it may).
RESERVED_ENV = frozenset({"PATH", "HOME", "SOURCE_DATE_EPOCH", "LD_PRELOAD", "LOCPATH",
                          "FAKETIME", "FAKETIME_FMT",
                          "FAKETIME_DONT_FAKE_MONOTONIC"})


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
    source_date_epoch: int | Literal["git"]

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

    @field_validator("env")
    @classmethod
    def _not_reserved(cls, env: dict[str, str]) -> dict[str, str]:
        taken = sorted(RESERVED_ENV & env.keys())
        if taken:
            raise ValueError(f"{', '.join(taken)} is set by rebuild for every run; remove it")
        return env


class Test(_Strict):
    command: tuple[str, ...] = Field(min_length=1)


class Check(_Strict):
    vary: tuple[str, ...] = ("all",)

    @field_validator("vary")
    @classmethod
    def _known(cls, vary: tuple[str, ...]) -> tuple[str, ...]:
        try:
            select_variations(vary)
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("[check] vary: ")) from None
        return vary


class Recipe(_Strict):
    recipe: RecipeInfo
    source: Source
    environment: Environment
    build: Build
    test: Test | None = None
    check: Check = Field(default_factory=Check)

    @model_validator(mode="after")
    def _git_epoch(self) -> Recipe:
        if self.environment.source_date_epoch == "git" and self.source.kind != "git":
            raise ValueError("source_date_epoch = \"git\" needs a git source; "
                             "write an integer instead")
        return self

    @property
    def release(self) -> str:
        return f"{self.recipe.name}@{self.recipe.version}"

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


def load_recipe(path: Path) -> LoadedRecipe:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the recipe ({exc.strerror}); "
                         "pass the path of a recipes/NAME.toml file") from None
    try:
        data = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    return LoadedRecipe(path.resolve(), text, parse_recipe(data, source=str(path)))


def parse_recipe(data: dict[str, Any], *, source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, Recipe, source)) from None


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: file, key, what is wrong and the fix."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
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
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        candidates = [a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        model = candidates[0]
    return sorted(model.model_fields)


def parse_image_reference(ref: str) -> tuple[str, str | None, str]:
    """`name:tag@sha256:<hex>` -> (name, tag, digest)."""
    match = IMAGE_RE.match(ref)
    if not match:
        raise UsageError(f"image {ref!r} is not pinned by digest; write name:tag@sha256:<hex>")
    return match["repo"], match["tag"], match["digest"]
