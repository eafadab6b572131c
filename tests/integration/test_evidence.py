"""Signed evidence of a real build: verified by rebuild and by the independent verifier."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from rebuild.errors import ClaimFailed
from rebuild.store.layout import canonical_json
from tests.conftest import RecipeWriter, repoint_blob, run_rebuild, tamper
from tests.test_sign import node_verifier, run_node_verifier  # noqa: F401 (fixture)

pytestmark = pytest.mark.docker

SCRIPT = ("umask 022 && mkdir -p /out/usr/bin && printf 'hello\\n' > /out/usr/bin/hello && "
          "echo 2 > /out/n")
TEST = '\n[test]\ncommand = ["sh", "-c", "grep -q hello /out/usr/bin/hello"]\n'


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    for name in ("ci", "other"):
        assert run_rebuild("keygen", "--out", tmp_path / name).code == 0
    return {"ci": tmp_path / "ci", "other": tmp_path / "other"}


@pytest.fixture
def built(minimal_image: str, write_recipe: RecipeWriter, store: Path,
          keys: dict[str, Path]) -> dict:  # type: ignore[type-arg]
    recipe = write_recipe(minimal_image, SCRIPT, ["usr/bin/hello", "n"], extra=TEST)
    result = run_rebuild("build", recipe, "--key", f"{keys['ci']}.key", "--json", store=store)
    assert result.code == 0, result.stderr
    return result.json


def evidence_layers(store: Path, built: dict) -> dict[str, str]:  # type: ignore[type-arg]
    manifest = json.loads((store / "blobs/sha256" / built["evidence"]["manifest"][7:])
                          .read_bytes())
    return {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
            for layer in manifest["layers"]}


def blob(store: Path, digest: str) -> Path:
    return store / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_right_key_verifies_other_key_does_not(built: dict, store: Path,  # type: ignore[type-arg]
                                               keys: dict[str, Path]) -> None:
    ok = run_rebuild("verify", "t@1.0.0", "--key", f"{keys['ci']}.pub", "--json", store=store)
    assert ok.code == 0, ok.stderr
    assert ok.json["verified"] is True
    names = {c["name"] for c in ok.json["checks"]}
    assert {"signature: provenance", "signature: sbom", "signature: test-result",
            "subjects: provenance", "builder", "build type", "twin build", "sbom"} <= names
    by_digest = run_rebuild("verify", "sha256:" + built["artifacts"][0]["sha256"], "--key",
                            f"{keys['ci']}.pub", store=store)
    assert by_digest.code == 0, by_digest.stderr
    wrong = run_rebuild("verify", "t@1.0.0", "--key", f"{keys['other']}.pub", store=store)
    assert wrong.code == 1
    assert "not trusted" in wrong.stderr


def test_a_changed_artifact_byte_fails(built: dict, store: Path,  # type: ignore[type-arg]
                                       keys: dict[str, Path]) -> None:
    tamper(blob(store, "sha256:" + built["artifacts"][0]["sha256"]))
    result = run_rebuild("verify", "t@1.0.0", "--key", f"{keys['ci']}.pub", store=store)
    assert result.code in (1, 5)
    assert "FAIL artifacts" in result.stderr


def test_a_tampered_payload_fails(built: dict, store: Path,  # type: ignore[type-arg]
                                  keys: dict[str, Path]) -> None:
    old = evidence_layers(store, built)["provenance.sigstore.json"]
    bundle = json.loads(blob(store, old).read_bytes())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["runDetails"]["builder"]["id"] = "https://evil.example/builder"
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(canonical_json(statement)).decode()
    repoint_blob(store, old, canonical_json(bundle))
    result = run_rebuild("verify", "t@1.0.0", "--key", f"{keys['ci']}.pub", store=store)
    assert result.code == 1
    assert "FAIL signature: provenance" in result.stderr
    # edited in place instead, the store itself refuses the blob
    tamper(blob(store, evidence_layers(store, built)["sbom.sigstore.json"]))
    result = run_rebuild("verify", "t@1.0.0", "--key", f"{keys['ci']}.pub", store=store)
    assert result.code in (1, 5)


def test_a_swapped_artifact_fails(built: dict, store: Path,  # type: ignore[type-arg]
                                  keys: dict[str, Path]) -> None:
    # Other bytes in place of the artifact, every manifest rewritten to match: only the
    # signed subjects can tell.
    repoint_blob(store, "sha256:" + built["artifacts"][0]["sha256"], b"forged\n")
    result = run_rebuild("verify", "t@1.0.0", "--key", f"{keys['ci']}.pub", store=store)
    assert result.code == 1
    assert "FAIL subjects: provenance" in result.stderr


def test_sbom_is_valid_and_lists_the_image_packages(built: dict,  # type: ignore[type-arg]
                                                    store: Path) -> None:
    sbom = blob(store, built["evidence"]["sbom"]).read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom) is None
    data = json.loads(sbom)
    purls = {c.get("purl", "") for c in data["components"]}
    assert any(p.startswith("pkg:deb/debian/coreutils@") and "distro=debian-12" in p
               for p in purls)
    hashes = {h["content"] for c in data["components"] for h in c.get("hashes", [])}
    assert built["artifacts"][0]["sha256"] in hashes


def test_test_result_is_attested(built: dict, store: Path) -> None:  # type: ignore[type-arg]
    statement = json.loads(blob(store, built["evidence"]["statements"]["test-result"])
                           .read_bytes())
    assert statement["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    assert statement["predicate"]["result"] == "PASSED"


def test_failing_test_exits_4_and_names_no_release(minimal_image: str,
                                                   write_recipe: RecipeWriter,
                                                   store: Path) -> None:
    recipe = write_recipe(minimal_image, SCRIPT, ["usr/bin/hello"],
                          extra='\n[test]\ncommand = ["sh", "-c", "grep -q nope /out/n"]\n')
    result = run_rebuild("build", recipe, store=store)
    assert result.code == 4
    assert "test command failed" in result.stderr
    ls = run_rebuild("store", "ls", "--json", store=store)
    assert not [e for e in ls.json["entries"] if e["kind"] == "release"]


def test_independent_verifier_on_stored_bundles(built: dict,  # type: ignore[type-arg]
                                                store: Path, keys: dict[str, Path],
                                                node_verifier: Path,  # noqa: F811
                                                tmp_path: Path) -> None:
    layers = evidence_layers(store, built)
    bundles = [t for t in layers if t.endswith(".sigstore.json")]
    assert sorted(bundles) == ["provenance.sigstore.json", "sbom.sigstore.json",
                               "test-result.sigstore.json"]
    for title in bundles:
        data = blob(store, layers[title]).read_bytes()
        code, result = run_node_verifier(node_verifier, data, Path(f"{keys['ci']}.pub"),
                                         tmp_path)
        assert (code, result["ok"]) == (0, True), result
        code, result = run_node_verifier(node_verifier, data, Path(f"{keys['other']}.pub"),
                                         tmp_path)
        assert code == 1


def test_build_link_verifies_against_a_layout(built: dict, store: Path,  # type: ignore[type-arg]
                                              keys: dict[str, Path], tmp_path: Path) -> None:
    from rebuild.evidence.intoto import make_layout, verify_chain
    from rebuild.evidence.sign import generate_keypair, load_public_key, load_signer

    layers = evidence_layers(store, built)
    [link] = [t for t in layers if t.endswith(".link")]
    links = tmp_path / "links"
    links.mkdir()
    (links / link).write_bytes(blob(store, layers[link]).read_bytes())
    owner = generate_keypair(tmp_path / "owner", algorithm="ed25519")
    layout = make_layout(builder_keys=[load_public_key(Path(f"{keys['ci']}.pub"))],
                         owner_signer=load_signer(owner.private_path, None),
                         expires="2099-12-31T00:00:00Z",
                         products=[a["name"] for a in built["artifacts"]])
    verify_chain(layout, [load_public_key(owner.public_path)], links)
    # a layout that expects another product refuses the chain
    wrong = make_layout(builder_keys=[load_public_key(Path(f"{keys['ci']}.pub"))],
                        owner_signer=load_signer(owner.private_path, None),
                        expires="2099-12-31T00:00:00Z", products=["usr/bin/other"])
    with pytest.raises(ClaimFailed):
        verify_chain(wrong, [load_public_key(owner.public_path)], links)


def test_another_signers_evidence_neither_counts_nor_fails(
        minimal_image: str, write_recipe: RecipeWriter, built: dict,  # type: ignore[type-arg]
        store: Path, keys: dict[str, Path]) -> None:
    # The same release built again and signed by a second builder: both sets of evidence
    # hang off it, and each verifier trusts whom it trusts.
    recipe = write_recipe(minimal_image, SCRIPT, ["usr/bin/hello", "n"], extra=TEST)
    again = run_rebuild("build", recipe, "--key", f"{keys['other']}.key", store=store)
    assert again.code == 0, again.stderr
    for who in ("ci", "other"):
        result = run_rebuild("verify", "t@1.0.0", "--key", f"{keys[who]}.pub", store=store)
        assert result.code == 0, result.stderr
    # the second builder's check met the first builder's evidence first, and passed it by
    assert "statement(s) by keys not given ignored" in result.stderr
    assert run_rebuild("keygen", "--out", keys["ci"].parent / "third").code == 0
    nobody = run_rebuild("verify", "t@1.0.0", "--key", keys["ci"].parent / "third.pub",
                         store=store)
    assert nobody.code == 1
