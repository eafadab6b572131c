"""Release notes as evidence (`rebuild notes`): the change and its requirements, artifacts and
digests, the validation summary, approvals, waivers with their residual risks, known
limitations, and what changed since a previous release (artifacts, and the dependencies the
two SBOMs list: added, removed, upgraded or downgraded).

Every fact comes from `release_story`, which verified the release against the caller's keys,
or from statements that verification counted; `release_notes` returns plain data that the
templates (templates/notes.*.j2, through rebuild.release.pages) lay out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rebuild.release.report import release_story
from rebuild.release.trace import change_record, suite_statements, trace_matrix
from rebuild.release.verify import Policy, _get, signed_statements, verify_binding
from rebuild.store.layout import TITLE, Descriptor, Store

NOTES_FORMAT = "rebuild-notes/v1"


def release_notes(store: Store, target: str, policy: Policy,
                  since: str | None = None) -> dict[str, Any]:
    """The notes of `target` (and the changes since the release `since`), as plain data."""
    entry, report = verify_binding(store, target, policy, "no release notes written")
    release = entry.digest
    story = release_story(store, target, policy)
    name = str(report.release or target)
    artifacts = {a["name"]: a["sha256"] for a in story["artifacts"]}
    record = change_record(report.statements.get("provenance")) or {}
    matrix = trace_matrix(name, release, report.statements)
    suites = []
    limitations: list[str] = []
    for suite, predicate in suite_statements(report.statements).items():
        cases = predicate.get("testCases") or []
        counts = {o: sum(1 for c in cases if isinstance(c, Mapping) and c.get("outcome") == o)
                  for o in ("passed", "failed", "error", "skipped")}
        suites.append({"suite": suite, "result": str(predicate.get("result")), **counts})
        limitations += [f"test case {suite}/{c} failed" for c in predicate.get("failedTests")
                        or []]
        limitations += [f"test case {suite}/{c} was skipped" for c in
                        predicate.get("warnedTests") or []]
    limitations += [f"requirement {r} is covered by no passing test case"
                    for r in matrix.uncovered]
    waivers = _waivers(store, entry, artifacts, name, policy)
    notes: dict[str, Any] = {
        "format": NOTES_FORMAT,
        "release": name,
        "manifest": release,
        "verified": story["verification"].get("verified", False),
        "change": {"id": record.get("id"), "risk": record.get("risk"),
                   "summary": record.get("summary", ""),
                   "requirements": list(record.get("requirements") or []),
                   "hazards": list(record.get("hazards") or [])},
        "artifacts": [{"name": n, "sha256": d} for n, d in sorted(artifacts.items())],
        "validation": {
            "reproducible": bool(_get(story, "provenance", "reproducible")),
            "suites": suites,
            "verdicts": [{"result": v["result"], "verifier": v["verifier"],
                          "signature": v["signature"]["status"]} for v in story["verdicts"]],
            "trace": {"requirements": len([r for r in matrix.rows if r.in_change]),
                      "uncovered": list(matrix.uncovered)},
        },
        "approvals": [{"name": a["name"], "role": a["role"], "meaning": a["meaning"],
                       "time": a["time"], "signature": a["signature"]["status"]}
                      for a in story["approvals"]],
        "waivers": waivers,
        "limitations": limitations,
    }
    if since is not None:
        notes["since"] = _changes(store, since, policy, artifacts,
                                  report.statements.get("sbom"))
    return notes


def _waivers(store: Store, entry: Descriptor, artifacts: Mapping[str, str], name: str,
             policy: Policy) -> list[dict[str, Any]]:
    """Waivers signed by a key the policy trusts for the role they name."""
    shown = []
    for role, keys in sorted(policy.approvals.items()):
        for _, statement in signed_statements(store, entry, "waiver", keys, artifacts, name):
            predicate = statement.get("predicate") or {}
            if predicate.get("role") != role:
                continue
            waives = predicate.get("waives") or {}
            shown.append({"waives": " ".join(f"{k} {v}" for k, v in sorted(waives.items())),
                          "role": role, "name": _get(predicate, "signer", "name"),
                          "justification": predicate.get("justification"),
                          "residual_risk": predicate.get("residualRisk"),
                          "expires": predicate.get("expires")})
    return sorted(shown, key=lambda w: (str(w["waives"]), str(w["expires"])))


def _changes(store: Store, since: str, policy: Policy, artifacts: Mapping[str, str],
             sbom: Mapping[str, Any] | None) -> dict[str, Any]:
    """Artifacts and SBOM dependencies of this release against those of `since`."""
    previous, report = verify_binding(store, since, policy, "no release notes written")
    before = {layer["annotations"][TITLE]: layer["digest"].removeprefix("sha256:")
              for layer in store.read_json(previous.digest)["layers"]}
    return {
        "release": str(report.release or since),
        "manifest": previous.digest,
        "artifacts": {
            "added": sorted(set(artifacts) - set(before)),
            "removed": sorted(set(before) - set(artifacts)),
            "changed": sorted(n for n in set(artifacts) & set(before)
                              if artifacts[n] != before[n]),
        },
        "dependencies": dependency_changes(_packages(report.statements.get("sbom")),
                                           _packages(sbom)),
    }


def _packages(sbom: Mapping[str, Any] | None) -> dict[str, str]:
    """"pypi/name" or "deb/name" -> version, from a verified SBOM statement."""
    found = {}
    for component in _get(sbom, "predicate", "components") or []:
        purl = component.get("purl") if isinstance(component, Mapping) else None
        if not isinstance(purl, str) or not purl.startswith(("pkg:pypi/", "pkg:deb/")):
            continue
        kind, _, rest = purl.removeprefix("pkg:").partition("/")
        path = rest.split("?", 1)[0]
        package, _, version = path.rpartition("@")
        found[f"{kind}/{package.rsplit('/', 1)[-1]}"] = str(component.get("version") or version)
    return found


def dependency_changes(before: Mapping[str, str], after: Mapping[str, str]
                       ) -> dict[str, list[dict[str, str]]]:
    """Pure: what was added, removed, upgraded or downgraded between two package maps."""
    from packaging.version import InvalidVersion, Version

    def newer(old: str, new: str) -> bool:
        try:
            return Version(new) > Version(old)
        except InvalidVersion:
            return new > old

    moved = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return {
        "added": [{"package": p, "version": after[p]} for p in sorted(set(after) - set(before))],
        "removed": [{"package": p, "version": before[p]}
                    for p in sorted(set(before) - set(after))],
        "upgraded": [{"package": p, "from": before[p], "to": after[p]} for p in moved
                     if newer(before[p], after[p])],
        "downgraded": [{"package": p, "from": before[p], "to": after[p]} for p in moved
                       if not newer(before[p], after[p])],
    }
