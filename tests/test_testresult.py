"""JUnit results of a suite (pure): cases, ids and outcomes; unsafe or malformed input refused."""

from __future__ import annotations

import pytest

from rebuild.errors import ExitCode
from rebuild.evidence.provenance import Subject
from rebuild.evidence.testresult import (
    ResultsError,
    TestCase,
    make_suite_result,
    parse_junit,
    suite_result,
)
from rebuild.store.layout import canonical_json

PYTEST_XML = b"""<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3">
<testcase classname="t" name="a" time="0.001"><properties>
<property name="requirement" value="REQ-1" /><property name="hazard" value="HAZ-1" />
<property name="requirements" value="REQ-2, REQ-1" /></properties></testcase>
<testcase classname="t" name="b" time="0.010"><failure message="x">E</failure></testcase>
<testcase classname="t" name="c" time="0.007"><skipped message="s"/></testcase>
<testcase classname="t" name="d"><error message="boom"/></testcase>
</testsuite></testsuites>"""


def test_cases_outcomes_and_ids() -> None:
    cases = parse_junit(PYTEST_XML, source="x", limit=1 << 20)
    assert cases == (TestCase("t::a", "passed", ("REQ-1", "REQ-2"), ("HAZ-1",), 0.001),
                     TestCase("t::b", "failed", (), (), 0.01),
                     TestCase("t::c", "skipped", (), (), 0.007),
                     TestCase("t::d", "error", (), (), 0.0))
    assert suite_result(cases, 0) == "FAILED"
    assert suite_result(cases[:1], 0) == "PASSED"
    assert suite_result(cases[:1], 1) == "FAILED"
    assert suite_result((cases[0], cases[2]), 0) == "WARNED"


def test_a_single_testsuite_root_is_read() -> None:
    cases = parse_junit(b'<testsuite><testcase name="only"/></testsuite>', source="x",
                        limit=100)
    assert [c.id for c in cases] == ["only"]


BAD = {
    "truncated": (PYTEST_XML[:120], "not well-formed XML"),
    "entity expansion": (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">'
                         b'<!ENTITY b "&a;&a;&a;&a;">]><testsuites>&b;</testsuites>',
                         "entity expansion"),
    "external entity": (b'<!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                        b'<testsuites>&x;</testsuites>', "DOCTYPE"),
    "huge": (b"<testsuites>" + b" " * 2000 + b"</testsuites>", "more than the 1000"),
    "not junit": (b"<html/>", "not JUnit XML"),
    "empty": (b"", "not well-formed XML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_results_are_a_clear_exit_4(case: str) -> None:
    data, expected = BAD[case]
    with pytest.raises(ResultsError) as caught:
        parse_junit(data, source="suite unit: /results/u.xml", limit=1000)
    assert caught.value.exit_code == ExitCode.BUILD
    assert str(caught.value).startswith("suite unit: /results/u.xml")
    assert expected in str(caught.value)


def test_statement_is_canonical_and_lists_cases_sorted() -> None:
    cases = parse_junit(PYTEST_XML, source="x", limit=1 << 20)
    digest = "sha256:" + "1" * 64
    statement = make_suite_result(subjects=[Subject("b", "2" * 64), Subject("a", "3" * 64)],
                                  suite="unit", command=["pytest"], exit_code=1,
                                  cases=tuple(reversed(cases)), results_digest=digest,
                                  log_digest=digest)
    assert statement == make_suite_result(
        subjects=[Subject("a", "3" * 64), Subject("b", "2" * 64)], suite="unit",
        command=["pytest"], exit_code=1, cases=cases, results_digest=digest, log_digest=digest)
    predicate = statement["predicate"]
    assert predicate["failedTests"] == ["t::b", "t::d"] and predicate["warnedTests"] == ["t::c"]
    assert predicate["testCases"][0] == {"id": "t::a", "outcome": "passed",
                                         "requirements": ["REQ-1", "REQ-2"],
                                         "hazards": ["HAZ-1"], "durationMs": 1}
    assert canonical_json(statement)  # every value is plain JSON (no floats to format)
