"""The sandbox holds: no network, no host secrets, a read-only root, no privileges, limits."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SESSION_PREFIX, RecipeWriter, run_rebuild

pytestmark = pytest.mark.docker


def artifact(store: Path, result: dict, name: str) -> str:  # type: ignore[type-arg]
    sha = next(a["sha256"] for a in result["artifacts"] if a["name"] == name)
    return (store / "blobs" / "sha256" / sha).read_text()


@pytest.fixture
def host_server() -> tuple[int, list[str]]:
    """A TCP server on the host (all addresses, loopback included) that records connections."""
    seen: list[str] = []
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            seen.append(peer[0])
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


def test_no_network_but_lo(minimal_image: str, write_recipe: RecipeWriter, store: Path,
                           host_server: tuple[int, list[str]]) -> None:
    port, seen = host_server
    gateway = "172.17.0.1"  # the host, as seen from Docker's default bridge
    script = (
        "umask 022 && sed 1,2d /proc/net/dev | cut -d: -f1 | tr -d ' ' > /out/ifaces; "
        f"for host in 127.0.0.1 {gateway}; do "
        f"if timeout 5 bash -c \"exec 3<>/dev/tcp/$host/{port}\" 2>/dev/null; "
        "then echo \"$host connected\"; else echo \"$host refused\"; fi; done > /out/net")
    result = run_rebuild("build", write_recipe(minimal_image, script, ["ifaces", "net"]),
                         "--json", store=store)
    assert result.code == 0, result.stderr
    assert artifact(store, result.json, "ifaces").split() == ["lo"]
    assert artifact(store, result.json, "net").split() == [
        "127.0.0.1", "refused", gateway, "refused"]
    assert seen == []


def test_caller_environment_does_not_leak(minimal_image: str, write_recipe: RecipeWriter,
                                          store: Path) -> None:
    secret = "s3cr3t-value-from-the-caller"
    result = run_rebuild("build", write_recipe(minimal_image, "env | sort > /out/r", vary=["cpus"]),
                         "--json",
                         store=store, env={"REBUILD_TEST_SECRET": secret, "AWS_SECRET": secret})
    assert result.code == 0, result.stderr
    env = artifact(store, result.json, "r")
    assert secret not in env
    names = {line.split("=", 1)[0] for line in env.splitlines()}
    assert "SOURCE_DATE_EPOCH=1700000000" in env.splitlines()
    assert names <= {"PATH", "HOME", "SOURCE_DATE_EPOCH", "TZ", "LANG", "LC_ALL", "LOCPATH",
                     "LD_PRELOAD", "FAKETIME_TIMESTAMP_FILE", "FAKETIME_DONT_FAKE_MONOTONIC",
                     "FAKETIME_SHARED",  # set by libfaketime itself for child processes
                     "HOSTNAME", "PWD", "SHLVL", "_", "OLDPWD"}


def test_writes_outside_out_and_tmp_fail(minimal_image: str, write_recipe: RecipeWriter,
                                         store: Path) -> None:
    targets = ["/etc/escape", "/usr/escape", "/escape", "/var/escape", "/root/escape",
               "/tmp/ok", "/out/ok", "./ok", "$HOME/ok"]
    script = "{ " + "; ".join(f'if touch {t} 2>/dev/null; then echo "{t} written"; '
                              f'else echo "{t} refused"; fi' for t in targets) + "; } > /out/r"
    script += "; id -u >> /out/r; grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status >> /out/r"
    result = run_rebuild("build", write_recipe(minimal_image, script, vary=["cpus"]), "--json",
                         store=store)
    assert result.code == 0, result.stderr
    lines = artifact(store, result.json, "r").splitlines()
    assert lines[:9] == ["/etc/escape refused", "/usr/escape refused", "/escape refused",
                         "/var/escape refused", "/root/escape refused", "/tmp/ok written",
                         "/out/ok written", "./ok written", "/home/build/ok written"]
    assert lines[9] == "1000"
    assert [line.split()[1] for line in lines[10:]] == ["0000000000000000"] * 3


def test_memory_limit_stops_a_greedy_build(minimal_image: str, write_recipe: RecipeWriter,
                                           store: Path) -> None:
    # memory = "512m" in the test recipes: a 1 GiB buffer cannot be had.
    script = "dd if=/dev/zero of=/dev/null bs=1G count=1 && echo done > /out/r"
    result = run_rebuild("build", write_recipe(minimal_image, script, vary=["cpus"]), store=store)
    assert result.code == 4, result.stderr


def test_pids_limit(minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    script = ("{ cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; } "
              "> /out/r")
    result = run_rebuild("build", write_recipe(minimal_image, script, vary=["cpus"]), "--json",
                         store=store)
    assert result.code == 0, result.stderr
    assert artifact(store, result.json, "r").strip() == "1024"


def test_source_tree_is_never_written(minimal_image: str, write_recipe: RecipeWriter,
                                      store: Path, tmp_path: Path) -> None:
    recipe = write_recipe(minimal_image, "echo changed > input.txt && rm -f other && "
                          "cp input.txt /out/r", files={"input.txt": "original\n",
                                                        "other": "x\n"})
    result = run_rebuild("build", recipe, store=store)
    assert result.code == 0, result.stderr
    assert (tmp_path / "src-t" / "input.txt").read_text() == "original\n"
    assert (tmp_path / "src-t" / "other").exists()


def test_ctrl_c_removes_containers(minimal_image: str, write_recipe: RecipeWriter,
                                   store: Path) -> None:
    recipe = write_recipe(minimal_image, "sleep 120; echo > /out/r", timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "rebuild", "--store", str(store), "build",
                             str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = subprocess.run(["docker", "ps", "--format", '{{.Label "dev.rebuild.session"}}'],
                                capture_output=True, text=True, check=True).stdout.split()
        running = [s for s in listed if s.startswith(SESSION_PREFIX)]
        if len(running) == 2:
            break
        time.sleep(0.2)
    assert len(running) == 2, "both runs should be running"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    # the autouse fixture checks that no container is left
