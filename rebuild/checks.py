"""A check's outcome: what was checked, whether it held, and why.

Every verifier in rebuild reports in these: a release's verification (rebuild.release.verify),
an evidence bundle's file checks (rebuild.release.bundle) and the audit log's proofs
(rebuild.store.auditlog). A check is `ok` only when what it names really ran and held.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
