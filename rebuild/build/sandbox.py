"""The sandbox: the only module that talks to the Docker engine.

A `Sandbox` runs `RunPlan`s in containers with no network, a read-only root, all capabilities
dropped, no-new-privileges, a non-root user, memory, CPU and pids limits, and the recipe's
timeout. The source is extracted afresh for every run into a directory of its own (never the
caller's tree); `/out` is an empty directory of its own. Containers are removed when a run
ends, and every container the sandbox started is removed when it closes, so a failure, a
timeout, Ctrl-C, SIGTERM or SIGHUP leaves nothing behind. Each run can be shown as the
equivalent `docker run`.

What a killed process (SIGKILL) could not remove is found by its owner (rebuild.runtime):
containers carry the owner's token as a label, workspaces and disorderfs mounts live in the
owner's process directory; `reap_orphans` removes those of dead owners only.

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
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rebuild import runtime
from rebuild.build.engine import APIError, Engine, EngineError, NotFound, ReadTimeout, Unreachable
from rebuild.build.limits import HeadTail
from rebuild.build.network import network_hint
from rebuild.build.plan import (
    CLOCK_DIR,
    FAKETIME_LIB,
    LOCALE_DIR,
    NPM_DIR,
    OUT_DIR,
    RESULTS_DIR,
    WHEELS_DIR,
    RunPlan,
)
from rebuild.build.recipe import memory_bytes
from rebuild.build.variations import BY_NAME
from rebuild.errors import BuildFailed, EnvironmentProblem

SESSION_LABEL = "dev.rebuild.session"
OWNER_LABEL = "dev.rebuild.owner"  # runtime.Owner token of the process that made a container
# An engine that cannot be reached, or that refused a call.
ENGINE_ERRORS = (EngineError,)
# Locales compiled on the host and mounted read-only (LOCPATH), so that the locale variation
# takes effect in images that ship no locale data (design.md: minimal images).
LOCALES = (str(BY_NAME["locale"].changes["locale"]),)


@dataclass(frozen=True)
class PreparedRun:
    run_dir: Path
    out: Path
    mount: Path | None  # the disorderfs mount over the source, when file_order varies
    config: dict[str, Any]  # the container's create arguments (the Engine API's)
    results: Path | None = None  # the host directory mounted at /results (a test suite's)
    # Copy mode (an engine that does not see this host's files): what put_archive fills
    # the container's anonymous volumes with, instead of bind mounts.
    copies: tuple[Copy, ...] | None = None


@dataclass(frozen=True)
class Copy:
    """A host file or directory shipped into an anonymous volume of the container."""

    source: Path
    target: str  # where the bind mount would have put it
    read_only: bool  # shipped root-owned and not writable by the build's user

    @property
    def volume(self) -> str:
        """The volume's mount point: a file goes into a volume over its directory."""
        return self.target if self.source.is_dir() else str(Path(self.target).parent)


@dataclass(frozen=True)
class Reaped:
    """What `reap_orphans` removed of dead rebuild processes."""

    containers: int = 0
    mounts: int = 0
    workspaces: int = 0

    def describe(self) -> str:
        return (f"{self.containers} container(s), {self.mounts} mount(s) and "
                f"{self.workspaces} workspace(s)")


@dataclass(frozen=True)
class RunResult:
    name: str
    exit_code: int
    log: bytes
    out_dir: Path
    timed_out: bool
    seconds: float
    # A test suite's /results, on the host: read it before the sandbox closes (which removes
    # it), and without following links (the run's user wrote it).
    results_dir: Path | None = None


def connect(host: str | None = None) -> Engine:
    """The Docker engine of DOCKER_HOST, or of `host` (a DOCKER_HOST value such as
    unix:///path/docker.sock or tcp://machine:2376), or an error that says how to start the
    engine (exit 3)."""
    try:
        client = Engine(host)
        client.ping()
    except ENGINE_ERRORS as exc:
        if host is not None:
            raise EnvironmentProblem(
                f"the Docker engine at {host} (--engine-b) is unreachable "
                f"({exc.__class__.__name__}); start it, or name a running engine as "
                "DOCKER_HOST would (unix:///path/docker.sock, tcp://host:port)") from None
        raise EnvironmentProblem(
            f"the Docker engine at {engine_host()} is unreachable ({exc.__class__.__name__}); "
            "start it (`make engine`, or `setsid dockerd >/var/log/dockerd.log 2>&1 "
            "</dev/null &`) or point DOCKER_HOST at a running engine") from None
    return client


def engine_facts(client: Engine) -> dict[str, Any]:
    """What `docker info` says about an engine, for the record of a build whose runs ran on
    two engines: its id and name, version, kernel, OS, architecture, CPUs and labels. No
    address or path: the record names the engine, not where this host reached it."""
    try:
        info = client.info()
    except ENGINE_ERRORS as exc:
        raise engine_lost("docker info", exc) from None
    return {"id": str(info.get("ID", "")), "name": str(info.get("Name", "")),
            "version": str(info.get("ServerVersion", "")),
            "kernel": str(info.get("KernelVersion", "")),
            "os": str(info.get("OperatingSystem", "")), "os_type": str(info.get("OSType", "")),
            "arch": str(info.get("Architecture", "")), "cpus": int(info.get("NCPU") or 0),
            "labels": sorted(str(label) for label in info.get("Labels") or [])}


def engine_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def engine_lost(what: str, exc: BaseException) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"lost the Docker engine connection ({engine_host()}) during {what} "
        f"({exc.__class__.__name__}): the engine stopped or the connection to it was cut; "
        "check `docker info` and build again (the next build or `rebuild store gc` removes "
        "what this one left)")


def reap_orphans(client: Engine | None) -> Reaped:
    """Remove the containers (when `client` is given), disorderfs mounts and workspaces of
    dead rebuild processes.

    Only what names its owner (the owner label, the process directory) and whose owner is
    provably dead (runtime.is_dead) is touched: other users' live builds are left alone.
    """
    here = runtime.current_owner()
    containers = mounts = workspaces = 0
    try:
        listed = [] if client is None else client.containers(OWNER_LABEL)
    except ENGINE_ERRORS:
        listed = []
    for container in listed:
        owner = runtime.Owner.parse(str((container.get("Labels") or {}).get(OWNER_LABEL, "")))
        if client is not None and owner is not None and runtime.is_dead(owner, here):
            with suppress(*ENGINE_ERRORS):  # else found again next time
                _remove(client, container["Id"])
                containers += 1
    # Containers first: they hold bind mounts of the workspaces.
    for directory in runtime.orphan_dirs():
        for mount in runtime.mounts_under(directory):
            mounts += _unmount(mount)
        workspaces += runtime.remove_tree(directory)
    return Reaped(containers, mounts, workspaces)


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


def has_image(client: Engine, image_id: str) -> bool:
    return client.image_id(image_id) == image_id


def load_image(client: Engine, archive: Path) -> str:
    """`docker load` a docker-archive; returns the loaded image id."""
    return client.load(archive)


class Sandbox:
    """Runs plans in throw-away containers; close it (a `with` block) to remove them all."""

    def __init__(self, client: Engine, *, cache_dir: Path,
                 debug: Callable[[str], None] = lambda _: None,
                 engines: Mapping[str, Engine] | None = None,
                 copy_runs: Collection[str] = (),
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.client = client
        # Runs on another engine than `client`, by run name (`build --engine-b`: {"b": …}).
        # Such a run's bind mounts must exist on that engine's host: they are strict mounts,
        # refused by an engine that cannot see them, never an empty directory in their place.
        # Such a refusal switches the run to copy mode, as `copy_runs` chooses it up front:
        # its inputs go into anonymous volumes by put_archive and /out comes back by
        # get_archive, for an engine on another machine (a remote DOCKER_HOST).
        self.engines = dict(engines or {})
        self.copy_runs = set(copy_runs)
        self.log = log
        # The label that finds every container of this sandbox; a caller may prefix it to
        # find its own among other users of the engine (the test suite does).
        self.session = os.environ.get("REBUILD_SESSION_PREFIX", "") + uuid.uuid4().hex
        self.debug = debug
        self.owner = runtime.current_owner()
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.faketime = faketime_library()
        self.locales = compile_locales(cache_dir)
        # In this process's runtime directory, not the cache: disorderfs re-enters the source
        # by path as the build's user, so every directory above it must be traversable; and
        # whatever a killed process leaves there is found by the directory's name. It holds
        # the inputs shared by the runs (the source tar, exported wheels), never mounted as is.
        self.workspace = Path(tempfile.mkdtemp(prefix="workspace-", dir=runtime.process_dir()))
        self.workspace.chmod(0o711)
        self._mounts: list[Path] = []
        # Runs happen in worker threads while the main thread may close the sandbox (an
        # interruption): no run may start a container or a mount once it is closed.
        self._state = threading.Condition()
        self._closed = False
        self._active = 0
        self._run_dirs: list[Path] = []

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove every container, mount and directory of the sandbox (idempotent)."""
        with runtime.cleanup_section():
            with self._state:
                self._closed = True
            listed = []
            for client in self._clients():
                # An engine that is gone: reap_orphans finds its containers by their owner.
                with suppress(*ENGINE_ERRORS):
                    listed += [(client, c["Id"]) for c in
                               client.containers(f"{SESSION_LABEL}={self.session}")]
            for client, container in listed:
                with suppress(*ENGINE_ERRORS):
                    _remove(client, container)
            # Removing the containers ends the runs' waits; let them finish their cleanup.
            with self._state:
                self._state.wait_for(lambda: self._active == 0, timeout=120)
                mounts, self._mounts = self._mounts, []
            for mount in mounts:
                _unmount(mount)
            for run_dir in self._run_dirs:
                runtime.remove_tree(run_dir)
            runtime.remove_tree(self.workspace)

    def _clients(self) -> list[Engine]:
        return [self.client, *(c for c in self.engines.values() if c is not self.client)]

    def _client_for(self, run: str) -> Engine:
        return self.engines.get(run, self.client)

    @contextmanager
    def _in_flight(self, name: str) -> Iterator[None]:
        with self._state:
            self._check_open(name)
            self._active += 1
        try:
            yield
        finally:
            with self._state:
                self._active -= 1
                self._state.notify_all()

    def _check_open(self, name: str) -> None:
        if self._closed:
            raise BuildFailed(f"run {name} was not started: the build was interrupted")

    # -- runs -----------------------------------------------------------------------------

    def run(self, plan: RunPlan, source_tar: Path, *, outputs: Path | None = None,
            wheels: Path | None = None, npm: Path | None = None,
            results: bool = False) -> RunResult:
        """Run one plan on a fresh copy of the source; outputs stay in `RunResult.out_dir`.

        With `outputs` (a finished run's /out), that is mounted read-only at /out instead:
        how a recipe's tests see the artifacts they check. `wheels` (the wheels and the lock
        of a python_lock) is mounted read-only at WHEELS_DIR for the plan's venv; `npm` (an
        npm_lock's offline cache) at NPM_DIR. `results`: an empty directory the run's user may
        write is mounted at RESULTS_DIR (a `[[test]]` suite's JUnit XML), kept in
        `RunResult.results_dir`.
        """
        with self._in_flight(plan.name):
            prepared = self.prepare(plan, source_tar, outputs=outputs, wheels=wheels, npm=npm,
                                    results=results)
            try:
                return self._run_prepared(plan, prepared)
            except Unreachable as exc:
                raise engine_lost(f"run {plan.name}", exc) from None
            except APIError as exc:
                raise EnvironmentProblem(f"the Docker engine refused run {plan.name}: "
                                         f"{exc.message}") from None
            finally:
                self.release(prepared)

    def _run_prepared(self, plan: RunPlan, prepared: PreparedRun) -> RunResult:
        config, copies = prepared.config, prepared.copies
        self.debug(f"run {plan.name}: {docker_run_line(config)}")
        started = time.monotonic()
        client = self._client_for(plan.name)
        with self._state:  # close() waits for this, then finds the container by its label
            self._check_open(plan.name)
            try:
                container = client.create(config)
            except APIError as exc:
                if client is self.client or "bind source path" not in exc.message or copies:
                    raise
                # Detected: the engine does not see this host's files (another machine).
                self.log(f"run {plan.name}: its engine does not see this host's files; its "
                         "inputs are copied in (put_archive) and /out copied back")
                config, copies = _copy_mode(plan, config)
                self.debug(f"run {plan.name}: {docker_run_line(config)}")
                container = client.create(config)
        timed_out = False
        try:
            if copies:
                _copy_in(client, container, copies, prepared.run_dir, plan)
                self._own_volumes(client, container, copies, config["Image"], plan)
            client.start(container)
            try:
                exit_code = client.wait(container, timeout=plan.timeout)
            except ReadTimeout as exc:
                # Only a timeout of an engine that still answers is the build's.
                if not self._engine_answers(client):
                    raise engine_lost(f"run {plan.name}", exc) from None
                timed_out, exit_code = True, -1
                client.kill(container)
            log = read_log(client, container, plan.max_log_size)
            if copies and any(c.target == OUT_DIR and not c.read_only for c in copies):
                _copy_out(client, container, prepared.out, prepared.run_dir)
        finally:
            # When the engine is gone, the error that says so is on its way.
            with suppress(Unreachable):
                _remove(client, container)
        return RunResult(plan.name, exit_code, log, prepared.out, timed_out,
                         time.monotonic() - started, prepared.results)

    def _own_volumes(self, client: Engine, container: str, copies: Sequence[Copy], image: str,
                     plan: RunPlan) -> None:
        """Give each writable volume's root the owner and mode of the host directory it
        stands for: an archive cannot (the engine skips a tar's `.`), so a helper container of
        the same image does it as root with CAP_CHOWN and CAP_FOWNER only, no network, through
        the run's volumes (`volumes_from`), and is removed before the run starts."""
        steps = []
        for copy in copies:
            if copy.read_only or not copy.source.is_dir():
                continue
            st = copy.source.stat()
            target = shlex.quote(copy.target)
            steps.append(f"chown {st.st_uid}:{st.st_gid} {target} && "
                         f"chmod {st.st_mode & 0o7777:o} {target}")
        if not steps:
            return
        helper = client.create({
            "Image": image, "Cmd": ["sh", "-c", " && ".join(steps)], "User": "0:0",
            "Labels": {SESSION_LABEL: self.session, OWNER_LABEL: self.owner.token},
            "HostConfig": {"NetworkMode": "none", "ReadonlyRootfs": True, "CapDrop": ["ALL"],
                           "CapAdd": ["CHOWN", "FOWNER"], "SecurityOpt": ["no-new-privileges"],
                           "VolumesFrom": [container]}})
        try:
            client.start(helper)
            code = client.wait(helper, timeout=120)
            if code != 0:
                said = read_log(client, helper, 4096).decode(errors="replace").strip()
                raise EnvironmentProblem(
                    f"run {plan.name}: the volumes copied into its engine could not be given "
                    f"their owners (exit {code}: {said}); the image needs sh, chown and chmod")
        finally:
            # Not its volumes: they are the run's, removed with the run's container.
            with suppress(NotFound):
                client.remove(helper, volumes=False)

    def _engine_answers(self, client: Engine) -> bool:
        try:
            client.ping()
        except ENGINE_ERRORS:
            return False
        return True

    def prepare(self, plan: RunPlan, source_tar: Path, *, outputs: Path | None = None,
                wheels: Path | None = None, npm: Path | None = None,
                results: bool = False) -> PreparedRun:
        """A run's directories (a fresh source copy, /out, the disorderfs mount) and its
        container arguments; `release` undoes the mount."""
        settings = plan.settings
        # Random per run, not shared by the runs: see the module docstring (host paths); in
        # the process directory, where a killed process's runs are found by their owner.
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runtime.process_dir()))
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
            with self._state:  # never a mount that close() would not see
                self._check_open(plan.name)
                _mount_disorderfs(src, mount)
                self._mounts.append(mount)
        locales = _link_tree(self.locales, private / "locale")
        config = self._container_args(plan, mount or src, out, locales,
                                      writable_out=outputs is None)
        binds = config["HostConfig"]["Binds"]
        if wheels is not None:
            binds.append(f"{_link_tree(wheels, private / 'wheels')}:{WHEELS_DIR}:ro")
        if npm is not None:
            binds.append(f"{_link_tree(npm, private / 'npm')}:{NPM_DIR}:ro")
        results_dir = None
        if results:
            results_dir = private / "results"
            results_dir.mkdir()
            os.chown(results_dir, settings.uid, settings.gid)
            results_dir.chmod(0o755)
            binds.append(f"{results_dir}:{RESULTS_DIR}:rw")
        copies = None
        if plan.name in self.copy_runs:
            config, copies = _copy_mode(plan, config)
        elif plan.name in self.engines:
            # Strict: an engine that does not see a source path refuses the container
            # (a bind of Binds would create an empty directory there instead).
            config["HostConfig"]["Mounts"] = [
                {"Type": "bind", "Source": source, "Target": target, "ReadOnly": read_only}
                for source, target, read_only in _binds(config["HostConfig"].pop("Binds"))]
        return PreparedRun(run_dir, out, mount, config, results_dir, copies)

    def release(self, prepared: PreparedRun) -> None:
        if prepared.mount is not None:
            _unmount(prepared.mount)
            with self._state:
                if prepared.mount in self._mounts:
                    self._mounts.remove(prepared.mount)

    def _container_args(self, plan: RunPlan, build_dir: Path, out: Path, locales: Path, *,
                        writable_out: bool = True) -> dict[str, Any]:
        """The Engine API's ContainerConfig of a run (docker_run_line shows it as a command)."""
        s = plan.settings
        tmpfs_opts = "rw,exec,nosuid,nodev,size=1g,mode=1777"
        memory = memory_bytes(plan.memory)
        host: dict[str, Any] = {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Memory": memory,
            "MemorySwap": memory,
            "PidsLimit": plan.pids_limit,
            # The clock's offset (plan.start_clock) is written there by the build's user.
            "Tmpfs": {"/tmp": tmpfs_opts, s.home: tmpfs_opts,
                      CLOCK_DIR: "rw,noexec,nosuid,nodev,size=64k,mode=1777"},
            "Binds": [f"{build_dir}:{s.build_path}:rw",
                      f"{out}:{OUT_DIR}:{'rw' if writable_out else 'ro'}",
                      f"{self.faketime}:{FAKETIME_LIB}:ro",
                      f"{locales}:{LOCALE_DIR}:ro"],
        }
        if s.cpuset is not None:
            host["CpusetCpus"] = s.cpuset
        return {
            "Image": plan.image.rsplit("@", 1)[1],
            "Cmd": list(plan.argv),
            "User": plan.user,
            "Env": [f"{key}={value}" for key, value in sorted(plan.env.items())],
            "Hostname": s.hostname,
            "Domainname": s.domainname,
            "WorkingDir": s.build_path,
            "Labels": {SESSION_LABEL: self.session, OWNER_LABEL: self.owner.token},
            "HostConfig": host,
        }


def read_log(client: Engine, container: str, limit: int) -> bytes:
    """A finished container's log, streamed: its head and tail up to `limit` bytes in all.

    Never whole in memory: a build that prints gigabytes keeps `limit` bytes (the middle is
    left out, with a line saying how much and which limit).
    """
    kept = HeadTail(limit)
    for chunk in client.logs(container):
        kept.add(chunk)
    return kept.value()


def docker_run_line(config: dict[str, Any]) -> str:
    """The `docker run` command equivalent to a container's create arguments."""
    host = config["HostConfig"]
    args = ["docker", "run", "--rm", f"--network={host['NetworkMode']}", "--read-only",
            "--cap-drop=ALL", "--security-opt=no-new-privileges",
            f"--user={config['User']}", f"--hostname={config['Hostname']}",
            f"--domainname={config['Domainname']}", f"--workdir={config['WorkingDir']}",
            f"--memory={host['Memory']}", f"--memory-swap={host['MemorySwap']}",
            f"--pids-limit={host['PidsLimit']}"]
    if "CpusetCpus" in host:
        args.append(f"--cpuset-cpus={host['CpusetCpus']}")
    args += [f"--tmpfs={path}:{opts}" for path, opts in host["Tmpfs"].items()]
    args += [f"--volume={bind}" for bind in host.get("Binds", [])]
    args += [f"--mount=type=bind,source={m['Source']},target={m['Target']}"
             + (",readonly" if m.get("ReadOnly") else "") for m in host.get("Mounts", [])
             if m.get("Type") == "bind"]
    # Copy mode: anonymous volumes, filled by `docker cp` (put_archive) before the start.
    args += [f"--mount=type=volume,target={m['Target']}" for m in host.get("Mounts", [])
             if m.get("Type") == "volume"]
    args += [f"--env={env}" for env in config["Env"]]
    return shlex.join([*args, config["Image"], *config["Cmd"]])


def _binds(binds: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) of each `host:container:mode` bind."""
    return [(source, target, mode == "ro")
            for source, target, mode in (bind.rsplit(":", 2) for bind in binds)]


def _link_tree(source: Path, dest: Path) -> Path:
    """A copy of `source` at `dest`, hard-linked where the file system allows."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link)
    return dest


def _copy_mode(plan: RunPlan, config: dict[str, Any]) -> tuple[dict[str, Any], tuple[Copy, ...]]:
    """The container's bind mounts as anonymous volumes that `_copy_in` fills: nothing of
    this host is mounted, so an engine on another machine can run it."""
    if plan.settings.shuffle_dirents:
        # disorderfs shuffles the directory order on this host only: copied into the
        # engine's volume, the source has that file system's order, and the record would
        # claim a variation that did not happen.
        raise EnvironmentProblem(
            f"run {plan.name} varies the directory order (file_order) with disorderfs on this "
            "host, which an engine that gets its inputs copied cannot see; leave the "
            'variation out for this engine ([check] vary = ["all", "-file_order"])')
    host = config["HostConfig"]
    binds = _binds(host.pop("Binds", []))
    binds += [(m["Source"], m["Target"], bool(m.get("ReadOnly"))) for m in host.pop("Mounts", [])]
    copies = tuple(Copy(Path(source), target, read_only) for source, target, read_only in binds)
    host["Mounts"] = [{"Type": "volume", "Target": c.volume} for c in copies]
    return config, copies


def _copy_in(client: Engine, container: str, copies: Sequence[Copy], run_dir: Path,
             plan: RunPlan) -> None:
    """Fill the container's volumes: each copy as a tar (owners kept for what the build
    writes, root and not writable for the read-only inputs), streamed from a file."""
    for n, copy in enumerate(copies):
        archive = run_dir / f"copy-{n}.tar"

        def owned(info: tarfile.TarInfo, ro: bool = copy.read_only) -> tarfile.TarInfo:
            if ro:
                info.uid = info.gid = 0
                info.mode &= ~0o022
            info.uname = info.gname = ""
            return info

        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            if copy.source.is_dir():
                tar.add(copy.source, arcname=".", filter=owned)
            else:  # a file (the faketime library), resolved as the bind mount would
                tar.add(copy.source.resolve(), arcname=Path(copy.target).name, filter=owned)
        with archive.open("rb") as data:
            try:
                client.put_archive(container, copy.volume, data)
            except APIError as exc:
                raise EnvironmentProblem(f"run {plan.name}: the engine refused the copy of "
                                         f"{copy.target}: {exc.message}") from None
        archive.unlink()


def _copy_out(client: Engine, container: str, out: Path, run_dir: Path) -> None:
    """/out back from a finished container into this host's `out`, byte for byte with its
    modes and numeric owners; a member that would land outside `out` (an absolute name,
    `..`, a path through a link) is refused, as tarfile's tar filter does."""
    archive = run_dir / "out.tar"
    with archive.open("wb") as f:
        for chunk in client.get_archive(container, OUT_DIR):
            f.write(chunk)
    prefix = Path(OUT_DIR).name + "/"
    try:
        _extract_out(archive, out, prefix)
    except (tarfile.TarError, OSError) as exc:
        raise BuildFailed(f"/out could not be copied back from engine b: {exc}") from None
    archive.unlink()


def _extract_out(archive: Path, out: Path, prefix: str) -> None:
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            if member.name == Path(OUT_DIR).name:
                continue
            if not member.name.startswith(prefix):
                raise BuildFailed(f"/out came back with {member.name!r}, outside /out")
            member.name = member.name.removeprefix(prefix)
            if member.islnk():
                member.linkname = member.linkname.removeprefix(prefix)
            members.append(member)
        for member in members:
            tar.extract(member, out, numeric_owner=True, filter="tar")
            if not member.issym():
                # The tar filter drops setuid and group/other write bits; the outputs are
                # compared with run a's, modes included, so they are restored exactly.
                (out / member.name).chmod(member.mode)


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


def _unmount(mountpoint: Path) -> bool:
    """Unmount a disorderfs mount, even one whose daemon died; True when one was removed.

    mountinfo, not os.path.ismount: a mount whose FUSE daemon is gone cannot be stat'ed."""
    if mountpoint not in runtime.mounts_under(mountpoint):
        return False
    for command in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount", "-l"]):
        if shutil.which(command[0]) and subprocess.run(
                [*command, str(mountpoint)], capture_output=True, check=False
        ).returncode == 0:
            return True
    return False


def _remove(client: Engine, container: str) -> None:
    try:
        client.remove(container)  # copy mode's anonymous volumes too
    except NotFound:
        pass
    except APIError as exc:
        if "already in progress" not in exc.message:
            raise


def require_success(result: RunResult, what: str) -> None:
    """Turn a failed or timed-out run into exit 4 with the tail of its log."""
    if result.timed_out:
        raise BuildFailed(f"{what} (run {result.name}) timed out after "
                          f"{result.seconds:.0f} s; raise [build] timeout or fix the build")
    if result.exit_code != 0:
        tail = result.log.decode(errors="replace").strip().splitlines()[-15:]
        raise BuildFailed(f"{what} (run {result.name}) exited with {result.exit_code}:\n  "
                          + "\n  ".join(tail), hint=network_hint(result.log))
