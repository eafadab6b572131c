"""The content-addressed store: an OCI image layout on disk (design.md, "Store").

This module is the only writer of the store. Every file is a blob named by its sha256,
written once (temporary file, fsync, atomic rename) and verified on every read. Manifests
(releases, evidence, images) are blobs too; `index.json` names them. Concurrent writers are
safe: blobs are immutable and identical content has one name, and `index.json` is written
under an exclusive lock on the store directory.

`index.json` names every entry at every moment, and a write costs the same in a store of
100,000 releases as in an empty one (docs/formats.md, "`index.json`, appended in place"):
index.json is canonical JSON, so it ends with INDEX_TAIL, and a new entry is written in
place over that ending, followed by it again, in one write. A write-ahead record
(`index.wal`: the entry, and index.json's inode and length before the append) is made
durable first, so that whoever next uses the store (a reader or a writer, under the
exclusive lock) redoes an append a killed writer left torn. Whole rewrites (folding the
journal an older rebuild kept, an index.json another tool wrote) stay atomic.

`gc` cannot lose data: it follows manifests from `index.json` down by media type only (an
artifact's bytes are never parsed), refuses a missing or empty index and a sweep that would
remove every blob, and keeps what a running build uses: a `lease` records every blob the build
reads or writes in a file under `.leases/` that the build holds locked until it ends, and
blobs younger than a grace period stay too. Temporary files are named by their owner
(rebuild.runtime), so those of a killed writer are removed once it is provably dead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from rebuild import runtime
from rebuild.errors import EnvironmentProblem, StoreError, UsageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# Descriptors whose blobs gc and fsck open and follow; every other media type is a leaf.
MANIFEST_TYPES = frozenset({OCI_MANIFEST,
                            "application/vnd.docker.distribution.manifest.v2+json"})
INDEX_TYPES = frozenset({OCI_INDEX,
                         "application/vnd.docker.distribution.manifest.list.v2+json"})
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
KIND = "dev.rebuild.kind"
SUBJECT = "dev.rebuild.subject"  # repeats a manifest's subject in index.json, for lookups

# The records rebuild keeps (docs/formats.md, "Store records"): artifact types, annotations
# and media types shared by the modules that write and read them.
RELEASE_TYPE = "application/vnd.rebuild.release.v1+json"
ATTEMPT_TYPE = "application/vnd.rebuild.attempt.v1+json"
INPUTS_TYPE = "application/vnd.rebuild.inputs.v1+json"
EVIDENCE_TYPE = "application/vnd.rebuild.evidence.v1+json"
RELEASE_ANN = "dev.rebuild.release"
SIGNER_ANN = "dev.rebuild.signer"
EPOCH_ANN = "dev.rebuild.source-date-epoch"
STATEMENT_MEDIA = "application/vnd.in-toto+json"
BUNDLE_MEDIA = "application/vnd.dev.sigstore.bundle.v0.3+json"
SBOM_MEDIA = "application/vnd.cyclonedx+json"
LINK_MEDIA = "application/vnd.in-toto.link+dsse+json"
IMAGE_ID_ANN = "dev.rebuild.image.id"
IMAGE_REF_ANN = "dev.rebuild.image.ref"
CREATED_ANN = "org.opencontainers.image.created"
LINK_ANN = "dev.rebuild.link"  # a release layer that is a symbolic link: its target
MODE_ANN = "dev.rebuild.mode"  # a release layer's permission bits ("0755")
CHUNK = 1 << 20
# The journal of entries not yet in index.json that rebuild kept before index.json was
# appended to in place: folded into index.json the first time such a store is used.
JOURNAL = "index.journal"
# The write-ahead record of the append in progress (docs/formats.md, "`index.json`,
# appended in place").
WAL = "index.wal"
# How canonical JSON ends an OCI image index (keys sorted: "manifests" before the other two):
# an append writes its entry over this and this again after it.
INDEX_TAIL = b'],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}'
# The query cache's indexes; position: the next one is MAX(position) + 1, a scan of every row
# without it.
CACHE_INDEXES = ("position", "ref_name", "kind", "subject", "entry")


def canonical_json(value: Any) -> bytes:
    """The one serialization of JSON that rebuild hashes or signs: sorted keys, compact, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return _hash_stream(f)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Descriptor:
        return cls(data["mediaType"], data["digest"], int(data["size"]),
                   data.get("annotations"), data.get("artifactType"))


@dataclass(frozen=True)
class Problem:
    """One finding of `fsck` (`digest` is "index.json" for the index itself)."""

    digest: str
    what: str


def artifact_manifest(artifact_type: str, layers: Sequence[Descriptor], *,
                      subject: Descriptor | None = None,
                      annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The OCI artifact manifest (empty config) `Store.put_artifact` writes: pure, so that a
    verifier can recompute a manifest from signed facts and compare digests."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [layer.to_json() for layer in layers],
    }
    if subject is not None:
        manifest["subject"] = Descriptor(subject.media_type, subject.digest,
                                         subject.size).to_json()
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest


def release_annotations(release: str, source_date_epoch: int) -> dict[str, str]:
    """A release manifest's own annotations: its name and its creation time, which is its
    SOURCE_DATE_EPOCH (no wall clock, so the same build names the same manifest)."""
    created = datetime.fromtimestamp(source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {RELEASE_ANN: release, CREATED_ANN: created}


@dataclass(frozen=True)
class Collected:
    """What `gc` removed (or, in a dry run, would remove) and what it kept, and why."""

    removed: tuple[tuple[str, int], ...]  # (digest, size)
    leased: int  # unreferenced blobs kept because a running build uses them
    young: int  # unreferenced blobs kept because they are younger than the grace period
    temporary: int  # temporary files and directories of dead writers, and stale leases
    dry_run: bool

    @property
    def digests(self) -> list[str]:
        return [digest for digest, _ in self.removed]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.removed)


_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def _hex(digest: str) -> str:
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise StoreError(f"not a sha256 digest: {digest!r}")
    return match[1]


class Staging:
    """Blobs written in one pass with the reading that hashes them, then named all at once.

    `copy` writes a file's bytes to a temporary file of the staging directory (in the
    store's `.tmp`, named by its owner), hashing exactly the bytes written; `commit` leases
    the digests, makes every staged file durable with one syncfs (a blob is durable before
    it is named), then renames each into `blobs/`. Identical contents are staged once.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._directory: Path | None = None  # made by the first copy
        self._staged: dict[str, Path] = {}  # digest -> temporary file
        self._names = itertools.count()
        self._guard = threading.Lock()  # copy may run in several threads

    def _made_directory(self) -> Path:
        with self._guard:
            if self._directory is None:
                store = self._store
                store.init()
                self._directory = Path(tempfile.mkdtemp(dir=store._tmp,
                                                        prefix=store._temp_prefix("dir")))
            return self._directory

    def close(self) -> None:
        """Remove what was staged and not committed."""
        if self._directory is not None:
            runtime.remove_tree(self._directory)
            self._directory = None
            self._staged.clear()

    def copy(self, src: int) -> tuple[str, int]:
        """Copy the open file `src` (from its current offset) into a staged blob; returns
        (digest, size) of the bytes written."""
        name = self._made_directory() / str(next(self._names))
        hasher, size = hashlib.sha256(), 0
        try:
            # Created read-only: the fd may write, nothing else ever will.
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            with os.fdopen(fd, "wb") as out:
                while chunk := os.read(src, CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except OSError as exc:
            name.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._store._disk_full() from exc
            raise
        digest = "sha256:" + hasher.hexdigest()
        with self._guard:
            duplicate = digest in self._staged
            if not duplicate:
                self._staged[digest] = name
        if duplicate:
            name.unlink()
        return digest, size

    def commit(self) -> None:
        """Name every staged blob in the store (idempotent: a committed blob is not staged)."""
        if not self._staged or self._directory is None:
            return
        store = self._store
        store._hold_many(self._staged)  # before looking: see Store._hold
        try:
            _sync_file_system(self._directory, list(self._staged.values()))
            for digest, name in self._staged.items():
                final = store.blob_path(digest)
                if final.exists():
                    name.unlink()
                else:
                    name.rename(final)
            _fsync_dir(store.blobs)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise store._disk_full() from exc
            raise
        self._staged.clear()


class Store:
    """An OCI image layout directory used as rebuild's content-addressed store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs" / "sha256"  # blob_path is called once per artifact
        self._lease: tuple[int, set[str]] | None = None  # (locked lease file, digests in it)
        self._lease_guard = threading.Lock()
        self._held = threading.local()  # this thread's hold of the store lock (see _locked)

    # -- layout ---------------------------------------------------------------------------

    @property
    def blobs(self) -> Path:
        return self._blobs

    @property
    def _tmp(self) -> Path:
        # Temporary files live outside blobs/ so that a crashed writer never leaves a partial
        # blob under a digest name; same filesystem, so the final rename is atomic.
        return self.root / ".tmp"

    @property
    def _leases(self) -> Path:
        return self.root / ".leases"

    def _temp_prefix(self, kind: str) -> str:
        # The owner's token first: what a killed writer leaves is found by its name.
        return f"{runtime.current_owner().token}-{kind}-"

    @contextlib.contextmanager
    def temporary_directory(self) -> Iterator[Path]:
        """A scratch directory on the store's filesystem (for files that become blobs)."""
        self.init()
        with tempfile.TemporaryDirectory(dir=self._tmp, prefix=self._temp_prefix("dir")) as tmp:
            yield Path(tmp)

    def init(self) -> None:
        """Create the layout if it does not exist (idempotent)."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"store path {self.root} is not a directory; pass --store DIR")
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            self._write_atomic(layout, canonical_json({"imageLayoutVersion": "1.0.0"}))
        if not (self.root / "index.json").exists():
            with self._locked():
                if not (self.root / "index.json").exists():
                    self._write_index([])

    def exists(self) -> bool:
        return (self.root / "oci-layout").is_file()

    def require(self) -> None:
        if not self.exists():
            raise StoreError(f"no store at {self.root}: build something first, or pass --store "
                             "DIR (env REBUILD_STORE) naming an existing store")

    def blob_path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    # -- blobs ----------------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        path = self.blob_path(digest)
        self._hold(digest)  # before looking: a build that finds a blob keeps it
        return path.is_file()

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes as a blob; returns (digest, size). Writing existing content is a no-op."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            self._write_atomic(self.blob_path(digest), data)
        return digest, len(data)

    def put_file(self, path: Path) -> tuple[str, int]:
        """Stream a file into the store, hashing while copying; returns (digest, size)."""
        self.init()
        hasher = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=self._temp_prefix("blob"))
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                while chunk := src.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + hasher.hexdigest()
            final = self.blob_path(digest)
            self._hold(digest)
            if final.exists():
                tmp.unlink()
            else:
                tmp.chmod(0o444)
                tmp.replace(final)
                _fsync_dir(final.parent)
            return digest, size
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full() from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        """Blobs copied while their bytes are read for another purpose (a run's outputs,
        hashed once while they are stored), named only by `Staging.commit`; what is not
        committed is removed when the block ends."""
        staging = Staging(self)  # its directory is made when the first output is staged
        try:
            yield staging
        finally:
            staging.close()

    def read_bytes(self, digest: str) -> bytes:
        """Read a blob, verifying its hash."""
        path = self.blob_path(digest)
        self._hold(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store {self.root}; "
                             "run `rebuild store fsck` and restore it from a copy") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"blob {digest} is corrupt (its content no longer matches its "
                             f"name) in {self.root}; run `rebuild store fsck` and restore it")
        return data

    def read_json(self, digest: str) -> Any:
        return json.loads(self.read_bytes(digest))

    @contextlib.contextmanager
    def open_verified(self, digest: str) -> Iterator[IO[bytes]]:
        """Open a large blob for streaming; the hash is checked before the file is handed out."""
        path = self.blob_path(digest)
        self._hold(digest)
        if not path.is_file():
            raise StoreError(f"blob {digest} is missing from the store {self.root}; "
                             "run `rebuild store fsck` and restore it from a copy")
        with path.open("rb") as f:
            if "sha256:" + _hash_stream(f) != digest:
                raise StoreError(f"blob {digest} is corrupt in {self.root}; "
                                 "run `rebuild store fsck` and restore it")
            f.seek(0)
            yield f

    def copy_out(self, digest: str, dest: Path) -> None:
        """Copy a blob to `dest`, verifying it."""
        with self.open_verified(digest) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, CHUNK)

    # -- manifests and the index ------------------------------------------------------------

    def put_manifest(self, manifest: Mapping[str, Any]) -> Descriptor:
        data = canonical_json(manifest)
        digest, size = self.put_bytes(data)
        return Descriptor(OCI_MANIFEST, digest, size, artifact_type=manifest.get("artifactType"))

    def put_artifact(self, artifact_type: str, layers: list[Descriptor], *,
                     subject: Descriptor | None = None,
                     annotations: Mapping[str, str] | None = None) -> Descriptor:
        """Write an OCI artifact manifest (empty config) whose layers are stored blobs."""
        self.put_bytes(b"{}")
        return self.put_manifest(artifact_manifest(artifact_type, layers, subject=subject,
                                                   annotations=annotations))

    def index(self) -> list[Descriptor]:
        """Every entry of index.json, in order (which names every entry at every moment)."""
        if not (self.root / "index.json").exists():
            return []
        with self._settled():
            return self._index_file()

    def _index_file(self) -> list[Descriptor]:
        path = self.root / "index.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise StoreError(f"{path} is not valid JSON ({exc}); restore it from a copy") from None
        return _index_entries(data, path)

    def add_to_index(self, desc: Descriptor, annotations: Mapping[str, str]) -> Descriptor:
        """Name a stored manifest in the index; an identical entry is not named twice. The
        entry is written into index.json in place, in one write whatever the store's size
        (docs/formats.md, "`index.json`, appended in place")."""
        entry = Descriptor(desc.media_type, desc.digest, desc.size, dict(annotations),
                           desc.artifact_type)
        self.init()
        with self._locked():
            self._recover()
            # The query cache answers "named already?" without reading index.json; it is
            # brought up to date (only what was appended since it was) before it answers.
            with contextlib.closing(self._query_index()) as db:
                known = db.execute("SELECT 1 FROM entries WHERE entry = ?",
                                   (canonical_json(entry.to_json()).decode(),)).fetchone()
                position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) "
                                      "FROM entries").fetchone()[0]
            if known is not None:
                return entry
            before = self._signature()
            if not self._append_in_place(entry):
                # Not written by rebuild (other whitespace or key order): rewritten once,
                # canonically; every later write appends in place.
                entries = self._index_file()
                self._write_index([*entries, entry])
                position = len(entries)
            self._add_to_query_index(before, position, entry)
        return entry

    def _append_in_place(self, entry: Descriptor) -> bool:
        """Under the exclusive lock: write `entry` over index.json's closing INDEX_TAIL,
        followed by INDEX_TAIL again, in one write, the write-ahead record made durable
        first; False (nothing written) when index.json does not end as canonical JSON does."""
        path = self.root / "index.json"
        data = canonical_json(entry.to_json())
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            at = st.st_size - len(INDEX_TAIL)
            if at < 1 or os.pread(fd, len(INDEX_TAIL), at) != INDEX_TAIL:
                return False
            previous = os.pread(fd, 1, at - 1)
            if previous not in (b"[", b"}"):
                return False
            tail = (b"" if previous == b"[" else b",") + data + INDEX_TAIL
            self._write_wal(canonical_json({"entry": entry.to_json(), "inode": st.st_ino,
                                            "length": st.st_size}) + b"\n")
            try:
                os.pwrite(fd, tail, at)
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise  # the write-ahead record redoes it, next time the store is used
                # Back to the bytes it had: cutting and rewriting them needs no new block.
                os.ftruncate(fd, st.st_size)
                os.pwrite(fd, INDEX_TAIL, at)
                os.fsync(fd)
                self._clear_wal(durable=True)
                raise self._disk_full() from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full() from exc
            raise
        finally:
            os.close(fd)
        # Not synced: a stale record only ever finds its entry written already (or names an
        # index.json replaced since, by its inode), and nothing is redone.
        self._clear_wal(durable=False)
        return True

    @property
    def _wal(self) -> Path:
        return self.root / WAL

    def _write_wal(self, record: bytes) -> None:
        created = not self._wal.exists()
        fd = os.open(self._wal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the record must survive a crash that the index.json write may not
            _fsync_dir(self.root)

    def _clear_wal(self, *, durable: bool) -> None:
        try:
            fd = os.open(self._wal, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _unsettled(self) -> bool:
        """Whether a writer died between its write-ahead record and index.json, or an older
        rebuild left a journal of entries not yet in index.json."""
        try:
            if self._wal.stat().st_size:
                return True
        except FileNotFoundError:
            pass
        return self._journal.exists()

    @contextlib.contextmanager
    def _settled(self) -> Iterator[None]:
        """The shared store lock, over an index.json that names every entry: what a killed
        writer left half done is redone first (under the exclusive lock), and an older
        rebuild's journal folded."""
        while True:
            with self._locked(shared=True):
                if not self._unsettled():
                    yield
                    return
            with self._locked():
                self._recover()

    def _recover(self) -> int:
        """Under the exclusive lock: redo the append a write-ahead record names, if index.json
        does not hold it exactly (cut back to the record's length, then written again); then
        fold an older rebuild's journal. Returns how many journal lines were folded."""
        self._recover_append()
        return self._fold()

    def _recover_append(self) -> None:
        """Under the exclusive lock: the write-ahead record's part of `_recover`."""
        record = self._wal.read_bytes() if self._wal.exists() else b""
        # A record without its newline: its writer died before it touched index.json.
        if record.endswith(b"\n"):
            entry, inode, length = _wal_record(record, self._wal)
            self._redo_append(entry, inode, length)
        if record:
            self._clear_wal(durable=True)

    def _redo_append(self, entry: bytes, inode: int, length: int) -> None:
        path = self.root / "index.json"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # replaced since, or removed: the record is not about this index.json
        try:
            st = os.fstat(fd)
            at = length - len(INDEX_TAIL)
            if st.st_ino != inode:
                return  # replaced since (an atomic rewrite holds every entry)
            if at < 1 or st.st_size < at:
                raise StoreError(f"{path} is shorter than its write-ahead record {self._wal} "
                                 "says it was before the last write; restore it from a copy")
            tail = (b"" if os.pread(fd, 1, at - 1) == b"[" else b",") + entry + INDEX_TAIL
            if st.st_size == at + len(tail) and os.pread(fd, len(tail), at) == tail:
                return  # written completely before the writer died
            os.pwrite(fd, tail, at)
            os.ftruncate(fd, at + len(tail))
            os.fsync(fd)
        finally:
            os.close(fd)

    def compact(self) -> int:
        """Fold an older rebuild's journal into index.json (one atomic rewrite), and redo
        a write a killed writer left half done; returns how many journal lines were folded.
        index.json names every entry afterwards (it does at every moment in a store this
        rebuild wrote)."""
        self.require()
        with self._locked():
            # A journal is only started beside a large index.json: beside a missing or empty
            # one, folding would pass recent entries off as the whole index.
            if self._journal.exists() and not self._index_file():
                raise StoreError(f"store compact changed nothing: {self.root / 'index.json'} "
                                 f"is missing or names nothing while {JOURNAL} names entries; "
                                 "restore index.json from a copy")
            return self._recover()

    def _fold(self) -> int:
        """Under the exclusive lock: the journal an older rebuild appended to (entries not in
        index.json) into index.json, one atomic rewrite. A crash between the rewrite and the
        unlink leaves the entries in both files, counted once by the next fold."""
        if not self._journal.exists():
            return 0
        lines, _ = self._read_journal(0)
        entries = self._index_file()
        if lines and not entries:
            raise StoreError(f"{self.root / 'index.json'} is missing or names nothing while "
                             f"{JOURNAL} names entries: recent entries are not the whole "
                             "index; restore index.json from a copy")
        self._write_index(_unique(entries, lines))
        self._journal.unlink(missing_ok=True)
        _fsync_dir(self.root)
        return len(lines)

    def find(self, ref_name: str) -> Descriptor | None:
        """The manifest named `ref_name` (org.opencontainers.image.ref.name), if any."""
        found = self._query("ref_name = ?", ref_name)
        return found[0] if found else None

    def release(self, name: str) -> Descriptor:
        """The release manifest `name@version`, or StoreError saying the store has none."""
        self.require()
        found = self.find(name)
        if found is None:
            raise StoreError(f"no release {name} in the store {self.root}; `rebuild store ls` "
                             "lists what it holds")
        return found

    def entries(self, kind: str) -> list[Descriptor]:
        return self._query("kind = ?", kind)

    def referrers(self, subject_digest: str) -> list[Descriptor]:
        """Index entries whose manifest names `subject_digest` as its subject."""
        return self._query("subject = ?", subject_digest)

    # -- the query index: a cache of index.json ---------------------------------------------

    def _query(self, where: str, value: str) -> list[Descriptor]:
        """Look entries up in the SQLite cache of the index (design.md: a query index may sit
        beside the store; it is rebuilt from index.json whenever that file is replaced, and
        reads only the appended bytes when it grew)."""
        if not (self.root / "index.json").exists():
            return []
        for attempt in range(2):
            with contextlib.closing(self._query_index(rebuild=attempt > 0)) as db:
                query = ("SELECT position, ref_name, kind, subject, entry FROM entries "  # noqa: S608
                         f"WHERE {where} ORDER BY position")  # (where: a constant)
                rows = db.execute(query, (value,)).fetchall()
            found = _rows_entries(rows)
            if found is not None:
                return found
        # Rebuilt from index.json and still inconsistent: the cache cannot be written.
        raise StoreError(f"the query cache {self.root / '.cache' / 'query.sqlite'} disagrees "
                         "with itself even after a rebuild; delete it (it is derived data)")

    def cache_problems(self) -> list[str]:
        """Where the query cache disagrees with index.json (`fsck`): the cache is derived data
        and an edited row must never be believed, so a disagreeing cache is reported and then
        rebuilt from index.json."""
        path = self.root / ".cache" / "query.sqlite"
        if not path.exists() or not (self.root / "index.json").exists():
            return []
        expected = [_row(i, e) for i, e in enumerate(self.index())]
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
                current = db.execute("SELECT signature FROM meta").fetchall()
                rows = db.execute("SELECT position, ref_name, kind, subject, entry FROM "
                                  "entries ORDER BY position, rowid").fetchall()
        except sqlite3.Error as exc:
            rows, problems = [], [f"unreadable ({exc})"]
        else:
            if current != [(self._signature(),)]:
                return []  # stale: the next lookup rebuilds it from index.json anyway
            problems = []
        if not problems:
            cached = [(int(r[0]), r[1], r[2], r[3], _canonical_entry(r[4])) for r in rows]
            wanted = [(r[0], r[1], r[2], r[3], _canonical_entry(r[4])) for r in expected]
            if len(cached) != len(wanted):
                problems.append(f"holds {len(cached)} entries, index.json {len(wanted)}")
            problems += [f"row {w[0]} differs from index.json entry {w[0]} ({w[4]})"
                         for c, w in zip(cached, wanted, strict=False) if c != w][:5]
        if problems:
            with contextlib.closing(self._query_index(rebuild=True)):
                pass
        return problems

    def _signature(self) -> str:
        """index.json's inode, size and mtime: a new inode when it is replaced, a larger size
        (same inode) when entries were appended in place."""
        st = (self.root / "index.json").stat()
        return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    @property
    def _journal(self) -> Path:
        return self.root / JOURNAL

    def _read_journal(self, offset: int) -> tuple[list[Descriptor], int]:
        """An older rebuild's journal entries from byte `offset` on, and the offset after the
        last complete line: a line without its newline is a write that never finished (a
        crash), so it is not an entry."""
        try:
            with self._journal.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        complete = data[:data.rfind(b"\n") + 1]
        entries = []
        for number, line in enumerate(complete.splitlines()):
            try:
                item = json.loads(line)
            except ValueError:
                item = None
            entry = _descriptor(item)
            if entry is None:
                raise StoreError(f"{self._journal}: line {number + 1} after byte {offset} is "
                                 "not a valid descriptor; restore the store from a copy")
            entries.append(entry)
        return entries, offset + len(complete)

    def _appended(self, cached: str | None) -> list[Descriptor] | None:
        """The entries appended to index.json since the cache recorded `cached` (same inode,
        grown), or None when the cache must be rebuilt: index.json replaced, or what follows
        the cached length is not a run of appended entries closed by INDEX_TAIL, or the cache
        of an older rebuild holds journal lines."""
        path = self.root / "index.json"
        # The previous rebuild added its journal's state: "0:0" when there was none, and
        # then its rows are index.json's, as this rebuild's are.
        cached, _, journal = (cached or "").partition(" ")
        if journal not in ("", "0:0"):
            return None
        if cached == self._signature():
            return []
        try:
            old_inode, old_size, _ = (int(n) for n in cached.split(":"))
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                at = old_size - len(INDEX_TAIL)
                if st.st_ino != old_inode or st.st_size <= old_size or at < 1:
                    return None
                f.seek(at - 1)
                data = f.read()
        except (ValueError, OSError):
            return None  # a signature of an older rebuild, or no index.json
        if not data.endswith(INDEX_TAIL) or data[:1] not in (b"[", b"}"):
            return None
        fragment = data[1:-len(INDEX_TAIL)]
        if (data[:1] == b"}") != fragment.startswith(b","):
            return None
        try:
            items = json.loads(b"[" + fragment.removeprefix(b",") + b"]")
        except ValueError:
            return None
        entries = [_descriptor(item) for item in items] if isinstance(items, list) else [None]
        return [e for e in entries if e is not None] if None not in entries else None

    def _open_query_index(self) -> sqlite3.Connection:
        path = self.root / ".cache" / "query.sqlite"
        path.parent.mkdir(exist_ok=True)
        db = sqlite3.connect(path, timeout=60)
        db.execute("CREATE TABLE IF NOT EXISTS meta (signature TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS entries (position INTEGER, ref_name TEXT, "
                   "kind TEXT, subject TEXT, entry TEXT)")
        for column in CACHE_INDEXES:
            db.execute(f"CREATE INDEX IF NOT EXISTS by_{column} ON entries ({column})")
        return db

    def _query_index(self, *, rebuild: bool = False) -> sqlite3.Connection:
        # Under the shared store lock: no append runs between reading index.json and
        # recording its signature, so the cache never records half of a change.
        with self._settled():
            signature = self._signature()
            db = self._open_query_index()
            current = db.execute("SELECT signature FROM meta").fetchone()
            if current is not None and current[0] == signature and not rebuild:
                return db
            # Readers share the store lock: the cache's own write lock orders them.
            db.execute("BEGIN IMMEDIATE")
            current = db.execute("SELECT signature FROM meta").fetchone()
            if current is not None and current[0] == signature and not rebuild:
                db.commit()
                return db
            appended = None if rebuild else self._appended(current[0] if current else None)
            with db:
                if appended is not None:
                    # Only entries were appended: those bytes, not the whole index again.
                    position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) "
                                          "FROM entries").fetchone()[0]
                    db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                                   (_row(position + i, e) for i, e in enumerate(appended)))
                else:
                    entries = self._index_file()
                    db.execute("DELETE FROM entries")
                    # Rows first, then the indexes: several times faster for 400,000 rows.
                    for column in CACHE_INDEXES:
                        db.execute(f"DROP INDEX IF EXISTS by_{column}")
                    db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                                   (_row(i, e) for i, e in enumerate(entries)))
                    for column in CACHE_INDEXES:
                        db.execute(f"CREATE INDEX by_{column} ON entries ({column})")
                db.execute("DELETE FROM meta")
                db.execute("INSERT INTO meta VALUES (?)", (signature,))
            return db

    def _add_to_query_index(self, before: str, position: int, entry: Descriptor) -> None:
        """Keep an up-to-date cache up to date without re-reading index.json."""
        with contextlib.closing(self._open_query_index()) as db, db:
            current = db.execute("SELECT signature FROM meta").fetchone()
            if current is not None and current[0] == before:
                db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", _row(position, entry))
                db.execute("UPDATE meta SET signature = ?", (self._signature(),))

    # -- leases: what a running build uses ----------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Keep every blob this object reads, finds or writes safe from `gc` until the block
        ends (or the process dies: the lease is an flock, released by the kernel)."""
        if self._lease is not None or not self.exists():
            yield  # already leasing (the outer block ends it), or nothing to protect yet
            return
        try:
            self._leases.mkdir(exist_ok=True)
            with self._locked():  # gc never sees a lease file that is not locked yet
                fd, name = tempfile.mkstemp(dir=self._leases, suffix=".lease",
                                            prefix=self._temp_prefix("build"))
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a read-only store (an archive): nobody collects garbage in it
            yield
            return
        self._lease = (fd, set())
        try:
            yield
        finally:
            with self._lease_guard:
                self._lease = None
            Path(name).unlink(missing_ok=True)
            os.close(fd)

    def _hold(self, digest: str) -> None:
        """Record `digest` in the lease, if any, before the caller looks for the blob: gc
        reads the leases and removes blobs under the exclusive store lock, so the blob is
        either gone before this returns (and the caller writes it again) or kept."""
        with self._lease_guard:
            if self._lease is None or digest in self._lease[1]:
                return
            fd, held = self._lease
            with self._locked(shared=True):
                os.write(fd, f"{digest}\n".encode())
            held.add(digest)

    def _hold_many(self, digests: Iterable[str]) -> None:
        """`_hold` for many digests at once: one write to the lease under one lock."""
        with self._lease_guard:
            if self._lease is None:
                return
            fd, held = self._lease
            new = sorted(set(digests) - held)
            if not new:
                return
            with self._locked(shared=True):
                os.write(fd, "".join(f"{digest}\n" for digest in new).encode())
            held.update(new)

    def _live_leases(self, *, remove_stale: bool) -> tuple[set[str], int]:
        """The digests leased by running builds, and how many stale leases were found (a
        lease nobody holds locked belongs to a process that ended without removing it)."""
        leased: set[str] = set()
        stale = 0
        for path in sorted(self._leases.glob("*.lease")) if self._leases.is_dir() else []:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # held: its build runs
                    with os.fdopen(os.dup(fd), "rb") as f:
                        leased.update(line.decode().strip() for line in f if line.strip())
                    continue
                stale += 1
                if remove_stale:
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return leased, stale

    # -- upkeep ---------------------------------------------------------------------------

    def _closure(self, roots: Iterable[Descriptor], *, present: set[str] | None = None,
                 corrupt: frozenset[str] = frozenset()) -> tuple[set[str], list[Problem]]:
        """Every digest reachable from `roots`, following manifests and indexes by their
        descriptors' media type (never by what a blob's bytes look like), and the problems
        met: a missing blob, or a manifest that cannot be read."""
        reached: set[str] = set()
        problems: list[Problem] = []
        todo: list[tuple[Any, str]] = [(r.to_json(), "index.json") for r in roots]
        while todo:
            desc, parent = todo.pop()
            digest = desc.get("digest") if isinstance(desc, dict) else None
            if not isinstance(digest, str):
                problems.append(Problem(parent, f"holds a malformed descriptor: {desc!r:.80}"))
                continue
            if digest in reached:
                continue
            reached.add(digest)
            try:
                path = self.blob_path(digest)
            except StoreError:
                problems.append(Problem(parent, f"names a malformed digest {digest!r:.80}"))
                continue
            exists = digest in present if present is not None else path.is_file()
            media = desc.get("mediaType")
            followed = media in MANIFEST_TYPES or media in INDEX_TYPES
            if not exists:
                what = "missing manifest" if followed else "missing"
                problems.append(Problem(digest, f"{what} (referenced by {parent})"))
                continue
            if not followed:
                continue  # an artifact, a config, a log: bytes, never parsed
            if digest in corrupt:
                continue  # reported already; its content cannot be trusted
            data = path.read_bytes()
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                problems.append(Problem(digest, "corrupt manifest (its content no longer "
                                                "matches its name)"))
                continue
            try:
                manifest = json.loads(data)
            except ValueError:
                problems.append(Problem(digest, "manifest is not valid JSON"))
                continue
            if not isinstance(manifest, dict):
                problems.append(Problem(digest, "manifest is not a JSON object"))
                continue
            children = ([manifest.get("config"), *_list(manifest.get("layers"))]
                        if media in MANIFEST_TYPES else _list(manifest.get("manifests")))
            if "subject" in manifest:
                children.append(manifest["subject"])
            todo += [(child, digest) for child in children if child is not None]
        return reached, problems

    def _index_problems(self, blobs: int) -> list[Problem]:
        """A missing index, or one that names nothing while blobs exist: every blob would
        look unreferenced."""
        if not (self.root / "index.json").exists():
            return [Problem("index.json", f"missing, while the store holds {blobs} blob(s): "
                            "nothing is named, so every blob looks unreferenced; restore "
                            "index.json from a copy")]
        # index.json itself, not an older rebuild's journal: recent entries beside an
        # emptied index.json must not pass for the whole index.
        if blobs and not self._index_file():
            return [Problem("index.json", f"names no manifest, while the store holds {blobs} "
                            "blob(s); restore index.json from a copy")]
        return []

    def fsck(self) -> list[Problem]:
        """Check every blob's hash, the index, and that every reference is present."""
        self.require()
        with self._locked():  # an append a killed writer left torn is no corruption
            self._recover_append()
        problems: list[Problem] = []
        present: set[str] = set()
        corrupt: set[str] = set()
        for path in sorted(self.blobs.iterdir()):
            digest = "sha256:" + path.name
            with path.open("rb") as f:
                actual = _hash_stream(f)
            if actual != path.name:
                problems.append(Problem(digest, f"corrupt: content hashes to sha256:{actual}"))
                corrupt.add(digest)
            present.add(digest)
        index_problems = self._index_problems(len(present))
        problems += index_problems
        if (self.root / "index.json").exists() and not index_problems:
            problems += self._closure(self.index(), present=present,
                                      corrupt=frozenset(corrupt))[1]
            problems += [Problem(".cache/query.sqlite", "query cache disagrees with "
                                 f"index.json: {what} (rebuilt from index.json)")
                         for what in self.cache_problems()]
        return problems

    def reachable(self) -> set[str]:
        """Every blob named, directly or through manifests, by index.json."""
        return self._closure(self.index())[0]

    def gc(self, grace_seconds: float = 3600, *, dry_run: bool = False) -> Collected:
        """Remove blobs nothing in index.json reaches, unless a running build leases them or
        they are younger than the grace period; and the temporary files of dead writers.

        Refuses (StoreError, nothing removed) when the index is missing or empty, when a
        manifest cannot be read (its references would be unknown), or when every blob would
        go."""
        self.require()
        # A build writes its blobs before it names them in index.json, and may reuse an old
        # unreferenced blob: the lease covers both, the grace period what leases cannot
        # (a writer of an older rebuild, another tool).
        cutoff = time.time() - grace_seconds
        with self._locked():
            self._recover_append()
            blobs = sorted(self.blobs.iterdir())
            refusal = self._index_problems(len(blobs))
            keep, problems = self._closure(self.index()) if not refusal else (set(), [])
            # A missing leaf costs nothing more; a manifest that cannot be read hides what it
            # references, which must then not be taken for garbage.
            unsafe = [p for p in refusal + problems if not p.what.startswith("missing (")]
            if unsafe:
                raise StoreError(f"store gc removed nothing: {unsafe[0].digest}: "
                                 f"{unsafe[0].what}; run `rebuild store fsck`")
            leased, stale = self._live_leases(remove_stale=not dry_run)
            removed: list[tuple[str, int]] = []
            held = young = 0
            for path in blobs:
                digest = "sha256:" + path.name
                if digest in keep:
                    continue
                st = path.stat()
                if digest in leased:
                    held += 1
                elif st.st_mtime >= cutoff:
                    young += 1
                else:
                    removed.append((digest, st.st_size))
            if blobs and len(removed) == len(blobs):
                raise StoreError(f"store gc removed nothing: all {len(blobs)} blob(s) look "
                                 "unreferenced, which means index.json is wrong, not the "
                                 "blobs; run `rebuild store fsck`")
            temporary = self._remove_temporaries(cutoff, dry_run=dry_run) + stale
            if not dry_run:
                for digest, _ in removed:
                    self.blob_path(digest).unlink(missing_ok=True)
        return Collected(tuple(removed), held, young, temporary, dry_run)

    def remove_dead_temporaries(self) -> int:
        """Remove what killed writers left in the store's temporary directory (by owner)."""
        return self._remove_temporaries(None, dry_run=False)

    def _remove_temporaries(self, cutoff: float | None, *, dry_run: bool) -> int:
        """Temporary entries of dead owners; with `cutoff`, also unnamed ones older than it
        (left by an older rebuild)."""
        count = 0
        here = runtime.current_owner()
        for entry in sorted(self._tmp.iterdir()) if self._tmp.is_dir() else []:
            owner = runtime.Owner.parse("-".join(entry.name.split("-")[:5]))
            if owner is not None:
                if not runtime.is_dead(owner, here):
                    continue
            else:
                try:
                    if cutoff is None or entry.lstat().st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    continue
            count += 1
            if not dry_run:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        return count

    # -- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, shared: bool = False) -> Iterator[None]:
        # flock on the store directory itself: no lock file, and it is released when the
        # process dies, so a killed writer never wedges the store. Leases take it shared,
        # gc and index writers exclusive. Nested use by this object keeps the outer hold
        # (two flocks of one process on two descriptors would wait for each other).
        if getattr(self._held, "lock", False):
            yield
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            self._held.lock = True
            try:
                yield
            finally:
                self._held.lock = False
        finally:
            os.close(fd)

    def _write_index(self, entries: list[Descriptor]) -> None:
        """Under the exclusive lock, after `_recover`: index.json replaced atomically. The
        write-ahead record is cleared durably first: once index.json is replaced, no record
        of an append to the old one may be taken for one to the new."""
        self._clear_wal(durable=True)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [e.to_json() for e in entries]}
        self._write_atomic(self.root / "index.json", canonical_json(index), mode=0o644)

    def _write_atomic(self, final: Path, data: bytes, mode: int = 0o444) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=self._temp_prefix("write"))
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(mode)
            tmp.replace(final)
            _fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full() from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _disk_full(self) -> EnvironmentProblem:
        """A full disk is the environment's problem (exit 3); the temporary file is gone and
        no blob or index was replaced, so the store is as it was."""
        return EnvironmentProblem(f"no space left on the device of the store {self.root}; "
                                  "nothing was changed in the store; free space (or pass "
                                  "--store DIR on a larger disk) and run again")


def _index_entries(data: Any, path: Path) -> list[Descriptor]:
    """The descriptors of a parsed index.json; anything else is a corrupt store (exit 5), never
    an empty one: gc would then drop every blob."""
    manifests = data.get("manifests") if isinstance(data, dict) else None
    if not isinstance(manifests, list):
        raise StoreError(f"{path} is not an OCI image index (no \"manifests\" list); "
                         "restore it from a copy")
    entries = []
    for number, item in enumerate(manifests):
        entry = _descriptor(item)
        if entry is None:
            raise StoreError(f"{path}: manifests[{number}] is not a valid descriptor (it needs "
                             "mediaType, a sha256 digest, a size and string annotations); "
                             "restore index.json from a copy")
        entries.append(entry)
    return entries


def _descriptor(item: Any) -> Descriptor | None:
    """An index entry read from disk, or None when it is not a valid descriptor."""
    try:
        entry = Descriptor.from_json(item)
        _hex(entry.digest)
        if not isinstance(entry.media_type, str) or entry.size < 0 or not isinstance(
                entry.annotations or {}, dict) or not all(
                isinstance(k, str) and isinstance(v, str)
                for k, v in (entry.annotations or {}).items()):
            return None
    except (TypeError, KeyError, ValueError, AttributeError, StoreError):
        return None
    return entry


def _unique(entries: Sequence[Descriptor], more: Sequence[Descriptor]) -> list[Descriptor]:
    """`entries` followed by those of `more` not named before (the first one kept)."""
    seen = {canonical_json(e.to_json()) for e in entries}
    out = list(entries)
    for entry in more:
        key = canonical_json(entry.to_json())
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def _wal_record(data: bytes, path: Path) -> tuple[bytes, int, int]:
    """(the entry's canonical bytes, index.json's inode, its length before the append) of a
    complete write-ahead record; anything else is a corrupt store (exit 5)."""
    try:
        record = json.loads(data)
        entry = _descriptor(record["entry"])
        inode, length = record["inode"], record["length"]
    except (ValueError, KeyError, TypeError):
        entry = None
    if entry is None or not isinstance(inode, int) or not isinstance(length, int):
        raise StoreError(f"{path} is not a valid write-ahead record; restore the store from "
                         "a copy")
    return canonical_json(entry.to_json()), inode, length


def _row(position: int, entry: Descriptor) -> tuple[int, str | None, str | None, str | None, str]:
    ann = entry.annotations or {}
    return (position, ann.get(REF_NAME), ann.get(KIND), ann.get(SUBJECT),
            canonical_json(entry.to_json()).decode())


def _rows_entries(rows: Sequence[tuple[Any, ...]]) -> list[Descriptor] | None:
    """The entries of cache rows, or None when a row's columns are not the ones its own
    entry defines (an edited row: the caller rebuilds the cache)."""
    found = []
    for position, ref_name, kind, subject, text in rows:
        try:
            entry = Descriptor.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError):
            return None
        if _row(position, entry)[:4] != (position, ref_name, kind, subject):
            return None
        found.append(entry)
    return found


def _canonical_entry(text: str) -> str:
    try:
        return canonical_json(json.loads(text)).decode()
    except ValueError:
        return text


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _hash_stream(f: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _sync_file_system(directory: Path, files: Sequence[Path]) -> None:
    """Make `files` (all on the file system of `directory`) durable: one syncfs(2), or an
    fsync each where the C library has no syncfs."""
    import ctypes  # only writers need it: readers (`show`) do not load it

    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is not None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
