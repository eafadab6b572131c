"""Trusted time for the audit log without Docker: RFC 3161 tokens from a stand-in TSA on
127.0.0.1 (tests/tsa_standin.py, a test CA made with `cryptography`), checked by `rebuild log
verify` and `rebuild log show` against the pinned chain; a checkpoint changed after it was
timestamped, a token from another TSA and a log without a TSA are each told apart; a
bundle's timestamped proofs are checked from their files alone."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from rebuild.errors import EnvironmentProblem
from rebuild.store import timestamp, tlog
from rebuild.store.auditlog import (
    Actor,
    AuditLog,
    bundle_files,
    check_events,
    make_entry,
    release_events,
    trusted_time_check,
)
from rebuild.store.layout import Store
from tests.conftest import run_rebuild
from tests.tsa_standin import TsaStandin

MANIFEST = "sha256:" + "ab" * 32


def entry(i: int, manifest: str | None = MANIFEST) -> bytes:
    return make_entry(event="test", release="t@1.0.0", manifest=manifest, records=[],
                      statements={}, actor=Actor(None, "ci", "builder"), meaning=str(i),
                      time=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))


@pytest.fixture
def tsa() -> Iterator[TsaStandin]:
    with TsaStandin().serving() as served:
        yield served


@pytest.fixture
def signer() -> tlog.NoteSigner:
    return tlog.NoteSigner.generate("example.com/audit")


def pin(tmp_path: Path, authority: TsaStandin, name: str = "tsa.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(authority.root_pem())
    return path


def at(tsa: TsaStandin, minute: int) -> dt.datetime:
    """A genTime within the TSA certificate's validity (tokens are checked at genTime)."""
    return tsa.started + dt.timedelta(minutes=10 + minute)


def stamp(tsa: TsaStandin, minute: int) -> str:
    return timestamp.utc(at(tsa, minute))


def timed_log(tmp_path: Path, tsa: TsaStandin, signer: tlog.NoteSigner | None) -> Store:
    """Entry 0 appended without a TSA, 1-3 with one (at three known times), 4 without."""
    store = Store(tmp_path / "store")
    store.init()
    log = AuditLog.of(store)
    log.append([entry(0)], signer)
    for i in (1, 2, 3):
        tsa.clock = at(tsa, i)
        log.append([entry(i)], signer, tsa.url)
    log.append([entry(4)], signer)
    return store


def test_tokens_verify_and_show_tells_trusted_from_machine_time(
        tmp_path: Path, tsa: TsaStandin, signer: tlog.NoteSigner) -> None:
    store = timed_log(tmp_path, tsa, signer)
    folder = store.root / "log" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["2", "2.tsr", "3", "3.tsr", "4",
                                                        "4.tsr"]
    # Each token is over exactly the checkpoint kept beside it, signed by the TSA.
    for n in (2, 3, 4):
        checked = timestamp.check_token((folder / f"{n}.tsr").read_bytes(),
                                        (folder / str(n)).read_bytes(),
                                        timestamp.load_tsa_trust(pin(tmp_path, tsa)))
        assert checked.time == at(tsa, n - 1)
        assert checked.tsa == "CN=standin-tsa"
    public = tmp_path / "log.pub"
    public.write_text(signer.verifier.to_text())
    verified = run_rebuild("log", "verify", "--log-key", public, "--tsa-cert",
                           pin(tmp_path, tsa), "--json", store=store.root)
    assert verified.code == 0, verified.stderr
    assert verified.json["timestamps"] == {"tokens": 3, "verified": "verified"}
    assert "entries 0-3 have a trusted time" in verified.stderr
    assert "entry 4 has no trusted time yet" in verified.stderr

    shown = run_rebuild("log", "show", "--tsa-cert", pin(tmp_path, tsa), "--json",
                        store=store.root)
    assert shown.code == 0, shown.stderr
    times = [row["trusted_time"] for row in shown.json["entries"]]
    # Entries 0 and 1 are first included by the checkpoint of 2 entries (minute 1); entry 2
    # by that of 3 (minute 2), and it came after minute 1; entry 4 by none.
    assert [t.get("not_after") for t in times] == [
        stamp(tsa, 1), stamp(tsa, 1), stamp(tsa, 2), stamp(tsa, 3), None]
    assert [t.get("not_before") for t in times] == [
        None, None, stamp(tsa, 1), stamp(tsa, 2), None]
    assert [t["source"] for t in times] == ["tsa"] * 4 + ["machine"]
    assert [t.get("checkpoint") for t in times] == [2, 2, 3, 4, None]
    text = run_rebuild("log", "show", "--tsa-cert", pin(tmp_path, tsa), store=store.root)
    lines = [line for line in text.stdout.splitlines() if "time:" in line]
    assert len(lines) == 5
    assert all("time from TSA CN=standin-tsa, verified" in line for line in lines[:4])
    assert "the first timestamped checkpoint that includes it, 2 entries" in lines[0]
    assert lines[4].strip() == "time: machine time, not attested"
    # Without the chain pinned, a token is named but never shown as a trusted time.
    unpinned = run_rebuild("log", "show", store=store.root)
    assert "time from TSA" not in unpinned.stdout
    assert unpinned.stdout.count("machine time, not attested (token of checkpoint") == 4
    quiet = run_rebuild("log", "verify", store=store.root)
    assert quiet.code == 0 and "3 timestamp token(s) NOT VERIFIED" in quiet.stderr


def test_a_checkpoint_changed_after_it_was_timestamped_fails(
        tmp_path: Path, tsa: TsaStandin) -> None:
    """The kept checkpoint gains an extension line (unsigned log: only the token can tell);
    then a token byte is flipped. Both fail, naming the checkpoint."""
    store = timed_log(tmp_path, tsa, None)
    root = pin(tmp_path, tsa)
    kept = store.root / "log" / "checkpoints" / "3"
    original = kept.read_bytes()
    body, _, sigs = original.partition(b"\n\n")
    kept.write_bytes(body + b"\n2030-01-01 09:00 claimed\n\n" + sigs)
    assert tlog.parse_checkpoint(tlog.parse_note(kept.read_bytes()).text).size == 3
    result = run_rebuild("log", "verify", "--tsa-cert", root, "--json", store=store.root)
    assert result.code == 1
    assert "FAIL timestamp of checkpoint 3: the timestamp token's imprint is not the " \
           "checkpoint's sha256: the checkpoint was changed after it was timestamped" \
        in result.stderr
    assert result.json["timestamps"]["verified"] == "FAILED"
    shown = run_rebuild("log", "show", "--tsa-cert", root, "--json", store=store.root)
    entry2 = shown.json["entries"][2]["trusted_time"]
    # Entry 2's first stamp failed: the next verified one still bounds it, and says why.
    assert entry2["checkpoint"] == 4 and entry2["unproven"]["token"] == "FAILED"
    kept.write_bytes(original)
    assert run_rebuild("log", "verify", "--tsa-cert", root, store=store.root).code == 0
    token = store.root / "log" / "checkpoints" / "2.tsr"
    data = bytearray(token.read_bytes())
    data[-10] ^= 0x01  # inside the ECDSA signature
    token.write_bytes(bytes(data))
    flipped = run_rebuild("log", "verify", "--tsa-cert", root, store=store.root)
    assert flipped.code == 1 and "FAIL timestamp of checkpoint 2" in flipped.stderr


def test_a_rewritten_log_fails_against_its_timestamped_checkpoint(
        tmp_path: Path, tsa: TsaStandin) -> None:
    """The whole log is rebuilt with entry 1 changed, keeping the old tokens and
    checkpoints: each still verifies on its own bytes, but not against the entries."""
    store = timed_log(tmp_path, tsa, None)
    stamps = store.root / "log" / "checkpoints"
    saved = {p.name: p.read_bytes() for p in stamps.iterdir()}
    forged = Store(tmp_path / "forged")
    forged.init()
    AuditLog.of(forged).append([entry(0), entry(99), entry(2), entry(3), entry(4)], None)
    (forged.root / "log" / "checkpoints").mkdir()
    for name, data in saved.items():
        (forged.root / "log" / "checkpoints" / name).write_bytes(data)
    result = run_rebuild("log", "verify", "--tsa-cert", pin(tmp_path, tsa), store=forged.root)
    assert result.code == 1
    assert "FAIL timestamp of checkpoint 2: the log's first 2 entries do not hash to the " \
           "root of the checkpoint timestamped then: the log was rewritten" in result.stderr


def test_a_token_from_an_untrusted_tsa_fails(tmp_path: Path, tsa: TsaStandin) -> None:
    store = timed_log(tmp_path, tsa, None)
    other = TsaStandin("other-tsa")  # never serving: only its root is pinned
    result = run_rebuild("log", "verify", "--tsa-cert", pin(tmp_path, other, "other.pem"),
                         store=store.root)
    assert result.code == 1
    assert "FAIL timestamp of checkpoint 2: the timestamp token is not from the pinned TSA" \
        in result.stderr
    shown = run_rebuild("log", "show", "--tsa-cert", pin(tmp_path, other, "other.pem"),
                        store=store.root)
    assert shown.code == 0 and "time from TSA" not in shown.stdout
    assert "token of checkpoint 2 FAILED" in shown.stdout


def test_without_a_tsa_the_time_is_the_machines(tmp_path: Path, tsa: TsaStandin) -> None:
    store = Store(tmp_path / "store")
    store.init()
    AuditLog.of(store).append([entry(0), entry(1)], None)
    shown = run_rebuild("log", "show", store=store.root)
    assert shown.code == 0, shown.stderr
    assert shown.stdout.count("time: machine time, not attested\n") == 2
    assert "no checkpoint is timestamped" in shown.stdout
    verified = run_rebuild("log", "verify", store=store.root)
    assert verified.code == 0
    assert "no checkpoint is timestamped: entry times are the machine's" in verified.stderr
    # Pinning a TSA on a log that has no token is a failed claim, not a pass.
    pinned = run_rebuild("log", "verify", "--tsa-cert", pin(tmp_path, tsa), store=store.root)
    assert pinned.code == 1 and "no checkpoint of the log is timestamped" in pinned.stderr
    # `log timestamp` (here through the global --tsa) bounds every entry appended so far.
    stamped = run_rebuild("--tsa", tsa.url, "log", "timestamp", "--json", store=store.root)
    assert stamped.code == 0, stamped.stderr
    assert stamped.json["checkpoint"] == 2 and stamped.json["new"] is True
    again = run_rebuild("log", "timestamp", "--tsa", tsa.url, "--json", store=store.root)
    assert again.json["new"] is False and tsa.requests == 1
    after = run_rebuild("log", "show", "--tsa-cert", pin(tmp_path, tsa), store=store.root)
    assert after.stdout.count("time from TSA CN=standin-tsa, verified") == 2


def test_a_tsa_failure_still_logs_the_entries_and_says_so(tmp_path: Path,
                                                          tsa: TsaStandin) -> None:
    store = Store(tmp_path / "store")
    store.init()
    log = AuditLog.of(store)
    dead = "http://127.0.0.1:9/"  # the discard port: nothing answers
    with pytest.raises(EnvironmentProblem, match="appended to the audit log "
                       "without a trusted time"):
        log.append([entry(0)], None, dead)
    assert log.size() == 1 and log.timestamps() == []
    result = run_rebuild("log", "timestamp", "--tsa", dead, store=store.root)
    assert result.code == 3 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: timestamp authority http://127.0.0.1:9/")
    assert run_rebuild("log", "timestamp", "--tsa", "ftp://x/", store=store.root).code == 2
    assert run_rebuild("log", "timestamp", store=store.root).code == 2
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    refused = run_rebuild("log", "verify", "--tsa-cert", bad, store=store.root)
    assert refused.code == 6 and "not a PEM certificate chain" in refused.stderr
    assert "Traceback" not in refused.stderr
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_bytes(tsa.cert.public_bytes(serialization.Encoding.PEM))
    no_root = run_rebuild("log", "verify", "--tsa-cert", leaf_only, store=store.root)
    assert no_root.code == 6 and "no self-signed root" in no_root.stderr


def test_bundle_proofs_carry_the_token_and_check_offline(tmp_path: Path, tsa: TsaStandin,
                                                         signer: tlog.NoteSigner) -> None:
    """What `rebuild export` writes under log/ for a release, read back with the store gone:
    each event's proof under its first timestamped checkpoint, and the token over it."""
    store = timed_log(tmp_path, tsa, signer)
    AuditLog.of(store).append([entry(5, manifest="sha256:" + "cd" * 32)], signer)
    events = release_events(store, MANIFEST)
    assert [e.index for e in events] == [0, 1, 2, 3, 4]
    files = bundle_files(events)
    assert sorted(n for n in files if n.startswith("log/timestamps/")) == [
        f"log/timestamps/{i}.{ext}" for i in range(4) for ext in ("tlog-proof", "tsr")]
    bundle = tmp_path / "bundle"
    for name, data in files.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_bytes(data)
    carried = release_events(Store(bundle), "")
    trust = timestamp.load_tsa_trust(pin(tmp_path, tsa))
    # Entry 4 was never timestamped: a pinned TSA requires every event to be.
    failed = check_events(carried, signer.verifier, trust)
    assert [(c.name, c.ok) for c in failed] == [("log entry 4", False)]
    assert "under no timestamped checkpoint" in failed[0].detail
    timed = carried[:4]
    assert check_events(timed, signer.verifier, trust) == []
    summary = trusted_time_check(timed, signer.verifier, trust)
    assert summary is not None and "from TSA CN=standin-tsa, verified" in summary.detail
    assert f"the latest {stamp(tsa, 3)}" in summary.detail
    other = timestamp.load_tsa_trust(pin(tmp_path, TsaStandin("other"), "other.pem"))
    untrusted = check_events(timed, signer.verifier, other)
    assert len(untrusted) == 4 and all("not from the pinned TSA" in c.detail
                                       for c in untrusted)
    # A carried checkpoint altered after it was timestamped (its proof still parses).
    proof_path = bundle / "log" / "timestamps" / "1.tlog-proof"
    proof = tlog.InclusionProof.parse(proof_path.read_bytes())
    altered = proof.checkpoint.replace(b"\n\n", b"\nextra\n\n", 1)
    proof_path.write_bytes(tlog.InclusionProof(proof.index, proof.hashes, altered).to_bytes())
    changed = check_events(release_events(Store(bundle), "")[:4], None, trust)
    assert [c.name for c in changed] == ["log entry 1"]
    assert "the checkpoint was changed after it was timestamped" in changed[0].detail
    assert json.loads(files["log/entries/0.json"])["manifest"] == MANIFEST
