"""`[[test]]` suites on the real engine: JUnit XML under /results becomes one signed
test-result statement per suite, listing each case with its requirement and hazard ids;
malformed results are a clear error (exit 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import RecipeWriter, run_rebuild

pytestmark = pytest.mark.docker

SCRIPT = "umask 022 && printf 'score\\n' > /out/score"

UNIT_XML = (
    '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
    '<testcase classname="tests.test_score" name="test_range" time="0.012"><properties>'
    '<property name="requirement" value="REQ-1"/><property name="hazard" value="HAZ-1"/>'
    '</properties></testcase>'
    '<testcase classname="tests.test_score" name="test_inputs" time="0.003"><properties>'
    '<property name="requirement" value="REQ-2"/></properties>{extra}</testcase>'
    '</testsuite></testsuites>')


def suite(name: str, script: str, results: str | None = None) -> str:
    return (f'\n[[test]]\nname = "{name}"\ncommand = ["sh", "-c", {json.dumps(script)}]\n'
            f'results = "{results or name + ".xml"}"\n')


def write_xml(text: str, to: str) -> str:
    return f"printf '%s' {json.dumps(text)} > /results/{to}"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    assert run_rebuild("keygen", "--out", tmp_path / "ci").code == 0
    return tmp_path / "ci"


def statement(store: Path, digest: str) -> dict:  # type: ignore[type-arg]
    return json.loads((store / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())


def test_each_suite_gives_a_signed_statement_with_its_cases(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, key: Path) -> None:
    extra = (suite("unit", write_xml(UNIT_XML.format(extra=""), "unit.xml"))
             + suite("smoke", write_xml('<testsuite name="s"><testcase name="later">'
                                        '<skipped/></testcase></testsuite>', "smoke.xml")))
    recipe = write_recipe(minimal_image, SCRIPT, ["score"], extra=extra)
    built = run_rebuild("build", recipe, "--key", f"{key}.key", "--json", store=store)
    assert built.code == 0, built.stderr
    statements = built.json["evidence"]["statements"]
    assert {"test-result/unit", "test-result/smoke"} <= set(statements)
    assert "test-result" not in statements  # no single [test]
    unit = statement(store, statements["test-result/unit"])
    assert unit["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    predicate = unit["predicate"]
    assert predicate["result"] == "PASSED" and predicate["suite"] == "unit"
    assert predicate["passedTests"] == ["tests.test_score::test_inputs",
                                        "tests.test_score::test_range"]
    assert predicate["testCases"] == [
        {"id": "tests.test_score::test_inputs", "outcome": "passed",
         "requirements": ["REQ-2"], "hazards": [], "durationMs": 3},
        {"id": "tests.test_score::test_range", "outcome": "passed",
         "requirements": ["REQ-1"], "hazards": ["HAZ-1"], "durationMs": 12}]
    assert unit["subject"] == [{"name": "score", "digest": {"sha256": built.json[
        "artifacts"][0]["sha256"]}}]
    smoke = statement(store, statements["test-result/smoke"])["predicate"]
    assert smoke["result"] == "WARNED" and smoke["warnedTests"] == ["later"]
    verified = run_rebuild("verify", "t@1.0.0", "--key", f"{key}.pub", "--json", store=store)
    assert verified.code == 0, verified.stdout
    names = {c["name"] for c in verified.json["checks"]}
    assert {"signature: test-result/unit", "subjects: test-result/smoke"} <= names
    # A policy with tiers: a release whose change record names no risk fails it.
    policy = key.parent / "tiers.toml"
    policy.write_text(f'[policy]\nbuilder_keys = ["{key.name}.pub"]\n\n[tier.low]\n'
                      'tests = ["unit"]\n')
    tiered = run_rebuild("verify", "t@1.0.0", "--policy", policy, "--json", store=store)
    assert tiered.code == 1
    failed = {c["name"]: c["detail"] for c in tiered.json["checks"] if not c["ok"]}
    assert list(failed) == ["tier"] and "names no risk" in failed["tier"]
    events = run_rebuild("log", "show", "t@1.0.0", "--json", store=store)
    assert events.code == 0, events.stderr
    logged = [e for e in events.json["entries"] if e["event"] == "test-result"]
    assert sorted(e["meaning"] for e in logged) == ["PASSED", "WARNED"]


def test_a_failing_case_exits_4_and_records_the_release_with_its_results(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, key: Path) -> None:
    xml = UNIT_XML.format(extra='<failure message="bad">assert 1 == 2</failure>')
    recipe = write_recipe(minimal_image, SCRIPT, ["score"],
                          extra=suite("unit", write_xml(xml, "unit.xml") + " && exit 1"))
    built = run_rebuild("build", recipe, "--key", f"{key}.key", store=store)
    assert built.code == 4, built.stderr
    assert "unit: 1 failed (tests.test_score::test_inputs)" in built.stderr
    verified = run_rebuild("verify", "t@1.0.0", "--key", f"{key}.pub", "--json", store=store)
    assert verified.code == 0, verified.stdout  # recorded; its results say FAILED
    shown = run_rebuild("store", "ls", "--json", store=store)
    assert [e for e in shown.json["entries"] if e["kind"] == "release"]


BAD_RESULTS = {
    "truncated": (write_xml(UNIT_XML.format(extra="")[:150], "unit.xml"),
                  "not well-formed XML"),
    "entity expansion": (write_xml(
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        '<testsuites><testsuite name="x"><testcase name="&c;"/></testsuite></testsuites>',
        "unit.xml"), "entity expansion"),
    "huge": ("head -c 17000000 /dev/zero | tr '\\0' ' ' > /results/unit.xml",
             "the most a suite's results may have"),
    "missing": ("true", "/results/unit.xml was not written"),
    "a link out of /results": ("ln -s /etc/passwd /results/unit.xml",
                               "a link is never followed"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_malformed_results_exit_4_with_a_clear_error(
        case: str, minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    script, expected = BAD_RESULTS[case]
    recipe = write_recipe(minimal_image, SCRIPT, ["score"], extra=suite("unit", script))
    built = run_rebuild("build", recipe, store=store)
    assert built.code == 4, built.stderr
    assert "test suite unit: /results/unit.xml" in built.stderr
    assert expected in built.stderr
    assert "Traceback" not in built.stderr
    shown = run_rebuild("store", "ls", "--json", store=store)
    assert not [e for e in shown.json["entries"] if e["kind"] == "release"]
