"""Lock: write a recipe's pins into the recipe itself, keeping its comments and layout.

Pins: the source's tree digest, the base image's digest (from the images the store knows by
`name:tag`). Re-running on a locked recipe changes nothing.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from rebuild.errors import UsageError
from rebuild.fetch import hash_tree, scan_tree
from rebuild.image import IMAGE_REF_ANN
from rebuild.recipe import IMAGE_RE, parse_recipe
from rebuild.store import Store


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
    for key, (old, new) in changed.items():
        log(f"{path}: {key} = {new}" + (f" (was {old})" if old else ""))
    return LockResult(path, changed)


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
