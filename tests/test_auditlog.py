"""The audit log without Docker: RFC 6962 math against the recursive definition, signed
notes, tampering found by `rebuild log verify` and by an independent Go verifier built from
golang.org/x/mod, consistency with a kept checkpoint, and four concurrent appenders."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rebuild.store import tlog
from rebuild.store.auditlog import AuditLog, verify_log
from rebuild.store.layout import Store, canonical_json
from tests.conftest import ROOT, require_tool, run_rebuild


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1, literally: the reference for the iterative code."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return tlog.leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return tlog.node_hash(mth(leaves[:k]), mth(leaves[k:]))


def entry(i: int) -> bytes:
    return canonical_json({"event": "test", "i": i})


@pytest.fixture
def signer() -> tlog.NoteSigner:
    return tlog.NoteSigner.generate("example.com/audit")


def make_log(tmp_path: Path, n: int, signer: tlog.NoteSigner | None,
             batch: int = 1) -> Store:
    store = Store(tmp_path / "store")
    store.init()
    log = AuditLog.of(store)
    for start in range(0, n, batch):
        log.append([entry(i) for i in range(start, min(n, start + batch))], signer)
    return store


def test_tree_heads_and_proofs_match_rfc6962(tmp_path: Path,
                                             signer: tlog.NoteSigner) -> None:
    store = make_log(tmp_path, 530, signer, batch=7)
    log = AuditLog.of(store)
    data = [entry(i) for i in range(530)]
    leaves = [tlog.leaf_hash(d) for d in data]
    for n in (1, 2, 3, 7, 255, 256, 257, 300, 512, 513, 530):
        root = mth(data[:n])
        assert tlog.tree_hash(log.hash_at, n) == root == tlog.merkle_root(leaves[:n])
        for m in {0, n // 2, n - 1}:
            tlog.check_inclusion(leaves[m], m, n, log.inclusion_proof(m, n), root)
            with pytest.raises(tlog.ProofFailed):
                tlog.check_inclusion(leaves[m], m, n, log.inclusion_proof(m, n),
                                     mth([*data[:n - 1], b"x"]))
        for old in {0, 1, n // 3, n - 1, n}:
            proof = log.consistency_proof(old, n)
            tlog.check_consistency(old, mth(data[:old]), n, root, proof)
            if 0 < old < n:
                with pytest.raises(tlog.ProofFailed):
                    tlog.check_consistency(old, mth([b"y", *data[1:old]]), n, root, proof)


def test_one_append_rewrites_only_the_right_edge(tmp_path: Path) -> None:
    store = make_log(tmp_path, 256 * 256 + 3, None, batch=4096)
    log = AuditLog.of(store)
    before = {p: p.stat().st_mtime_ns for p in (store.root / "log").rglob("*") if p.is_file()}
    log.append([entry(10**6)], None)
    after = {p: p.stat().st_mtime_ns for p in (store.root / "log").rglob("*") if p.is_file()}
    changed = sorted(str(p.relative_to(store.root / "log")) for p in after
                     if before.get(p) != after[p])
    # entry bundle, level-0 tile, the checkpoint: nothing else is read-modify-written
    assert changed == ["checkpoint", "tile/0/256.p/4", "tile/entries/256.p/4"]
    assert not (store.root / "log/tile/0/256.p/3").exists()  # superseded partial
    assert verify_log(store, None).ok


def test_note_keys_and_signatures(signer: tlog.NoteSigner) -> None:
    assert tlog.NoteSigner.parse(signer.to_text()) == signer
    verifier = tlog.NoteVerifier.parse(signer.verifier.to_text())
    body = tlog.Checkpoint("example.com/audit", 3, b"\x01" * 32).body()
    note = tlog.sign_note(body, signer)
    parsed = tlog.parse_note(note)
    tlog.verify_note(parsed, verifier)
    assert tlog.parse_checkpoint(parsed.text).size == 3
    other = tlog.NoteSigner.generate("example.com/audit")
    with pytest.raises(tlog.ProofFailed, match="not signed by the log key"):
        tlog.verify_note(parsed, other.verifier)
    forged = note.replace(b"\n3\n", b"\n4\n")
    with pytest.raises(tlog.ProofFailed, match="invalid"):
        tlog.verify_note(tlog.parse_note(forged), verifier)
    assert tlog.tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tlog.tile_path(-1, 5, 17) == "tile/entries/005.p/17"


def keypair(tmp_path: Path) -> tuple[Path, Path]:
    result = run_rebuild("log", "keygen", "--out", tmp_path / "log", "--name",
                         "example.com/audit")
    assert result.code == 0, result.stderr
    assert oct((tmp_path / "log.key").stat().st_mode & 0o777) == "0o600"
    return tmp_path / "log.key", tmp_path / "log.pub"


@pytest.fixture(scope="module")
def go_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/tlogverify built with Debian's golang-go and golang.org/x/mod sources."""
    require_tool("go")
    if not Path("/usr/share/gocode/src/golang.org/x/mod/sumdb/tlog").is_dir():
        message = "golang-golang-x-mod-dev is not installed (make setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("go") / "tlogverify"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode",
           "GOCACHE": str(out.parent / "cache"), "GOFLAGS": ""}
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=ROOT / "tests" / "tlogverify",
                   env=env, check=True, capture_output=True)
    return out


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_go_verifier_agrees_and_both_catch_every_flipped_byte(
        tmp_path: Path, go_verifier: Path) -> None:
    private, public = keypair(tmp_path)
    signer = tlog.NoteSigner.parse(private.read_text())
    store = make_log(tmp_path, 300, signer, batch=50)
    kept = tmp_path / "kept.checkpoint"
    assert run_rebuild("log", "checkpoint", "-o", kept, store=store.root).code == 0
    AuditLog.of(store).append([entry(i) for i in range(300, 777)], signer)
    proof, consistency = tmp_path / "proof", tmp_path / "consistency"
    assert run_rebuild("log", "prove", "--entry", "123", "-o", proof, store=store.root).code == 0
    assert run_rebuild("log", "prove", "--since", kept, "-o", consistency,
                       store=store.root).code == 0
    logdir = store.root / "log"

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run([go_verifier, logdir, public, proof, kept, consistency],
                              capture_output=True, text=True, check=False)

    def ours() -> object:
        return run_rebuild("log", "verify", "--log-key", public, "--checkpoint", kept,
                           store=store.root)

    assert go().returncode == 0, go().stderr
    good = ours()
    assert good.code == 0, good.stderr  # type: ignore[attr-defined]
    assert "NOT VERIFIED" not in good.stderr  # type: ignore[attr-defined]
    pristine = tmp_path / "pristine"
    shutil.copytree(logdir, pristine)
    cases = {"tile": logdir / "tile/0/001", "upper tile": logdir / "tile/1/000.p/3",
             "entry": logdir / "tile/entries/000", "checkpoint": logdir / "checkpoint"}
    for what, path in cases.items():
        flip(path, 60 if what == "entry" else None)
        bad_go, bad_ours = go(), ours()
        assert bad_go.returncode != 0, what
        assert bad_ours.code == 1, (what, bad_ours.stderr)  # type: ignore[attr-defined]
        if what == "entry":
            assert "entry 2 (" in bad_ours.stderr  # type: ignore[attr-defined]
        shutil.rmtree(logdir)
        shutil.copytree(pristine, logdir)
    assert go().returncode == 0


def test_without_a_pinned_key_signatures_are_not_verified(tmp_path: Path) -> None:
    store = make_log(tmp_path, 5, None)
    result = run_rebuild("log", "verify", "--json", store=store.root)
    assert result.code == 0, result.stderr
    assert "checkpoint signatures NOT VERIFIED" in result.stderr
    assert result.json["checkpoint_signature"] == "NOT VERIFIED"
    _, public = keypair(tmp_path)
    pinned = run_rebuild("log", "verify", "--log-key", public, store=store.root)
    assert pinned.code == 1 and "not signed by the log key" in pinned.stderr


def test_a_rewrite_is_caught_by_the_kept_checkpoint(tmp_path: Path,
                                                    signer: tlog.NoteSigner) -> None:
    """Someone with the log key rebuilds the whole log with entry 4 changed: tiles and
    checkpoint agree with each other, but not with what a user kept."""
    store = make_log(tmp_path, 10, signer)
    kept = tmp_path / "kept"
    kept.write_bytes((store.root / "log/checkpoint").read_bytes())
    shutil.rmtree(store.root / "log")
    log = AuditLog.of(store)
    log.append([canonical_json({"event": "test", "i": 4, "x": 1}) if i == 4 else entry(i)
                for i in range(12)], signer)
    public = tmp_path / "log.pub"
    public.write_text(signer.verifier.to_text())
    result = run_rebuild("log", "verify", "--checkpoint", kept, "--log-key", public,
                         store=store.root)
    assert result.code == 1
    assert "no longer hash to the kept checkpoint's root" in result.stderr
    truncated = make_log(tmp_path / "t", 3, signer)
    short = run_rebuild("log", "verify", "--checkpoint", kept, store=truncated.root)
    assert short.code == 1 and "truncated" in short.stderr


def test_checkpoint_and_proofs_as_json(tmp_path: Path, signer: tlog.NoteSigner) -> None:
    store = make_log(tmp_path, 7, signer)
    kept = tmp_path / "kept"
    saved = run_rebuild("log", "checkpoint", "-o", kept, "--json", store=store.root)
    assert saved.code == 0, saved.stderr
    checkpoint = tlog.parse_checkpoint(tlog.parse_note(kept.read_bytes()).text)
    assert saved.json == {"checkpoint": str(kept), "size": 7, "origin": checkpoint.origin,
                          "root": tlog.b64(checkpoint.root)}
    proved = run_rebuild("log", "prove", "--entry", "3", "--json", store=store.root)
    assert proved.code == 0, proved.stderr
    assert proved.json["size"] == 7 and proved.json["entry"] == 3
    assert proved.json["proof"].startswith(tlog.PROOF_HEADER)
    plain = run_rebuild("log", "prove", "--entry", "3", store=store.root)
    assert plain.stdout == proved.json["proof"]


APPENDER = """
import sys
from pathlib import Path
from rebuild.store.auditlog import AuditLog
from rebuild.store.layout import canonical_json
log = AuditLog(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    log.append([canonical_json({"writer": sys.argv[2], "i": i})], None)
"""


def test_four_concurrent_appenders_lose_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.init()
    (store.root / "log").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(store.root / "log"),
                               str(w), "120"], cwd=ROOT) for w in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    log = AuditLog.of(store)
    assert log.size() == 480
    seen = sorted(e for _, e in log.entries(0, 480))
    assert seen == sorted(canonical_json({"writer": str(w), "i": i})
                          for w in range(4) for i in range(120))
    assert verify_log(store, None).ok


def test_bad_input_exits_cleanly(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    Store(empty).init()
    result = run_rebuild("log", "verify", store=empty)
    assert result.code == 1 and "no audit log" in result.stderr
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("nonsense\n")
    result = run_rebuild("log", "verify", "--log-key", bad_key, store=empty)
    assert result.code == 6 and "Traceback" not in result.stderr
    assert run_rebuild("log", "show", store=empty).code == 5
    assert run_rebuild("log", "prove", store=empty).code == 2
