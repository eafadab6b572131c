"""rebuild.sign: keys, DSSE signing, Sigstore bundle v0.3 files, and the independent verifier."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_public_key,
)
from securesystemslib.dsse import Envelope

from rebuild.errors import ClaimFailed, ExitCode, SigningError
from rebuild.evidence.sign import (
    BUNDLE_MEDIA_TYPE,
    IN_TOTO_PAYLOAD_TYPE,
    KeyPair,
    ambient_identity_token,
    generate_keypair,
    keyid,
    load_public_key,
    load_signer,
    passphrase_from_env,
    read_bundle_statement,
    sign_keyless,
    sign_statement,
    verify_bundle,
    verify_keyless,
)
from rebuild.store.layout import canonical_json
from tests.conftest import ROOT, require_tool
from tests.keyless_standin import ISSUER, KeylessStandin

ALGORITHMS = ["ecdsa-p256", "ed25519"]
STATEMENT: dict[str, Any] = {
    "_type": "https://in-toto.io/Statement/v1",
    "subject": [{"name": "usr/bin/hello", "digest": {"sha256": "ab" * 32}}],
    "predicateType": "https://slsa.dev/provenance/v1",
    "predicate": {"buildDefinition": {"buildType": "https://rebuild.dev/v1", "n": 3},
                  "note": "ünïcode"},
}


@pytest.fixture(params=ALGORITHMS)
def keypair(request: pytest.FixtureRequest, tmp_path: Path) -> KeyPair:
    return generate_keypair(tmp_path / "k", algorithm=request.param)


@pytest.fixture
def other_keypair(tmp_path: Path) -> KeyPair:
    return generate_keypair(tmp_path / "other")


def signed(pair: KeyPair, statement: dict[str, Any] = STATEMENT) -> bytes:
    return sign_statement(statement, load_signer(pair.private_path, None))


def edit(bundle: bytes, change: Any) -> bytes:
    """The bundle with `change(document)` applied, re-serialized."""
    document = json.loads(bundle)
    change(document)
    return canonical_json(document)


def set_payload(document: dict[str, Any], payload: bytes) -> None:
    document["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keygen_writes_private_0600_and_public_0644(tmp_path: Path, algorithm: Any) -> None:
    old_umask = os.umask(0o077)  # the public key is 0644 whatever the umask
    try:
        pair = generate_keypair(tmp_path / "keys" / "ci", algorithm=algorithm)
    finally:
        os.umask(old_umask)
    assert pair.private_path == tmp_path / "keys" / "ci.key"
    assert pair.public_path == tmp_path / "keys" / "ci.pub"
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public_path.stat().st_mode) == 0o644
    assert pair.private_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pair.public_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(pair.keyid) == 64
    assert load_public_key(pair.public_path).keyid == pair.keyid
    assert load_signer(pair.private_path, None).public_key.keyid == pair.keyid


def test_keyid_is_sha256_of_der_spki(keypair: KeyPair) -> None:
    key = load_public_key(keypair.public_path)
    assert keyid(load_pem_public_key(keypair.public_path.read_bytes())) == key.keyid
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", keypair.public_path, "-outform",
                          "DER"], capture_output=True, check=False).stdout
    if der:  # openssl is a convenience cross-check, not a requirement
        assert hashlib.sha256(der).hexdigest() == key.keyid
    # The same id from the private key's public half.
    assert load_public_key(keypair.private_path).keyid == key.keyid


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k")
    before = pair.private_path.read_bytes()
    with pytest.raises(SigningError, match="already exists") as info:
        generate_keypair(tmp_path / "k", algorithm="ed25519")
    assert info.value.exit_code == ExitCode.KEYS
    assert pair.private_path.read_bytes() == before


def test_keygen_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("somebody's key\n")
    with pytest.raises(SigningError, match="already exists"):
        generate_keypair(tmp_path / "k")
    assert not (tmp_path / "k.key").exists()
    assert (tmp_path / "k.pub").read_text() == "somebody's key\n"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_passphrase_round_trip(tmp_path: Path, algorithm: Any) -> None:
    pair = generate_keypair(tmp_path / "k", algorithm=algorithm, passphrase=b"s3cret")
    assert pair.private_path.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    signer = load_signer(pair.private_path, b"s3cret")
    bundle = sign_statement(STATEMENT, signer)
    assert verify_bundle(bundle, [load_public_key(pair.public_path)]).keyid == pair.keyid
    assert load_public_key(pair.private_path, passphrase=b"s3cret").keyid == pair.keyid


def test_wrong_passphrase_is_a_key_error(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k", passphrase=b"right")
    with pytest.raises(SigningError, match="wrong passphrase") as info:
        load_signer(pair.private_path, b"wrong")
    assert info.value.exit_code == ExitCode.KEYS == 6


def test_missing_passphrase_names_the_variable(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k", passphrase=b"right")
    with pytest.raises(SigningError, match="REBUILD_KEY_PASSPHRASE"):
        load_signer(pair.private_path, None)


def test_passphrase_for_plain_key_is_refused(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "k")
    with pytest.raises(SigningError, match="not encrypted"):
        load_signer(pair.private_path, b"extra")


def test_passphrase_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REBUILD_KEY_PASSPHRASE", raising=False)
    assert passphrase_from_env() is None
    monkeypatch.setenv("REBUILD_KEY_PASSPHRASE", "")
    assert passphrase_from_env() is None
    monkeypatch.setenv("REBUILD_KEY_PASSPHRASE", "pässword")
    assert passphrase_from_env() == "pässword".encode()
    monkeypatch.setenv("OTHER", "x")
    assert passphrase_from_env("OTHER") == b"x"


def test_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="cannot read key file") as info:
        load_signer(tmp_path / "absent.key", None)
    assert info.value.exit_code == ExitCode.KEYS
    with pytest.raises(SigningError, match="cannot read key file"):
        load_public_key(tmp_path / "absent.pub")


def test_garbage_key_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.key"
    path.write_text("not a key\n")
    with pytest.raises(SigningError, match="not a PEM private key"):
        load_signer(path, None)
    with pytest.raises(SigningError, match="not a PEM public key"):
        load_public_key(path)


@pytest.mark.parametrize("kind", ["P-384", "RSA"])
def test_unsupported_key_types(tmp_path: Path, kind: str) -> None:
    private_key = (ec.generate_private_key(ec.SECP384R1()) if kind == "P-384"
                   else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    path = tmp_path / "other.key"
    path.write_bytes(private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(SigningError, match=r"unsupported key type.*rebuild keygen") as info:
        load_signer(path, None)
    assert info.value.exit_code == ExitCode.KEYS
    with pytest.raises(SigningError, match="unsupported key type"):
        load_public_key(path)


# -- bundles ----------------------------------------------------------------------------------


def test_sign_verify_round_trip(keypair: KeyPair) -> None:
    bundle = signed(keypair)
    document = json.loads(bundle)
    assert bundle == canonical_json(document)
    assert document["mediaType"] == BUNDLE_MEDIA_TYPE
    assert BUNDLE_MEDIA_TYPE == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert document["verificationMaterial"] == {"publicKey": {"hint": keypair.keyid},
                                                "tlogEntries": []}
    envelope = document["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(envelope["payload"]) == canonical_json(STATEMENT)
    assert [s["keyid"] for s in envelope["signatures"]] == [keypair.keyid]

    verified = verify_bundle(bundle, [load_public_key(keypair.public_path)])
    assert verified.statement == STATEMENT
    assert verified.keyid == keypair.keyid
    assert verified.payload_type == "application/vnd.in-toto+json"
    # Same bytes, same answer.
    assert verify_bundle(bundle, [load_public_key(keypair.public_path)]) == verified


def test_verify_picks_the_matching_key_among_several(keypair: KeyPair,
                                                     other_keypair: KeyPair) -> None:
    trusted = [load_public_key(other_keypair.public_path), load_public_key(keypair.public_path)]
    assert verify_bundle(signed(keypair), trusted).keyid == keypair.keyid


def test_tampered_payload_fails(keypair: KeyPair) -> None:
    altered = {**STATEMENT, "subject": [{"name": "usr/bin/hello", "digest": {"sha256": "cd" * 32}}]}
    bundle = edit(signed(keypair), lambda d: set_payload(d, canonical_json(altered)))
    with pytest.raises(ClaimFailed, match=r"signature does not verify.*payload altered") as info:
        verify_bundle(bundle, [load_public_key(keypair.public_path)])
    assert info.value.exit_code == ExitCode.CLAIM_FAILED
    # Reading without verifying still works, and says what the (forged) bundle claims.
    assert read_bundle_statement(bundle) == altered


def test_wrong_key_fails(keypair: KeyPair, other_keypair: KeyPair) -> None:
    """A bundle signed by one key that claims to be signed by another (trusted) key."""
    other_id = other_keypair.keyid

    def claim_other(document: dict[str, Any]) -> None:
        document["verificationMaterial"]["publicKey"]["hint"] = other_id
        document["dsseEnvelope"]["signatures"][0]["keyid"] = other_id

    bundle = edit(signed(keypair), claim_other)
    with pytest.raises(ClaimFailed, match=r"signature does not verify.*wrong key"):
        verify_bundle(bundle, [load_public_key(other_keypair.public_path)])


def test_untrusted_key_fails(keypair: KeyPair, other_keypair: KeyPair) -> None:
    with pytest.raises(ClaimFailed, match=f"signed by key {keypair.keyid[:12]}…, which is not "
                                          "trusted"):
        verify_bundle(signed(keypair), [load_public_key(other_keypair.public_path)])
    with pytest.raises(ClaimFailed, match="not trusted"):
        verify_bundle(signed(keypair), [])


def test_hint_and_signature_keyid_must_agree(keypair: KeyPair, other_keypair: KeyPair) -> None:
    other_id = other_keypair.keyid
    bundle = edit(signed(keypair), lambda d: d["dsseEnvelope"]["signatures"][0].__setitem__(
        "keyid", other_id))
    with pytest.raises(ClaimFailed, match="but its signature names key"):
        verify_bundle(bundle, [load_public_key(keypair.public_path)])
    # An empty keyid (as cosign writes) defers to the hint.
    bundle = edit(signed(keypair), lambda d: d["dsseEnvelope"]["signatures"][0].__setitem__(
        "keyid", ""))
    assert verify_bundle(bundle, [load_public_key(keypair.public_path)]).keyid == keypair.keyid


def test_non_in_toto_payload_type_fails(keypair: KeyPair) -> None:
    bundle = edit(signed(keypair),
                  lambda d: d["dsseEnvelope"].__setitem__("payloadType", "text/plain"))
    with pytest.raises(ClaimFailed, match=r"payload type is 'text/plain'.*not an in-toto"):
        verify_bundle(bundle, [load_public_key(keypair.public_path)])


def test_wrong_media_type_fails(keypair: KeyPair) -> None:
    bundle = edit(signed(keypair), lambda d: d.__setitem__(
        "mediaType", "application/vnd.dev.sigstore.bundle+json;version=0.2"))
    with pytest.raises(ClaimFailed, match="media type"):
        verify_bundle(bundle, [load_public_key(keypair.public_path)])
    with pytest.raises(ClaimFailed, match="media type"):
        read_bundle_statement(bundle)


def test_missing_dsse_envelope_fails(keypair: KeyPair) -> None:
    bundle = edit(signed(keypair), lambda d: d.pop("dsseEnvelope"))
    with pytest.raises(ClaimFailed, match="no dsseEnvelope"):
        verify_bundle(bundle, [load_public_key(keypair.public_path)])


@pytest.mark.parametrize("data", [b"", b"[]", b"{\"mediaType\": 1, \"mediaType\": 2}", b"\xff"])
def test_malformed_bundles_fail(data: bytes, keypair: KeyPair) -> None:
    with pytest.raises(ClaimFailed):
        verify_bundle(data, [load_public_key(keypair.public_path)])


def test_bad_base64_and_extra_signatures_fail(keypair: KeyPair) -> None:
    key = load_public_key(keypair.public_path)
    bad = edit(signed(keypair), lambda d: d["dsseEnvelope"].__setitem__("payload", "e30=!"))
    with pytest.raises(ClaimFailed, match="not valid base64"):
        verify_bundle(bad, [key])
    two = edit(signed(keypair), lambda d: d["dsseEnvelope"]["signatures"].append(
        d["dsseEnvelope"]["signatures"][0]))
    with pytest.raises(ClaimFailed, match="exactly one signature"):
        verify_bundle(two, [key])


def test_signed_duplicate_keys_are_refused(keypair: KeyPair) -> None:
    """Two readers must not see two different statements in the same signed bytes."""
    payload = b'{"_type":"a","_type":"b"}'
    signer = load_signer(keypair.private_path, None)
    envelope = Envelope(payload, IN_TOTO_PAYLOAD_TYPE, {})
    signature = bytes.fromhex(envelope.sign(signer).signature)
    bundle = edit(signed(keypair), lambda d: (set_payload(d, payload), d["dsseEnvelope"][
        "signatures"][0].__setitem__("sig", base64.b64encode(signature).decode())))
    with pytest.raises(ClaimFailed, match="duplicate key"):
        verify_bundle(bundle, [load_public_key(keypair.public_path)])


# -- the independent verifier (npm @sigstore/verify) ------------------------------------------

VERIFIER = ROOT / "tests" / "verifier"


@pytest.fixture(scope="module")
def node_verifier() -> Path:
    require_tool("node")
    if not (VERIFIER / "node_modules" / "@sigstore" / "verify").is_dir():
        message = "tests/verifier/node_modules is missing (scripts/install-verifier installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return VERIFIER / "verify.mjs"


def run_node_verifier(script: Path, bundle: bytes, public_key: Path,
                      tmp_path: Path) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "bundle.sigstore.json"
    path.write_bytes(bundle)
    proc = subprocess.run(["node", script, path, public_key], capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_independent_verifier_accepts(node_verifier: Path, keypair: KeyPair,
                                      tmp_path: Path) -> None:
    code, result = run_node_verifier(node_verifier, signed(keypair), keypair.public_path,
                                     tmp_path)
    assert (code, result) == (0, {"ok": True, "payloadType": "application/vnd.in-toto+json",
                                  "error": None})


def test_independent_verifier_rejects_tampered_payload(node_verifier: Path, keypair: KeyPair,
                                                       tmp_path: Path) -> None:
    bundle = edit(signed(keypair), lambda d: set_payload(d, canonical_json({**STATEMENT,
                                                                             "predicate": {}})))
    code, result = run_node_verifier(node_verifier, bundle, keypair.public_path, tmp_path)
    assert code == 1
    assert result["ok"] is False
    assert "signature verification failed" in result["error"]


def test_independent_verifier_rejects_wrong_key(node_verifier: Path, keypair: KeyPair,
                                                other_keypair: KeyPair, tmp_path: Path) -> None:
    # Signed by one key, verified with another: refused at the key lookup.
    code, result = run_node_verifier(node_verifier, signed(keypair), other_keypair.public_path,
                                     tmp_path)
    assert (code, result["ok"]) == (1, False)
    # Signed by one key but naming the other: refused by the signature check.
    other_id = other_keypair.keyid
    bundle = edit(signed(keypair), lambda d: d["verificationMaterial"]["publicKey"].__setitem__(
        "hint", other_id))
    code, result = run_node_verifier(node_verifier, bundle, other_keypair.public_path, tmp_path)
    assert (code, result["ok"]) == (1, False)
    assert "signature verification failed" in result["error"]


# -- keyless (sigstore-python against the Fulcio/Rekor stand-in on 127.0.0.1) ---------------

EMAIL = "release-bot@example.com"


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Any:
    standin = KeylessStandin()
    with standin.serving():
        yield standin


@pytest.fixture
def trust_config(standin: KeylessStandin, tmp_path: Path) -> Path:
    path = tmp_path / "trust_config.json"
    path.write_text(json.dumps(standin.trust_config()))
    return path


def keyless(standin: KeylessStandin, trust_config: Path,
            statement: dict[str, Any] = STATEMENT) -> bytes:
    token = standin.token("https://ci.example.com/jobs/1", email=EMAIL)
    return sign_keyless(statement, trust_config=trust_config, identity_token=token)


def test_keyless_round_trip(standin: KeylessStandin, trust_config: Path) -> None:
    bundle = keyless(standin, trust_config)
    document = json.loads(bundle)
    assert bundle == canonical_json(document)
    assert document["mediaType"] == BUNDLE_MEDIA_TYPE
    assert "certificate" in document["verificationMaterial"]
    assert len(document["verificationMaterial"]["tlogEntries"]) == 1
    assert document["dsseEnvelope"]["payloadType"] == IN_TOTO_PAYLOAD_TYPE
    assert base64.b64decode(document["dsseEnvelope"]["payload"]) == canonical_json(STATEMENT)

    verified = verify_keyless(bundle, trust_config=trust_config, identity=EMAIL, issuer=ISSUER)
    assert verified.statement == STATEMENT
    assert verified.payload_type == IN_TOTO_PAYLOAD_TYPE
    assert len(verified.keyid) == 64
    assert read_bundle_statement(bundle) == STATEMENT


def test_keyless_uri_identity_and_later_log_entries(standin: KeylessStandin,
                                                    trust_config: Path) -> None:
    """Several entries, so inclusion proofs have real paths; a `sub` URI as the identity."""
    subject = "https://ci.example.com/pipelines/7"
    for n in range(5):
        statement = {**STATEMENT, "predicate": {"n": n}}
        bundle = sign_keyless(statement, trust_config=trust_config,
                              identity_token=standin.token(subject))
        assert verify_keyless(bundle, trust_config=trust_config, identity=subject,
                              issuer=ISSUER).statement == statement
    assert len(standin.leaves) >= 5


def test_keyless_verifies_offline(trust_config: Path, tmp_path: Path) -> None:
    other = KeylessStandin()
    config = tmp_path / "offline.json"
    config.write_text(json.dumps(other.trust_config()))
    with other.serving():
        bundle = keyless(other, config)
    # The services are gone; the bundle carries everything verification needs.
    assert verify_keyless(bundle, trust_config=config, identity=EMAIL,
                          issuer=ISSUER).statement == STATEMENT


@pytest.mark.parametrize(("identity", "issuer"), [("mallory@example.com", ISSUER),
                                                  (EMAIL, "https://accounts.google.com")])
def test_keyless_wrong_identity_or_issuer_fails(standin: KeylessStandin, trust_config: Path,
                                                identity: str, issuer: str) -> None:
    bundle = keyless(standin, trust_config)
    with pytest.raises(ClaimFailed, match=f"does not verify for {identity}") as info:
        verify_keyless(bundle, trust_config=trust_config, identity=identity, issuer=issuer)
    assert info.value.exit_code == ExitCode.CLAIM_FAILED


def test_keyless_tampered_payload_fails(standin: KeylessStandin, trust_config: Path) -> None:
    bundle = edit(keyless(standin, trust_config),
                  lambda d: set_payload(d, canonical_json({**STATEMENT, "predicate": {}})))
    with pytest.raises(ClaimFailed, match="does not verify"):
        verify_keyless(bundle, trust_config=trust_config, identity=EMAIL, issuer=ISSUER)


def test_keyless_untrusted_root_fails(standin: KeylessStandin, trust_config: Path,
                                      tmp_path: Path) -> None:
    bundle = keyless(standin, trust_config)
    stranger = tmp_path / "stranger.json"
    stranger.write_text(json.dumps(KeylessStandin().trust_config()))
    with pytest.raises(ClaimFailed, match="does not verify"):
        verify_keyless(bundle, trust_config=stranger, identity=EMAIL, issuer=ISSUER)


def test_key_and_keyless_bundles_are_not_mixed_up(standin: KeylessStandin, trust_config: Path,
                                                  keypair: KeyPair) -> None:
    with pytest.raises(ClaimFailed, match="not signed with a key"):
        verify_bundle(keyless(standin, trust_config), [load_public_key(keypair.public_path)])
    with pytest.raises(ClaimFailed, match="signed with a key, not keyless"):
        verify_keyless(signed(keypair), trust_config=trust_config, identity=EMAIL,
                       issuer=ISSUER)


def test_keyless_bad_tokens_are_key_errors(standin: KeylessStandin,
                                           trust_config: Path) -> None:
    with pytest.raises(SigningError, match="keyless signing failed") as info:
        sign_keyless(STATEMENT, trust_config=trust_config, identity_token="not-a-jwt")
    assert info.value.exit_code == ExitCode.KEYS
    forged = KeylessStandin().token("https://ci.example.com/jobs/1", email=EMAIL)
    with pytest.raises(SigningError, match="keyless signing failed"):  # Fulcio refuses it
        sign_keyless(STATEMENT, trust_config=trust_config, identity_token=forged)


def test_keyless_bad_trust_config(standin: KeylessStandin, tmp_path: Path) -> None:
    token = standin.token("https://ci.example.com/jobs/1", email=EMAIL)
    with pytest.raises(SigningError, match="cannot read the Sigstore trust config"):
        sign_keyless(STATEMENT, trust_config=tmp_path / "absent.json", identity_token=token)
    bad = tmp_path / "bad.json"
    bad.write_text('{"mediaType": "nope"}')
    with pytest.raises(SigningError, match="not a valid Sigstore client trust config"):
        sign_keyless(STATEMENT, trust_config=bad, identity_token=token)
    with pytest.raises(SigningError, match="not a valid Sigstore client trust config"):
        verify_keyless(b"{}", trust_config=bad, identity=EMAIL, issuer=ISSUER)


def test_ambient_identity_token(standin: KeylessStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SIGSTORE_ID_TOKEN", "GITHUB_ACTIONS", "BUILDKITE", "GITLAB_CI", "CIRCLECI"):
        monkeypatch.delenv(var, raising=False)
    assert ambient_identity_token() is None
    token = standin.token("https://gitlab.example.com/jobs/1")
    monkeypatch.setenv("GITLAB_CI", "true")
    monkeypatch.setenv("SIGSTORE_ID_TOKEN", token)
    assert ambient_identity_token() == token
    monkeypatch.delenv("SIGSTORE_ID_TOKEN")
    with pytest.raises(SigningError, match="cannot get an OIDC identity token"):
        ambient_identity_token()
