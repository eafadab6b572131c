"""Faults in the middle of a build: SIGKILL, SIGTERM, SIGHUP, a dropped engine connection, and
`store gc` while a build reuses an old unreferenced blob. Real engine, real processes.

Each build runs with a runtime directory and a session prefix of its own, so what a killed
run leaves is told apart from the runs of anyone else using the engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, SESSION_PREFIX, RecipeWriter, run_rebuild

pytestmark = pytest.mark.docker

SLEEPY = "umask 022; sleep 300; echo > /out/r"
QUICK = "umask 022; echo quick > /out/r"


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A runtime directory of the test's own (traversable, as disorderfs needs)."""
    path = Path(tempfile.mkdtemp(prefix="rebuild-faults-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def build_env(runtime_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "REBUILD_RUNTIME_DIR": str(runtime_dir),
            "REBUILD_SESSION_PREFIX": f"{SESSION_PREFIX}fault-{uuid.uuid4().hex[:8]}-",
            **extra}


@pytest.fixture
def start_build() -> Iterator[Callable[[Path, Path, dict[str, str]], subprocess.Popen[str]]]:
    """`rebuild build` in the background; a build a failed test leaves running is stopped."""
    started: list[subprocess.Popen[str]] = []

    def start(recipe: Path, store: Path, env: dict[str, str]) -> subprocess.Popen[str]:
        started.append(subprocess.Popen(
            [sys.executable, "-m", "rebuild", "--store", str(store), "build", str(recipe)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=60)


StartBuild = Callable[[Path, Path, dict[str, str]], subprocess.Popen[str]]


def containers(prefix: str, *, running: bool = False) -> list[str]:
    listed = subprocess.run(["docker", "ps", *([] if running else ["-a"]), "--filter",
                             "label=dev.rebuild.session", "--format",
                             '{{.ID}} {{.Label "dev.rebuild.session"}}'],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [line.split()[0] for line in listed if line.split()[1].startswith(prefix)]


def wait_running(prefix: str, proc: subprocess.Popen[str], count: int = 2) -> None:
    deadline = time.monotonic() + 90
    while len(containers(prefix, running=True)) < count:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the runs did not start"
        time.sleep(0.2)


def mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(str(path) + "/")]


def leftovers(prefix: str, runtime_dir: Path) -> dict[str, list[str]]:
    return {"containers": containers(prefix), "mounts": mounts_under(runtime_dir),
            "workspaces": sorted(p.name for p in runtime_dir.iterdir())}


NOTHING: dict[str, list[str]] = {"containers": [], "mounts": [], "workspaces": []}


def assert_next_build_cleans_up(recipe: Path, store: Path, runtime_dir: Path,
                                dead_prefix: str) -> str:
    """Run the next build; afterwards nothing of the dead run remains. Returns its stderr."""
    nxt = run_rebuild("build", recipe, store=store, env=build_env(runtime_dir))
    assert nxt.code == 0, nxt.stderr
    assert leftovers(dead_prefix, runtime_dir) == NOTHING
    fsck = run_rebuild("store", "fsck", store=store)
    assert fsck.code == 0, fsck.stderr
    assert list((store / ".tmp").iterdir()) == []
    return nxt.stderr


def test_sigkill_mid_build_is_reaped_by_the_next_build(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, runtime_dir: Path,
        start_build: StartBuild) -> None:
    env = build_env(runtime_dir)
    proc = start_build(write_recipe(minimal_image, SLEEPY, timeout=600), store, env)
    wait_running(env["REBUILD_SESSION_PREFIX"], proc)
    proc.kill()
    proc.communicate(timeout=30)
    left = leftovers(env["REBUILD_SESSION_PREFIX"], runtime_dir)
    # What SIGKILL leaves: both containers, run b's disorderfs mount, the process directory.
    assert len(left["containers"]) == 2 and len(left["mounts"]) == 1, left
    assert [name.split("-")[3] for name in left["workspaces"]] == [str(proc.pid)]
    nxt = assert_next_build_cleans_up(write_recipe(minimal_image, QUICK, name="next"), store,
                                      runtime_dir, env["REBUILD_SESSION_PREFIX"])
    assert ("removed 2 container(s), 1 mount(s) and 1 workspace(s) and 0 temporary store "
            "file(s) left by killed rebuild processes") in nxt


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, runtime_dir: Path,
        signum: signal.Signals, start_build: StartBuild) -> None:
    env = build_env(runtime_dir)
    proc = start_build(write_recipe(minimal_image, SLEEPY, timeout=600), store, env)
    wait_running(env["REBUILD_SESSION_PREFIX"], proc)
    assert mounts_under(runtime_dir)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"interrupted ({signum.name})" in err
    assert "Traceback" not in err
    assert leftovers(env["REBUILD_SESSION_PREFIX"], runtime_dir) == NOTHING
    assert run_rebuild("store", "fsck", store=store).code == 0


def test_a_dropped_engine_connection_is_not_a_timeout(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, runtime_dir: Path,
        tmp_path: Path, start_build: StartBuild) -> None:
    socket_path = tmp_path / "engine.sock"
    proxy = subprocess.Popen([sys.executable, str(ROOT / "tests" / "engine_proxy.py"),
                              str(socket_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        env = build_env(runtime_dir, DOCKER_HOST=f"unix://{socket_path}")
        proc = start_build(write_recipe(minimal_image, SLEEPY, timeout=600), store, env)
        wait_running(env["REBUILD_SESSION_PREFIX"], proc)
    finally:
        proxy.kill()
        proxy.wait()
    started = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "lost the Docker engine connection" in err
    assert "timed out" not in err and "Traceback" not in err
    assert time.monotonic() - started < 60
    # The engine still runs the containers, which the build could no longer reach.
    assert len(containers(env["REBUILD_SESSION_PREFIX"])) == 2
    nxt = assert_next_build_cleans_up(write_recipe(minimal_image, QUICK, name="next"), store,
                                      runtime_dir, env["REBUILD_SESSION_PREFIX"])
    assert "removed 2 container(s)" in nxt


def test_gc_during_a_build_keeps_the_old_blob_it_reuses(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, runtime_dir: Path,
        start_build: StartBuild) -> None:
    first = run_rebuild("build", write_recipe(minimal_image, QUICK), "--json", store=store,
                        env=build_env(runtime_dir))
    assert first.code == 0, first.stderr
    index = json.loads((store / "index.json").read_bytes())
    inputs = next(m for m in index["manifests"]
                  if m["annotations"].get("dev.rebuild.kind") == "inputs")
    layers = json.loads((store / "blobs" / "sha256" / inputs["digest"][7:]).read_bytes())
    source = next(layer["digest"] for layer in layers["layers"]
                  if layer["annotations"]["org.opencontainers.image.title"] == "source.tar")
    source_blob = store / "blobs" / "sha256" / source[7:]
    # An old source archive nothing names any more: exactly what gc is for, between builds.
    index["manifests"] = [m for m in index["manifests"]
                          if m["annotations"].get("dev.rebuild.kind") == "image"]
    (store / "index.json").write_text(json.dumps(index))
    old = time.time() - 2 * 86400
    os.utime(source_blob, (old, old))
    dry = run_rebuild("store", "gc", "--dry-run", "--json", store=store)
    assert dry.code == 0, dry.stderr
    assert source in [r["digest"] for r in dry.json["removed"]]
    assert f"would remove {source}" in dry.stderr
    assert source_blob.exists()

    # The same source, built again (a slower command): it finds the archive in the store.
    env = build_env(runtime_dir)
    proc = start_build(write_recipe(minimal_image, "sleep 8; " + QUICK), store, env)
    wait_running(env["REBUILD_SESSION_PREFIX"], proc)
    gc = run_rebuild("store", "gc", "--json", store=store, env=build_env(runtime_dir))
    assert gc.code == 0, gc.stderr
    assert source not in [r["digest"] for r in gc.json["removed"]]
    assert gc.json["kept"]["leased"] >= 1
    assert source_blob.exists()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert run_rebuild("store", "fsck", store=store).code == 0
    again = run_rebuild("reproduce", "t@1.0.0", store=store, env=build_env(runtime_dir))
    assert again.code == 0, again.stderr
    # The lease ended with the build: the next gc sees no lease.
    assert list((store / ".leases").iterdir()) == []


def test_an_output_that_looks_like_a_manifest_does_not_break_gc(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, runtime_dir: Path) -> None:
    fake = ('{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
            '"layers":[{"digest":"sha256:' + "0" * 64 + '"}]}')
    script = f"umask 022; printf '%s' '{fake}' > /out/r"
    built = run_rebuild("build", write_recipe(minimal_image, script),
                        "--json", store=store, env=build_env(runtime_dir))
    assert built.code == 0, built.stderr
    assert (store / "blobs" / "sha256" / built.json["artifacts"][0]["sha256"]).read_text() == fake
    for _ in range(2):
        gc = run_rebuild("store", "gc", "--grace", "0", store=store)
        assert gc.code == 0, gc.stderr
    fsck = run_rebuild("store", "fsck", store=store)
    assert fsck.code == 0, fsck.stderr


def test_the_reaper_touches_only_what_dead_owners_left(minimal_image: str,
                                                       runtime_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from rebuild import runtime
    from rebuild.build.sandbox import OWNER_LABEL, SESSION_LABEL, connect, reap_orphans

    monkeypatch.setenv("REBUILD_RUNTIME_DIR", str(runtime_dir))
    here = runtime.current_owner()
    child = subprocess.Popen(["sleep", "60"])
    dead = replace(here, pid=child.pid, start=runtime.process_start(child.pid) or 0)
    child.kill()
    child.wait()
    owners = {"dead": dead, "alive": here,
              "other machine": replace(dead, machine="f" * 12),
              "other pid namespace": replace(dead, pidns=dead.pidns + 1)}
    prefix = f"{SESSION_PREFIX}reaper-{uuid.uuid4().hex[:8]}-"
    client = connect()
    made = {name: subprocess.run(
        ["docker", "run", "-d", "--network=none",
         f"--label={SESSION_LABEL}={prefix}{name.replace(' ', '-')}",
         f"--label={OWNER_LABEL}={owner.token}", minimal_image.rsplit("@", 1)[1], "sleep", "60"],
        capture_output=True, text=True, check=True).stdout.strip()
        for name, owner in owners.items()}
    for owner in owners.values():
        (runtime_dir / owner.token / "workspace-x").mkdir(parents=True)
    try:
        reaped = reap_orphans(client)
        assert reaped.containers >= 1 and reaped.workspaces == 1
        remaining = set(containers(prefix))
        assert made["dead"][:12] not in remaining
        assert {made[n][:12] for n in owners if n != "dead"} <= remaining
        assert sorted(p.name for p in runtime_dir.iterdir()) == sorted(
            o.token for n, o in owners.items() if n != "dead")
    finally:
        for container in made.values():
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
