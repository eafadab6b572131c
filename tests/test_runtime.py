"""Owners of leftovers: told dead only when provably dead; interruptions unwind after cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rebuild import runtime
from rebuild.errors import EnvironmentProblem
from rebuild.runtime import Owner, current_owner, is_dead

ROOT = Path(__file__).resolve().parent.parent


def dead_child_owner() -> Owner:
    child = subprocess.Popen(["sleep", "30"])
    owner = replace(current_owner(), pid=child.pid, start=runtime.process_start(child.pid) or 0)
    assert not is_dead(owner)
    child.kill()
    child.wait()
    return owner


def test_the_token_names_an_owner() -> None:
    here = current_owner()
    assert Owner.parse(here.token) == here
    assert here.pid == os.getpid()
    for bad in ("", "tmpabc", "blob-1234", here.token + "-x", "../" + here.token):
        assert Owner.parse(bad) is None


def test_dead_only_when_provably_dead() -> None:
    here = current_owner()
    assert not is_dead(here)
    assert is_dead(dead_child_owner())
    # a reused pid: same number, another start time
    assert is_dead(replace(here, start=here.start + 1))
    # this machine, an earlier boot: every process of that boot is gone
    assert is_dead(replace(here, boot="0" * 12, pid=999_999))
    # what cannot be judged from here counts as alive
    assert not is_dead(replace(here, machine="f" * 12, boot="0" * 12, pid=999_999))
    assert not is_dead(replace(here, pidns=here.pidns + 1, pid=999_999))


def test_orphan_dirs_are_those_of_dead_owners(tmp_path: Path) -> None:
    dead = tmp_path / dead_child_owner().token
    alive = tmp_path / current_owner().token
    other_machine = tmp_path / replace(current_owner(), machine="f" * 12, pid=1).token
    unnamed = tmp_path / "rebuild-abc"
    for path in (dead, alive, other_machine, unnamed):
        path.mkdir()
    assert runtime.orphan_dirs(tmp_path) == [dead]


def test_a_tree_with_a_mount_in_it_is_not_removed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (rebuild itself needs root)")
    tree = tmp_path / "tree"
    point = tree / "sub" / "mnt"
    point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        (point / "kept").write_text("behind a mount")
        assert runtime.mounts_under(tree) == [point]
        assert not runtime.remove_tree(tree)
        assert (point / "kept").exists()
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert runtime.mounts_under(tree) == []
    assert runtime.remove_tree(tree) and not tree.exists()


def test_the_runtime_directory_must_be_private(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv(runtime.RUNTIME_ENV, str(shared))
    with pytest.raises(EnvironmentProblem, match="writable only by it"):
        runtime.process_dir()


INTERRUPTED = """
import os, signal, sys, time
from rebuild import runtime
runtime.install_interrupt_handlers()
steps = []
try:
    try:
        with runtime.cleanup_section():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: already interrupted
            time.sleep(0.2)
            steps.append("cleanup finished")
    finally:
        steps.append("unwound")
except KeyboardInterrupt:
    steps.append(signal.Signals(runtime.interrupting_signal()).name)
print(" / ".join(steps))
"""


def test_sigterm_during_cleanup_waits_for_its_end_then_unwinds() -> None:
    result = subprocess.run([sys.executable, "-c", INTERRUPTED], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cleanup finished / unwound / SIGTERM"


def test_sighup_ends_the_cli_with_128_plus_the_signal(tmp_path: Path) -> None:
    # `rebuild lock` on a recipe that reads from a FIFO nobody writes blocks; SIGHUP ends it.
    fifo = tmp_path / "r.toml"
    os.mkfifo(fifo)
    env = {**os.environ, runtime.RUNTIME_ENV: str(tmp_path / "rt")}
    proc = subprocess.Popen([sys.executable, "-m", "rebuild", "lock", str(fifo)], cwd=ROOT,
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list((tmp_path / "rt").glob("*")):  # the process directory: it has started
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "interrupted (SIGHUP)" in err and "Traceback" not in err
    assert list((tmp_path / "rt").iterdir()) == []  # its process directory went with it


def test_remove_tree_unlinks_many_files_and_never_follows_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not part of the tree\n")
    tree = tmp_path / "tree"
    for sub in ("a", "a/b", "c"):
        (tree / sub).mkdir(parents=True)
        for i in range(runtime.UNLINKERS * 3):  # enough for the unlinkers to share
            (tree / sub / f"f{i}").write_text(f"{i}\n")
    (tree / "a" / "to-outside").symlink_to(outside)
    (tree / "c" / "file-link").symlink_to(outside / "keep")
    (tree / "c" / "fifo").mkdir()
    os.mkfifo(tree / "c" / "fifo" / "p")
    assert runtime.remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").read_text() == "not part of the tree\n"
    assert runtime.remove_tree(tree)  # already gone: nothing to do, and it is gone


LEAVER = """
import atexit, sys, threading, time
from rebuild import runtime
atexit.register(lambda: print("atexit ran", flush=True))
print("buffered", end=" ")
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", end=" "))).start()
runtime.leave(int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2])
"""


@pytest.mark.parametrize(("mode", "code", "out", "err", "status"), [
    ("plain", "0", "buffered atexit ran\n", "", 0),
    ("plain", "5", "buffered atexit ran\n", "", 5),
    ("plain", "no store", "buffered atexit ran\n", "no store\n", 1),
    ("thread", "4", "buffered thread done atexit ran\n", "", 4),
])
def test_leave_flushes_runs_atexit_and_keeps_the_code(mode: str, code: str, out: str, err: str,
                                                      status: int) -> None:
    """leave() skips only the teardown: buffered output, atexit handlers, the exit status
    and a running thread are all as sys.exit would leave them."""
    done = subprocess.run([sys.executable, "-c", LEAVER, mode, code], capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.stdout, done.stderr, done.returncode) == (out, err, status)
