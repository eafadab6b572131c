"""Waivers: a signed, time-limited acceptance of a gap in a release's evidence.

A waiver names what it waives (a test suite, one test case `SUITE/CASE`, or a requirement of
the change), why, the residual risk accepted, when it expires, and who signs it in which role
(design.md Part 2). It is attached to the release and logged like an approval; `verify`
counts it only when the release's tier lets that role waive, a key the policy trusts for the
role signed it, and it has not expired (rebuild.release.verify.accepted_waivers).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from securesystemslib.signer import Signer  # type: ignore[attr-defined]

from rebuild.attest import attach_statement
from rebuild.errors import ClaimFailed, UsageError
from rebuild.evidence.provenance import STATEMENT_TYPE
from rebuild.evidence.sign import KeySigner
from rebuild.release.trace import change_record
from rebuild.release.verify import Policy, parse_time, resolve_release, verify_release
from rebuild.store.layout import Store
from rebuild.twin import release_artifacts

WAIVER = "https://rebuild.dev/attestations/waiver/v1"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def parse_expiry(text: str) -> datetime:
    """`--expires`: a date (the waiver ends at 00:00 UTC that day) or an ISO 8601 time."""
    return parse_time(text, "--expires")


def waiver_statement(*, release: str, manifest: str, artifacts: Mapping[str, str],
                     scope: str, target: str, justification: str, residual_risk: str,
                     expires: datetime, role: str, name: str, keyid: str,
                     time: datetime) -> dict[str, Any]:
    predicate = {
        "release": release,
        "manifest": manifest,
        "waives": {scope: target},
        "meaning": f"waives {scope} {target}",
        "justification": justification,
        "residualRisk": residual_risk,
        "expires": expires.astimezone(UTC).strftime(TIME_FORMAT),
        "role": role,
        "signer": {"name": name, "keyid": keyid},
        "time": time.astimezone(UTC).strftime(TIME_FORMAT),
    }
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(artifacts.items())],
            "predicateType": WAIVER,
            "predicate": predicate}


def waive(store: Store, target: str, *, test: str | None, requirement: str | None,
          justification: str, residual_risk: str, expires: datetime, role: str, name: str,
          signer: Signer, policy: Policy, time: datetime) -> str:
    """Sign and attach a waiver; returns the digest of the stored waiver record. The release's
    evidence must be bound to it (its gaps are what a waiver is for, so policy checks aside)."""
    if (test is None) == (requirement is None):
        raise UsageError("say what is waived: --test SUITE[/CASE] or --requirement REQ (one)")
    if not justification.strip() or not residual_risk.strip() or not role.strip() \
            or not name.strip():
        raise UsageError("a waiver needs --justification, --residual-risk, --role and the "
                         "signer's name")
    if expires <= time:
        raise UsageError(f"--expires {expires.strftime(TIME_FORMAT)} is not in the future; a "
                         "waiver must expire later than it is signed")
    release = resolve_release(store, target)
    report = verify_release(store, target, Policy(policy.builder_keys,
                                                  keyless=policy.keyless))
    if not report.bound:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
        raise ClaimFailed(f"waiver refused: the evidence of {target} does not verify "
                          f"({failed})")
    ref = str(report.release or target)
    if requirement is not None:
        listed = (change_record(report.statements.get("provenance")) or {}).get(
            "requirements") or []
        if requirement not in listed:
            raise UsageError(f"{requirement} is not a requirement of the change of {ref} "
                             f"(its change record lists {', '.join(listed) or 'none'})")
    scope, what = ("test", test) if test is not None else ("requirement", requirement)
    assert what is not None
    artifacts = {a.name: a.sha256 for a in release_artifacts(store, release)}
    statement = waiver_statement(release=ref, manifest=release.digest, artifacts=artifacts,
                                 scope=scope, target=what, justification=justification,
                                 residual_risk=residual_risk, expires=expires, role=role,
                                 name=name, keyid=signer.public_key.keyid, time=time)
    return attach_statement(store, release, ref, "waiver", statement, KeySigner(signer))
