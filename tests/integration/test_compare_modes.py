"""The same artifact: content, file type, link target and mode; and outputs that stay
unprivileged on the host.

Pure comparisons with plain values first; then the real engine: a file in one run and a link
in the other, modes that follow the umask, an output that embeds the host path of its run's
directory, a setuid output kept with --keep, and /out out of other users' reach while a run
lasts. rebuild runs as root here, as it must (README: requirements).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rebuild.build.compare import (
    KEEP_MODE_MASK,
    Artifact,
    Difference,
    _artifact,
    compare_artifacts,
    diff_reports,
    differing_properties,
    keep_outputs,
)
from tests.conftest import ROOT, SESSION_PREFIX, RecipeWriter, repoint_blob, run_rebuild

NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups")
BUILD_USER = ("--reuid=1000", "--regid=1000", "--clear-groups")  # run A's uid, on the host


def as_user(who: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess[str]:
    # Through a shell: setpriv itself execs its program with root's view of the path.
    return subprocess.run(["setpriv", *who, "/bin/sh", "-c", 'exec "$@"', "sh", *argv],
                          capture_output=True, text=True, check=False)


# -- pure comparison ------------------------------------------------------------------------

def test_a_file_and_a_link_with_the_same_hash_differ_in_type(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("target")
    (tmp_path / "link").symlink_to("target")
    file, link = _artifact("r", tmp_path / "file"), _artifact("r", tmp_path / "link")
    assert file.sha256 == link.sha256  # a link hashes as its target string
    assert differing_properties(file, link) == ("type",)
    [diff] = compare_artifacts([file], [link])
    report = diff_reports(diff).text.decode()
    assert "differs in type" in report
    assert "regular file" in report and "symbolic link -> target" in report


def test_modes_are_compared_and_recorded(tmp_path: Path) -> None:
    for name, mode in (("a", 0o755), ("b", 0o600)):
        (tmp_path / name).write_text("same bytes\n")
        (tmp_path / name).chmod(mode)
    a, b = _artifact("r", tmp_path / "a"), _artifact("r", tmp_path / "b")
    assert a.sha256 == b.sha256
    assert (a.to_json()["mode"], b.to_json()["mode"]) == ("0755", "0600")
    assert a.to_json()["type"] == "file"
    assert differing_properties(a, b) == ("mode",)
    report = diff_reports(Difference("r", a, b)).text.decode()
    assert "differs in mode" in report and "mode 0755" in report and "mode 0600" in report
    # A record that predates modes (mode None) compares content and type only.
    old = Artifact("r", a.sha256, a.size, a.path)
    assert differing_properties(old, b) == ()
    assert compare_artifacts([a], [Artifact("r", a.sha256, a.size, a.path, mode=0o755)]) == ()


def test_keep_drops_privileged_and_world_writable_bits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "tool").write_bytes(b"#!/bin/sh\n")
    (out / "tool").chmod(0o6777)
    (out / "d").chmod(0o1777)
    (out / "d" / "plain").write_text("x")
    (out / "d" / "plain").chmod(0o640)
    (out / "link").symlink_to("/etc/shadow")
    os.mkfifo(out / "fifo")  # made anew, never read (reading a FIFO would block the copy)
    keep_outputs({"a": out}, tmp_path / "kept")
    kept = tmp_path / "kept" / "a"
    assert stat.S_IMODE((kept / "tool").stat().st_mode) == 0o6777 & KEEP_MODE_MASK == 0o775
    assert stat.S_IMODE((kept / "d").stat().st_mode) == 0o775
    assert stat.S_IMODE((kept / "d" / "plain").stat().st_mode) == 0o640
    assert (kept / "link").readlink() == Path("/etc/shadow")
    assert stat.S_ISFIFO((kept / "fifo").lstat().st_mode)


# -- the real engine ------------------------------------------------------------------------

@pytest.mark.docker
def test_a_file_in_one_run_and_a_link_in_the_other_is_not_reproducible(
        minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    script = ('if [ "$(id -u)" = 1000 ]; then printf target > /out/r; chmod 644 /out/r; '
              "else ln -s target /out/r; fi")
    result = run_rebuild("build", write_recipe(minimal_image, script), "--explain", "--json",
                         store=store)
    assert result.code == 1, result.stderr
    [diff] = result.json["differences"]
    assert diff["a"] == diff["b"]  # the same sha256: only the type tells them apart
    assert diff["differs"] == ["type"]
    assert diff["variations"] == ["user"]
    assert "r (type): caused by user" in result.stderr


@pytest.mark.docker
@pytest.mark.parametrize(("script", "modes"), [
    ("printf x > /out/r", ("0644", "0664")),  # a plain output file: its mode is the umask's
    ('printf x > /out/r; if [ "$(umask)" = 0022 ]; then chmod 755 /out/r; '
     "else chmod 600 /out/r; fi", ("0755", "0600")),
])
def test_a_mode_difference_is_not_reproducible_and_blames_umask(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, script: str,
        modes: tuple[str, str]) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, script), "--explain", "--json",
                         store=store)
    assert result.code == 1, result.stderr
    [diff] = result.json["differences"]
    assert diff["a"] == diff["b"] and diff["differs"] == ["mode"]
    assert diff["variations"] == ["umask"]
    assert any("chmod" in hint for hint in diff["hints"])
    record = json.loads(run_rebuild("store", "cat", _comparison(store), store=store).stdout)
    assert record["compared"] == ["type", "content", "mode"]
    [artifact] = record["artifacts"]  # run a's
    assert (artifact["type"], artifact["mode"]) == ("file", modes[0])
    report = run_rebuild("store", "cat", diff["report"], store=store).stdout
    assert f"mode {modes[0]}" in report and f"mode {modes[1]}" in report


def _comparison(store: Path) -> str:
    index = json.loads((store / "index.json").read_text())
    [attempt] = [m for m in index["manifests"]
                 if m.get("annotations", {}).get("dev.rebuild.kind") == "attempt"]
    manifest = json.loads((store / "blobs" / "sha256" / attempt["digest"][7:]).read_text())
    return next(layer["digest"] for layer in manifest["layers"]
                if layer["annotations"]["org.opencontainers.image.title"] == "comparison.json")


# Prints the host directory that holds this run's /out: once a workspace shared by runs A
# and B, random per invocation; now a directory of each run's own.
WORKSPACE_SCRIPT = "grep ' /out ' /proc/self/mountinfo | cut -d' ' -f4 > /out/r; chmod 644 /out/r"


@pytest.mark.docker
def test_an_output_that_embeds_its_host_directory_is_not_reproducible(
        minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, WORKSPACE_SCRIPT), "--explain",
                         "--json", store=store)
    assert result.code == 1, result.stderr
    [diff] = result.json["differences"]
    assert diff["differs"] == ["content"]
    # Random per invocation, so a rerun of A differs too: no variation is to blame.
    assert diff["variations"] == [] and diff["explained"] is True
    report = run_rebuild("store", "cat", diff["report"], store=store).stdout
    assert "/run-" in report


@pytest.mark.docker
def test_reproduce_compares_the_recorded_mode(minimal_image: str, write_recipe: RecipeWriter,
                                              store: Path) -> None:
    recipe = write_recipe(minimal_image, "printf x > /out/r; chmod 755 /out/r")
    built = run_rebuild("build", recipe, "--json", store=store)
    assert built.code == 0, built.stderr
    assert built.json["artifacts"][0]["mode"] == "0755"
    same = run_rebuild("reproduce", "t@1.0.0", "--json", store=store)
    assert same.code == 0, same.stderr
    assert same.json["artifacts"][0]["mode"] == "0755"
    assert same.json["artifacts"][0]["recorded_mode"] == "0755"
    # The release records the mode (a layer annotation); a record that says 0600 is not met.
    release = built.json["manifest"]
    manifest = (store / "blobs" / "sha256" / release[7:]).read_text()
    assert '"dev.rebuild.mode":"0755"' in manifest
    repoint_blob(store, release, manifest.replace('"dev.rebuild.mode":"0755"',
                                                  '"dev.rebuild.mode":"0600"').encode())
    other = run_rebuild("reproduce", "t@1.0.0", "--json", store=store)
    assert other.code == 1, other.stderr
    [artifact] = other.json["artifacts"]
    assert artifact["match"] is False and artifact["differs"] == ["mode"]
    assert artifact["sha256"] == artifact["recorded"]
    assert "DIFFERS  r (mode)" in other.stderr


@pytest.mark.docker
def test_a_kept_setuid_output_is_not_setuid(minimal_image: str, write_recipe: RecipeWriter,
                                            store: Path, request: pytest.FixtureRequest
                                            ) -> None:
    script = "cp /bin/sh /out/tool && chmod 6777 /out/tool && mkdir /out/d && chmod 1777 /out/d"
    # Where another user can reach the kept copy (pytest's tmp_path is root's alone).
    shared = Path(tempfile.mkdtemp(prefix="rebuild-test-keep-"))
    shared.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(shared))
    kept = shared / "kept"
    result = run_rebuild("build", write_recipe(minimal_image, script, ["tool"]), "--keep",
                         kept, "--json", store=store)
    assert result.code == 0, result.stderr
    assert result.json["artifacts"][0]["mode"] == "6777"  # what the build made, recorded
    for run in ("a", "b"):
        mode = (kept / run / "tool").stat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), oct(mode)
        assert stat.S_IMODE((kept / run / "d").stat().st_mode) & 0o1002 == 0
    # Run by another user, the kept copy gives that user nothing more.
    ran = as_user(NOBODY, str(kept / "a" / "tool"), "-p", "-c", "id -u")
    assert ran.stdout.strip() == "65534", ran


@pytest.mark.docker
def test_other_users_cannot_reach_out_while_a_run_lasts(
        minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    script = ("cp /bin/sh /out/tool && chmod 4755 /out/tool && echo secret > /out/r && "
              "chmod 644 /out/r && sleep 15")
    recipe = write_recipe(minimal_image, script, ["r", "tool"])
    proc = subprocess.Popen([sys.executable, "-m", "rebuild", "--store", str(store), "build",
                             str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    try:
        outs = _running_outs(deadline=time.monotonic() + 60)
        assert len(outs) == 2, "both runs should be running with their outputs written"
        for out in outs:
            assert (out / "r").read_text() == "secret\n"  # there, for root
            parent = out.parent.stat()
            assert (parent.st_uid, stat.S_IMODE(parent.st_mode)) == (0, 0o700)
            for who in (NOBODY, BUILD_USER):
                for argv in (["cat", str(out / "r")], ["ls", str(out)],
                             [str(out / "tool"), "-c", "true"]):
                    denied = as_user(who, *argv)
                    assert denied.returncode != 0 and "Permission denied" in denied.stderr, (
                        who, argv, denied)
    finally:
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr


def _running_outs(deadline: float) -> list[Path]:
    """The host directories mounted at /out in this session's running containers, once each
    holds the build's output `r`."""
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["docker", "ps", "--format", '{{.ID}} {{.Label "dev.rebuild.session"}}'],
            capture_output=True, text=True, check=True).stdout.splitlines()
        ids = [line.split()[0] for line in listed if line.split()[1:2]
               and line.split()[1].startswith(SESSION_PREFIX)]
        outs = []
        for container in ids:
            mounts = subprocess.run(["docker", "inspect", "--format", "{{json .Mounts}}",
                                     container], capture_output=True, text=True, check=False)
            if mounts.returncode == 0:
                outs += [Path(m["Source"]) for m in json.loads(mounts.stdout)
                         if m["Destination"] == "/out"]
        if len(outs) == 2 and all((out / "r").exists() for out in outs):
            return outs
        time.sleep(0.2)
    return []
