"""Test suites' results: JUnit XML read safely, and the test-result statement of one suite.

Pure: `parse_junit(data, …)` turns the bytes a `[[test]]` suite wrote under /results into
`TestCase`s (parsed by junitparser over an lxml tree that resolves no entities, loads no DTD
and reaches no network; a document with a DTD is refused outright); `make_suite_result`
makes its in-toto test-result v0.1 statement, extended with `testCases` (design.md Part 2).
Requirement and hazard ids come from the cases' `<property name="requirement" value="…"/>`
(`record_property` in pytest), as StrictDoc and other traceability tools read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rebuild.errors import BuildFailed
from rebuild.evidence.provenance import (
    TEST_RESULT,
    Dependency,
    Subject,
    digest_set,
    make_statement,
    resource_descriptor,
)

Outcome = Literal["passed", "failed", "error", "skipped"]
# Property names a test case carries its ids in; the plural forms are accepted as well.
REQUIREMENT_PROPERTIES = ("requirement", "requirements")
HAZARD_PROPERTIES = ("hazard", "hazards")
MAX_CASES = 100_000  # a results file naming more is refused, as an oversized one is


@dataclass(frozen=True)
class TestCase:
    """One JUnit test case: its id (`classname::name`), outcome, ids and duration."""

    __test__ = False  # not a pytest test class

    id: str
    outcome: Outcome
    requirements: tuple[str, ...] = ()
    hazards: tuple[str, ...] = ()
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "outcome": self.outcome,
                "requirements": list(self.requirements), "hazards": list(self.hazards),
                # Milliseconds as an integer: canonical JSON with no float formatting to agree on.
                "durationMs": round(self.duration * 1000)}


class ResultsError(BuildFailed):
    """A suite's results file is missing, too big, malformed or unsafe (exit 4: the suite's
    output is at fault, as a test command that fails)."""


def parse_junit(data: bytes, *, source: str, limit: int) -> tuple[TestCase, ...]:
    """The test cases of a JUnit XML document (`<testsuites>` or one `<testsuite>`)."""
    from junitparser import (
        Error,
        Failure,
        JUnitXml,
        Skipped,
        TestSuite,
    )
    from lxml import etree  # type: ignore[import-untyped]

    if len(data) > limit:
        raise ResultsError(f"{source}: {len(data)} bytes, more than the {limit} a suite's "
                           "results may have; write fewer or smaller test cases")
    parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True,
                             huge_tree=False, dtd_validation=False, remove_pis=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise ResultsError(f"{source}: not well-formed XML ({exc}); the suite must write "
                           "a complete JUnit XML file (pytest --junitxml=…)") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        # Entities are how XML bombs and external reads work; JUnit needs none.
        raise ResultsError(f"{source}: has a DOCTYPE (DTD or entity declarations), which "
                           "JUnit results never need and rebuild refuses (entity expansion)")
    if root.tag not in ("testsuites", "testsuite"):
        raise ResultsError(f"{source}: the root element is <{root.tag}>, not <testsuites> "
                           "or <testsuite>: not JUnit XML")
    suites = ([TestSuite.fromelem(root)] if root.tag == "testsuite"  # type: ignore[no-untyped-call]
              else list(JUnitXml.fromelem(root)))  # type: ignore[no-untyped-call]
    cases: list[TestCase] = []
    for suite in suites:
        for case in suite:
            if len(cases) >= MAX_CASES:
                raise ResultsError(f"{source}: more than {MAX_CASES} test cases")
            results = case.result
            outcome: Outcome = ("error" if any(isinstance(r, Error) for r in results) else
                                "failed" if any(isinstance(r, Failure) for r in results) else
                                "skipped" if any(isinstance(r, Skipped) for r in results) else
                                "passed")
            props = [(p.name, p.value) for p in _properties(case)]
            name = case.name or ""
            cases.append(TestCase(
                f"{case.classname}::{name}" if case.classname else name, outcome,
                _ids(props, REQUIREMENT_PROPERTIES), _ids(props, HAZARD_PROPERTIES),
                float(case.time or 0.0)))
    return tuple(cases)


def _properties(case: Any) -> list[Any]:
    from junitparser import Properties

    found = case.child(Properties)
    return [] if found is None else list(found)


def _ids(props: Sequence[tuple[str | None, str | None]], names: Sequence[str]
         ) -> tuple[str, ...]:
    """Ids from properties such as requirement = "REQ-12" or requirements = "REQ-1, REQ-2"."""
    found: list[str] = []
    for name, value in props:
        if name in names and value:
            found += [v.strip() for v in value.replace(",", " ").split() if v.strip()]
    return tuple(dict.fromkeys(found))


def suite_result(cases: Sequence[TestCase], exit_code: int) -> str:
    """PASSED only when the command succeeded and no case failed; WARNED when cases were
    skipped; FAILED otherwise (a command that failed with every case passing failed too)."""
    if exit_code != 0 or any(c.outcome in ("failed", "error") for c in cases):
        return "FAILED"
    return "WARNED" if any(c.outcome == "skipped" for c in cases) else "PASSED"


def make_suite_result(*, subjects: Sequence[Subject], suite: str, command: Sequence[str],
                      exit_code: int, cases: Sequence[TestCase], results_digest: str,
                      log_digest: str) -> dict[str, Any]:
    """The test-result v0.1 statement of one `[[test]]` suite. The predicate is extended (the
    spec allows it) with `suite`, `command`, `exitCode`, the `log` and `results` files' digests
    and `testCases`; passed/warned/failedTests list case ids, as the spec's names."""
    ordered = sorted(cases, key=lambda c: c.id)
    predicate: dict[str, Any] = {
        "result": suite_result(cases, exit_code),
        "configuration": [resource_descriptor(Dependency(
            f"results/{suite}", f"rebuild:test-suite:{suite}", digest_set(results_digest)))],
        "passedTests": [c.id for c in ordered if c.outcome == "passed"],
        "warnedTests": [c.id for c in ordered if c.outcome == "skipped"],
        "failedTests": [c.id for c in ordered if c.outcome in ("failed", "error")],
        "suite": suite,
        "command": list(command),
        "exitCode": exit_code,
        "log": {"name": f"log/test/{suite}", "digest": digest_set(log_digest)},
        "results": {"name": f"results/{suite}", "digest": digest_set(results_digest)},
        "testCases": [c.to_json() for c in ordered],
    }
    return make_statement(subjects, TEST_RESULT, predicate)
