"""The audit log: an append-only, tamper-evident record of what changed what a release may do
(design.md, "The audit log"; 21 CFR Part 11 §11.10(e)).

Every build attempt, release, test result, QA verdict, approval and withdrawal is appended as
an entry (canonical JSON: event, release, the records and statements it concerns, the actor,
the meaning, the time) to a Merkle tree kept in `<store>/log/` as C2SP `tlog-tiles`, with a
C2SP checkpoint signed by the log key (`rebuild log keygen`; env REBUILD_LOG_KEY) when one is
configured. Nothing is ever rewritten: a correction is a new entry naming the earlier one.

This module is the only writer of `<store>/log/` (the store module owns the OCI layout beside
it); appenders serialize on an flock of that directory. An append reads and rewrites only the
right edge of the tiles (one partial tile per level), so it costs the same at any size.
The math and the formats are in rebuild.tlog.

A release's events travel with their inclusion proofs: in an exported bundle's `log/`, and as
a log-proof record (the same files as an OCI artifact whose subject is the release) that a
copy to another store adds; a store without the log proves the events from those.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rebuild.checks import Check
from rebuild.errors import EnvironmentProblem, RebuildError, SigningError, StoreError, UsageError
from rebuild.store import tlog

if TYPE_CHECKING:
    from rebuild.store import timestamp
from rebuild.store.layout import KIND, TITLE, Descriptor, Store, artifact_manifest, canonical_json

LOG_KEY_ENV = "REBUILD_LOG_KEY"
TSA_URL_ENV = "REBUILD_TSA_URL"  # each new checkpoint is timestamped by this TSA (RFC 3161)
DEFAULT_ORIGIN = "rebuild.local/audit-log"
ENTRY_VERSION = 1
# The records whose subject is a release and that must each be logged when a policy asks.
LOGGED_KINDS = ("evidence", "verdict", "approval", "withdrawal", "waiver", "promotion",
                "gate")
# Timestamped checkpoints: `checkpoints/<N>` (the checkpoint of N entries, as it was signed)
# and `checkpoints/<N>.tsr` (the TSA's DER TimeStampResp over its sha256); rebuild.timestamp.
STAMP_DIR = "checkpoints"


@dataclass(frozen=True)
class Stamp:
    """A checkpoint kept with the RFC 3161 token over its bytes."""

    size: int
    checkpoint: bytes
    token: bytes


@dataclass(frozen=True)
class Actor:
    keyid: str | None
    name: str
    role: str

    def to_json(self) -> dict[str, Any]:
        return {"keyid": self.keyid, "name": self.name, "role": self.role}


def make_entry(*, event: str, release: str, manifest: str | None, records: Sequence[str],
               statements: Mapping[str, Mapping[str, str]], actor: Actor, meaning: str,
               time: datetime, corrects: int | None = None) -> bytes:
    """One log entry, canonical JSON. `manifest`: the release manifest (None for an attempt
    that recorded no release); `records`: the index entries it concerns; `statements`:
    kind -> {"statement": digest, "bundle": digest}."""
    entry: dict[str, Any] = {
        "v": ENTRY_VERSION, "event": event, "release": release, "manifest": manifest,
        "records": list(records), "statements": {k: dict(v) for k, v in statements.items()},
        "actor": actor.to_json(), "meaning": meaning,
        "time": time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if corrects is not None:
        entry["corrects"] = corrects
    return canonical_json(entry)


def load_log_signer(path: Path) -> tlog.NoteSigner:
    try:
        return tlog.NoteSigner.parse(path.read_text())
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the log key ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SigningError(f"{path}: not a log key (`rebuild log keygen` writes one)") from None


def load_log_verifier(path: Path) -> tlog.NoteVerifier:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the log public key ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SigningError(f"{path}: not a log public key") from None
    if text.startswith("PRIVATE+KEY+"):
        raise SigningError(f"{path} is the private log key; pin the public one (PREFIX.pub)")
    try:
        return tlog.NoteVerifier.parse(text)
    except SigningError as exc:
        raise SigningError(f"{path}: {exc}") from None


def log_signer_from_env() -> tlog.NoteSigner | None:
    """The log key named by env REBUILD_LOG_KEY (a file), if any."""
    path = os.environ.get(LOG_KEY_ENV)
    return load_log_signer(Path(path)) if path else None


def generate_log_key(prefix: Path, name: str) -> tuple[Path, Path, tlog.NoteVerifier]:
    """PREFIX.key (0600, note signer key) and PREFIX.pub (note verifier key)."""
    signer = tlog.NoteSigner.generate(name)
    private, public = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for path in (private, public):
        if path.exists():
            raise UsageError(f"{path} exists; choose another --out or remove it")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.to_text() + "\n")
    public.write_text(signer.verifier.to_text() + "\n")
    return private, public, signer.verifier


class AuditLog:
    """The log of one store: `<store>/log/` (tiles, entry bundles, `checkpoint`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tiles: dict[tuple[int, int], bytes] = {}

    @classmethod
    def of(cls, store: Store) -> AuditLog:
        return cls(store.root / "log")

    # -- reading ---------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.root / "checkpoint").is_file()

    def read_checkpoint(self) -> tuple[bytes, tlog.SignedNote, tlog.Checkpoint] | None:
        try:
            data = (self.root / "checkpoint").read_bytes()
        except FileNotFoundError:
            return None
        note = tlog.parse_note(data)
        return data, note, tlog.parse_checkpoint(note.text)

    def size(self) -> int:
        current = self.read_checkpoint()
        return current[2].size if current else 0

    def timestamps(self) -> list[Stamp]:
        """The timestamped checkpoints, smallest first."""
        folder = self.root / STAMP_DIR
        if not folder.is_dir():
            return []
        stamps = []
        for path in folder.iterdir():
            token = path.with_name(path.name + ".tsr")
            if path.name.isdigit() and token.is_file():
                stamps.append(Stamp(int(path.name), path.read_bytes(), token.read_bytes()))
        return sorted(stamps, key=lambda s: s.size)

    def _read_tile_bytes(self, level: int, index: int, width: int) -> bytes:
        """The newest stored version of a tile, cut to `width` items: the full tile or the
        widest partial (tiles only grow, so any wider version starts with the same bytes)."""
        key = (level, index)
        data = self._tiles.get(key)
        if data is None:
            full = self.root / tlog.tile_path(level, index)
            if full.is_file():
                data = full.read_bytes()
            else:
                partials = full.with_name(full.name + ".p")
                widths = sorted(int(p.name) for p in partials.iterdir()
                                if p.name.isdigit()) if partials.is_dir() else []
                if not widths:
                    raise StoreError(f"the audit log lacks {tlog.tile_path(level, index)} "
                                     f"in {self.root}; restore it from a copy")
                data = (partials / str(widths[-1])).read_bytes()
            self._tiles[key] = data
        if level < 0:
            entries = tlog.decode_bundle(data)
            if len(entries) < width:
                raise StoreError(f"{tlog.tile_path(level, index)} holds {len(entries)} "
                                 f"entries, {width} expected")
            return tlog.encode_bundle(entries[:width])
        if len(data) < width * tlog.HASH_SIZE:
            raise StoreError(f"{tlog.tile_path(level, index)} holds "
                             f"{len(data) // tlog.HASH_SIZE} hashes, {width} expected")
        return data[:width * tlog.HASH_SIZE]

    def _tile_hashes(self, level: int, index: int) -> list[bytes]:
        self._read_tile_bytes(level, index, 0)  # loads the newest version into the cache
        return tlog.split_hashes(self._tiles[(level, index)])

    def hash_at(self, level: int, index: int) -> bytes:
        return tlog.level_hash_from_tiles(self._tile_hashes, level, index)

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """(index, entry bytes) for entries [start, end), from the entry bundles."""
        i = start
        while i < end:
            tile = i // tlog.TILE_WIDTH
            width = min(tlog.TILE_WIDTH, end - tile * tlog.TILE_WIDTH)
            items = tlog.decode_bundle(self._read_tile_bytes(-1, tile, width))
            for j in range(i - tile * tlog.TILE_WIDTH, width):
                yield tile * tlog.TILE_WIDTH + j, items[j]
            i = (tile + 1) * tlog.TILE_WIDTH

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return tlog.inclusion_proof(self.hash_at, index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return tlog.consistency_proof(self.hash_at, old, new)

    # -- appending -------------------------------------------------------------------------

    def append(self, entries: Sequence[bytes], signer: tlog.NoteSigner | None,
               tsa_url: str | None = None) -> list[int]:
        """Append entries in order; returns their indices. Writes the new right edge of every
        level, then the checkpoint (atomically, last: a crash leaves the old tree intact).
        With `tsa_url`, the new checkpoint is timestamped and kept with its token before it
        is published; if the TSA fails, the entries are still appended (nothing a command
        stored goes unlogged) and EnvironmentProblem says so afterwards."""
        if not entries:
            return []
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._tiles.clear()
            current = self.read_checkpoint()
            origin = current[2].origin if current else (signer.name if signer else
                                                         DEFAULT_ORIGIN)
            old = current[2].size if current else 0
            new = old + len(entries)
            written: list[tuple[int, int, int]] = []
            written += self._write_level(-1, old, [tlog.encode_bundle([e]) for e in entries])
            hashes = [tlog.leaf_hash(e) for e in entries]
            level = 0
            while hashes:
                done = self._write_level(level, old >> (tlog.TILE_HEIGHT * level), hashes)
                written += done
                hashes = [tlog.merkle_root(tlog.split_hashes(self._tiles[(level, n)]))
                          for lvl, n, w in done if lvl == level and w == tlog.TILE_WIDTH]
                level += 1
            root = tlog.tree_hash(self.hash_at, new)
            body = tlog.Checkpoint(origin, new, root).body()
            note = tlog.sign_note(body, signer) if signer else body + b"\n"
            failure = None
            if tsa_url:
                from rebuild.store import timestamp  # x509 and the TSA client: only here
                try:
                    self._keep_stamp(new, note, timestamp.request_token(tsa_url, note))
                except EnvironmentProblem as exc:
                    failure = exc
            self._write(self.root / "checkpoint", note)
            for lvl, n, w in written:
                _drop_superseded(self.root / tlog.tile_path(lvl, n), w)
            if failure is not None:
                raise EnvironmentProblem(
                    f"{failure}; entries {old}-{new - 1} were appended to the audit log "
                    "without a trusted time (`rebuild log timestamp` timestamps the log "
                    "later, bounding them too)")
            return list(range(old, new))

    def timestamp_current(self, tsa_url: str) -> tuple[Stamp, bool]:
        """Timestamp the current checkpoint unless it already is; (its stamp, whether it is
        new)."""
        from rebuild.store import timestamp  # x509 and the TSA client: only here
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            current = self.read_checkpoint()
            if current is None:
                raise StoreError(f"no audit log in {self.root}: nothing was recorded yet")
            data, _, checkpoint = current
            for stamp in self.timestamps():
                if stamp.size == checkpoint.size and stamp.checkpoint == data:
                    return stamp, False
            token = timestamp.request_token(tsa_url, data)
            self._keep_stamp(checkpoint.size, data, token)
            return Stamp(checkpoint.size, data, token), True

    def _keep_stamp(self, size: int, note: bytes, token: bytes) -> None:
        # The checkpoint first: a token is only read beside the bytes it stamps.
        self._write(self.root / STAMP_DIR / str(size), note)
        self._write(self.root / STAMP_DIR / f"{size}.tsr", token)

    def _write_level(self, level: int, count: int, items: list[bytes]
                     ) -> list[tuple[int, int, int]]:
        """Add `items` (hashes, or encoded entries for level -1) after the `count` stored at
        this level; rewrite the partial tile they extend and any tile after it."""
        tile, width = divmod(count, tlog.TILE_WIDTH)
        if level < 0:
            head = tlog.decode_bundle(self._read_tile_bytes(-1, tile, width)) if width else []
            buf = [*(tlog.encode_bundle([e]) for e in head), *items]
        else:
            head = tlog.split_hashes(self._read_tile_bytes(level, tile, width)) if width else []
            buf = [*head, *items]
        done = []
        for start in range(0, len(buf), tlog.TILE_WIDTH):
            chunk = buf[start:start + tlog.TILE_WIDTH]
            index = tile + start // tlog.TILE_WIDTH
            data = b"".join(chunk)
            path = self.root / tlog.tile_path(level, index, len(chunk))
            self._write(path, data)
            self._tiles[(level, index)] = data
            done.append((level, index, len(chunk)))
        return done

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            Path(tmp).chmod(0o644)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _drop_superseded(full: Path, width: int) -> None:
    """Once a wider version of the tile at `full` is stored, narrower partial versions go
    (C2SP lets a log delete partial tiles once the full tile exists; readers take the
    widest)."""
    partials = full.with_name(full.name + ".p")
    if not partials.is_dir():
        return
    for p in partials.iterdir():
        if p.name.isdigit() and int(p.name) < width:
            p.unlink(missing_ok=True)
    if width == tlog.TILE_WIDTH:
        with contextlib.suppress(OSError):
            partials.rmdir()


# -- hooks: one call from each place that changes what a release may do ---------------------


def _actor_name() -> str:
    return os.environ.get("REBUILD_SIGNER_NAME") or getpass.getuser()


def _append(store: Store, entries: Sequence[bytes]) -> list[int]:
    return AuditLog.of(store).append(entries, log_signer_from_env(),
                                     os.environ.get(TSA_URL_ENV) or None)


def log_build(store: Store, *, release: str, attempt: str, manifest: str | None,
              evidence: str | None, bundles: Mapping[str, str], statements: Mapping[str, str],
              signer: str | None, status: str, test_result: str | None,
              suite_results: Mapping[str, str] | None = None) -> list[int]:
    """A twin build: its attempt, the release it recorded (if any) and its test results
    (`suite_results`: "test-result/<suite>" -> PASSED/WARNED/FAILED, one entry each)."""
    now = datetime.now(UTC)
    actor = Actor(signer, _actor_name(), "builder")

    def refs(*kinds: str) -> dict[str, dict[str, str]]:
        return {k: {"statement": statements[k], **({"bundle": bundles[k]} if k in bundles
                                                     else {})}
                for k in kinds if k in statements}

    entries = [make_entry(event="attempt", release=release, manifest=manifest,
                          records=[attempt] if manifest or evidence is None
                          else [attempt, evidence],
                          statements={} if manifest else refs("provenance", "sbom"),
                          actor=actor, meaning=status, time=now)]
    if manifest is not None:
        entries.append(make_entry(event="release", release=release, manifest=manifest,
                                  records=[manifest, *([evidence] if evidence else [])],
                                  statements=refs("provenance", "sbom"), actor=actor,
                                  meaning="recorded", time=now))
    if test_result is not None:
        entries.append(make_entry(event="test-result", release=release, manifest=manifest,
                                  records=[evidence] if evidence else [],
                                  statements=refs("test-result"),
                                  actor=actor, meaning=test_result, time=now))
    for kind, result in sorted((suite_results or {}).items()):
        entries.append(make_entry(event="test-result", release=release, manifest=manifest,
                                  records=[evidence] if evidence else [],
                                  statements=refs(kind), actor=actor, meaning=result,
                                  time=now))
    return _append(store, entries)


def log_statement(store: Store, *, kind: str, release: str, manifest: str, record: str,
                  statement: Mapping[str, Any], statement_digest: str, bundle: str,
                  signer: str | None) -> int:
    """A signed decision attached to a release: a QA verdict, an approval, a withdrawal, a
    promotion into an environment, a deploy gate's summary."""
    predicate = statement.get("predicate", {})
    corrects = None
    if kind == "verdict":
        event, role, name = "verdict", "qa", _actor_name()
        meaning = str(predicate.get("verificationResult", ""))
    elif kind == "withdrawal":
        event, role = "approval-withdrawn", str(predicate.get("role", ""))
        name = str(predicate.get("signer", {}).get("name", ""))
        meaning = str(predicate.get("reason", ""))
        corrects = int(predicate.get("withdraws", {}).get("entry"))
    elif kind == "promotion":
        event, role = "promotion", "promoter"
        name = str(predicate.get("signer", {}).get("name", "")) or _actor_name()
        meaning = (f"{predicate.get('from', {}).get('repository', '')} -> "
                   f"{predicate.get('to', {}).get('environment', '')}")
    elif kind == "gate":
        event, role, name = "gate", "gate", _actor_name()
        meaning = gate_meaning(predicate)
    else:
        event, role = kind, str(predicate.get("role", ""))
        name = str(predicate.get("signer", {}).get("name", "")) or _actor_name()
        meaning = str(predicate.get("meaning", ""))
    entry = make_entry(event=event, release=release, manifest=manifest, records=[record],
                       statements={kind: {"statement": statement_digest, "bundle": bundle}},
                       actor=Actor(signer, name, role), meaning=meaning,
                       time=datetime.now(UTC), corrects=corrects)
    return _append(store, [entry])[0]


def gate_meaning(predicate: Mapping[str, Any]) -> str:
    """A deploy gate's decision as its log entry says it: the result and where."""
    return (f"{predicate.get('verificationResult', '')} "
            f"{predicate.get('resourceUri', '')}").strip()


def log_gate(store: Store, *, release: str, manifest: str, summary: Mapping[str, Any],
             summary_digest: str) -> int:
    """A deploy gate's decision that nobody signed (no --key): logged with the digest of its
    summary, which the store keeps, and the machine's user as the actor."""
    entry = make_entry(event="gate", release=release, manifest=manifest, records=[],
                       statements={"gate": {"statement": summary_digest}},
                       actor=Actor(None, _actor_name(), "gate"),
                       meaning=gate_meaning(summary.get("predicate", {})),
                       time=datetime.now(UTC))
    return _append(store, [entry])[0]


# -- checking ---------------------------------------------------------------------------------


@dataclass
class LogReport:
    size: int = 0
    origin: str | None = None
    root: str | None = None
    signed: bool | None = None  # None: no key pinned, so signatures NOT VERIFIED
    stamps: int = 0  # timestamped checkpoints
    stamps_verified: bool | None = None  # None: no TSA chain pinned, so NOT VERIFIED
    checks: list[Check] = field(default_factory=list)
    first_bad: int | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def bad_entry(self, index: int) -> None:
        if self.first_bad is None or index < self.first_bad:
            self.first_bad = index

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "origin": self.origin, "root": self.root,
                "checkpoint_signature": {True: "verified", False: "FAILED",
                                         None: "NOT VERIFIED"}[self.signed],
                "timestamps": {"tokens": self.stamps, "verified": {
                    True: "verified", False: "FAILED", None: "NOT VERIFIED"}[
                    self.stamps_verified]},
                "ok": self.ok, "first_bad_entry": self.first_bad,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                           for c in self.checks]}


def _describe(index: int, entry: bytes) -> str:
    try:
        data = json.loads(entry)
        return f"entry {index} ({data.get('event')} of {data.get('release')})"
    except ValueError:
        return f"entry {index}"


def verify_log(store: Store, verifier: tlog.NoteVerifier | None,
               kept: bytes | None = None, tsa: timestamp.TsaTrust | None = None) -> LogReport:
    """Recompute the whole tree from the entries; compare every tile and the checkpoint;
    check the checkpoint's signature with the pinned key; prove the log consistent with a
    checkpoint kept earlier; check every timestamped checkpoint (its token against the
    pinned TSA chain, its root against the entries); and check that the store still holds
    every logged record and logs every record it holds."""
    log = AuditLog.of(store)
    report = LogReport()
    try:
        current = log.read_checkpoint()
    except tlog.ProofFailed as exc:
        report.add("checkpoint", False, str(exc))
        return report
    if current is None:
        report.add("checkpoint", False, f"no audit log in {store.root} (no log/checkpoint)")
        return report
    _, note, checkpoint = current
    report.size, report.origin = checkpoint.size, checkpoint.origin
    report.root = tlog.b64(checkpoint.root)
    if verifier is not None:
        try:
            tlog.verify_note(note, verifier)
            report.signed = report.add("checkpoint signature", True,
                                       f"signed by the pinned log key {verifier.name}")
        except tlog.ProofFailed as exc:
            report.signed = report.add("checkpoint signature", False, str(exc))
    n = checkpoint.size
    entries: list[bytes] = []
    try:
        entries = [e for _, e in log.entries(0, n)]
    except (StoreError, ValueError) as exc:
        report.add("entries", False, f"cannot read the entry bundles: {exc}")
        report.bad_entry(len(entries))
        return report
    for i, entry in enumerate(entries):
        try:
            parsed = json.loads(entry)
            canonical = canonical_json(parsed) == entry and isinstance(parsed, dict)
        except ValueError:
            canonical = False
        if not canonical:
            report.bad_entry(i)
            report.add("entries", False, f"entry {i} is not canonical JSON: it was changed")
            break
    level = [tlog.leaf_hash(e) for e in entries]
    height = 0
    while level:
        _compare_tiles(log, report, height, level)
        level = [tlog.merkle_root(level[i:i + tlog.TILE_WIDTH])
                 for i in range(0, len(level) - tlog.TILE_WIDTH + 1, tlog.TILE_WIDTH)]
        height += 1
    leaves = [tlog.leaf_hash(e) for e in entries]
    root = tlog.merkle_root(leaves)
    if root != checkpoint.root:
        report.add("tree head", False, f"the {n} entries hash to {tlog.b64(root)}, not to the "
                   "checkpoint's root: the log or its checkpoint was changed")
    elif report.ok:
        report.add("tree head", True, f"the {n} entries and every tile hash to the "
                   "checkpoint's root")
    if kept is not None:
        _check_kept(log, report, kept, verifier, leaves)
    _check_stamps(log, report, leaves, verifier, tsa)
    if report.first_bad is None:
        _check_store(store, report, entries)
    if report.first_bad is not None:
        report.add("first difference", False, _describe(report.first_bad, entries[
            report.first_bad]) if report.first_bad < len(entries) else
            f"entry {report.first_bad}")
    return report


def _compare_tiles(log: AuditLog, report: LogReport, level: int, hashes: list[bytes]) -> None:
    for tile in range((len(hashes) + tlog.TILE_WIDTH - 1) // tlog.TILE_WIDTH):
        expect = hashes[tile * tlog.TILE_WIDTH:(tile + 1) * tlog.TILE_WIDTH]
        path = tlog.tile_path(level, tile, len(expect))
        try:
            stored = tlog.split_hashes(log._read_tile_bytes(level, tile, len(expect)))
        except (StoreError, ValueError) as exc:
            report.add(f"tile {path}", False, str(exc))
            report.bad_entry((tile * tlog.TILE_WIDTH) << (tlog.TILE_HEIGHT * level))
            continue
        for j, (a, b) in enumerate(zip(stored, expect, strict=True)):
            if a != b:
                first = (tile * tlog.TILE_WIDTH + j) << (tlog.TILE_HEIGHT * level)
                if report.first_bad is None:  # the lowest level names the entry exactly
                    report.bad_entry(first)
                report.add(f"tile {path}", False, f"hash {j} differs from the one recomputed "
                           f"from the entries (entry {first} onwards): the entry or the tile "
                           "was changed")
                break


def _check_kept(log: AuditLog, report: LogReport, kept: bytes,
                verifier: tlog.NoteVerifier | None, leaves: list[bytes]) -> None:
    try:
        note = tlog.parse_note(kept)
        old = tlog.parse_checkpoint(note.text)
        if verifier is not None:
            tlog.verify_note(note, verifier)
    except tlog.ProofFailed as exc:
        report.add("kept checkpoint", False, str(exc))
        return
    if old.size > report.size:
        report.add("kept checkpoint", False, f"the kept checkpoint has {old.size} entries, "
                   f"the log only {report.size}: the log was truncated")
        report.bad_entry(report.size)
        return
    if tlog.merkle_root(leaves[:old.size]) != old.root:
        report.add("consistency", False, f"the first {old.size} entries no longer hash to "
                   "the kept checkpoint's root: the log was rewritten")
        if report.first_bad is None:
            report.bad_entry(0)
        return
    try:
        proof = log.consistency_proof(old.size, report.size)
        new_root = tlog.merkle_root(leaves)
        tlog.check_consistency(old.size, old.root, report.size, new_root, proof)
    except (tlog.ProofFailed, StoreError, ValueError) as exc:
        report.add("consistency", False, str(exc))
        return
    report.add("consistency", True, f"the log of {report.size} entries extends the kept "
               f"checkpoint of {old.size} (consistency proof of {len(proof)} hashes)")


def check_stamp(stamp: Stamp, root_of: Callable[[int], bytes], verifier: tlog.NoteVerifier | None,
                tsa: timestamp.TsaTrust | None) -> timestamp.Timestamp | None:
    """A timestamped checkpoint against the log: the token over its bytes (when a TSA chain
    is pinned; None otherwise), its size, its signature (when a log key is pinned) and its
    root, the head of the log's first `size` entries (`root_of(size)`). Raises
    ProofFailed."""
    from rebuild.store import timestamp  # x509 and the TSA client: only here
    checked = timestamp.check_token(stamp.token, stamp.checkpoint, tsa) if tsa else None
    note = tlog.parse_note(stamp.checkpoint)
    checkpoint = tlog.parse_checkpoint(note.text)
    if checkpoint.size != stamp.size:
        raise tlog.ProofFailed(f"{STAMP_DIR}/{stamp.size} holds a checkpoint of "
                               f"{checkpoint.size} entries")
    if verifier is not None:
        tlog.verify_note(note, verifier)
    if root_of(stamp.size) != checkpoint.root:
        raise tlog.ProofFailed(f"the log's first {stamp.size} entries do not hash to the root "
                               "of the checkpoint timestamped then: the log was rewritten")
    return checked


def _check_stamps(log: AuditLog, report: LogReport, leaves: list[bytes],
                  verifier: tlog.NoteVerifier | None, tsa: timestamp.TsaTrust | None) -> None:
    from rebuild.store import timestamp  # x509 and the TSA client: only here
    try:
        stamps = log.timestamps()
    except OSError as exc:
        report.add("timestamps", False, f"cannot read {STAMP_DIR}/: {exc.strerror}")
        report.stamps_verified = False
        return
    report.stamps = len(stamps)
    if tsa is not None and not stamps:
        report.stamps_verified = report.add(
            "timestamps", False, f"a TSA is pinned ({tsa.source}) but no checkpoint of the log "
            "is timestamped: every time in it is the machine's, not attested")
        return
    last: tuple[Stamp, timestamp.Timestamp] | None = None
    ok = True
    for stamp in stamps:
        if stamp.size > len(leaves):
            ok = report.add(f"timestamp of checkpoint {stamp.size}", False, "the log has only "
                            f"{len(leaves)} entries: it was truncated after it was timestamped")
            continue
        try:  # the tiles were compared with the entries above: heads from them cost O(log n)
            checked = check_stamp(stamp, lambda n: tlog.tree_hash(log.hash_at, n), verifier,
                                  tsa)
        except (tlog.ProofFailed, StoreError, ValueError) as exc:
            ok = report.add(f"timestamp of checkpoint {stamp.size}", False, str(exc))
            continue
        if checked is not None:
            last = (stamp, checked)
    if tsa is None or not ok:
        report.stamps_verified = None if ok else False
        return
    assert last is not None
    stamp, checked = last
    tail = (f"; {_span(stamp.size, len(leaves))} no trusted time yet (machine time, not "
            "attested)" if stamp.size < len(leaves) else "")
    report.stamps_verified = report.add(
        "timestamps", True, f"{len(stamps)} timestamped checkpoint(s) verified against "
        f"{tsa.source} (TSA {checked.tsa}); {_span(0, stamp.size)} a trusted time "
        f"(the latest {timestamp.utc(checked.time)}; `log show` gives each){tail}")


def _span(start: int, end: int) -> str:
    return f"entry {start} has" if end - start == 1 else f"entries {start}-{end - 1} have"


def _check_store(store: Store, report: LogReport, entries: list[bytes]) -> None:
    """Every logged record is still in index.json, and every record that must be logged is."""
    index = store.index()
    present = {e.digest for e in index}
    logged: set[str] = set()
    removed: list[str] = []
    for i, entry in enumerate(entries):
        data = json.loads(entry)
        logged.update(data.get("records", []))
        corrects = data.get("corrects")
        if corrects is not None and not (isinstance(corrects, int) and 0 <= corrects < i):
            report.add("corrections", False, f"entry {i} corrects entry {corrects}, which "
                       "does not precede it")
            report.bad_entry(i)
        if data.get("event") == "attempt":
            continue
        missing = [r for r in data.get("records", []) if r not in present]
        if missing:
            removed.append(f"{_describe(i, entry)} names {missing[0]}")
            report.bad_entry(i)
    if removed:
        more = f" (and {len(removed) - 1} more)" if len(removed) > 1 else ""
        report.add("store records", False, f"{removed[0]}, which is no longer in the store's "
                   f"index.json: a record was removed{more}")
    unlogged = [e for e in index if (e.annotations or {}).get(KIND) in LOGGED_KINDS
                and e.digest not in logged]
    if unlogged:
        kinds = ", ".join(f"{(e.annotations or {}).get(KIND)} {e.digest}" for e in unlogged[:3])
        report.add("store records", False, f"{len(unlogged)} record(s) in index.json are not "
                   f"in the audit log: {kinds}")
    elif report.ok:
        report.add("store records", True, "every logged record is in the store and every "
                   "verdict, approval and evidence record is logged")


# -- proofs for one release: in the store, or carried by an exported bundle --------------------


PROOF_DIR = "proofs"
ENTRY_DIR = "entries"
# In a bundle: `timestamps/<N>.tlog-proof` (entry N under the first timestamped checkpoint
# that includes it) and `timestamps/<N>.tsr` (the token over that checkpoint).
BUNDLE_STAMP_DIR = "timestamps"


# A release's log proofs carried to another store (a registry push, a pull, a copy): an OCI
# artifact whose subject is the release and whose layers are the files an exported bundle
# keeps under log/ (`bundle_files`), titled by those paths (docs/formats.md, "Log proofs").
PROOF_TYPE = "application/vnd.rebuild.log-proof.v1+json"
PROOF_KIND = "log-proof"
_PROOF_MEDIA = {".json": "application/vnd.rebuild.log-entry.v1+json",
                ".tlog-proof": "text/x.c2sp-tlog-proof; charset=utf-8",
                ".tsr": "application/timestamp-reply"}


@dataclass(frozen=True)
class ReleaseEvent:
    index: int
    entry: bytes
    proof: tlog.InclusionProof
    # The inclusion proof under the first timestamped checkpoint that includes the entry,
    # and the token over that checkpoint; None when no checkpoint since was timestamped.
    stamped: tuple[tlog.InclusionProof, bytes] | None = None
    # The log-proof artifact that carried it; None: the store's own log (or a bundle's).
    source: str | None = None

    @property
    def data(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.entry)
        return result

    def checkpoint(self) -> tlog.Checkpoint:
        """The checkpoint its proof is made against (unverified). Raises ProofFailed."""
        return tlog.parse_checkpoint(tlog.parse_note(self.proof.checkpoint).text)

    def key(self) -> tuple[str, int, bytes]:
        """The same event under any checkpoint of its log: (origin, index, entry)."""
        try:
            origin = self.checkpoint().origin
        except tlog.ProofFailed:
            origin = "unreadable:" + hashlib.sha256(self.proof.checkpoint).hexdigest()
        return origin, self.index, self.entry


def newest_per_event(events: Sequence[ReleaseEvent]) -> list[ReleaseEvent]:
    """One proof per event, under the largest checkpoint: a later push carries a newer proof
    of the same entries."""
    best: dict[tuple[str, int, bytes], tuple[int, ReleaseEvent]] = {}
    for event in events:
        try:
            size = event.checkpoint().size
        except tlog.ProofFailed:
            size = -1
        key = event.key()
        if key not in best or size > best[key][0]:
            best[key] = (size, event)
    return [event for _, event in best.values()]


def first_stamp(stamps: Sequence[Stamp], index: int) -> Stamp | None:
    """The first timestamped checkpoint that includes entry `index` (stamps sorted)."""
    return next((s for s in stamps if s.size > index), None)


def release_events(store: Store, manifest: str, *, carried: bool = True, own: bool = True
                   ) -> list[ReleaseEvent]:
    """The logged events of a release, each with an inclusion proof under the current
    checkpoint (and under the first timestamped checkpoint that includes it, if any): from
    the store's log, or from the proofs an exported bundle carries; with `carried`, also
    every proof the release's log-proof records carry (the same event may then come more
    than once, under several checkpoints: `newest_per_event`); without `own`, those alone.
    Raises ProofFailed when a carried proof cannot be read."""
    mine = _own_events(store, manifest) if own else []
    if not carried:
        return mine
    events = mine + carried_events(store, manifest)
    return sorted(events, key=lambda e: (e.index, e.source or ""))


def _own_events(store: Store, manifest: str) -> list[ReleaseEvent]:
    log = AuditLog.of(store)
    if (log.root / PROOF_DIR).is_dir():
        return _bundled_events(log.root)
    current = log.read_checkpoint()
    if current is None:
        return []
    data, _, checkpoint = current
    stamps = [s for s in log.timestamps() if s.size <= checkpoint.size]
    events = []
    for index, entry in log.entries(0, checkpoint.size):
        if json.loads(entry).get("manifest") == manifest:
            proof = tlog.InclusionProof(index, tuple(log.inclusion_proof(index,
                                                                         checkpoint.size)), data)
            stamp = first_stamp(stamps, index)
            stamped = None if stamp is None else (tlog.InclusionProof(
                index, tuple(log.inclusion_proof(index, stamp.size)), stamp.checkpoint),
                stamp.token)
            events.append(ReleaseEvent(index, entry, proof, stamped))
    return events


def _bundled_events(root: Path) -> list[ReleaseEvent]:
    files = {f"{path.parent.name}/{path.name}": path.read_bytes()
             for folder in (PROOF_DIR, ENTRY_DIR, BUNDLE_STAMP_DIR) if (root / folder).is_dir()
             for path in (root / folder).iterdir() if path.is_file()}
    return events_from_files(files)


def events_from_files(files: Mapping[str, bytes], source: str | None = None
                      ) -> list[ReleaseEvent]:
    """The events of `bundle_files`' files (paths without the `log/` prefix): each
    `proofs/N.tlog-proof` with `entries/N.json`, and `timestamps/N.*` when there. Raises
    ProofFailed when a proof or its entry is missing or unreadable."""
    events = []
    for path in sorted(files):
        folder, _, name = path.partition("/")
        if folder != PROOF_DIR or not name.endswith(".tlog-proof"):
            continue
        proof = tlog.InclusionProof.parse(files[path])
        if name != f"{proof.index}.tlog-proof":
            raise tlog.ProofFailed(f"{path} holds the proof of entry {proof.index}")
        entry = files.get(f"{ENTRY_DIR}/{proof.index}.json")
        if entry is None:
            raise tlog.ProofFailed(f"the proof of entry {proof.index} comes without "
                                   f"{ENTRY_DIR}/{proof.index}.json")
        stamped = None
        stamp_proof = files.get(f"{BUNDLE_STAMP_DIR}/{proof.index}.tlog-proof")
        token = files.get(f"{BUNDLE_STAMP_DIR}/{proof.index}.tsr")
        if stamp_proof is not None and token is not None:
            stamped = (tlog.InclusionProof.parse(stamp_proof), token)
        events.append(ReleaseEvent(proof.index, entry, proof, stamped, source))
    return sorted(events, key=lambda e: e.index)


def proof_artifact(events: Sequence[ReleaseEvent], subject: Descriptor
                   ) -> tuple[bytes, dict[str, bytes]]:
    """The log-proof record of a release's events: its manifest (canonical JSON, so the same
    log state gives the same digest and a second push sends nothing) and its blobs."""
    files = bundle_files(events)
    layers, blobs = [], {}
    for path, data in sorted(files.items()):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        media = next(m for suffix, m in _PROOF_MEDIA.items() if path.endswith(suffix))
        layers.append(Descriptor(media, digest, len(data), {TITLE: path}))
        blobs[digest] = data
    manifest = canonical_json(artifact_manifest(PROOF_TYPE, layers, subject=subject))
    return manifest, blobs


def carried_proofs(store: Store, manifest: str
                   ) -> list[tuple[str, list[ReleaseEvent] | tlog.ProofFailed]]:
    """(record digest, its events, or why they cannot be read) of each log-proof record of
    the release. Each event's entry must name the release manifest."""
    found: list[tuple[str, list[ReleaseEvent] | tlog.ProofFailed]] = []
    for record in store.referrers(manifest):
        if record.artifact_type != PROOF_TYPE and (record.annotations or {}).get(
                KIND) != PROOF_KIND:
            continue
        try:
            artifact = store.read_json(record.digest)
            if artifact.get("artifactType") != PROOF_TYPE:
                raise tlog.ProofFailed(f"it is not a {PROOF_TYPE} manifest")
            if artifact.get("subject", {}).get("digest") != manifest:
                raise tlog.ProofFailed(f"it does not name {manifest} as its subject")
            files = {}
            for layer in artifact.get("layers", []):
                title = str(layer.get("annotations", {}).get(TITLE, ""))
                if not title.startswith("log/"):
                    raise tlog.ProofFailed(f"its layer {title!r} is not a log/ file")
                files[title.removeprefix("log/")] = store.read_bytes(layer["digest"])
            events = events_from_files(files, record.digest)
            for event in events:
                if event.data.get("manifest") != manifest:
                    raise tlog.ProofFailed(f"its entry {event.index} is of another release "
                                           f"({event.data.get('manifest')})")
            found.append((record.digest, events))
        except (tlog.ProofFailed, StoreError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            found.append((record.digest, tlog.ProofFailed(
                f"the log proof {record.digest} is unreadable: {exc}")))
    return found


def carried_events(store: Store, manifest: str) -> list[ReleaseEvent]:
    """Every event the release's log-proof records carry. Raises ProofFailed for an
    unreadable one: a proof in a store is never skipped silently."""
    events: list[ReleaseEvent] = []
    for _, got in carried_proofs(store, manifest):
        if isinstance(got, tlog.ProofFailed):
            raise got
        events += got
    return events


def bundle_files(events: Sequence[ReleaseEvent]) -> dict[str, bytes]:
    """`log/entries/N.json` and `log/proofs/N.tlog-proof` for an exported bundle, and for a
    timestamped event `log/timestamps/N.tlog-proof` and `log/timestamps/N.tsr`."""
    files = {}
    for event in events:
        files[f"log/{ENTRY_DIR}/{event.index}.json"] = event.entry
        files[f"log/{PROOF_DIR}/{event.index}.tlog-proof"] = event.proof.to_bytes()
        if event.stamped is not None:
            proof, token = event.stamped
            files[f"log/{BUNDLE_STAMP_DIR}/{event.index}.tlog-proof"] = proof.to_bytes()
            files[f"log/{BUNDLE_STAMP_DIR}/{event.index}.tsr"] = token
    return files


def _check_inclusion(event: ReleaseEvent, proof: tlog.InclusionProof,
                     verifier: tlog.NoteVerifier | None) -> bytes:
    """Entry under the proof's checkpoint (signed by `verifier` when pinned); its bytes."""
    note = tlog.parse_note(proof.checkpoint)
    checkpoint = tlog.parse_checkpoint(note.text)
    if verifier is not None:
        tlog.verify_note(note, verifier)
    if proof.index != event.index:
        raise tlog.ProofFailed(f"the timestamped proof of entry {event.index} names entry "
                               f"{proof.index}")
    tlog.check_inclusion(tlog.leaf_hash(event.entry), event.index, checkpoint.size,
                         proof.hashes, checkpoint.root)
    return proof.checkpoint


def event_time(event: ReleaseEvent, verifier: tlog.NoteVerifier | None,
               tsa: timestamp.TsaTrust) -> timestamp.Timestamp:
    """The trusted time that bounds an event: it was in the log no later than the token's
    time, proven by the event's inclusion under the timestamped checkpoint and the token
    over that checkpoint, checked against the pinned TSA chain. Raises ProofFailed."""
    from rebuild.store import timestamp  # x509 and the TSA client: only here
    if event.stamped is None:
        raise tlog.ProofFailed(f"entry {event.index} is under no timestamped checkpoint: "
                               "its time is the machine's, not attested")
    proof, token = event.stamped
    return timestamp.check_token(token, _check_inclusion(event, proof, verifier), tsa)


def check_events(events: Sequence[ReleaseEvent], verifier: tlog.NoteVerifier | None,
                 tsa: timestamp.TsaTrust | None = None) -> list[Check]:
    """Each event's inclusion proof against its checkpoint, and the checkpoint's signature
    (every proof given: a broken one is never skipped); with a TSA chain pinned, each event's
    trusted time too, from its newest proof (`newest_per_event`)."""
    checks = []
    newest = {id(e) for e in newest_per_event(events)}
    for event in events:
        try:
            _check_inclusion(event, event.proof, verifier)
            if tsa is not None and id(event) in newest:
                event_time(event, verifier, tsa)
            elif event.stamped is not None:  # still proven in the stamped tree, unchecked time
                _check_inclusion(event, event.stamped[0], verifier)
        except tlog.ProofFailed as exc:
            carried = f" (carried by {event.source})" if event.source else ""
            checks.append(Check(f"log entry {event.index}{carried}", False, str(exc)))
    return checks


def trusted_time_check(events: Sequence[ReleaseEvent], verifier: tlog.NoteVerifier | None,
                       tsa: timestamp.TsaTrust | None) -> Check | None:
    """One line on the events' trusted times, once check_events found nothing wrong: the
    latest bound with the TSA that gave it, or how many tokens went unchecked."""
    from rebuild.store import timestamp  # x509 and the TSA client: only here
    events = newest_per_event(events)
    stamped = [e for e in events if e.stamped is not None]
    if tsa is None:
        if not stamped:
            return None
        return Check("trusted time", True, f"{len(stamped)} event(s) carry a timestamp "
                        "token; NOT VERIFIED: pin the TSA chain (--tsa-cert FILE)")
    times = [event_time(e, verifier, tsa) for e in events]
    latest = max(times, key=lambda t: t.time)
    return Check("trusted time", True, f"each of the {len(events)} event(s) was logged no "
                    f"later than its checkpoint's time from TSA {latest.tsa}, verified "
                    f"(the latest {timestamp.utc(latest.time)})")


def release_log_checks(store: Store, manifest: str, referrers: Sequence[tuple[str, str]],
                       verifier: tlog.NoteVerifier | None,
                       tsa: timestamp.TsaTrust | None = None, *, own: bool = True
                       ) -> list[Check]:
    """For a policy that requires the log: every event of the release is in the log under a
    checkpoint signed by the pinned key; every record attached to the release (kind, digest)
    is logged, and every logged record is still attached. With a TSA chain pinned, every
    event is under a checkpoint timestamped by it. Without `own`: from the carried proofs
    alone (a registry's)."""
    try:
        events = release_events(store, manifest, own=own)
    except (tlog.ProofFailed, StoreError, ValueError, OSError) as exc:
        return [Check("audit log", False, f"cannot read the log: {exc}")]
    if not events:
        return [Check("audit log", False, "no logged event for this release")]
    checks = check_events(events, verifier, tsa)
    distinct = len(newest_per_event(events))
    logged: dict[str, int] = {}
    for event in events:
        data = event.data
        for record in data.get("records", []):
            logged.setdefault(record, event.index)
    attached = {digest for _, digest in referrers} | {manifest}
    for kind, digest in referrers:
        if kind in LOGGED_KINDS and digest not in logged:
            checks.append(Check("audit log", False, f"the {kind} {digest} is not in the "
                                   "audit log"))
    for event in events:
        data = event.data
        if data.get("event") == "attempt":
            continue
        for record in data.get("records", []):
            if record not in attached:
                checks.append(Check("audit log", False, f"entry {event.index} "
                                       f"({data.get('event')}) names {record}, which is no "
                                       "longer attached to the release: a record was removed"))
    if not checks:
        who = f"signed by {verifier.name}" if verifier else "signature NOT VERIFIED"
        checks.append(Check("audit log", True, f"{distinct} event(s) proven in the log "
                               f"(checkpoint {who})"))
        timed = trusted_time_check(events, verifier, tsa)
        if timed is not None:
            checks.append(timed)
    return checks


def withdrawn_entries(events: Sequence[ReleaseEvent]) -> set[int]:
    return {int(e.data["corrects"]) for e in events if "corrects" in e.data}


# -- the timeline -------------------------------------------------------------------------------


def timeline(store: Store, release: str | None, verifier: tlog.NoteVerifier | None,
             verify_bundle: Callable[[bytes], Any], tsa: timestamp.TsaTrust | None = None
             ) -> dict[str, Any]:
    """Every entry (of `release`, a name@version, when given) with what backs it: its
    inclusion proof under the current checkpoint (signed by the pinned log key, or NOT
    VERIFIED without one) and the signature of each statement it names, checked by
    `verify_bundle` (a Sigstore bundle's bytes -> the verified statement and key id, raising
    a RebuildError otherwise: the caller's trusted keys). An entry is `verified` only when
    all of that really checked out. Each entry's `trusted_time` comes from the first
    timestamped checkpoint that includes it, when its token verifies against the pinned TSA
    chain `tsa` (rebuild.store.timestamp). For a release, the events the store only carries
    proofs of (log-proof records: pulled from a registry, or logged in another store's log)
    follow, as `carried_timeline` shows them; a store without a log shows those alone."""
    log = AuditLog.of(store)
    current = log.read_checkpoint()
    if current is None:
        if release is not None and store.find(release) is not None:
            return carried_timeline(store, release, verifier, verify_bundle, tsa)
        raise StoreError(f"no audit log in {store.root}: nothing was recorded yet")
    data, note, checkpoint = current
    signed: bool | None = None
    if verifier is not None:
        try:
            tlog.verify_note(note, verifier)
            signed = True
        except tlog.ProofFailed:
            signed = False
    stamps = _timeline_stamps(log, checkpoint.size, verifier, tsa)
    rows: list[dict[str, Any]] = []
    withdrawn_by: dict[int, int] = {}
    own_keys: set[tuple[str, int, bytes]] = set()
    for index, entry in log.entries(0, checkpoint.size):
        own_keys.add((checkpoint.origin, index, entry))
        item = json.loads(entry)
        if "corrects" in item:
            withdrawn_by[int(item["corrects"])] = index
        if release is not None and item.get("release") != release:
            continue
        try:
            tlog.check_inclusion(tlog.leaf_hash(entry), index, checkpoint.size,
                                 log.inclusion_proof(index, checkpoint.size), checkpoint.root)
            included = True
        except (tlog.ProofFailed, StoreError, ValueError):
            included = False
        signatures = _signatures(store, item, verify_bundle)
        verified = bool(included and signed and all(s.startswith("verified")
                                                      for s in signatures.values()))
        rows.append({"entry": index, **item, "in_log": included, "signatures": signatures,
                     "verified": verified, "trusted_time": _trusted_time(stamps, index)})
    for row in rows:
        if row["entry"] in withdrawn_by:
            row["withdrawn_by"] = withdrawn_by[row["entry"]]
    problems: list[str] = []
    if release is not None and store.find(release) is not None:
        carried = carried_timeline(store, release, verifier, verify_bundle, tsa, skip=own_keys)
        rows += carried["entries"]
        problems = carried["problems"]
    return {"release": release, "size": checkpoint.size, "origin": checkpoint.origin,
            "problems": problems,
            "root": tlog.b64(checkpoint.root),
            "checkpoint_signature": {True: "verified", False: "FAILED",
                                     None: "NOT VERIFIED"}[signed],
            "time_source": _time_source(stamps, tsa),
            "timestamps": [{"checkpoint": size, **shown} for size, shown in stamps],
            "entries": rows, "checkpoint": data.decode()}


def statement_signatures(store: Store, item: Mapping[str, Any],
                         verify_bundle: Callable[[bytes], Any]) -> dict[str, str]:
    """Each statement a log entry names -> "verified (key …)" only when its bundle's
    signature checked out (`verify_bundle`, the caller's trusted keys) and the signed
    statement is the logged one; "NOT VERIFIED (why)" or "unsigned" otherwise (the
    dashboard's timeline, as `log show`)."""
    return _signatures(store, item, verify_bundle)


def _signatures(store: Store, item: Mapping[str, Any], verify_bundle: Callable[[bytes], Any]
                ) -> dict[str, str]:
    """Each statement an entry names: its bundle's signature checked by `verify_bundle`, and
    the signed statement compared with the logged digest."""
    signatures: dict[str, str] = {}
    for kind, refs in sorted(item.get("statements", {}).items()):
        bundle = refs.get("bundle")
        if bundle is None:
            signatures[kind] = "unsigned"
            continue
        try:
            checked = verify_bundle(store.read_bytes(bundle))
            same = "sha256:" + hashlib.sha256(
                canonical_json(checked.statement)).hexdigest() == refs.get("statement")
            signatures[kind] = (f"verified (key {checked.keyid[:16]}…)" if same
                                else "NOT VERIFIED (statement differs from the logged one)")
        except RebuildError as exc:
            signatures[kind] = f"NOT VERIFIED ({str(exc).splitlines()[0][:80]})"
    return signatures


def carried_timeline(store: Store, release: str, verifier: tlog.NoteVerifier | None,
                     verify_bundle: Callable[[bytes], Any],
                     tsa: timestamp.TsaTrust | None = None, *,
                     skip: Collection[tuple[str, int, bytes]] = ()) -> dict[str, Any]:
    """The timeline of `release` from the proofs its log-proof records carry, for a store
    without the log (a registry, or a store a release was pulled into): per event the newest
    proof that checks (`newest_per_event` among the valid ones), the entry `verified` only
    when its inclusion under a checkpoint signed by the pinned log key and its statements'
    signatures checked out. Events whose key is in `skip` (shown from the store's own log)
    are left out. What a registry cannot show is said in `limits`."""
    found = store.release(release)
    problems: list[str] = []
    groups: dict[tuple[str, int, bytes], list[ReleaseEvent]] = {}
    for _, got in carried_proofs(store, found.digest):
        if isinstance(got, tlog.ProofFailed):
            problems.append(str(got))
            continue
        for event in got:
            if event.key() not in skip:
                groups.setdefault(event.key(), []).append(event)
    rows: list[dict[str, Any]] = []
    states: set[str] = set()
    for key, candidates in groups.items():
        candidates.sort(key=lambda e: -_size_of(e))
        chosen, failure, valid = candidates[0], None, None
        for event in candidates:  # every proof is checked: a broken one is named
            try:
                _check_inclusion(event, event.proof, verifier)
                valid = valid or event
            except tlog.ProofFailed as exc:
                failure = failure or str(exc)
                problems.append(f"entry {event.index} carried by {event.source}: {exc}")
        if valid is not None:
            chosen, failure = valid, None
        try:
            item = chosen.data
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            problems.append(f"entry {chosen.index} carried by {chosen.source}: not an entry "
                            f"({exc})")
            continue
        included = failure is None
        signature = ("FAILED" if not included else "NOT VERIFIED" if verifier is None
                     else "verified")
        states.add(signature)
        signatures = _signatures(store, item, verify_bundle)
        verified = bool(included and verifier is not None and all(
            s.startswith("verified") for s in signatures.values()))
        row = {"entry": chosen.index, **item, "in_log": included, "signatures": signatures,
               "verified": verified, "trusted_time": _carried_time(chosen, verifier, tsa),
               "source": "carried", "proof": chosen.source,
               "checkpoint": {"origin": key[0], "size": _size_of(chosen),
                              "signature": signature}}
        if failure is not None:
            row["problem"] = failure
        rows.append(row)
    rows.sort(key=lambda r: (str(r.get("time")), r["checkpoint"]["origin"], r["entry"]))
    corrected = {(r["checkpoint"]["origin"], int(r["corrects"])): r["entry"] for r in rows
                 if isinstance(r.get("corrects"), int)}
    for row in rows:
        by = corrected.get((row["checkpoint"]["origin"], row["entry"]))
        if by is not None:
            row["withdrawn_by"] = by
    overall = ("FAILED" if "FAILED" in states or problems else
               "NOT VERIFIED" if "NOT VERIFIED" in states or not rows else "verified")
    origins = sorted({r["checkpoint"]["origin"] for r in rows})
    return {"release": release, "size": len(rows), "origin": ", ".join(origins) or None,
            "root": None, "source": "carried proofs", "checkpoint_signature": overall,
            "time_source": "each entry's time is the appending machine's clock; an entry "
            "whose proof comes with a timestamped checkpoint verified against the pinned TSA "
            "chain was in the log no later than that checkpoint's TSA time",
            "timestamps": [], "entries": rows, "checkpoint": None, "problems": problems,
            "limits": CARRIED_LIMITS}


# What a store holding only carried proofs cannot show (`log show`, `log verify` say so).
CARRIED_LIMITS = ("the proofs show that each carried entry is in the log under a checkpoint; "
                  "the log's tiles are not here, so the whole tree, the entries of other "
                  "releases, that no entry of this release was left out of the proofs, and "
                  "consistency with a kept checkpoint can only be checked where the log is "
                  "kept (`rebuild log verify --store DIR`)")


def _size_of(event: ReleaseEvent) -> int:
    try:
        return event.checkpoint().size
    except tlog.ProofFailed:
        return -1


def _carried_time(event: ReleaseEvent, verifier: tlog.NoteVerifier | None,
                  tsa: timestamp.TsaTrust | None) -> dict[str, Any]:
    from rebuild.store import timestamp  # x509 and the TSA client: only here
    if event.stamped is None:
        return {"source": "machine", "status": "not attested"}
    size = _size_of(ReleaseEvent(event.index, event.entry, event.stamped[0]))
    if tsa is None:
        return {"source": "machine", "status": "not attested", "unproven": {
            "checkpoint": size, "token": "NOT VERIFIED",
            "detail": "pin the TSA chain (--tsa-cert FILE) to check it"}}
    try:
        checked = event_time(event, verifier, tsa)
    except (tlog.ProofFailed, ValueError) as exc:
        return {"source": "machine", "status": "not attested", "unproven": {
            "checkpoint": size, "token": "FAILED", "detail": str(exc)}}
    return {"source": "tsa", "status": "verified", "tsa": checked.tsa,
            "not_after": timestamp.utc(checked.time), "checkpoint": size}


def _timeline_stamps(log: AuditLog, size: int, verifier: tlog.NoteVerifier | None,
                     tsa: timestamp.TsaTrust | None) -> list[tuple[int, dict[str, Any]]]:
    """(size, what its token shows) of each timestamped checkpoint within the log."""
    from rebuild.store import timestamp  # x509 and the TSA client: only here
    shown: list[tuple[int, dict[str, Any]]] = []
    for stamp in log.timestamps():
        if stamp.size > size:
            continue
        try:
            claimed = timestamp.read_token(stamp.token)
            checked = check_stamp(stamp, lambda n: tlog.tree_hash(log.hash_at, n), verifier,
                                  tsa)
            row = {"time": timestamp.utc(claimed.time), "tsa": claimed.tsa,
                   "status": "NOT VERIFIED" if checked is None else "verified"}
        except (tlog.ProofFailed, StoreError, ValueError) as exc:
            row = {"status": "FAILED", "detail": str(exc)}
        shown.append((stamp.size, row))
    return shown


def _trusted_time(stamps: Sequence[tuple[int, dict[str, Any]]], index: int
                  ) -> dict[str, Any]:
    """An entry's trusted time: it was in the log no later than the time of the first
    verified timestamped checkpoint that includes it, and (when a verified timestamped
    checkpoint precedes it) appended after that one's time. A token that is unverified or
    failed is named; without a verified one, the time stays the machine's."""
    after = [s for size, s in stamps if size <= index and s["status"] == "verified"]
    unproven: dict[str, Any] | None = None
    for size, shown in stamps:
        if size <= index:
            continue
        if shown["status"] != "verified":
            unproven = unproven or {"checkpoint": size, "token": shown["status"],
                                    "detail": shown.get("detail", "pin the TSA chain "
                                                        "(--tsa-cert FILE) to check it")}
            continue
        bound = {"source": "tsa", "status": "verified", "tsa": shown["tsa"],
                 "not_after": shown["time"], "checkpoint": size}
        if after:
            bound["not_before"] = after[-1]["time"]
        if unproven:
            bound["unproven"] = unproven
        return bound
    return {"source": "machine", "status": "not attested", **({"unproven": unproven}
                                                              if unproven else {})}


def _time_source(stamps: Sequence[tuple[int, dict[str, Any]]],
                 tsa: timestamp.TsaTrust | None) -> str:
    machine = "each entry's time is the appending machine's clock"
    if not stamps:
        return f"{machine}, not attested (no checkpoint is timestamped)"
    if tsa is None:
        return (f"{machine}; {len(stamps)} checkpoint(s) carry a timestamp token, NOT "
                "VERIFIED: pin the TSA chain (--tsa-cert FILE)")
    return (f"{machine}; an entry under a timestamped checkpoint verified against "
            f"{tsa.source} was in the log no later than that checkpoint's TSA time")
