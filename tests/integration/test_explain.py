"""`rebuild build --explain`: the search for culprits, hints, reports and --keep.

The decisions of rebuild.explain are pure and tested with plain values first; then the CLI
against the real engine: the human line, the JSON fields, the stored reports, and a 100 MB
tar.gz whose report must come fast and name the one member that changed.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from rebuild.build.compare import Artifact, Difference, _artifact, diff_reports, stage_archives
from rebuild.build.explain import HINTS, INHERENT, Blame, blame_outputs, next_probes
from rebuild.build.variations import NAMES
from tests.conftest import RecipeWriter, require_tool, run_rebuild

ALL = NAMES
F = frozenset
Observed = dict[frozenset[str], frozenset[str] | None]
Oracle = Callable[[frozenset[str]], "set[str] | None"]


def search(enabled: tuple[str, ...], differing: list[str], oracle: Oracle
           ) -> tuple[dict[str, Blame], list[tuple[str, ...]]]:
    """Drive the pure search with `oracle` standing in for the runs: (verdicts, runs made)."""
    observed: Observed = {F(enabled): F(differing)}
    made: list[tuple[str, ...]] = []
    while wanted := next_probes(enabled, differing, observed):
        assert not set(map(F, wanted)) & set(observed), "a run was asked for twice"
        for probe in wanted:
            changed = oracle(F(probe))
            observed[F(probe)] = None if changed is None else F(changed)
            made.append(probe)
        assert len(made) < 100
    return blame_outputs(enabled, differing, observed), made


def culprits(table: dict[str, set[str]]) -> Oracle:
    """Each output changes when any of its culprits varies (and only then)."""
    return lambda varied: {name for name, causes in table.items() if causes & varied}


# -- pure decisions -------------------------------------------------------------------------

def test_the_first_round_is_the_rerun_and_the_first_half() -> None:
    observed: Observed = {F(ALL): F({"r"})}
    assert next_probes(ALL, ["r"], observed) == [(), ALL[:6]]
    observed.update({F(): F(), F(ALL[:6]): F({"r"})})
    # The first half changed r: it is split at once, beside the second half.
    assert next_probes(ALL, ["r"], observed) == [ALL[6:], ALL[:3], ALL[3:6]]


def test_one_enabled_variation_needs_only_the_rerun() -> None:
    # Run B is the run of that variation alone: it is not made twice.
    blames, made = search(("time",), ["r"], culprits({"r": {"time"}}))
    assert made == [()]
    assert blames["r"] == Blame(("time",))


def test_bisection_blames_each_variation_that_changes_an_output() -> None:
    table = {"stamp": {"time", "hostname"}, "env": {"time", "home"}}
    blames, _ = search(ALL, ["stamp", "env"], culprits(table))
    assert blames["stamp"] == Blame(("time", "hostname"))
    assert blames["env"] == Blame(("time", "home"))
    assert blames["stamp"].hints == (HINTS["time"], HINTS["hostname"])


@pytest.mark.parametrize("culprit", ALL)
def test_one_culprit_anywhere_takes_at_most_nine_runs(culprit: str) -> None:
    blames, made = search(ALL, ["r"], culprits({"r": {culprit}}))
    assert blames["r"] == Blame((culprit,))
    assert len(made) <= 9


def test_every_variation_a_culprit_is_still_exact() -> None:
    blames, _ = search(ALL, ["r"], culprits({"r": set(ALL)}))
    assert blames["r"] == Blame(ALL)


def test_an_output_the_rerun_changes_is_inherent() -> None:
    def oracle(varied: frozenset[str]) -> set[str]:
        return {"r"} | ({"s"} if "user" in varied else set())

    blames, _ = search(ALL, ["r", "s"], oracle)
    assert blames["r"].variations == () and blames["r"].inherent
    assert blames["r"].hints == (HINTS[INHERENT],)
    assert blames["s"] == Blame(("user",))


def test_when_every_difference_is_inherent_the_first_round_ends_it() -> None:
    _, made = search(ALL, ["r"], lambda varied: {"r"})
    assert made == [(), ALL[:6]]


def test_an_interaction_is_found_by_leave_one_out_and_confirmed() -> None:
    # umask and user sit in different halves, so each half alone changes nothing.
    blames, made = search(ALL, ["r"], lambda v: {"r"} if {"umask", "user"} <= v else set())
    blame = blames["r"]
    assert blame.variations == ("umask", "user")
    assert blame.note and "together" in blame.note
    assert made[-1] == ("umask", "user")
    assert len(made) == 3 + 12 + 1  # rerun and halves, leave-one-out, confirmation


def test_an_interaction_inside_a_half_is_narrowed_there() -> None:
    blames, made = search(ALL, ["r"], lambda v: {"r"} if {"time", "hostname"} <= v else set())
    assert blames["r"].variations == ("time", "hostname")
    assert len(made) < 3 + 12 + 1


def test_an_interaction_that_cannot_be_narrowed_blames_every_enabled_variation() -> None:
    # (time and user) or (umask and home): no single one is needed, so nothing to confirm.
    enabled = ("time", "umask", "user", "home")

    def oracle(varied: frozenset[str]) -> set[str]:
        hit = {"time", "user"} <= varied or {"umask", "home"} <= varied
        return {"r"} if hit else set()

    blame = search(enabled, ["r"], oracle)[0]["r"]
    assert blame.variations == enabled
    assert blame.note and "every enabled variation is listed" in blame.note


def test_a_failed_run_is_named_in_the_note() -> None:
    enabled = ("time", "user")
    blame = search(enabled, ["r"], lambda v: None if v == {"user"} else set())[0]["r"]
    assert blame.variations == ("user",)
    assert blame.note and "the run with user alone failed" in blame.note


def test_every_variation_has_a_hint_with_a_fix() -> None:
    assert set(HINTS) == {*NAMES, INHERENT}
    assert all(":" in hint for hint in HINTS.values())


# -- reports, without the engine ------------------------------------------------------------

def _tar_gz(path: Path, members: dict[str, bytes], mtime: int = 0) -> Path:
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return path


def _difference(name: str, a: Path, b: Path) -> Difference:
    return Difference(name, _artifact(name, a), _artifact(name, b))


def test_a_tar_gz_report_names_the_changed_member_only(tmp_path: Path) -> None:
    require_tool("diffoscope")
    same = {f"data/m{i}": bytes([i]) * 1000 for i in range(5)}
    a = _tar_gz(tmp_path / "a.tar.gz", {**same, "data/stamp.txt": b"2030-01-01\n"})
    b = _tar_gz(tmp_path / "b.tar.gz", {**same, "data/stamp.txt": b"2031-07-03\n"}, mtime=5)
    reports = diff_reports(_difference("dist/x.tar.gz", a, b))
    text = reports.text.decode()
    assert "content differs in 1: data/stamp.txt" in text
    assert "-2030-01-01" in text and "+2031-07-03" in text
    assert "members/data/m0" not in text  # equal members are not extracted
    document = json.loads(reports.json)
    assert document["source1"] == "a/dist/x.tar.gz"
    assert b"<html" in reports.html.lower()
    for report in (reports.text, reports.html, reports.json):
        assert str(tmp_path).encode() not in report


def test_a_zip_report_shows_metadata_and_content(tmp_path: Path) -> None:
    require_tool("diffoscope")
    paths = []
    for side, (stamp, when) in {"a": (b"one", (2030, 1, 1, 0, 0, 0)),
                                "b": (b"two", (2030, 1, 1, 14, 0, 0))}.items():
        path = tmp_path / f"{side}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(zipfile.ZipInfo("README", (2030, 1, 1, 0, 0, 0)), b"same")
            zf.writestr(zipfile.ZipInfo("stamp", when), stamp)
        paths.append(path)
    text = diff_reports(_difference("bundle.zip", *paths)).text.decode()
    assert "content differs in 1: stamp" in text
    assert "(2030, 1, 1, 14, 0, 0)" in text


def test_archive_members_never_land_outside_the_staging_directory(tmp_path: Path) -> None:
    evil = {"../../escape": b"x", "/abs/path": b"y"}
    a = _tar_gz(tmp_path / "a.tar.gz", evil)
    b = _tar_gz(tmp_path / "b.tar.gz", {k: v + b"!" for k, v in evil.items()})
    stage_archives("tar.gz", a, b, tmp_path / "sa", tmp_path / "sb")
    assert not (tmp_path / "escape").exists() and not Path("/abs/path").exists()
    assert (tmp_path / "sa" / "members" / "__" / "__" / "escape").read_bytes() == b"x"
    assert (tmp_path / "sb" / "members" / "abs" / "path").read_bytes() == b"y!"


def test_a_missing_output_and_a_link_get_notes_in_every_format(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    only_a = Difference("f", _artifact("f", tmp_path / "f"), None)
    reports = diff_reports(only_a)
    assert b"only run a produced this output" in reports.text
    assert json.loads(reports.json)["comments"] == ["f: only run a produced this output"]
    link = Artifact("l", "0" * 64, 1, tmp_path / "l", "target-a")
    other = Artifact("l", "1" * 64, 1, tmp_path / "l", "target-b")
    assert b"b: symbolic link -> target-b" in diff_reports(Difference("l", link, other)).text


# -- the CLI against the engine -------------------------------------------------------------

@pytest.mark.docker
def test_explain_names_the_cause_and_stores_three_reports(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, tmp_path: Path) -> None:
    script = ("umask 022 && mkdir -p /out/share && date -u +%F > /out/share/stamp.txt && "
              "uname -n >> /out/share/stamp.txt && echo same > /out/same.txt")
    recipe = write_recipe(minimal_image, script, ["share/stamp.txt", "same.txt"])
    result = run_rebuild("build", recipe, "--explain", "--json", "--keep", tmp_path / "kept",
                         store=store)
    assert result.code == 1, result.stderr
    [diff] = result.json["differences"]
    assert diff["name"] == "share/stamp.txt"
    assert diff["variations"] == ["time", "hostname"]
    assert diff["hints"] == [HINTS["time"], HINTS["hostname"]]
    assert diff["explained"] is True
    assert "share/stamp.txt (content): caused by time, hostname — hints:" in result.stderr
    assert diff["reports"]["text"] == diff["report"]
    runs = result.json["explain"]["runs"]
    assert runs[0]["variations"] == [] and runs[0]["changed"] == []
    # run b wrote its year and host name into the stamp: those two are tested first, so
    # the rerun, time+hostname, the other ten, then time and hostname alone (bisection: 7-9).
    assert "share/stamp.txt: run b wrote what time, hostname set: tested first" in result.stderr
    assert len(runs) <= 5

    manifest = json.loads(run_rebuild("store", "cat", result.json["evidence"]["attempt"],
                                      store=store).stdout)
    titles = {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
              for layer in manifest["layers"]}
    for suffix, key in (("txt", "text"), ("html", "html"), ("json", "json")):
        assert titles[f"diff/share/stamp.txt.{suffix}"] == diff["reports"][key]
    html = run_rebuild("store", "cat", diff["reports"]["html"], store=store).stdout
    assert "variant-host" in html
    assert json.loads(run_rebuild("store", "cat", diff["reports"]["json"],
                                  store=store).stdout)["source1"] == "a/share/stamp.txt"

    kept = tmp_path / "kept"
    assert (kept / "a" / "same.txt").read_text() == "same\n"
    assert "variant-host" in (kept / "b" / "share" / "stamp.txt").read_text()


@pytest.mark.docker
def test_without_explain_every_enabled_variation_is_listed(
        minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    recipe = write_recipe(minimal_image, "uname -n > /out/r", vary=["hostname", "time"])
    result = run_rebuild("build", recipe, "--json", store=store)
    assert result.code == 1, result.stderr
    [diff] = result.json["differences"]
    assert diff["variations"] == ["time", "hostname"]
    assert diff["explained"] is False and diff["hints"] == []
    assert "explain" not in result.json
    assert "r (content): differs (run with --explain" in result.stderr


@pytest.mark.docker
def test_keep_refuses_an_existing_directory(minimal_image: str, write_recipe: RecipeWriter,
                                            store: Path, tmp_path: Path) -> None:
    (tmp_path / "kept" / "a").mkdir(parents=True)
    result = run_rebuild("build", write_recipe(minimal_image, "echo > /out/r"), "--keep",
                         tmp_path / "kept", store=store)
    assert result.code == 2
    assert "already exists" in result.stderr


# The bound for a large archive with one changed member: the report of a ≥100 MB tar.gz
# (four 28 MiB incompressible members and one small one that the time variation changes).
LARGE_REPORT_SECONDS = 30
LARGE_SCRIPT = """set -eu
mkdir -p data
python3 -c '
import random
for i in range(4):
    with open(f"data/blob{i}.bin", "wb") as f:
        f.write(random.Random(i).randbytes(28 << 20))
'
date -u +%F > data/stamp.txt
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -cf - data | gzip -n -1 > /out/big.tar.gz
"""


@pytest.mark.docker
def test_a_large_archive_report_is_fast_and_names_the_member(
        c_image: str, write_recipe: RecipeWriter, store: Path, tmp_path: Path) -> None:
    recipe = write_recipe(c_image, LARGE_SCRIPT, ["big.tar.gz"], vary=["time"], timeout=300)
    recipe.write_text(recipe.read_text().replace('memory = "512m"', 'memory = "1g"'))
    kept = tmp_path / "kept"
    result = run_rebuild("build", recipe, "--json", "--keep", kept, store=store)
    assert result.code == 1, result.stderr
    [diff] = result.json["differences"]
    text = run_rebuild("store", "cat", diff["report"], store=store).stdout
    assert "content differs in 1: data/stamp.txt" in text
    assert "members/data/stamp.txt" in text

    a, b = kept / "a" / "big.tar.gz", kept / "b" / "big.tar.gz"
    assert a.stat().st_size >= 100_000_000
    started = time.monotonic()
    reports = diff_reports(_difference("big.tar.gz", a, b))
    seconds = time.monotonic() - started
    assert b"data/stamp.txt" in reports.text
    assert seconds < LARGE_REPORT_SECONDS, f"report took {seconds:.1f} s"
    print(f"large archive report: {seconds:.1f} s for {a.stat().st_size} bytes")
