"""The trace matrix: each requirement of a change → the test cases that carry it → their
outcome, for one release digest (design.md Part 2, "Change records, test suites,
traceability and waivers").

Pure: built from the verified statements `verify_release` counted (the provenance's change
record and the suites' test-result statements), never from unsigned records. A requirement
is covered when at least one test case carrying it passed; the uncovered ones are named.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SUITE_PREFIX = "test-result/"  # a [[test]] suite's statement: test-result/<suite>
SHOWN_CASES = 3  # cases per requirement in the terminal table


@dataclass(frozen=True)
class CaseRef:
    """A test case as the matrix shows it: its suite, id and outcome."""

    suite: str
    id: str
    outcome: str

    @property
    def ref(self) -> str:
        return f"{self.suite}/{self.id}"


@dataclass(frozen=True)
class TraceRow:
    requirement: str
    cases: tuple[CaseRef, ...]
    in_change: bool  # listed in the change record (else only carried by a test case)

    @property
    def covered(self) -> bool:
        return any(c.outcome == "passed" for c in self.cases)


@dataclass(frozen=True)
class TraceMatrix:
    release: str
    manifest: str  # the release manifest's digest
    change: str | None  # the change record's id
    rows: tuple[TraceRow, ...]

    @property
    def uncovered(self) -> tuple[str, ...]:
        """Requirements of the change with no passing test case."""
        return tuple(r.requirement for r in self.rows if r.in_change and not r.covered)

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "manifest": self.manifest, "change": self.change,
                "requirements": [
                    {"requirement": r.requirement, "in_change": r.in_change,
                     "covered": r.covered,
                     "cases": [{"suite": c.suite, "id": c.id, "outcome": c.outcome}
                               for c in r.cases]} for r in self.rows],
                "uncovered": list(self.uncovered)}

    def to_csv(self) -> str:
        """One line per requirement and case (a requirement with none: one line, no case)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["release", "manifest", "requirement", "in_change", "suite", "case",
                         "outcome", "covered"])
        for row in self.rows:
            for case in row.cases or (None,):
                writer.writerow([self.release, self.manifest, row.requirement,
                                 str(row.in_change).lower(),
                                 case.suite if case else "", case.id if case else "",
                                 case.outcome if case else "", str(row.covered).lower()])
        return out.getvalue()


def change_record(provenance: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The `[change]` record a signed provenance carries (None when the recipe had none)."""
    record = _get(provenance, "predicate", "buildDefinition", "externalParameters",
                  "changeRecord")
    return dict(record) if isinstance(record, Mapping) else None


def suite_statements(statements: Mapping[str, Mapping[str, Any]]
                     ) -> dict[str, Mapping[str, Any]]:
    """suite name -> the predicate of its verified test-result statement."""
    return {kind.removeprefix(SUITE_PREFIX): st.get("predicate") or {}
            for kind, st in sorted(statements.items()) if kind.startswith(SUITE_PREFIX)}


def case_refs(predicate: Mapping[str, Any], suite: str) -> list[tuple[CaseRef, list[str]]]:
    """The cases of a suite's predicate with the requirement ids each carries."""
    found = []
    for case in predicate.get("testCases") or []:
        if not isinstance(case, Mapping) or not isinstance(case.get("id"), str):
            continue
        ids = [i for i in case.get("requirements") or [] if isinstance(i, str)]
        found.append((CaseRef(suite, case["id"], str(case.get("outcome", ""))), ids))
    return found


def trace_matrix(release: str, manifest: str,
                 statements: Mapping[str, Mapping[str, Any]]) -> TraceMatrix:
    """The matrix of a release from its verified statements (`Report.statements`)."""
    record = change_record(statements.get("provenance")) or {}
    wanted = [r for r in record.get("requirements") or [] if isinstance(r, str)]
    cases: dict[str, list[CaseRef]] = {r: [] for r in wanted}
    for suite, predicate in suite_statements(statements).items():
        for case, ids in case_refs(predicate, suite):
            for requirement in ids:
                cases.setdefault(requirement, []).append(case)
    rows = tuple(TraceRow(r, tuple(sorted(cases[r], key=lambda c: (c.suite, c.id))),
                          r in wanted)
                 for r in [*wanted, *sorted(set(cases) - set(wanted))])
    change = record.get("id")
    return TraceMatrix(release, manifest, change if isinstance(change, str) else None, rows)


def format_table(matrix: TraceMatrix) -> list[str]:
    """The matrix as lines of a terminal table."""
    lines = [f"trace matrix of {matrix.release} ({matrix.manifest})"
             + (f", change {matrix.change}" if matrix.change else "")]
    width = max([len("requirement"), *(len(r.requirement) for r in matrix.rows)])
    lines.append(f"  {'requirement':<{width}}  {'status':<9}  test cases")
    for row in matrix.rows:
        status = "covered" if row.covered else "UNCOVERED" if row.in_change else "not in change"
        # The first few cases; --json and --csv list every one.
        shown = ", ".join(f"{c.ref} {c.outcome}" for c in row.cases[:SHOWN_CASES]) or "none"
        if len(row.cases) > SHOWN_CASES:
            rest = row.cases[SHOWN_CASES:]
            passed = sum(c.outcome == "passed" for c in rest)
            shown += f" and {len(rest)} more ({passed} passed)"
        extra = "" if row.in_change else " (not a requirement of the change)"
        lines.append(f"  {row.requirement:<{width}}  {status:<9}  {shown}{extra}")
    if not matrix.rows:
        lines.append("  (no requirements: the change record lists none and no case carries one)")
    if matrix.uncovered:
        lines.append(f"uncovered: {', '.join(matrix.uncovered)} (no passing test case)")
    return lines


def _get(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def format_cases(cases: Sequence[CaseRef]) -> str:
    return ", ".join(f"{c.ref} ({c.outcome})" for c in cases)
