"""The sandbox: the only module that talks to the Docker engine.

A `Sandbox` runs `RunPlan`s in containers with no network, a read-only root, all capabilities
dropped, no-new-privileges, a non-root user, memory, CPU and pids limits, and the recipe's
timeout. The source is extracted afresh for every run into a directory of its own (never the
caller's tree); `/out` is an empty directory of its own. Containers are removed when a run
ends, and every container the sandbox started is removed when it closes, so a failure, a
timeout or Ctrl-C leaves nothing behind. Each run can be shown as the equivalent `docker run`.

Host paths: a build can read the host path of every bind mount (/proc/self/mountinfo). Each
run therefore gets a directory of its own with a random name, holding everything mounted into
it, so that a build that embeds such a path differs between runs A and B (the twin check
catches it) instead of passing and failing `reproduce` later. Its `/out` sits under a 0700
directory owned by root: the container reaches it through the bind mount, while no other
user of the host can reach what the build leaves there (a setuid file, say) while it runs.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
import docker.errors
import requests.exceptions

from rebuild.errors import BuildFailed, EnvironmentProblem
from rebuild.build.plan import FAKETIME_LIB, LOCALE_DIR, OUT_DIR, WHEELS_DIR, RunPlan
from rebuild.build.variations import BY_NAME

SESSION_LABEL = "dev.rebuild.session"
# Locales compiled on the host and mounted read-only (LOCPATH), so that the locale variation
# takes effect in images that ship no locale data (design.md: minimal images).
LOCALES = (str(BY_NAME["locale"].changes["locale"]),)


@dataclass(frozen=True)
class PreparedRun:
    run_dir: Path
    out: Path
    mount: Path | None  # the disorderfs mount over the source, when file_order varies
    kwargs: dict[str, Any]  # the container's create arguments


@dataclass(frozen=True)
class RunResult:
    name: str
    exit_code: int
    log: bytes
    out_dir: Path
    timed_out: bool
    seconds: float


def connect() -> Any:
    """A Docker client, or an error that says how to start the engine (exit 3)."""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EnvironmentProblem(
            f"the Docker engine at {host} is unreachable ({exc.__class__.__name__}); start it "
            "(`make engine`, or `setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &`) or "
            "point DOCKER_HOST at a running engine") from None
    return client


def find_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EnvironmentProblem(f"{name} is not installed; install it: "
                                 f"apt-get install -y {package}")
    return path


@functools.cache
def faketime_library() -> Path:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found:
        raise EnvironmentProblem("libfaketime is not installed; install it: "
                                 "apt-get install -y faketime")
    return found[0]


def compile_locales(cache: Path) -> Path:
    """Compile the locales the variations use, once per host glibc, into `cache`."""
    version = subprocess.run(["ldd", "--version"], capture_output=True, text=True,
                             check=False).stdout.split("\n", 1)[0].split()[-1:] or ["unknown"]
    target = cache / f"locale-glibc-{version[0]}"
    if target.is_dir():
        return target
    localedef = find_tool("localedef", "libc-bin locales")
    staging = Path(tempfile.mkdtemp(prefix="locale-", dir=cache))
    for locale in LOCALES:
        lang, _, charset = locale.partition(".")
        result = subprocess.run([localedef, "-i", lang, "-f", charset, str(staging / locale)],
                                capture_output=True, text=True, check=False)
        if not (staging / locale).is_dir():
            raise EnvironmentProblem(f"localedef could not compile {locale}: "
                                     f"{result.stderr.strip()}; apt-get install -y locales")
    staging.chmod(0o755)
    try:
        staging.rename(target)
    except OSError:  # another process won the race: its copy is as good as ours
        shutil.rmtree(staging)
    return target


def has_image(client: Any, image_id: str) -> bool:
    try:
        return str(client.images.get(image_id).id) == image_id
    except docker.errors.ImageNotFound:
        return False


def load_image(client: Any, archive: Path) -> str:
    """`docker load` a docker-archive; returns the loaded image id."""
    with archive.open("rb") as f:
        images = client.images.load(f)
    return str(images[0].id)


class Sandbox:
    """Runs plans in throw-away containers; close it (a `with` block) to remove them all."""

    def __init__(self, client: Any, *, cache_dir: Path,
                 debug: Callable[[str], None] = lambda _: None) -> None:
        self.client = client
        # The label that finds every container of this sandbox; a caller may prefix it to
        # find its own among other users of the engine (the test suite does).
        self.session = os.environ.get("REBUILD_SESSION_PREFIX", "") + uuid.uuid4().hex
        self.debug = debug
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Inputs shared by the runs (the source tar, exported wheels); never mounted as is.
        self.workspace = Path(tempfile.mkdtemp(prefix="rebuild-"))
        self.faketime = faketime_library()
        self.locales = compile_locales(cache_dir)
        self._mounts: list[Path] = []
        self._run_dirs: list[Path] = []

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            for container in self.client.containers.list(
                    all=True, filters={"label": f"{SESSION_LABEL}={self.session}"}):
                _remove(container)
        except docker.errors.DockerException:
            pass
        for mount in self._mounts:
            _unmount(mount)
        for run_dir in self._run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(self.workspace, ignore_errors=True)

    # -- runs -----------------------------------------------------------------------------

    def run(self, plan: RunPlan, source_tar: Path, *, outputs: Path | None = None,
            wheels: Path | None = None) -> RunResult:
        """Run one plan on a fresh copy of the source; outputs stay in `RunResult.out_dir`.

        With `outputs` (a finished run's /out), that is mounted read-only at /out instead:
        how a recipe's tests see the artifacts they check. `wheels` (the wheels and the lock
        of a python_lock) is mounted read-only at WHEELS_DIR for the plan's venv.
        """
        prepared = self.prepare(plan, source_tar, outputs=outputs, wheels=wheels)
        kwargs, out = prepared.kwargs, prepared.out
        self.debug(f"run {plan.name}: {docker_run_line(kwargs)}")
        started = time.monotonic()
        container = self.client.containers.create(**kwargs)
        timed_out = False
        try:
            container.start()
            try:
                status = container.wait(timeout=plan.timeout)
                exit_code = int(status.get("StatusCode", -1))
            except requests.exceptions.RequestException:
                # docker-py signals a wait timeout as a requests error, not a docker one.
                timed_out, exit_code = True, -1
                container.kill()
            log = bytes(container.logs(stdout=True, stderr=True))
        finally:
            _remove(container)
            self.release(prepared)
        return RunResult(plan.name, exit_code, log, out, timed_out,
                         time.monotonic() - started)

    def prepare(self, plan: RunPlan, source_tar: Path, *, outputs: Path | None = None,
                wheels: Path | None = None) -> PreparedRun:
        """A run's directories (a fresh source copy, /out, the disorderfs mount) and its
        container arguments; `release` undoes the mount."""
        settings = plan.settings
        # Random per run, not under the workspace: see the module docstring (host paths).
        run_dir = Path(tempfile.mkdtemp(prefix="rebuild-run-"))
        self._run_dirs.append(run_dir)
        run_dir.chmod(0o711)
        # disorderfs re-enters the source by path as the build's user: its parent is that
        # user's alone. Everything else is mounted from `private` (root, 0700).
        tree, private = run_dir / "build", run_dir / "private"
        for directory, owner in ((tree, (settings.uid, settings.gid)), (private, (0, 0))):
            directory.mkdir()
            os.chown(directory, *owner)
            directory.chmod(0o700)
        src, out = tree / "src", outputs or private / "out"
        _extract_owned(source_tar, src, settings.uid, settings.gid)
        if outputs is None:
            out.mkdir()
            os.chown(out, settings.uid, settings.gid)
            out.chmod(0o755)
        mount = None
        if settings.shuffle_dirents:
            mount = private / "shuffled"
            mount.mkdir()
            _mount_disorderfs(src, mount)
            self._mounts.append(mount)
        locales = _link_tree(self.locales, private / "locale")
        kwargs = self._container_args(plan, mount or src, out, locales,
                                      writable_out=outputs is None)
        if wheels is not None:
            kwargs["volumes"][str(_link_tree(wheels, private / "wheels"))] = {
                "bind": WHEELS_DIR, "mode": "ro"}
        return PreparedRun(run_dir, out, mount, kwargs)

    def release(self, prepared: PreparedRun) -> None:
        if prepared.mount is not None:
            _unmount(prepared.mount)
            self._mounts.remove(prepared.mount)

    def _container_args(self, plan: RunPlan, build_dir: Path, out: Path, locales: Path, *,
                        writable_out: bool = True) -> dict[str, Any]:
        s = plan.settings
        tmpfs_opts = "rw,exec,nosuid,nodev,size=1g,mode=1777"
        return {
            "image": plan.image.rsplit("@", 1)[1],
            "command": list(plan.argv),
            "user": plan.user,
            "environment": dict(plan.env),
            "hostname": s.hostname,
            "domainname": s.domainname,
            "working_dir": s.build_path,
            "network_mode": "none",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": plan.memory,
            "memswap_limit": plan.memory,
            "pids_limit": plan.pids_limit,
            "cpuset_cpus": s.cpuset,
            "tmpfs": {"/tmp": tmpfs_opts, s.home: tmpfs_opts},
            "volumes": {
                str(build_dir): {"bind": s.build_path, "mode": "rw"},
                str(out): {"bind": OUT_DIR, "mode": "rw" if writable_out else "ro"},
                str(self.faketime): {"bind": FAKETIME_LIB, "mode": "ro"},
                str(locales): {"bind": LOCALE_DIR, "mode": "ro"},
            },
            "labels": {SESSION_LABEL: self.session},
            "detach": True,
        }


def docker_run_line(kwargs: dict[str, Any]) -> str:
    """The `docker run` command equivalent to a container's create arguments."""
    args = ["docker", "run", "--rm", f"--network={kwargs['network_mode']}", "--read-only",
            "--cap-drop=ALL", "--security-opt=no-new-privileges",
            f"--user={kwargs['user']}", f"--hostname={kwargs['hostname']}",
            f"--domainname={kwargs['domainname']}", f"--workdir={kwargs['working_dir']}",
            f"--memory={kwargs['mem_limit']}", f"--memory-swap={kwargs['memswap_limit']}",
            f"--pids-limit={kwargs['pids_limit']}"]
    if kwargs["cpuset_cpus"] is not None:
        args.append(f"--cpuset-cpus={kwargs['cpuset_cpus']}")
    args += [f"--tmpfs={path}:{opts}" for path, opts in kwargs["tmpfs"].items()]
    args += [f"--volume={host}:{m['bind']}:{m['mode']}" for host, m in kwargs["volumes"].items()]
    args += [f"--env={key}={value}" for key, value in sorted(kwargs["environment"].items())]
    return shlex.join([*args, kwargs["image"], *kwargs["command"]])


def _link_tree(source: Path, dest: Path) -> Path:
    """A copy of `source` at `dest`, hard-linked where the file system allows."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link)
    return dest


def _extract_owned(source_tar: Path, dest: Path, uid: int, gid: int) -> None:
    def owned(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        safe = tarfile.data_filter(member, path)
        return None if safe is None else safe.replace(uid=uid, gid=gid, uname="", gname="")

    dest.mkdir()
    with tarfile.open(source_tar) as tar:
        tar.extractall(dest, numeric_owner=True, filter=owned)  # noqa: S202 (data filter)
    os.chown(dest, uid, gid)


def _mount_disorderfs(src: Path, mountpoint: Path) -> None:
    disorderfs = find_tool("disorderfs", "disorderfs")
    # --multi-user lets the non-root build set file times; allow_other lets it enter at all.
    result = subprocess.run(
        [disorderfs, "--shuffle-dirents=yes", "--multi-user=yes", "-o", "allow_other",
         str(src), str(mountpoint)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EnvironmentProblem(f"disorderfs could not mount the build directory: "
                                 f"{result.stderr.strip()}; it needs /dev/fuse and root")


def _unmount(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint):
        for command in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount", "-l"]):
            if shutil.which(command[0]) and subprocess.run(
                    [*command, str(mountpoint)], capture_output=True, check=False
            ).returncode == 0:
                return


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            raise


def require_success(result: RunResult, what: str) -> None:
    """Turn a failed or timed-out run into exit 4 with the tail of its log."""
    if result.timed_out:
        raise BuildFailed(f"{what} (run {result.name}) timed out after "
                          f"{result.seconds:.0f} s; raise [build] timeout or fix the build")
    if result.exit_code != 0:
        tail = result.log.decode(errors="replace").strip().splitlines()[-15:]
        raise BuildFailed(f"{what} (run {result.name}) exited with {result.exit_code}:\n  "
                          + "\n  ".join(tail))
