"""The evidence bundle: one self-contained, byte-reproducible file of a release's evidence; how
it is written, and how an untrusted one is opened and checked, file by file.

The bundle is a tar (gzip-compressed when the file name ends in `.gz` or `.tgz`):

    oci-layout, index.json, blobs/sha256/<hex>   an OCI image layout of the release's closure
    artifacts/<name>                             a copy of each artifact (links are not copied)
    keys/<keyid>.pub                             the public keys given to `rebuild export`
    report.html, report.md                       the release's story, for people (rebuild.report)
    log/entries/<N>.json, log/proofs/<N>.tlog-proof  the release's audit-log events, each with
                                                 an inclusion proof and checkpoint (C2SP)
    SHA256SUMS                                   every other file, in `sha256sum -c` format

The layout holds the release manifest and its artifacts, and every record whose subject is
the release: evidence, attempts (logs, diff reports), QA verdicts, approvals, the inputs
manifest (with the recipe and the python lock), and an export manifest whose layers are the
human files above. The inputs themselves (source archive, base image, wheels) are named by
digest only unless `with_inputs`; the OCI image-layout spec allows a layout to lack blobs that
are referenced ("the blobs directory MAY be missing referenced blobs").

Byte-reproducible: members sorted by name, PAX format, mode 0644, owner 0:0 without names,
mtime the release's SOURCE_DATE_EPOCH; gzip with mtime 0, no file name, level 9. `index.json`
is derived from the manifests it names (`bundle_index`), so it is pinned by them too.

Every file is pinned twice, so a changed byte is found and the changed file named: blobs by
their names, `index.json` by the manifests, artifacts by the release manifest, the human files
by the export manifest, everything by SHA256SUMS; SHA256SUMS is itself derived from the other
files, and the tar's headers and padding are compared with the canonical archive of the same
files. Trust still comes from signatures checked with keys the verifier brings: the copies in
keys/ and the report are conveniences, not evidence.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from rebuild.build.limits import BundleLimits, show_size
from rebuild.checks import Check
from rebuild.errors import SigningError, StoreError, UsageError
from rebuild.evidence.sign import keyid, load_public_key
from rebuild.store.layout import (
    CHUNK,
    CREATED_ANN,
    INPUTS_TYPE,
    KIND,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    RELEASE_ANN,
    RELEASE_TYPE,
    SIGNER_ANN,
    SUBJECT,
    TITLE,
    Descriptor,
    Store,
    canonical_json,
    sha256_file,
)

EXPORT_TYPE = "application/vnd.rebuild.export.v1+json"
STATUS_ANN = "dev.rebuild.status"
WITH_INPUTS_ANN = "dev.rebuild.export.with-inputs"
SUMS = "SHA256SUMS"
OCI_LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})
# What Python's gzip writes with mtime 0, no file name and level 9 (RFC 1952: XFL 2, OS 255).
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
HUMAN_MEDIA = {"report.html": "text/html; charset=utf-8",
               "report.md": "text/markdown; charset=utf-8"}
KEY_MEDIA = "application/x-pem-file"
# Index annotations a bundle copies from a manifest's own annotations.
COPIED_ANNOTATIONS = (RELEASE_ANN, SIGNER_ANN, STATUS_ANN)
_KIND_OF_TYPE = re.compile(r"application/vnd\.rebuild\.([a-z][a-z0-9-]*)\.v1\+json")
_HEX = re.compile(r"[0-9a-f]{64}")

Opener = Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


@dataclass(frozen=True)
class Member:
    """One file of the archive: its path, size and sha256 (hex), and how to read it."""

    path: str
    size: int
    sha256: str
    open: Opener


def bytes_member(path: str, data: bytes) -> Member:
    return Member(path, len(data), hashlib.sha256(data).hexdigest(), partial(_open_bytes, data))


def _open_bytes(data: bytes) -> contextlib.AbstractContextManager[IO[bytes]]:
    return contextlib.nullcontext(io.BytesIO(data))


def _open_file(path: Path) -> contextlib.AbstractContextManager[IO[bytes]]:
    return path.open("rb")




# -- the closure and the index (shared by export and verify) --------------------------------


def kind_of(artifact_type: Any) -> str:
    """`application/vnd.rebuild.<kind>.v1+json` -> kind (the store's dev.rebuild.kind)."""
    match = _KIND_OF_TYPE.fullmatch(str(artifact_type))
    return match.group(1) if match else "unknown"


def _recipe_layer(layer: Mapping[str, Any]) -> bool:
    """The recipe and its python lock travel with every bundle; the other inputs (source
    archive, image record, wheels) only with --with-inputs."""
    title = layer.get("annotations", {}).get(TITLE, "")
    return layer.get("mediaType") != OCI_MANIFEST and (
        title.endswith(".toml") or title == "python.lock.txt")


@dataclass
class Closure:
    blobs: set[str] = field(default_factory=set)  # digests the bundle holds
    omitted: set[str] = field(default_factory=set)  # inputs named but left out
    unreadable: set[str] = field(default_factory=set)  # manifests that could not be read
    parents: dict[str, str] = field(default_factory=dict)  # blob -> a manifest naming it


def walk_closure(read_json: Callable[[str], Any], manifests: Sequence[str], *,
                 with_inputs: bool) -> Closure:
    """Every blob the given manifests reach through config and layers (not through subject:
    the subject of every record in a bundle is the release, itself an index entry)."""
    closure = Closure()

    def walk(digest: str) -> None:
        if digest in closure.blobs:
            return
        closure.blobs.add(digest)
        try:
            manifest = read_json(digest)
        except (StoreError, ValueError):
            closure.unreadable.add(digest)
            return
        if not isinstance(manifest, dict) or manifest.get("mediaType") != OCI_MANIFEST:
            return
        is_inputs = manifest.get("artifactType") == INPUTS_TYPE
        for child in [manifest.get("config", {}), *manifest.get("layers", [])]:
            child_digest = child.get("digest")
            if not isinstance(child_digest, str):
                continue
            if is_inputs and not with_inputs and not _recipe_layer(child):
                closure.omitted.add(child_digest)
                continue
            closure.parents.setdefault(child_digest, digest)
            if child.get("mediaType") == OCI_MANIFEST:
                walk(child_digest)
            else:
                closure.blobs.add(child_digest)

    for digest in manifests:
        walk(digest)
    closure.omitted -= closure.blobs
    return closure


def index_entry(digest: str, size: int, manifest: Mapping[str, Any], release: str
                ) -> Descriptor:
    """The bundle's index.json entry of a manifest: derived from the manifest alone, with the
    annotations `Store.find`, `entries` and `referrers` look up."""
    artifact_type = manifest.get("artifactType")
    own = manifest.get("annotations", {})
    if digest == release:
        annotations = {REF_NAME: own.get(RELEASE_ANN, ""), KIND: "release"}
    else:
        annotations = {KIND: kind_of(artifact_type), SUBJECT: release,
                       **{k: own[k] for k in COPIED_ANNOTATIONS if k in own}}
    return Descriptor(OCI_MANIFEST, digest, size, annotations, artifact_type)


def bundle_index(entries: Sequence[Descriptor]) -> bytes:
    """index.json: the release first, then the records by kind and digest."""
    ordered = sorted(entries, key=lambda e: ((e.annotations or {}).get(KIND) != "release",
                                             (e.annotations or {}).get(KIND, ""), e.digest))
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": [e.to_json() for e in ordered]})


def release_epoch(release_manifest: Mapping[str, Any]) -> int:
    """The release's SOURCE_DATE_EPOCH, from its `created` annotation; 0 if it has none."""
    created = release_manifest.get("annotations", {}).get(CREATED_ANN)
    try:
        return int(datetime.strptime(str(created), "%Y-%m-%dT%H:%M:%S%z").timestamp())
    except ValueError:
        return 0


def artifact_copy_path(layer: Mapping[str, Any]) -> str | None:
    """Where a release layer is copied for people, or None (links, unsafe names)."""
    annotations = layer.get("annotations", {})
    name = annotations.get(TITLE)
    if "dev.rebuild.link" in annotations or not isinstance(name, str):
        return None
    path = f"artifacts/{name}"
    return path if safe_member_name(path) else None


def safe_member_name(name: str) -> bool:
    """A relative POSIX path, normalized, that `sha256sum -c` can name without escapes."""
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and "\\" not in name and "\n" not in name
            and all(p not in ("", ".", "..") for p in parts))


def sums_file(members: Sequence[tuple[str, str]]) -> bytes:
    """SHA256SUMS of (path, sha256 hex), sorted by path, as GNU sha256sum writes it."""
    return "".join(f"{digest}  {path}\n"
                   for path, digest in sorted(members, key=lambda m: m[0].encode())).encode()


# -- the archive -----------------------------------------------------------------------------


def write_archive(members: Sequence[Member], mtime: int, out: IO[bytes], *,
                  compress: bool) -> None:
    """The canonical tar of `members` (sorted by the UTF-8 bytes of their paths)."""
    raw = (cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0,
                                         compresslevel=9)) if compress else out)
    try:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for member in sorted(members, key=lambda m: m.path.encode()):
                info = tarfile.TarInfo(member.path)
                info.size, info.mtime, info.mode = member.size, mtime, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with member.open() as f:
                    tar.addfile(info, f)
    finally:
        if compress:
            raw.close()


def public_key_file(path: Path) -> tuple[str, bytes]:
    """(key id, SubjectPublicKeyInfo PEM) of a public key file; a private key is refused, so
    that no secret ever lands in a bundle."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read key file {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise SigningError(f"{path} is a private key; a bundle carries public keys only: "
                           "pass PREFIX.pub")
    load_public_key(path)  # refuses key types rebuild cannot verify with
    public = load_pem_public_key(data)
    return keyid(public), public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)




# -- opening and checking a bundle ----------------------------------------------------------


@dataclass
class OpenedBundle:
    """A bundle extracted to `root` (an OCI layout plus the human files) and what its
    checks found; `release` is None when the layout names no release."""

    root: Path
    release: str | None
    checks: list[Check]


@dataclass(frozen=True)
class _Entry:
    path: str
    offset: int  # of its first header block (a PAX header's, when it has one)
    data: int  # where its content starts
    end: int  # past its content and padding
    mtime: int


class _Problems:
    """Findings by file: the file that changed is the one named."""

    def __init__(self) -> None:
        self.by_file: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        self.by_file.setdefault(path, [])
        if message not in self.by_file[path]:
            self.by_file[path].append(message)

    def __contains__(self, path: str) -> bool:
        return path in self.by_file


def open_bundle(path: Path, workdir: Path,
                limits: BundleLimits = BundleLimits()) -> OpenedBundle:  # noqa: B008 (frozen)
    """Extract a bundle into `workdir` and check that every byte is what an export writes.

    The bundle may come from anyone: what extracting it writes (the tar inside a gzip, then
    its members, sparse ones at their full size) is bounded by `limits` before it is
    written, so a gzip bomb stops at the limit (UsageError, exit 2) instead of the disk.
    """
    root = workdir / "bundle"
    root.mkdir(parents=True)
    problems = _Problems()
    archive = path.name
    budget = _Budget(path, limits)
    try:
        tar_path = _decompressed(path, workdir, budget)
        entries = _extract(tar_path, root, archive, problems, budget)
    except _Unreadable as exc:
        return OpenedBundle(root, None, [Check(f"bundle archive {archive}", False, str(exc))])
    digests = {e.path: sha256_file(root / e.path) for e in entries}  # each file read once
    release, release_manifest = _check_layout(root, digests, problems)
    _check_sums(root, digests, problems)
    files = digests.keys()
    mtime = release_epoch(release_manifest) if release_manifest else (
        entries[0].mtime if entries else 0)
    _check_canonical(tar_path, root, entries, mtime, archive, problems)
    # The archive's own problems first: a broken header hides the files after it.
    named = sorted(problems.by_file.items(), key=lambda item: item[0] != archive)
    checks = [Check(f"bundle file {name}", False, "; ".join(messages))
              for name, messages in named]
    if not checks:
        checks.append(Check("bundle files", True,
                            f"{len(files)} files: each matches SHA256SUMS and the digest that "
                            "pins it; the archive is in its canonical form"))
    return OpenedBundle(root, release, checks)


class _Unreadable(Exception):
    pass


class _Budget:
    """Bytes an extraction may still write: `limits.max_size`, and `limits.max_ratio` times
    the bundle file's size, whichever is less."""

    def __init__(self, path: Path, limits: BundleLimits) -> None:
        self.path, self.limits = path, limits
        self.size = path.stat().st_size
        self.written = 0

    def spend(self, n: int) -> None:
        self.written += n
        if self.written > self.limits.max_size:
            raise UsageError(f"{self.path}: extracting the bundle would write more than "
                             f"{show_size(self.limits.max_size)} (limit --max-extract-size); "
                             "refused before the disk fills: raise the limit only for a "
                             "bundle you expect to be that large")
        if self.written > self.limits.max_ratio * self.size:
            raise UsageError(f"{self.path}: the bundle inflates to more than "
                             f"{self.limits.max_ratio} times its {self.size} bytes (limit "
                             "--max-extract-ratio): a compression bomb, or not an export; "
                             "refused")


def _decompressed(path: Path, workdir: Path, budget: _Budget) -> Path:
    """The tar inside the bundle: the file itself, or its gzip stream, checked to the end."""
    try:
        with path.open("rb") as f:
            head = f.read(len(GZIP_HEADER))
            if head[:2] != GZIP_HEADER[:2]:
                return path
            if head != GZIP_HEADER:
                raise _Unreadable("the gzip header is not the one `rebuild export` writes "
                                  "(mtime 0, no name): the archive was changed")
            f.seek(0)
            out = workdir / "bundle.tar"
            inflate = zlib.decompressobj(wbits=31)  # gzip: checks the CRC-32 and the size
            with out.open("wb") as tar:
                while chunk := f.read(CHUNK):
                    if inflate.eof:
                        raise _Unreadable("bytes follow the end of the gzip stream")
                    # At most CHUNK out per call, so that a bomb is never inflated whole.
                    data = inflate.decompress(chunk, CHUNK)
                    while data:
                        budget.spend(len(data))
                        tar.write(data)
                        data = inflate.decompress(inflate.unconsumed_tail, CHUNK)
                    if inflate.eof and inflate.unused_data:
                        raise _Unreadable("bytes follow the end of the gzip stream")
                rest = inflate.flush()
                budget.spend(len(rest))
                tar.write(rest)
            if not inflate.eof:
                raise _Unreadable("the gzip stream is truncated")
            return out
    except OSError as exc:
        raise _Unreadable(f"cannot read the bundle: {exc}") from None
    except zlib.error as exc:
        raise _Unreadable(f"the gzip stream is corrupt ({exc}): a byte of the archive "
                          "changed") from None


def _extract(tar_path: Path, root: Path, archive: str, problems: _Problems,
             budget: _Budget) -> list[_Entry]:
    """Extract regular files only, to paths checked to stay inside `root`."""
    entries: list[_Entry] = []
    seen: set[str] = set()
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for info in tar:
                if not info.isreg() or not safe_member_name(info.name) or info.name in seen:
                    problems.add(f"{archive}: {info.name}",
                                 "not a regular file under a plain, unique relative path; an "
                                 "export holds nothing else")
                    continue
                seen.add(info.name)
                budget.spend(info.size)  # before a byte is written: sparse ones too
                target = root / info.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(info)
                assert source is not None  # a regular file
                with source, target.open("wb") as out:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                entries.append(_Entry(info.name, info.offset, info.offset_data, end,
                                      int(info.mtime)))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _Unreadable(f"not a readable tar archive ({exc}): a byte of the archive "
                          "changed, or it is not a bundle") from None
    return entries


def _read_blob(root: Path, digest: str) -> Any:
    """A manifest from the extracted layout, only if it matches its digest."""
    return Store(root).read_json(digest)


def _check_layout(root: Path, digests: Mapping[str, str], problems: _Problems
                  ) -> tuple[str | None, dict[str, Any] | None]:
    """Blobs, index.json, closure, artifacts, human files and keys; returns the release's
    name and manifest when the layout names one. `digests`: every file's sha256."""
    files = digests.keys()
    if "oci-layout" not in files:
        problems.add("oci-layout", "missing")
    elif (root / "oci-layout").read_bytes() != OCI_LAYOUT:
        problems.add("oci-layout", "not the OCI layout version file an export writes")
    blobs: set[str] = set()
    for name in sorted(files):
        if not name.startswith("blobs/"):
            continue
        hexpart = name.removeprefix("blobs/sha256/")
        if not _HEX.fullmatch(hexpart):
            problems.add(name, "not a blob name (blobs/sha256/<64 hex digits>)")
        elif digests[name] != hexpart:
            problems.add(name, "content does not match its digest (the file's name)")
        else:
            blobs.add("sha256:" + hexpart)

    index = _read_index(root, files, problems)
    release_entries = [e for e in index if e.artifact_type == RELEASE_TYPE]
    if index and len(release_entries) != 1:
        problems.add("index.json", f"names {len(release_entries)} releases; a bundle holds one")
    if len(release_entries) != 1:
        return None, None
    release = release_entries[0]
    manifests: dict[str, dict[str, Any]] = {}
    for entry in index:
        if entry.digest not in blobs:
            if f"blobs/sha256/{entry.digest[7:]}" not in problems:
                problems.add("index.json", f"names {entry.digest}, which the bundle lacks")
            continue
        try:
            manifests[entry.digest] = _read_blob(root, entry.digest)
        except ValueError:
            problems.add("index.json", f"names {entry.digest}, which is not a manifest")
    if len(manifests) == len(index):
        derived = bundle_index([index_entry(e.digest, (root / f"blobs/sha256/{e.digest[7:]}")
                                            .stat().st_size, manifests[e.digest],
                                            release.digest) for e in index])
        if derived != (root / "index.json").read_bytes():
            problems.add("index.json", "differs from the index its manifests define "
                         "(annotations, sizes, order or format changed)")

    exports = [e for e in index if e.artifact_type == EXPORT_TYPE and e.digest in manifests]
    with_inputs = bool(exports) and manifests[exports[0].digest].get(
        "annotations", {}).get(WITH_INPUTS_ANN) == "true"
    closure = walk_closure(partial(_read_blob, root), [e.digest for e in index],
                           with_inputs=with_inputs)
    for digest in sorted(closure.blobs - blobs):
        name = f"blobs/sha256/{digest[7:]}"
        if name not in problems:
            problems.add(name, f"missing, yet {closure.parents.get(digest, 'index.json')} "
                         "names it")
    if not closure.unreadable:
        for digest in sorted(blobs - closure.blobs):
            problems.add(f"blobs/sha256/{digest[7:]}",
                         "not part of the release's closure (nothing in index.json names it)")

    release_manifest = manifests.get(release.digest)
    expected: dict[str, str] = {}  # path -> sha256 hex, for the files outside blobs/
    if release_manifest is not None:
        for layer in release_manifest.get("layers", []):
            path = artifact_copy_path(layer)
            if path is not None:
                expected[path] = str(layer["digest"]).removeprefix("sha256:")
    for export in exports[:1]:
        for layer in manifests[export.digest].get("layers", []):
            expected[layer.get("annotations", {}).get(TITLE, "")] = \
                str(layer["digest"]).removeprefix("sha256:")
    for name in sorted(expected):
        if name not in files:
            problems.add(name, "missing")
        elif digests[name] != expected[name]:
            pinned_by = "the release manifest" if name.startswith("artifacts/") else \
                "the export manifest"
            problems.add(name, f"content does not match the digest {pinned_by} records")
    known = {"oci-layout", "index.json", SUMS, *expected}
    for name in sorted(files):
        if not name.startswith(("blobs/", "log/")) and name not in known:
            problems.add(name, "not a file an export writes (neither a blob nor pinned by a "
                         "manifest)")
    for name in sorted(expected):
        if name.startswith("keys/") and name in files and name not in problems:
            _check_key(root, name, problems)
    return (release.annotations or {}).get(REF_NAME), release_manifest


def _read_index(root: Path, files: Collection[str], problems: _Problems
                ) -> list[Descriptor]:
    if "index.json" not in files:
        problems.add("index.json", "missing")
        return []
    try:
        data = json.loads((root / "index.json").read_bytes())
        return [Descriptor.from_json(m) for m in data["manifests"]]
    except (ValueError, KeyError, TypeError) as exc:
        problems.add("index.json", f"not a valid OCI index ({type(exc).__name__}: {exc})")
        return []


def _check_key(root: Path, name: str, problems: _Problems) -> None:
    try:
        public = load_pem_public_key((root / name).read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        problems.add(name, f"not a PEM public key ({exc})")
        return
    if f"keys/{keyid(public)}.pub" != name:
        problems.add(name, f"holds the key {keyid(public)}, not the one its name says")


def _check_sums(root: Path, digests: Mapping[str, str], problems: _Problems) -> None:
    """SHA256SUMS lists every other file; it is wrong if a file it disagrees with matches
    the digest that pins it elsewhere, and must be exactly what an export would write."""
    if SUMS not in digests:
        problems.add(SUMS, "missing")
        return
    data = (root / SUMS).read_bytes()
    listed: dict[str, str] = {}
    for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or not _HEX.fullmatch(digest) or name in listed:
            problems.add(SUMS, f"line {number} is not `<sha256>  <path>`, or repeats a path")
            continue
        listed[name] = digest
    actual = {name: digest for name, digest in digests.items() if name != SUMS}
    for name, digest in sorted(actual.items()):
        if name not in listed:
            problems.add(SUMS, f"does not list {name}")
        elif listed[name] != digest:
            if name in problems:
                problems.add(name, "does not match its line in SHA256SUMS")
            else:
                problems.add(SUMS, f"its line for {name} is wrong ({name} matches the digest "
                             "that pins it)")
    for name in sorted(listed.keys() - actual.keys()):
        problems.add(SUMS, f"lists {name}, which the archive lacks")
    if SUMS not in problems and data != sums_file(sorted(listed.items())):
        problems.add(SUMS, "not in the form an export writes (sorted, `<sha256>  <path>`)")


def _check_canonical(tar_path: Path, root: Path, entries: Sequence[_Entry], mtime: int,
                     archive: str, problems: _Problems) -> None:
    """The tar's own bytes (headers, padding, end) against the canonical archive of the same
    files: contents are checked above, this covers the rest."""
    members = [Member(e.path, (root / e.path).stat().st_size, "",
                      partial(_open_file, root / e.path)) for e in entries]
    canonical = tar_path.with_name("canonical.tar")
    with canonical.open("wb") as f:
        write_archive(members, mtime, f, compress=False)
    offset = _first_difference(tar_path, canonical)
    canonical.unlink()
    if offset is None:
        return
    for entry in entries:
        if offset < entry.end:
            what = ("its tar header at byte {} is not what an export writes (name, mode, "
                    "owner, time or order changed)" if offset < entry.data else
                    "the tar padding after it, at byte {}, is not zeros")
            problems.add(entry.path, what.format(offset))
            return
    after = f" after {entries[-1].path}" if entries else ""
    problems.add(f"{archive}", f"byte {offset} of the tar{after} is not what an export writes "
                 "(changed padding, a header that does not check, or trailing data)")


def _first_difference(a: Path, b: Path) -> int | None:
    with a.open("rb") as fa, b.open("rb") as fb:
        position = 0
        for left, right in _chunks(fa, fb):
            if left != right:
                for i, (x, y) in enumerate(zip(left, right, strict=False)):
                    if x != y:
                        return position + i
                return position + min(len(left), len(right))
            position += len(left)
    return None


def _chunks(fa: IO[bytes], fb: IO[bytes]) -> Iterator[tuple[bytes, bytes]]:
    while True:
        left, right = fa.read(CHUNK), fb.read(CHUNK)
        if not left and not right:
            return
        yield left, right
