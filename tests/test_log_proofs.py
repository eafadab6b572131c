"""Log proofs that travel with a release (docs/formats.md, "Log proofs"): a copy between
stores carries a log-proof record of the release's events; a store without the log proves
them from it, takes the newest proof per event, and fails on a tampered one. The real store,
the real log and real signed notes; registries are in tests/integration/test_log_proofs.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rebuild.store import tlog
from rebuild.store.auditlog import (
    PROOF_KIND,
    PROOF_TYPE,
    Actor,
    AuditLog,
    carried_timeline,
    check_events,
    make_entry,
    newest_per_event,
    release_events,
    release_log_checks,
)
from rebuild.store.layout import (
    KIND,
    REF_NAME,
    RELEASE_TYPE,
    SUBJECT,
    TITLE,
    Descriptor,
    Store,
)
from rebuild.store.transfer import transfer

RELEASE = "x@1.0.0"


def make_release(root: Path) -> tuple[Store, Descriptor]:
    store = Store(root)
    store.init()
    digest, size = store.put_bytes(b"payload\n")
    release = store.put_artifact(RELEASE_TYPE, [Descriptor("application/octet-stream", digest,
                                                           size, {TITLE: "payload"})])
    store.add_to_index(release, {REF_NAME: RELEASE, KIND: "release"})
    return store, release


def log_event(store: Store, release: Descriptor, event: str, meaning: str,
              signer: tlog.NoteSigner, record: str | None = None) -> int:
    entry = make_entry(event=event, release=RELEASE, manifest=release.digest,
                       records=[record or release.digest], statements={},
                       actor=Actor(None, "Quinn", "qa"), meaning=meaning,
                       time=datetime(2026, 1, 1, tzinfo=UTC))
    return AuditLog.of(store).append([entry], signer)[0]


def proofs_of(store: Store, release: Descriptor) -> list[Descriptor]:
    return [r for r in store.referrers(release.digest) if r.artifact_type == PROOF_TYPE]


@pytest.fixture
def signer() -> tlog.NoteSigner:
    return tlog.NoteSigner.generate("example.com/audit")


def test_a_copy_carries_the_proofs_and_a_store_without_the_log_proves_them(
        tmp_path: Path, signer: tlog.NoteSigner) -> None:
    ci, release = make_release(tmp_path / "ci")
    log_event(ci, release, "release", "recorded", signer)
    log_event(ci, release, "approval", "released", signer)
    qa = Store(tmp_path / "qa")
    transfer(str(ci.root), str(qa.root), RELEASE, log=lambda _: None)
    assert not AuditLog.of(qa).exists()
    [proof] = proofs_of(qa, release)
    assert (proof.annotations or {})[KIND] == PROOF_KIND
    assert (proof.annotations or {})[SUBJECT] == release.digest
    events = release_events(qa, release.digest)
    assert [e.data["event"] for e in events] == ["release", "approval"]
    assert check_events(events, signer.verifier) == []
    checks = release_log_checks(qa, release.digest, [], signer.verifier)
    assert [c.ok for c in checks] == [True] and "2 event(s) proven" in checks[0].detail
    # Another log key: the same proofs are not under a checkpoint it signed.
    other = tlog.NoteSigner.generate("example.com/audit").verifier
    assert not all(c.ok for c in release_log_checks(qa, release.digest, [], other))

    # The same log copied again gives the same record; a newer log adds a newer one.
    transfer(str(ci.root), str(qa.root), RELEASE, log=lambda _: None)
    assert len(proofs_of(qa, release)) == 1
    log_event(ci, release, "verdict", "PASSED", signer)
    transfer(str(ci.root), str(qa.root), RELEASE, log=lambda _: None)
    assert len(proofs_of(qa, release)) == 2
    events = release_events(qa, release.digest)
    assert len(events) == 5  # two events under two checkpoints, one under one
    newest = newest_per_event(events)
    assert sorted(e.index for e in newest) == [0, 1, 2]
    assert {e.checkpoint().size for e in newest} == {3}
    checks = release_log_checks(qa, release.digest, [], signer.verifier)
    assert checks[0].ok and "3 event(s) proven" in checks[0].detail

    shown = carried_timeline(qa, RELEASE, signer.verifier, lambda _: None)
    assert [(r["event"], r["verified"], r["checkpoint"]["size"]) for r in shown["entries"]] \
        == [("release", True, 3), ("approval", True, 3), ("verdict", True, 3)]
    assert shown["checkpoint_signature"] == "verified" and not shown["problems"]
    unpinned = carried_timeline(qa, RELEASE, None, lambda _: None)
    assert unpinned["checkpoint_signature"] == "NOT VERIFIED"
    assert not any(r["verified"] for r in unpinned["entries"])


def forge(store: Store, release: Descriptor, proof: Descriptor, change: str) -> None:
    """A copy of a proof record with one file changed, attached beside the real one."""
    manifest = json.loads(store.read_bytes(proof.digest))
    layers = []
    for layer in manifest["layers"]:
        data = store.read_bytes(layer["digest"])
        title = layer["annotations"][TITLE]
        if change == "entry" and title == "log/entries/1.json":
            data = data.replace(b'"meaning":"released"', b'"meaning":"rejected"')
        if change == "hash" and title == "log/proofs/1.tlog-proof":
            lines = data.split(b"\n")
            lines[2] = lines[2][:-4] + (b"AAA=" if lines[2][-4:] != b"AAA=" else b"BBB=")
            data = b"\n".join(lines)
        digest, size = store.put_bytes(data)
        layers.append(Descriptor(layer["mediaType"], digest, size, layer["annotations"]))
    forged = store.put_artifact(PROOF_TYPE, layers, subject=release)
    store.add_to_index(forged, {KIND: PROOF_KIND, SUBJECT: release.digest})


@pytest.mark.parametrize("change", ["entry", "hash"])
def test_a_tampered_proof_fails(tmp_path: Path, signer: tlog.NoteSigner, change: str) -> None:
    ci, release = make_release(tmp_path / "ci")
    log_event(ci, release, "release", "recorded", signer)
    log_event(ci, release, "approval", "released", signer)
    qa = Store(tmp_path / "qa")
    transfer(str(ci.root), str(qa.root), RELEASE, log=lambda _: None)
    forge(qa, release, proofs_of(qa, release)[0], change)
    checks = release_log_checks(qa, release.digest, [], signer.verifier)
    failed = [c for c in checks if not c.ok]
    assert failed and "log entry 1 (carried by sha256:" in failed[0].name, checks
    shown = carried_timeline(qa, RELEASE, signer.verifier, lambda _: None)
    # The real proof still proves the real entry; the forged one is shown, NOT VERIFIED.
    rows = {(r["meaning"], r["verified"]) for r in shown["entries"]}
    assert ("released", True) in rows
    if change == "entry":
        assert ("rejected", False) in rows
    assert shown["checkpoint_signature"] == "FAILED"
    assert any("carried by sha256:" in problem for problem in shown["problems"])


def test_a_proof_of_another_release_or_an_unreadable_one_fails(
        tmp_path: Path, signer: tlog.NoteSigner) -> None:
    ci, release = make_release(tmp_path / "ci")
    log_event(ci, release, "release", "recorded", signer)
    qa = Store(tmp_path / "qa")
    transfer(str(ci.root), str(qa.root), RELEASE, log=lambda _: None)
    proof = proofs_of(qa, release)[0]
    manifest = json.loads(qa.read_bytes(proof.digest))
    layers = [Descriptor.from_json(layer) for layer in manifest["layers"]
              if not layer["annotations"][TITLE].startswith("log/entries/")]
    broken = qa.put_artifact(PROOF_TYPE, layers, subject=release)
    qa.add_to_index(broken, {KIND: PROOF_KIND, SUBJECT: release.digest})
    checks = release_log_checks(qa, release.digest, [], signer.verifier)
    assert not checks[0].ok and "comes without entries/0.json" in checks[0].detail, checks
    shown = carried_timeline(qa, RELEASE, signer.verifier, lambda _: None)
    assert shown["problems"] and shown["checkpoint_signature"] == "FAILED"


def test_the_timestamp_token_travels_with_the_proof(tmp_path: Path,
                                                    signer: tlog.NoteSigner) -> None:
    """RFC 3161 tokens from a stand-in TSA on 127.0.0.1: carried with each event's proof under
    its first timestamped checkpoint, and checked against the pinned chain in the store the
    release was copied to."""
    from rebuild.store import timestamp
    from tests.tsa_standin import TsaStandin

    with TsaStandin().serving() as tsa:
        tsa.clock = tsa.started + timedelta(minutes=10)
        ci, release = make_release(tmp_path / "ci")
        entry = make_entry(event="release", release=RELEASE, manifest=release.digest,
                           records=[release.digest], statements={},
                           actor=Actor(None, "ci", "builder"), meaning="recorded",
                           time=datetime(2026, 1, 1, tzinfo=UTC))
        AuditLog.of(ci).append([entry], signer, tsa.url)
        pem = tmp_path / "tsa.pem"
        pem.write_bytes(tsa.root_pem())
    qa = Store(tmp_path / "qa")
    transfer(str(ci.root), str(qa.root), RELEASE, log=lambda _: None)
    [record] = proofs_of(qa, release)
    titles = sorted(layer["annotations"][TITLE] for layer in json.loads(
        qa.read_bytes(record.digest))["layers"])
    assert titles == ["log/entries/0.json", "log/proofs/0.tlog-proof",
                      "log/timestamps/0.tlog-proof", "log/timestamps/0.tsr"]
    trust = timestamp.load_tsa_trust(pem)
    checks = release_log_checks(qa, release.digest, [], signer.verifier, trust)
    assert all(c.ok for c in checks), checks
    assert any(c.name == "trusted time" and "verified" in c.detail for c in checks)
    shown = carried_timeline(qa, RELEASE, signer.verifier, lambda _: None, trust)
    [row] = shown["entries"]
    assert row["trusted_time"]["source"] == "tsa"
    assert row["trusted_time"]["status"] == "verified"
    unpinned = carried_timeline(qa, RELEASE, signer.verifier, lambda _: None)
    assert unpinned["entries"][0]["trusted_time"]["source"] == "machine"
