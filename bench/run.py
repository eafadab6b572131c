"""Benchmarks: rebuild against the plain tools it wraps, side by side on this machine.

`make bench` runs every section in `SECTIONS`; `--only NAME` runs one, `--reps N` sets the
number of timed repetitions. Each section is a function from a `Context` to a `Section`.
Results go to bench/results/latest.json, one entry per section, each with its own date and
load average: a run replaces the entries of the sections it ran and keeps the others, and
bench/results/latest.md is rendered from that file, so `--only` updates one section of the
report. The sections just measured are printed.

Every contender runs once untimed (warm-up: caches, the image, the store), then the timed
repetitions are interleaved (contender 1, 2, 3, 1, 2, 3, …) so that a burst of load from
someone else's tests lands on all of them alike. We report the median and the minimum, and
the 1-minute load average after every round. What cannot be repeated (a cold image, a first
download, the first query after seeding a store, the detection corpus) is measured once or
twice and reported on its own row.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import itertools
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
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from rebuild import __version__
from rebuild.attest import attach_evidence, build_link, build_statements
from rebuild.build.image import StoredImage, find_image, stored_image
from rebuild.build.plan import plan_build
from rebuild.build.recipe import Recipe, load_recipe, parse_image_reference, parse_recipe
from rebuild.build.sandbox import (
    Sandbox,
    connect,
    docker_run_line,
)
from rebuild.build.variations import NAMES
from rebuild.cli import OPTIONS
from rebuild.evidence.provenance import BuildFacts, Dependency, Subject, digest_set
from rebuild.evidence.sign import KeySigner, load_public_key, load_signer, passphrase_from_env
from rebuild.inputs.fetch import TreeEntry, fetch_inputs, hash_tree
from rebuild.release.report import release_story
from rebuild.release.verify import Policy
from rebuild.store.layout import (
    ATTEMPT_TYPE,
    EPOCH_ANN,
    IMAGE_ID_ANN,
    INPUTS_TYPE,
    KIND,
    OCI_MANIFEST,
    REF_NAME,
    RELEASE_ANN,
    RELEASE_TYPE,
    SUBJECT,
    TITLE,
    Descriptor,
    Store,
    canonical_json,
)
from rebuild.twin import LOG_MEDIA, RECORD_MEDIA, iso_time

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# The bench's own image cache: every section seeds its stores from it with hard links.
IMAGE_STORE = ROOT / ".rebuild" / "bench-store"
MINIMAL_DEFINITION = ROOT / "images" / "debian-minimal.toml"
C_DEFINITION = ROOT / "images" / "debian-c.toml"
REBUILD_CLI = Path(sys.executable).with_name("rebuild")
# The tiny build of issue 2: careful (reproducible under every variation) but it does read
# the clock. `{out}` is /out in a container and out (in the source tree) for reprotest.
SCRIPT = "mkdir -p {out} && printf hello > {out}/r && date -u +%F > /dev/null"
TIMEOUT = 600
EPOCH = 1700000000
# The demo release, built from a copy of these (the copy is re-pinned to the bench's image).
DEMO_RELEASE = "hello-c@1.0.0"
DEMO_FILES = ("recipes/hello-c.toml", "recipes/pyhello.toml", "recipes/pyhello.lock.txt",
              "recipes/pyhello.in", "examples/hello-c", "examples/pyhello")
COLD_TRIES = 2  # the image is shared with other sessions: remove it from Docker rarely
EVIDENCE_GOAL_S, EVIDENCE_GOAL_SHARE = 0.3, 0.05  # issue 4
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


# -- helpers ------------------------------------------------------------------------------


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
    """The floor under every CLI measurement: start the interpreter, import rebuild.cli,
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


# -- the raw docker pair ---------------------------------------------------------------


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
            argvs = [shlex.split(docker_run_line(p.kwargs)) for p in prepared]
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
    store = seed_store(directory / "store")  # a build needs its image archived in its store
    rebuild_argv_ = rebuild_argv(store, "build", recipe, "--json")
    container_seconds: list[float] = []

    def rebuild_build() -> float:
        seconds, proc = timed(rebuild_argv_, cwd=directory, what="rebuild build")
        outcome = json.loads(proc.stdout)
        if not outcome["reproducible"] or len(outcome["runs"][1]["variations"]) != len(NAMES):
            raise BenchError(f"rebuild build did not vary all {len(NAMES)} variations "
                             f"reproducibly: {proc.stdout}")
        container_seconds.append(max(r["seconds"] for r in outcome["runs"]))
        return seconds

    peer = Reprotest(directory / "src")
    with Sandbox(connect(), cache_dir=OPTIONS.cache) as sandbox:
        raw = RawPair(recipe, sandbox, directory)
        startup = startup_contender()
        contenders = [
            Contender("rebuild", "rebuild build (twin, 12 variations)", rebuild_build),
            Contender("raw", "raw docker pair (2 × docker run --rm, concurrent)", raw.run),
            Contender("reprotest", "reprotest, null backend (host), --variations=+all",
                      peer.run),
            Contender("startup", "  of which: `rebuild --version` (interpreter start, "
                      "imports)", startup.run),
        ]
        samples = measure(contenders, ctx.reps, say, ctx.loads)
    samples["containers"] = container_seconds[-ctx.reps:]
    labels = {c.key: c.label for c in contenders}
    labels["containers"] = ("  of which: both containers, as rebuild times them "
                            "(runs[].seconds, max of a, b)")
    rows = timings(samples, {k: labels[k] for k in
                             ("rebuild", "startup", "containers", "raw", "reprotest")},
                   informational=("startup", "containers"))
    by_key = {t.key: t for t in rows}
    rb, rw, rp = by_key["rebuild"], by_key["raw"], by_key["reprotest"]
    overhead = rb.median - rw.median
    ratio = rb.median / rp.median
    applied = sorted(peer.varied - peer.ignored)
    verdicts = (
        f"rebuild build is {ratio:.2f}× reprotest's wall time (median; {rb.min / rp.min:.2f}× "
        f"by min); goal below 1×: {goal(ratio < 1)}",
        f"overhead over the raw docker pair: {overhead:.2f} s (median; "
        f"{rb.min - rw.min:.2f} s by min); goal under 1 s: {goal(overhead < 1)}",
        f"of that overhead, starting the CLI alone (`rebuild --version`) takes "
        f"{by_key['startup'].median:.2f} s (median)",
    )
    notes = (
        "rebuild: one store for all repetitions of this session, seeded with the bench's "
        "archived images (the warm-up run fetches the source into it; later runs add "
        "nothing new), image already loaded in Docker.",
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
        timings=rows,
        verdicts=verdicts,
        commands=(("rebuild", shlex.join(rebuild_argv_)),
                  ("raw pair, run a", raw.lines[0]), ("raw pair, run b", raw.lines[1]),
                  ("reprotest", shlex.join(peer.argv))),
        notes=notes,
        data={"overhead_s": round(overhead, 3), "overhead_min_s": round(rb.min - rw.min, 3),
              "ratio_to_reprotest": round(ratio, 3),
              "ratio_to_reprotest_min": round(rb.min / rp.min, 3),
              "reprotest_varied": sorted(peer.varied), "reprotest_skipped": sorted(peer.ignored),
              "rebuild_variations": list(NAMES), "image": image},
    )


# -- reproduce against build ----------------------------------------------------------------


def docker_lines(*args: str) -> list[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                          timeout=TIMEOUT)
    return proc.stdout.split() if proc.returncode == 0 else []


def image_loaded(image_id: str) -> bool:
    return docker_lines("image", "inspect", "--format", "{{.Id}}", image_id) == [image_id]


def archive_blob(store: Path, image_id: str) -> Path:
    """The docker-archive of `image_id` in `store` (what `rebuild reproduce` loads)."""
    entry = find_image(Store(store), image_id)
    if entry is None:
        raise BenchError(f"image {image_id} is not archived in {store}")
    return Store(store).blob_path(stored_image(Store(store), entry.digest).archive)


def restore_image(image_id: str, archive: Path) -> None:
    """Load the image back if it is still missing: other sessions use it."""
    if image_loaded(image_id):
        return
    say(f"  loading {image_id[:19]} back into Docker from {archive}")
    run_command(["docker", "load", "-i", archive], what="docker load")
    if not image_loaded(image_id):
        raise BenchError(f"docker load of {archive} did not bring back {image_id}: load it "
                         f"by hand (docker load -i {archive}); other sessions need it")


@dataclass
class ColdReproduce:
    """`rebuild reproduce` with the image removed from Docker, so that it loads the image
    back from the store's archive; the image comes back with the same id (it is a content
    digest), and is loaded back by us if the run did not.

    Removing a shared image is not free for others: we try only when no container of
    anyone's uses it, never force `docker rmi`, and count a run only if its log says that
    it loaded the image itself (another session may have loaded it first)."""

    argv: list[str]
    cwd: Path
    image_id: str
    archive: Path
    samples: list[float] = field(default_factory=list)
    containers: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def run(self, tries: int) -> None:
        for attempt in range(1, tries + 1):
            users = docker_lines("ps", "-a", "--filter", f"ancestor={self.image_id}",
                                 "--format", "{{.ID}}")
            if users:
                self.notes.append(f"cold try {attempt}: skipped, {len(users)} container(s) "
                                  "of other sessions use the image")
                continue
            removed = subprocess.run(["docker", "rmi", self.image_id], capture_output=True,
                                     text=True, check=False, timeout=TIMEOUT)
            if removed.returncode != 0:
                self.notes.append(f"cold try {attempt}: skipped, docker rmi refused: "
                                  f"{removed.stderr.strip()[:200]}")
                continue
            try:
                say(f"  cold {attempt}/{tries}: {self.image_id[:19]} removed from Docker")
                seconds, proc = timed(self.argv, cwd=self.cwd, what="rebuild reproduce (cold)")
                if "loading image" not in proc.stderr:
                    self.notes.append(f"cold try {attempt}: not counted, the image was back "
                                      "before the run needed it (another session loaded it)")
                    continue
                self.samples.append(seconds)
                self.containers.append(max(r["seconds"] for r in
                                           json.loads(proc.stdout)["runs"]))
                say(f"  cold {attempt}/{tries}: {seconds:.3f} s")
            finally:
                restore_image(self.image_id, self.archive)


def reproduce_vs_build(ctx: Context) -> Section:
    """Issue 3: rebuilding a stored release from the store alone, against building it."""
    base_image(C_DEFINITION)
    directory = ctx.work / "reproduce"
    directory.mkdir()
    store = seed_store(directory / "store")
    hello, _ = copy_demo(directory, store)
    image = load_recipe(hello).recipe.environment.image
    image_id = image.rsplit("@", 1)[1]
    build_cmd = rebuild_argv(store, "build", hello, "--json")
    once_cmd = rebuild_argv(store, "reproduce", DEMO_RELEASE, "--json")
    twice_cmd = [*once_cmd, "--runs", "2"]
    containers: dict[str, list[float]] = {"build": [], "once": [], "twice": []}

    def contender(key: str, label: str, argv: list[str]) -> Contender:
        def run() -> float:
            seconds, proc = timed(argv, cwd=directory, what=f"rebuild {argv[3]}")
            outcome = json.loads(proc.stdout)
            if not outcome["reproducible"]:
                raise BenchError(f"{shlex.join(argv)} did not reproduce: {proc.stdout}")
            containers[key].append(max(r["seconds"] for r in outcome["runs"]))
            return seconds

        return Contender(key, label, run)

    contenders = [  # the build first: its warm-up stores the release the others rebuild
        contender("build", "rebuild build (twin, 12 variations; release already stored)",
                  build_cmd),
        contender("once", "rebuild reproduce (1 run)", once_cmd),
        contender("twice", "rebuild reproduce --runs 2 (twin check again)", twice_cmd),
        startup_contender(),
    ]
    samples = measure(contenders, ctx.reps, say, ctx.loads)
    cold = ColdReproduce(once_cmd, directory, image_id, archive_blob(store, image_id))
    cold.run(min(COLD_TRIES, ctx.reps))
    for key in ("build", "once", "twice"):
        samples[f"{key}_containers"] = containers[key][-ctx.reps:]
    samples["cold"], samples["cold_containers"] = cold.samples, cold.containers
    labels = {
        "build": contenders[0].label,
        "build_containers": "  of which: containers (max of runs[].seconds)",
        "once": contenders[1].label,
        "once_containers": "  of which: the container (runs[].seconds)",
        "twice": contenders[2].label,
        "twice_containers": "  of which: containers (max of runs[].seconds)",
        "cold": "rebuild reproduce (1 run), image NOT loaded in Docker: loads the archive",
        "cold_containers": "  of which: the container (runs[].seconds)",
        "startup": contenders[3].label,
    }
    rows = timings(samples, labels, informational=[k for k in labels
                                                   if k.endswith("_containers")
                                                   or k == "startup"])
    by_key = {t.key: t for t in rows}
    build = by_key["build"]
    verdicts = [f"{by_key[key].label}: {by_key[key].median / build.median:.2f}× the build "
                f"(median; {by_key[key].min / build.min:.2f}× by min)"
                for key in ("once", "twice", "cold") if key in by_key]
    if "cold" not in by_key:
        verdicts.append("cold case not measured: " + "; ".join(cold.notes))
    archive_mb = cold.archive.stat().st_size / 1e6
    notes = [
        f"Demo release {DEMO_RELEASE} (recipes/hello-c.toml on {image}), from a copy of the "
        "recipe and examples/hello-c re-pinned with `rebuild lock --update-image` to the "
        "image archived in the bench's store; one store for every run. No --key: nothing "
        "is signed (signing is measured in evidence_share), so the build finds its release, "
        "attempt and evidence already stored and the reproductions store nothing.",
        "reproduce reads everything from the store: recipe, source tar, image archive; with "
        "the image loaded it skips the archive. --runs 2 repeats the twin check (run b "
        "varies all 12 variations).",
        f"Cold case: measured {len(cold.samples)} time(s) (at most {COLD_TRIES}), after the "
        f"warm rounds: `docker rmi {image_id[:19]}…` (never forced, only when no container "
        f"uses it), then the reproduce, which loads the {archive_mb:.0f} MB docker-archive "
        "back (it comes back with the same id and tag); loaded back by the bench if not. "
        "Samples: " + (", ".join(f"{x:.2f} s" for x in cold.samples) or "none") + ".",
        *cold.notes,
    ]
    return Section(
        name="reproduce_vs_build",
        title="reproduce against build (issue 3)",
        method=(f"N={ctx.reps} timed repetitions of each after one untimed warm-up, "
                "interleaved, same store, image loaded; the cold case separately. Wall "
                "seconds of the CLI; ratios are reproduce / build."),
        timings=rows,
        verdicts=tuple(verdicts),
        commands=(("build", shlex.join(build_cmd)), ("reproduce", shlex.join(once_cmd)),
                  ("reproduce, twin", shlex.join(twice_cmd)),
                  ("cold", f"docker rmi {image_id} && {shlex.join(once_cmd)}")),
        notes=tuple(notes),
        data={"ratios": {key: round(by_key[key].median / build.median, 3)
                         for key in ("once", "twice", "cold") if key in by_key},
              "ratios_min": {key: round(by_key[key].min / build.min, 3)
                             for key in ("once", "twice", "cold") if key in by_key},
              "image": image, "image_archive_bytes": cold.archive.stat().st_size},
    )


# -- fetch ----------------------------------------------------------------------------------


def fetch_warm(ctx: Context) -> Section:
    """Issue 3: `rebuild fetch` when the store already has everything, against a first fetch."""
    base_image(C_DEFINITION)
    directory = ctx.work / "fetch"
    directory.mkdir()
    store = seed_store(directory / "store")
    hello, pyhello = copy_demo(directory, store)
    fresh = itertools.count(1)

    def fetch(recipe: Path, target: Path, *, env: Mapping[str, str] | None = None,
              downloads: bool = False) -> float:
        argv = rebuild_argv(target, "fetch", recipe, "--json")
        seconds, proc = timed(argv, cwd=directory, what="rebuild fetch", env=env)
        downloaded = json.loads(proc.stdout)["recipes"][0]["downloaded"]
        if bool(downloaded) != downloads:
            raise BenchError(f"{shlex.join(argv)} downloaded {downloaded or 'nothing'}, "
                             f"expected {'a download' if downloads else 'nothing'}")
        return seconds

    def fetch_in_process(recipe: Path, target: Path) -> float:
        loaded = load_recipe(recipe)
        started = time.perf_counter()
        inputs = fetch_inputs(loaded, Store(target))
        seconds = time.perf_counter() - started
        if inputs.downloaded:
            raise BenchError(f"fetch_inputs({recipe.name}) downloaded {set(inputs.downloaded)}")
        return seconds

    # pip's own HTTP cache would serve the wheel from disk: off, so the first fetch goes to
    # PyPI. Once: a benchmark does not hammer PyPI.
    say("  cold: the first fetch of pyhello, its wheel from PyPI")
    cold_py = fetch(pyhello, store, env={"PIP_NO_CACHE_DIR": "1"}, downloads=True)
    contenders = [
        Contender("hello", "rebuild fetch hello-c (warm store: source only, local path)",
                  lambda: fetch(hello, store)),
        Contender("pyhello", "rebuild fetch pyhello (warm store: source + 1 wheel, nothing "
                  "to download)", lambda: fetch(pyhello, store)),
        Contender("hello_cold", "rebuild fetch hello-c into a new, empty store",
                  lambda: fetch(hello, directory / f"empty-{next(fresh)}")),
        Contender("hello_inputs", "  in-process: fetch_inputs(hello-c), warm store",
                  lambda: fetch_in_process(hello, store)),
        Contender("pyhello_inputs", "  in-process: fetch_inputs(pyhello), warm store",
                  lambda: fetch_in_process(pyhello, store)),
        startup_contender(),
    ]
    samples = measure(contenders, ctx.reps, say, ctx.loads)
    samples["pyhello_cold"] = [cold_py]
    labels = {c.key: c.label for c in contenders}
    labels["pyhello_cold"] = ("rebuild fetch pyhello, first fetch (wheel from PyPI, pip "
                              "cache off; once)")
    rows = timings(samples, {k: labels[k] for k in (
        "hello", "hello_inputs", "hello_cold", "pyhello", "pyhello_inputs", "pyhello_cold",
        "startup")}, informational=("hello_inputs", "pyhello_inputs", "startup"))
    by_key = {t.key: t for t in rows}
    floor = by_key["startup"].median
    verdicts = (
        *(f"warm fetch of {name}: {by_key[key].median:.3f} s median; the fetch itself "
          f"(fetch_inputs in-process) {by_key[f'{key}_inputs'].median * 1000:.0f} ms, the "
          f"CLI's start (`rebuild --version`) {floor:.3f} s"
          for key, name in (("hello", "hello-c"), ("pyhello", "pyhello"))),
        f"the first fetch of pyhello (its wheel from PyPI) took {cold_py:.3f} s, "
        f"{cold_py / by_key['pyhello'].median:.1f}× the warm one",
    )
    return Section(
        name="fetch_warm",
        title="fetch with a warm store (issue 3)",
        method=(f"N={ctx.reps} timed repetitions after one untimed warm-up, interleaved; "
                "wall seconds of the CLI, and of rebuild.inputs.fetch.fetch_inputs alone in the "
                "bench's process. The first fetch of pyhello is measured once, before the "
                "others."),
        timings=rows,
        verdicts=verdicts,
        commands=(("warm", shlex.join(rebuild_argv(store, "fetch", hello, "--json"))),
                  ("warm, wheels", shlex.join(rebuild_argv(store, "fetch", pyhello,
                                                           "--json"))),
                  ("cold, wheels", "PIP_NO_CACHE_DIR=1 " + shlex.join(
                      rebuild_argv(store, "fetch", pyhello, "--json")))),
        notes=(
            "Copies of recipes/hello-c.toml and recipes/pyhello.toml (with pyhello.lock.txt "
            "and pyhello.in) and their example sources; the store holds the bench's images.",
            "A path source is hashed as a tree and packed at every fetch (it is local: there "
            "is nothing to download, but it may have changed); `warm` means the store "
            "already holds the packed tar and, for pyhello, the wheel named by the lock.",
            "Each run's JSON is checked: warm fetches download nothing, the first fetch of "
            "pyhello downloads its wheel (flit-core).",
        ),
        data={"pyhello_cold_s": round(cold_py, 3)},
    )


# -- the evidence's share of a build --------------------------------------------------------


def evidence_share(ctx: Context) -> Section:
    """Issue 4: what the evidence (statements, SBOM, signatures, storing) adds to a build."""
    base_image(C_DEFINITION)
    directory = ctx.work / "evidence"
    directory.mkdir()
    store = seed_store(directory / "store")
    hello, _ = copy_demo(directory, store)
    key, _ = keygen(directory / "ci")
    counter = itertools.count(1)
    modes = {
        "stored": "same key, evidence already stored (same store)",
        "new_key": "a new key each build (same store: signed and stored anew)",
        "fresh": "a fresh store each build (seeded with the images; same key)",
    }
    parts: dict[str, dict[str, list[float]]] = {
        mode: {"evidence": [], "total": []} for mode in modes}

    def contender(mode: str, store_for: Callable[[], Path],
                  key_for: Callable[[], Path]) -> Contender:
        def run() -> float:
            target, signing_key = store_for(), key_for()  # untimed: keygen, seeding
            argv = rebuild_argv(target, "build", hello, "--key", signing_key, "--json")
            seconds, proc = timed(argv, cwd=directory, what="rebuild build --key")
            outcome = json.loads(proc.stdout)
            if not outcome["reproducible"] or not outcome["evidence"]["signer"]:
                raise BenchError(f"{shlex.join(argv)}: not reproducible or not signed")
            for part in ("evidence", "total"):
                parts[mode][part].append(float(outcome["timings"][part]))
            return seconds

        return Contender(mode, f"rebuild build --key, {modes[mode]}: CLI wall", run)

    contenders = [
        contender("stored", lambda: store, lambda: key),
        contender("new_key", lambda: store,
                  lambda: keygen(directory / f"key-{next(counter)}")[0]),
        contender("fresh", lambda: seed_store(directory / f"store-{next(counter)}"),
                  lambda: key),
    ]
    samples = measure(contenders, ctx.reps, say, ctx.loads)
    labels: dict[str, str] = {}
    for mode in modes:
        for part in ("total", "evidence"):
            samples[f"{mode}_{part}"] = parts[mode][part][-ctx.reps:]
        labels[mode] = f"rebuild build --key, {modes[mode]}: CLI wall"
        labels[f"{mode}_total"] = "  timings.total (in the process: fetch to evidence)"
        labels[f"{mode}_evidence"] = "  timings.evidence"
    rows = timings(samples, labels,
                   informational=[k for k in labels if k.endswith(("_total", "_evidence"))])
    def share_of(mode: str, whole: str) -> list[float]:
        return [e / t for e, t in zip(samples[f"{mode}_evidence"], samples[whole], strict=True)]

    shares = {mode: share_of(mode, f"{mode}_total") for mode in modes}
    wall_shares = {mode: share_of(mode, mode) for mode in modes}
    table_rows = []
    verdicts = []
    for mode in modes:
        evidence = statistics.median(samples[f"{mode}_evidence"])
        share = statistics.median(shares[mode])
        worst = max(samples[f"{mode}_evidence"])
        met = evidence < EVIDENCE_GOAL_S and share < EVIDENCE_GOAL_SHARE
        table_rows.append((modes[mode], f"{evidence * 1000:.0f}",
                           f"{worst * 1000:.0f}",
                           f"{statistics.median(samples[f'{mode}_total']):.3f}",
                           f"{share:.1%}", f"{max(shares[mode]):.1%}",
                           f"{statistics.median(wall_shares[mode]):.1%}", goal(met)))
        verdicts.append(f"{modes[mode]}: evidence {evidence * 1000:.0f} ms, {share:.1%} of "
                        f"timings.total (medians); goal under 5 % and under 300 ms: "
                        f"{goal(met)}")
    return Section(
        name="evidence_share",
        title="the evidence's share of a build (issue 4)",
        method=(f"The demo release, `rebuild build --key K --json`, N={ctx.reps} timed "
                "repetitions of each mode after one untimed warm-up, interleaved; "
                "`timings.evidence` and `timings.total` from the JSON (wall seconds inside "
                "the process), the share computed per build, then the median."),
        timings=rows,
        tables=(Table("Evidence per build (medians over the repetitions; worst = slowest "
                      "build)", ("mode", "evidence ms", "worst evidence ms", "total s",
                                 "share of total", "worst share", "share of CLI wall",
                                 "goal <5 % and <300 ms"),
                      tuple(table_rows)),),
        verdicts=tuple(verdicts),
        commands=(("build", shlex.join(rebuild_argv(store, "build", hello, "--key", key,
                                                    "--json"))),),
        notes=(
            "timings.evidence is the stage after the runs and the comparison: provenance "
            "and SBOM statements (the Debian part of the SBOM is rendered while the "
            "containers run, so it is not in this stage), the in-toto link, signing, and "
            "storing the evidence artifact. timings.total starts after the engine connection "
            "and ends with the evidence; the CLI wall adds the interpreter's start and "
            "imports.",
            "same key, evidence already stored: the statements are rebuilt and found in the "
            "store with the same signer, so nothing is signed or written. New key: three "
            "statements and a link are signed and a new evidence artifact is stored. Fresh "
            "store: everything is written, the source included.",
        ),
        data={"shares": {mode: round(statistics.median(shares[mode]), 4) for mode in modes},
              "evidence_ms": {mode: round(statistics.median(samples[f"{mode}_evidence"])
                                          * 1000, 1) for mode in modes}},
    )


# -- a store of 10,000 releases ---------------------------------------------------------------


class BulkStore(Store):
    """The store, for seeding thousands of releases at once: blobs are written without an
    fsync each, and index entries are collected and named in index.json in one write
    (`add_to_index` would rewrite a growing index.json 40,000 times). Everything else is
    the store's own code, so the manifests are what a build writes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pending: list[Descriptor] = []

    def _write_atomic(self, final: Path, data: bytes, mode: int = 0o444) -> None:
        if final.parent != self.blobs:  # index.json: atomically, as always
            super()._write_atomic(final, data, mode)
            return
        final.write_bytes(data)
        final.chmod(mode)

    def add_to_index(self, desc: Descriptor, annotations: Mapping[str, str]) -> Descriptor:
        entry = Descriptor(desc.media_type, desc.digest, desc.size, dict(annotations),
                           desc.artifact_type)
        self.pending.append(entry)
        return entry

    def referrers(self, subject_digest: str) -> list[Descriptor]:
        return []  # every synthetic release is new: nothing refers to it yet

    def write_index(self) -> int:
        with self._locked():
            entries = [*self.index(), *self.pending]
            self._write_index(entries)
        self.pending = []
        return len(entries)


@dataclass(frozen=True)
class SyntheticReleases:
    """Releases as a build would store them (release, inputs, attempt, evidence, with the
    same manifests and index annotations), from tiny made-up outputs and sources."""

    store: BulkStore
    image: StoredImage
    runs: Mapping[str, Mapping[str, str]]  # run name -> variations, as the real plan has
    signer: KeySigner

    def write(self, number: int) -> None:
        name = f"synthetic-{number:05d}"
        release = f"{name}@1.0.0"
        st = self.store
        output = f"synthetic release {number}\n".encode()
        output_digest, output_size = st.put_bytes(output)
        manifest = st.put_artifact(RELEASE_TYPE, [Descriptor(
            "application/octet-stream", output_digest, output_size, {TITLE: "r"})],
            annotations={RELEASE_ANN: release,
                         "org.opencontainers.image.created": iso_time(EPOCH)})
        st.add_to_index(manifest, {REF_NAME: release, KIND: "release"})
        inputs, recipe, text, tree, archive = self._inputs(name, release)
        st.add_to_index(inputs, {KIND: "inputs", RELEASE_ANN: release,
                                 SUBJECT: manifest.digest})
        logs = {run: st.put_bytes(f"run {run} of {name}: exit 0\n".encode())
                for run in self.runs}
        record = {"release": release, "status": "reproducible", "image": self.image.reference,
                  "inputs": inputs.digest, "source_date_epoch": EPOCH,
                  "runs": [{"name": run, "variations": dict(variations), "exit_code": 0,
                            "timed_out": False, "log": logs[run][0]}
                           for run, variations in self.runs.items()],
                  "artifacts": [{"name": "r", "sha256": output_digest.removeprefix("sha256:"),
                                 "size": output_size}],
                  "differences": []}
        record_digest, record_size = st.put_bytes(canonical_json(record))
        attempt = st.put_artifact(ATTEMPT_TYPE, [
            Descriptor(RECORD_MEDIA, record_digest, record_size, {TITLE: "comparison.json"}),
            *(Descriptor(LOG_MEDIA, digest, size, {TITLE: f"run-{run}.log"})
              for run, (digest, size) in logs.items())],
            subject=manifest, annotations={RELEASE_ANN: release,
                                           "dev.rebuild.status": "reproducible"})
        st.add_to_index(attempt, {KIND: "attempt", RELEASE_ANN: release,
                                  "dev.rebuild.status": "reproducible",
                                  SUBJECT: manifest.digest})
        facts = self._facts(name, recipe, text, (tree, archive), output_digest,
                            record_digest, {run: d for run, (d, _) in logs.items()},
                            attempt.digest)
        statements, sbom = build_statements(facts, None)
        link = build_link(facts, ["sh", "-c", SCRIPT.format(out="/out")], self.signer)
        attach_evidence(st, manifest, release, statements, sbom, self.signer, link)

    def _inputs(self, name: str, release: str) -> tuple[Descriptor, Recipe, bytes, str, str]:
        """The inputs record: recipe, a one-file source tree as a canonical tar, the image."""
        st = self.store
        readme = f"source of {name}\n".encode()
        tree = hash_tree([TreeEntry("README", "file", hashlib.sha256(readme).hexdigest())])
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("README")
            info.size, info.mtime, info.mode = len(readme), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(readme))
        archive, archive_size = st.put_bytes(buffer.getvalue())
        text = (f'[recipe]\nname = "{name}"\nversion = "1.0.0"\n\n'
                f'[source]\npath = "src"\ndigest = "{tree}"\n\n'
                f'[environment]\nimage = "{self.image.reference}"\n'
                f"source_date_epoch = {EPOCH}\n\n"
                f'[build]\ncommand = ["sh", "-c", {json.dumps(SCRIPT.format(out="/out"))}]\n'
                'outputs = ["r"]\ntimeout = 120\nmemory = "512m"\n\n'
                '[check]\nvary = ["all"]\n').encode()
        recipe = parse_recipe(tomllib.loads(text.decode()), source=f"{name}.toml")
        recipe_digest, recipe_size = st.put_bytes(text)
        image_size = st.blob_path(self.image.manifest).stat().st_size
        inputs = st.put_artifact(INPUTS_TYPE, [
            Descriptor("application/toml", recipe_digest, recipe_size,
                       {TITLE: f"{name}.toml"}),
            Descriptor("application/x-tar", archive, archive_size,
                       {TITLE: "source.tar", "dev.rebuild.tree": tree}),
            Descriptor(OCI_MANIFEST, self.image.manifest, image_size,
                       {TITLE: "image", IMAGE_ID_ANN: self.image.image_id})],
            annotations={RELEASE_ANN: release, EPOCH_ANN: str(EPOCH)})
        return inputs, recipe, text, tree, archive

    def _facts(self, name: str, recipe: Recipe, text: bytes, source: tuple[str, str],
               output: str, record: str, logs: Mapping[str, str], attempt: str) -> BuildFacts:
        """What gather_facts would gather; `source` is (tree digest, archive digest)."""
        image_name, tag, image_id = parse_image_reference(self.image.reference)
        return BuildFacts(
            release=recipe.release, name=name, version="1.0.0",
            recipe=recipe.model_dump(mode="json"),
            recipe_digest="sha256:" + hashlib.sha256(text).hexdigest(), requirements=(),
            change=None,
            source=Dependency("source", "file:src", digest_set(source[0]),
                              {"archive": source[1]}),
            image=Dependency(f"{image_name}:{tag}" if tag else image_name,
                             f"docker-image:{self.image.reference}", digest_set(image_id),
                             {"archive": self.image.archive}),
            # No Debian packages: the SBOM stays small (the real release lists them all).
            wheels=(), deb_packages=(), py_packages=(), source_date_epoch=EPOCH,
            variations={run: dict(v) for run, v in self.runs.items()},
            subjects=(Subject("r", output.removeprefix("sha256:")),),
            comparison={"reproducible": True, "record": record}, logs=dict(logs),
            builder_version=__version__, invocation_id=attempt)


def show_10k(ctx: Context) -> Section:
    """Issue 6: `rebuild show` of one release in a store of 10,000."""
    image = base_image()
    directory = ctx.work / "show"
    directory.mkdir()
    store_path = seed_store(directory / "store")
    recipe = write_recipe(directory, image, name="bench-show")
    release = "bench-show@1.0.0"
    ci_key, ci_pub = keygen(directory / "ci")
    qa_key, _ = keygen(directory / "qa")
    quality_key, _ = keygen(directory / "quality")
    setup = [
        rebuild_argv(store_path, "build", recipe, "--key", ci_key, "--json"),
        rebuild_argv(store_path, "reproduce", release, "--key", qa_key, "--json"),
        rebuild_argv(store_path, "approve", release, "--role", "quality", "--meaning",
                     "released for the show benchmark", "--name", "Bench Quality",
                     "--key", quality_key, "--trust", ci_pub, "--json"),
    ]
    for argv in setup:
        run_command(argv, cwd=directory, what=f"rebuild {argv[3]}")
    store = Store(store_path)
    policy = Policy((load_public_key(ci_pub),))
    show_cmd = rebuild_argv(store_path, "show", release, "--key", ci_pub, "--json")
    query_index = store_path / ".cache" / "query.sqlite"

    def check(story: Mapping[str, Any]) -> None:
        if (story["release"] != release or len(story["verdicts"]) != 1
                or len(story["approvals"]) != 1 or story["verification"]["verified"] is not True
                or story["provenance"]["signature"]["status"] != "verified"):
            raise BenchError(f"rebuild show {release} told the wrong story: "
                             f"{json.dumps(story)[:2000]}")

    def show_cli() -> float:
        seconds, proc = timed(show_cmd, cwd=directory, what="rebuild show")
        check(json.loads(proc.stdout))
        return seconds

    def show_cold_index() -> float:
        query_index.unlink()
        return show_cli()

    def story_in_process() -> float:
        started = time.perf_counter()
        story = release_story(store, release, policy)
        seconds = time.perf_counter() - started
        check(story)
        return seconds

    say("  one release: the store before seeding")
    base = measure([Contender("one_cli", "show", show_cli),
                    Contender("one_story", "release_story", story_in_process)],
                   ctx.reps, say, ctx.loads)
    say(f"  seeding {SYNTHETIC_RELEASES} synthetic releases")
    started = time.perf_counter()
    bulk = BulkStore(store_path)
    plan = plan_build(load_recipe(recipe).recipe, EPOCH)
    entry = find_image(store, image.rsplit("@", 1)[1])
    if entry is None:
        raise BenchError(f"{image} is not archived in {store_path}")
    synthetic = SyntheticReleases(bulk, stored_image(store, entry.digest),
                                  {run.name: run.describe() for run in plan.runs},
                                  KeySigner(load_signer(ci_key, passphrase_from_env())))
    for number in range(1, SYNTHETIC_RELEASES + 1):
        synthetic.write(number)
    entries = bulk.write_index()
    seeding = time.perf_counter() - started
    # From index.json itself: a lookup would build the query index the first show pays for.
    releases = sum((e.annotations or {}).get(KIND) == "release" for e in store.index())
    if releases != SYNTHETIC_RELEASES + 1:
        raise BenchError(f"the seeded store lists {releases} releases, not "
                         f"{SYNTHETIC_RELEASES + 1}")
    first = show_cli()
    say(f"  seeded {entries} index entries in {seeding:.1f} s; first show {first:.3f} s")
    contenders = [
        Contender("cli", "rebuild show --key ci.pub --json (query index up to date)",
                  show_cli),
        Contender("cli_cold", "rebuild show, query index deleted first (rebuilt from "
                  "index.json)", show_cold_index),
        Contender("story", "release_story() alone, in-process (query index up to date)",
                  story_in_process),
        startup_contender(),
    ]
    samples = measure(contenders, ctx.reps, say, ctx.loads)
    samples |= {"first": [first], "one_cli": base["one_cli"], "one_story": base["one_story"]}
    labels = {
        "cli": contenders[0].label,
        "first": "rebuild show, first run after seeding (builds the query index; once)",
        "cli_cold": contenders[1].label,
        "story": contenders[2].label,
        "startup": contenders[3].label,
        "one_cli": "  before seeding (1 release): rebuild show",
        "one_story": "  before seeding (1 release): release_story() in-process",
    }
    rows = timings(samples, labels, informational=("startup", "one_cli", "one_story"))
    by_key = {t.key: t for t in rows}
    meets = [key for key in ("cli", "first", "cli_cold", "story")
             if by_key[key].median < SHOW_GOAL_S]
    index_mb = (store_path / "index.json").stat().st_size / 1e6
    verdicts = (
        *(f"{by_key[key].label.strip()}: {by_key[key].median * 1000:.0f} ms median, "
          f"{by_key[key].min * 1000:.0f} ms min; goal under 200 ms: "
          f"{goal(by_key[key].median < SHOW_GOAL_S)}"
          for key in ("cli", "first", "cli_cold", "story")),
        "the goal is met by: " + (", ".join(by_key[k].label.split(" (")[0] for k in meets)
                                  if meets else "no measure")
        + f"; the CLI's start alone (`rebuild --version`) takes "
        f"{by_key['startup'].median * 1000:.0f} ms, show with the query index up to date "
        f"{(by_key['cli'].median - by_key['startup'].median) * 1000:.0f} ms more (medians)",
    )
    return Section(
        name="show_10k",
        title="rebuild show in a store of 10,000 releases (issue 6)",
        method=(f"N={ctx.reps} timed repetitions of each after one untimed warm-up, "
                "interleaved; the first run after seeding once. CLI wall seconds, and the "
                "call of rebuild.release.report.release_story alone in the bench's process."),
        timings=rows,
        verdicts=verdicts,
        commands=(("show", shlex.join(show_cmd)),
                  ("in-process", f"rebuild.release.report.release_story(Store({str(store_path)!r}), "
                   f"{release!r}, Policy((load_public_key(ci.pub),)))"),
                  *((f"seed: {argv[3]}", shlex.join(argv)) for argv in setup)),
        notes=(
            f"The store: one real release ({release}: a tiny recipe on debian-minimal built "
            "with --key ci.key, one `reproduce --key qa.key` verdict, one `approve` by a "
            f"third key) and {SYNTHETIC_RELEASES:,} synthetic releases, each a release, "
            "inputs, attempt and evidence manifest as a build writes them (the store's own "
            "put_artifact, build_statements and attach_evidence; provenance, SBOM and link "
            "signed by ci.key; SBOMs without Debian packages), their index entries carrying "
            f"the same annotations; index.json written once: {entries:,} entries, "
            f"{index_mb:.1f} MB. Seeding took {seeding:.0f} s.",
            "show verifies with ci.pub only: the release's provenance, SBOM and link "
            "signatures are checked, the QA verdict and the approval are listed as signed "
            "by keys not given. Each story is checked (1 verdict, 1 approval, verified).",
            "The query index (.cache/query.sqlite) is a cache of index.json, rebuilt when "
            "index.json changes: the first show after seeding pays for it, as does the "
            "`query index deleted` row.",
        ),
        data={"entries": entries, "releases": releases, "index_json_bytes":
              (store_path / "index.json").stat().st_size, "seeding_s": round(seeding, 1),
              "goal_met_by": meets},
    )


# -- the detection corpus ---------------------------------------------------------------------

CORPUS_FILES = ("tests/corpus/corpus.py", "tests/corpus/compare_tools.py",
                "tests/corpus/run_reprotest.py")


def corpus_tools() -> ModuleType:
    """tests/corpus/compare_tools.py, imported when the section runs: the corpus and its
    tools belong to the tests (not type-checked with the bench) and are still changing."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("tests.corpus.compare_tools")
    except (ImportError, SyntaxError) as exc:
        raise BenchError(f"cannot import tests/corpus/compare_tools.py: {exc}") from None


def corpus(ctx: Context) -> Section:
    """Issue 5: the detection corpus through `rebuild build --explain` and reprotest (once)."""
    tools = corpus_tools()
    images = {"minimal": base_image(MINIMAL_DEFINITION), "c": base_image(C_DEFINITION)}
    directory = ctx.work / "corpus"
    directory.mkdir()
    store = seed_store(directory / "store")
    entries = tools.load_entries()
    versions = {rel: hashlib.sha256((ROOT / rel).read_bytes()).hexdigest()[:12]
                for rel in CORPUS_FILES}
    say(f"  {len(entries)} entries, once each (rebuild, then reprotest, entry by entry)")
    started = time.perf_counter()
    try:
        rows = tools.compare_corpus(entries, images, store, directory, log=say)
    except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"the corpus run failed: {exc}") from None
    wall = time.perf_counter() - started
    ctx.loads.append(load_1min())
    bad = [r for r in rows if not r.entry.reproducible]
    clean = [r for r in rows if r.entry.reproducible]
    tools_: dict[str, Callable[[Any], Any]] = {"rebuild": lambda r: r.rebuild,
                                               "reprotest": lambda r: r.reprotest}

    def count(tool: str, rows_: Sequence[Any], test: Callable[[Any, Any], bool]) -> int:
        return sum(bool(test(r.entry, tools_[tool](r))) for r in rows_)

    stats = {tool: {
        "detected": count(tool, bad, tools.verdict_ok),
        "culprits": count(tool, bad, tools.culprits_ok),
        "false_positives": count(tool, clean, lambda _, v: v.detected),
        "right": count(tool, rows, tools.verdict_ok),
        "seconds": sum(tools_[tool](r).seconds for r in rows)} for tool in tools_}

    def rate(n: int, of: int) -> str:
        return f"{n}/{of} ({n / of:.0%})" if of else "0/0"

    summary = tuple(
        (what, *(rate(stats[t][key], of) for t in tools_))
        for what, key, of in (("non-reproducible detected", "detected", len(bad)),
                              ("exact culprits (non-reproducible)", "culprits", len(bad)),
                              ("false positives (clean flagged)", "false_positives",
                               len(clean)),
                              ("verdict right, all entries", "right", len(rows))))
    summary += (("wall time, whole corpus", *(f"{stats[t]['seconds']:.0f} s"
                                              for t in tools_)),)

    def shown(verdict: Any) -> str:
        if not verdict.detected:
            return "reproducible"
        return ", ".join(verdict.culprits) if verdict.culprits else "inherent"

    def mark(entry: Any, verdict: Any) -> str:
        return ("✓" if tools.culprits_ok(entry, verdict)
                else "~" if tools.verdict_ok(entry, verdict) else "✗")

    def expected(entry: Any) -> str:
        if entry.reproducible:
            return "reproducible"
        return "inherent" if entry.inherent else ", ".join(entry.variations)

    per_entry = tuple((r.entry.name, expected(r.entry),
                       f"{mark(r.entry, r.rebuild)} {shown(r.rebuild)}",
                       f"{r.rebuild.seconds:.1f}",
                       f"{mark(r.entry, r.reprotest)} {shown(r.reprotest)}",
                       f"{r.reprotest.seconds:.1f}") for r in rows)
    samples = {tool: [stats[tool]["seconds"]] for tool in tools_}
    samples |= {f"{tool}_entry": [tools_[tool](r).seconds for r in rows] for tool in tools_}
    samples["rebuild_bad"] = [r.rebuild.seconds for r in bad]
    samples["reprotest_bad"] = [r.reprotest.seconds for r in bad]
    rows_ = timings(samples, {
        "rebuild": "rebuild build --explain --json, whole corpus (sum of entries)",
        "reprotest": "reprotest --auto-build, whole corpus (sum of entries)",
        "rebuild_entry": f"  rebuild, per entry (median and min over {len(rows)})",
        "reprotest_entry": f"  reprotest, per entry (median and min over {len(rows)})",
        "rebuild_bad": f"  rebuild, per non-reproducible entry ({len(bad)})",
        "reprotest_bad": f"  reprotest, per non-reproducible entry ({len(bad)})",
    }, informational=("rebuild_entry", "reprotest_entry", "rebuild_bad", "reprotest_bad"))
    cannot = getattr(tools, "CANNOT_VARY_HERE", {})
    return Section(
        name="corpus",
        title="detection corpus: rebuild --explain against reprotest (issue 5)",
        method=(f"Once (not repeated: --reps does not apply): each of the {len(rows)} entries "
                "of tests/corpus, rebuild then reprotest, entry by entry, through "
                "tests/corpus/compare_tools.py `compare_corpus`; wall seconds per entry."),
        timings=rows_,
        tables=(Table("Summary", ("", "rebuild", "reprotest"), summary),
                Table("Per entry (✓ verdict and culprits as expected, ~ verdict right, "
                      "✗ wrong)", ("entry", "expected", "rebuild", "s", "reprotest", "s"),
                      per_entry)),
        verdicts=tuple(
            f"{tool}: detected {rate(stats[tool]['detected'], len(bad))} of the "
            f"non-reproducible entries, exact culprits for "
            f"{rate(stats[tool]['culprits'], len(bad))}, "
            f"{stats[tool]['false_positives']} false positive(s) in {len(clean)} clean "
            f"entries, {stats[tool]['seconds']:.0f} s in all" for tool in tools_),
        commands=(("rebuild (per entry)", f"{sys.executable} -m rebuild --store STORE build "
                   "--explain --json ENTRY.toml"),
                  ("reprotest (per entry)", "reprotest --variations=+all --auto-build "
                   "--min-cpus=1 -c 'OUT=\"$PWD/out\" sh build.sh' tests/corpus/ENTRY out"),
                  ("the section alone", ".venv/bin/python bench/run.py --only corpus")),
        notes=(
            f"Section wall time {wall:.0f} s. rebuild's runs are in containers, two at a "
            "time; reprotest builds on the host (null server), one build after another.",
            "reprotest cannot vary here: " + ("; ".join(f"{k} ({v})" for k, v in
                                                        cannot.items()) or "nothing noted"),
            "The corpus tools at the time of the run (sha256, first 12 hex): "
            + ", ".join(f"{rel} {digest}" for rel, digest in versions.items())
            + "; the builds of tests/corpus/gaps (compare_tools' measure_gaps: verdicts "
            "left to chance, not part of the corpus) are not run.",
        ),
        repeated=False,
        data={"stats": stats, "entries": [r.entry.name for r in rows],
              "corpus_files": versions, "wall_s": round(wall, 1)},
    )


SectionFn = Callable[[Context], Section]
SECTIONS: tuple[SectionFn, ...] = (twin_overhead, reproduce_vs_build, fetch_warm,
                                   evidence_share, show_10k, corpus)


# -- report -------------------------------------------------------------------------------


def package_version(name: str) -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() or "not installed"


def git_revision() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False, cwd=ROOT).stdout
    return (proc.stdout.strip() or "unknown") + (" + local changes" if dirty.strip() else "")


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
        "rebuild": f"{__version__} (git {git_revision()})",
        "reprotest": package_version("reprotest"),
    }


def load_results() -> dict[str, dict[str, Any]]:
    """The sections of bench/results/latest.json; those written before sections carried
    their own date and load average get the file's."""
    try:
        data = json.loads((RESULTS / "latest.json").read_text())
    except (OSError, ValueError):
        return {}
    machine = data.get("machine", {})
    sections: dict[str, dict[str, Any]] = data.get("sections", {})
    for section in sections.values():
        section.setdefault("measured", {
            "date": machine.get("date"), "rebuild": machine.get("rebuild"),
            "reps": data.get("reps"), "load_before": machine.get("load_average"),
            "load_after": machine.get("load_average_after"), "load_during": None})
        section.setdefault("tables", [])
    return sections


def render(facts: Mapping[str, str], sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["# rebuild benchmarks", "",
             f"Machine: nproc {facts['nproc']}, Docker Engine {facts['docker_engine']} "
             f"(client {facts['docker_client']}), kernel {facts['kernel']}, "
             f"Python {facts['python']}, reprotest {facts['reprotest']}. The cores are "
             "shared with other people's tests: each section says when it was measured and "
             "the load average around it.", ""]
    for section in sections.values():
        m = section["measured"]
        during = m.get("load_during")
        lines += [f"## {section['title']}", "", section["method"], "",
                  f"Measured {m['date']}, rebuild {m['rebuild']}, N={m['reps']}; load "
                  f"average {m['load_before']} before, {m['load_after']} after"
                  + (f", 1-minute load {during[0]:.2f}–{during[1]:.2f} during the rounds"
                     if during else "") + ".", "",
                  "| measurement | n | median s | min s |", "|---|---:|---:|---:|"]
        lines += [f"| {t['label']} | {len(t['samples_s'])} | {t['median_s']:.3f} | "
                  f"{t['min_s']:.3f} |" for t in section["timings"].values()]
        for table in section.get("tables", []):
            lines += ["", f"{table['caption']}:", "",
                      "| " + " | ".join(table["header"]) + " |",
                      "|" + "---|" * len(table["header"])]
            lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
        lines += ["", *(f"- **{v}**" for v in section["verdicts"]), "", "Commands:", ""]
        for name, command in section["commands"].items():
            lines += [f"- {name}:", "", "  ```", f"  {command}", "  ```"]
        lines += ["", "Notes:", "", *(f"- {n}" for n in section["notes"]), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    names = [fn.__name__ for fn in SECTIONS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=names, help="run one section (and update its "
                        "part of the results)")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (default 7; "
                        "the corpus runs once)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if not REBUILD_CLI.exists():
        say(f"error: {REBUILD_CLI} is missing; run with the project venv: "
            ".venv/bin/python bench/run.py (make bench)")
        return 1
    facts = machine_facts()
    results = load_results()
    ran: list[str] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rebuild-bench-") as work:
        for fn in SECTIONS:
            if args.only not in (None, fn.__name__):
                continue
            say(f"section {fn.__name__} (N={args.reps}; load average {load_average()})")
            before, started = load_average(), time.perf_counter()
            ctx = Context(args.reps, Path(work) / fn.__name__)
            ctx.work.mkdir()
            try:
                section = fn(ctx)
            except BenchError as exc:
                say(f"error: {fn.__name__}: {exc}")
                failed.append(fn.__name__)
                continue
            results[fn.__name__] = section.to_json({
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "rebuild": facts["rebuild"], "reps": args.reps if section.repeated else 1,
                "load_before": before,
                "load_after": load_average(),
                "load_during": [min(ctx.loads), max(ctx.loads)] if ctx.loads else None,
                "seconds": round(time.perf_counter() - started, 1)})
            ran.append(fn.__name__)
    ordered = {name: results[name] for name in names if name in results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(render(facts, ordered))
    (RESULTS / "latest.json").write_text(json.dumps({"machine": facts, "sections": ordered},
                                                    indent=2, ensure_ascii=False) + "\n")
    print(render(facts, {name: ordered[name] for name in ran}))
    if failed:
        say(f"failed: {', '.join(failed)} (their earlier results, if any, are kept)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
