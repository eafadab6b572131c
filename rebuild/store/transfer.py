"""Copying a release with its whole closure between stores: a local store or a registry.

What travels (docs/formats.md, "Remote stores"): the release manifest, every record that names
it (index entries with `dev.rebuild.subject`: inputs, attempts, evidence, verdicts,
approvals, log proofs), every manifest those reach through config and layers (the base-image
record is a layer of the inputs manifest) and every blob. Bytes are copied as they are, so
every manifest and blob keeps its digest. From a store with an audit log, a copy also adds a
log-proof record of the release's events (`with_log_proof`).

On a registry, release NAME@VERSION is the manifest tagged VERSION in REPOSITORY/NAME. The
records hang off it as OCI 1.1 referrers. The inputs manifest has no `subject` (only its index
entry names the release), so each push also writes a small *closure manifest*
(`application/vnd.rebuild.closure.v1+json`, subject = the release) whose layers are the index
entries of the closure, annotations included: a pull finds everything through the referrers
and restores the same index.json entries. Referrers are listed by the referrers API where the
registry has it, else by the `sha256-<hex>` fallback index (validated on read) together with
one tag per referrer, `sha256-<subject hex>.<first 32 hex of the referrer>`: the registry
ignores `If-Match`, so two writers of the fallback index can overwrite each other, but never
each other's tags; every writer re-merges what the tags show into the index and checks after
a random pause that its entries survived, and every reader takes the union.

A download is checked against its digest before it is written to a store; a pull stages what
it downloads in the store's `.tmp/` (resumed with a Range GET after an interruption) and
writes nothing into the store until everything has arrived and verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from rebuild.errors import ClaimFailed, StoreError, UsageError
from rebuild.store.auditlog import PROOF_KIND, PROOF_TYPE, proof_artifact, release_events
from rebuild.store.layout import (
    IMAGE_ID_ANN,
    IMAGE_REF_ANN,
    INDEX_TYPES,
    KIND,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    SUBJECT,
    Descriptor,
    Store,
    artifact_manifest,
    canonical_json,
)
from rebuild.store.registry import (
    Registry,
    RemoteStore,
    index_entries,
    is_remote,
    parse_remote,
    valid_tag,
)

CLOSURE_TYPE = "application/vnd.rebuild.closure.v1+json"
# A rebuilder's claim on a release (rebuild/release/rebuilder.py): it lives on the registry
# only, so a pull leaves it there.
CLAIM_TYPE = "application/vnd.rebuild.claim.v1+json"
PROGRESS_STEP = 64 << 20  # a progress line per this many bytes of one blob
Log = Callable[[str], None]
Opener = Callable[[str, int, int], contextlib.AbstractContextManager[Iterator[bytes]]]


@dataclass(frozen=True)
class Closure:
    """A release and everything that travels with it."""

    release: str  # NAME@VERSION
    root: Descriptor  # the release manifest
    entries: tuple[Descriptor, ...]  # index entries of the records, with their annotations
    manifests: Mapping[str, bytes]  # digest -> exact bytes, children before parents
    blobs: Mapping[str, int]  # digest -> size, of everything that is not a manifest
    as_blob: frozenset[str]  # manifests that another manifest names as a layer


@dataclass
class Transferred:
    release: str
    digest: str
    source: str
    destination: str
    manifests: int = 0
    blobs: int = 0
    blobs_sent: int = 0
    bytes_sent: int = 0
    manifests_sent: int = 0
    referrers: list[str] = field(default_factory=list)
    blobs_mounted: int = 0  # linked from another repository of the same registry, not sent

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "digest": self.digest, "source": self.source,
                "destination": self.destination, "manifests": self.manifests,
                "blobs": self.blobs, "blobs_sent": self.blobs_sent,
                "bytes_sent": self.bytes_sent, "manifests_sent": self.manifests_sent,
                "blobs_mounted": self.blobs_mounted, "referrers": self.referrers}


def split_release(release: str) -> tuple[str, str]:
    name, sep, version = release.rpartition("@")
    if not sep or not name or not version or "sha256:" in release:
        raise UsageError(f"{release!r} is not a release: write NAME@VERSION")
    if not valid_tag(version):
        raise UsageError(f"version {version!r} of {release} cannot be an OCI tag (letters, "
                         "digits, '.', '_', '-', at most 128); it cannot be stored in a registry")
    return name, version


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _children(manifest: Any, media: str) -> list[dict[str, Any]]:
    if not isinstance(manifest, dict):
        return []
    items = ([manifest.get("config"), *(manifest.get("layers") or [])]
             if media in MANIFEST_TYPES else list(manifest.get("manifests") or []))
    return [c for c in items if isinstance(c, dict) and isinstance(c.get("digest"), str)]


def _walk(roots: Sequence[tuple[str, str]], read: Callable[[str], bytes]
          ) -> tuple[dict[str, bytes], dict[str, int], set[str]]:
    """Every manifest (children first) and blob reachable from `roots` through config, layers
    and index entries, by media type (never subject)."""
    manifests: dict[str, bytes] = {}
    blobs: dict[str, int] = {}
    as_blob: set[str] = set()

    def visit(digest: str, media: str) -> None:
        if digest in manifests:
            return
        data = read(digest)
        try:
            parsed = json.loads(data)
        except ValueError:
            raise StoreError(f"manifest {digest} is not JSON") from None
        for child in _children(parsed, media):
            child_media = str(child.get("mediaType"))
            if child_media in MANIFEST_TYPES or child_media in INDEX_TYPES:
                if media in MANIFEST_TYPES:
                    as_blob.add(child["digest"])
                visit(child["digest"], child_media)
            else:
                blobs[child["digest"]] = int(child.get("size", 0))
        manifests[digest] = data

    for digest, media in roots:
        visit(digest, media)
    return manifests, blobs, as_blob


# -- reading a closure ------------------------------------------------------------------------


def local_closure(store: Store, release: str) -> Closure:
    root = store.release(release)
    records = [e for e in store.referrers(root.digest) if e.digest != root.digest]
    manifests, blobs, as_blob = _walk(
        [(root.digest, root.media_type), *((e.digest, e.media_type) for e in records)],
        store.read_bytes)
    seen = {(e.digest, canonical_json(e.to_json())) for e in records}
    # Manifests reached through layers that have index entries of their own (the base-image
    # record, kind "image") keep those entries too.
    for entry in store.index():
        key = (entry.digest, canonical_json(entry.to_json()))
        if entry.digest in manifests and entry.digest != root.digest and key not in seen:
            records.append(entry)
            seen.add(key)
    return Closure(release, root, tuple(records), manifests, blobs, frozenset(as_blob))


def remote_closure(registry: Registry, release: str, log: Log,
                   skip: frozenset[str] = frozenset()) -> Closure:
    """`skip`: kinds of record left out (with all they reach), e.g. a reader that checks
    the evidence and needs neither the inputs nor the base image archive."""
    name, version = split_release(release)
    repo = registry.remote.release_repository(name)
    found = registry.get_manifest(repo, version)
    if found is None:
        raise StoreError(f"no release {release} in {registry.remote} (no tag {version} in "
                         f"{repo}); push it first")
    data, media = found
    digest = _sha256(data)
    manifest = json.loads(data)
    media = str(manifest.get("mediaType") or media)
    root = Descriptor(media, digest, len(data), {REF_NAME: release, KIND: "release"},
                      manifest.get("artifactType"))
    cache: dict[str, bytes] = {digest: data}

    def read(d: str) -> bytes:
        if d not in cache:
            got = registry.get_manifest(repo, d)
            if got is None:
                raise StoreError(f"manifest {d} of {release} is missing from {registry.remote}; "
                                 "nothing was stored")
            cache[d] = got[0]
        return cache[d]

    entries: dict[tuple[str, bytes], Descriptor] = {}
    referrers = list_referrers(registry, repo, digest, log)
    for ref, ref_bytes in referrers:
        cache[ref.digest] = ref_bytes
        parsed = json.loads(ref_bytes)
        if parsed.get("artifactType") == CLOSURE_TYPE:
            for layer in _children(parsed, OCI_MANIFEST)[1:]:
                entry = Descriptor.from_json(layer)
                entries.setdefault((entry.digest, canonical_json(entry.to_json())), entry)
    listed = {d for d, _ in entries}
    for ref, _ in referrers:
        if ref.artifact_type not in (CLOSURE_TYPE, CLAIM_TYPE) and ref.digest not in listed:
            # A referrer no closure lists (another tool's signature): named by its type.
            entry = Descriptor(ref.media_type, ref.digest, ref.size,
                               {KIND: _kind_of(ref.artifact_type), SUBJECT: digest},
                               ref.artifact_type)
            entries[(entry.digest, canonical_json(entry.to_json()))] = entry
    # A record that is not a release (an image) lists its own index entry in its closure.
    own = [e for e in entries.values() if e.digest == digest]
    if own:
        root = own[0]
    records = tuple(e for e in entries.values() if e.digest != digest
                    and (e.annotations or {}).get(KIND) not in skip)
    manifests, blobs, as_blob = _walk(
        [(digest, media), *((e.digest, e.media_type) for e in records)], read)
    return Closure(release, root, records, manifests, blobs, frozenset(as_blob))


def with_log_proof(closure: Closure, store: Store) -> tuple[Closure, dict[str, bytes]]:
    """The closure with a log-proof record (rebuild.store.auditlog, docs/formats.md, "Log
    proofs") of the release's events in the store's own audit log, each with its inclusion
    proof under the current checkpoint, and the record's blobs, which the store does not
    hold. The same log gives the same record, so only a push after new entries adds one;
    records carried from elsewhere are part of the closure already."""
    events = release_events(store, closure.root.digest, carried=False)
    if not events:
        return closure, {}
    data, blobs = proof_artifact(events, closure.root)
    digest = _sha256(data)
    if digest in closure.manifests:
        return closure, {}
    blobs[_sha256(b"{}")] = b"{}"  # its empty config
    entry = Descriptor(OCI_MANIFEST, digest, len(data),
                       {KIND: PROOF_KIND, SUBJECT: closure.root.digest}, PROOF_TYPE)
    return replace(closure, entries=(*closure.entries, entry),
                   manifests={**closure.manifests, digest: data},
                   blobs={**closure.blobs, **{d: len(b) for d, b in blobs.items()}}), blobs


def list_releases(registry: Registry) -> list[str]:
    """Every release (NAME@VERSION) in the remote store: the tags of the repositories under
    REPOSITORY/ in the registry's catalog, less the referrer tags (`sha256-…`) and the image
    records under REPOSITORY/images/."""
    prefix = registry.remote.repository + "/" if registry.remote.repository else ""
    found: set[str] = set()
    for repo in registry.catalog():
        if not repo.startswith(prefix) or repo == prefix:
            continue
        name = repo[len(prefix):]
        if name.startswith("images/"):
            continue  # image records (image_closure_name), not releases
        found.update(f"{name}@{tag}" for tag in registry.tags(repo)
                     if not tag.startswith("sha256-"))
    return sorted(found)


def cache_location(remote: RemoteStore, cache_root: Path) -> Path:
    """The local cache store of a remote store: CACHE/oci/HOST[_PORT]/REPOSITORY."""
    return cache_root / "oci" / remote.host.replace(":", "_") / (remote.repository or "_")


def attach_referrer(registry: Registry, repo: str, data: bytes, log: Log) -> str:
    """Put one small artifact manifest (empty config, no other blob) that names a subject,
    and list it among the subject's referrers; returns its digest."""
    parsed = json.loads(data)
    subject = parsed["subject"]["digest"]
    empty_config = b"{}"
    for blob in {parsed["config"]["digest"], *(layer["digest"] for layer in parsed["layers"])}:
        if blob != _sha256(empty_config):
            raise UsageError(f"attach_referrer takes an artifact of empty blobs, not {blob}")
        if not registry.has_blob(repo, blob):
            registry.push_blob(repo, blob, len(empty_config), _BytesReader(empty_config))
    digest = _sha256(data)
    native = registry.put_manifest(repo, digest, data, OCI_MANIFEST)
    if not native:
        add_referrers(registry, repo, subject, [_describe(data, OCI_MANIFEST)],
                      {digest: data}, log)
    return digest


def _kind_of(artifact_type: str | None) -> str:
    text = str(artifact_type)
    prefix, suffix = "application/vnd.rebuild.", ".v1+json"
    if text.startswith(prefix) and text.endswith(suffix):
        return text[len(prefix):-len(suffix)]
    return "referrer"


def list_referrers(registry: Registry, repo: str, subject: str, log: Log
                   ) -> list[tuple[Descriptor, bytes]]:
    """The manifests whose subject is `subject`, each fetched, verified and checked to really
    name it: from the referrers API, else the fallback index and the per-referrer tags."""
    candidates = registry.referrers_api(repo, subject)
    if candidates is None:
        candidates = _fallback_index(registry, repo, subject, log)
        known = {c["digest"][7:39] for c in candidates}
        prefix = _fallback_tag(subject) + "."
        for tag in registry.tags(repo):
            if tag.startswith(prefix) and tag[len(prefix):] not in known:
                got = registry.get_manifest(repo, tag)
                if got is not None:
                    candidates.append(_describe(*got))
    found: dict[str, tuple[Descriptor, bytes]] = {}
    for candidate in candidates:
        digest = candidate["digest"]
        if digest in found:
            continue
        got = registry.get_manifest(repo, digest)
        if got is None:
            continue  # listed but gone (a registry's garbage collection)
        try:
            parsed = json.loads(got[0])
            named = parsed.get("subject", {}).get("digest")
        except (ValueError, AttributeError):
            named = None
        if named != subject:
            log(f"warning: {registry.remote}: {digest} is listed as a referrer of {subject} "
                "but does not name it as its subject; ignored")
            continue
        found[digest] = (Descriptor.from_json(_describe(*got)), got[0])
    return [found[d] for d in sorted(found)]


def _fallback_tag(subject: str) -> str:
    return subject.replace(":", "-")


def _fallback_index(registry: Registry, repo: str, subject: str, log: Log
                    ) -> list[dict[str, Any]]:
    got = registry.get_manifest(repo, _fallback_tag(subject))
    if got is None:
        return []
    entries = index_entries(got[0])
    if entries is None:
        log(f"warning: {registry.remote}: the tag {_fallback_tag(subject)} is not an image "
            "index of referrers; ignored")
        return []
    return entries


def _describe(data: bytes, media: str) -> dict[str, Any]:
    """A referrer's descriptor: media type, digest, size, artifactType, annotations."""
    parsed = json.loads(data)
    out: dict[str, Any] = {"mediaType": parsed.get("mediaType") or media,
                           "digest": _sha256(data), "size": len(data)}
    if isinstance(parsed.get("artifactType"), str):
        out["artifactType"] = parsed["artifactType"]
    if isinstance(parsed.get("annotations"), dict):
        out["annotations"] = parsed["annotations"]
    return out


# -- writing a closure ------------------------------------------------------------------------


def closure_manifest(closure: Closure) -> bytes:
    """The closure manifest: subject = the release, layers = the records' index entries."""
    entries = sorted(closure.entries, key=lambda e: (e.digest, canonical_json(e.to_json())))
    return canonical_json(artifact_manifest(CLOSURE_TYPE, entries, subject=closure.root))


def push_closure(closure: Closure, open_blob: Opener, registry: Registry, result: Transferred,
                 log: Log, mount_from: str | None = None) -> None:
    """Push a closure; `mount_from`: a repository of the same registry holding its blobs
    (a copy between two repositories of one registry mounts them instead of sending them)."""
    name, version = split_release(closure.release)
    repo = registry.remote.release_repository(name)
    tagged = registry.get_manifest(repo, version)
    if tagged is not None and _sha256(tagged[0]) != closure.root.digest:
        raise ClaimFailed(f"{registry.remote} already holds {closure.release} as "
                          f"{_sha256(tagged[0])}, another manifest than {closure.root.digest}; "
                          "a release is immutable: bump the version")
    empty_config = b"{}"
    for digest, size in sorted(closure.blobs.items()):
        if registry.has_blob(repo, digest):
            continue
        if digest == _sha256(empty_config):
            registry.push_blob(repo, digest, size, _BytesReader(empty_config))
            continue
        if mount_from is not None and registry.mount_blob(repo, digest, mount_from):
            result.blobs_mounted += 1
            continue
        with open_blob(digest, size, 0) as chunks:
            reader = _VerifyingReader(chunks, digest, size)
            registry.push_blob(repo, digest, size, reader,
                               _progress(log, f"pushing {digest}", size))
            reader.finish()
        result.blobs_sent += 1
        result.bytes_sent += size
    # distribution checks that a manifest named as a layer exists both as a manifest and as
    # a blob of the repository: the inputs name the image record, the closure the records.
    for digest in sorted(closure.as_blob | {e.digest for e in closure.entries}):
        if not registry.has_blob(repo, digest):
            data = closure.manifests[digest]
            registry.push_blob(repo, digest, len(data), _BytesReader(data))
            result.blobs_sent += 1
            result.bytes_sent += len(data)
    closure_bytes = closure_manifest(closure)
    manifests = {**closure.manifests, _sha256(closure_bytes): closure_bytes}
    subject_native = False
    referrers: list[dict[str, Any]] = []
    for digest, data in manifests.items():
        parsed = json.loads(data)
        media = str(parsed.get("mediaType") or OCI_MANIFEST)
        names = parsed.get("subject", {}).get("digest") if isinstance(parsed, dict) else None
        if names == closure.root.digest:
            referrers.append(_describe(data, media))
        if not registry.has_manifest(repo, digest):
            subject_native |= registry.put_manifest(repo, digest, data, media)
            result.manifests_sent += 1
    result.referrers = sorted(r["digest"] for r in referrers)
    if not subject_native:
        add_referrers(registry, repo, closure.root.digest, referrers, manifests, log)
    if tagged is None:
        registry.put_manifest(repo, version, closure.manifests[closure.root.digest],
                              closure.root.media_type)
        result.manifests_sent += 1


def add_referrers(registry: Registry, repo: str, subject: str,
                  referrers: Sequence[dict[str, Any]], manifests: Mapping[str, bytes],
                  log: Log) -> None:
    """Add referrers to the fallback index without losing another writer's: each gets its
    own tag first (writers never overwrite those), then a read-merge-write of the index that
    re-merges what the tags show and is checked after a random pause until it holds ours."""
    tag = _fallback_tag(subject)
    current = _fallback_index(registry, repo, subject, log)
    wanted = {r["digest"]: r for r in referrers}
    if wanted.keys() <= {c["digest"] for c in current}:
        return  # every writer tags its referrers before it lists them: nothing to do
    for digest, descriptor in wanted.items():
        own = f"{tag}.{digest[7:39]}"
        if not registry.has_manifest(repo, own):
            registry.put_manifest(repo, own, manifests[digest], descriptor["mediaType"])
    rng = random.Random()  # noqa: S311 (a pause, not a secret)
    confirmed = 0
    for attempt in range(40):
        current = _fallback_index(registry, repo, subject, log)
        present = {c["digest"] for c in current}
        if wanted.keys() <= present:
            confirmed += 1
            if confirmed >= 2:
                return
        else:
            confirmed = 0
            merged = {c["digest"]: c for c in current}
            prefix = tag + "."
            for other in registry.tags(repo):
                short = other[len(prefix):]
                if other.startswith(prefix) and not any(d[7:39] == short for d in merged):
                    got = registry.get_manifest(repo, other)
                    if got is not None:
                        described = _describe(*got)
                        merged[described["digest"]] = described
            merged.update(wanted)
            index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                    "manifests": [merged[d] for d in sorted(merged)]})
            registry.put_manifest(repo, tag, index, OCI_INDEX)
        time.sleep(rng.uniform(0.05, 0.25) * min(attempt + 1, 8))
    log(f"warning: {registry.remote}: other writers kept replacing the referrers index of "
        f"{subject}; the referrers stay listed by their own tags")


def pull_closure(closure: Closure, open_blob: Opener, store: Store, result: Transferred,
                 log: Log) -> None:
    """Write a closure into a local store: stage every missing blob (verified, resumable),
    then write blobs, manifests and the index entries; nothing before all have arrived."""
    existing = store.find(closure.release) if store.exists() else None
    if existing is not None and existing.digest != closure.root.digest:
        raise ClaimFailed(f"the store {store.root} already holds {closure.release} as "
                          f"{existing.digest}, another manifest than {closure.root.digest}")
    store.init()
    staging = store.root / ".tmp"  # the store's own scratch: same file system, kept by gc
    staged: list[Path] = []
    with store.lease():
        for digest, size in sorted(closure.blobs.items()):
            if store.has(digest):
                continue
            staged.append(_stage(staging, digest, size, open_blob, log))
            result.blobs_sent += 1
            result.bytes_sent += size
        for path in staged:
            got, _ = store.put_file(path)
            if got != "sha256:" + path.name.removeprefix("pull-"):
                raise StoreError(f"staged blob {path} changed on disk; run again")
        for data in closure.manifests.values():
            if not store.has(_sha256(data)):
                store.put_bytes(data)
                result.manifests_sent += 1
        store.add_to_index(closure.root, closure.root.annotations or {})
        for entry in closure.entries:
            store.add_to_index(entry, entry.annotations or {})
    for path in staged:
        path.unlink(missing_ok=True)


def _stage(staging: Path, digest: str, size: int, open_blob: Opener, log: Log) -> Path:
    """Download a blob to `.tmp/pull-<hex>`, resuming `.tmp/pull-<hex>.part`; checked against
    its digest and size (a mismatch removes it: exit 5)."""
    hexpart = digest.removeprefix("sha256:")
    done = staging / f"pull-{hexpart}"
    if done.is_file():
        return done
    part = staging / f"pull-{hexpart}.part"
    with part.open("ab+") as out:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # another pull of the same blob waits
        if done.is_file():
            return done
        out.seek(0)
        hasher = hashlib.sha256()
        while chunk := out.read(1 << 20):
            hasher.update(chunk)
        offset = out.tell()
        if offset > size:
            out.truncate(0)
            hasher, offset = hashlib.sha256(), 0
        if offset:
            log(f"resuming {digest} at {offset} of {size} bytes")
        report = _progress(log, f"pulling {digest}", size)
        with open_blob(digest, size, offset) as chunks:
            for chunk in chunks:
                out.write(chunk)
                hasher.update(chunk)
                offset += len(chunk)
                report(offset)
        out.flush()
        os.fsync(out.fileno())
        if offset != size or "sha256:" + hasher.hexdigest() != digest:
            part.unlink(missing_ok=True)
            raise StoreError(f"blob {digest} arrived with {offset} bytes that do not match "
                             "its digest; nothing was stored; check the source store")
        part.replace(done)
    return done


def _progress(log: Log, what: str, size: int) -> Callable[[int], None]:
    marks = [PROGRESS_STEP]

    def report(done: int) -> None:
        if size >= PROGRESS_STEP and done >= marks[0]:
            log(f"{what}: {done >> 20} of {size >> 20} MiB")
            marks[0] = done + PROGRESS_STEP

    return report


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._at + n
        out, self._at = self._data[self._at:end], min(end, len(self._data))
        return out


class _VerifyingReader:
    """A file-like view of a chunk stream that hashes what passes and checks it at the end."""

    def __init__(self, chunks: Iterator[bytes], digest: str, size: int) -> None:
        self._chunks, self._digest, self._size = chunks, digest, size
        self._buffer = b""
        self._hasher = hashlib.sha256()
        self._read = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        out = self._buffer if n < 0 else self._buffer[:n]
        self._buffer = self._buffer[len(out):]
        self._hasher.update(out)
        self._read += len(out)
        return out

    def finish(self) -> None:
        if self._read != self._size or "sha256:" + self._hasher.hexdigest() != self._digest:
            raise StoreError(f"blob {self._digest} does not match its digest in the source "
                             "store; run `rebuild store fsck` there")


# -- the endpoints ------------------------------------------------------------------------------


def _local_opener(store: Store, extra: Mapping[str, bytes] | None = None) -> Opener:
    """Blobs of the store, and `extra` ones made for the transfer (a log proof's)."""
    made = dict(extra or {})

    @contextlib.contextmanager
    def open_blob(digest: str, size: int, offset: int) -> Iterator[Iterator[bytes]]:
        if digest in made:
            yield iter([made[digest][offset:]])
            return
        with store.open_verified(digest) as f:
            f.seek(offset)
            yield _read_chunks(f)

    return open_blob


def _read_chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk


def _remote_opener(registry: Registry, repo: str) -> Opener:
    def open_blob(digest: str, size: int, offset: int
                  ) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        return registry.open_blob(repo, digest, size, offset)

    return open_blob


def transfer(source: str, destination: str, release: str, *, log: Log,
             expect: str | None = None, skip: frozenset[str] = frozenset()) -> Transferred:
    """Copy `release` with its closure from one store (a directory or oci://…) to another.
    `expect`: the release manifest digest the caller checked; when the source now holds
    another, nothing is copied (exit 1). `skip`: from a registry, kinds of record left out
    (`remote_closure`)."""
    split_release(release)
    with contextlib.ExitStack() as stack:
        if is_remote(source):
            src_registry = _connect(parse_remote(source), stack)
            closure = remote_closure(src_registry, release, log, skip)
            opener = _remote_opener(src_registry, src_registry.remote.release_repository(
                release.rpartition("@")[0]))
        else:
            src_store = Store(Path(source))
            closure, made = with_log_proof(local_closure(src_store, release), src_store)
            opener = _local_opener(src_store, made)
        if expect is not None and closure.root.digest != expect:
            raise ClaimFailed(f"{source} now holds {release} as {closure.root.digest}, not "
                              f"the {expect} that was checked; nothing was copied")
        result = Transferred(release, closure.root.digest, source, destination,
                             manifests=len(closure.manifests), blobs=len(closure.blobs))
        if is_remote(destination):
            dest_registry = _connect(parse_remote(destination), stack)
            mount_from = None
            if is_remote(source) and src_registry.remote.base == dest_registry.remote.base:
                mount_from = src_registry.remote.release_repository(release.rpartition("@")[0])
            push_closure(closure, opener, dest_registry, result, log, mount_from)
        else:
            pull_closure(closure, opener, Store(Path(destination)), result, log)
        return result


def image_closure_name(reference: str) -> str:
    """Where an image record lives in a remote store: `NAME:TAG@sha256:ID` is the closure
    `images/NAME@TAG-ID`, so the manifest tagged `TAG-ID` in REPOSITORY/images/NAME."""
    named, sep, image_id = reference.rpartition("@")
    name, colon, tag = named.rpartition(":")
    if not sep or not colon or not name or not image_id.startswith("sha256:") \
            or len(image_id) != 71:
        raise UsageError(f"{reference!r} is not an image reference: write NAME:TAG@sha256:ID "
                         "as a recipe pins it (`rebuild store ls` lists the images)")
    return f"images/{name}@{tag}-{image_id[7:]}"


def transfer_image(source: str, destination: str, reference: str, *, log: Log) -> Transferred:
    """Copy an image record (its archive, package list and definition, byte-exact, and its
    index entry) from one store to another, as `transfer` copies a release."""
    name = image_closure_name(reference)
    split_release(name)
    image_id = reference.rpartition("@")[2]
    with contextlib.ExitStack() as stack:
        if is_remote(source):
            src_registry = _connect(parse_remote(source), stack)
            closure = remote_closure(src_registry, name, log)
            if (closure.root.annotations or {}).get(IMAGE_ID_ANN) != image_id:
                raise StoreError(f"{source} holds no image record for {reference} under "
                                 f"{name}; push it first")
            opener = _remote_opener(src_registry, src_registry.remote.release_repository(
                name.rpartition("@")[0]))
        else:
            src_store = Store(Path(source))
            src_store.require()
            entry = next((e for e in src_store.entries("image")
                          if (e.annotations or {}).get(IMAGE_ID_ANN) == image_id
                          and (e.annotations or {}).get(IMAGE_REF_ANN) == reference), None)
            if entry is None:
                raise StoreError(f"no image {reference} in the store {source}; `rebuild store "
                                 "ls` lists the images")
            manifests, blobs, as_blob = _walk([(entry.digest, entry.media_type)],
                                              src_store.read_bytes)
            closure = Closure(name, entry, (entry,), manifests, blobs, frozenset(as_blob))
            opener = _local_opener(src_store)
        result = Transferred(reference, closure.root.digest, source, destination,
                             manifests=len(closure.manifests), blobs=len(closure.blobs))
        if is_remote(destination):
            push_closure(closure, opener, _connect(parse_remote(destination), stack), result,
                         log)
        else:
            pull_closure(closure, opener, Store(Path(destination)), result, log)
        return result


def remote_has(location: str, name: str) -> bool:
    """Whether the remote store holds the release (or image closure) NAME@TAG."""
    remote = parse_remote(location)
    base, version = split_release(name)
    registry = Registry.connect(remote)
    try:
        return registry.has_manifest(remote.release_repository(base), version)
    finally:
        registry.close()


def _connect(remote: RemoteStore, stack: contextlib.ExitStack) -> Registry:
    registry = Registry.connect(remote)
    stack.callback(registry.close)
    return registry
