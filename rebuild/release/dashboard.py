"""Dashboard: what a store's releases are, across releases, as plain data for the site.

Each release's status comes from its story (`report.release_story`), whose verification is
`verify.verify_release` under the caller's policy: this module only sorts the checks that
really ran into groups, it never decides a check itself. Releases the twin build refused
(an attempt and no release manifest) are "not reproducible" when the provenance signed for
that attempt says so and verifies against the policy's builder keys.

Every section is fed by one function (`trace_matrix`, `release_waivers`, `release_promotions`,
`flipped_cases`, …) over what the store holds; a section with nothing recorded says so. The
summaries are JSON-able dicts, cached by `rebuild.release.site` and read back by the pure
functions that make the overview and the trends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from rebuild.errors import ClaimFailed, StoreError
from rebuild.evidence.provenance import SLSA_PROVENANCE
from rebuild.evidence.sign import verify_signed
from rebuild.release.verify import Policy, signed_statements, statement_release
from rebuild.store.layout import (
    KIND,
    RELEASE_ANN,
    SUBJECT,
    TITLE,
    Descriptor,
    Store,
    canonical_json,
)

# The groups of the overview, from the least to the most trusted; "promoted" is per environment.
GROUPS = ("not reproducible", "not verified", "reproducible", "verified", "approved")
WAIVER_PREDICATE = "https://rebuild.dev/attestations/waiver/v1"
PROMOTION_PREDICATE = "https://rebuild.dev/promotion/v1"
EXPIRING_DAYS = 30
METRICS = (
    ("reproducibility", "Reproducibility pass rate", "%"),
    ("completeness", "Evidence completeness", "%"),
    ("traceability", "Traceability coverage", "%"),
    ("stability", "Test stability: cases that flipped outcome", "cases"),
    ("waiver_closure", "Waiver closure time", "days"),
)


def policy_digest(policy: Policy) -> str:
    """A digest of what a policy trusts and requires: part of every cached page's key, so a
    page checked under other keys or rules is never reused."""
    def ids(keys: Sequence[Any]) -> list[str]:
        return sorted(str(k.keyid) for k in keys)

    rules = {"builders": ids(policy.builder_keys), "qa": ids(policy.qa_keys),
             "approvals": {role: ids(keys) for role, keys in sorted(policy.approvals.items())},
             "keyless": sorted(str(k) for k in policy.keyless),
             "promoters": ids(policy.promoters),
             "reproducible": policy.reproducible, "sbom": policy.sbom, "tests": policy.tests,
             "verdicts": policy.verdicts, "variations": list(policy.variations),
             "log": None if policy.log_key is None else repr(policy.log_key),
             "tsa": None if policy.tsa is None else repr(policy.tsa)}
    return "sha256:" + hashlib.sha256(canonical_json(rules)).hexdigest()


# -- one release ------------------------------------------------------------------------------


def release_status(verification: Mapping[str, Any], roles: Sequence[str]
                   ) -> tuple[str, list[str]]:
    """(group, roles whose approval is pending) from a verification that ran under the
    policy (the story's `verification`): the checks decide, nothing else."""
    if not verification.get("ran"):
        return "not verified", []
    checks = {c["name"]: bool(c["ok"]) for c in verification.get("checks", [])}
    if checks.get("twin build") is False:
        return "not reproducible", []
    approvals = {n: ok for n, ok in checks.items() if n.startswith("approval: ")}
    rest = [ok for n, ok in checks.items() if n not in approvals]
    pending = sorted(n.removeprefix("approval: ") for n, ok in approvals.items() if not ok)
    if not rest or not all(rest):
        return ("reproducible" if checks.get("twin build") else "not verified"), []
    if roles and not pending:
        return "approved", []
    return "verified", pending


def summarize_release(story: Mapping[str, Any], policy: Policy, *, time: str | None,
                      waivers: Sequence[Mapping[str, Any]],
                      promotions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A release's line of the dashboard, from its story (pure)."""
    group, pending = release_status(story["verification"], sorted(policy.approvals))
    provenance = story.get("provenance") or {}
    # A [[test]] suite's statement is "test-result/<suite>": each counts as a test result.
    verified_kinds = {str(s["kind"]).split("/", 1)[0] for e in story.get("evidence", [])
                      for s in e["statements"] if s["signature"].get("status") == "verified"}
    expected = ["provenance", "sbom", "test-result", "QA verdict",
                *(f"approval: {role}" for role in sorted(policy.approvals))]
    verified_verdicts = [v for v in story.get("verdicts", [])
                         if v["signature"].get("status") == "verified"]
    approved_roles = {a["role"] for a in story.get("approvals", [])
                      if a["signature"].get("status") == "verified"}
    present = [item for item in expected
               if item in verified_kinds
               or (item == "QA verdict" and any(v["result"] == "PASSED"
                                                for v in verified_verdicts))
               or (item.removeprefix("approval: ") in approved_roles
               and item.startswith("approval: "))]
    matrix = trace_matrix(story)
    requirements = [row["requirement"] for row in matrix if row["in_change"]]
    covered = [row["requirement"] for row in matrix if row["in_change"] and row["covered"]]
    trace: Mapping[str, Any] = story["trace"] if isinstance(story.get("trace"),
                                                             Mapping) else {}
    release = str(story["release"])
    return {
        "release": release,
        "name": release.split("@", 1)[0],
        "manifest": story["manifest"],
        "page": page_name(story["manifest"]),
        "time": time or story.get("created"),
        "group": group,
        "facts_verified": bool(story.get("facts_verified")),
        "reproducible": _reproducible(story),
        "pending_roles": pending,
        "failed_verdicts": [{"verifier": v["verifier"], "signer": v["signer"],
                             "time": v["time"], "signature": v["signature"].get("status")}
                            for v in story.get("verdicts", []) if v["result"] == "FAILED"],
        "evidence": {"expected": expected, "present": present},
        "change": trace.get("change") or provenance.get("change"),
        "requirements": requirements,
        "covered": covered,
        "test_cases": case_outcomes(story),
        "artifacts": [f"sha256:{a['sha256']}" for a in story.get("artifacts", [])],
        "waivers": list(waivers),
        "promotions": list(promotions),
    }


def _reproducible(story: Mapping[str, Any]) -> bool | None:
    """The signed twin-build outcome, only when the verification checked it."""
    for check in story["verification"].get("checks", []):
        if check["name"] == "twin build":
            return bool(check["ok"])
    return None


def page_name(manifest: str) -> str:
    """The release page's file: named by the manifest digest (a version may hold any
    character; a digest is safe in a path and a URL)."""
    return f"releases/{manifest.removeprefix('sha256:')}.html"


def case_outcomes(story: Mapping[str, Any]) -> dict[str, str]:
    """suite/case -> outcome of the test cases the verified trace matrix names."""
    return {c["id"]: c["outcome"] for row in trace_matrix(story) for c in row["cases"]}


def trace_matrix(story: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Requirement -> test cases -> outcome: the story's trace matrix (`rebuild trace`, from
    the statements the verification counted); for a release without a change record, the
    requirements its signed provenance names, with no test case recorded."""
    trace = story.get("trace")
    if isinstance(trace, Mapping):
        return [{"requirement": str(r["requirement"]), "in_change": bool(r["in_change"]),
                 "covered": bool(r["covered"]),
                 "cases": [{"id": f"{c['suite']}/{c['id']}", "outcome": str(c["outcome"])}
                           for c in r["cases"]]}
                for r in trace.get("requirements", [])]
    provenance = story.get("provenance") or {}
    return [{"requirement": str(r), "in_change": True, "covered": False, "cases": []}
            for r in provenance.get("requirements", [])]


def release_waivers(store: Store, release: Descriptor, name: str,
                    artifacts: Mapping[str, str], policy: Policy) -> list[dict[str, Any]]:
    """The waivers attached to the release (`rebuild waive`): those `verify` finds signed by
    a key the policy trusts for the waiver's role (`signed_statements`), then one NOT
    VERIFIED row for each other waiver record attached."""
    rows: list[dict[str, Any]] = []
    for role, keys in sorted(policy.approvals.items()):
        for _, statement in signed_statements(store, release, "waiver", keys, artifacts, name):
            predicate = statement.get("predicate") or {}
            if predicate.get("role") != role:
                continue
            waives: Mapping[str, Any] = predicate["waives"] if isinstance(
                predicate.get("waives"), Mapping) else {}
            rows.append({"signature": "verified", "role": role,
                         "what": " ".join(f"{k} {v}" for k, v in sorted(waives.items())),
                         "expires": str(predicate.get("expires")),
                         "time": str(predicate.get("time")),
                         "justification": str(predicate.get("justification")),
                         "residual_risk": str(predicate.get("residualRisk"))})
    others = len(_attached(store, release, "waiver")) - len(rows)
    rows += [{"signature": "not verified", "role": None, "what": None, "expires": None,
              "time": None, "justification": None, "residual_risk": None}] * max(0, others)
    return rows


def release_promotions(store: Store, release: Descriptor, name: str,
                       artifacts: Mapping[str, str], keys: Sequence[Any]
                       ) -> list[dict[str, Any]]:
    """The promotions attached to the release (`rebuild promote`): those `verify` finds
    signed by a trusted key about exactly this release (`signed_statements`), then one
    NOT VERIFIED row for each other promotion record attached."""
    verified = signed_statements(store, release, "promotion", keys, artifacts, name)
    rows: list[dict[str, Any]] = []
    for keyid, statement in verified:
        predicate = statement.get("predicate") or {}
        to: Mapping[str, Any] = predicate["to"] if isinstance(predicate.get("to"),
                                                               Mapping) else {}
        rows.append({"signature": "verified", "signer": keyid,
                     "environment": str(to.get("environment")),
                     "repository": str(to.get("repository")),
                     "result": str((predicate.get("policy") or {}).get("result")),
                     "time": str(predicate.get("time"))})
    others = len(_attached(store, release, "promotion")) - len(verified)
    rows += [{"signature": "not verified", "signer": None, "environment": None,
              "repository": None, "result": None, "time": None}] * max(0, others)
    return rows


def _attached(store: Store, release: Descriptor, kind: str) -> list[Descriptor]:
    found = []
    for entry in store.referrers(release.digest):
        if (entry.annotations or {}).get(KIND) != kind:
            continue
        if store.read_json(entry.digest).get("subject", {}).get("digest") == release.digest:
            found.append(entry)
    return sorted(found, key=lambda e: e.digest)


# -- attempts that recorded no release -------------------------------------------------------


def refused_attempts(store: Store, releases: set[str], policy: Policy
                     ) -> list[dict[str, Any]]:
    """Names with build attempts but no release: the latest attempt of each, with its status
    from the signed provenance attached to it when that verifies against the builder keys
    and names its comparison record; otherwise from the unsigned record, marked so."""
    latest: dict[str, Descriptor] = {}
    for entry in store.entries("attempt"):
        name = (entry.annotations or {}).get(RELEASE_ANN)
        if name and name not in releases:
            latest[name] = entry  # the index keeps the order of writing
    evidence: dict[str, list[Descriptor]] = {}
    for entry in store.entries("evidence"):
        subject = (entry.annotations or {}).get(SUBJECT)
        if subject:
            evidence.setdefault(subject, []).append(entry)
    out = []
    for name, attempt in sorted(latest.items()):
        recorded = (attempt.annotations or {}).get("dev.rebuild.status", "unknown")
        layers = {layer.get("annotations", {}).get(TITLE): layer
                  for layer in store.read_json(attempt.digest).get("layers", [])}
        record = layers.get("comparison.json", {}).get("digest")
        signed = None
        for entry in evidence.get(attempt.digest, []):
            signed = _signed_reproducible(store, entry, name, record, policy)
            if signed is not None:
                break
        out.append({"release": name, "attempt": attempt.digest, "status": recorded,
                    "verified": signed is not None,
                    "reproducible": signed if signed is not None else None})
    return out


def _signed_reproducible(store: Store, entry: Descriptor, name: str, record: str | None,
                         policy: Policy) -> bool | None:
    layers = {layer.get("annotations", {}).get(TITLE): layer
              for layer in store.read_json(entry.digest).get("layers", [])}
    bundle = layers.get("provenance.sigstore.json")
    if bundle is None or record is None or not (policy.builder_keys or policy.keyless):
        return None
    try:
        statement = verify_signed(store.read_bytes(bundle["digest"]), keys=policy.builder_keys,
                                  keyless=policy.keyless).statement
    except (ClaimFailed, StoreError):
        return None
    if statement.get("predicateType") != SLSA_PROVENANCE or \
            statement_release("provenance", statement) != name:
        return None
    byproducts = statement.get("predicate", {}).get("runDetails", {}).get("byproducts", [])
    comparison: dict[str, Any] = next(
        (b for b in byproducts if b.get("name") == "comparison.json"), {})
    if f"sha256:{comparison.get('digest', {}).get('sha256')}" != record:
        return None
    return comparison.get("annotations", {}).get("reproducible") is True


# -- across releases (pure) -------------------------------------------------------------------


def overview(summaries: Sequence[Mapping[str, Any]], refused: Sequence[Mapping[str, Any]],
             roles: Sequence[str], today: datetime) -> dict[str, Any]:
    """The overview: releases by group, promotions per environment, pending approvals per
    role, waivers expiring within 30 days, failed rebuilds."""
    groups: dict[str, list[dict[str, Any]]] = {g: [] for g in GROUPS}
    for s in summaries:
        groups[s["group"]].append({"release": s["release"], "page": s["page"],
                                   "verified": s["facts_verified"]})
    for a in refused:
        if a["status"] == "not-reproducible" or a["reproducible"] is False:
            groups["not reproducible"].append({
                "release": a["release"], "page": None, "verified": a["verified"],
                "attempt": a["attempt"]})
    promoted: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        for env in sorted({p["environment"] for p in s["promotions"]
                           if p["signature"] == "verified" and p["result"] == "PASSED"}):
            promoted.setdefault(env, []).append({"release": s["release"], "page": s["page"]})
    pending = {role: [{"release": s["release"], "page": s["page"]} for s in summaries
                      if role in s["pending_roles"]] for role in roles}
    horizon = today + timedelta(days=EXPIRING_DAYS)
    expiring = []
    for s in summaries:
        for w in s["waivers"]:
            expires = _date(w["expires"]) if w["signature"] == "verified" else None
            if expires is not None and today <= expires <= horizon:
                expiring.append({"release": s["release"], "page": s["page"],
                                 "expires": expires.strftime("%Y-%m-%d"),
                                 "what": str(w["what"]), "role": str(w["role"])})
    failed = [{"release": s["release"], "page": s["page"], **v}
              for s in summaries for v in s["failed_verdicts"]]
    return {"groups": groups, "counts": {g: len(v) for g, v in groups.items()},
            "promoted": dict(sorted(promoted.items())), "pending": pending,
            "expiring": sorted(expiring, key=lambda w: w["expires"]), "failed": failed,
            "total": len(summaries)}


def _date(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _day(summary: Mapping[str, Any]) -> str:
    return str(summary.get("time") or "undated")[:10]


def flipped_cases(summaries: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """(day, cases that flipped outcome since the previous release of the same name), for
    the days with releases whose verified test results name cases."""
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for s in sorted(summaries, key=lambda s: (str(s.get("time")), s["release"])):
        by_name.setdefault(s["name"], []).append(s)
    flips: dict[str, float] = {}
    for releases in by_name.values():
        for before, after in pairwise(releases):
            old, new = before["test_cases"], after["test_cases"]
            if old and new:
                flips[_day(after)] = flips.get(_day(after), 0) + sum(
                    1 for case in old.keys() & new.keys() if old[case] != new[case])
    return sorted(flips.items())


def trends(summaries: Sequence[Mapping[str, Any]], refused: Sequence[Mapping[str, Any]]
           ) -> dict[str, list[tuple[str, float]]]:
    """Each metric of `METRICS` as (day, value) points, days in order; a metric with
    nothing recorded has no points."""
    days: dict[str, list[Mapping[str, Any]]] = {}
    for s in summaries:
        days.setdefault(_day(s), []).append(s)
    # A build refused as not reproducible recorded no release: it counts against the pass
    # rate on the day it was logged, when its signed provenance verified.
    refusals: dict[str, int] = {}
    for a in refused:
        if a["verified"] and a["reproducible"] is False:
            day = str(a.get("time") or "undated")[:10]
            refusals[day] = refusals.get(day, 0) + 1
            days.setdefault(day, [])
    reproducibility, completeness, traceability = [], [], []
    for day, group in sorted(days.items()):
        checked = [s["reproducible"] for s in group if s["reproducible"] is not None] + \
            [False] * refusals.get(day, 0)
        if checked:
            reproducibility.append((day, 100.0 * sum(checked) / len(checked)))
        if group:
            completeness.append((day, 100.0 * sum(len(s["evidence"]["present"]) /
                                                  len(s["evidence"]["expected"])
                                                  for s in group) / len(group)))
        traced = [s for s in group if s["requirements"]]
        if traced:
            full = sum(len(s["covered"]) == len(s["requirements"]) for s in traced)
            traceability.append((day, 100.0 * full / len(traced)))
    # Waiver closure time: a waiver records when it was signed and when it expires, not when
    # its gap was closed; until one does, this metric has nothing recorded.
    closure: dict[str, list[float]] = {}
    return {"reproducibility": reproducibility, "completeness": completeness,
            "traceability": traceability, "stability": flipped_cases(summaries),
            "waiver_closure": [(d, sum(v) / len(v)) for d, v in sorted(closure.items())]}


def chart(points: Sequence[tuple[str, float]], unit: str, width: int = 320,
          height: int = 120) -> dict[str, Any]:
    """An SVG chart's geometry (pure): a polyline over the points, scaled to the box; the
    template draws it. Percentages span 0-100, other units 0 to their maximum."""
    pad = 24
    top = 100.0 if unit == "%" else max((v for _, v in points), default=0.0) or 1.0
    n = len(points)
    coords = []
    for i, (label, value) in enumerate(points):
        x = pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5)
        y = height - pad - (height - 2 * pad) * (value / top)
        coords.append({"x": round(x, 1), "y": round(y, 1), "label": label,
                       "value": f"{value:.1f}" if unit != "cases" else f"{value:.0f}"})
    return {"width": width, "height": height, "pad": pad, "top": f"{top:.0f}", "unit": unit,
            "points": coords, "polyline": " ".join(f"{c['x']},{c['y']}" for c in coords),
            "last": coords[-1]["value"] if coords else None}


def search_entries(summaries: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """[text, kind, page] rows of the search box: release ids, change ids, requirement ids
    and artifact digests."""
    rows: list[list[str]] = []
    for s in summaries:
        rows.append([s["release"], "release", s["page"]])
        if s["change"]:
            rows.append([str(s["change"]), "change", s["page"]])
        rows += [[str(r), "requirement", s["page"]] for r in s["requirements"]]
        rows += [[d, "artifact", s["page"]] for d in s["artifacts"]]
    return rows
