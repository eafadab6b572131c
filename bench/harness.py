"""The bench harness: contexts, timings, sections, and the helpers every subject shares."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# The bench's own image cache: every section seeds its stores from it with hard links.
IMAGE_STORE = ROOT / ".rebuild" / "bench-store"
MINIMAL_DEFINITION = ROOT / "images" / "debian-minimal.toml"
C_DEFINITION = ROOT / "images" / "debian-c.toml"
REBUILD_CLI = Path(sys.executable).with_name("rebuild")
# The tiny build of issue 2: careful (reproducible under every variation) but it does read
# the clock. `{out}` is /out in a container and out (in the source tree) for reprotest. The
# output's mode is set: modes are compared, and the umask varies.
SCRIPT = "mkdir -p {out} && printf hello > {out}/r && chmod 644 {out}/r && date -u +%F > /dev/null"
TIMEOUT = 600
EPOCH = 1700000000
# The demo release, built from a copy of these (the copy is re-pinned to the bench's image).
DEMO_RELEASE = "hello-c@1.0.0"
DEMO_FILES = ("recipes/hello-c.toml", "recipes/pyhello.toml", "recipes/pyhello.lock.txt",
              "recipes/pyhello.in", "examples/hello-c", "examples/pyhello")
COLD_TRIES = 2  # the image is shared with other sessions: remove it from Docker rarely
SHOW_GOAL_S = 0.2  # issue 6
SYNTHETIC_RELEASES = 9_999  # plus one real release: 10,000


class BenchError(Exception):
    """A contender failed or its result was wrong: the numbers would mean nothing."""


@dataclass(frozen=True)
class Context:
    reps: int
    work: Path  # a temporary directory of this session, removed at the end
    loads: list[float] = field(default_factory=list)  # 1-minute load average, every round


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
        return {"label": self.label, "median_s": round(self.median, 4),
                "min_s": round(self.min, 4), "samples_s": [round(s, 4) for s in self.samples],
                "informational": self.informational}


@dataclass(frozen=True)
class Table:
    """A table besides the timings: rates, shares, one row per corpus entry."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {"caption": self.caption, "header": list(self.header),
                "rows": [list(row) for row in self.rows]}


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
    tables: tuple[Table, ...] = ()
    repeated: bool = True  # False: measured once whatever --reps says (the corpus)

    def to_json(self, measured: Mapping[str, Any]) -> dict[str, Any]:
        return {"title": self.title, "method": self.method, "measured": dict(measured),
                "timings": {t.key: t.to_json() for t in self.timings},
                "tables": [t.to_json() for t in self.tables],
                "verdicts": list(self.verdicts), "commands": dict(self.commands),
                "notes": list(self.notes), **self.data}


@dataclass(frozen=True)
class Contender:
    """One way of doing the job; `run` does it once and returns its wall seconds."""

    key: str
    label: str
    run: Callable[[], float]


def run_command(argv: Sequence[str | Path], *, cwd: Path | None = None, what: str,
                env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          timeout=TIMEOUT, check=False,
                          env={**os.environ, **env} if env is not None else None)
    if proc.returncode != 0:
        raise BenchError(f"{what} exited with {proc.returncode}: {shlex.join(map(str, argv))}\n"
                         f"{proc.stderr.strip()[-2000:]}")
    return proc


def timed(argv: Sequence[str | Path], *, cwd: Path | None = None, what: str,
          env: Mapping[str, str] | None = None
          ) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = run_command(argv, cwd=cwd, what=what, env=env)
    return time.perf_counter() - started, proc


def load_1min() -> float:
    return os.getloadavg()[0]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(contenders: Sequence[Contender], reps: int, log: Callable[[str], None],
            loads: list[float] | None = None) -> dict[str, list[float]]:
    """One untimed warm-up of each, then `reps` interleaved timed rounds."""
    for contender in contenders:
        log(f"  warm-up: {contender.label.strip()}")
        contender.run()
    samples: dict[str, list[float]] = {c.key: [] for c in contenders}
    for rep in range(1, reps + 1):
        for contender in contenders:
            samples[contender.key].append(contender.run())
        if loads is not None:
            loads.append(load_1min())
        log(f"  round {rep}/{reps}: " + ", ".join(
            f"{c.key} {samples[c.key][-1]:.3f} s" for c in contenders)
            + f" (load {load_1min():.2f})")
    return samples


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rebuild_argv(store: Path, *args: str | Path) -> list[str]:
    return [str(REBUILD_CLI), "--store", str(store), *(str(a) for a in args)]


def base_image(definition: Path = MINIMAL_DEFINITION) -> str:
    """The pinned reference of an image definition, built once, then cached in the bench
    store (`rebuild image build` rebuilds it only when the definition or the mirror
    changes)."""
    _, proc = timed([REBUILD_CLI, "--store", IMAGE_STORE, "image", "build", definition,
                     "--json"], cwd=ROOT, what="rebuild image build")
    return str(json.loads(proc.stdout)["image"])


def seed_store(target: Path) -> Path:
    """A new store holding the bench's archived images, as tests/conftest.py seeds one
    (hard links: blobs never change); a build needs its image archived in its own store."""
    (target / "blobs" / "sha256").mkdir(parents=True)
    for blob in (IMAGE_STORE / "blobs" / "sha256").iterdir():
        try:
            os.link(blob, target / "blobs" / "sha256" / blob.name)
        except OSError:
            shutil.copy2(blob, target / "blobs" / "sha256" / blob.name)
    for name in ("oci-layout", "index.json"):
        shutil.copy(IMAGE_STORE / name, target / name)
    return target


def write_recipe(directory: Path, image: str, name: str = "bench-twin") -> Path:
    """A recipe in the format of design.md (as tests/conftest.py writes them)."""
    src = directory / "src"
    src.mkdir()
    (src / "README").write_text("source tree of the twin-overhead benchmark\n")
    recipe = directory / f"{name}.toml"
    recipe.write_text(
        f'[recipe]\nname = "{name}"\nversion = "1.0.0"\n\n'
        '[source]\npath = "src"\n\n'
        f'[environment]\nimage = "{image}"\nsource_date_epoch = {EPOCH}\n\n'
        f'[build]\ncommand = ["sh", "-c", {json.dumps(SCRIPT.format(out="/out"))}]\n'
        'outputs = ["r"]\ntimeout = 120\nmemory = "512m"\n\n'
        '[check]\nvary = ["all"]\n')
    return recipe


def copy_demo(directory: Path, store: Path) -> tuple[Path, Path]:
    """A copy of the demo recipes (hello-c, pyhello) and their sources, re-pinned to the
    image in `store`; returns the two recipes. The repository's recipes are never edited."""
    for rel in DEMO_FILES:
        source, copy = ROOT / rel, directory / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, copy)
        else:
            shutil.copy2(source, copy)
    recipes = (directory / "recipes" / "hello-c.toml", directory / "recipes" / "pyhello.toml")
    run_command(rebuild_argv(store, "lock", "--update-image", *recipes), cwd=directory,
                what="rebuild lock --update-image")
    return recipes


def keygen(prefix: Path) -> tuple[Path, Path]:
    """`rebuild keygen --out PREFIX`: (PREFIX.key, PREFIX.pub)."""
    run_command([REBUILD_CLI, "keygen", "--out", prefix], what="rebuild keygen")
    return Path(f"{prefix}.key"), Path(f"{prefix}.pub")


def startup_contender() -> Contender:
    """The floor under every CLI measurement: start the interpreter, import rebuild.cli.main,
    parse the command line (`rebuild --version`)."""
    def run() -> float:
        seconds, proc = timed([REBUILD_CLI, "--version"], what="rebuild --version")
        if not proc.stdout.startswith("rebuild "):
            raise BenchError(f"rebuild --version printed {proc.stdout!r}")
        return seconds

    return Contender("startup", "  floor: `rebuild --version` (interpreter start, imports)",
                     run)


def timings(samples: Mapping[str, Sequence[float]], labels: Mapping[str, str],
            informational: Sequence[str] = ()) -> tuple[Timing, ...]:
    """Rows in the order of `labels`; keys without samples are left out."""
    return tuple(Timing(key, label, tuple(samples[key]), informational=key in informational)
                 for key, label in labels.items() if samples.get(key))


def goal(met: bool) -> str:
    return "met" if met else "NOT met"


def package_version(name: str) -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() or "not installed"
