"""The peers rebuild is measured against: a raw `docker run` pair and reprotest."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import SCRIPT, TIMEOUT, BenchError, timed

from rebuild.build.plan import plan_build
from rebuild.build.recipe import load_recipe
from rebuild.build.sandbox import (
    Sandbox,
    docker_run_line,
)


class RawPair:
    """The two `docker run --rm` lines rebuild's sandbox would run, started concurrently.

    The lines come from rebuild's own plan and `Sandbox.prepare` (the same flags,
    mounts and environment; `docker_run_line` drops only the session label), so the pair
    follows the product as it changes. Preparing the source copies and run B's disorderfs
    mount is not timed: that work is part of rebuild's overhead.
    """

    def __init__(self, recipe: Path, sandbox: Sandbox, work: Path) -> None:
        loaded = load_recipe(recipe)
        epoch = loaded.recipe.environment.source_date_epoch
        assert isinstance(epoch, int)
        self.plan = plan_build(loaded.recipe, epoch)
        self.sandbox = sandbox
        self.source_tar = work / "raw-source.tar"
        with tarfile.open(self.source_tar, "w") as tar:
            tar.add(loaded.resolve(loaded.recipe.source.path or "."), arcname=".")
        self.lines: tuple[str, ...] = ()

    def run(self) -> float:
        prepared = [self.sandbox.prepare(run, self.source_tar) for run in self.plan.runs]
        try:
            argvs = [shlex.split(docker_run_line(p.config)) for p in prepared]
            self.lines = tuple(shlex.join(argv) for argv in argvs)
            started = time.perf_counter()
            procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                     for argv in argvs]
            outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
            seconds = time.perf_counter() - started
            for proc, output, run in zip(procs, outputs, prepared, strict=True):
                if proc.returncode != 0:
                    raise BenchError(f"raw docker run exited with {proc.returncode}: "
                                     f"{output.decode(errors='replace')[-2000:]}")
                if (run.out / "r").read_bytes() != b"hello":
                    raise BenchError(f"raw docker run in {run.run_dir} did not write out/r")
            return seconds
        finally:
            for run in prepared:
                self.sandbox.release(run)
                shutil.rmtree(run.run_dir, ignore_errors=True)


@dataclass
class Reprotest:
    """reprotest on the host (its default `null` virtual server), the same script."""

    source: Path
    variations: str = "+all"
    varied: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)
    warnings: set[str] = field(default_factory=set)

    @property
    def argv(self) -> list[str]:
        return ["reprotest", "--verbosity=1", f"--variations={self.variations}",
                "-s", str(self.source), SCRIPT.format(out="out"), "out/r"]

    def run(self) -> float:
        seconds, proc = timed(self.argv, what="reprotest")
        if "Reproduction successful" not in proc.stdout:
            raise BenchError(f"reprotest did not report success:\n{proc.stdout[-2000:]}")
        self._record(proc.stderr)
        return seconds

    def _record(self, log: str) -> None:
        for line in log.splitlines():
            if 'build "experiment-1": ' in line:
                self.varied |= set(re.findall(r"vary (\w+)", line))
            if match := re.search(r"IGNORING (\w+) variation", line):
                self.ignored.add(match[1])
            if "chosen randomly not to fake" in line:
                self.ignored.add("time")
            if line.startswith("WARNING:"):
                self.warnings.add(line.removeprefix("WARNING:reprotest:")
                                  .removeprefix("WARNING:reprotest.build:"))
