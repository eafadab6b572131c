"""The content-addressed store: an OCI image layout on disk (design.md, "Store").

This module is the only writer of the store. Every file is a blob named by its sha256,
written once (temporary file, fsync, atomic rename) and verified on every read. Manifests
(releases, evidence, images) are blobs too; `index.json` names them. Concurrent writers are
safe: blobs are immutable and identical content has one name, and `index.json` is rewritten
under an exclusive lock on the store directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rebuild.errors import StoreError, UsageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
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
IMAGE_ID_ANN = "dev.rebuild.build.image.id"
IMAGE_REF_ANN = "dev.rebuild.build.image.ref"
CHUNK = 1 << 20


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
    """One finding of `fsck`."""

    digest: str
    what: str


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise StoreError(f"not a sha256 digest: {digest!r}")
    return hexpart


class Store:
    """An OCI image layout directory used as rebuild's content-addressed store."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- layout ---------------------------------------------------------------------------

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def _tmp(self) -> Path:
        # Temporary files live outside blobs/ so that a crashed writer never leaves a partial
        # blob under a digest name; same filesystem, so the final rename is atomic.
        return self.root / ".tmp"

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
        return self.blob_path(digest).is_file()

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
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="blob-")
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
            if final.exists():
                tmp.unlink()
            else:
                tmp.chmod(0o444)
                tmp.replace(final)
                _fsync_dir(final.parent)
            return digest, size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read_bytes(self, digest: str) -> bytes:
        """Read a blob, verifying its hash."""
        path = self.blob_path(digest)
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
        return self.put_manifest(manifest)

    def index(self) -> list[Descriptor]:
        path = self.root / "index.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise StoreError(f"{path} is not valid JSON ({exc}); restore it from a copy") from None
        return [Descriptor.from_json(m) for m in data.get("manifests", [])]

    def add_to_index(self, desc: Descriptor, annotations: Mapping[str, str]) -> Descriptor:
        """Name a stored manifest in index.json; an identical entry is not added twice."""
        entry = Descriptor(desc.media_type, desc.digest, desc.size, dict(annotations),
                           desc.artifact_type)
        self.init()
        with self._locked():
            entries = self.index()
            if entry not in entries:
                before = self._signature()
                self._write_index([*entries, entry])
                self._add_to_query_index(before, len(entries), entry)
        return entry

    def find(self, ref_name: str) -> Descriptor | None:
        """The manifest named `ref_name` (org.opencontainers.image.ref.name), if any."""
        found = self._query("ref_name = ?", ref_name)
        return found[0] if found else None

    def entries(self, kind: str) -> list[Descriptor]:
        return self._query("kind = ?", kind)

    def referrers(self, subject_digest: str) -> list[Descriptor]:
        """Index entries whose manifest names `subject_digest` as its subject."""
        return self._query("subject = ?", subject_digest)

    # -- the query index: a cache of index.json ---------------------------------------------

    def _query(self, where: str, value: str) -> list[Descriptor]:
        """Look entries up in the SQLite cache of index.json (design.md: a query index may sit
        beside the store; it is rebuilt from index.json whenever that file changes)."""
        if not (self.root / "index.json").exists():
            return []
        with contextlib.closing(self._query_index()) as db:
            rows = db.execute(f"SELECT entry FROM entries WHERE {where} "  # noqa: S608 (constant)
                              "ORDER BY position", (value,)).fetchall()
        return [Descriptor.from_json(json.loads(row[0])) for row in rows]

    def _signature(self) -> str:
        """Changes whenever index.json is replaced (every write is a new inode)."""
        st = (self.root / "index.json").stat()
        return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    def _open_query_index(self) -> sqlite3.Connection:
        path = self.root / ".cache" / "query.sqlite"
        path.parent.mkdir(exist_ok=True)
        db = sqlite3.connect(path, timeout=60)
        db.execute("CREATE TABLE IF NOT EXISTS meta (signature TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS entries (position INTEGER, ref_name TEXT, "
                   "kind TEXT, subject TEXT, entry TEXT)")
        for column in ("ref_name", "kind", "subject"):
            db.execute(f"CREATE INDEX IF NOT EXISTS by_{column} ON entries ({column})")
        return db

    def _query_index(self) -> sqlite3.Connection:
        signature = self._signature()
        db = self._open_query_index()
        current = db.execute("SELECT signature FROM meta").fetchone()
        if current is None or current[0] != signature:
            with db:
                db.execute("DELETE FROM entries")
                db.execute("DELETE FROM meta")
                db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                               (_row(i, e) for i, e in enumerate(self.index())))
                db.execute("INSERT INTO meta VALUES (?)", (signature,))
        return db

    def _add_to_query_index(self, before: str, position: int, entry: Descriptor) -> None:
        """Keep an up-to-date cache up to date without re-reading index.json."""
        with contextlib.closing(self._open_query_index()) as db, db:
            current = db.execute("SELECT signature FROM meta").fetchone()
            if current is not None and current[0] == before:
                db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", _row(position, entry))
                db.execute("UPDATE meta SET signature = ?", (self._signature(),))

    # -- upkeep ---------------------------------------------------------------------------

    def fsck(self) -> list[Problem]:
        """Check every blob's hash and that every manifest's references are present."""
        self.require()
        problems: list[Problem] = []
        present: set[str] = set()
        for path in sorted(self.blobs.iterdir()):
            digest = "sha256:" + path.name
            with path.open("rb") as f:
                actual = _hash_stream(f)
            if actual != path.name:
                problems.append(Problem(digest, f"corrupt: content hashes to sha256:{actual}"))
            present.add(digest)
        seen: set[str] = set()
        for entry in self.index():
            self._check_refs(entry.digest, present, seen, problems, "index.json")
        return problems

    def _check_refs(self, digest: str, present: set[str], seen: set[str],
                    problems: list[Problem], parent: str) -> None:
        if digest in seen:
            return
        seen.add(digest)
        if digest not in present:
            problems.append(Problem(digest, f"missing (referenced by {parent})"))
            return
        try:
            manifest = json.loads(self.blob_path(digest).read_bytes())
        except ValueError:
            problems.append(Problem(digest, "manifest is not valid JSON"))
            return
        if not isinstance(manifest, dict) or manifest.get("mediaType") != OCI_MANIFEST:
            return
        for child in [manifest.get("config", {}), *manifest.get("layers", [])]:
            child_digest = child.get("digest")
            if child_digest and child_digest not in present:
                problems.append(Problem(child_digest, f"missing (referenced by {digest})"))

    def reachable(self) -> set[str]:
        """Every blob named, directly or through a manifest, by index.json."""
        keep: set[str] = set()
        todo = [e.digest for e in self.index()]
        while todo:
            digest = todo.pop()
            if digest in keep:
                continue
            keep.add(digest)
            if not self.has(digest):
                continue
            try:
                manifest = json.loads(self.blob_path(digest).read_bytes())
            except ValueError:
                continue
            if isinstance(manifest, dict) and manifest.get("mediaType") == OCI_MANIFEST:
                todo.extend(d["digest"] for d in [manifest["config"], *manifest["layers"]])
                if "subject" in manifest:
                    todo.append(manifest["subject"]["digest"])
        return keep

    def gc(self, grace_seconds: float = 3600) -> list[str]:
        """Remove blobs nothing in index.json reaches, and stale temporary files."""
        self.require()
        # A build writes its blobs before it names them in index.json, and a temporary file
        # is a writer's work in progress: only what is older than the grace period goes.
        cutoff = time.time() - grace_seconds
        with self._locked():
            keep = self.reachable()
            removed = []
            for path in sorted(self.blobs.iterdir()):
                if "sha256:" + path.name not in keep and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append("sha256:" + path.name)
            for tmp in self._tmp.glob("*"):
                if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
        return removed

    # -- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock on the store directory itself: no lock file, and it is released when the
        # process dies, so a killed writer never wedges the store.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_index(self, entries: list[Descriptor]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [e.to_json() for e in entries]}
        self._write_atomic(self.root / "index.json", canonical_json(index), mode=0o644)

    def _write_atomic(self, final: Path, data: bytes, mode: int = 0o444) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="write-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(mode)
            tmp.replace(final)
            _fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _row(position: int, entry: Descriptor) -> tuple[int, str | None, str | None, str | None, str]:
    ann = entry.annotations or {}
    return (position, ann.get(REF_NAME), ann.get(KIND), ann.get(SUBJECT),
            json.dumps(entry.to_json()))


def _hash_stream(f: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
