"""PyPI recipes: infer, from a published release, how its maintainers built its wheel.

`rebuild recipe pypi NAME==VERSION` reads what PyPI publishes for one release: the sdist and
the pure-Python wheel (both downloaded through `fetch`, hash-verified against PyPI's sha256,
kept in the store), the wheel's `WHEEL` (which backend, at which version, wrote it) and
`METADATA`, and the sdist's members. From them it writes a recipe that rebuilds the wheel from
the sdist offline, a `NAME.in` whose build backend is pinned at the version the wheel names
(compiled by `rebuild lock` into the hashed `NAME.lock.txt`), and `[upstream]`, the published
wheel, which `rebuild compare-upstream` compares bit for bit with the rebuilt one.

The per-backend rules (docs/pypi.md) are data (`BACKENDS`) and the inference is pure
(`infer_recipe`): only `recipe_for_release` does I/O. What cannot be inferred (no sdist, no
pure wheel, a backend without rules, a compiled extension) is a usage error that says why.
"""

from __future__ import annotations

import json
import re
import tarfile
import textwrap
import tomllib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any

import tomlkit

from rebuild.errors import UsageError
from rebuild.inputs.fetch import fetch_document, fetch_url, normalize_name
from rebuild.inputs.lock import latest_image, lock_recipe
from rebuild.store.layout import Store

Log = Callable[[str], None]

PYPI = "https://pypi.org"
DEFAULT_IMAGE = "rebuild/debian-c:bookworm"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
# What writes the wheel with --no-isolation: the backend comes from the lock, nothing else.
BUILD_FRONTEND = "build"
# flit_core without SOURCE_DATE_EPOCH stamps the files it generates (dist-info) with this
# instant, and every other file with its mtime in local time (zipfile.ZipInfo.from_file).
FLIT_UNSET_EPOCH = (2016, 1, 1, 0, 0, 0)
# hatchling without SOURCE_DATE_EPOCH uses this instant for every member (2020-02-02).
HATCHLING_DEFAULT_EPOCH = 1580601600
# pip and build's own legacy default when an sdist has no pyproject.toml (PEP 517, PEP 518).
LEGACY_REQUIRES = ("setuptools>=40.8.0", "wheel")


@dataclass(frozen=True)
class Backend:
    """How one build backend reproduces a wheel: which package its `Generator` line names,
    and the environment the published wheels show it was run with."""

    name: str  # as the WHEEL Generator line names it
    package: str  # the distribution to pin at that version
    module: str  # what the sdist's build-backend must be (a prefix)


BACKENDS: tuple[Backend, ...] = (
    Backend("flit", "flit-core", "flit_core"),
    Backend("hatchling", "hatchling", "hatchling"),
    Backend("setuptools", "setuptools", "setuptools"),
    Backend("bdist_wheel", "wheel", "setuptools"),
    Backend("poetry-core", "poetry-core", "poetry"),
    Backend("pdm-backend", "pdm-backend", "pdm"),
)


@dataclass(frozen=True)
class PublishedFile:
    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Published:
    """One release's files on PyPI: its sdist and its pure-Python wheel."""

    name: str
    version: str
    sdist: PublishedFile
    wheel: PublishedFile


@dataclass(frozen=True)
class WheelFacts:
    generator: str  # the WHEEL file's Generator line
    purelib: bool
    tags: tuple[str, ...]
    name: str  # METADATA Name
    version: str  # METADATA Version
    generated_time: tuple[int, ...]  # date_time of the dist-info WHEEL member


@dataclass(frozen=True)
class SdistFacts:
    epoch: int  # the newest member mtime (whole seconds)
    build_requires: tuple[str, ...]
    build_backend: str | None


@dataclass(frozen=True)
class Inference:
    """What the recipe says, and why (the reasons are written into the recipe as comments)."""

    recipe_name: str
    backend: str
    backend_pin: str  # e.g. "flit-core==3.9.0"
    requirements: tuple[str, ...]  # the .in file's lines
    source_date_epoch: int
    unset_epoch: bool  # the backend ran without SOURCE_DATE_EPOCH
    env: Mapping[str, str]
    vary: tuple[str, ...]
    command: tuple[str, ...]
    reasons: tuple[str, ...]


def parse_spec(spec: str) -> tuple[str, str]:
    """`NAME==VERSION` -> (name, version)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)"
                         r"\s*", spec)
    if match is None:
        raise UsageError(f"{spec!r}: name one release as NAME==VERSION, e.g. idna==3.10")
    return match[1], match[2]


def _is_pure_wheel(filename: str) -> bool:
    return filename.endswith(".whl") and filename.removesuffix(".whl").endswith("-none-any")


def pick_files(name: str, version: str, files: Sequence[Mapping[str, Any]]) -> Published:
    """The sdist and the pure wheel among a release's files (PyPI's JSON, either API)."""
    project = normalize_name(name).replace("-", "_")

    def ours(filename: str) -> bool:
        stem = normalize_name(filename).replace("-", "_")
        return stem.startswith(f"{project}_{normalize_name(version)}_".replace("-", "_"))

    def published(entry: Mapping[str, Any]) -> PublishedFile:
        digests = entry.get("digests") or entry.get("hashes") or {}
        return PublishedFile(str(entry["filename"]), str(entry["url"]), str(digests["sha256"]))

    mine = [f for f in files if ours(str(f.get("filename", ""))) and not f.get("yanked")]
    sdists = [f for f in mine if str(f["filename"]).endswith((".tar.gz", ".zip"))]
    wheels = [f for f in mine if str(f["filename"]).endswith(".whl")]
    pure = [f for f in wheels if _is_pure_wheel(str(f["filename"]))]
    if not mine:
        raise UsageError(f"PyPI lists no files for {name} {version}; check the name and the "
                         "version (`pip index versions NAME`)")
    if not sdists:
        raise UsageError(f"{name} {version} has no sdist on PyPI: there is no published source "
                         "to rebuild the wheel from")
    if not pure:
        names = sorted(str(f["filename"]) for f in wheels)
        more = f" and {len(names) - 2} more" if len(names) > 2 else ""
        what = (f"only platform wheels ({', '.join(names[:2])}{more}): a compiled extension"
                if wheels else "no wheel")
        raise UsageError(f"{name} {version} has {what}; `rebuild recipe pypi` rebuilds "
                         "pure-Python wheels (…-none-any.whl) only")
    sdist = sorted(sdists, key=lambda f: not str(f["filename"]).endswith(".tar.gz"))[0]
    return Published(name, version, published(sdist), published(sorted(
        pure, key=lambda f: str(f["filename"]))[0]))


def read_wheel(path: Path) -> WheelFacts:
    try:
        with zipfile.ZipFile(path) as wheel:
            infos = {PurePosixPath(i.filename): i for i in wheel.infolist()}
            dist_info = [p for p in infos if len(p.parts) == 2 and p.parent.name.endswith(
                ".dist-info") and p.name in ("WHEEL", "METADATA")]
            found = {p.name: p for p in dist_info}
            if set(found) != {"WHEEL", "METADATA"}:
                raise UsageError(f"{path.name}: no .dist-info/WHEEL and METADATA in the wheel")
            text = {n: wheel.read(str(p)).decode("utf-8", "replace") for n, p in found.items()}
            generated = infos[found["WHEEL"]].date_time
    except (zipfile.BadZipFile, OSError) as exc:
        raise UsageError(f"{path.name}: not a readable wheel ({exc})") from None
    headers = HeaderParser().parsestr(text["WHEEL"])
    metadata = HeaderParser().parsestr(text["METADATA"])
    return WheelFacts(generator=str(headers.get("Generator", "")).strip(),
                      purelib=str(headers.get("Root-Is-Purelib", "")).strip().lower() == "true",
                      tags=tuple(str(t).strip() for t in headers.get_all("Tag") or ()),
                      name=str(metadata.get("Name", "")).strip(),
                      version=str(metadata.get("Version", "")).strip(),
                      generated_time=tuple(generated))


def read_sdist(path: Path) -> SdistFacts:
    """The sdist's newest member mtime, its declared build requirements and backend."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            top = {m.name.split("/", 1)[0] for m in members}
            project = next((m for m in members if len(PurePosixPath(m.name).parts) == 2
                            and m.name.endswith("/pyproject.toml") and m.isfile()), None)
            pyproject = (tar.extractfile(project).read()  # type: ignore[union-attr]
                         if project is not None and len(top) == 1 else None)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UsageError(f"{path.name}: not a readable sdist ({exc}); `rebuild recipe pypi` "
                         "reads .tar.gz sdists") from None
    if not members:
        raise UsageError(f"{path.name}: the sdist is empty")
    requires: tuple[str, ...] = LEGACY_REQUIRES
    backend = None
    if pyproject is not None:
        try:
            system = tomllib.loads(pyproject.decode()).get("build-system", {})
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{path.name}: its pyproject.toml is not valid TOML ({exc})") \
                from None
        requires = tuple(str(r) for r in system.get("requires", LEGACY_REQUIRES))
        backend = system.get("build-backend")
    return SdistFacts(epoch=int(max(m.mtime for m in members)), build_requires=requires,
                      build_backend=None if backend is None else str(backend))


def parse_generator(generator: str) -> tuple[Backend, str]:
    """`flit 3.9.0`, `hatchling 1.25.0`, `setuptools (75.1.0)`, `bdist_wheel (0.44.0)`."""
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s+\(?([0-9][A-Za-z0-9.+!-]*)\)?", generator)
    if match is None:
        raise UsageError(f"the wheel's WHEEL file names its generator as {generator!r}, which "
                         "says no backend and version; the recipe cannot be inferred")
    for backend in BACKENDS:
        if backend.name == match[1].lower():
            return backend, match[2]
    known = ", ".join(b.name for b in BACKENDS)
    raise UsageError(f"the wheel was written by {generator!r}, a backend `rebuild recipe pypi` "
                     f"has no rules for (known: {known}); write the recipe by hand "
                     "(docs/pypi.md says what each rule does)")


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return normalize_name(match[1]) if match else ""


def infer_recipe(published: Published, wheel: WheelFacts, sdist: SdistFacts) -> Inference:
    """The recipe's build, from what PyPI publishes (pure: every rule is in docs/pypi.md)."""
    name = published.name
    if not wheel.purelib or not all(t.endswith("-none-any") for t in wheel.tags):
        raise UsageError(f"{published.wheel.filename}: Root-Is-Purelib is not true or its tags "
                         f"({', '.join(wheel.tags)}) are not pure: a compiled extension")
    if normalize_name(wheel.name) != normalize_name(name) or wheel.version != published.version:
        raise UsageError(f"{published.wheel.filename}: its METADATA names {wheel.name} "
                         f"{wheel.version}, not {name} {published.version}")
    backend, version = parse_generator(wheel.generator)
    if sdist.build_backend is not None and not sdist.build_backend.startswith(backend.module):
        raise UsageError(f"{published.sdist.filename} builds with {sdist.build_backend!r}, but "
                         f"the published wheel was written by {wheel.generator!r}: the wheel "
                         "was not built from this sdist's configuration; the recipe cannot be "
                         "inferred")
    pin = f"{backend.package}=={version}"
    requires = [r for r in sdist.build_requires
                if _requirement_name(r) != normalize_name(backend.package)]
    requirements = (BUILD_FRONTEND, pin, *requires)
    reasons = [f"the published wheel's WHEEL names {wheel.generator!r}: {pin} in the lock",
               f"SOURCE_DATE_EPOCH = the sdist's newest member mtime ({sdist.epoch})"]
    epoch, unset = sdist.epoch, False
    env: dict[str, str] = {}
    vary: tuple[str, ...] = ("all",)
    if backend.name == "flit" and wheel.generated_time == FLIT_UNSET_EPOCH:
        # flit_core without SOURCE_DATE_EPOCH: files keep their mtimes (the sdist's, which
        # rebuild's source tar gives every file), in local time; so TZ must be the
        # maintainer's (UTC, as the published wheel's times show) in both runs.
        unset, env, vary = True, {"TZ": "UTC"}, ("all", "-timezone")
        reasons.append("the wheel's dist-info is dated 2016-01-01: flit ran without "
                       "SOURCE_DATE_EPOCH, stamping files with their mtimes in local time; "
                       "so the build unsets it and sets TZ=UTC (the timezone variation off)")
    elif backend.name == "hatchling" and wheel.generated_time[:3] == (2020, 2, 2):
        epoch = HATCHLING_DEFAULT_EPOCH
        reasons.append("the wheel is dated 2020-02-02: hatchling ran without "
                       "SOURCE_DATE_EPOCH and used its default instant")
    build = "python -m build --wheel --no-isolation --outdir /out ."
    if unset:
        build = "env -u SOURCE_DATE_EPOCH " + build
    if backend.package in ("setuptools", "wheel"):
        # setuptools copies the package into build/lib under the process's umask and zips
        # the copies with their modes: a umask of 0002 gives rw-rw-r-- members.
        build = "umask 022 && " + build
        reasons.append("setuptools records each member's mode as its build/lib copy has it, "
                       "which follows the umask: the build sets umask 022")
    # The wheel's own mode: left to the umask, it differs between runs.
    command = ("sh", "-c", f"{build} && chmod 0644 /out/*.whl")
    return Inference(recipe_name=normalize_name(name), backend=backend.name,
                     backend_pin=pin, requirements=requirements, source_date_epoch=epoch,
                     unset_epoch=unset, env=env, vary=vary, command=command,
                     reasons=tuple(reasons))


def render_recipe(published: Published, inference: Inference, image: str) -> str:
    """The recipe's TOML (its source digest is left to `rebuild lock`)."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"{published.name} {published.version}: the published wheel, "
                            "rebuilt from its sdist (written by `rebuild recipe pypi`)."))
    for reason in inference.reasons:
        for line in textwrap.wrap(reason, 96, initial_indent="- ", subsequent_indent="  "):
            doc.add(tomlkit.comment(line))
    doc.add(tomlkit.nl())
    recipe = tomlkit.table()
    recipe["name"] = inference.recipe_name
    recipe["version"] = published.version
    doc["recipe"] = recipe
    source = tomlkit.table()
    source["url"] = published.sdist.url
    source["sha256"] = published.sdist.sha256
    doc["source"] = source
    environment = tomlkit.table()
    environment["image"] = image
    environment["python_lock"] = f"{inference.recipe_name}.lock.txt"
    environment["source_date_epoch"] = inference.source_date_epoch
    doc["environment"] = environment
    build = tomlkit.table()
    build["command"] = list(inference.command)
    build["outputs"] = [published.wheel.filename]
    if inference.env:
        build["env"] = dict(inference.env)
    build["timeout"] = 600
    build["memory"] = "1g"
    doc["build"] = build
    check = tomlkit.table()
    check["vary"] = list(inference.vary)
    doc["check"] = check
    upstream = tomlkit.table()
    upstream["wheel"] = published.wheel.url
    upstream["sha256"] = published.wheel.sha256
    doc["upstream"] = upstream
    return tomlkit.dumps(doc)


def render_requirements(published: Published, inference: Inference) -> str:
    return (f"# The build requirements of {published.name} {published.version} (its sdist's "
            "pyproject.toml), the backend\n# pinned at the version that wrote the published "
            "wheel; `rebuild lock` compiles this file.\n"
            + "".join(f"{line}\n" for line in inference.requirements))


# -- I/O ------------------------------------------------------------------------------------


def release_files(name: str, version: str, *, index: str = PYPI) -> list[dict[str, Any]]:
    """A release's files: PyPI's JSON API, or its simple index (PEP 691) where the former is
    not served."""
    data = fetch_document(f"{index}/pypi/{name}/{version}/json")
    if data is not None:
        return list(_json(data, name).get("urls", []))
    data = fetch_document(f"{index}/simple/{normalize_name(name)}/", accept=SIMPLE_JSON)
    if data is None:
        raise UsageError(f"PyPI has no project {name!r}; check the name")
    return list(_json(data, name).get("files", []))


def _json(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UsageError(f"PyPI's answer for {name} is not a JSON object")
    return value


@dataclass(frozen=True)
class WrittenRecipe:
    recipe: Path
    requirements: Path
    published: Published
    inference: Inference


def recipe_for_release(spec: str, out_dir: Path, store: Store, *, image: str = DEFAULT_IMAGE,
                       log: Log = lambda _: None) -> WrittenRecipe:
    """Download and read a release's sdist and wheel, write `NAME.toml` and `NAME.in` into
    `out_dir`, and lock them (the source digest, the hashed `NAME.lock.txt`)."""
    name, version = parse_spec(spec)
    recipe = out_dir / f"{normalize_name(name)}.toml"
    requirements = out_dir / f"{normalize_name(name)}.in"
    for path in (recipe, requirements):
        if path.exists():
            raise UsageError(f"{path} exists; remove it or write elsewhere with -o DIR")
    pinned = image if "@sha256:" in image else latest_image(store, image)
    if pinned is None:
        raise UsageError(f"the store {store.root} has no image {image}; build it first "
                         "(`rebuild image build images/debian-c.toml`) or name another "
                         "with --image NAME:TAG")
    published = pick_files(name, version, release_files(name, version))
    downloaded: set[str] = set()
    with fetch_url(published.wheel.url, published.wheel.sha256, store, where=spec, log=log,
                   downloaded=downloaded) as (_, wheel_path):
        wheel = read_wheel(wheel_path)
    with fetch_url(published.sdist.url, published.sdist.sha256, store, where=spec, log=log,
                   downloaded=downloaded) as (_, sdist_path):
        sdist = read_sdist(sdist_path)
    inference = infer_recipe(published, wheel, sdist)
    out_dir.mkdir(parents=True, exist_ok=True)
    requirements.write_text(render_requirements(published, inference))
    recipe.write_text(render_recipe(published, inference, pinned))
    lock_recipe(recipe, store, log=log)
    return WrittenRecipe(recipe, requirements, published, inference)
