"""The audit log with real builds, verdicts, approvals and bundles: the timeline, a
withdrawal, a removed approval and a swapped verdict caught by `log verify` and by a policy
that requires the log, and a bundle's inclusion proofs checked with the store gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, RecipeWriter, Result, run_rebuild

pytestmark = pytest.mark.docker

SCRIPT = "umask 022 && mkdir -p /out && printf 'device firmware\\n' > /out/fw.bin"
RELEASE = "t@1.0.0"


def ok(result: Result) -> Result:
    assert result.code == 0, result.stderr
    return result


def remove_from_index(store: Path, digest: str) -> None:
    index = json.loads((store / "index.json").read_bytes())
    index["manifests"] = [m for m in index["manifests"] if m["digest"] != digest]
    (store / "index.json").write_text(json.dumps(index))


# A forger with write access to the store (and QA's key) signs a FAILED verdict through the
# real code path (so it is logged), then swaps it for an unlogged PASSED one.
SIGN_FAILED = """
import json, sys
from pathlib import Path
from rebuild.attest import attach_statement
from rebuild.evidence.sign import KeySigner, load_signer
from rebuild.store.layout import Store
from rebuild.release.verify import resolve_release
store = Store(Path(sys.argv[1]))
release = resolve_release(store, sys.argv[2])
statement = json.loads(sys.argv[3])
signer = KeySigner(load_signer(Path(sys.argv[4]), None))
print(attach_statement(store, release, sys.argv[2], "verdict", statement, signer))
"""

FORGE_UNLOGGED = """
import sys
from pathlib import Path
from rebuild.store.layout import KIND, SUBJECT, Descriptor, Store
store = Store(Path(sys.argv[1]))
old = store.read_json(sys.argv[2])
layers = [Descriptor.from_json(layer) for layer in old["layers"]]
subject = Descriptor.from_json(old["subject"])
annotations = {**old["annotations"], "forged": "yes"}
manifest = store.put_artifact(old["artifactType"], layers, subject=subject,
                              annotations=annotations)
store.add_to_index(manifest, {KIND: "verdict", SUBJECT: subject.digest, **annotations})
print(manifest.digest)
"""


def python(code: str, *args: str | Path, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_log_records_proves_and_catches(minimal_image: str, write_recipe: RecipeWriter,
                                            store: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("ci", "qa1", "quality"):
        ok(run_rebuild("keygen", "--out", keys / name))
    ok(run_rebuild("log", "keygen", "--out", keys / "log", "--name", "example.com/qa-log"))
    env = {"REBUILD_LOG_KEY": str(keys / "log.key"), "REBUILD_SIGNER_NAME": "Quinn Quality"}
    ok(run_rebuild("build", write_recipe(minimal_image, SCRIPT, ["fw.bin"]), "--key",
                   keys / "ci.key", store=store, env=env))
    verdict = ok(run_rebuild("reproduce", RELEASE, "--key", keys / "qa1.key", "--json",
                             store=store, env=env)).json["verdict"]
    approval = ok(run_rebuild("approve", RELEASE, "--role", "quality", "--meaning",
                              "released for pilot", "--key", keys / "quality.key", "--trust",
                              keys / "ci.pub", "--json", store=store, env=env)).json["approval"]
    pubs = [a for k in ("ci", "qa1", "quality") for a in ("--key", str(keys / f"{k}.pub"))]

    # The timeline: who, when, what, each entry verified against the keys given.
    shown = ok(run_rebuild("log", "show", RELEASE, *pubs, "--log-key", keys / "log.pub",
                           "--json", store=store)).json
    events = [(e["event"], e["meaning"]) for e in shown["entries"]]
    assert events == [("attempt", "reproducible"), ("release", "recorded"),
                      ("verdict", "PASSED"), ("approval", "released for pilot")]
    assert all(e["verified"] for e in shown["entries"]), shown["entries"]
    assert shown["entries"][3]["actor"]["name"] == "Quinn Quality"
    assert shown["entries"][3]["actor"]["role"] == "quality"
    assert shown["entries"][2]["records"] == [verdict]
    assert "machine's clock" in shown["time_source"]
    unpinned = ok(run_rebuild("log", "show", RELEASE, store=store)).stdout
    assert "checkpoint signature NOT VERIFIED" in unpinned and "[verified" not in unpinned
    kept = tmp_path / "kept.checkpoint"
    ok(run_rebuild("log", "checkpoint", "-o", kept, store=store))

    policy = keys / "policy.toml"
    policy.write_text('[policy]\nbuilder_keys = ["ci.pub"]\nverdicts = 1\n'
                      'qa_keys = ["qa1.pub"]\n[[policy.approvals]]\nrole = "quality"\n'
                      'keys = ["quality.pub"]\n[policy.log]\nkey = "log.pub"\n')
    passed = ok(run_rebuild("verify", RELEASE, "--policy", policy, "--json", store=store)).json
    assert any(c["name"] == "audit log" and c["ok"] for c in passed["checks"])

    # Proofs travel: the bundle proves its events were logged with the store gone.
    bundle = tmp_path / "t.tar"
    ok(run_rebuild("export", RELEASE, "-o", bundle, *pubs, store=store))
    hidden = tmp_path / "store-away"
    store.rename(hidden)
    offline = ok(run_rebuild("verify", bundle, "--policy", policy, "--json",
                             store=tmp_path / "none")).json
    log_check = next(c for c in offline["checks"] if c["name"] == "audit log")
    assert log_check["ok"] and "4 event(s) proven" in log_check["detail"], log_check
    keyless = ok(run_rebuild("verify", bundle, "--key", keys / "ci.pub", store=tmp_path / "n"))
    assert "checkpoint signature NOT VERIFIED" in keyless.stderr
    other_log = tmp_path / "other"
    ok(run_rebuild("log", "keygen", "--out", other_log, "--name", "example.com/qa-log"))
    wrong = run_rebuild("verify", bundle, "--key", keys / "ci.pub", "--log-key",
                        f"{other_log}.pub", store=tmp_path / "n")
    assert wrong.code == 1 and "not signed by the log key" in wrong.stderr
    hidden.rename(store)

    # A correction is a new entry naming the earlier one; the approval stops counting.
    ok(run_rebuild("withdraw", "3", "--reason", "wrong firmware variant", "--key",
                   keys / "quality.key", store=store, env=env))
    after = ok(run_rebuild("log", "show", RELEASE, "--json", store=store)).json["entries"]
    assert after[3]["withdrawn_by"] == 4 and after[4]["corrects"] == 3
    assert after[4]["event"] == "approval-withdrawn"
    refused = run_rebuild("verify", RELEASE, "--policy", policy, store=store)
    assert refused.code == 1 and "no quality approval" in refused.stderr
    approval = ok(run_rebuild("approve", RELEASE, "--role", "quality", "--meaning",
                              "released for pilot, corrected", "--key", keys / "quality.key",
                              "--trust", keys / "ci.pub", "--json", store=store,
                              env=env)).json["approval"]
    ok(run_rebuild("verify", RELEASE, "--policy", policy, store=store))
    ok(run_rebuild("log", "verify", "--log-key", keys / "log.pub", "--checkpoint", kept,
                   store=store))

    # Deleting an approval from the index: caught by both.
    index = (store / "index.json").read_bytes()
    remove_from_index(store, approval)
    removed = run_rebuild("log", "verify", "--log-key", keys / "log.pub", store=store)
    assert removed.code == 1 and "entry 5 (approval of t@1.0.0)" in removed.stderr, \
        removed.stderr
    by_policy = run_rebuild("verify", RELEASE, "--policy", policy, store=store)
    assert by_policy.code == 1 and "no longer attached" in by_policy.stderr
    (store / "index.json").write_bytes(index)

    # A FAILED verdict swapped for an unlogged PASSED one: caught by both.
    statement = json.loads((store / "blobs/sha256" / json.loads(
        (store / "blobs/sha256" / verdict[7:]).read_bytes())["layers"][0]["digest"][7:])
        .read_bytes())
    statement["predicate"]["verificationResult"] = "FAILED"
    failed = python(SIGN_FAILED, store, RELEASE, json.dumps(statement), keys / "qa1.key",
                    env=env)
    ok(run_rebuild("log", "verify", "--log-key", keys / "log.pub", store=store))
    remove_from_index(store, failed)
    forged = python(FORGE_UNLOGGED, store, verdict, env={})
    swapped = run_rebuild("log", "verify", "--log-key", keys / "log.pub", store=store)
    assert swapped.code == 1
    assert f"names {failed}" in swapped.stderr and forged in swapped.stderr
    by_policy = run_rebuild("verify", RELEASE, "--policy", policy, store=store)
    assert by_policy.code == 1
    assert f"the verdict {forged} is not in the audit log" in by_policy.stderr
    shutil.rmtree(store / "log" / "tile" / "0")
    gone = run_rebuild("log", "verify", store=store)
    assert gone.code == 1 and "Traceback" not in gone.stderr


def test_a_release_with_trusted_time_travels_in_its_bundle(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, tmp_path: Path) -> None:
    """A real build with a timestamp authority (`rebuild --tsa URL`): its events get a
    trusted time, the policy pinning the TSA's chain passes, and the exported bundle carries
    each token with its checkpoint so `rebuild verify BUNDLE` checks it with the store and the
    TSA gone; another TSA's chain fails the same bundle."""
    from tests.tsa_standin import TsaStandin

    keys = tmp_path / "keys"
    keys.mkdir()
    ok(run_rebuild("keygen", "--out", keys / "ci"))
    ok(run_rebuild("log", "keygen", "--out", keys / "log", "--name", "example.com/qa-log"))
    tsa = TsaStandin("qa-tsa")
    (keys / "tsa.pem").write_bytes(tsa.root_pem())
    (keys / "other.pem").write_bytes(TsaStandin("other-tsa").root_pem())
    env = {"REBUILD_LOG_KEY": str(keys / "log.key")}
    with tsa.serving():
        ok(run_rebuild("--tsa", tsa.url, "build",
                       write_recipe(minimal_image, SCRIPT, ["fw.bin"]), "--key",
                       keys / "ci.key", store=store, env=env))
    assert tsa.requests == 1  # one append (attempt and release), one checkpoint, one token
    assert sorted(p.name for p in (store / "log" / "checkpoints").iterdir()) == ["2", "2.tsr"]
    shown = ok(run_rebuild("log", "show", RELEASE, "--tsa-cert", keys / "tsa.pem",
                           "--log-key", keys / "log.pub", "--json", store=store)).json
    assert [e["trusted_time"]["status"] for e in shown["entries"]] == ["verified"] * 2
    assert shown["entries"][0]["trusted_time"]["tsa"] == "CN=qa-tsa"
    ok(run_rebuild("log", "verify", "--tsa-cert", keys / "tsa.pem", "--log-key",
                   keys / "log.pub", store=store))

    policy = keys / "policy.toml"
    policy.write_text('[policy]\nbuilder_keys = ["ci.pub"]\n[policy.log]\nkey = "log.pub"\n'
                      'tsa_cert = "tsa.pem"\n')
    passed = ok(run_rebuild("verify", RELEASE, "--policy", policy, "--json", store=store)).json
    timed = next(c for c in passed["checks"] if c["name"] == "trusted time")
    assert timed["ok"] and "from TSA CN=qa-tsa, verified" in timed["detail"]

    bundle = tmp_path / "t.tar"
    ok(run_rebuild("export", RELEASE, "-o", bundle, "--key", keys / "ci.pub", store=store))
    hidden = tmp_path / "store-away"
    store.rename(hidden)
    offline = ok(run_rebuild("verify", bundle, "--policy", policy, "--json",
                             store=tmp_path / "none")).json
    timed = next(c for c in offline["checks"] if c["name"] == "trusted time")
    assert timed["ok"] and "each of the 2 event(s)" in timed["detail"], timed
    by_option = ok(run_rebuild("verify", bundle, "--key", keys / "ci.pub", "--tsa-cert",
                               keys / "tsa.pem", store=tmp_path / "none"))
    assert "from TSA CN=qa-tsa, verified" in by_option.stderr
    unpinned = ok(run_rebuild("verify", bundle, "--key", keys / "ci.pub",
                              store=tmp_path / "none"))
    assert "carry a timestamp token; NOT VERIFIED" in unpinned.stderr
    untrusted = run_rebuild("verify", bundle, "--key", keys / "ci.pub", "--tsa-cert",
                            keys / "other.pem", store=tmp_path / "none")
    assert untrusted.code == 1 and "not from the pinned TSA" in untrusted.stderr
    assert "NOT VERIFIED" in untrusted.stderr
