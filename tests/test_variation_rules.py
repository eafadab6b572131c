"""Which environment a recipe may set, what a run records, what a policy requires (pure logic).

The real-engine side (the container's own environment against the signed record) is
tests/integration/test_run_settings.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from rebuild.build.plan import CLOCK_FILE, plan_build
from rebuild.build.recipe import Recipe, parse_recipe
from rebuild.build.variations import NAMES, controlling_variation
from rebuild.errors import UsageError
from rebuild.evidence.sign import generate_keypair
from rebuild.release.policy import load_policy
from rebuild.release.verify import Policy, Report, _check_variations

RECIPE = """
[recipe]
name = "t"
version = "1"
[source]
path = "src"
[environment]
image = "rebuild/debian-minimal:bookworm@sha256:{digest}"
source_date_epoch = 1700000000
[build]
command = ["true"]
outputs = ["r"]
env = {{ {key} = "x" }}
[check]
vary = {vary}
""".replace("{digest}", "a" * 64)


def recipe(key: str, vary: str = '["all"]') -> Recipe:
    return parse_recipe(tomllib.loads(RECIPE.format(key=key, vary=vary)), source="r.toml")


@pytest.mark.parametrize(("key", "variation"), [
    ("TZ", "timezone"), ("LANG", "locale"), ("LC_ALL", "locale"), ("LC_TIME", "locale"),
    ("LANGUAGE", "locale"), ("HOSTNAME", "hostname"), ("REBUILD_VARIATION", "env")])
def test_a_variable_of_an_enabled_variation_is_refused(key: str, variation: str) -> None:
    assert controlling_variation(key) == variation
    with pytest.raises(UsageError) as caught:
        recipe(key)
    assert caught.value.exit_code == 2
    assert f"build.env.{key}" in str(caught.value) and f"the {variation} variation" in str(
        caught.value)
    # With the variation off, both runs get the recipe's value, and run b does not claim it.
    allowed = recipe(key, f'["all", "-{variation}"]')
    plan = plan_build(allowed, 1700000000)
    assert all(run.env[key] == "x" for run in plan.runs)
    assert variation not in plan.runs[1].describe()


@pytest.mark.parametrize("key", ["FAKETIME", "FAKETIME_ONLY_CMDS", "FAKETIME_NO_CACHE",
                                 "NO_FAKE_STAT", "DONT_FAKE_MONOTONIC", "VIRTUAL_ENV",
                                 "LD_PRELOAD", "PATH", "HOME", "SOURCE_DATE_EPOCH"])
def test_a_variable_rebuild_sets_is_refused_even_with_every_variation_off(key: str) -> None:
    with pytest.raises(UsageError, match=f"{key} is set by rebuild"):
        recipe(key, '["cpus"]')


def test_other_variables_pass_untouched() -> None:
    assert controlling_variation("CFLAGS") is None
    plan = plan_build(recipe("CFLAGS"), 1700000000)
    assert [run.env["CFLAGS"] for run in plan.runs] == ["x", "x"]


def test_a_run_records_its_whole_environment_and_settings() -> None:
    a, b = plan_build(recipe("CFLAGS"), 1700000000).runs
    assert a.record()["env"] == dict(a.env) and b.record()["env"] == dict(b.env)
    assert a.record()["clock"] == "2030-01-01T00:00:00Z"
    assert b.record()["clock"] == "2031-07-03T00:00:00Z"
    assert b.record()["variations"] == list(NAMES)
    assert (a.record()["user"], b.record()["user"]) == ("1000:1000", "2000:2000")
    assert (a.record()["file_order"], b.record()["file_order"]) == ("natural", "shuffled")
    # The clock's offset lives in a file: no variable follows the real clock.
    assert a.env["FAKETIME_TIMESTAMP_FILE"] == CLOCK_FILE and "FAKETIME" not in a.env
    assert a.argv[2] == b.argv[2]  # the same script; the instant is an argument


def predicate(varied: list[str]) -> dict[str, object]:
    return {"buildDefinition": {"internalParameters": {
        "variations": {"a": {}, "b": {name: "…" for name in varied}}}}}


def test_the_policy_reads_what_run_b_varied_from_the_record() -> None:
    report = Report("t")
    _check_variations(predicate(list(NAMES)), Policy(()), report)
    _check_variations(predicate([n for n in NAMES if n != "cpus"]), Policy(()), report)
    _check_variations(predicate([n for n in NAMES if n != "cpus"]),
                      Policy((), variations=tuple(n for n in NAMES if n != "cpus")), report)
    _check_variations({}, Policy((), variations=("time",)), report)
    assert [c.ok for c in report.checks] == [True, False, True, False]
    assert "did not vary cpus" in report.checks[1].detail
    assert "did not vary time" in report.checks[3].detail


def test_policy_variations_parse_like_vary(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "ci")
    policy = tmp_path / "p.toml"
    policy.write_text('[policy]\nbuilder_keys = ["ci.pub"]\nvariations = ["all", "-cpus"]\n')
    assert load_policy(policy).variations == tuple(n for n in NAMES if n != "cpus")
    policy.write_text('[policy]\nbuilder_keys = ["ci.pub"]\n')
    assert load_policy(policy).variations == NAMES
    for bad, message in (("[]", "requires no variation"), ('["tz"]', "unknown variation")):
        policy.write_text(f'[policy]\nbuilder_keys = ["ci.pub"]\nvariations = {bad}\n')
        with pytest.raises(UsageError, match=message):
            load_policy(policy)
