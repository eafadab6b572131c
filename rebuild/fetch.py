"""Fetch: bring every input of a recipe into the store, verifying hashes.

A `path` source is hashed as a tree (`hash_tree`, documented in docs/formats.md) and packed
into a canonical tar (sorted, numeric owners, mtimes = SOURCE_DATE_EPOCH) so that the build
runs on exactly the bytes the store keeps.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rebuild.errors import EnvironmentProblem, UsageError
from rebuild.recipe import LoadedRecipe
from rebuild.store import Store, canonical_json, sha256_file

TREE_FORMAT = "rebuild-tree/v1"
EXCLUDED = frozenset({".git", ".hg", ".svn"})


@dataclass(frozen=True)
class TreeEntry:
    path: str  # POSIX, relative to the tree's root
    kind: str  # "dir", "file", "exec" or "link"
    value: str  # sha256 hex of the content, the link's target, or "" for a directory


@dataclass(frozen=True)
class SourceInput:
    tree_digest: str  # sha256:<hex> of the tree (what the recipe pins)
    archive: str  # sha256:<hex> of the canonical tar in the store
    uri: str  # where it came from, for the provenance


@dataclass(frozen=True)
class Inputs:
    """Everything a build may use besides its image, each in the store and verified."""

    source: SourceInput
    source_date_epoch: int


def scan_tree(root: Path) -> list[TreeEntry]:
    """Every entry below `root` in byte order of path, without following links."""
    entries: list[TreeEntry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED)
        base = Path(dirpath)
        for name in [*dirnames, *(f for f in filenames if f not in EXCLUDED)]:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if "\n" in rel:
                raise UsageError(f"{path}: file names with newlines are not supported")
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append(TreeEntry(rel, "link", str(path.readlink())))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(TreeEntry(rel, "dir", ""))
            elif stat.S_ISREG(st.st_mode):
                kind = "exec" if st.st_mode & 0o111 else "file"
                entries.append(TreeEntry(rel, kind, sha256_file(path)))
            else:
                raise UsageError(f"{path}: not a regular file, directory or link; "
                                 "remove it from the source tree")
    # os.walk visits directory by directory: sort once over the whole list.
    return sorted(entries, key=lambda e: e.path.encode())


def hash_tree(entries: list[TreeEntry]) -> str:
    body = {"format": TREE_FORMAT, "entries": [[e.path, e.kind, e.value] for e in entries]}
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def pack_tree(root: Path, entries: list[TreeEntry], dest: Path, mtime: int) -> None:
    """A canonical tar of the tree: same entries and epoch give the same bytes."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif entry.kind == "link":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.value
                tar.addfile(info)
            else:
                info.mode = 0o755 if entry.kind == "exec" else 0o644
                path = root / entry.path
                info.size = path.stat().st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)


def fetch_bytes(url: str, *, timeout: float = 30) -> bytes:
    """GET a small document (e.g. a mirror's InRelease)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return bytes(response.read())
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"cannot fetch {url}: {exc}") from None


def fetch_source(loaded: LoadedRecipe, store: Store, source_date_epoch: int) -> SourceInput:
    """Hash the recipe's source, check it against its pin, and store its canonical tar."""
    source = loaded.recipe.source
    if source.path is None:
        raise UsageError(f"{loaded.path}: [source] {source.kind} sources are not supported "
                         "yet; use path = \"…\"")
    root = loaded.resolve(source.path)
    if not root.is_dir():
        raise UsageError(f"{loaded.path}: [source] path: {root} is not a directory; "
                         "fix the path (it is relative to the recipe file)")
    entries = scan_tree(root)
    tree_digest = hash_tree(entries)
    if source.digest is not None and source.digest != tree_digest:
        raise UsageError(f"{loaded.path}: [source] digest: source changed since lock: "
                         f"expected {source.digest}, found {tree_digest}; review the change, "
                         "then run `rebuild lock` to pin the new tree")
    store.init()
    with tempfile.TemporaryDirectory(dir=store.root / ".tmp") as tmp:
        archive = Path(tmp) / "source.tar"
        pack_tree(root, entries, archive, source_date_epoch)
        digest, _ = store.put_file(archive)
    return SourceInput(tree_digest, digest, f"file:{source.path}")


def fetch_inputs(loaded: LoadedRecipe, store: Store, *,
                 log: Callable[[str], None] = lambda _: None) -> Inputs:
    """Bring every input of the recipe into the store (the only networked step)."""
    epoch = loaded.recipe.environment.source_date_epoch
    if not isinstance(epoch, int):
        raise UsageError(f"{loaded.path}: source_date_epoch = \"git\" needs a git source, "
                         "which this version does not support yet")
    return Inputs(fetch_source(loaded, store, epoch), epoch)
