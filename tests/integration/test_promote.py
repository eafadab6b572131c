"""Environments, promotion and the deploy gate against Debian's docker-registry on 127.0.0.1:
staging before production, the exact bytes in each repository, nothing copied on a refusal,
promotion with the Docker engine unreachable, and the gate's decisions (exit codes and the
SLSA verification summary). One release is built for the whole module."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, Result, require_tool, run_rebuild, seed_store, toml_value
from tests.registry_support import RunningRegistry, start_registry

pytestmark = pytest.mark.docker

DEAD_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
SCRIPT = "umask 022 && mkdir -p /out/usr/bin && printf 'hi\\n' > /out/usr/bin/hi"
RELEASE = "w@1.0.0"


@dataclass(frozen=True)
class World:
    base: Path  # keys, policies, environments files
    store: Path  # where the release was built
    registry: RunningRegistry
    manifest: str  # the built release manifest's digest
    artifact: str  # sha256:<hex> of usr/bin/hi
    environments: Path

    def rebuild(self, *args: str | Path, env: dict[str, str] | None = None,
                environments: Path | None = None) -> Result:
        return run_rebuild(*args, "--environments", environments or self.environments,
                           store=self.store, env={"REBUILD_CACHE": str(self.base / "cache"),
                                                  "REBUILD_SIGNER_NAME": "Rel Manager",
                                                  **(env or {})})


def policy(path: Path, extra: str = "") -> None:
    path.write_text('[policy]\nbuilder_keys = ["ci.pub"]\npromoter_keys = ["rel.pub"]\n'
                    + extra)


def environments_file(path: Path, registry: RunningRegistry, rogue: bool = False) -> Path:
    qa_policy = "qa-rogue.toml" if rogue else "staging.toml"
    path.write_text(
        f'[[environment]]\nname = "staging"\nrepository = "{registry.url("staging")}"\n'
        'policy = "staging.toml"\n\n'
        f'[[environment]]\nname = "production"\nrepository = "{registry.url("production")}"\n'
        'policy = "production.toml"\nrequires = ["staging"]\n\n'
        f'[[environment]]\nname = "strict"\nrepository = "{registry.url("strict")}"\n'
        'policy = "strict.toml"\n\n'
        f'[[environment]]\nname = "qa"\nrepository = "{registry.url("qa")}"\n'
        f'policy = "{qa_policy}"\n\n'
        '[[environment]]\nname = "archive"\nrepository = "archive-store"\n'
        'policy = "staging.toml"\n\n'
        f'[[environment]]\nname = "mirror"\nrepository = "{registry.url("mirror")}"\n'
        'policy = "staging.toml"\nrequires = ["staging"]\n')
    return path


def catalog(registry: RunningRegistry) -> list[str]:
    with urllib.request.urlopen(f"http://{registry.host}/v2/_catalog", timeout=10) as got:
        return list(json.loads(got.read())["repositories"])


@pytest.fixture(scope="module")
def world(minimal_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("promote")
    registry = start_registry(base / "registry")
    try:
        for who in ("ci", "rel", "boss", "rogue", "qa"):
            assert run_rebuild("keygen", "--out", base / who).code == 0
        (base / "src").mkdir()
        (base / "src" / "a.txt").write_text("a\n")
        store = base / "store"
        seed_store(store)
        recipe = base / "w.toml"
        recipe.write_text(
            f'[recipe]\nname = "w"\nversion = "1.0.0"\n\n[source]\npath = "src"\n\n'
            f'[environment]\nimage = "{minimal_image}"\nsource_date_epoch = 1700000000\n\n'
            f'[build]\ncommand = ["sh", "-c", {toml_value(SCRIPT)}]\n'
            f'outputs = ["usr/bin/hi"]\ntimeout = 120\nmemory = "512m"\n\n'
            '[check]\nvary = ["all"]\n')
        built = run_rebuild("build", recipe, "--key", base / "ci.key", "--json", store=store)
        assert built.code == 0, built.stderr
        approved = run_rebuild("approve", RELEASE, "--role", "quality", "--meaning",
                               "released", "--name", "Boss", "--key", base / "boss.key",
                               "--trust", base / "ci.pub", store=store)
        assert approved.code == 0, approved.stderr
        policy(base / "staging.toml")
        policy(base / "production.toml",
               '\n[[policy.approvals]]\nrole = "quality"\nkeys = ["boss.pub"]\n')
        policy(base / "strict.toml", 'verdicts = 1\nqa_keys = ["qa.pub"]\n')
        (base / "qa-rogue.toml").write_text(
            '[policy]\nbuilder_keys = ["ci.pub"]\npromoter_keys = ["rogue.pub"]\n')
        index = json.loads((store / "index.json").read_bytes())["manifests"]
        [release] = [e for e in index
                     if e.get("annotations", {}).get("org.opencontainers.image.ref.name")
                     == RELEASE]
        artifact = "sha256:" + built.json["artifacts"][0]["sha256"]
        yield World(base, store, registry, release["digest"], artifact,
                    environments_file(base / "environments.toml", registry))
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def promoted(world: World) -> dict[str, Result]:
    """Production first (refused), then staging and production with the engine unreachable;
    "catalog" holds the registry's repositories after the refusal."""
    first = world.rebuild("promote", RELEASE, "--to", "production", "--key",
                          world.base / "rel.key")
    return {"production-first": first,
            "catalog": Result(0, json.dumps(catalog(world.registry)), ""),
            "staging": world.rebuild("promote", RELEASE, "--to", "staging", "--key",
                                     world.base / "rel.key", "--json", env=DEAD_ENGINE),
            "production": world.rebuild("promote", RELEASE, "--to", "production", "--key",
                                        world.base / "rel.key", "--json", env=DEAD_ENGINE)}


def test_staging_then_production_byte_exact_without_the_engine(
        world: World, promoted: dict[str, Result]) -> None:
    first = promoted["production-first"]
    assert first.code == 1, first.stderr
    assert "never promoted into staging" in first.stderr and "Traceback" not in first.stderr
    for name in ("staging", "production"):
        done = promoted[name]
        assert done.code == 0, done.stderr
        assert done.json["manifest"] == world.manifest
        assert done.json["environment"] == name
    # The refused promotion into production copied nothing.
    assert not any(r.startswith("production") for r in promoted["catalog"].json)
    assert promoted["production"].json["copied"]["manifests_sent"] > 0
    # Production is on staging's registry: the blobs were mounted from staging, not sent.
    copied = promoted["production"].json["copied"]
    assert copied["source"] == world.registry.url("staging")
    assert copied["blobs_mounted"] > 0 and copied["bytes_sent"] < 100_000
    assert promoted["staging"].json["copied"]["blobs_mounted"] == 0

    require_tool("skopeo")
    for repo in ("staging", "production"):
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{world.registry.host}/{repo}/w:1.0.0"],
                             capture_output=True, check=True).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == world.manifest

    # Each promotion is a signed referrer of the release in its environment's repository.
    pulled = world.base / "pulled"
    assert run_rebuild("store", "pull", world.registry.url("production"), RELEASE,
                       store=pulled).code == 0
    index = json.loads((pulled / "index.json").read_bytes())["manifests"]
    kinds = [e["annotations"].get("dev.rebuild.kind") for e in index]
    assert kinds.count("promotion") == 2  # staging's travelled with the release
    statement_digest = promoted["production"].json["statement"]
    statement = json.loads((pulled / "blobs" / "sha256" / statement_digest[7:]).read_bytes())
    predicate = statement["predicate"]
    assert statement["predicateType"] == "https://rebuild.dev/promotion/v1"
    assert predicate["to"] == {"environment": "production",
                               "repository": world.registry.url("production")}
    assert predicate["policy"]["result"] == "PASSED"
    assert predicate["policy"]["digest"]["sha256"] == hashlib.sha256(
        (world.base / "production.toml").read_bytes()).hexdigest()
    assert predicate["manifest"] == world.manifest
    assert predicate["artifacts"] == {"usr/bin/hi": world.artifact}
    assert predicate["signer"]["name"] == "Rel Manager"
    record = json.loads((pulled / "blobs" / "sha256" /
                         promoted["production"].json["promotion"][7:]).read_bytes())
    [bundle] = [layer["digest"] for layer in record["layers"]
                if layer["annotations"]["org.opencontainers.image.title"]
                == "promotion.sigstore.json"]
    independent(pulled / "blobs" / "sha256" / bundle[7:], world.base / "rel.pub")

    # And an event of the audit log of the store it was promoted from.
    shown = run_rebuild("log", "show", RELEASE, "--json", store=world.store)
    assert shown.code == 0, shown.stderr
    events = [e["event"] for e in shown.json["entries"]]
    assert events.count("promotion") == 2


def test_registry_to_registry(world: World, promoted: dict[str, Result]) -> None:
    """--store oci://…/staging: verified from the registry, copied registry to registry, the
    promotion attached in both."""
    done = run_rebuild("promote", RELEASE, "--to", "mirror", "--key", world.base / "rel.key",
                       "--environments", world.environments, "--json",
                       store=Path(world.registry.url("staging")),
                       env={**DEAD_ENGINE, "REBUILD_CACHE": str(world.base / "r2r-cache")})
    assert done.code == 0, done.stderr
    assert done.json["manifest"] == world.manifest
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{world.registry.host}/mirror/w:1.0.0"],
                         capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == world.manifest
    for repo in ("mirror", "staging"):
        pulled = world.base / f"r2r-{repo}"
        assert run_rebuild("store", "pull", world.registry.url(repo), RELEASE,
                           store=pulled).code == 0
        index = json.loads((pulled / "index.json").read_bytes())["manifests"]
        assert done.json["promotion"] in {e["digest"] for e in index}
    statement = json.loads((world.base / "r2r-mirror" / "blobs" / "sha256" /
                            done.json["statement"][7:]).read_bytes())
    assert statement["predicate"]["from"] == {"environment": "staging",
                                              "repository": world.registry.url("staging")}
    assert gate(world, world.artifact, "--env", "mirror").code == 0


def test_a_failing_policy_copies_nothing(world: World, promoted: dict[str, Result]) -> None:
    refused = world.rebuild("promote", RELEASE, "--to", "strict", "--key",
                            world.base / "rel.key", env=DEAD_ENGINE)
    assert refused.code == 1, refused.stderr
    assert "does not meet strict.toml" in refused.stderr and "QA verdicts" in refused.stderr
    assert not any(r.startswith("strict") for r in catalog(world.registry))


def test_a_key_the_policy_does_not_trust_cannot_promote(world: World) -> None:
    refused = world.rebuild("promote", RELEASE, "--to", "staging", "--key",
                            world.base / "rogue.key")
    assert refused.code == 6, refused.stderr
    assert "promoter_keys" in refused.stderr


def test_a_destination_holding_other_bytes_is_refused(world: World,
                                                      promoted: dict[str, Result]) -> None:
    """The tag in the destination names another manifest: exit 1, and it stays as it was."""
    other = world.base / "other-registry"
    running = start_registry(other)
    try:
        envs = world.base / "other-envs.toml"
        envs.write_text(f'[[environment]]\nname = "staging"\nrepository = '
                        f'"{running.url("staging")}"\npolicy = "staging.toml"\n')
        squat = f"http://{running.host}/v2/staging/w/manifests/1.0.0"
        body = json.dumps({"schemaVersion": 2, "mediaType":
                           "application/vnd.oci.image.index.v1+json", "manifests": []}).encode()
        request = urllib.request.Request(squat, data=body, method="PUT", headers={
            "Content-Type": "application/vnd.oci.image.index.v1+json"})
        urllib.request.urlopen(request, timeout=10).close()
        before = sorted(p.relative_to(other) for p in (other / "data").rglob("*"))
        refused = world.rebuild("promote", RELEASE, "--to", "staging", "--key",
                                world.base / "rel.key", environments=envs)
        assert refused.code == 1, refused.stderr
        assert "immutable" in refused.stderr
        assert sorted(p.relative_to(other) for p in (other / "data").rglob("*")) == before
    finally:
        running.stop()


def gate(world: World, *args: str | Path, env: dict[str, str] | None = None,
         environments: Path | None = None) -> Result:
    return world.rebuild("gate", *args, env=env, environments=environments)


def test_gate_passes_after_promotion(world: World, promoted: dict[str, Result]) -> None:
    passed = gate(world, world.artifact, "--env", "production", "--json", env=DEAD_ENGINE)
    assert passed.code == 0, passed.stderr
    summary = passed.json
    assert summary["predicateType"] == "https://slsa.dev/verification_summary/v1"
    predicate = summary["predicate"]
    assert predicate["verificationResult"] == "PASSED"
    assert predicate["resourceUri"] == f"{world.registry.url('production')}@{world.artifact}"
    assert predicate["policy"]["digest"]["sha256"] == hashlib.sha256(
        (world.base / "production.toml").read_bytes()).hexdigest()
    assert summary["subject"] == [{"name": "usr/bin/hi",
                                   "digest": {"sha256": world.artifact[7:]}}]
    uris = sorted(i["uri"] for i in predicate["inputAttestations"])
    assert uris == ["approval.json", "promotion.json", "provenance.json", "sbom.json"]
    promotion = promoted["production"].json["statement"]
    assert {"uri": "promotion.json", "digest": {"sha256": promotion[7:]}} in \
        predicate["inputAttestations"]

    # The gate read the evidence, not the inputs and the base image archive.
    cache = world.base / "cache" / "oci" / world.registry.host.replace(":", "_") / "production"
    kinds = {e["annotations"].get("dev.rebuild.kind") for e in json.loads(
        (cache / "index.json").read_bytes())["manifests"]}
    assert "evidence" in kinds and "promotion" in kinds
    assert not kinds & {"inputs", "image"}

    # The same artifact named as REPO@digest, and as a file.
    repo = f"{world.registry.host}/production/w@{world.artifact}"
    assert gate(world, repo, "--env", "production").code == 0
    hi = world.base / "hi"
    hi.write_bytes(b"hi\n")
    assert gate(world, hi, "--env", "production").code == 0
    # Staging's repository is not production's.
    wrong = gate(world, f"{world.registry.host}/staging/w@{world.artifact}", "--env",
                 "production")
    assert wrong.code == 1, wrong.stderr

    # --key signs the summary: a Sigstore bundle whose statement is the summary.
    signed = gate(world, world.artifact, "--env", "production", "--key",
                  world.base / "rel.key", "--json")
    assert signed.code == 0, signed.stderr
    check = subprocess.run(
        [".venv/bin/python", "-c",
         "import sys, json; from rebuild.evidence.sign import load_public_key, verify_bundle;"
         "v = verify_bundle(open(sys.argv[1], 'rb').read(), [load_public_key("
         "__import__('pathlib').Path(sys.argv[2]))]);"
         "print(json.dumps(v.statement))", "/dev/stdin", str(world.base / "rel.pub")],
        input=signed.stdout.encode(), capture_output=True, check=True)
    statement = json.loads(check.stdout)
    assert statement["predicate"]["verificationResult"] == "PASSED"
    bundle = world.base / "vsa.sigstore.json"
    bundle.write_text(signed.stdout)
    independent(bundle, world.base / "rel.pub")


def independent(bundle: Path, key: Path) -> None:
    """npm @sigstore/verify (tests/verifier) checks the bundle's signature with the key."""
    require_tool("node")
    checked = subprocess.run(["node", str(ROOT / "tests" / "verifier" / "verify.mjs"),
                              str(bundle), str(key)], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["payloadType"] == "application/vnd.in-toto+json"


def test_gate_fails_for_what_was_never_promoted(world: World,
                                                promoted: dict[str, Result]) -> None:
    never = gate(world, "sha256:" + hashlib.sha256(b"something else\n").hexdigest(),
                 "--env", "production", "--json")
    assert never.code == 1, never.stderr
    assert never.json["predicate"]["verificationResult"] == "FAILED"
    last = world.artifact[-1]
    off = world.artifact[:-1] + ("0" if last != "0" else "1")
    assert gate(world, off, "--env", "production").code == 1
    # Promoted into staging, not into strict: strict's gate says no.
    assert gate(world, world.artifact, "--env", "strict").code == 1
    # A promotion made after the time of evaluation does not count yet.
    early = gate(world, world.artifact, "--env", "production",
                 env={"REBUILD_NOW": "2020-01-01T00:00:00Z"})
    assert early.code == 1 and "no promotion" in early.stderr
    bad_clock = gate(world, world.artifact, "--env", "production",
                     env={"REBUILD_NOW": "yesterday"})
    assert bad_clock.code == 2 and "REBUILD_NOW" in bad_clock.stderr


def test_gate_refuses_a_promotion_by_an_untrusted_key(world: World,
                                                      promoted: dict[str, Result]) -> None:
    rogue_envs = environments_file(world.base / "rogue-envs.toml", world.registry, rogue=True)
    done = world.rebuild("promote", RELEASE, "--to", "qa", "--key", world.base / "rogue.key",
                         environments=rogue_envs)
    assert done.code == 0, done.stderr
    # Under the rogue file's policy its own promotion counts; under the real one it does not.
    assert gate(world, world.artifact, "--env", "qa", environments=rogue_envs).code == 0
    refused = gate(world, world.artifact, "--env", "qa")
    assert refused.code == 1, refused.stderr
    assert "no promotion of w@1.0.0 into qa signed by a key its policy trusts" in refused.stderr


def test_gate_logs_its_decision_in_a_writable_store(world: World,
                                                    promoted: dict[str, Result]) -> None:
    done = world.rebuild("promote", RELEASE, "--to", "archive", "--key",
                         world.base / "rel.key", env=DEAD_ENGINE)
    assert done.code == 0, done.stderr
    archive = world.base / "archive-store"
    assert gate(world, world.artifact, "--env", "archive", env=DEAD_ENGINE).code == 0
    assert gate(world, world.artifact, "--env", "archive", "--key",
                world.base / "rel.key").code == 0
    shown = run_rebuild("log", "show", RELEASE, "--key", world.base / "rel.pub", "--json",
                        store=archive)
    assert shown.code == 0, shown.stderr
    gates = [e for e in shown.json["entries"] if e["event"] == "gate"]
    assert [e["meaning"] for e in gates] == [f"PASSED archive-store@{world.artifact}"] * 2
    assert sorted(e["signatures"]["gate"].split()[0] for e in gates) == ["unsigned",
                                                                        "verified"]


def test_gate_fails_once_the_approval_is_withdrawn(world: World,
                                                   promoted: dict[str, Result]) -> None:
    """Production's policy needs a quality approval: withdrawn after the promotion, the
    gate refuses (the stand-in for an expired waiver until waivers exist)."""
    shown = run_rebuild("log", "show", RELEASE, "--json", store=world.store)
    [entry] = [e["entry"] for e in shown.json["entries"] if e["event"] == "approval"]
    withdrawn = run_rebuild("withdraw", str(entry), "--reason", "wrong variant", "--key",
                            world.base / "boss.key", store=world.store)
    assert withdrawn.code == 0, withdrawn.stderr
    pushed = run_rebuild("store", "push", RELEASE, world.registry.url("production"),
                         store=world.store)
    assert pushed.code == 0, pushed.stderr
    refused = gate(world, world.artifact, "--env", "production", "--json")
    assert refused.code == 1, refused.stderr
    assert "approval: quality" in refused.stderr
    assert refused.json["predicate"]["verificationResult"] == "FAILED"
    shutil.rmtree(world.base / "cache", ignore_errors=True)


def test_a_release_changed_since_it_was_checked_is_not_copied(
        world: World, promoted: dict[str, Result]) -> None:
    """promote copies by the manifest digest it verified: when the source names the release
    otherwise by the time of the copy, nothing reaches the destination."""
    from rebuild.errors import ClaimFailed
    from rebuild.store.transfer import transfer

    before = catalog(world.registry)
    with pytest.raises(ClaimFailed, match="nothing was copied"):
        transfer(str(world.store), world.registry.url("elsewhere"), RELEASE,
                 log=lambda _: None, expect="sha256:" + "0" * 64)
    with pytest.raises(ClaimFailed, match="nothing was copied"):
        transfer(world.registry.url("staging"), world.registry.url("elsewhere"), RELEASE,
                 log=lambda _: None, expect="sha256:" + "0" * 64)
    assert catalog(world.registry) == before


def test_gate_on_a_read_only_store(world: World, promoted: dict[str, Result]) -> None:
    """The environment's store mounted read-only: the gate decides, and logs nothing."""
    archive = world.base / "archive-store"
    if not archive.exists():
        done = world.rebuild("promote", RELEASE, "--to", "archive", "--key",
                             world.base / "rel.key")
        assert done.code == 0, done.stderr
    log_before = sorted(p.relative_to(archive) for p in (archive / "log").rglob("*")) \
        if (archive / "log").exists() else []
    mounted = subprocess.run(["mount", "--bind", str(archive), str(archive)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(archive)], check=True)
        passed = gate(world, world.artifact, "--env", "archive", "--json", env=DEAD_ENGINE)
        assert passed.code == 0, passed.stderr
        assert passed.json["predicate"]["verificationResult"] == "PASSED"
        never = gate(world, "sha256:" + "e" * 64, "--env", "archive")
        assert never.code == 1, never.stderr
    finally:
        subprocess.run(["umount", str(archive)], check=True)
    log_after = sorted(p.relative_to(archive) for p in (archive / "log").rglob("*")) \
        if (archive / "log").exists() else []
    assert log_after == log_before
