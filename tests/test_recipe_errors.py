"""Bad recipes exit 2 with a message naming the file, the key and the fix; nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_rebuild

IMAGE = "rebuild/debian-minimal:bookworm@sha256:" + "a" * 64
GOOD = f"""[recipe]
name = "ok"
version = "1.0.0"

[source]
path = "src"

[environment]
image = "{IMAGE}"
source_date_epoch = 1700000000

[build]
command = ["true"]
outputs = ["r"]
"""

CASES = {
    "unknown key with a suggestion": (
        GOOD.replace('outputs = ["r"]', 'outputs = ["r"]\ncomand = ["x"]'),
        ["unknown key 'build.comand'", "did you mean 'command'?"]),
    "unknown table": (GOOD + "\n[bulid]\n", ["unknown key 'bulid'", "did you mean 'build'?"]),
    "missing field": (GOOD.replace('outputs = ["r"]\n', ""), ["missing key 'build.outputs'"]),
    "image without digest": (
        GOOD.replace(IMAGE, "rebuild/debian-minimal:bookworm"),
        ["environment.image", "not pinned by digest", "name:tag@sha256:<hex>"]),
    "non-integer epoch": (
        GOOD.replace("source_date_epoch = 1700000000", 'source_date_epoch = "1700000000"'),
        ["environment.source_date_epoch", "non-negative integer", "not '1700000000'"]),
    "float epoch": (
        GOOD.replace("source_date_epoch = 1700000000", "source_date_epoch = 17.5"),
        ["environment.source_date_epoch", "non-negative integer"]),
    "output escaping /out": (
        GOOD.replace('outputs = ["r"]', 'outputs = ["../etc/passwd"]'),
        ["build.outputs", "escapes /out", "relative to /out"]),
    "absolute output": (
        GOOD.replace('outputs = ["r"]', 'outputs = ["/etc/passwd"]'),
        ["build.outputs", "escapes /out"]),
    "url without sha256": (
        GOOD.replace('path = "src"', 'url = "https://example.invalid/x-1.0.tar.gz"'),
        ["source", "sha256", "changed download is refused"]),
    "two source kinds": (
        GOOD.replace('path = "src"', 'path = "src"\nurl = "https://example.invalid/x.tgz"'),
        ["exactly one of path, url or git"]),
    "git rev not 40 hex": (
        GOOD.replace('path = "src"', 'git = "../repo.git"\nrev = "main"'),
        ["40-hex commit"]),
    "unknown variation": (
        GOOD + '\n[check]\nvary = ["all", "-hostnme"]\n',
        ["unknown variation '-hostnme'", "did you mean 'hostname'?"]),
    "reserved env": (
        GOOD.replace('outputs = ["r"]', 'outputs = ["r"]\nenv = { PATH = "/x" }'),
        ["build.env", "PATH is set by rebuild"]),
    "not toml": ("[recipe\nname=", ["not valid TOML"]),
    # A variable a variation sets would cancel it while the record said it ran.
    "env cancels the timezone variation": (
        GOOD.replace('outputs = ["r"]', 'outputs = ["r"]\nenv = { TZ = "UTC" }'),
        ["build.env.TZ", "timezone variation", '"-timezone"']),
    "env cancels the locale variation": (
        GOOD.replace('outputs = ["r"]', 'outputs = ["r"]\nenv = { LC_ALL = "C", LANG = "C" }'),
        ["build.env.LANG", "build.env.LC_ALL", "locale variation", '"-locale"']),
    "env overridden by the locale variation": (
        GOOD.replace('outputs = ["r"]', 'outputs = ["r"]\nenv = { LC_COLLATE = "C" }'),
        ["build.env.LC_COLLATE", "locale variation"]),
    "libfaketime setting": (
        GOOD.replace('outputs = ["r"]', 'outputs = ["r"]\nenv = { FAKETIME_ONLY_CMDS = "x" }'),
        ["build.env", "FAKETIME_ONLY_CMDS is set by rebuild"]),
    # [change] and [[test]] (issue 13): unknown keys refused, ids checked.
    "unknown change key": (
        GOOD + '\n[change]\nid = "CR-1"\nrisk = "high"\nrequirments = ["REQ-1"]\n',
        ["unknown key 'change.requirments'", "did you mean 'requirements'?"]),
    "change without id": (GOOD + '\n[change]\nrisk = "high"\n', ["missing key 'change.id'"]),
    "change requirement listed twice": (
        GOOD + '\n[change]\nid = "CR-1"\nrequirements = ["REQ-1", "REQ-1"]\n',
        ["change.requirements", "listed twice"]),
    "suite without results": (
        GOOD + '\n[[test]]\nname = "unit"\ncommand = ["true"]\n',
        ["missing key 'test.0.results'"]),
    "unknown suite key": (
        GOOD + '\n[[test]]\nname = "unit"\ncommand = ["true"]\nresults = "u.xml"\nreslt = 1\n',
        ["unknown key 'test.0.reslt'"]),
    "two suites with one name": (
        GOOD + '\n[[test]]\nname = "unit"\ncommand = ["true"]\nresults = "u.xml"\n'
        '\n[[test]]\nname = "unit"\ncommand = ["true"]\nresults = "v.xml"\n',
        ["two [[test]] suites share a name"]),
    "suite results outside /results": (
        GOOD + '\n[[test]]\nname = "unit"\ncommand = ["true"]\nresults = "../u.xml"\n',
        ["test.0.results"]),
    "vary nothing": (GOOD + '\n[check]\nvary = []\n', ["check.vary", "varies nothing"]),
    "vary nothing after removals": (
        GOOD + '\n[check]\nvary = ["time", "-time"]\n', ["check.vary", "varies nothing"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_recipe_exits_2(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    (tmp_path / "src").mkdir()
    # A dead engine proves that nothing runs: a recipe error comes first.
    result = run_rebuild("build", recipe, store=tmp_path / "store",
                         env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.code == 2, result.stderr
    assert str(recipe) in result.stderr
    for fragment in expected:
        assert fragment in result.stderr
    assert not (tmp_path / "store").exists()


def test_missing_recipe_file(tmp_path: Path) -> None:
    result = run_rebuild("build", tmp_path / "nope.toml")
    assert result.code == 2
    assert "cannot read the recipe" in result.stderr


def test_unreachable_engine_exits_3(tmp_path: Path) -> None:
    recipe = tmp_path / "ok.toml"
    recipe.write_text(GOOD)
    (tmp_path / "src").mkdir()
    result = run_rebuild("build", recipe, store=tmp_path / "store",
                         env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.code == 3, result.stderr
    assert "unreachable" in result.stderr
    assert "dockerd" in result.stderr
