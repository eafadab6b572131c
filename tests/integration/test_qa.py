"""QA and audit: independent signed verdicts, approvals, and policies that require them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import RecipeWriter, repoint_blob, run_rebuild

pytestmark = pytest.mark.docker

SCRIPT = "umask 022 && mkdir -p /out && printf 'device firmware\\n' > /out/fw.bin"


@pytest.fixture
def release(minimal_image: str, write_recipe: RecipeWriter, store: Path,
            tmp_path: Path) -> Path:
    """A signed release and the keys of everyone involved; returns the key folder."""
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("ci", "qa1", "qa2", "mallory", "quality"):
        assert run_rebuild("keygen", "--out", keys / name).code == 0
    built = run_rebuild("build", write_recipe(minimal_image, SCRIPT, ["fw.bin"]), "--key",
                        keys / "ci.key", store=store)
    assert built.code == 0, built.stderr
    return keys


def write_policy(keys: Path, body: str) -> Path:
    policy = keys / "policy.toml"
    policy.write_text('[policy]\nbuilder_keys = ["ci.pub"]\n' + body)
    return policy


def test_two_qa_verdicts_satisfy_a_policy_an_untrusted_one_does_not_count(
        release: Path, store: Path) -> None:
    keys = release
    policy = write_policy(keys, 'verdicts = 2\nqa_keys = ["qa1.pub", "qa2.pub"]\n')
    for qa in ("qa1", "mallory"):
        result = run_rebuild("reproduce", "t@1.0.0", "--key", keys / f"{qa}.key", "--json",
                             store=store)
        assert result.code == 0, result.stderr
        assert result.json["verdict"].startswith("sha256:")
    one = run_rebuild("verify", "t@1.0.0", "--policy", policy, "--json", store=store)
    assert one.code == 1  # qa1 counts, mallory's key is not trusted
    check = next(c for c in one.json["checks"] if c["name"] == "QA verdicts")
    assert check["detail"].startswith("1 PASSED")
    assert run_rebuild("reproduce", "t@1.0.0", "--key", keys / "qa2.key", store=store).code == 0
    two = run_rebuild("verify", "t@1.0.0", "--policy", policy, store=store)
    assert two.code == 0, two.stderr


def test_approvals_by_role(release: Path, store: Path) -> None:
    keys = release
    policy = write_policy(keys, '[[policy.approvals]]\nrole = "quality"\nkeys = ["quality.pub"]\n')
    before = run_rebuild("verify", "t@1.0.0", "--policy", policy, store=store)
    assert before.code == 1 and "no quality approval" in before.stderr
    wrong_role = run_rebuild("approve", "t@1.0.0", "--role", "engineering", "--meaning",
                             "reviewed", "--name", "Eve Engineer", "--key",
                             keys / "quality.key", "--trust", keys / "ci.pub", store=store)
    assert wrong_role.code == 0, wrong_role.stderr
    assert run_rebuild("verify", "t@1.0.0", "--policy", policy, store=store).code == 1
    # The approver checks the build evidence (trusting the CI key), not the approval policy
    # that her own signature is about to satisfy.
    approved = run_rebuild("approve", "t@1.0.0", "--role", "quality", "--meaning",
                           "released for clinical pilot", "--comment", "CAPA-7 closed",
                           "--name", "Quinn Quality", "--key", keys / "quality.key",
                           "--trust", keys / "ci.pub", "--json", store=store)
    assert approved.code == 0, approved.stderr
    statement = json.loads((store / "blobs/sha256" / approved.json["approval"][7:]).read_bytes())
    layer = next(x for x in statement["layers"]
                 if x["annotations"]["org.opencontainers.image.title"] == "approval.json")
    approval = json.loads((store / "blobs/sha256" / layer["digest"][7:]).read_bytes())
    predicate = approval["predicate"]
    assert predicate["signer"]["name"] == "Quinn Quality"
    assert predicate["role"] == "quality"
    assert predicate["meaning"] == "released for clinical pilot"
    assert predicate["comment"] == "CAPA-7 closed"
    assert predicate["time"].endswith("Z")
    after = run_rebuild("verify", "t@1.0.0", "--policy", policy, store=store)
    assert after.code == 0, after.stderr
    assert "approved by Quinn Quality" in after.stderr


def test_approval_of_evidence_that_does_not_verify_is_refused(release: Path,
                                                              store: Path) -> None:
    keys = release
    refused = run_rebuild("approve", "t@1.0.0", "--role", "quality", "--meaning", "ok",
                          "--name", "Q", "--key", keys / "quality.key", "--trust",
                          keys / "mallory.pub", store=store)
    assert refused.code == 1
    assert "approval refused" in refused.stderr


def test_a_failed_rebuild_is_a_signed_failed_verdict(release: Path, store: Path) -> None:
    keys = release
    listing = run_rebuild("store", "ls", "--json", store=store)
    manifest = next(e for e in listing.json["entries"] if e["kind"] == "release")["digest"]
    layer = json.loads((store / "blobs/sha256" / manifest[7:]).read_bytes())["layers"][0]
    repoint_blob(store, layer["digest"], b"tampered firmware\n")
    result = run_rebuild("reproduce", "t@1.0.0", "--key", keys / "qa1.key", "--json",
                         store=store)
    assert result.code == 1
    assert result.json["verdict"].startswith("sha256:")


def test_show_tells_the_story_with_verified_verdicts(release: Path, store: Path) -> None:
    keys = release
    for qa in ("qa1", "qa2", "mallory"):
        assert run_rebuild("reproduce", "t@1.0.0", "--key", keys / f"{qa}.key",
                           store=store).code == 0
    assert run_rebuild("approve", "t@1.0.0", "--role", "quality", "--meaning", "released",
                       "--name", "Quinn Quality", "--key", keys / "quality.key", "--trust",
                       keys / "ci.pub", store=store).code == 0
    trusted = [arg for k in ("ci", "qa1", "qa2", "quality") for arg in ("--key", keys / f"{k}.pub")]
    shown = run_rebuild("show", "t@1.0.0", *trusted, "--json", store=store)
    assert shown.code == 0, shown.stderr
    story = shown.json
    assert story["release"] == "t@1.0.0"
    verdicts = {v["signer"]: v["signature"]["status"] for v in story["verdicts"]}
    assert len(verdicts) == 3
    assert sorted(verdicts.values()) == ["untrusted", "verified", "verified"]
    assert all(v["result"] == "PASSED" for v in story["verdicts"])
    [approval] = story["approvals"]
    assert approval["name"] == "Quinn Quality" and approval["signature"]["status"] == "verified"
    assert story["verification"]["verified"] is True
    text = run_rebuild("show", "t@1.0.0", *trusted, store=store)
    for heading in ("What was built", "From what", "By whom", "How it was checked",
                    "Who approved"):
        assert heading in text.stdout
    assert "Quinn Quality as quality" in text.stdout
    by_digest = run_rebuild("show", "sha256:" + story["artifacts"][0]["sha256"], "--json",
                            store=store)
    assert by_digest.json["release"] == "t@1.0.0"
