"""environments.toml, the promotion statement, the gate's artifact names and clock, and the
error paths of `promote` and `gate` (exit 2 with one line, no engine needed)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rebuild.checks import Check
from rebuild.errors import UsageError
from rebuild.release.environments import load_environments
from rebuild.release.gate import ArtifactRef, in_repository, parse_artifact
from rebuild.release.promote import PROMOTION, promotion_statement
from rebuild.release.verify import Report, evaluation_time
from tests.conftest import run_rebuild

DEAD_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
GOOD = ('[[environment]]\nname = "staging"\nrepository = "oci+http://127.0.0.1:5000/staging"\n'
        'policy = "staging.toml"\n\n'
        '[[environment]]\nname = "production"\nrepository = "oci://reg.example/acme/prod"\n'
        'policy = "prod.toml"\nrequires = ["staging"]\n\n'
        '[[environment]]\nname = "archive"\nrepository = "stores/archive"\n'
        'policy = "prod.toml"\n')


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "environments.toml"
    path.write_text(text)
    return path


def test_environments_load_in_order(tmp_path: Path) -> None:
    envs = load_environments(write(tmp_path, GOOD))
    assert [e.name for e in envs.order] == ["staging", "production", "archive"]
    production = envs.get("production")
    assert production.requires == ("staging",) and production.remote
    assert production.policy_path == tmp_path / "prod.toml"
    archive = envs.get("archive")
    assert not archive.remote and archive.repository == str(tmp_path / "stores" / "archive")
    assert archive.location == "stores/archive"  # what statements name: no host path


@pytest.mark.parametrize(("text", "says"), [
    (GOOD.replace('requires = ["staging"]', 'requires = ["staging"]\nrequire = []'),
     "require"),
    (GOOD.replace('name = "archive"', 'name = "staging"'), "listed twice"),
    (GOOD.replace('requires = ["staging"]', 'requires = ["archive"]'), "listed after it"),
    (GOOD.replace('requires = ["staging"]', 'requires = ["qa"]'), "is not listed"),
    (GOOD.replace("oci://reg.example/acme/prod", "https://reg.example/acme/prod"),
     "neither oci://"),
    (GOOD.replace("oci+http://127.0.0.1:5000", "oci+http://reg.example"), "plain HTTP"),
    (GOOD.replace('name = "archive"', 'name = "Archive!"'), "name"),
    ("", "environment"),
    ("[[environment]]\nname = 'x'\n", "repository"),
])
def test_a_bad_environments_file_is_refused(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(UsageError) as refused:
        load_environments(write(tmp_path, text))
    assert says in str(refused.value) and str(tmp_path) in str(refused.value)


def test_unknown_environment_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="staging, production, archive"):
        load_environments(write(tmp_path, GOOD)).get("prod")


def test_promotion_statement_names_what_a_gate_needs(tmp_path: Path) -> None:
    env = load_environments(write(tmp_path, GOOD)).get("production")
    report = Report("w@1.0.0", "w@1.0.0", [Check("artifacts", True, ""),
                                           Check("builder", True, "")])
    statement = promotion_statement(
        release="w@1.0.0", manifest="sha256:" + "1" * 64, artifacts={"bin/w": "2" * 64},
        source={"environment": "staging", "repository": "oci+http://127.0.0.1:5000/staging"},
        env=env, policy_digest="3" * 64, report=report, name="Rel", keyid="k" * 64,
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert statement["predicateType"] == PROMOTION == "https://rebuild.dev/promotion/v1"
    assert statement["subject"] == [{"name": "bin/w", "digest": {"sha256": "2" * 64}}]
    predicate = statement["predicate"]
    assert predicate["to"] == {"environment": "production",
                               "repository": "oci://reg.example/acme/prod"}
    assert predicate["policy"] == {"uri": "prod.toml", "digest": {"sha256": "3" * 64},
                                   "result": "PASSED", "checks": {"passed": 2, "total": 2}}
    assert predicate["artifacts"] == {"bin/w": "sha256:" + "2" * 64}
    assert predicate["signer"] == {"name": "Rel", "keyid": "k" * 64}
    assert predicate["time"] == "2026-01-02T03:04:05Z"


def test_artifact_names(tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    assert parse_artifact(digest) == ArtifactRef(digest, digest)
    named = parse_artifact(f"reg.example/acme/prod/w@{digest}")
    assert named.digest == digest and named.repository == "reg.example/acme/prod/w"
    file = tmp_path / "app.bin"
    file.write_bytes(b"bytes\n")
    assert parse_artifact(str(file)).digest == "sha256:" + hashlib.sha256(b"bytes\n").hexdigest()
    for bad in ("sha256:" + "a" * 63, "sha256:" + "A" * 64, str(tmp_path / "missing"),
                "reg/x@sha256:abc"):
        with pytest.raises(UsageError):
            parse_artifact(bad)


def test_a_repository_must_be_the_environments(tmp_path: Path) -> None:
    env = load_environments(write(tmp_path, GOOD)).get("production")
    digest = "sha256:" + "a" * 64
    assert in_repository(parse_artifact(f"reg.example/acme/prod/w@{digest}"), env)
    assert in_repository(parse_artifact(f"oci://reg.example/acme/prod@{digest}"), env)
    assert not in_repository(parse_artifact(f"reg.example/acme/production/w@{digest}"), env)
    assert not in_repository(parse_artifact(f"reg.example/acme/staging/w@{digest}"), env)


def test_the_evaluation_clock() -> None:
    assert evaluation_time({"REBUILD_NOW": "2030-05-06T07:08:09Z"}) == \
        datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert evaluation_time({"REBUILD_NOW": "2030-05-06"}).tzinfo == UTC
    before = datetime.now(UTC)
    assert evaluation_time({}) >= before
    with pytest.raises(UsageError, match="REBUILD_NOW"):
        evaluation_time({"REBUILD_NOW": "next tuesday"})


@pytest.mark.parametrize(("argv", "says"), [
    (["promote", "w@1.0.0", "--to", "staging"], "must be signed"),
    (["promote", "w@1.0.0", "--to", "qa", "--key", "x.key"], "no environment 'qa'"),
    (["gate", "sha256:" + "a" * 64, "--env", "nowhere"], "no environment 'nowhere'"),
    (["gate", "not-a-digest", "--env", "staging"], "is not an artifact"),
    (["gate", "sha256:" + "a" * 64, "--env", "staging"], "staging.toml: cannot read"),
])
def test_promote_and_gate_usage_errors(tmp_path: Path, argv: list[str], says: str) -> None:
    envs = write(tmp_path, GOOD)
    result = run_rebuild(*argv, "--environments", envs, store=tmp_path / "store",
                         env=DEAD_ENGINE, timeout=60)
    assert result.code == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_no_environments_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_rebuild("gate", "sha256:" + "a" * 64, "--env", "staging", cwd=tmp_path,
                         env={**DEAD_ENGINE, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert result.code == 2 and "--environments FILE" in result.stderr
