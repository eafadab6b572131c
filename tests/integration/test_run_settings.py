"""The record states the settings each run really had (issue "A verdict that cannot lie").

A build dumps its own environment from inside each container; the signed provenance, `show`
and `verify` must agree with what the containers saw. A recipe that disables a variation to
set its variable itself is recorded as not varying it, and a default policy refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rebuild.build.variations import NAMES
from rebuild.store.layout import Store
from tests.conftest import RecipeWriter, run_rebuild

pytestmark = pytest.mark.docker

# What the shell, Docker (HOSTNAME) and libfaketime (FAKETIME_SHARED, for its child
# processes) add to the environment the plan gives the container.
ADDED = {"PWD", "SHLVL", "_", "OLDPWD", "HOSTNAME", "FAKETIME_SHARED"}
SCRIPT = ("umask 022 && env | sort > /out/env-dump "
          "&& date -u -d @$SOURCE_DATE_EPOCH '+%F %T' > /out/day "
          "&& date -u '+%F %T' > /out/clock-dump")


def container_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def signed_provenance(store: Path, evidence: dict[str, Any]) -> dict[str, Any]:
    statement: dict[str, Any] = Store(store).read_json(evidence["provenance"])
    return statement


def test_record_and_show_agree_with_the_containers(minimal_image: str,
                                                   write_recipe: RecipeWriter,
                                                   store: Path, tmp_path: Path) -> None:
    assert run_rebuild("keygen", "--out", tmp_path / "ci").code == 0
    # TZ is the recipe's own here: the timezone variation is off, and must be recorded so.
    recipe = write_recipe(minimal_image, SCRIPT, ["day"], vary=["all", "-timezone"])
    recipe.write_text(recipe.read_text().replace(
        'memory = "512m"\n', 'memory = "512m"\nenv = { TZ = "UTC0" }\n'))
    keep = tmp_path / "keep"
    result = run_rebuild("build", recipe, "--json", "--key", tmp_path / "ci.key",
                         "--keep", keep, store=store)
    assert result.code == 0, result.stderr
    assert "varies 11 of 12" in result.stderr

    predicate = signed_provenance(store, result.json["evidence"])["predicate"]
    internal = predicate["buildDefinition"]["internalParameters"]
    assert "timezone" not in internal["variations"]["b"]
    assert sorted(internal["variations"]["b"]) == sorted(set(NAMES) - {"timezone"})
    for run in ("a", "b"):
        seen = container_env(keep / run / "env-dump")
        recorded = internal["runs"][run]
        assert {k: v for k, v in seen.items() if k not in ADDED} == recorded["env"], run
        assert seen["HOSTNAME"] == recorded["hostname"]
        assert seen["TZ"] == "UTC0"
        assert sorted(recorded["variations"]) == sorted(internal["variations"][run])
        # The clock starts at the recorded instant when the command starts.
        assert (keep / run / "clock-dump").read_text()[:16] == \
            recorded["clock"].replace("T", " ")[:16]
    b_seen = container_env(keep / "b" / "env-dump")
    shown = internal["variations"]["b"]
    assert b_seen["LANG"] == b_seen["LC_ALL"] == shown["locale"]
    assert b_seen["HOME"] == shown["home"]
    assert b_seen["REBUILD_VARIATION"] == "extra"
    assert b_seen["HOSTNAME"] == shown["hostname"].split(".")[0]

    show = run_rebuild("show", "t@1.0.0", "--key", tmp_path / "ci.pub", "--json", store=store)
    assert show.code == 0, show.stderr
    assert show.json["provenance"]["variations"] == internal["variations"]

    # `verify` reads what run b varied from the signed record: all twelve by default.
    refused = run_rebuild("verify", "t@1.0.0", "--key", tmp_path / "ci.pub", "--json",
                          store=store)
    assert refused.code == 1, refused.stdout + refused.stderr
    check = next(c for c in refused.json["checks"] if c["name"] == "variations")
    assert not check["ok"] and "did not vary timezone" in check["detail"]
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nbuilder_keys = ["ci.pub"]\n'
                      'variations = ["all", "-timezone"]\n')
    accepted = run_rebuild("verify", "t@1.0.0", "--policy", policy, "--json", store=store)
    assert accepted.code == 0, accepted.stdout + accepted.stderr
    check = next(c for c in accepted.json["checks"] if c["name"] == "variations")
    assert check["ok"] and "11 of 12" in check["detail"]

