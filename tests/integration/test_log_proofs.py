"""Log proofs through a real `docker-registry`: a push carries the release's log proofs, a
store pulled without the log proves its events with them under a policy that requires the
log, an approval written to the registry adds a newer proof, `log show` and `log verify` on
the registry say what checks and what cannot, and a tampered proof fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rebuild.store.auditlog import PROOF_KIND, PROOF_TYPE
from rebuild.store.layout import KIND, SUBJECT, TITLE, Descriptor, Store
from tests.conftest import Result, run_rebuild, seed_store, toml_value
from tests.registry_support import RunningRegistry

pytestmark = pytest.mark.docker

RELEASE = "lp@1.0.0"
SCRIPT = "umask 022 && mkdir -p /out && printf 'firmware\\n' > /out/fw.bin"


def ok(result: Result) -> Result:
    assert result.code == 0, result.stderr
    return result


def proof_records(store: Path) -> list[dict[str, object]]:
    index = json.loads((store / "index.json").read_bytes())["manifests"]
    return [e for e in index if e.get("artifactType") == PROOF_TYPE]


@pytest.fixture(scope="module")
def ci(minimal_image: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A release built with a log key: (store, keys directory with policy.toml)."""
    base = tmp_path_factory.mktemp("ci")
    for name in ("ci", "quality"):
        ok(run_rebuild("keygen", "--out", base / name))
    ok(run_rebuild("log", "keygen", "--out", base / "log", "--name", "example.com/ci-log"))
    (base / "src").mkdir()
    (base / "src" / "a.txt").write_text("a\n")
    recipe = base / "lp.toml"
    recipe.write_text(
        f'[recipe]\nname = "lp"\nversion = "1.0.0"\n\n[source]\npath = "src"\n\n'
        f'[environment]\nimage = "{minimal_image}"\nsource_date_epoch = 1700000000\n\n'
        f'[build]\ncommand = ["sh", "-c", {toml_value(SCRIPT)}]\noutputs = ["fw.bin"]\n'
        'timeout = 120\nmemory = "512m"\n\n[check]\nvary = ["all"]\n')
    store = base / "store"
    seed_store(store)
    ok(run_rebuild("build", recipe, "--key", base / "ci.key", store=store,
                   env={"REBUILD_LOG_KEY": str(base / "log.key")}))
    (base / "policy.toml").write_text('[policy]\nbuilder_keys = ["ci.pub"]\n'
                                      '[policy.log]\nkey = "log.pub"\n')
    (base / "approved.toml").write_text(
        '[policy]\nbuilder_keys = ["ci.pub"]\n[[policy.approvals]]\nrole = "quality"\n'
        'keys = ["quality.pub"]\n[policy.log]\nkey = "log.pub"\n')
    return store, base


def test_proofs_travel_through_a_registry(ci: tuple[Path, Path], registry: RunningRegistry,
                                          tmp_path: Path) -> None:
    store, keys = ci
    url = registry.url("proofs")
    pushed = ok(run_rebuild("store", "push", RELEASE, url, "--json", store=store)).json
    # A second push of the same log sends nothing: the same log state, the same record.
    again = ok(run_rebuild("store", "push", RELEASE, url, "--json", store=store)).json
    assert again["manifests_sent"] == 0 and again["blobs_sent"] == 0
    assert len(again["referrers"]) == len(pushed["referrers"])

    # Pulled into a store with no log: the policy that requires the log holds, offline.
    pulled = tmp_path / "pulled"
    ok(run_rebuild("store", "pull", url, RELEASE, store=pulled))
    assert not (pulled / "log").exists()
    [record] = proof_records(pulled)
    assert record["annotations"] == {KIND: PROOF_KIND, SUBJECT: pushed["digest"]}
    verified = ok(run_rebuild("verify", RELEASE, "--policy", keys / "policy.toml", "--json",
                              store=pulled)).json
    log_check = next(c for c in verified["checks"] if c["name"] == "audit log")
    assert log_check["ok"] and "2 event(s) proven" in log_check["detail"], log_check
    assert "example.com/ci-log" in log_check["detail"]
    # The same straight from the registry, through a fresh cache.
    cache = {"REBUILD_CACHE": str(tmp_path / "cache")}
    ok(run_rebuild("--store", url, "verify", RELEASE, "--policy", keys / "policy.toml",
                   env=cache))

    # The timeline from the carried entries, each verified against the pinned log key.
    shown = ok(run_rebuild("--store", url, "log", "show", RELEASE, "--log-key",
                           keys / "log.pub", "--key", keys / "ci.pub", "--json",
                           env=cache)).json
    assert shown["source"] == "carried proofs" and not shown["problems"]
    assert [(e["event"], e["verified"], e["checkpoint"]["signature"])
            for e in shown["entries"]] == [("attempt", True, "verified"),
                                           ("release", True, "verified")]
    text = ok(run_rebuild("log", "show", RELEASE, store=pulled))
    assert "NOT VERIFIED" in text.stdout and "[verified" not in text.stdout
    assert "proofs carried with lp@1.0.0" in text.stdout
    # `log verify` on the registry checks the proofs and says what it cannot check.
    checked = ok(run_rebuild("--store", url, "log", "verify", "--release", RELEASE,
                             "--log-key", keys / "log.pub", env=cache))
    assert "not checked here" in checked.stderr and "whole tree" in checked.stderr
    ok(run_rebuild("log", "verify", "--release", RELEASE, "--log-key", keys / "log.pub",
                   store=pulled))
    refused = run_rebuild("--store", url, "log", "verify", "--log-key", keys / "log.pub",
                          env=cache)
    assert refused.code == 2 and "not the log" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    # An approval written to the registry is logged and pushed with a newer proof.
    missing = run_rebuild("verify", RELEASE, "--policy", keys / "approved.toml", store=pulled)
    assert missing.code == 1
    ok(run_rebuild("--store", url, "approve", RELEASE, "--role", "quality", "--meaning",
                   "released for pilot", "--key", keys / "quality.key", "--trust",
                   keys / "ci.pub", env={**cache, "REBUILD_LOG_KEY": str(keys / "log.key")}))
    later = tmp_path / "later"
    ok(run_rebuild("store", "pull", url, RELEASE, store=later))
    assert len(proof_records(later)) == 2
    approved = ok(run_rebuild("verify", RELEASE, "--policy", keys / "approved.toml", "--json",
                              store=later)).json
    log_check = next(c for c in approved["checks"] if c["name"] == "audit log")
    assert "3 event(s) proven" in log_check["detail"], log_check
    events = ok(run_rebuild("log", "show", RELEASE, "--log-key", keys / "log.pub", "--json",
                            store=later)).json["entries"]
    assert [e["event"] for e in events] == ["attempt", "release", "approval"]
    # Exported from there, the bundle keeps the records and proves the events offline.
    bundle = tmp_path / "lp.tar"
    ok(run_rebuild("export", RELEASE, "-o", bundle, store=later))
    offline = ok(run_rebuild("verify", bundle, "--policy", keys / "approved.toml", "--json",
                             store=tmp_path / "none")).json
    log_check = next(c for c in offline["checks"] if c["name"] == "audit log")
    assert "3 event(s) proven" in log_check["detail"], log_check


def forge_proof(store: Path, release: str) -> None:
    """Attach beside the real proof record a copy whose release entry says something else."""
    st = Store(store)
    [record] = proof_records(store)
    manifest = json.loads(st.read_bytes(str(record["digest"])))
    layers = []
    for layer in manifest["layers"]:
        data = st.read_bytes(layer["digest"])
        if layer["annotations"][TITLE].startswith("log/entries/"):
            data = data.replace(b'"meaning":"recorded"', b'"meaning":"recalled"')
        digest, size = st.put_bytes(data)
        layers.append(Descriptor(layer["mediaType"], digest, size, layer["annotations"]))
    subject = Descriptor.from_json(manifest["subject"])
    forged = st.put_artifact(PROOF_TYPE, layers, subject=subject)
    st.add_to_index(forged, {KIND: PROOF_KIND, SUBJECT: release})


def test_a_tampered_proof_fails(ci: tuple[Path, Path], registry: RunningRegistry,
                                tmp_path: Path) -> None:
    store, keys = ci
    source, url = registry.url("proofs-src"), registry.url("tampered")
    digest = ok(run_rebuild("store", "push", RELEASE, source, "--json", store=store)).json[
        "digest"]
    middle = tmp_path / "middle"
    ok(run_rebuild("store", "pull", source, RELEASE, store=middle))
    forge_proof(middle, digest)
    ok(run_rebuild("store", "push", RELEASE, url, store=middle))
    pulled = tmp_path / "pulled"
    ok(run_rebuild("store", "pull", url, RELEASE, store=pulled))
    failed = run_rebuild("verify", RELEASE, "--policy", keys / "policy.toml", store=pulled)
    assert failed.code == 1 and "carried by sha256:" in failed.stderr, failed.stderr
    cache = {"REBUILD_CACHE": str(tmp_path / "cache")}
    remote = run_rebuild("--store", url, "verify", RELEASE, "--policy", keys / "policy.toml",
                         env=cache)
    assert remote.code == 1
    logged = run_rebuild("--store", url, "log", "verify", "--release", RELEASE, "--log-key",
                         keys / "log.pub", env=cache)
    assert logged.code == 1 and "NOT VERIFIED" in logged.stderr
    shown = ok(run_rebuild("--store", url, "log", "show", RELEASE, "--log-key",
                           keys / "log.pub", "--json", env=cache)).json
    assert shown["checkpoint_signature"] == "FAILED" and shown["problems"]
    assert ("recalled", False) in {(e["meaning"], e["verified"]) for e in shown["entries"]}
