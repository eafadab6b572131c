"""Who owns what a run leaves on the machine, and where it lives.

Every rebuild process is named by an `Owner` token (machine, boot, pid namespace, pid and the
process's start time). Its containers carry the token as a label, and its temporary files,
workspaces and disorderfs mounts live in a directory of the runtime directory named by the
token (`process_dir`), so that what a killed process left (SIGKILL leaves no chance to clean
up) is found by its name, never by guessing, and removed only once its owner is provably
dead: a live process, this machine's or another's, is never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from rebuild.errors import EnvironmentProblem

if TYPE_CHECKING:  # the thread pool loads only when a tree is removed (`show` < 200 ms)
    from concurrent.futures import ThreadPoolExecutor

RUNTIME_ENV = "REBUILD_RUNTIME_DIR"
_TOKEN = re.compile(r"^([0-9a-f]{12})-([0-9a-f]{12})-([0-9]+)-([0-9]+)-([0-9]+)$")
# The default runtime directory, fixed before the CLI points tempfile at a process directory.
_SYSTEM_TMP = tempfile.gettempdir()


@dataclass(frozen=True)
class Owner:
    """A process, named so that another process can tell whether it still runs."""

    machine: str  # 12 hex digits of /etc/machine-id (or of the host name without one)
    boot: str  # 12 hex digits of this boot's id: pids are only meaningful within a boot
    pidns: int  # the pid namespace's inode: pids are only meaningful within a namespace
    pid: int
    start: int  # the process's start time, in clock ticks after boot: pids get reused

    @property
    def token(self) -> str:
        return f"{self.machine}-{self.boot}-{self.pidns}-{self.pid}-{self.start}"

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        match = _TOKEN.match(token)
        if match is None:
            return None
        machine, boot, pidns, pid, start = match.groups()
        return cls(machine, boot, int(pidns), int(pid), int(start))


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """A process's start time (field 22 of /proc/PID/stat), or None when there is none."""
    stat_line = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses: count from the last ")".
    fields = stat_line.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


def current_owner() -> Owner:
    """This process (computed per pid: a forked child is another owner)."""
    return _owner_of(os.getpid())


@functools.cache
def _owner_of(pid: int) -> Owner:
    machine = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")
    machine = machine or "host:" + os.uname().nodename
    boot = _read("/proc/sys/kernel/random/boot_id").replace("-", "")
    if not boot:
        raise EnvironmentProblem("cannot read /proc/sys/kernel/random/boot_id: rebuild needs "
                                 "Linux with /proc mounted")
    start = process_start(pid)
    assert start is not None  # this very process
    return Owner(hashlib.sha256(machine.encode()).hexdigest()[:12], boot[:12],
                 Path("/proc/self/ns/pid").stat().st_ino, pid, start)


def is_dead(owner: Owner, here: Owner | None = None) -> bool:
    """True only when `owner` provably no longer runs; unknown owners count as alive."""
    here = here or current_owner()
    if owner.machine != here.machine:
        return False  # another machine's process (a shared engine or directory)
    if owner.boot != here.boot:
        return True  # this machine has rebooted since: every process of that boot is gone
    if owner.pidns != here.pidns:
        return False  # another pid namespace's pid means nothing here
    return process_start(owner.pid) != owner.start


# -- the runtime directory ------------------------------------------------------------------


def runtime_root() -> Path:
    """The directory that holds one directory per rebuild process (env REBUILD_RUNTIME_DIR)."""
    return Path(os.environ.get(RUNTIME_ENV) or Path(_SYSTEM_TMP) / "rebuild-runtime")


def _private_dir(path: Path) -> None:
    """Create `path` (mode 0711: disorderfs re-enters a workspace by path as the build's user,
    so every directory above one must be traversable) and check that nobody else could have
    planted it, since the reaper removes trees below it."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o711)
        path.chmod(0o711)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise EnvironmentProblem(f"the runtime directory {path} is not a directory owned by "
                                 f"uid {os.geteuid()} and writable only by it; remove it or "
                                 f"set {RUNTIME_ENV} to another directory")


def process_dir() -> Path:
    """This process's directory in the runtime directory, removed when the process exits."""
    return _process_dir(runtime_root(), current_owner().token)


@functools.cache
def _process_dir(root: Path, token: str) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    _private_dir(root)
    path = root / token
    _private_dir(path)
    atexit.register(remove_tree, path)
    return path


def orphan_dirs(root: Path | None = None) -> list[Path]:
    """The process directories whose owner is dead."""
    root = root or runtime_root()
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    here = current_owner()
    found = []
    for entry in entries:
        owner = Owner.parse(entry.name)
        if owner is not None and is_dead(owner, here) and entry.is_dir():
            found.append(entry)
    return found


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    prefix = os.path.realpath(path)
    found = []
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # mountinfo escapes blanks, tabs, newlines and backslashes as octal (\040 …).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


# Unlinking a file whose blocks are written waits for the disk where the file system is
# mounted with `discard` (ext4 discards the freed blocks synchronously: about a millisecond
# on a busy virtual disk): 20,000 outputs of each run took a minute to remove one by one,
# two seconds with this many unlinks in flight.
UNLINKERS = 16


def remove_tree(path: Path) -> bool:
    """Remove a directory tree unless something is still mounted in it (removing files
    through a mount would reach whatever it shows); True when it is gone.

    As `shutil.rmtree` does, directories are entered by descriptor, never through a link;
    a directory's files are unlinked `UNLINKERS` at a time."""
    if mounts_under(path):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # gone, or not a directory: rmtree's own handling (and its errors ignored)
        shutil.rmtree(path, ignore_errors=True)
        return not path.exists()
    try:
        with os.scandir(fd) as listing:
            empty = next(listing, None) is None
        if not empty:  # an empty one (a `show`'s runtime directory) needs no threads
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(UNLINKERS, thread_name_prefix="rebuild-rm") as pool:
                _remove_contents(fd, pool)
    except RuntimeError:  # at interpreter exit no thread can start: one at a time
        _remove_contents(fd, None)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.rmdir()
    shutil.rmtree(path, ignore_errors=True)  # whatever appeared meanwhile
    return not path.exists()


def _remove_contents(fd: int, pool: ThreadPoolExecutor | None) -> None:
    try:
        with os.scandir(fd) as listing:
            entries = list(listing)
    except OSError:
        return
    files = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            files.append(entry.name)
            continue
        try:
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            files.append(entry.name)  # replaced by a file or a link since: unlinked as one
            continue
        try:
            _remove_contents(sub, pool)
        finally:
            os.close(sub)
        with contextlib.suppress(OSError):
            os.rmdir(entry.name, dir_fd=fd)

    def unlink(name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=fd)

    if pool is None or len(files) < UNLINKERS:
        for name in files:
            unlink(name)
    else:
        for _ in pool.map(unlink, files):
            pass


# -- interruptions ---------------------------------------------------------------------------

# What a CI cancellation (SIGTERM, SIGHUP) or Ctrl-C (SIGINT) does: the first one unwinds the
# main thread as KeyboardInterrupt, so every `finally` and `with` removes what it made; later
# ones are ignored so as not to break that cleanup, and one arriving during a cleanup section
# waits for its end.
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state: dict[str, int] = {"depth": 0, "pending": 0, "signal": 0}


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _state["signal"] or _state["pending"]:
        return
    if _state["depth"]:
        _state["pending"] = signum
        return
    _state["signal"] = signum
    raise KeyboardInterrupt


def leave(code: int | str | None) -> NoReturn:
    """End the process as `sys.exit(code)` would, without the interpreter's teardown.

    Freeing every object of a few hundred modules one by one took a build 90 ms after its
    last write. The atexit handlers still run (this module's removal of the process
    directory among them) and the standard streams are flushed; only what the kernel frees
    anyway is skipped. With another thread still running, the normal exit joins it first."""
    if threading.active_count() > 1:
        sys.exit(code)
    if isinstance(code, str):  # as SystemExit does: the message, then exit 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe has nothing to flush to
            stream.flush()
    os._exit(code or 0)


def install_interrupt_handlers() -> None:
    """Turn SIGTERM and SIGHUP into the unwinding Ctrl-C gives (main thread only)."""
    for signum in INTERRUPTS:
        signal.signal(signum, _on_signal)


def interrupting_signal() -> int:
    """The signal that interrupted this process (0: none did, or no handler was installed)."""
    return _state["signal"]


@contextlib.contextmanager
def cleanup_section() -> Iterator[None]:
    """A stretch of cleanup that an interruption must not cut short; it is delivered after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread only
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if not _state["depth"] and pending:
            _state["pending"] = 0
            _state["signal"] = pending
            raise KeyboardInterrupt
