"""Keyless signing of a real build (`--keyless`) through the Fulcio/Rekor stand-in on 127.0.0.1:
the bundles pass `rebuild verify`, sigstore-python and the independent verifier
(@sigstore/verify, tests/verifier/verify.mjs) for the signer's identity only, and a tampered
payload fails all three."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rebuild.errors import ClaimFailed
from rebuild.evidence.sign import KeylessSigner, verify_keyless
from rebuild.release.verify import PREDICATES
from rebuild.store.layout import canonical_json
from tests.conftest import Result, repoint_blob, run_rebuild, seed_store
from tests.keyless_standin import ISSUER, KeylessStandin
from tests.test_sign import node_verifier  # noqa: F401 (fixture)

pytestmark = pytest.mark.docker

EMAIL = "release-bot@example.com"
JOB = "https://ci.example.com/jobs/7"
SCRIPT = ("umask 022 && mkdir -p /out/usr/bin && printf 'hello\\n' > /out/usr/bin/hello && "
          "echo 2 > /out/n")
TEST = '[test]\ncommand = ["sh", "-c", "grep -q hello /out/usr/bin/hello"]\n'
TITLE = "org.opencontainers.image.title"
# Every way this machine could offer an ambient OIDC credential, switched off.
NO_AMBIENT = {"SIGSTORE_ID_TOKEN": "", "GITHUB_ACTIONS": "", "GITLAB_CI": "", "BUILDKITE": "",
              "CIRCLECI": "", "GOOGLE_SERVICE_ACCOUNT_NAME": ""}


@dataclass(frozen=True)
class Keyless:
    standin: KeylessStandin
    trust_config: Path  # ClientTrustConfig: what `rebuild` signs and verifies with
    trusted_root: Path  # TrustedRoot: what the independent verifier trusts

    def env(self, email: str = EMAIL) -> dict[str, str]:
        """The CI's token, as GitLab (and cosign) pass it."""
        return {**NO_AMBIENT,
                "SIGSTORE_ID_TOKEN": self.standin.token(JOB, email=email, lifetime=900)}


@dataclass(frozen=True)
class Built:
    store: Path
    recipe: Path
    json: dict[str, Any]
    stderr: str

    def layers(self, manifest: str) -> dict[str, str]:
        document = json.loads(blob(self.store, manifest).read_bytes())
        return {layer["annotations"][TITLE]: layer["digest"] for layer in document["layers"]}

    def bundles(self) -> dict[str, bytes]:
        """kind -> bundle bytes, from the evidence artifact in the store."""
        layers = self.layers(self.json["evidence"]["manifest"])
        return {title.removesuffix(".sigstore.json"): blob(self.store, digest).read_bytes()
                for title, digest in layers.items() if title.endswith(".sigstore.json")}


def blob(store: Path, digest: str) -> Path:
    return store / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyless]:
    standin = KeylessStandin()
    directory = tmp_path_factory.mktemp("keyless")
    trust_config = directory / "trust_config.json"
    trust_config.write_text(json.dumps(standin.trust_config()))
    trusted_root = directory / "trusted_root.json"
    trusted_root.write_text(json.dumps(standin.trusted_root()))
    with standin.serving():
        yield Keyless(standin, trust_config, trusted_root)


def write_recipe(directory: Path, image: str) -> Path:
    (directory / "src").mkdir()
    recipe = directory / "t.toml"
    recipe.write_text(
        '[recipe]\nname = "t"\nversion = "1.0.0"\n\n[source]\npath = "src"\n\n'
        f'[environment]\nimage = "{image}"\nsource_date_epoch = 1700000000\n\n'
        f'[build]\ncommand = ["sh", "-c", {json.dumps(SCRIPT)}]\n'
        'outputs = ["usr/bin/hello", "n"]\ntimeout = 120\nmemory = "512m"\n\n'
        f'[check]\nvary = ["all"]\n\n{TEST}')
    return recipe


@pytest.fixture(scope="module")
def built(minimal_image: str, keyless: Keyless,
          tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One keyless build, shared: tests that change the store work on a copy."""
    directory = tmp_path_factory.mktemp("keyless-build")
    store = directory / "store"
    seed_store(store)
    recipe = write_recipe(directory, minimal_image)
    result = run_rebuild("build", recipe, "--keyless", "--trust-config", keyless.trust_config,
                         "--json", store=store, env=keyless.env())
    assert result.code == 0, result.stderr
    return Built(store, recipe, result.json, result.stderr)


def copy_store(store: Path, target: Path) -> Path:
    """A copy to change: blobs hard-linked (never modified in place), index.json copied (it is,
    by repoint_blob)."""
    seed_store(target, store)
    return target


def rebuild_verify(store: Path, *args: str | Path) -> Result:
    return run_rebuild("verify", "t@1.0.0", *args, "--json", store=store, env=NO_AMBIENT)


def run_keyless_verifier(script: Path, bundle: bytes, keyless: Keyless, tmp_path: Path, *,
                         identity: str = EMAIL, issuer: str = ISSUER) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "bundle.sigstore.json"
    path.write_bytes(bundle)
    proc = subprocess.run(["node", script, path, "--trusted-root", keyless.trusted_root,
                           "--certificate-identity", identity,
                           "--certificate-oidc-issuer", issuer],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, json.loads(proc.stdout)


def with_builder(bundle: bytes, builder: str) -> bytes:
    """The bundle with another builder id in its provenance, signature unchanged."""
    document = json.loads(bundle)
    statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    statement["predicate"]["runDetails"]["builder"]["id"] = builder
    document["dsseEnvelope"]["payload"] = base64.b64encode(canonical_json(statement)).decode()
    return canonical_json(document)


# -- the build ------------------------------------------------------------------------------


def test_the_build_is_signed_keyless(built: Built) -> None:
    evidence = built.json["evidence"]
    assert evidence["signer"] == EMAIL
    assert f"signed by {EMAIL} (keyless; OIDC issuer {ISSUER})" in built.stderr
    bundles = built.bundles()
    assert sorted(bundles) == ["provenance", "sbom", "test-result"]
    for data in bundles.values():
        material = json.loads(data)["verificationMaterial"]
        assert "certificate" in material
        assert "publicKey" not in material
        assert len(material["tlogEntries"]) == 1
    # An in-toto link needs a key that a layout can name; a keyless build has none.
    layers = built.layers(evidence["manifest"])
    assert not [title for title in layers if title.endswith(".link")]


# -- rebuild verify -------------------------------------------------------------------------


def test_rebuild_verify_trusts_that_identity_and_issuer_only(built: Built,
                                                            keyless: Keyless) -> None:
    trust = ("--trust-config", keyless.trust_config)
    ok = rebuild_verify(built.store, "--certificate-identity", EMAIL,
                        "--certificate-oidc-issuer", ISSUER, *trust)
    assert ok.code == 0, ok.stderr
    assert ok.json["verified"] is True
    checks = {c["name"]: c for c in ok.json["checks"]}
    assert {"signature: provenance", "signature: sbom", "signature: test-result",
            "subjects: provenance", "builder", "build type", "twin build", "sbom"} <= set(checks)
    assert checks["signature: provenance"]["detail"] == (
        f"signed keyless by trusted {EMAIL} (issuer {ISSUER})")

    other = rebuild_verify(built.store, "--certificate-identity", "mallory@example.com",
                           "--certificate-oidc-issuer", ISSUER, *trust)
    assert other.code == 1
    assert "does not verify for mallory@example.com" in other.stderr
    other_issuer = rebuild_verify(built.store, "--certificate-identity", EMAIL,
                                  "--certificate-oidc-issuer", "https://accounts.google.com",
                                  *trust)
    assert other_issuer.code == 1
    # Another Sigstore instance's roots do not vouch for this one's certificates.
    stranger = built.store.parent / "stranger.json"
    stranger.write_text(json.dumps(KeylessStandin().trust_config()))
    untrusted = rebuild_verify(built.store, "--certificate-identity", EMAIL,
                               "--certificate-oidc-issuer", ISSUER, "--trust-config", stranger)
    assert untrusted.code == 1


def test_a_key_does_not_verify_keyless_evidence(built: Built, tmp_path: Path) -> None:
    assert run_rebuild("keygen", "--out", tmp_path / "k").code == 0
    result = rebuild_verify(built.store, "--key", tmp_path / "k.pub")
    assert result.code == 1
    assert "not signed with a key" in result.stderr


# -- sigstore-python and the independent verifier, on every stored bundle -------------------


def test_every_bundle_passes_sigstore_python(built: Built, keyless: Keyless) -> None:
    artifacts = {a["name"]: a["sha256"] for a in built.json["artifacts"]}
    for kind, data in built.bundles().items():
        verified = verify_keyless(data, trust_config=keyless.trust_config, identity=EMAIL,
                                  issuer=ISSUER)
        assert verified.statement["predicateType"] == PREDICATES[kind]
        assert {s["name"]: s["digest"]["sha256"]
                for s in verified.statement["subject"]} == artifacts
        with pytest.raises(ClaimFailed, match="does not verify"):
            verify_keyless(data, trust_config=keyless.trust_config, identity=JOB,
                           issuer=ISSUER)


def test_every_bundle_passes_the_independent_verifier(built: Built, keyless: Keyless,
                                                      node_verifier: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    for data in built.bundles().values():
        code, result = run_keyless_verifier(node_verifier, data, keyless, tmp_path)
        assert (code, result) == (0, {"ok": True, "payloadType": "application/vnd.in-toto+json",
                                      "error": None})
        code, result = run_keyless_verifier(node_verifier, data, keyless, tmp_path,
                                            identity="mallory@example.com")
        assert (code, result["ok"]) == (1, False)
        assert "certificate identity error" in result["error"]
        code, result = run_keyless_verifier(node_verifier, data, keyless, tmp_path,
                                            issuer="https://accounts.google.com")
        assert (code, result["ok"]) == (1, False)
        # The exact identity, not a pattern: a prefix of it does not pass.
        code, result = run_keyless_verifier(node_verifier, data, keyless, tmp_path,
                                            identity=EMAIL[:-1])
        assert (code, result["ok"]) == (1, False)


# -- tampering ------------------------------------------------------------------------------


def test_a_tampered_payload_fails_rebuild_and_sigstore_python(built: Built, keyless: Keyless,
                                                              tmp_path: Path) -> None:
    forged = with_builder(built.bundles()["provenance"], "https://evil.example/builder")
    with pytest.raises(ClaimFailed, match="does not verify"):
        verify_keyless(forged, trust_config=keyless.trust_config, identity=EMAIL,
                       issuer=ISSUER)
    store = copy_store(built.store, tmp_path / "store")
    old = built.layers(built.json["evidence"]["manifest"])["provenance.sigstore.json"]
    repoint_blob(store, old, forged)
    result = rebuild_verify(store, "--certificate-identity", EMAIL, "--certificate-oidc-issuer",
                            ISSUER, "--trust-config", keyless.trust_config)
    assert result.code == 1
    assert "FAIL signature: provenance" in result.stderr


def test_a_tampered_payload_fails_the_independent_verifier(built: Built, keyless: Keyless,
                                                           node_verifier: Path,  # noqa: F811
                                                           tmp_path: Path) -> None:
    forged = with_builder(built.bundles()["provenance"], "https://evil.example/builder")
    code, result = run_keyless_verifier(node_verifier, forged, keyless, tmp_path)
    assert (code, result["ok"]) == (1, False)


# -- reproduce ------------------------------------------------------------------------------


def test_reproduce_signs_its_verdict_keyless(built: Built, keyless: Keyless,
                                             tmp_path: Path) -> None:
    store = copy_store(built.store, tmp_path / "store")
    result = run_rebuild("reproduce", "t@1.0.0", "--keyless", "--trust-config",
                         keyless.trust_config, "--json", store=store,
                         env=keyless.env("qa-bot@example.com"))
    assert result.code == 0, result.stderr
    index = json.loads((store / "index.json").read_bytes())
    [verdict] = [m["digest"] for m in index["manifests"]
                 if m.get("annotations", {}).get("dev.rebuild.kind") == "verdict"]
    layers = Built(store, built.recipe, {}, "").layers(verdict)
    data = blob(store, layers["verdict.sigstore.json"]).read_bytes()
    statement = verify_keyless(data, trust_config=keyless.trust_config,
                               identity="qa-bot@example.com", issuer=ISSUER).statement
    assert statement["predicateType"] == "https://slsa.dev/verification_summary/v1"
    assert statement["predicate"]["verificationResult"] == "PASSED"


# -- the signer: one certificate per build, renewed before it expires ----------------------

STATEMENT = {"_type": "https://in-toto.io/Statement/v1",
             "subject": [{"name": "n", "digest": {"sha256": "ab" * 32}}],
             "predicateType": "https://slsa.dev/provenance/v1", "predicate": {}}


def test_one_certificate_signs_a_build_until_it_nears_expiry(keyless: Keyless,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    tokens: list[str] = []

    def token() -> str:
        tokens.append(keyless.standin.token(JOB, email=EMAIL))
        return tokens[-1]

    signer = KeylessSigner(keyless.trust_config, token)
    assert (signer.identity, len(tokens)) == (EMAIL, 1)  # asked for before any signature
    first, second = (json.loads(signer.sign(STATEMENT)) for _ in range(2))
    certificate = first["verificationMaterial"]["certificate"]
    assert second["verificationMaterial"]["certificate"] == certificate
    # Less than RENEW_BEFORE seconds left (all of them, here): a fresh token, a new certificate.
    monkeypatch.setattr(KeylessSigner, "RENEW_BEFORE", 3600)
    renewed = signer.sign(STATEMENT)
    assert len(tokens) == 2
    assert json.loads(renewed)["verificationMaterial"]["certificate"] != certificate
    for bundle in (canonical_json(first), renewed):
        assert verify_keyless(bundle, trust_config=keyless.trust_config, identity=EMAIL,
                              issuer=ISSUER).statement == STATEMENT


# -- usage and key errors (before any build) ------------------------------------------------


def test_keyless_needs_a_token_and_a_usable_trust_config(minimal_image: str, keyless: Keyless,
                                                         tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, minimal_image)
    store = tmp_path / "store"
    trust = ("--trust-config", keyless.trust_config)

    no_token = run_rebuild("build", recipe, "--keyless", *trust, store=store, env=NO_AMBIENT)
    assert no_token.code == 6, no_token.stderr
    assert "needs an OIDC identity token" in no_token.stderr
    assert "SIGSTORE_ID_TOKEN" in no_token.stderr

    forged = {**NO_AMBIENT, "SIGSTORE_ID_TOKEN": KeylessStandin().token(JOB, email=EMAIL)}
    refused = run_rebuild("build", recipe, "--keyless", *trust, store=store, env=forged)
    assert refused.code == 6
    assert "keyless signing failed" in refused.stderr

    missing = run_rebuild("build", recipe, "--keyless", "--trust-config", tmp_path / "absent",
                          store=store, env=keyless.env())
    assert missing.code == 6
    assert "cannot read the Sigstore trust config" in missing.stderr

    no_token_reproduce = run_rebuild("reproduce", "t@1.0.0", "--keyless", *trust, store=store,
                                     env=NO_AMBIENT)
    assert no_token_reproduce.code == 6
    assert not store.exists()  # refused before any work

    assert run_rebuild("keygen", "--out", tmp_path / "k").code == 0
    both = run_rebuild("build", recipe, "--keyless", *trust, "--key", tmp_path / "k.key",
                       store=store, env=keyless.env())
    assert both.code == 2
    assert "choose one way to sign" in both.stderr
    stray = run_rebuild("build", recipe, *trust, store=store)
    assert stray.code == 2

    half = run_rebuild("verify", "t@1.0.0", "--certificate-identity", EMAIL, *trust,
                       store=store)
    assert half.code == 2
    assert "--certificate-oidc-issuer" in half.stderr
