"""Explain: which variations make each differing output differ, and what to do about it.

Owns the search for culprits (issue "Explain non-reproducibility") and the hints that go with
them. The decisions are pure functions over observations (which differing outputs a run with
a given set of variations changed, compared with run A); `explain_differences` is the one
function with side effects: it runs the extra builds through the caller's `Sandbox`.

The search (adaptive bisection over the enabled variations, in table order):

1. Rerun A unchanged, beside a run of the first part of the enabled set (step 3). Run A pins
   everything, its clock included, so the rerun differs from A only by chance.
2. An output that the rerun changes is *inherent* (randomness, a race, or a file time the
   kernel stamped with the real clock): no variation can be judged for it, so none is
   blamed, and the hint says what to fix. When every difference is inherent, the search
   ends there.
3. For every other output, each group that changes it (B to start with) is split in two and
   each half run, until single variations remain: the output is blamed on every variation
   whose run alone changes it. One run changes or keeps every output at once, so the splits
   for several outputs share runs, and a half seen to change something is split without
   waiting for its sibling, which keeps both workers busy. A group that holds *suspects* of
   the output and other variations too is split between the two instead of in halves: a
   suspect is a variation whose value in run B (its clock's year, its build path, its host
   name: `Variation.marks`) is written in run B's output and not in run A's. When the
   suspects are the culprits, two runs prove it (the suspects alone change the output, the
   rest does not), where halves would need four rounds; when they are not, the rest is
   bisected as before.
4. A group that changes an output while neither of its halves does needs variations
   together. One leave-one-out run per member (the group without it) shows which are
   needed: those whose absence makes the output equal to A's again. That set, run on its
   own, must change the output; when it does not (two alternative combinations, say), every
   enabled variation is blamed, with a note that says so.

The runs of the search are independent, so they run in parallel: as many at once as the
machine has cores, fewer when the recipe's `memory` per run does not fit that many times in
the memory available (`probe_width`). The decisions are taken as each run ends, not once per
round: a run that ends frees its slot for whatever the search needs next, and the search
stops as soon as `next_probes` has nothing more to ask (runs still going then are not
waited for longer than they take, and their results are not used). Run B, the twin build's
own, is never run again. Because every decision is a pure function of the observations,
the verdicts do not depend on the order in which runs end.

Why bisection and not one run per variation: a run costs ~1 s with two at a time, nearly
all container start and teardown. With one culprit among twelve, bisection needs 7-9 runs
in 4-5 rounds where single runs need 13 in 7; on the corpus (tests/corpus/RESULTS.md) it
needed 27% fewer rounds overall. It costs more only when many variations are culprits (an
environment dump: 21 runs); it would be wrong when two variations cancel each other out,
which no corpus build does.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rebuild.build.compare import Artifact, Difference, collect_outputs, differing_properties
from rebuild.build.plan import BuildPlan, plan_run
from rebuild.build.recipe import Recipe, memory_bytes
from rebuild.build.sandbox import Sandbox
from rebuild.build.variations import BY_NAME, NAMES
from rebuild.errors import BuildFailed

INHERENT = "inherent"

# Plain words, with the fix, per variation (and for differences no variation explains).
HINTS: Mapping[str, str] = {
    "time": "the build embeds the current time or file times: honour SOURCE_DATE_EPOCH "
            "(date -d @$SOURCE_DATE_EPOCH), clamp file times to it (touch -d, tar "
            "--mtime=@$SOURCE_DATE_EPOCH --clamp-mtime) and compress with gzip -n",
    "build_path": "the build records the directory it ran in: map it away "
                  "(-ffile-prefix-map=$PWD=. for gcc/clang) and write relative paths",
    "hostname": "the build records the machine's name: do not embed hostname or uname -n",
    "timezone": "the build formats times in the local time zone (date, zip, __TIME__): "
                "set TZ=UTC for the build or format in UTC (date -u)",
    "locale": "the build sorts or formats by the locale: set LC_ALL=C for sort, ls and "
              "other locale-aware steps",
    "umask": "file modes follow the umask: set modes explicitly (chmod, install -m, "
             "tar --mode=go-w)",
    "user": "the build records the user: do not embed id -un or the uid; archive with "
            "tar --owner=0 --group=0 --numeric-owner (zip -X)",
    "home": "the build records $HOME: do not embed it, keep caches and configuration "
            "under it out of the outputs",
    "env": "the build records its environment: do not dump env into outputs; record only "
           "the variables you chose",
    "exec_path": "the build records $PATH or where it found its tools: do not embed it",
    "cpus": "the output depends on the number of CPUs (parallel jobs racing, -j$(nproc)): "
            "make parallel steps write in a fixed order, or fix the number of jobs",
    "file_order": "the output follows directory order: sort file lists (tar --sort=name, "
                  "find | LC_ALL=C sort, sorted(os.listdir()))",
    INHERENT: "it differs between two runs with identical settings: seed or remove "
              "randomness (PYTHONHASHSEED, mktemp names, random ids), fix races, and clamp "
              "the times of files the build writes (the kernel stamps them with the real "
              "clock, which no variation pins: touch -d @$SOURCE_DATE_EPOCH, tar "
              "--mtime=@$SOURCE_DATE_EPOCH --clamp-mtime)",
}

Log = Callable[[str], None]
# What a run with a set of variations changed among the differing outputs; None: it failed.
Observed = Mapping[frozenset[str], frozenset[str] | None]
# Per differing output, the variations whose marks run B wrote into it (and run A did not).
Suspects = Mapping[str, frozenset[str]]
# How much of each output is read for marks: past that, its suspects are what was seen.
MARK_SCAN_LIMIT = 256 * 1024 * 1024


@dataclass(frozen=True)
class Blame:
    """The verdict for one differing output."""

    variations: tuple[str, ...]  # the culprits, in table order; () when inherent
    inherent: bool = False
    note: str | None = None

    @property
    def hints(self) -> tuple[str, ...]:
        return (HINTS[INHERENT],) if self.inherent else tuple(HINTS[v] for v in self.variations)


@dataclass(frozen=True)
class Probe:
    """One extra run of the search."""

    variations: tuple[str, ...]
    changed: frozenset[str] | None  # differing outputs this run changed; None when it failed
    exit_code: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"variations": list(self.variations), "exit_code": self.exit_code,
                "changed": None if self.changed is None else sorted(self.changed),
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class Explanation:
    blames: Mapping[str, Blame]
    probes: tuple[Probe, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"runs": [p.to_json() for p in self.probes], "seconds": round(self.seconds, 3)}


# -- decisions (pure) -----------------------------------------------------------------------

def ordered(names: Iterable[str]) -> tuple[str, ...]:
    chosen = set(names)
    return tuple(n for n in NAMES if n in chosen)


def halves(group: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    middle = len(group) // 2
    return tuple(group[:middle]), tuple(group[middle:])


def split(group: Sequence[str], suspects: frozenset[str] = frozenset()
          ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The two parts a group is run in: its suspects and the rest when it holds both, else
    its halves."""
    marked = tuple(v for v in group if v in suspects)
    if marked and len(marked) < len(group):
        return marked, tuple(v for v in group if v not in suspects)
    return halves(group)


def _changes(observed: Observed, variations: Iterable[str], name: str) -> bool | None:
    """Whether the run with exactly these variations changed `name`; None: unknown."""
    changed = observed.get(frozenset(variations))
    return None if changed is None else name in changed


@dataclass(frozen=True)
class _Walk:
    """Where the bisection stands for one output."""

    wanted: tuple[tuple[str, ...], ...]  # groups to run before it can go on
    culprits: tuple[str, ...]  # variations that change it alone
    failed: tuple[str, ...]  # variations whose run alone failed
    tangles: tuple[tuple[str, ...], ...]  # groups that change it while neither half does


def _walk(enabled: Sequence[str], observed: Observed, name: str,
          suspects: frozenset[str] = frozenset()) -> _Walk:
    """Split every group that changes `name` (B first) until single variations remain.

    A group whose run failed is split as if it changed `name`: nothing shows it did not.
    """
    wanted: list[tuple[str, ...]] = []
    culprits: list[str] = []
    failed: list[str] = []
    tangles: list[tuple[str, ...]] = []
    stack = [tuple(enabled)]
    while stack:
        group = stack.pop()
        if len(group) == 1:
            changed = _changes(observed, group, name)
            if changed:
                culprits.append(group[0])
            elif changed is None:
                failed.append(group[0])
            continue
        parts = split(group, suspects)
        missing = [part for part in parts if frozenset(part) not in observed]
        wanted += missing
        # A half seen to change it is split now, without waiting for the other half.
        positive = [part for part in parts if part not in missing
                    and _changes(observed, part, name) is not False]
        stack += positive
        if not missing and not positive and _changes(observed, group, name):
            tangles.append(group)
    return _Walk(tuple(wanted), ordered(culprits), ordered(failed), tuple(tangles))


def _leave_one_out(group: Sequence[str]) -> list[tuple[str, ...]]:
    return [ordered(set(group) - {v}) for v in group]


def _needed(group: Sequence[str], observed: Observed, name: str) -> tuple[str, ...]:
    """The variations of `group` without which `name` no longer changes (leave-one-out).

    A variation whose leave-one-out run failed counts as needed: nothing shows it is not.
    """
    return tuple(v for v in group if _changes(observed, set(group) - {v}, name) is not True)


def next_probes(enabled: Sequence[str], differing: Sequence[str],
                observed: Observed, suspects: Suspects | None = None) -> list[tuple[str, ...]]:
    """The runs the search needs next, given what it has seen; [] when it is done.

    `observed` holds run B (every enabled variation) from the start; a set already observed
    is never run again.
    """
    suspects = suspects or {}
    if frozenset() not in observed:
        # The rerun first, beside the first part of B: when the rerun shows every difference
        # to be inherent, no other run would tell anything.
        first = split(enabled, suspects.get(differing[0], frozenset())) if differing else ()
        return [(), *first[:1]] if len(enabled) > 1 else [()]
    rerun = observed[frozenset()]
    wanted: list[tuple[str, ...]] = []
    for name in differing:
        if not enabled or (rerun is not None and name in rerun):
            continue  # inherent: no variation can be judged for it
        walk = _walk(enabled, observed, name, suspects.get(name, frozenset()))
        wanted += walk.wanted
        if walk.wanted or walk.culprits:
            continue
        for tangle in walk.tangles:
            missing = [g for g in _leave_one_out(tangle) if frozenset(g) not in observed]
            wanted += missing
            needed = _needed(tangle, observed, name)
            if not missing and needed and frozenset(needed) not in observed:
                wanted.append(needed)
    return list(dict.fromkeys(wanted))  # once each, in the order asked


def blame_outputs(enabled: Sequence[str], differing: Sequence[str],
                  observed: Observed, suspects: Suspects | None = None) -> dict[str, Blame]:
    """The verdict for each differing output, once `next_probes` has nothing more to run."""
    suspects = suspects or {}
    blames: dict[str, Blame] = {}
    rerun = observed.get(frozenset())
    for name in differing:
        if not enabled or (rerun is not None and name in rerun):
            blames[name] = Blame((), inherent=True, note="differs between two runs with "
                                 "identical settings, so no variation can be judged for it")
            continue
        walk = _walk(enabled, observed, name, suspects.get(name, frozenset()))
        failures = (f"the run with {' and with '.join(walk.failed)} alone failed, so that "
                    "could not be tested; " if walk.failed else "")
        if walk.culprits:
            blames[name] = Blame(walk.culprits, note=failures.rstrip("; ") or None)
            continue
        together = [needed for tangle in walk.tangles
                    if (needed := _needed(tangle, observed, name))
                    and _changes(observed, needed, name)]
        if together:
            blames[name] = Blame(ordered(v for needed in together for v in needed),
                                 note=f"{failures}changes only when these vary together; "
                                 "none of them alone changes it")
        elif walk.failed:
            blames[name] = Blame(walk.failed, note=f"{failures}nothing else changes it")
        else:
            blames[name] = Blame(tuple(enabled), note="no single variation changes it and no "
                                 "one set of them is needed: every enabled variation is listed")
    return blames


def probe_width(memory_per_run: int, cores: int, available: int | None) -> int:
    """How many runs of the search go at once: one per core, as many as fit in the memory
    available at the recipe's `memory` each (at least one: a run must happen anyway)."""
    width = max(1, cores)
    if available is not None and memory_per_run > 0:
        width = min(width, available // memory_per_run)
    return max(1, width)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- the runs -------------------------------------------------------------------------------

def marked_variations(difference: Difference, enabled: Iterable[str]) -> frozenset[str]:
    """The enabled variations with a mark in run B's side of `difference` and none in run
    A's (the first MARK_SCAN_LIMIT bytes of each; a link or a missing side has none)."""
    marks = {m: v for v in enabled for m in BY_NAME[v].marks}
    if not marks or difference.b is None or difference.b.link is not None:
        return frozenset()
    in_b = _marks_in(difference.b.path, marks)
    if difference.a is not None and difference.a.link is None:
        in_b -= _marks_in(difference.a.path, in_b)
    return frozenset(marks[m] for m in in_b)


def _marks_in(path: Path, marks: Iterable[bytes]) -> set[bytes]:
    """Which of `marks` occur in the file, read in chunks (a mark may span two)."""
    wanted, found = set(marks), set[bytes]()
    overlap = max((len(m) for m in wanted), default=1) - 1
    tail, read = b"", 0
    try:
        with path.open("rb") as f:
            while wanted - found and read < MARK_SCAN_LIMIT:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                read += len(chunk)
                window = tail + chunk
                found |= {m for m in wanted - found if m in window}
                tail = window[-overlap:] if overlap else b""
    except OSError:
        pass  # an output that cannot be read names no suspect; the search runs as without
    return found


def _changed(before: Artifact | None, after: Artifact | None) -> bool:
    """Whether an output differs from run A's in presence or in any compared property."""
    if before is None or after is None:
        return before is not after
    return bool(differing_properties(before, after))


def run_search(enabled: Sequence[str], differing: Sequence[str],
               observed: dict[frozenset[str], frozenset[str] | None],
               probe: Callable[[tuple[str, ...]], Probe], width: int,
               log: Log = lambda _: None, suspects: Suspects | None = None) -> list[Probe]:
    """Run what `next_probes` asks, `width` runs at once, deciding again as each one ends;
    fills `observed` and returns the runs whose results it used, in the order they started
    (the rerun of A first), whatever order they ended in."""
    started_order: list[Future[Probe]] = []
    used: set[Future[Probe]] = set()
    running: dict[Future[Probe], tuple[str, ...]] = {}
    # Not a `with` block: once the search is done, a run it no longer needs is not waited
    # for here (the sandbox removes its container when it closes).
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="explain")
    try:
        for _ in range(8 * len(enabled) + 8):  # a bound far above what the search can ask
            asked = next_probes(enabled, differing, observed, suspects)
            if not asked:
                break  # the culprits are proven: what still runs cannot change them
            # The first round is asked for again until the rerun ends: a half that ended
            # before it is known, not wanted.
            known = {*observed, *map(frozenset, running.values())}
            wanted = [w for w in asked if frozenset(w) not in known]
            started = wanted[:max(0, width - len(running))]
            if started:
                log(f"explain: {len(started)} more run(s): "
                    + ", ".join("+".join(w) or "a again" for w in started))
            for variations in started:
                future = pool.submit(probe, variations)
                running[future] = variations
                started_order.append(future)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                result = future.result()
                observed[frozenset(result.variations)] = result.changed
                used.add(future)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return [future.result() for future in started_order if future in used]


def explain_differences(recipe: Recipe, plan: BuildPlan, sandbox: Sandbox, source_tar: Path,
                        baseline: Sequence[Artifact], differences: Sequence[Difference], *,
                        wheels: Path | None = None, npm: Path | None = None,
                        width: int | None = None,
                        log: Log = lambda _: None) -> Explanation:
    """Run the search of the module docstring and return a verdict per differing output.

    `baseline` is run A's outputs; `wheels` and `npm` are what the twin runs got (a
    python_lock's wheels, an npm_lock's cache), so that every extra run installs the same;
    `width` is how many runs go at once (default: `probe_width` of this machine and the
    recipe's memory).
    """
    started = time.monotonic()
    enabled = plan.variations
    differing = tuple(d.name for d in differences)
    by_name = {a.name: a for a in baseline}
    observed: dict[frozenset[str], frozenset[str] | None] = {
        frozenset(enabled): frozenset(differing)}  # run B
    if width is None:
        width = probe_width(memory_bytes(recipe.build.memory), usable_cores(),
                            available_memory())
    # An output that follows the real clock (a file time the kernel stamped, seen through
    # libfaketime's shifted fstat) must show as inherent, not by luck: the rerun of A starts
    # in a later second than A's last write (a wait of 0.3 s on average).
    last_write = max((a.path.lstat().st_mtime for a in baseline), default=0.0)
    time.sleep(max(0.0, math.floor(last_write) + 1 - time.time()))

    def probe(variations: tuple[str, ...]) -> Probe:
        name = "x-" + ("+".join(variations) or "rerun")
        run = plan_run(recipe, name, variations, plan.source_date_epoch,
                       wheels=plan.runs[0].wheels, npm=plan.runs[0].npm)
        result = sandbox.run(run, source_tar, wheels=wheels, npm=npm)
        try:
            if result.exit_code != 0 or result.timed_out:
                return Probe(variations, None, result.exit_code, result.seconds)
            try:
                outputs = collect_outputs(result.out_dir, plan.outputs, name, plan.limits)
            except BuildFailed:
                return Probe(variations, None, result.exit_code, result.seconds)
            got = {a.name: a for a in outputs}
            changed = frozenset(n for n in differing if _changed(by_name.get(n), got.get(n)))
            return Probe(variations, changed, result.exit_code, result.seconds)
        finally:
            # Only the hashes are kept: a large build must not pile up a copy per probe.
            shutil.rmtree(result.out_dir, ignore_errors=True)

    suspects = {d.name: marked_variations(d, enabled) for d in differences}
    for name, marked in suspects.items():
        if marked:
            log(f"explain: {name}: run b wrote what {', '.join(ordered(marked))} set: "
                "tested first")
    log(f"explain: up to {width} run(s) at once")
    probes = run_search(enabled, differing, observed, probe, width, log, suspects)
    blames = blame_outputs(enabled, differing, observed, suspects)
    seconds = time.monotonic() - started
    log(f"explain: {len(probes)} extra run(s) in {seconds:.1f} s")
    return Explanation(blames, tuple(probes), seconds)
