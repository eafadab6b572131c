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
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rebuild.checks import Check
from rebuild.errors import RebuildError, SigningError, StoreError, UsageError
from rebuild.store import tlog
from rebuild.store.layout import KIND, Store, canonical_json

LOG_KEY_ENV = "REBUILD_LOG_KEY"
DEFAULT_ORIGIN = "rebuild.local/audit-log"
ENTRY_VERSION = 1
# The records whose subject is a release and that must each be logged when a policy asks.
LOGGED_KINDS = ("evidence", "verdict", "approval", "withdrawal")


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

    def append(self, entries: Sequence[bytes], signer: tlog.NoteSigner | None) -> list[int]:
        """Append entries in order; returns their indices. Writes the new right edge of every
        level, then the checkpoint (atomically, last: a crash leaves the old tree intact)."""
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
            self._write(self.root / "checkpoint", note)
            for lvl, n, w in written:
                _drop_superseded(self.root / tlog.tile_path(lvl, n), w)
            return list(range(old, new))

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
    return AuditLog.of(store).append(entries, log_signer_from_env())


def log_build(store: Store, *, release: str, attempt: str, manifest: str | None,
              evidence: str | None, bundles: Mapping[str, str], statements: Mapping[str, str],
              signer: str | None, status: str, test_result: str | None) -> list[int]:
    """A twin build: its attempt, the release it recorded (if any) and its test result."""
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
    return _append(store, entries)


def log_statement(store: Store, *, kind: str, release: str, manifest: str, record: str,
                  statement: Mapping[str, Any], statement_digest: str, bundle: str,
                  signer: str | None) -> int:
    """A signed decision attached to a release: a QA verdict, an approval, a withdrawal."""
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
    else:
        event, role = kind, str(predicate.get("role", ""))
        name = str(predicate.get("signer", {}).get("name", "")) or _actor_name()
        meaning = str(predicate.get("meaning", ""))
    entry = make_entry(event=event, release=release, manifest=manifest, records=[record],
                       statements={kind: {"statement": statement_digest, "bundle": bundle}},
                       actor=Actor(signer, name, role), meaning=meaning,
                       time=datetime.now(UTC), corrects=corrects)
    return _append(store, [entry])[0]


# -- checking ---------------------------------------------------------------------------------


@dataclass
class LogReport:
    size: int = 0
    origin: str | None = None
    root: str | None = None
    signed: bool | None = None  # None: no key pinned, so signatures NOT VERIFIED
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
               kept: bytes | None = None) -> LogReport:
    """Recompute the whole tree from the entries; compare every tile and the checkpoint;
    check the checkpoint's signature with the pinned key; prove the log consistent with a
    checkpoint kept earlier; and check that the store still holds every logged record and
    logs every record it holds."""
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


@dataclass(frozen=True)
class ReleaseEvent:
    index: int
    entry: bytes
    proof: tlog.InclusionProof

    @property
    def data(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.entry)
        return result


def release_events(store: Store, manifest: str) -> list[ReleaseEvent]:
    """The logged events of a release, each with an inclusion proof under the current
    checkpoint: from the store's log, or from the proofs an exported bundle carries."""
    log = AuditLog.of(store)
    if (log.root / PROOF_DIR).is_dir():
        return _bundled_events(log.root)
    current = log.read_checkpoint()
    if current is None:
        return []
    data, _, checkpoint = current
    events = []
    for index, entry in log.entries(0, checkpoint.size):
        if json.loads(entry).get("manifest") == manifest:
            proof = tlog.InclusionProof(index, tuple(log.inclusion_proof(index,
                                                                         checkpoint.size)), data)
            events.append(ReleaseEvent(index, entry, proof))
    return events


def _bundled_events(root: Path) -> list[ReleaseEvent]:
    events = []
    for path in sorted((root / PROOF_DIR).glob("*.tlog-proof")):
        proof = tlog.InclusionProof.parse(path.read_bytes())
        entry = (root / ENTRY_DIR / f"{proof.index}.json").read_bytes()
        events.append(ReleaseEvent(proof.index, entry, proof))
    return sorted(events, key=lambda e: e.index)


def bundle_files(events: Sequence[ReleaseEvent]) -> dict[str, bytes]:
    """`log/entries/N.json` and `log/proofs/N.tlog-proof` for an exported bundle."""
    files = {}
    for event in events:
        files[f"log/{ENTRY_DIR}/{event.index}.json"] = event.entry
        files[f"log/{PROOF_DIR}/{event.index}.tlog-proof"] = event.proof.to_bytes()
    return files


def check_events(events: Sequence[ReleaseEvent], verifier: tlog.NoteVerifier | None
                 ) -> list[Check]:
    """Each event's inclusion proof against its checkpoint, and the checkpoint's signature."""
    checks = []
    for event in events:
        try:
            note = tlog.parse_note(event.proof.checkpoint)
            checkpoint = tlog.parse_checkpoint(note.text)
            if verifier is not None:
                tlog.verify_note(note, verifier)
            tlog.check_inclusion(tlog.leaf_hash(event.entry), event.index, checkpoint.size,
                                 event.proof.hashes, checkpoint.root)
        except tlog.ProofFailed as exc:
            checks.append(Check(f"log entry {event.index}", False, str(exc)))
    return checks


def release_log_checks(store: Store, manifest: str, referrers: Sequence[tuple[str, str]],
                       verifier: tlog.NoteVerifier | None) -> list[Check]:
    """For a policy that requires the log: every event of the release is in the log under a
    checkpoint signed by the pinned key; every record attached to the release (kind, digest)
    is logged, and every logged record is still attached."""
    try:
        events = release_events(store, manifest)
    except (tlog.ProofFailed, StoreError, ValueError, OSError) as exc:
        return [Check("audit log", False, f"cannot read the log: {exc}")]
    if not events:
        return [Check("audit log", False, "no logged event for this release")]
    checks = check_events(events, verifier)
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
        checks.append(Check("audit log", True, f"{len(events)} event(s) proven in the log "
                               f"(checkpoint {who})"))
    return checks


def withdrawn_entries(events: Sequence[ReleaseEvent]) -> set[int]:
    return {int(e.data["corrects"]) for e in events if "corrects" in e.data}


# -- the timeline -------------------------------------------------------------------------------


def timeline(store: Store, release: str | None, verifier: tlog.NoteVerifier | None,
             verify_bundle: Callable[[bytes], Any]) -> dict[str, Any]:
    """Every entry (of `release`, a name@version, when given) with what backs it: its
    inclusion proof under the current checkpoint (signed by the pinned log key, or NOT
    VERIFIED without one) and the signature of each statement it names, checked by
    `verify_bundle` (a Sigstore bundle's bytes -> the verified statement and key id, raising
    a RebuildError otherwise: the caller's trusted keys). An entry is `verified` only when
    all of that really checked out."""
    log = AuditLog.of(store)
    current = log.read_checkpoint()
    if current is None:
        raise StoreError(f"no audit log in {store.root}: nothing was recorded yet")
    data, note, checkpoint = current
    signed: bool | None = None
    if verifier is not None:
        try:
            tlog.verify_note(note, verifier)
            signed = True
        except tlog.ProofFailed:
            signed = False
    rows: list[dict[str, Any]] = []
    withdrawn_by: dict[int, int] = {}
    for index, entry in log.entries(0, checkpoint.size):
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
        verified = bool(included and signed and all(s.startswith("verified")
                                                      for s in signatures.values()))
        rows.append({"entry": index, **item, "in_log": included, "signatures": signatures,
                     "verified": verified})
    for row in rows:
        if row["entry"] in withdrawn_by:
            row["withdrawn_by"] = withdrawn_by[row["entry"]]
    return {"release": release, "size": checkpoint.size, "origin": checkpoint.origin,
            "root": tlog.b64(checkpoint.root),
            "checkpoint_signature": {True: "verified", False: "FAILED",
                                     None: "NOT VERIFIED"}[signed],
            "time_source": "the machine's clock (no timestamp authority: times are as the "
                           "appending machine said)",
            "entries": rows, "checkpoint": data.decode()}
