"""rebuild.intoto: build links and the release-chain layout, checked by in-toto's verifier."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

# in_toto ships no type information; securesystemslib.signer has no __all__.
from in_toto.models.layout import Inspection, Layout, Step  # type: ignore[import-untyped]
from in_toto.models.metadata import Envelope  # type: ignore[import-untyped]
from securesystemslib.signer import Signer, SSlibKey  # type: ignore[attr-defined]

from rebuild.errors import ClaimFailed, UsageError
from rebuild.evidence.intoto import (
    IN_TOTO_PAYLOAD_TYPE,
    LAYOUT_FILENAME,
    intoto_keyid,
    link_filename,
    make_layout,
    make_link,
    verify_chain,
)
from rebuild.evidence.sign import generate_keypair, load_public_key, load_signer
from rebuild.store.layout import canonical_json
from tests.conftest import ROOT

ALGORITHMS = ["ecdsa-p256", "ed25519"]  # in-toto verifies both (and RSA, which rebuild refuses)
FUTURE = "2099-12-31T00:00:00Z"
COMMAND = ["rebuild", "build", "recipe.toml"]
DOCS = ROOT / "docs" / "in-toto"
VENV_BIN = Path(sys.executable).parent


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MATERIALS = {"source.tar": sha256(b"source"), "recipe.toml": sha256(b"recipe")}
PRODUCTS = {"usr/bin/hello": sha256(b"hello")}


@dataclass(frozen=True)
class Party:
    signer: Signer
    key: SSlibKey
    public_path: Path
    private_path: Path


def party(tmp_path: Path, name: str, algorithm: str) -> Party:
    pair = generate_keypair(tmp_path / "keys" / name, algorithm=algorithm)  # type: ignore[arg-type]
    return Party(load_signer(pair.private_path, None), load_public_key(pair.public_path),
                 pair.public_path, pair.private_path)


@pytest.fixture(params=ALGORITHMS)
def builder(request: pytest.FixtureRequest, tmp_path: Path) -> Party:
    return party(tmp_path, "builder", request.param)


@pytest.fixture(params=ALGORITHMS)
def owner(request: pytest.FixtureRequest, tmp_path: Path) -> Party:
    return party(tmp_path, "owner", request.param)


@pytest.fixture
def links(tmp_path: Path) -> Path:
    directory = tmp_path / "links"
    directory.mkdir()
    return directory


def write_link(links: Path, signer: Signer, *, step: str = "build",
               materials: dict[str, str] = MATERIALS, products: dict[str, str] = PRODUCTS,
               name_key: SSlibKey | None = None) -> Path:
    """Sign a link and store it under the name of `name_key` (default: the signer's key)."""
    data = make_link(step, materials=materials, products=products, command=COMMAND,
                     signer=signer)
    path = links / link_filename(step, intoto_keyid(name_key or signer.public_key))
    path.write_bytes(data)
    return path


def layout_for(builder: Party, owner: Party, *, expires: str = FUTURE,
               products: tuple[str, ...] = tuple(PRODUCTS)) -> bytes:
    return make_layout(builder_keys=[builder.key], owner_signer=owner.signer, expires=expires,
                       products=products, materials=tuple(MATERIALS), expected_command=COMMAND)


def payload(envelope_bytes: bytes) -> dict[str, Any]:
    envelope = json.loads(envelope_bytes)
    assert envelope["payloadType"] == IN_TOTO_PAYLOAD_TYPE
    decoded: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return decoded


# -- the passing chain ----------------------------------------------------------------------


def test_build_link_verifies_against_layout(builder: Party, owner: Party, links: Path) -> None:
    path = write_link(links, builder.signer)
    verify_chain(layout_for(builder, owner), [owner.key], links)

    assert re.fullmatch(r"build\.[0-9a-f]{8}\.link", path.name)
    envelope = json.loads(path.read_bytes())
    assert [s["keyid"] for s in envelope["signatures"]] == [intoto_keyid(builder.key)]
    link = payload(path.read_bytes())
    assert link == {"_type": "link", "name": "build", "command": COMMAND,
                    "materials": {k: {"sha256": v} for k, v in MATERIALS.items()},
                    "products": {k: {"sha256": v} for k, v in PRODUCTS.items()},
                    "byproducts": {}, "environment": {}}


def test_link_payload_is_deterministic(builder: Party) -> None:
    def make() -> bytes:
        return make_link("build", materials=MATERIALS, products=PRODUCTS, command=COMMAND,
                         signer=builder.signer)

    first, second = json.loads(make()), json.loads(make())
    assert first["payload"] == second["payload"]  # ECDSA signatures differ, the payload not


def test_layout_says_who_builds_and_what_comes_out(builder: Party, owner: Party) -> None:
    layout = payload(layout_for(builder, owner))
    assert layout["_type"] == "layout"
    assert layout["expires"] == FUTURE
    assert layout["inspect"] == []
    assert list(layout["keys"]) == [intoto_keyid(builder.key)]
    (step,) = layout["steps"]
    assert step["name"] == "build"
    assert step["pubkeys"] == [intoto_keyid(builder.key)]
    assert step["threshold"] == 1
    assert step["expected_materials"] == [["ALLOW", "source.tar"], ["ALLOW", "recipe.toml"],
                                          ["DISALLOW", "*"]]
    assert step["expected_products"] == [["REQUIRE", "usr/bin/hello"],
                                         ["CREATE", "usr/bin/hello"], ["DISALLOW", "*"]]


def test_intoto_keyid_is_the_id_in_toto_tools_compute(builder: Party) -> None:
    # in-toto-verify/in-toto-run load PEM keys with securesystemslib's default key id.
    public_key = load_pem_public_key(builder.public_path.read_bytes())
    assert intoto_keyid(builder.key) == SSlibKey.from_crypto(public_key).keyid
    assert intoto_keyid(builder.key) != builder.key.keyid  # rebuild's id is a DER hash


def test_any_material_allowed_without_a_materials_list(builder: Party, owner: Party,
                                                       links: Path) -> None:
    write_link(links, builder.signer, materials={"anything.bin": sha256(b"x")})
    layout = make_layout(builder_keys=[builder.key], owner_signer=owner.signer, expires=FUTURE,
                         products=list(PRODUCTS))
    verify_chain(layout, [owner.key], links)


def test_product_names_are_literal_not_patterns(builder: Party, owner: Party,
                                                links: Path) -> None:
    products = {"lib/libx[1].so": sha256(b"x")}
    write_link(links, builder.signer, products=products)
    verify_chain(layout_for(builder, owner, products=tuple(products)), [owner.key], links)


# -- (a) the link is signed by a key the layout does not authorize ---------------------------


def test_link_by_another_key_is_not_found(builder: Party, owner: Party, links: Path,
                                          tmp_path: Path) -> None:
    stranger = party(tmp_path, "stranger", "ecdsa-p256")
    write_link(links, stranger.signer)
    with pytest.raises(ClaimFailed, match=r"requires '1' link metadata file\(s\), found '0'"):
        verify_chain(layout_for(builder, owner), [owner.key], links)


def test_link_by_another_key_under_the_builders_name_does_not_count(
        builder: Party, owner: Party, links: Path, tmp_path: Path) -> None:
    stranger = party(tmp_path, "stranger", "ed25519")
    write_link(links, stranger.signer, name_key=builder.key)
    with pytest.raises(ClaimFailed, match="requires at least '1' links validly signed"):
        verify_chain(layout_for(builder, owner), [owner.key], links)


# -- (b) the products differ from the layout's expectation -----------------------------------


def test_extra_product_is_disallowed(builder: Party, owner: Party, links: Path) -> None:
    write_link(links, builder.signer, products={**PRODUCTS, "usr/bin/backdoor": sha256(b"!")})
    with pytest.raises(ClaimFailed, match=r"DISALLOW \*.*usr/bin/backdoor"):
        verify_chain(layout_for(builder, owner), [owner.key], links)


def test_missing_product_is_required(builder: Party, owner: Party, links: Path) -> None:
    write_link(links, builder.signer, products={"usr/bin/other": sha256(b"o")})
    with pytest.raises(ClaimFailed, match="REQUIRE usr/bin/hello"):
        verify_chain(layout_for(builder, owner), [owner.key], links)


def test_unlisted_material_is_disallowed(builder: Party, owner: Party, links: Path) -> None:
    write_link(links, builder.signer, materials={**MATERIALS, "network.tar": sha256(b"n")})
    with pytest.raises(ClaimFailed, match=r"DISALLOW \*.*network.tar"):
        verify_chain(layout_for(builder, owner), [owner.key], links)


def test_edited_product_hash_breaks_the_link_signature(builder: Party, owner: Party,
                                                       links: Path) -> None:
    path = write_link(links, builder.signer)
    envelope = json.loads(path.read_bytes())
    link = payload(path.read_bytes())
    link["products"]["usr/bin/hello"]["sha256"] = sha256(b"tampered")
    envelope["payload"] = base64.b64encode(json.dumps(link, sort_keys=True).encode()).decode()
    path.write_bytes(canonical_json(envelope))
    with pytest.raises(ClaimFailed, match=r"validly signed.*altered link"):
        verify_chain(layout_for(builder, owner), [owner.key], links)


# -- (c) the layout is expired, or not the owner's -------------------------------------------


def test_expired_layout_fails(builder: Party, owner: Party, links: Path) -> None:
    write_link(links, builder.signer)
    with pytest.raises(ClaimFailed, match="layout expired at 2001-01-01T00:00:00Z"):
        verify_chain(layout_for(builder, owner, expires="2001-01-01T00:00:00Z"),
                     [owner.key], links)


def test_layout_signed_by_another_key_fails(builder: Party, owner: Party, links: Path) -> None:
    write_link(links, builder.signer)
    with pytest.raises(ClaimFailed, match="layout's signature does not verify"):
        verify_chain(layout_for(builder, owner), [builder.key], links)


def test_altered_layout_fails(builder: Party, owner: Party, links: Path,
                              tmp_path: Path) -> None:
    stranger = party(tmp_path, "stranger", "ed25519")
    write_link(links, stranger.signer)
    envelope = json.loads(layout_for(builder, owner))
    layout = payload(canonical_json(envelope))
    layout["steps"][0]["pubkeys"] = [intoto_keyid(stranger.key)]  # let the stranger build
    layout["keys"] = {intoto_keyid(stranger.key): {"keyid": intoto_keyid(stranger.key),
                                                   **stranger.key.to_dict()}}
    envelope["payload"] = base64.b64encode(json.dumps(layout).encode()).decode()
    with pytest.raises(ClaimFailed, match="layout's signature does not verify"):
        verify_chain(canonical_json(envelope), [owner.key], links)


def test_layout_with_inspections_is_refused(owner: Party, links: Path) -> None:
    # Inspections are commands the verifier would run: rebuild refuses them even when signed.
    inspection = Inspection(name="run-me", run=["touch", str(links / "ran")])
    layout = Layout(steps=[Step(name="build")], inspect=[inspection], expires=FUTURE)
    envelope = Envelope.from_signable(layout)
    envelope.create_signature(owner.signer)
    with pytest.raises(ClaimFailed, match=r"inspections \(run-me\)"):
        verify_chain(canonical_json(envelope.to_dict()), [owner.key], links)
    assert not (links / "ran").exists()


@pytest.mark.parametrize("data", [b"", b"[]", b'{"payload": "e30=", "payloadType": "x"}'])
def test_malformed_layout_fails(data: bytes, owner: Party, links: Path) -> None:
    with pytest.raises(ClaimFailed, match="not an in-toto layout"):
        verify_chain(data, [owner.key], links)


def test_link_is_not_a_layout(builder: Party, links: Path) -> None:
    link = write_link(links, builder.signer)
    with pytest.raises(ClaimFailed, match="is an in-toto link, not a layout"):
        verify_chain(link.read_bytes(), [builder.key], links)


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize("digest", ["sha256:" + "a" * 64, "A" * 64, "a" * 63])
def test_link_digest_must_be_sha256_hex(digest: str, builder: Party) -> None:
    with pytest.raises(UsageError, match="64 lowercase hex digits"):
        make_link("build", materials={}, products={"x": digest}, command=[],
                  signer=builder.signer)


@pytest.mark.parametrize("expires", ["2099-12-31", "2099-13-01T00:00:00Z"])
def test_layout_expiry_must_be_utc_timestamp(expires: str, builder: Party, owner: Party) -> None:
    with pytest.raises(UsageError, match=r"expiry|invalid layout"):
        layout_for(builder, owner, expires=expires)


def test_layout_needs_builders_and_products(builder: Party, owner: Party) -> None:
    with pytest.raises(UsageError, match="builder key"):
        make_layout(builder_keys=[], owner_signer=owner.signer, expires=FUTURE,
                    products=["x"])
    with pytest.raises(UsageError, match="products"):
        make_layout(builder_keys=[builder.key], owner_signer=owner.signer, expires=FUTURE,
                    products=[])


# -- the in-toto tools agree ----------------------------------------------------------------


def in_toto_verify_cli(layout: Path, owner_pub: Path,
                       links: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VENV_BIN / "in-toto-verify", "--layout", layout,
                           "--verification-keys", owner_pub, "--link-dir", links],
                          capture_output=True, text=True, check=False)


def test_in_toto_verify_command_accepts_rebuilds_chain(builder: Party, owner: Party,
                                                       links: Path) -> None:
    write_link(links, builder.signer)
    (links / LAYOUT_FILENAME).write_bytes(layout_for(builder, owner))
    result = in_toto_verify_cli(links / LAYOUT_FILENAME, owner.public_path, links)
    assert result.returncode == 0, result.stderr

    expired = links.parent / "expired.layout"
    expired.write_bytes(layout_for(builder, owner, expires="2001-01-01T00:00:00Z"))
    result = in_toto_verify_cli(expired, owner.public_path, links)
    assert result.returncode == 1
    assert "LayoutExpiredError" in result.stderr


def test_link_recorded_by_in_toto_run_joins_the_chain(builder: Party, owner: Party,
                                                      links: Path, tmp_path: Path) -> None:
    # A later step's functionary may record with the stock tool and the same key file.
    work = tmp_path / "work"
    work.mkdir()
    (work / "source.tar").write_bytes(b"source")
    (work / "recipe.toml").write_bytes(b"recipe")
    subprocess.run([VENV_BIN / "in-toto-run", "--step-name", "build", "--use-dsse",
                    "--signing-key", builder.private_path, "--metadata-directory", links,
                    "--materials", "source.tar", "recipe.toml", "--products", "usr/bin/hello",
                    "--", "sh", "-c", "mkdir -p usr/bin && printf hello > usr/bin/hello"],
                   cwd=work, check=True, capture_output=True)
    assert [p.name for p in links.iterdir()] == [link_filename("build",
                                                               intoto_keyid(builder.key))]
    verify_chain(layout_for(builder, owner), [owner.key], links)


# -- the example in docs/in-toto --------------------------------------------------------------


def test_docs_example_verifies() -> None:
    verify_chain((DOCS / LAYOUT_FILENAME).read_bytes(), [load_public_key(DOCS / "owner.pub")],
                 DOCS)
    result = in_toto_verify_cli(DOCS / LAYOUT_FILENAME, DOCS / "owner.pub", DOCS)
    assert result.returncode == 0, result.stderr


def test_docs_example_layout_is_what_make_layout_writes(owner: Party) -> None:
    # Signatures need the deleted demo key; the signed payload must match today's code.
    regenerated = make_layout(builder_keys=[load_public_key(DOCS / "builder.pub")],
                              owner_signer=owner.signer, expires=FUTURE,
                              products=["usr/bin/hello"], materials=["source.tar", "recipe.toml"],
                              expected_command=COMMAND)
    committed = (DOCS / LAYOUT_FILENAME).read_bytes()
    assert json.loads(committed)["payload"] == json.loads(regenerated)["payload"]


def test_docs_hold_no_private_key_and_name_their_link() -> None:
    files = sorted(p.name for p in DOCS.iterdir())
    builder_id = intoto_keyid(load_public_key(DOCS / "builder.pub"))
    link = link_filename("build", builder_id)
    assert files == sorted(["README.md", LAYOUT_FILENAME, "owner.pub", "builder.pub", link])
    assert all(b"PRIVATE KEY" not in (DOCS / name).read_bytes() for name in files)
    assert link in (DOCS / "README.md").read_text()
