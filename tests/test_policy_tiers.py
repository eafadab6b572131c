"""Policy tiers and the trace matrix as pure logic: loading tiers (CEL compiled once, bad
rules and unknown roles refused with exit 2) and the matrix from verified statements."""

from __future__ import annotations

from pathlib import Path

import pytest

from rebuild.errors import ExitCode, UsageError
from rebuild.release.policy import load_policy
from rebuild.release.trace import format_table, trace_matrix
from rebuild.release.verify import Tier, _evaluate_rule
from tests.conftest import run_rebuild

POLICY = """[policy]
builder_keys = ["ci.pub"]

[[policy.approvals]]
role = "quality"
keys = ["ci.pub"]

[tier.high]
tests = ["unit"]
approvals = ["quality"]
trace = "complete"
waivers = ["quality"]
rules = [{rules}]
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    assert run_rebuild("keygen", "--out", tmp_path / "ci").code == 0
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "policy.toml"
    path.write_text(text)
    return path


def test_tiers_load_with_compiled_rules(policy_dir: Path) -> None:
    policy = load_policy(write(policy_dir, POLICY.format(rules="'size(suites) > 0'")))
    tier = policy.tiers["high"]
    assert (tier.tests, tier.approvals, tier.trace, tier.waivers) == (
        ("unit",), ("quality",), True, ("quality",))
    assert tier.rules[0].source == "size(suites) > 0"


@pytest.mark.parametrize(("text", "expected"), [
    (POLICY.format(rules="'size(suites) >'"),
     "tier.high.rules[0] 'size(suites) >' does not compile as CEL"),
    (POLICY.format(rules="").replace('approvals = ["quality"]\n', 'approvals = ["qa"]\n'),
     "tier.high.approvals: role 'qa' has no keys"),
    (POLICY.format(rules="").replace('waivers = ["quality"]', 'waivers = ["dev"]'),
     "tier.high.waivers: role 'dev' has no keys"),
    (POLICY.format(rules="").replace('trace = "complete"', 'trace = "most"'),
     "tier.high.trace"),
    (POLICY.format(rules="").replace("[tier.high]", "[tier.High]"), "[tier.High]"),
    (POLICY.format(rules="").replace('trace = "complete"', 'verdicts = 2'),
     "tier.high.verdicts = 2 needs policy.qa_keys"),
])
def test_bad_tiers_exit_2_naming_the_rule(policy_dir: Path, text: str, expected: str) -> None:
    path = write(policy_dir, text)
    with pytest.raises(UsageError) as caught:
        load_policy(path)
    assert caught.value.exit_code == ExitCode.USAGE
    assert str(caught.value).startswith(str(path)) and expected in str(caught.value)


def test_bad_cel_rule_is_exit_2_on_the_command_line(policy_dir: Path) -> None:
    path = write(policy_dir, POLICY.format(rules="'suites.unit.result == '"))
    result = run_rebuild("verify", "x@1.0.0", "--policy", path, store=policy_dir / "store")
    assert result.code == 2
    assert "tier.high.rules[0] 'suites.unit.result == ' does not compile as CEL" in result.stderr
    assert "Traceback" not in result.stderr


def suite(cases: list[tuple[str, str, list[str]]]) -> dict[str, object]:
    return {"predicate": {"testCases": [{"id": i, "outcome": o, "requirements": r}
                                        for i, o, r in cases]}}


STATEMENTS = {
    "provenance": {"predicate": {"buildDefinition": {"externalParameters": {"changeRecord": {
        "id": "CR-1", "risk": "high", "requirements": ["REQ-1", "REQ-2", "REQ-3"]}}}}},
    "test-result/unit": suite([("t::a", "passed", ["REQ-1"]), ("t::b", "failed", ["REQ-2"]),
                               ("t::c", "passed", ["REQ-9"])]),
    "test-result/security": suite([("s::x", "skipped", ["REQ-3"]),
                                   ("s::y", "passed", ["REQ-2"])]),
}


def test_trace_matrix_rows_and_uncovered() -> None:
    matrix = trace_matrix("a@1", "sha256:" + "0" * 64, STATEMENTS)
    rows = {r.requirement: (r.covered, [c.ref for c in r.cases], r.in_change)
            for r in matrix.rows}
    assert rows == {"REQ-1": (True, ["unit/t::a"], True),
                    "REQ-2": (True, ["security/s::y", "unit/t::b"], True),
                    "REQ-3": (False, ["security/s::x"], True),
                    "REQ-9": (True, ["unit/t::c"], False)}
    assert matrix.uncovered == ("REQ-3",)
    assert "uncovered: REQ-3 (no passing test case)" in format_table(matrix)
    assert matrix.to_csv().splitlines()[0] == (
        "release,manifest,requirement,in_change,suite,case,outcome,covered")


def test_cel_rules_over_statements() -> None:
    from rebuild.release.policy import compile_rule

    def run(source: str) -> tuple[bool, str]:
        return _evaluate_rule(compile_rule(Path("p.toml"), "high", 0, source),
                              STATEMENTS, Tier("high"))

    assert run("change.risk == tier")[0]
    assert run("suites.unit.testCases.exists(c, c.outcome == 'failed')")[0]
    held, detail = run("suites.security.testCases.all(c, c.outcome == 'passed')")
    assert not held and "of tier high is false" in detail
    held, detail = run("suites.missing.result == 'PASSED'")
    assert not held and "could not be evaluated" in detail
    held, detail = run("1 + 1")
    assert not held and "not a bool" in detail


def test_dependency_changes() -> None:
    from rebuild.release.notes import dependency_changes

    before = {"pypi/pytest": "8.3.5", "pypi/old": "1.0", "deb/libc6": "2.36-9",
              "pypi/pluggy": "1.7.0"}
    after = {"pypi/pytest": "8.4.2", "pypi/pygments": "2.21.0", "deb/libc6": "2.36-9",
             "pypi/pluggy": "1.6.0"}
    assert dependency_changes(before, after) == {
        "added": [{"package": "pypi/pygments", "version": "2.21.0"}],
        "removed": [{"package": "pypi/old", "version": "1.0"}],
        "upgraded": [{"package": "pypi/pytest", "from": "8.3.5", "to": "8.4.2"}],
        "downgraded": [{"package": "pypi/pluggy", "from": "1.7.0", "to": "1.6.0"}]}


@pytest.mark.parametrize(("args", "expected"), [
    ([], "say whose builds to trust"),
    (["--trust", "ci.pub", "--test", "unit"], "say what is waived"),
    (["--trust", "ci.pub", "--expires", "soon"], "is not a date"),
    (["--trust", "ci.pub", "--expires", "2020-01-01"], "is not in the future"),
])
def test_bad_waivers_exit_2_before_the_store_is_read(policy_dir: Path, args: list[str],
                                                     expected: str) -> None:
    base = ["waive", "x@1.0.0", "--requirement", "REQ-1", "--justification", "j",
            "--residual-risk", "r", "--role", "quality", "--key", policy_dir / "ci.key"]
    if "--expires" not in args:
        base += ["--expires", "2099-01-01"]
    args = [str(policy_dir / a) if a.endswith(".pub") else a for a in args]
    result = run_rebuild(*base, *args, store=policy_dir / "store")
    assert result.code == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
