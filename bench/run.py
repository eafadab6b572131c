"""Benchmarks: rebuild against the plain tools it wraps, side by side on this machine.

`make bench` runs every section in `SECTIONS`; `--only NAME` runs one, `--reps N` sets the
number of timed repetitions. Each section is a function from a `Context` to a `Section`;
the results go to bench/results/latest.{md,json} and the table is printed.

Every contender runs once untimed (warm-up: caches, the image, the store), then the timed
repetitions are interleaved (contender 1, 2, 3, 1, 2, 3, …) so that a burst of load from
someone else's tests lands on all of them alike. We report the median and the minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rebuild import __version__
from rebuild.cli import OPTIONS
from rebuild.plan import RunPlan, plan_build
from rebuild.recipe import load_recipe
from rebuild.sandbox import (
    Sandbox,
    _extract_owned,
    _mount_disorderfs,
    _unmount,
    connect,
    docker_run_line,
)
from rebuild.variations import NAMES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IMAGE_STORE = ROOT / ".rebuild" / "bench-store"
IMAGE_DEFINITION = ROOT / "images" / "debian-minimal.toml"
REBUILD_CLI = Path(sys.executable).with_name("rebuild")
# The tiny build of issue 2: careful (reproducible under every variation) but it does read
# the clock. `{out}` is /out in a container and out (in the source tree) for reprotest.
SCRIPT = "mkdir -p {out} && printf hello > {out}/r && date -u +%F > /dev/null"
TIMEOUT = 600


class BenchError(Exception):
    """A contender failed or its result was wrong: the numbers would mean nothing."""


@dataclass(frozen=True)
class Context:
    reps: int
    work: Path  # a temporary directory of this session, removed at the end


@dataclass(frozen=True)
class Timing:
    key: str
    label: str
    samples: tuple[float, ...]
    informational: bool = False  # a part of another row, not a contender

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "median_s": round(self.median, 3),
                "min_s": round(self.min, 3), "samples_s": [round(s, 3) for s in self.samples],
                "informational": self.informational}


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    method: str
    timings: tuple[Timing, ...]
    verdicts: tuple[str, ...]
    commands: tuple[tuple[str, str], ...]  # (contender, command line)
    notes: tuple[str, ...]
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Contender:
    """One way of doing the job; `run` does it once and returns its wall seconds."""

    key: str
    label: str
    run: Callable[[], float]


# -- helpers ------------------------------------------------------------------------------


def run_command(argv: Sequence[str | Path], *, cwd: Path | None = None,
                what: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          timeout=TIMEOUT, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{what} exited with {proc.returncode}: {shlex.join(map(str, argv))}\n"
                         f"{proc.stderr.strip()[-2000:]}")
    return proc


def timed(argv: Sequence[str | Path], *, cwd: Path | None = None,
          what: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = run_command(argv, cwd=cwd, what=what)
    return time.perf_counter() - started, proc


def measure(contenders: Sequence[Contender], reps: int,
            log: Callable[[str], None]) -> dict[str, list[float]]:
    """One untimed warm-up of each, then `reps` interleaved timed rounds."""
    for contender in contenders:
        log(f"  warm-up: {contender.label}")
        contender.run()
    samples: dict[str, list[float]] = {c.key: [] for c in contenders}
    for rep in range(1, reps + 1):
        for contender in contenders:
            samples[contender.key].append(contender.run())
        log(f"  round {rep}/{reps}: " + ", ".join(
            f"{c.key} {samples[c.key][-1]:.3f} s" for c in contenders))
    return samples


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def base_image() -> str:
    """The pinned debian-minimal reference (built once, then cached in the bench store)."""
    _, proc = timed([REBUILD_CLI, "--store", IMAGE_STORE, "image", "build", IMAGE_DEFINITION,
                     "--json"], cwd=ROOT, what="rebuild image build")
    return str(json.loads(proc.stdout)["image"])


def write_recipe(directory: Path, image: str) -> Path:
    """A recipe in the format of design.md (as tests/conftest.py writes them)."""
    src = directory / "src"
    src.mkdir()
    (src / "README").write_text("source tree of the twin-overhead benchmark\n")
    recipe = directory / "bench-twin.toml"
    recipe.write_text(
        '[recipe]\nname = "bench-twin"\nversion = "1.0.0"\n\n'
        '[source]\npath = "src"\n\n'
        f'[environment]\nimage = "{image}"\nsource_date_epoch = 1700000000\n\n'
        f'[build]\ncommand = ["sh", "-c", {json.dumps(SCRIPT.format(out="/out"))}]\n'
        'outputs = ["r"]\ntimeout = 120\nmemory = "512m"\n\n'
        '[check]\nvary = ["all"]\n')
    return recipe


# -- the raw docker pair ------------------------------------------------------------------


class RawPair:
    """The two `docker run --rm` lines rebuild's sandbox would run, started concurrently.

    The lines come from rebuild's own plan and `Sandbox._container_args` (the same flags,
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

    def _prepare(self, run: RunPlan) -> tuple[Path, list[str]]:
        settings = run.settings
        run_dir = Path(tempfile.mkdtemp(prefix=f"raw-{run.name}-", dir=self.sandbox.workspace))
        run_dir.chmod(0o711)
        src, out = run_dir / "src", run_dir / "out"
        _extract_owned(self.source_tar, src, settings.uid, settings.gid)
        out.mkdir()
        os.chown(out, settings.uid, settings.gid)
        build_dir = src
        if settings.shuffle_dirents:
            build_dir = run_dir / "shuffled"
            build_dir.mkdir()
            _mount_disorderfs(src, build_dir)
        line = docker_run_line(self.sandbox._container_args(run, build_dir, out))
        return run_dir, shlex.split(line)

    def run(self) -> float:
        prepared = [self._prepare(run) for run in self.plan.runs]
        try:
            self.lines = tuple(shlex.join(argv) for _, argv in prepared)
            started = time.perf_counter()
            procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                     for _, argv in prepared]
            outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
            seconds = time.perf_counter() - started
            for proc, output, (run_dir, _) in zip(procs, outputs, prepared, strict=True):
                if proc.returncode != 0:
                    raise BenchError(f"raw docker run exited with {proc.returncode}: "
                                     f"{output.decode(errors='replace')[-2000:]}")
                if (run_dir / "out" / "r").read_bytes() != b"hello":
                    raise BenchError(f"raw docker run in {run_dir} did not write out/r")
            return seconds
        finally:
            for run_dir, _ in prepared:
                _unmount(run_dir / "shuffled")
                shutil.rmtree(run_dir, ignore_errors=True)


# -- reprotest ----------------------------------------------------------------------------


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


# -- sections -----------------------------------------------------------------------------


def twin_overhead(ctx: Context) -> Section:
    """Issue 2: what a twin build costs beyond the two containers, and against reprotest."""
    image = base_image()
    directory = ctx.work / "twin"
    directory.mkdir()
    recipe = write_recipe(directory, image)
    store = directory / "store"
    rebuild_argv = [str(REBUILD_CLI), "--store", str(store), "build", str(recipe), "--json"]
    container_seconds: list[float] = []

    def rebuild_build() -> float:
        seconds, proc = timed(rebuild_argv, cwd=directory, what="rebuild build")
        outcome = json.loads(proc.stdout)
        if not outcome["reproducible"] or len(outcome["runs"][1]["variations"]) != len(NAMES):
            raise BenchError(f"rebuild build did not vary all {len(NAMES)} variations "
                             f"reproducibly: {proc.stdout}")
        container_seconds.append(max(r["seconds"] for r in outcome["runs"]))
        return seconds

    def startup() -> float:
        # Not `rebuild --version`: it exits 2 ("Missing command") in this version.
        return timed([sys.executable, "-c", "import rebuild.cli"], what="import rebuild.cli")[0]

    peer = Reprotest(directory / "src")
    with Sandbox(connect(), cache_dir=OPTIONS.cache) as sandbox:
        raw = RawPair(recipe, sandbox, directory)
        contenders = [
            Contender("rebuild", "rebuild build (twin, 12 variations)", rebuild_build),
            Contender("raw", "raw docker pair (2 × docker run --rm, concurrent)", raw.run),
            Contender("reprotest", "reprotest, null backend (host), --variations=+all",
                      peer.run),
            Contender("startup", "  of which: interpreter start + `import rebuild.cli`",
                      startup),
        ]
        samples = measure(contenders, ctx.reps, say)
    samples["containers"] = container_seconds[-ctx.reps:]
    labels = {c.key: c.label for c in contenders}
    labels["containers"] = ("  of which: both containers, as rebuild times them "
                            "(runs[].seconds, max of a, b)")
    timings = tuple(Timing(key, labels[key], tuple(samples[key]),
                           informational=key in ("startup", "containers"))
                    for key in ("rebuild", "startup", "containers", "raw", "reprotest"))
    by_key = {t.key: t for t in timings}
    rb, rw, rp = by_key["rebuild"], by_key["raw"], by_key["reprotest"]
    overhead = rb.median - rw.median
    ratio = rb.median / rp.median
    applied = sorted(peer.varied - peer.ignored)
    verdicts = (
        f"rebuild build is {ratio:.2f}× reprotest's wall time (median; {rb.min / rp.min:.2f}× "
        f"by min); goal below 1×: {'met' if ratio < 1 else 'NOT met'}",
        f"overhead over the raw docker pair: {overhead:.2f} s (median; "
        f"{rb.min - rw.min:.2f} s by min); goal under 1 s: "
        f"{'met' if overhead < 1 else 'NOT met'}",
        f"of that overhead, starting the interpreter and importing rebuild.cli alone takes "
        f"{by_key['startup'].median:.2f} s (median)",
    )
    notes = (
        "rebuild: one store for all repetitions of this session (the warm-up run creates it "
        "and fetches the source into it; later runs add nothing new), image already loaded "
        "in Docker.",
        "raw pair: the docker CLI (a separate Go process per container), whereas rebuild "
        "talks to the engine through the docker SDK in-process; source copies and run B's "
        "disorderfs mount are prepared untimed.",
        f"reprotest {package_version('reprotest')} varied {len(peer.varied)} of its "
        f"variations and applied {len(applied)}: {', '.join(applied)}; "
        f"skipped: {', '.join(sorted(peer.ignored)) or 'none'}. It runs its two builds one "
        "after the other, on the host (no container, no network isolation), and always "
        "runs diffoscope on the artifacts; rebuild hashes first and runs diffoscope only "
        "on a difference.",
        "reprotest warned: " + " / ".join(sorted(peer.warnings)),
    )
    return Section(
        name="twin_overhead",
        title="twin build overhead (issue 2)",
        method=(f"Same tiny build script (`{SCRIPT.format(out='/out')}`), N={ctx.reps} timed "
                "repetitions of each contender after one untimed warm-up, interleaved; "
                "wall seconds."),
        timings=timings,
        verdicts=verdicts,
        commands=(("rebuild", shlex.join(rebuild_argv)),
                  ("raw pair, run a", raw.lines[0]), ("raw pair, run b", raw.lines[1]),
                  ("reprotest", shlex.join(peer.argv))),
        notes=notes,
        data={"overhead_s": round(overhead, 3), "overhead_min_s": round(rb.min - rw.min, 3),
              "ratio_to_reprotest": round(ratio, 3),
              "ratio_to_reprotest_min": round(rb.min / rp.min, 3),
              "reprotest_varied": sorted(peer.varied), "reprotest_skipped": sorted(peer.ignored),
              "rebuild_variations": list(NAMES), "image": image},
    )


SectionFn = Callable[[Context], Section]
SECTIONS: tuple[SectionFn, ...] = (twin_overhead,)


# -- report -------------------------------------------------------------------------------


def package_version(name: str) -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() or "not installed"


def machine_facts() -> dict[str, str]:
    def out(*argv: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
        return proc.stdout.strip() or "unknown"

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": out("nproc"),
        "docker_engine": out("docker", "version", "--format", "{{.Server.Version}}"),
        "docker_client": out("docker", "version", "--format", "{{.Client.Version}}"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rebuild": f"{__version__} (git {out('git', 'rev-parse', '--short', 'HEAD')})",
        "reprotest": package_version("reprotest"),
        "load_average": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def render(facts: dict[str, str], sections: Sequence[Section]) -> str:
    lines = ["# rebuild benchmarks", "",
             f"Machine: nproc {facts['nproc']}, Docker Engine {facts['docker_engine']} "
             f"(client {facts['docker_client']}), kernel {facts['kernel']}, "
             f"Python {facts['python']}, rebuild {facts['rebuild']}, "
             f"reprotest {facts['reprotest']}; {facts['date']}; load average "
             f"{facts['load_average']} before, {facts['load_average_after']} after.", ""]
    for section in sections:
        lines += [f"## {section.title}", "", section.method, "",
                  "| measurement | median s | min s |", "|---|---:|---:|"]
        lines += [f"| {t.label} | {t.median:.3f} | {t.min:.3f} |" for t in section.timings]
        lines += ["", *(f"- **{v}**" for v in section.verdicts), "", "Commands compared:", ""]
        for name, command in section.commands:
            lines += [f"- {name}:", "", "  ```", f"  {command}", "  ```"]
        lines += ["", "Notes:", "", *(f"- {n}" for n in section.notes), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    names = [fn.__name__ for fn in SECTIONS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=names, help="run one section")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (default 7)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if not REBUILD_CLI.exists():
        say(f"error: {REBUILD_CLI} is missing; run with the project venv: "
            ".venv/bin/python bench/run.py (make bench)")
        return 1
    facts = machine_facts()
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="rebuild-bench-") as work:
        for fn in SECTIONS:
            if args.only in (None, fn.__name__):
                say(f"section {fn.__name__} (N={args.reps})")
                try:
                    sections.append(fn(Context(args.reps, Path(work))))
                except BenchError as exc:
                    say(f"error: {fn.__name__}: {exc}")
                    return 1
    facts["load_average_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    table = render(facts, sections)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(table)
    (RESULTS / "latest.json").write_text(json.dumps({
        "machine": facts, "reps": args.reps,
        "sections": {s.name: {"title": s.title, "method": s.method,
                              "timings": {t.key: t.to_json() for t in s.timings},
                              "verdicts": list(s.verdicts), "commands": dict(s.commands),
                              "notes": list(s.notes), **s.data} for s in sections},
    }, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
