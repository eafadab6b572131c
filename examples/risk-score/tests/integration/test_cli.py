"""Integration: the built wheel (run a's /out, read-only), installed offline into a fresh
target directory, run as a program."""

import glob
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    wheels = glob.glob("/out/risk_score-*.whl")
    assert len(wheels) == 1, wheels
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                    "--no-deps", "--target", str(target), wheels[0]], check=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    return target


def run(installed, *args):
    return subprocess.run([sys.executable, "-m", "risk_score", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(installed)},
                          cwd="/", check=False)


def test_cli_prints_the_score(record_property, installed):
    record_property("requirement", "REQ-5")
    done = run(installed, json.dumps({"age": 60, "systolic": 140, "smoker": False,
                                      "diabetic": True}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "47"


def test_cli_refuses_bad_json(record_property, installed):
    record_property("requirement", "REQ-5")
    record_property("requirement", "REQ-4")
    done = run(installed, "{not json")
    assert done.returncode == 2 and "risk-score:" in done.stderr
