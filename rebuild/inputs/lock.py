"""Lock: write a recipe's pins into the recipe itself, keeping its comments and layout.

Pins: the source's tree digest (for url and git sources too: they are fetched into the store
to hash them), the base image's digest (from the images the store knows by `name:tag`), and
the python lock.

Python lock: `[environment] python_lock = "NAME.lock.txt"` is compiled from `NAME.in`
beside it (the lock's name with `.lock.txt` replaced by `.in`; both relative to the recipe)
by pip-tools with `--generate-hashes`, so every requirement is pinned by version and hash.
The lock records no local path and no index URL. Its first line, `# rebuild: in-sha256=<hex>`,
is the hash of the `.in` it came from: while the `.in` is unchanged, the lock is not
recompiled. A lock without a `.in` is left as it is (written by hand or by another tool).

Re-running on a locked recipe changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
from pydantic import ValidationError

from rebuild.build.recipe import IMAGE_RE, Source, format_validation_error, parse_recipe
from rebuild.errors import EnvironmentProblem, UsageError
from rebuild.inputs.fetch import hash_tree, scan_tree, source_tree_digest
from rebuild.store.layout import IMAGE_REF_ANN, Store

LOCK_SUFFIX = ".lock.txt"
IN_MARKER = "# rebuild: in-sha256="
PIP_COMPILE_FLAGS = ("--generate-hashes", "--strip-extras", "--allow-unsafe",
                     "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
                     "--no-header", "--quiet")


@dataclass(frozen=True)
class LockResult:
    path: Path
    changed: dict[str, tuple[str | None, str]]  # key -> (old, new)


def latest_image(store: Store, name_tag: str) -> str | None:
    """The newest image the store archived as `name:tag`, as a pinned reference."""
    found = None
    for entry in store.entries("image") if store.exists() else []:
        ref = (entry.annotations or {}).get(IMAGE_REF_ANN, "")
        if ref.rsplit("@", 1)[0] == name_tag:
            found = ref
    return found


def lock_recipe(path: Path, store: Store, *, update_image: bool = False,
                log: Callable[[str], None] = lambda _: None) -> LockResult:
    try:
        text = path.read_text()
        doc: Any = tomlkit.parse(text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    except tomlkit.exceptions.ParseError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    changed: dict[str, tuple[str | None, str]] = {}

    def pin(table: str, key: str, value: str) -> None:
        old = doc[table].get(key)
        if old != value:
            doc[table][key] = value
            changed[f"{table}.{key}"] = (None if old is None else str(old), value)

    source = doc.get("source", {})
    if "path" in source:
        root = (path.parent / str(source["path"])).resolve()
        if not root.is_dir():
            raise UsageError(f"{path}: [source] path: {root} is not a directory")
        pin("source", "digest", hash_tree(scan_tree(root)))
    elif "url" in source or "git" in source:
        fields = {k: v for k, v in source.unwrap().items() if k != "digest"}
        try:
            model = Source.model_validate(fields)
        except ValidationError as exc:
            raise UsageError(format_validation_error(exc, Source, f"{path}: [source]")) from None
        pin("source", "digest", source_tree_digest(model, path.parent, store, where=str(path),
                                                   log=log))

    image = str(doc.get("environment", {}).get("image", ""))
    if image and (update_image or not IMAGE_RE.match(image)):
        name_tag = image.rsplit("@", 1)[0]
        latest = latest_image(store, name_tag)
        if latest is None:
            if not IMAGE_RE.match(image):
                raise UsageError(f"{path}: environment.image: the store {store.root} knows no "
                                 f"image {name_tag}; run `rebuild image build images/….toml`")
        else:
            pin("environment", "image", latest)

    new_text = tomlkit.dumps(doc)
    parse_recipe(tomllib.loads(new_text), source=str(path))  # the locked recipe must be valid
    if new_text != text:
        _replace(path, new_text)
    python_lock = doc.get("environment", {}).get("python_lock")
    if python_lock is not None:
        compiled = compile_python_lock(path, str(python_lock), log=log)
        if compiled is not None:
            changed["python_lock"] = compiled
    for key, (old, new) in changed.items():
        log(f"{path}: {key} = {new}" + (f" (was {old})" if old else ""))
    return LockResult(path, changed)


def in_file_for(lock_name: str) -> str:
    """`hello.lock.txt` -> `hello.in`: where a python lock is compiled from."""
    if not lock_name.endswith(LOCK_SUFFIX) or lock_name == LOCK_SUFFIX:
        raise UsageError(f"environment.python_lock = {lock_name!r}: name the lock "
                         f"NAME{LOCK_SUFFIX}; `rebuild lock` compiles it from NAME.in")
    return lock_name.removesuffix(LOCK_SUFFIX) + ".in"


def compile_python_lock(recipe: Path, lock_name: str, *,
                        log: Callable[[str], None] = lambda _: None
                        ) -> tuple[str | None, str] | None:
    """Compile the recipe's python lock from its .in; returns (old, new) sha256 when changed."""
    lock = (recipe.parent / lock_name).resolve()
    source = (recipe.parent / in_file_for(lock_name)).resolve()
    if not source.is_file():
        if lock.is_file():
            log(f"{lock}: no {source.name} beside it; the lock is kept as it is")
            return None
        raise UsageError(f"{recipe}: environment.python_lock: neither {lock} nor {source} "
                         f"exists; write the requirements into {source.name} (one per line) "
                         "and run `rebuild lock` again")
    marker = f"{IN_MARKER}{hashlib.sha256(source.read_bytes()).hexdigest()}\n"
    old = lock.read_text() if lock.is_file() else None
    if old is not None and old.startswith(marker):
        return None
    log(f"{lock.name}: compiling from {source.name} with pip-tools")
    fd, tmp_name = tempfile.mkstemp(dir=lock.parent, prefix=f".{lock.name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as f:
            # pip-compile keeps the versions an existing output file pins, where it can.
            f.write(old or "")
        result = subprocess.run(
            [sys.executable, "-m", "piptools", "compile", *PIP_COMPILE_FLAGS,
             "--output-file", tmp.name, source.name],
            cwd=lock.parent, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n  ".join(result.stderr.strip().splitlines()[-12:])
            if "No module named piptools" in result.stderr:
                raise EnvironmentProblem("pip-tools is not installed in rebuild's environment; "
                                         "install it (make setup)")
            raise UsageError(f"{source}: pip-compile failed:\n  {tail}")
        body = tmp.read_text()
        _refuse_local_references(body, lock, source)
        tmp.write_text(marker + body)
        tmp.chmod(lock.stat().st_mode & 0o777 if old is not None else 0o644)
        tmp.replace(lock)
    finally:
        tmp.unlink(missing_ok=True)
    new = hashlib.sha256(lock.read_bytes()).hexdigest()
    old_hash = None if old is None else hashlib.sha256(old.encode()).hexdigest()
    if old_hash == new:
        return None
    return (None if old_hash is None else f"sha256:{old_hash}", f"sha256:{new}")


def _refuse_local_references(body: str, lock: Path, source: Path) -> None:
    """A lock is shared: it must not name this machine's paths or indexes."""
    for number, line in enumerate(body.splitlines(), 1):
        text = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        if (re.search(r"(^|\s)-", text) and "--hash=" not in text) or "file:" in line \
                or str(lock.parent) in line or re.search(r"\w+://", line):
            raise UsageError(f"{source}: pip-compile wrote {line.strip()!r} (line {number}) "
                             "into the lock: a local path, an index or an option; write plain "
                             "requirements (name, version specifiers) into the .in file")


def _replace(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        Path(tmp).chmod(path.stat().st_mode & 0o777)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
