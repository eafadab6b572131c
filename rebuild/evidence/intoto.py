"""in-toto link metadata of build runs, and the release-chain layout (in-toto spec v0.9).

This module owns rebuild's in-toto supply-chain metadata: a build run becomes a signed link
(materials = the inputs, products = the outputs), the project owner signs a layout that says
who may perform each step and what it must produce, and `verify_chain` checks links against a
layout with in-toto's own verifier (`in_toto.verifylib.in_toto_verify`). Links and layouts are
DSSE envelopes (payloadType `application/vnd.in-toto+json`), as `in-toto-run --use-dsse`
writes them.

Key ids: in-toto metadata names keys by in-toto's key id (sha256 of the key's canonical JSON,
spec section 4.2), not by rebuild's key id (`rebuild.evidence.sign.keyid`, a hash of the DER key).
The `in-toto-verify` and `in-toto-run` tools compute that id from a PEM file, so only with it
do rebuild's layouts and links verify with them, and links they record join the same chain.
The DSSE signature covers payload type and payload only, so naming the key differently does
not change what is signed.

Pure functions over bytes; `verify_chain` reads the link files in a directory (in-toto's
convention, `STEP.KEYID8.link`) and nothing else.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# in_toto ships no type information (no py.typed).
import in_toto.exceptions  # type: ignore[import-untyped]
from in_toto.models.layout import Layout, Step  # type: ignore[import-untyped]
from in_toto.models.link import FILENAME_FORMAT, Link  # type: ignore[import-untyped]
from in_toto.models.metadata import Envelope, Metadata  # type: ignore[import-untyped]
from in_toto.verifylib import in_toto_verify  # type: ignore[import-untyped]
from securesystemslib.exceptions import FormatError
from securesystemslib.formats import encode_canonical

# securesystemslib.signer re-exports these without __all__, which mypy --strict flags.
from securesystemslib.signer import Key, Signature, Signer  # type: ignore[attr-defined]

from rebuild.errors import ClaimFailed, UsageError
from rebuild.store.layout import canonical_json

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_STEP = "build"
LAYOUT_FILENAME = "root.layout"
DEFAULT_README = ("rebuild release chain: the build step is performed by a CI builder key; "
                  "QA rebuilds and approvals join as further steps.")

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_EXPIRES = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


# -- keys -----------------------------------------------------------------------------------


def intoto_keyid(key: Key) -> str:
    """The key's in-toto id: sha256 hex of the canonical JSON of keytype, scheme and keyval.

    The id `in-toto-verify --verification-keys FILE.pub` computes; rebuild's own key id
    (`rebuild.evidence.sign.keyid`) is a different hash of the same key.
    """
    document = {"keytype": key.keytype, "scheme": key.scheme, "keyval": key.keyval}
    canonical = encode_canonical(document)
    if not isinstance(canonical, str):  # None only when given an output_function
        raise UsageError(f"cannot encode key {key.keyid} as canonical JSON.")
    return hashlib.sha256(canonical.encode()).hexdigest()


def _key_dict(key: Key) -> dict[str, Any]:
    # in-toto's layout and verifylib APIs take keys as dicts that carry their own id.
    return {"keyid": intoto_keyid(key), "keytype": key.keytype, "scheme": key.scheme,
            "keyval": dict(key.keyval)}


def _sign(envelope: Envelope, signer: Signer) -> None:
    """Sign the envelope's PAE with `signer`, naming the key by its in-toto id."""
    signature: Signature = signer.sign(envelope.pae())
    key_id = intoto_keyid(signer.public_key)
    envelope.signatures[key_id] = Signature(key_id, signature.signature)


# -- links ----------------------------------------------------------------------------------


def link_filename(step: str, keyid: str) -> str:
    """The name `in_toto_verify` looks for: `STEP.KEYID8.link`, KEYID the in-toto key id."""
    return str(FILENAME_FORMAT.format(step_name=step, keyid=keyid))


def make_link(step: str, *, materials: Mapping[str, str], products: Mapping[str, str],
              command: Sequence[str], signer: Signer) -> bytes:
    """A signed in-toto link for one run of `step`; returns the DSSE envelope, canonical JSON.

    `materials` and `products` map artifact names (relative, `/`-separated) to sha256 hex.
    Byproducts and environment are left empty, so the payload depends on the arguments only.
    Write the bytes to `link_filename(step, intoto_keyid(signer.public_key))`.
    """
    _check_name(step, "step")
    link = Link(name=step, materials=_hash_dicts(materials, "material"),
                products=_hash_dicts(products, "product"), command=list(command),
                byproducts={}, environment={})
    # Envelope.from_signable serializes the link exactly as `in-toto-run --use-dsse` does.
    envelope = Envelope.from_signable(link)
    _sign(envelope, signer)
    return canonical_json(envelope.to_dict())


def _hash_dicts(artifacts: Mapping[str, str], what: str) -> dict[str, dict[str, str]]:
    out = {}
    for name, digest in artifacts.items():
        _check_name(name, what)
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise UsageError(f"{what} {name!r} has digest {digest!r}; give the sha256 as 64 "
                             "lowercase hex digits, without a 'sha256:' prefix.")
        out[name] = {"sha256": digest}
    return out


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise UsageError(f"{what} name {name!r} must be a non-empty string.")


# -- layouts --------------------------------------------------------------------------------


def make_layout(*, builder_keys: Sequence[Key], owner_signer: Signer, expires: str,
                products: Sequence[str], materials: Sequence[str] | None = None,
                expected_command: Sequence[str] | None = None, step: str = BUILD_STEP,
                readme: str = DEFAULT_README) -> bytes:
    """The release-chain layout, signed by the project owner; DSSE envelope, canonical JSON.

    One step, `step`, which any one of `builder_keys` may perform (threshold 1). It must
    produce exactly `products`: each is required and must be created by the step, and any
    other product fails verification. With `materials`, the step may use those inputs only;
    without, any. `expected_command` is advisory: in-toto only warns when the recorded command
    differs. `expires` is UTC, `YYYY-MM-DDTHH:MM:SSZ`. No inspections: verifying runs nothing.
    """
    _check_name(step, "step")
    if not _EXPIRES.fullmatch(expires):
        raise UsageError(f"layout expiry {expires!r} is not UTC 'YYYY-MM-DDTHH:MM:SSZ'; write "
                         "e.g. '2026-01-31T00:00:00Z'.")
    if not builder_keys:
        raise UsageError("a layout needs at least one builder key; pass the public key of the "
                         "key that signs build links.")
    if not products:
        raise UsageError("a layout needs the names of the products the build must create.")
    keys = {key["keyid"]: key for key in map(_key_dict, builder_keys)}
    product_rules: list[list[str]] = []
    for name in products:
        _check_name(name, "product")
        # REQUIRE takes a literal name and must precede CREATE, which consumes the artifact;
        # CREATE takes an fnmatch pattern, so a name with * ? [ is escaped.
        product_rules += [["REQUIRE", name], ["CREATE", glob.escape(name)]]
    product_rules.append(["DISALLOW", "*"])
    if materials is None:
        material_rules = [["ALLOW", "*"]]
    else:
        for name in materials:
            _check_name(name, "material")
        material_rules = [["ALLOW", glob.escape(name)] for name in materials]
        material_rules.append(["DISALLOW", "*"])
    try:
        build = Step(name=step, pubkeys=sorted(keys), threshold=1,
                     expected_command=list(expected_command or []),
                     expected_materials=material_rules, expected_products=product_rules)
        layout = Layout(steps=[build], inspect=[], keys=keys, expires=expires, readme=readme)
    except FormatError as e:  # e.g. a 13th month: the pattern above checks the shape only
        raise UsageError(f"invalid layout: {e}") from e
    envelope = Envelope.from_signable(layout)
    _sign(envelope, owner_signer)
    return canonical_json(envelope.to_dict())


# -- verification ---------------------------------------------------------------------------


def verify_chain(layout_bytes: bytes, layout_keys: Sequence[Key], link_dir: Path) -> None:
    """Verify the links in `link_dir` against the layout with in-toto's verifier.

    Every key in `layout_keys` must have signed the layout. Raises ClaimFailed, with in-toto's
    reason, when a signature, the expiry, a step's threshold or an artifact rule fails.
    """
    if not layout_keys:
        raise UsageError("verifying a layout needs the project owner's public key(s).")
    metadata = _load_layout(layout_bytes)
    key_dicts = {key["keyid"]: key for key in map(_key_dict, layout_keys)}
    try:
        in_toto_verify(metadata, key_dicts, str(link_dir), persist_inspection_links=False)
    except in_toto.exceptions.SignatureVerificationError as e:
        raise ClaimFailed("the layout's signature does not verify with the given owner key(s) "
                          f"({_ids(key_dicts)}): wrong key or altered layout.") from e
    except in_toto.exceptions.LayoutExpiredError as e:
        raise ClaimFailed(f"the layout expired at {metadata.get_payload().expires}; the project "
                          "owner must sign a new layout.") from e
    except in_toto.exceptions.LinkNotFoundError as e:
        raise ClaimFailed(f"{e} Links are read from {link_dir} as STEP.KEYID8.link, KEYID the "
                          "in-toto id of a key the layout authorizes for the step.") from e
    except in_toto.exceptions.ThresholdVerificationError as e:
        raise ClaimFailed(f"{e}. Links signed by a key the layout does not authorize, or whose "
                          "signature does not verify (altered link), do not count.") from e
    except in_toto.exceptions.RuleVerificationError as e:
        raise ClaimFailed(f"an artifact rule of the layout failed: {e}") from e
    except (in_toto.exceptions.Error, FormatError, ValueError, TypeError, KeyError) as e:
        # Malformed link files surface as assorted types from in_toto's parsers.
        raise ClaimFailed(f"in-toto verification failed ({type(e).__name__}): {e}") from e


def _load_layout(layout_bytes: bytes) -> Any:
    try:
        document = json.loads(layout_bytes)
        metadata = Metadata.from_dict(document)
        layout = metadata.get_payload()
    except (ValueError, TypeError, KeyError, AttributeError, FormatError,
            in_toto.exceptions.Error) as e:
        raise ClaimFailed(f"not an in-toto layout ({type(e).__name__}: {e}); pass the signed "
                          f"layout file ({LAYOUT_FILENAME}).") from e
    if not isinstance(layout, Layout):
        raise ClaimFailed(f"the metadata is an in-toto {layout.type_}, not a layout; pass the "
                          f"signed layout file ({LAYOUT_FILENAME}).")
    if layout.inspect:
        # Inspections are commands the verifier runs; in rebuild only the sandbox runs commands.
        names = ", ".join(layout.get_inspection_name_list())
        raise ClaimFailed(f"the layout has inspections ({names}), which rebuild does not run; "
                          "use a layout without inspections.")
    return metadata


def _ids(keys: Mapping[str, Any]) -> str:
    return ", ".join(key_id[:12] + "…" for key_id in keys)
