"""Approvals: an attributable, signed decision about a release.

An approval names the signer (printed name and key), the role, the meaning of the signature
and when it was made: the attributes an electronic signature must show under 21 CFR Part 11
§11.50. It is refused for a release whose evidence does not verify.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from securesystemslib.signer import Signer  # type: ignore[attr-defined]

from rebuild.attest import attach_statement
from rebuild.errors import ClaimFailed, UsageError
from rebuild.evidence.provenance import STATEMENT_TYPE
from rebuild.evidence.sign import KeySigner
from rebuild.release.verify import Policy, resolve_release, verify_release
from rebuild.store.auditlog import AuditLog
from rebuild.store.layout import Store
from rebuild.twin import release_artifacts

APPROVAL = "https://rebuild.dev/attestations/approval/v1"


def approval_statement(*, release: str, manifest: str, artifacts: Mapping[str, str],
                       name: str, keyid: str, role: str, meaning: str, comment: str | None,
                       time: datetime) -> dict[str, Any]:
    predicate: dict[str, Any] = {
        "release": release,
        "manifest": manifest,
        "signer": {"name": name, "keyid": keyid},
        "role": role,
        "meaning": meaning,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if comment:
        predicate["comment"] = comment
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(artifacts.items())],
            "predicateType": APPROVAL,
            "predicate": predicate}


def approve(store: Store, target: str, *, role: str, meaning: str, name: str,
            comment: str | None, signer: Signer, policy: Policy, time: datetime) -> str:
    """Sign and attach an approval; returns the digest of the stored approval."""
    if not role.strip() or not meaning.strip() or not name.strip():
        raise UsageError("an approval needs a role, a meaning and the signer's name")
    release = resolve_release(store, target)
    if policy.tiers:
        # A tier asks for approvals (this one among them) and waivers: the evidence must
        # hold, not yet the tier.
        policy = replace(policy, tiers={}, approvals={})
    report = verify_release(store, target, policy)
    if not report.ok:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
        raise ClaimFailed(f"approval refused: the evidence of {target} does not verify "
                          f"({failed})")
    # The name the signed provenance gives, which the verification bound to this manifest.
    ref = str(report.release)
    artifacts = {a.name: a.sha256 for a in release_artifacts(store, release)}
    statement = approval_statement(release=ref, manifest=release.digest, artifacts=artifacts,
                                   name=name, keyid=signer.public_key.keyid, role=role,
                                   meaning=meaning, comment=comment, time=time)
    return attach_statement(store, release, ref, "approval", statement, KeySigner(signer))


WITHDRAWAL = "https://rebuild.dev/attestations/approval-withdrawal/v1"


def withdraw_approval(store: Store, entry: int, *, reason: str, name: str, signer: Signer,
                      time: datetime) -> str:
    """Withdraw the approval logged as `entry`: a new signed statement, attached to the
    release and logged as a correction naming that entry; nothing is removed. Only the key
    that signed the approval may withdraw it."""
    if not reason.strip() or not name.strip():
        raise UsageError("a withdrawal needs a reason (--reason) and the signer's name")
    log = AuditLog.of(store)
    if not 0 <= entry < log.size():
        raise UsageError(f"entry {entry} is not in the audit log of {store.root} "
                         "(`rebuild log show` lists the entries)")
    data = json.loads(next(log.entries(entry, entry + 1))[1])
    if data.get("event") != "approval":
        raise UsageError(f"entry {entry} is a {data.get('event')}, not an approval")
    keyid = signer.public_key.keyid
    if data["actor"]["keyid"] != keyid:
        raise ClaimFailed(f"withdrawal refused: entry {entry} is an approval signed by key "
                          f"{data['actor']['keyid']}; only that key may withdraw it")
    release = resolve_release(store, data["release"])
    artifacts = {a.name: a.sha256 for a in release_artifacts(store, release)}
    statement = {"_type": STATEMENT_TYPE,
                 "subject": [{"name": n, "digest": {"sha256": d}}
                             for n, d in sorted(artifacts.items())],
                 "predicateType": WITHDRAWAL,
                 "predicate": {"release": data["release"], "manifest": release.digest,
                               "withdraws": {"entry": entry, "approval":
                                             data["statements"]["approval"]["statement"]},
                               "signer": {"name": name, "keyid": keyid},
                               "role": data["actor"]["role"], "reason": reason,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ")}}
    return attach_statement(store, release, data["release"], "withdrawal", statement,
                            KeySigner(signer))
