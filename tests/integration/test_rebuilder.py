"""Rebuilders on a registry: `reproduce --pending` workers racing over twelve releases, and
the reading and writing commands run against `--store oci+http://…`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_rebuild, seed_store, toml_value
from tests.registry_support import RunningRegistry

pytestmark = pytest.mark.docker

VERSIONS = [f"1.0.{n}" for n in range(12)]
SCRIPT = "umask 022 && mkdir -p /out/usr/bin && printf 'hi\\n' > /out/usr/bin/hi"


@pytest.fixture(scope="module")
def published(minimal_image: str, registry: RunningRegistry,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve small releases (one recipe, twelve versions) built with ci.key and pushed;
    returns the directory holding the keys."""
    base = tmp_path_factory.mktemp("published")
    for who in ("ci", "qa", "boss"):
        assert run_rebuild("keygen", "--out", base / who).code == 0
    (base / "src").mkdir()
    (base / "src" / "a.txt").write_text("a\n")
    store = base / "store"
    seed_store(store)
    for version in VERSIONS:
        recipe = base / "w.toml"
        recipe.write_text(
            f'[recipe]\nname = "w"\nversion = "{version}"\n\n[source]\npath = "src"\n\n'
            f'[environment]\nimage = "{minimal_image}"\nsource_date_epoch = 1700000000\n\n'
            f'[build]\ncommand = ["sh", "-c", {toml_value(SCRIPT)}]\n'
            f'outputs = ["usr/bin/hi"]\ntimeout = 120\nmemory = "512m"\n\n'
            '[check]\nvary = ["all"]\n')
        built = run_rebuild("build", recipe, "--key", base / "ci.key", store=store)
        assert built.code == 0, built.stderr
        pushed = run_rebuild("store", "push", f"w@{version}", registry.url(), store=store)
        assert pushed.code == 0, pushed.stderr
    return base


def shown(registry: RunningRegistry, release: str, keys: Path, cache: Path) -> dict[str, object]:
    result = run_rebuild("show", release, "--key", keys / "ci.pub", "--key", keys / "qa.pub",
                         "--json", store=Path(registry.url()),
                         env={"REBUILD_CACHE": str(cache)})
    assert result.code == 0, result.stderr
    return result.json


def test_three_rebuilders_leave_one_verdict_per_release(
        registry: RunningRegistry, published: Path, tmp_path: Path) -> None:
    keys = published
    procs = [subprocess.Popen(
        [sys.executable, "-m", "rebuild", "--store", registry.url(), "reproduce", "--pending",
         "--key", str(keys / "qa.key"), "--json"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "REBUILD_CACHE": str(tmp_path / f"w{n}")})
        for n in range(3)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()
        reports.append(json.loads(out))
    done = Counter(r["release"] for report in reports for r in report["releases"]
                   if r["state"] == "reproduced")
    # Every release reproduced, by exactly one worker: the claims kept the others off.
    assert done == Counter({f"w@{v}": 1 for v in VERSIONS})
    assert all(len(report["releases"]) == 12 for report in reports)

    for version in VERSIONS:
        story = shown(registry, f"w@{version}", keys, tmp_path / "reader")
        [verdict] = [v for v in story["verdicts"]  # type: ignore[attr-defined]
                     if v["signature"]["status"] == "verified"]  # qa's (ci's key signs none)
        assert verdict["result"] == "PASSED"

    again = run_rebuild("reproduce", "--pending", "--key", keys / "qa.key", "--json",
                        store=Path(registry.url()), env={"REBUILD_CACHE": str(tmp_path / "w0")})
    assert again.code == 0, again.stderr
    assert {r["detail"] for r in again.json["releases"]} == {"has a verdict from this key"}


def test_verify_show_and_approve_against_the_registry(
        registry: RunningRegistry, published: Path, tmp_path: Path) -> None:
    keys = published
    env = {"REBUILD_CACHE": str(tmp_path / "cache")}
    remote = Path(registry.url())
    verified = run_rebuild("verify", "w@1.0.3", "--key", keys / "ci.pub", "--json",
                           store=remote, env=env)
    assert verified.code == 0, verified.stderr
    assert verified.json["verified"] is True
    untrusted = run_rebuild("verify", "w@1.0.3", "--key", keys / "qa.pub", store=remote,
                            env=env)
    assert untrusted.code == 1 and "NOT VERIFIED" in untrusted.stderr
    story = shown(registry, "w@1.0.3", keys, tmp_path / "cache")
    assert story["release"] == "w@1.0.3"

    approved = run_rebuild("approve", "w@1.0.3", "--role", "quality", "--meaning", "ok",
                           "--name", "Boss", "--key", keys / "boss.key", "--trust",
                           keys / "ci.pub", "--json", store=remote, env=env)
    assert approved.code == 0, approved.stderr
    fresh = tmp_path / "fresh"
    assert run_rebuild("store", "pull", registry.url(), "w@1.0.3", store=fresh).code == 0
    index = json.loads((fresh / "index.json").read_bytes())["manifests"]
    assert approved.json["approval"] in {e["digest"] for e in index}
    found = run_rebuild("show", "w@1.0.3", "--key", keys / "boss.pub", "--json", store=fresh)
    [approval] = found.json["approvals"]
    assert approval["name"] == "Boss" and approval["signature"]["status"] == "verified"

    bundle = tmp_path / "w.tar"
    exported = run_rebuild("export", "w@1.0.3", "-o", bundle, "--key", keys / "ci.pub",
                           store=remote, env=env)
    assert exported.code == 0, exported.stderr
    assert run_rebuild("verify", bundle, "--key", keys / "ci.pub").code == 0

    # One release reproduced against the registry: the signed verdict goes back up.
    reproduced = run_rebuild("reproduce", "w@1.0.5", "--key", keys / "boss.key", "--json",
                             store=remote, env=env)
    assert reproduced.code == 0, reproduced.stderr
    again = tmp_path / "again"
    assert run_rebuild("store", "pull", registry.url(), "w@1.0.5", store=again).code == 0
    index = json.loads((again / "index.json").read_bytes())["manifests"]
    assert reproduced.json["verdict"] in {e["digest"] for e in index}

    missing = run_rebuild("verify", "w@9.9.9", "--key", keys / "ci.pub", store=remote, env=env)
    assert missing.code == 5 and "Traceback" not in missing.stderr
