"""Plans of builds with a python_lock: a venv at a fixed path, the locked wheels installed
offline before the command, the venv first on PATH in both runs."""

from __future__ import annotations

import tomllib

from rebuild.build.plan import VENV_DIR, WHEELS_DIR, plan_build
from rebuild.build.recipe import parse_recipe

RECIPE = parse_recipe(tomllib.loads(f"""
[recipe]
name = "p"
version = "1"
[source]
path = "src"
[environment]
image = "rebuild/x:y@sha256:{"0" * 64}"
python_lock = "p.lock.txt"
source_date_epoch = 1700000000
[build]
command = ["python", "-m", "build"]
outputs = ["*.whl"]
"""))


def test_runs_install_the_wheels_into_a_venv_first() -> None:
    plan = plan_build(RECIPE, 1700000000, wheels=("a-1-py3-none-any.whl",))
    for run in plan.runs:
        shell, flag, script, umask, *command = run.argv
        assert (shell, flag, command) == ("/bin/sh", "-c", ["python", "-m", "build"])
        assert script.startswith(f'umask "$0" && python3 -m venv {VENV_DIR} && ')
        assert (f"PIP_CONFIG_FILE=/dev/null {VENV_DIR}/bin/pip install" in script
                and f"--no-index --find-links {WHEELS_DIR} --require-hashes "
                    f"-r {WHEELS_DIR}/python.lock.txt" in script)
        assert script.endswith('&& exec "$@"') and umask == run.settings.umask
        assert run.env["PATH"].startswith(f"{VENV_DIR}/bin:")
        assert run.env["VIRTUAL_ENV"] == VENV_DIR
    a, b = plan.runs
    assert a.argv[2] == b.argv[2]  # the same venv path and install in both runs


def test_an_empty_lock_still_gets_its_venv() -> None:
    [run, _] = plan_build(RECIPE, 1700000000, wheels=()).runs
    assert run.argv[2] == f'umask "$0" && python3 -m venv {VENV_DIR} && exec "$@"'


def test_without_a_python_lock_nothing_changes() -> None:
    [run, _] = plan_build(RECIPE, 1700000000).runs
    assert run.argv[2] == 'umask "$0" && exec "$@"'
    assert "VIRTUAL_ENV" not in run.env and not run.env["PATH"].startswith(VENV_DIR)
