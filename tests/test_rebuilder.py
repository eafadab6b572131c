"""Pure parts of the rebuilder and of remote stores: claims, who holds a release, one verdict
per key, and `--store oci://…` read back from a Path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rebuild.cli.common import remote_location
from rebuild.release.rebuilder import (
    VERDICT_TYPE,
    Claim,
    claim_manifest,
    first_live_claim,
    parse_claims,
    verdict_signers,
)
from rebuild.release.report import one_verdict_per_key
from rebuild.store.layout import KIND, OCI_MANIFEST, SIGNER_ANN, Descriptor
from rebuild.store.transfer import CLAIM_TYPE, CLOSURE_TYPE

SUBJECT = Descriptor(OCI_MANIFEST, "sha256:" + "a" * 64, 100)


def described(data: bytes) -> tuple[Descriptor, bytes]:
    import hashlib

    parsed = json.loads(data)
    return (Descriptor(OCI_MANIFEST, "sha256:" + hashlib.sha256(data).hexdigest(), len(data),
                       parsed.get("annotations"), parsed.get("artifactType")), data)


def test_a_claim_round_trips_and_names_its_subject() -> None:
    data = claim_manifest(SUBJECT, "key1", "host-1", 1000.0, 60)
    parsed = json.loads(data)
    assert parsed["subject"]["digest"] == SUBJECT.digest
    assert parsed["artifactType"] == CLAIM_TYPE
    [claim] = parse_claims([described(data)])
    assert (claim.keyid, claim.worker, claim.created, claim.expires) == \
        ("key1", "host-1", 1000.0, 1060.0)
    assert data == claim_manifest(SUBJECT, "key1", "host-1", 1000.0, 60)  # canonical


def test_the_earliest_live_claim_of_the_key_holds_the_release() -> None:
    claims = [Claim("sha256:b", "key1", "late", 20.0, 100.0),
              Claim("sha256:a", "key1", "early", 10.0, 100.0),
              Claim("sha256:c", "key1", "dead", 1.0, 50.0),
              Claim("sha256:d", "key2", "other key", 0.0, 100.0)]
    assert first_live_claim(claims, "key1", 60.0) == claims[1]
    assert first_live_claim(claims, "key1", 200.0) is None  # every lease ended
    assert first_live_claim(claims, "key3", 60.0) is None
    tie = [Claim("sha256:f", "k", "x", 5.0, 9.0), Claim("sha256:e", "k", "y", 5.0, 9.0)]
    assert first_live_claim(tie, "k", 6.0) == tie[1]  # same time: the digest decides


def test_broken_claims_claim_nothing() -> None:
    data = json.dumps({"artifactType": CLAIM_TYPE, "annotations": {SIGNER_ANN: "k"}}).encode()
    assert parse_claims([described(data)]) == []


def test_verdict_signers_from_verdicts_and_closures() -> None:
    verdict = json.dumps({"artifactType": VERDICT_TYPE,
                          "annotations": {SIGNER_ANN: "qa1"}}).encode()
    closure = json.dumps({"artifactType": CLOSURE_TYPE, "layers": [
        {"annotations": {KIND: "verdict", SIGNER_ANN: "qa2"}},
        {"annotations": {KIND: "approval", SIGNER_ANN: "boss"}}]}).encode()
    assert verdict_signers([described(verdict), described(closure)]) == {"qa1", "qa2"}


def verdict(manifest: str, signer: str | None, status: str, time: str) -> dict[str, Any]:
    return {"manifest": manifest, "signer": signer, "time": time,
            "signature": {"status": status}}


def test_show_counts_one_verdict_per_key() -> None:
    verdicts = [verdict("m1", "k1", "verified", "2026-01-01T00:00:00Z"),
                verdict("m2", "k1", "verified", "2026-01-02T00:00:00Z"),
                verdict("m3", "k1", "invalid", "2026-01-03T00:00:00Z"),
                verdict("m4", "k2", "untrusted", "2026-01-01T00:00:00Z"),
                verdict("m5", None, "unsigned", "2026-01-01T00:00:00Z")]
    kept = [v["manifest"] for v in one_verdict_per_key(verdicts)]
    assert kept == ["m4", "m5", "m2"]  # k1: the latest verified one, not the forged later one


def test_remote_location_survives_a_path() -> None:
    assert remote_location(Path("oci+http://127.0.0.1:5000/rebuild")) == \
        "oci+http://127.0.0.1:5000/rebuild"
    assert remote_location(Path("oci://registry.example/a/b")) == "oci://registry.example/a/b"
    assert remote_location(Path(".rebuild/store")) is None
    assert remote_location(Path("/srv/oci/store")) is None
