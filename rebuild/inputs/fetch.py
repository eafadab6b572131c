"""Fetch: bring every input of a recipe into the store, verifying hashes.

This is the only module that touches the network (design.md, "Pipeline"). Sources:

- `path`: the tree on disk.
- `url` + `sha256`: looked up in the store by its sha256 first; otherwise downloaded and
  verified BEFORE anything is stored, then kept as a blob. An archive (`.tar.gz`, `.tgz`,
  `.tar.xz`, `.tar.bz2`, `.zip`) is unpacked with its single top-level directory stripped
  (when it has one); members that escape (`..`, absolute paths, links pointing outside,
  special files) are refused. Any other file is placed in the tree under its own name.
- `git` + `rev`: cloned into a temporary directory; exactly `rev` is exported with
  `git archive` (no `.git`). The export is kept as a blob, remembered by commit id.

Every source tree is then hashed as a tree (`hash_tree`, the digest `rebuild lock` pins) and
packed into a canonical tar (sorted, numeric owners, mtimes = SOURCE_DATE_EPOCH), so that
the build runs on exactly the bytes the store keeps.

Wheels: the recipe's `python_lock` (pip-compile output, every requirement with
`--hash=sha256:`) is parsed, each wheel downloaded with pip and checked against the lock's
hashes, and stored as a blob. What was fetched is remembered in the store as small OCI
artifacts named in index.json (kind `fetch`): one per url, per git commit, and per lock file
(its layers are the wheel blobs). A second fetch finds them there and downloads nothing, and
`rebuild store gc` keeps them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import lzma
import math
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from rebuild.build.limits import DEFAULT as DEFAULT_LIMITS
from rebuild.build.limits import Limits, show_size
from rebuild.build.plan import WHEELS_LOCK_NAME
from rebuild.build.recipe import LoadedRecipe, Source
from rebuild.errors import EnvironmentProblem, StoreError, UsageError
from rebuild.evidence.provenance import NpmPackage
from rebuild.inputs.npm import cache_path, parse_npm_lock
from rebuild.store.layout import KIND, TITLE, Descriptor, Store, canonical_json, sha256_file

Log = Callable[[str], None]

TREE_FORMAT = "rebuild-tree/v1"
EXCLUDED = frozenset({".git", ".hg", ".svn"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".zip")

# What fetch remembers in index.json (kind "fetch"), so that a second fetch is offline.
FETCH_KIND = "fetch"
DOWNLOAD_TYPE = "application/vnd.rebuild.download.v1+json"
GIT_EXPORT_TYPE = "application/vnd.rebuild.git-export.v1+json"
WHEELS_TYPE = "application/vnd.rebuild.wheels.v1+json"
SOURCE_TYPE = "application/vnd.rebuild.source.v1+json"
TREE_ANN = "dev.rebuild.tree"
URL_ANN = "dev.rebuild.url"
GIT_REPO_ANN = "dev.rebuild.git.repo"
GIT_REV_ANN = "dev.rebuild.git.rev"
GIT_TIME_ANN = "dev.rebuild.git.commit-time"
LOCK_ANN = "dev.rebuild.python-lock"
WHEEL_NAME_ANN = "dev.rebuild.wheel.name"
WHEEL_VERSION_ANN = "dev.rebuild.wheel.version"
WHEEL_MEDIA = "application/zip"
LOCK_MEDIA = "text/plain; charset=utf-8"
NPM_TYPE = "application/vnd.rebuild.npm.v1+json"
NPM_LOCK_ANN = "dev.rebuild.npm-lock"
NPM_NAME_ANN = "dev.rebuild.npm.name"
NPM_VERSION_ANN = "dev.rebuild.npm.version"
NPM_SHA512_ANN = "dev.rebuild.npm.sha512"
NPM_MEDIA = "application/gzip"
NPM_LOCK_MEDIA = "application/json"
NPM_LOCK_NAME = "npm.lock.json"  # its title among a release's inputs

PROGRESS_MIN = 1 << 20  # bytes: smaller downloads get no progress lines
PROGRESS_EVERY = 2.0  # seconds between progress lines


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
    fetched: str | None = None  # blob of the downloaded file or git export (None for a path)


@dataclass(frozen=True)
class Wheel:
    """One wheel of a python_lock, in the store."""

    name: str  # normalized project name, as in the lock
    version: str
    filename: str
    sha256: str  # hex
    blob: str  # sha256:<hex> in the store

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "filename": self.filename,
                "sha256": self.sha256, "blob": self.blob}


@dataclass(frozen=True)
class NpmTarball:
    """One package of an npm_lock, in the store."""

    package: NpmPackage
    blob: str  # sha256:<hex> in the store

    def to_json(self) -> dict[str, str]:
        return {**self.package.to_json(), "blob": self.blob}

    def layer_annotations(self) -> dict[str, str]:
        p = self.package
        return {TITLE: p.filename, NPM_NAME_ANN: p.name, NPM_VERSION_ANN: p.version,
                NPM_SHA512_ANN: p.sha512, URL_ANN: p.resolved}


@dataclass(frozen=True)
class Inputs:
    """Everything a build may use besides its image, each in the store and verified."""

    source: SourceInput
    source_date_epoch: int
    wheels: tuple[Wheel, ...] = ()
    python_lock: str | None = None  # blob digest of the lock file
    npm_lock: str | None = None  # blob digest of the npm lock (package-lock.json)
    npm: tuple[NpmTarball, ...] = ()
    # Blobs this fetch brought over the network (the rest were found in the store).
    downloaded: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def wheel_files(self) -> tuple[str, ...] | None:
        """The wheels a run installs into its venv; None when the recipe has no python_lock."""
        return None if self.python_lock is None else tuple(w.filename for w in self.wheels)


@dataclass(frozen=True)
class LockedRequirement:
    """One requirement of a python_lock: `name==version` and the hashes it may have."""

    name: str  # normalized (PEP 503)
    version: str
    hashes: frozenset[str]  # sha256 hex
    line: int
    text: str  # the whole logical line, as pip reads it
    has_marker: bool


# -- trees ----------------------------------------------------------------------------------


PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def refuse_pseudo_tree(root: Path, where: str) -> None:
    """A source is files: /proc, /sys and /dev hold endless or blocking ones (a read of
    /proc/kmsg never returns), so they are refused before anything reads them."""
    resolved = root.resolve()
    if any(resolved == pseudo or pseudo in resolved.parents for pseudo in PSEUDO_ROOTS):
        raise UsageError(f"{where}: [source] path: {resolved} is a kernel pseudo-filesystem "
                         "(/proc, /sys or /dev), not a source tree; point path at the "
                         "directory that holds the sources")


def _pseudo_devices() -> frozenset[int]:
    return frozenset(p.stat().st_dev for p in PSEUDO_ROOTS if p.is_dir())


def scan_tree(root: Path) -> list[TreeEntry]:
    """Every entry below `root` in byte order of path, without following links."""
    entries: list[TreeEntry] = []
    pseudo = _pseudo_devices()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED)
        base = Path(dirpath)
        if base.lstat().st_dev in pseudo:
            # A proc, sysfs or devtmpfs mounted inside the tree (or the tree itself).
            raise UsageError(f"{base}: lies on a kernel pseudo-filesystem (/proc, /sys or "
                             "/dev); remove that mount from the source tree")
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


# -- sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTree:
    """A source, unpacked on disk (for url and git sources, in a temporary directory)."""

    root: Path
    uri: str
    fetched: str | None  # blob of the download or git export
    commit_time: int | None  # git sources: the commit time of `rev`


@contextlib.contextmanager
def open_source(source: Source, base: Path, store: Store, *, where: str, log: Log = lambda _: None,
                downloaded: set[str] | None = None,
                limits: Limits = DEFAULT_LIMITS) -> Iterator[SourceTree]:
    """The source tree of a recipe; `base` is the recipe's directory, `where` its name."""
    downloaded = set() if downloaded is None else downloaded
    if source.path is not None:
        root = (base / source.path).resolve()
        if not root.is_dir():
            raise UsageError(f"{where}: [source] path: {root} is not a directory; "
                             "fix the path (it is relative to the recipe file)")
        refuse_pseudo_tree(root, where)
        yield SourceTree(root, f"file:{source.path}", None, None)
        return
    with tempfile.TemporaryDirectory(prefix="rebuild-source-") as tmp:
        root = Path(tmp) / "tree"
        # A download or clone enters the store only when the caller's block succeeds: an
        # archive refused while unpacking, or a tree refused by its pin, leaves nothing.
        if source.url is not None:
            assert source.sha256 is not None  # recipe.py requires it
            name = url_filename(source.url, where)
            with fetch_url(source.url, source.sha256, store, where=where, log=log,
                           downloaded=downloaded, limits=limits) as (blob, path):
                unpack_source(path, name, root, where=where)
                yield SourceTree(root, source.url, blob, None)
        else:
            assert source.git is not None and source.rev is not None
            with fetch_git(source.git, source.rev, base, store, where=where, log=log,
                           downloaded=downloaded) as (blob, path, commit_time):
                unpack_archive(path, "git-archive.tar", root, strip=False, where=where)
                yield SourceTree(root, f"git+{source.git}@{source.rev}", blob, commit_time)


def fetch_source(loaded: LoadedRecipe, store: Store, *, log: Log = lambda _: None,
                 downloaded: set[str] | None = None) -> tuple[SourceInput, int]:
    """Fetch the recipe's source, check it against its pin, and store its canonical tar.

    Returns the source and the build's SOURCE_DATE_EPOCH (the commit time for "git").
    """
    recipe = loaded.recipe
    with open_source(recipe.source, loaded.path.parent, store, where=str(loaded.path),
                     log=log, downloaded=downloaded, limits=recipe.bounds) as tree:
        setting = recipe.environment.source_date_epoch
        epoch = setting if isinstance(setting, int) else tree.commit_time
        assert epoch is not None  # recipe.py: "git" needs a git source
        entries = scan_tree(tree.root)
        tree_digest = hash_tree(entries)
        pinned = recipe.source.digest
        if pinned is not None and pinned != tree_digest:
            raise UsageError(f"{loaded.path}: [source] digest: source changed since lock: "
                             f"expected {pinned}, found {tree_digest}; review the change, "
                             "then run `rebuild lock` to pin the new tree")
        with store.temporary_directory() as tmp:
            archive = tmp / "source.tar"
            pack_tree(tree.root, entries, archive, epoch)
            digest, _ = store.put_file(archive)
    # Named in index.json like every fetched input, so that a fetch ahead of the build is
    # not garbage to `store gc`, and a store is never blobs without an index.
    _remember(store, SOURCE_TYPE, [_layer(store, "application/x-tar", digest,
                                          {TITLE: "source.tar", TREE_ANN: tree_digest})],
              {TREE_ANN: tree_digest})
    return SourceInput(tree_digest, digest, tree.uri, tree.fetched), epoch


def source_tree_digest(source: Source, base: Path, store: Store, *, where: str,
                       log: Log = lambda _: None) -> str:
    """The tree digest of a source, as `rebuild lock` pins it (fetching it if needed)."""
    with open_source(source, base, store, where=where, log=log) as tree:
        return hash_tree(scan_tree(tree.root))


def url_filename(url: str, where: str) -> str:
    name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise UsageError(f"{where}: [source] url {url} does not end with a file name; "
                         "use the address of the file itself")
    return name


@contextlib.contextmanager
def fetch_url(url: str, sha256: str, store: Store, *, where: str, log: Log,
              downloaded: set[str], limits: Limits = DEFAULT_LIMITS
              ) -> Iterator[tuple[str, Path]]:
    """(blob digest, a verified local copy) of `url`'s bytes: from the store when it has that
    sha256, else downloaded to a temporary file outside the store.

    A download enters the store when its sha256 is the pinned one and the caller's block
    succeeds (the archive unpacked, the tree accepted); a refused one leaves nothing.
    """
    digest = "sha256:" + sha256
    name = url_filename(url, where)
    with tempfile.TemporaryDirectory(prefix="rebuild-download-") as tmp:
        part = Path(tmp) / "download"
        if store.exists() and store.has(digest):
            log(f"{url}: found in the store by its sha256, not downloaded")
            store.copy_out(digest, part)
            yield digest, part
        else:
            scheme = urllib.parse.urlsplit(url).scheme
            if scheme not in ("http", "https", "file"):
                raise UsageError(f"{where}: [source] url {url}: only http, https and file "
                                 "addresses are supported")
            actual, size = _download(url, part, where=where, log=log, limits=limits)
            if actual != sha256:
                raise UsageError(f"{where}: [source] sha256 of {url} does not match: expected "
                                 f"{sha256}, downloaded {actual} ({size} bytes); nothing was "
                                 "stored. The file changed where it is published, or the pin "
                                 "is wrong: check the file, then update sha256 in the recipe")
            yield digest, part
            store.put_file(part)
            downloaded.add(digest)
    _remember(store, DOWNLOAD_TYPE, [_layer(store, "application/octet-stream", digest,
                                            {TITLE: name, URL_ANN: url})], {URL_ANN: url})


def _download(url: str, dest: Path, *, where: str, log: Log,
              limits: Limits = DEFAULT_LIMITS, what: str = "[source] url") -> tuple[str, int]:
    """Stream `url` into `dest`; returns (sha256 hex, size). Progress lines for large files.

    Bounded in time as a whole (`limits.download_timeout`: a server that sends a byte now
    and then is cut off too) and in size (`limits.max_download_size`: an endless one stops).
    """
    hasher = hashlib.sha256()
    size = 0
    deadline = time.monotonic() + limits.download_timeout
    try:
        with urllib.request.urlopen(url, timeout=min(60, limits.download_timeout)) as response, \
                dest.open("wb") as out:  # noqa: S310 (scheme checked by the caller)
            total = int(response.headers.get("Content-Length") or 0)
            if total > limits.max_download_size:
                raise _TooLarge(total)
            shown = total >= PROGRESS_MIN
            if shown:
                log(f"downloading {url} ({total / 2**20:.1f} MiB)")
            last = time.monotonic()
            # read1: whatever has arrived (one receive), so the deadline is checked even
            # while a server trickles bytes; read(n) would wait for all n of them.
            while chunk := response.read1(1 << 16):
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if size > limits.max_download_size:
                    raise _TooLarge(size)
                if time.monotonic() > deadline:
                    raise _Overtime(size)
                if time.monotonic() - last >= PROGRESS_EVERY and (shown or size >= PROGRESS_MIN):
                    last = time.monotonic()
                    of = f" of {total / 2**20:.1f}" if total else ""
                    log(f"  {url}: {size / 2**20:.1f}{of} MiB")
    except urllib.error.HTTPError as exc:
        raise UsageError(f"{where}: {what} {url}: the server answered {exc.code} "
                         f"{exc.reason}; fix the address") from None
    except _TooLarge as exc:
        raise UsageError(f"{where}: {what} {url} is over "
                         f"{show_size(limits.max_download_size)} ({exc.args[0]} bytes so far; "
                         "limit [limits] max_download_size); nothing was stored. Raise the "
                         "limit if the file really is that large") from None
    except (_Overtime, OSError, ValueError) as exc:
        if isinstance(exc, _Overtime) or time.monotonic() >= deadline:
            raise EnvironmentProblem(f"{where}: downloading {url} took over "
                                     f"{limits.download_timeout} s ({size} bytes received; "
                                     "limit [limits] download_timeout); nothing was stored. "
                                     "Check the server and the network, or raise the "
                                     "limit") from None
        raise EnvironmentProblem(f"{where}: cannot download {url} ({exc}); check the address "
                                 "and the network (fetch is the only step that needs it)") from None
    log(f"downloaded {url}: {size} bytes")
    return hasher.hexdigest(), size


class _TooLarge(Exception):
    pass


class _Overtime(Exception):
    pass


def fetch_bytes(url: str, *, timeout: float = 30) -> bytes:
    """GET a small document (e.g. a mirror's InRelease)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return bytes(response.read())
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"cannot fetch {url}: {exc}") from None


def fetch_document(url: str, *, accept: str = "application/json", limit: int = 32 << 20,
                   timeout: float = 60) -> bytes | None:
    """GET an index document (a package registry's JSON), bounded in size; None for 404."""
    request = urllib.request.Request(url, headers={"Accept": accept})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            data = bytes(response.read(limit + 1))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise EnvironmentProblem(f"cannot fetch {url}: the server answered {exc.code} "
                                 f"{exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"cannot fetch {url}: {exc}; check the network (PyPI must "
                                 "be reachable)") from None
    if len(data) > limit:
        raise EnvironmentProblem(f"{url} is over {show_size(limit)}; refusing to read it")
    return data


# -- git ------------------------------------------------------------------------------------


def _is_remote(repo: str) -> bool:
    return "://" in repo or bool(re.match(r"^[\w.-]+@[\w.-]+:", repo))


@contextlib.contextmanager
def fetch_git(repo: str, rev: str, base: Path, store: Store, *, where: str, log: Log,
              downloaded: set[str]) -> Iterator[tuple[str, Path, int]]:
    """(blob digest, a local copy, commit time) of `git archive` of commit `rev`.

    A commit fetched once is remembered by its id, so a second fetch clones nothing. A new
    export enters the store only when the caller's block succeeds.
    """
    if not re.fullmatch(r"[0-9a-f]{40}", rev):
        raise UsageError(f"{where}: [source] rev {rev!r} is not a 40-hex commit id")
    with tempfile.TemporaryDirectory(prefix="rebuild-git-") as tmp:
        export = Path(tmp) / "export.tar"
        cached = _find_fetch(store, GIT_REV_ANN, rev)
        if cached is not None:
            annotations, [layer] = cached
            log(f"git {repo} {rev[:12]}: found in the store, not cloned")
            store.copy_out(layer.digest, export)
            yield layer.digest, export, int(annotations[GIT_TIME_ANN])
            return
        commit_time = _export_commit(repo, rev, base, Path(tmp) / "repo.git", export,
                                     where=where, log=log)
        blob = "sha256:" + sha256_file(export)
        yield blob, export, commit_time
        store.put_file(export)
    downloaded.add(blob)
    _remember(store, GIT_EXPORT_TYPE,
              [_layer(store, "application/x-tar", blob, {TITLE: f"{rev}.tar"})],
              {GIT_REPO_ANN: repo, GIT_REV_ANN: rev, GIT_TIME_ANN: str(commit_time)})


def _export_commit(repo: str, rev: str, base: Path, clone: Path, export: Path, *, where: str,
                   log: Log) -> int:
    """Clone `repo` bare into `clone`, `git archive` commit `rev` to `export`; its time."""
    git = shutil.which("git")
    if git is None:
        raise EnvironmentProblem("git is not installed; install it: apt-get install -y git")
    location = repo if _is_remote(repo) else str((base / repo).resolve())
    if not _is_remote(repo) and not Path(location).exists():
        raise UsageError(f"{where}: [source] git: {location} does not exist; fix the path "
                         "(it is relative to the recipe file) or give a URL")
    log(f"cloning {repo} for {rev[:12]}")
    # "--": a repository named like an option (--upload-pack=…) stays a repository.
    cloned = _git(git, "clone", "--bare", "--quiet", "--", location, str(clone))
    if cloned.returncode != 0:
        message = f"{where}: [source] git: cannot clone {repo}: {cloned.stderr.strip()}"
        if _is_remote(repo):
            raise EnvironmentProblem(message + "; check the address and the network")
        raise UsageError(message + "; it must be a git repository")
    if not _has_commit(git, clone, rev):
        # A commit no branch or tag reaches: servers that allow it send it by id.
        _git(git, "-C", str(clone), "fetch", "--quiet", "origin", "--end-of-options", rev)
        if not _has_commit(git, clone, rev):
            raise UsageError(f"{where}: [source] rev {rev} is not a commit of {repo}; "
                             "check the id (`git log` in that repository)")
    kind = _git(git, "-C", str(clone), "cat-file", "-t", rev).stdout.strip()
    if kind != "commit":
        # An annotated tag's id names the tag object, which can be re-signed or moved.
        raise UsageError(f"{where}: [source] rev {rev} is a {kind} object, not a commit; "
                         f"pin the commit it points to (`git rev-parse {rev}^{{commit}}`)")
    shown = _git(git, "-C", str(clone), "show", "-s", "--format=%ct", "--end-of-options", rev)
    archived = _git(git, "-C", str(clone), "archive", "--format=tar", "-o", str(export),
                    "--end-of-options", rev)
    if shown.returncode != 0 or archived.returncode != 0 or not shown.stdout.strip().isdigit():
        raise EnvironmentProblem(f"git could not export {rev} of {repo}: "
                                 f"{(shown.stderr + archived.stderr).strip()}")
    return int(shown.stdout.strip())


def _git(git: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    return subprocess.run([git, *args], capture_output=True, text=True, env=env, check=False)


def _has_commit(git: str, clone: Path, rev: str) -> bool:
    return _git(git, "-C", str(clone), "cat-file", "-e", f"{rev}^{{commit}}").returncode == 0


# -- archives -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    name: str
    kind: str  # "dir", "file", "link" or "hardlink"
    target: str = ""  # a link's target
    executable: bool = False
    open: Callable[[], IO[bytes] | None] | None = None


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def unpack_source(path: Path, name: str, dest: Path, *, where: str) -> None:
    """A downloaded file as a source tree: an archive unpacked, any other file as is."""
    if is_archive(name):
        unpack_archive(path, name, dest, strip=True, where=where)
    else:
        dest.mkdir()
        shutil.copyfile(path, dest / name)
        (dest / name).chmod(0o644)


def unpack_archive(path: Path, name: str, dest: Path, *, strip: bool, where: str) -> None:
    """Unpack a tar or zip archive into `dest`, refusing members that escape it (exit 2).

    With `strip`, an archive whose members all lie in one top-level directory is unpacked
    without it. Only directories, regular files and links are extracted; file modes are
    reduced to 0644/0755, owners and times are not kept (the tree digest ignores them).
    """
    try:
        if name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                _extract(_zip_members(archive), dest, strip=strip, where=f"{where}: {name}")
        else:
            with tarfile.open(path, "r:*") as tar:
                _extract(_tar_members(tar, f"{where}: {name}"), dest, strip=strip,
                         where=f"{where}: {name}")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error,
            UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: {name} is not a valid archive ({exc}); check the url "
                         "and its sha256") from None


def _tar_members(tar: tarfile.TarFile, where: str) -> list[_Member]:
    members = []
    for m in tar.getmembers():
        if m.isdir():
            members.append(_Member(m.name, "dir"))
        elif m.isreg():
            members.append(_Member(m.name, "file", executable=bool(m.mode & 0o111),
                                   open=lambda m=m: tar.extractfile(m)))  # type: ignore[misc]
        elif m.issym():
            members.append(_Member(m.name, "link", m.linkname))
        elif m.islnk():
            members.append(_Member(m.name, "hardlink", m.linkname))
        else:
            raise UsageError(f"{where}: member {m.name!r} is a device, fifo or other special "
                             "file; refusing to unpack the archive")
    return members


def _zip_members(archive: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if info.is_dir():
            members.append(_Member(info.filename, "dir"))
        elif stat.S_ISLNK(mode):
            members.append(_Member(info.filename, "link", archive.read(info).decode()))
        else:
            members.append(_Member(info.filename, "file", executable=bool(mode & 0o111),
                                   open=lambda info=info: archive.open(info)))  # type: ignore[misc]
    return members


def _member_parts(name: str, where: str, what: str = "member") -> tuple[str, ...]:
    if name.startswith("/"):
        raise UsageError(f"{where}: {what} {name!r} is an absolute path; refusing to unpack "
                         "an archive whose members escape the source directory")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UsageError(f"{where}: {what} {name!r} contains '..'; refusing to unpack an "
                         "archive whose members escape the source directory")
    return parts


def _extract(members: list[_Member], dest: Path, *, strip: bool, where: str) -> None:
    named = [(parts, m) for m in members if (parts := _member_parts(m.name, where))]
    stripped = strip and len({parts[0] for parts, _ in named}) == 1 and all(
        len(parts) > 1 or m.kind == "dir" for parts, m in named)
    if stripped:
        named = [(parts[1:], m) for parts, m in named if len(parts) > 1]
    dest.mkdir()
    made: dict[tuple[str, ...], str] = {}  # what this extraction created: parts -> kind
    links: list[Path] = []
    for parts, m in named:
        shown = "/".join(parts)
        if made.get(parts) == "dir" and m.kind == "dir":
            continue
        if parts in made:
            raise UsageError(f"{where}: {shown!r} appears twice in the archive; refusing it")
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if prefix not in made:
                dest.joinpath(*prefix).mkdir()
                made[prefix] = "dir"
            elif made[prefix] != "dir":
                # Writing below a link would write wherever the link points.
                raise UsageError(f"{where}: {m.name!r} lies below {'/'.join(prefix)!r}, which "
                                 "is not a directory; refusing to unpack the archive")
        path = dest.joinpath(*parts)
        if m.kind == "dir":
            path.mkdir()
        elif m.kind == "file":
            src = m.open() if m.open else None
            if src is None:
                raise UsageError(f"{where}: cannot read member {m.name!r}")
            with src, path.open("xb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            path.chmod(0o755 if m.executable else 0o644)
        elif m.kind == "link":
            target = m.target
            inside = posixpath.normpath(posixpath.join(*parts[:-1], target)) if target else ""
            if not target or target.startswith("/") or inside == ".." or \
                    inside.startswith("../"):
                raise UsageError(f"{where}: link {m.name!r} -> {target!r} points outside the "
                                 "source directory; refusing to unpack the archive")
            path.symlink_to(target)
            links.append(path)
        else:  # a hard link: a copy of a file extracted before it
            target_parts = _member_parts(m.target, where, "hard link target")
            if stripped:
                target_parts = target_parts[1:]
            if made.get(target_parts) != "file":
                raise UsageError(f"{where}: hard link {m.name!r} -> {m.target!r} does not "
                                 "name a file earlier in the archive; refusing it")
            original = dest.joinpath(*target_parts)
            shutil.copyfile(original, path)
            path.chmod(original.stat().st_mode & 0o777)
            made[parts] = "file"
            continue
        made[parts] = "file" if m.kind == "file" else m.kind
    # Links through links: resolve each one on disk and check it lands inside.
    root = dest.resolve()
    for link in links:
        real = Path(os.path.realpath(link))
        if real != root and root not in real.parents:
            raise UsageError(f"{where}: link {link.relative_to(dest).as_posix()!r} resolves "
                             "outside the source directory; refusing to unpack the archive")


# -- python locks and wheels ------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*"
    r"==\s*(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)\s*(?P<marker>;.*)?$")
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")


def normalize_name(name: str) -> str:
    """PEP 503 normalization: `Flit_Core` -> `flit-core`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, content) of each requirement line, comments and `\\` joined."""
    current, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if not current:
            start = number
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            yield start, " ".join(current.split())
        current = ""
    if current.strip():
        yield start, " ".join(current.split())


def parse_lock(text: str, *, source: str = "<lock>") -> tuple[LockedRequirement, ...]:
    """The requirements of a pip-compile lock; each must be `name==version` with hashes."""
    found: dict[str, LockedRequirement] = {}
    for number, line in _logical_lines(text):
        where = f"{source}: line {number}"
        tokens = line.split(" ")
        hashes = [t.removeprefix("--hash=") for t in tokens if t.startswith("--hash=")]
        spec = " ".join(t for t in tokens if not t.startswith("--hash="))
        if spec.startswith("-") or " -" in f" {spec}":
            raise UsageError(f"{where}: {line!r}: options are not allowed in a python_lock "
                             "(rebuild decides where wheels come from); remove the line, or "
                             "regenerate the lock with `rebuild lock`")
        match = _REQUIREMENT.match(spec)
        if match is None:
            raise UsageError(f"{where}: {spec!r} is not pinned as name==version; regenerate "
                             "the lock with `rebuild lock` (pip-compile)")
        if not hashes:
            raise UsageError(f"{where}: {spec!r} has no --hash=sha256:…; every requirement of "
                             "a python_lock must be pinned by hash: regenerate it with "
                             "`rebuild lock` (pip-compile --generate-hashes)")
        hexes = []
        for value in hashes:
            hash_match = _HASH.match(value)
            if hash_match is None:
                raise UsageError(f"{where}: --hash={value}: only sha256 hashes are accepted")
            hexes.append(hash_match[1])
        name = normalize_name(match["name"])
        if name in found:
            raise UsageError(f"{where}: {name} is listed twice (also line "
                             f"{found[name].line}); keep one")
        found[name] = LockedRequirement(name, match["version"], frozenset(hexes), number,
                                        line, match["marker"] is not None)
    return tuple(found.values())


def wheel_project(filename: str) -> tuple[str, str]:
    """(normalized name, version) from a wheel's file name (PEP 427)."""
    parts = filename.removesuffix(".whl").split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6) or "/" in filename:
        raise UsageError(f"{filename!r} is not a wheel file name; only wheels can be installed "
                         "(no source distributions)")
    return normalize_name(parts[0]), parts[1]


def fetch_wheels(loaded: LoadedRecipe, store: Store, *, log: Log = lambda _: None,
                 downloaded: set[str] | None = None) -> tuple[str | None, tuple[Wheel, ...]]:
    """(blob of the lock, its wheels): every wheel of the recipe's python_lock, in the store."""
    downloaded = set() if downloaded is None else downloaded
    name = loaded.recipe.environment.python_lock
    if name is None:
        return None, ()
    path = loaded.resolve(name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{loaded.path}: environment.python_lock: cannot read {path} "
                         f"({exc.strerror}); run `rebuild lock {loaded.path}` to compile it "
                         "from its .in file") from None
    requirements = parse_lock(data.decode(errors="replace"), source=str(path))
    store.init()
    # The lock enters the store with its wheels, once they are accepted: a refused download
    # leaves nothing.
    lock_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cached = _find_fetch(store, LOCK_ANN, lock_digest)
    if cached is not None:
        wheels = tuple(_wheel_from_layer(layer) for layer in cached[1]
                       if layer.digest != lock_digest)
        log(f"{path.name}: {len(wheels)} wheel(s) found in the store, none downloaded")
        return lock_digest, wheels
    known = _known_wheels(store)
    wheels_by_name: dict[str, Wheel] = {}
    missing = []
    for req in requirements:
        hit = next((h for h in sorted(req.hashes) if h in known), None)
        if hit is None:
            missing.append(req)
        else:
            wheels_by_name[req.name] = Wheel(req.name, req.version, known[hit], hit,
                                             "sha256:" + hit)
    if missing:
        for wheel in _download_wheels(missing, path, store, log, loaded.recipe.bounds):
            wheels_by_name[wheel.name] = wheel
            downloaded.add(wheel.blob)
    wheels = tuple(sorted(wheels_by_name.values(), key=lambda w: w.name))
    log(f"{path.name}: {len(wheels)} wheel(s): {len(missing)} downloaded, "
        f"{len(wheels) - len(missing)} found in the store")
    store.put_bytes(data)
    layers = [_layer(store, LOCK_MEDIA, lock_digest, {TITLE: WHEELS_LOCK_NAME})]
    layers += [_layer(store, WHEEL_MEDIA, w.blob, {TITLE: w.filename, WHEEL_NAME_ANN: w.name,
                                                  WHEEL_VERSION_ANN: w.version})
               for w in wheels]
    _remember(store, WHEELS_TYPE, layers, {LOCK_ANN: lock_digest})
    return lock_digest, wheels


def _known_wheels(store: Store) -> dict[str, str]:
    """sha256 hex -> file name of every wheel the store already holds (from other locks)."""
    known: dict[str, str] = {}
    for entry in store.entries(FETCH_KIND):
        if LOCK_ANN not in (entry.annotations or {}):
            continue
        for layer in _manifest_layers(store, entry.digest):
            title = (layer.annotations or {}).get(TITLE, "")
            if title.endswith(".whl") and store.has(layer.digest):
                known[layer.digest.removeprefix("sha256:")] = title
    return known


def _wheel_from_layer(layer: Descriptor) -> Wheel:
    ann = layer.annotations or {}
    filename = ann.get(TITLE, "")
    wheel_project(filename)  # a stored manifest names a wheel file, nothing else
    return Wheel(ann[WHEEL_NAME_ANN], ann[WHEEL_VERSION_ANN], filename,
                 layer.digest.removeprefix("sha256:"), layer.digest)


def _download_wheels(requirements: list[LockedRequirement], lock: Path, store: Store,
                     log: Log, limits: Limits = DEFAULT_LIMITS) -> list[Wheel]:
    """pip download the requirements' wheels, check each against the lock, store them.

    pip has no limits of its own: the whole download is bounded in time
    (`limits.download_timeout`) and each wheel in size (`limits.max_download_size`), checked
    before any enters the store.
    """
    by_name = {r.name: r for r in requirements}
    log(f"{lock.name}: downloading {len(requirements)} wheel(s) with pip")
    with tempfile.TemporaryDirectory(prefix="rebuild-wheels-") as tmp:
        partial, dest = Path(tmp) / "requirements.txt", Path(tmp) / "wheels"
        partial.write_text("".join(f"{r.text}\n" for r in requirements))
        try:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--require-hashes", "--no-deps",
                 "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "-d",
                 str(dest), "-r", str(partial)], capture_output=True, text=True, check=False,
                timeout=limits.download_timeout)
        except subprocess.TimeoutExpired:
            raise EnvironmentProblem(f"{lock}: pip download took over "
                                     f"{limits.download_timeout} s (limit [limits] "
                                     "download_timeout); nothing was stored. Check the package "
                                     "index and the network, or raise the limit") from None
        if result.returncode != 0:
            tail = "\n  ".join(result.stderr.strip().splitlines()[-12:])
            lowered = result.stderr.lower()
            if "do not match the hashes" in lowered:
                raise UsageError(f"{lock}: a downloaded wheel does not match the lock's "
                                 f"hashes; nothing was stored:\n  {tail}")
            if "no matching distribution" in lowered or "could not find a version" in lowered:
                raise UsageError(f"{lock}: pip found no wheel for a requirement (only wheels "
                                 f"can be used: no source distributions):\n  {tail}")
            raise EnvironmentProblem(f"{lock}: pip download failed (check the network and the "
                                     f"package index):\n  {tail}")
        files = sorted(dest.iterdir()) if dest.is_dir() else []
        checked = []
        for file in files:
            name, _ = wheel_project(file.name)
            if file.stat().st_size > limits.max_download_size:
                raise UsageError(f"{lock}: {file.name} is over "
                                 f"{show_size(limits.max_download_size)} (limit [limits] "
                                 "max_download_size); nothing was stored")
            req = by_name.get(name)
            if req is None:
                raise UsageError(f"{lock}: pip downloaded {file.name}, which the lock does not "
                                 "name")
            actual = sha256_file(file)
            if actual not in req.hashes:
                raise UsageError(f"{lock}: line {req.line}: {file.name} has sha256 {actual}, "
                                 "which is not among the lock's hashes for "
                                 f"{req.name}=={req.version}; nothing was stored")
            checked.append((file, req, actual))
        got = {req.name for _, req, _ in checked}
        for req in requirements:
            if req.name not in got and not req.has_marker:
                raise UsageError(f"{lock}: line {req.line}: pip downloaded no wheel for "
                                 f"{req.name}=={req.version}")
        wheels = []
        for file, req, actual in checked:
            blob, _ = store.put_file(file)
            wheels.append(Wheel(req.name, req.version, file.name, actual, blob))
    return wheels


def export_wheels(store: Store, inputs: Inputs, dest: Path) -> Path | None:
    """Copy the wheels and the lock out of the store, verified, into `dest` for a sandbox.

    Returns `dest`, or None when the build has no python_lock. Everything is world-readable:
    the runs' users differ.
    """
    if inputs.python_lock is None:
        return None
    dest.mkdir()
    dest.chmod(0o755)
    for wheel in inputs.wheels:
        wheel_project(wheel.filename)
        store.copy_out(wheel.blob, dest / wheel.filename)
        (dest / wheel.filename).chmod(0o644)
    store.copy_out(inputs.python_lock, dest / WHEELS_LOCK_NAME)
    (dest / WHEELS_LOCK_NAME).chmod(0o644)
    return dest


def export_recorded_wheels(store: Store, layers: Mapping[str, Descriptor],
                           dest: Path) -> tuple[tuple[str, ...] | None, Path | None]:
    """The wheels of a stored inputs manifest (layers by title), for a rebuild from the store.

    Returns (the wheel files for `plan_build(wheels=…)`, the directory for `Sandbox.run`),
    or (None, None) when the build had no python_lock.
    """
    if WHEELS_LOCK_NAME not in layers:
        return None, None
    dest.mkdir()
    dest.chmod(0o755)
    files = []
    for title, layer in sorted(layers.items()):
        name = title.removeprefix("wheels/")
        if title == WHEELS_LOCK_NAME or name != title:
            if name != title:
                wheel_project(name)
                files.append(name)
            store.copy_out(layer.digest, dest / name)
            (dest / name).chmod(0o644)
    return tuple(files), dest


# -- npm locks and tarballs -------------------------------------------------------------------


def read_source_file(store: Store, archive: str, name: str, *, where: str) -> bytes:
    """A regular file of a source, read from its canonical tar in the store."""
    with tarfile.open(store.blob_path(archive)) as tar:
        try:
            member = tar.getmember(name)
        except KeyError:
            member = None
        file = tar.extractfile(member) if member is not None and member.isreg() else None
        if file is None:
            raise UsageError(f"{where}: {name} is not a file of the source tree; npm_lock is "
                             "relative to the source's root (where package.json is)")
        with file:
            return file.read()


def fetch_npm(loaded: LoadedRecipe, store: Store, source: SourceInput, *,
              log: Log = lambda _: None, downloaded: set[str] | None = None
              ) -> tuple[str | None, tuple[NpmTarball, ...]]:
    """(blob of the lock, its tarballs): every package of the recipe's npm_lock, downloaded
    from the lock's `resolved` address and checked against its sha512 `integrity`.

    The lock is read from the fetched source (npm_lock is a path inside it): the lock the
    build's `npm ci` reads is the one whose packages are fetched. Every download is checked
    before any enters the store: a refused one leaves nothing.
    """
    downloaded = set() if downloaded is None else downloaded
    name = loaded.recipe.environment.npm_lock
    if name is None:
        return None, ()
    where = f"{loaded.path}: environment.npm_lock"
    data = read_source_file(store, source.archive, name, where=where)
    packages = parse_npm_lock(data, source=f"{where}: {name}")
    lock_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cached = _find_fetch(store, NPM_LOCK_ANN, lock_digest)
    if cached is not None:
        tarballs = tuple(_npm_from_layer(layer) for layer in cached[1]
                         if layer.digest != lock_digest)
        log(f"{name}: {len(tarballs)} npm package(s) found in the store, none downloaded")
        return lock_digest, tarballs
    known = _known_npm(store)
    missing = [p for p in packages if p.sha512 not in known]
    limits = loaded.recipe.bounds
    # One deadline for all of a lock's tarballs, as pip has for a python_lock's wheels: a
    # lock of many packages cannot take download_timeout for each.
    deadline = time.monotonic() + limits.download_timeout
    with tempfile.TemporaryDirectory(prefix="rebuild-npm-") as tmp:
        checked = []
        for number, package in enumerate(missing):
            part = Path(tmp) / f"{number}.tgz"
            label = f"npm package {package.name}@{package.version}:"
            left = math.ceil(deadline - time.monotonic())
            if left <= 0:
                raise EnvironmentProblem(f"{where}: downloading the npm packages took over "
                                         f"{limits.download_timeout} s (limit [limits] "
                                         "download_timeout); nothing was stored. Check the "
                                         "registry and the network, or raise the limit")
            _download(package.resolved, part, where=where, log=log, what=label,
                      limits=dataclasses.replace(limits, download_timeout=left))
            actual = _sha512_file(part)
            if actual != package.sha512:
                raise UsageError(f"{where}: npm package {package.name}@{package.version}: "
                                 f"{package.resolved} does not match the lock's integrity: "
                                 f"expected sha512 {package.sha512}, downloaded {actual}; "
                                 "nothing was stored. The tarball changed where it is "
                                 "published, or the lock is wrong")
            checked.append((package, part))
        for package, part in checked:
            blob, _ = store.put_file(part)
            downloaded.add(blob)
            known[package.sha512] = blob
    tarballs = tuple(NpmTarball(p, known[p.sha512]) for p in packages)
    log(f"{name}: {len(tarballs)} npm package(s): {len(missing)} downloaded, "
        f"{len(tarballs) - len(missing)} found in the store")
    store.put_bytes(data)
    layers = [_layer(store, NPM_LOCK_MEDIA, lock_digest, {TITLE: NPM_LOCK_NAME})]
    layers += [_layer(store, NPM_MEDIA, t.blob, t.layer_annotations()) for t in tarballs]
    _remember(store, NPM_TYPE, layers, {NPM_LOCK_ANN: lock_digest})
    return lock_digest, tarballs


def _sha512_file(path: Path) -> str:
    hasher = hashlib.sha512()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _known_npm(store: Store) -> dict[str, str]:
    """sha512 hex -> blob of every npm tarball the store already holds (from other locks)."""
    known: dict[str, str] = {}
    for entry in store.entries(FETCH_KIND):
        if NPM_LOCK_ANN not in (entry.annotations or {}):
            continue
        for layer in _manifest_layers(store, entry.digest):
            sha512 = (layer.annotations or {}).get(NPM_SHA512_ANN)
            if sha512 is not None and store.has(layer.digest):
                known[sha512] = layer.digest
    return known


def _npm_from_layer(layer: Descriptor) -> NpmTarball:
    ann = layer.annotations or {}
    try:
        package = NpmPackage(ann[NPM_NAME_ANN], ann[NPM_VERSION_ANN], ann[URL_ANN],
                             ann[NPM_SHA512_ANN])
    except KeyError as exc:
        raise StoreError(f"npm tarball {layer.digest}: its record lacks {exc.args[0]}; "
                         "run `rebuild store fsck`") from None
    return NpmTarball(package, layer.digest)


def export_npm_cache(store: Store, tarballs: Sequence[NpmTarball], dest: Path) -> Path:
    """npm's offline cache of `tarballs` (rebuild.inputs.npm: content by sha512) at `dest`,
    each tarball copied out of the store and checked against its sha512 again.
    World-readable: the runs' users differ."""
    dest.mkdir()
    dest.chmod(0o755)
    for tarball in tarballs:
        target = dest / cache_path(tarball.package.sha512)
        for parent in reversed(target.relative_to(dest).parents[:-1]):
            (dest / parent).mkdir(exist_ok=True)
            (dest / parent).chmod(0o755)
        store.copy_out(tarball.blob, target)
        target.chmod(0o644)
        if _sha512_file(target) != tarball.package.sha512:
            raise StoreError(f"npm tarball {tarball.blob} ({tarball.package.name}@"
                             f"{tarball.package.version}) does not have the sha512 recorded "
                             "for it; run `rebuild store fsck`")
    return dest


def recorded_npm(layers: Mapping[str, Descriptor]) -> tuple[NpmTarball, ...] | None:
    """The npm tarballs of a stored inputs manifest (layers by title), or None when the
    build had no npm_lock."""
    if NPM_LOCK_NAME not in layers:
        return None
    return tuple(_npm_from_layer(layer) for title, layer in sorted(layers.items())
                 if title.startswith("npm/"))


# -- the store's record of what was fetched ----------------------------------------------------


def _layer(store: Store, media_type: str, digest: str,
           annotations: dict[str, str]) -> Descriptor:
    return Descriptor(media_type, digest, store.blob_path(digest).stat().st_size, annotations)


def _remember(store: Store, artifact_type: str, layers: list[Descriptor],
              annotations: dict[str, str]) -> None:
    manifest = store.put_artifact(artifact_type, layers, annotations=annotations)
    store.add_to_index(manifest, {KIND: FETCH_KIND, **annotations})


def _manifest_layers(store: Store, digest: str) -> list[Descriptor]:
    manifest: Any = store.read_json(digest)
    return [Descriptor.from_json(layer) for layer in manifest.get("layers", [])]


def _find_fetch(store: Store, key: str,
                value: str) -> tuple[dict[str, str], list[Descriptor]] | None:
    """(annotations, layers) of a remembered fetch whose blobs are all present, if any."""
    if not store.exists():
        return None
    for entry in store.entries(FETCH_KIND):
        annotations = dict(entry.annotations or {})
        if annotations.get(key) != value:
            continue
        layers = _manifest_layers(store, entry.digest)
        if all(store.has(layer.digest) for layer in layers):
            return annotations, layers
    return None


# -- everything -------------------------------------------------------------------------------


def fetch_inputs(loaded: LoadedRecipe, store: Store, *, log: Log = lambda _: None) -> Inputs:
    """Bring every input of the recipe into the store (the only networked step)."""
    downloaded: set[str] = set()
    source, epoch = fetch_source(loaded, store, log=log, downloaded=downloaded)
    lock, wheels = fetch_wheels(loaded, store, log=log, downloaded=downloaded)
    npm_lock, npm = fetch_npm(loaded, store, source, log=log, downloaded=downloaded)
    return Inputs(source, epoch, wheels, lock, npm_lock, npm, frozenset(downloaded))
