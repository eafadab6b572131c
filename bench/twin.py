"""A tiny twin build: rebuild against a raw `docker run` pair and reprotest."""

from __future__ import annotations

import json
import shlex

from harness import (
    SCRIPT,
    BenchError,
    Contender,
    Context,
    Section,
    base_image,
    goal,
    measure,
    package_version,
    rebuild_argv,
    say,
    seed_store,
    startup_contender,
    timed,
    timings,
    write_recipe,
)
from peers import RawPair, Reprotest

from rebuild.build.sandbox import (
    Sandbox,
    connect,
)
from rebuild.build.variations import NAMES
from rebuild.cli.common import OPTIONS


def twin_overhead(ctx: Context) -> Section:
    """Issue 2: what a twin build costs beyond the two containers, and against reprotest."""
    image = base_image()
    directory = ctx.work / "twin"
    directory.mkdir()
    recipe = write_recipe(directory, image)
    store = seed_store(directory / "store")  # a build needs its image archived in its store
    rebuild_argv_ = rebuild_argv(store, "build", recipe, "--json")
    parts: dict[str, list[float]] = {"containers": [], "stages": [], "outside": []}

    def rebuild_build() -> float:
        seconds, proc = timed(rebuild_argv_, cwd=directory, what="rebuild build")
        outcome = json.loads(proc.stdout)
        if not outcome["reproducible"] or len(outcome["runs"][1]["variations"]) != len(NAMES):
            raise BenchError(f"rebuild build did not vary all {len(NAMES)} variations "
                             f"reproducibly: {proc.stdout}")
        parts["containers"].append(max(r["seconds"] for r in outcome["runs"]))
        parts["stages"].append(outcome["timings"]["total"])
        parts["outside"].append(seconds - outcome["timings"]["total"])
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
            Contender("startup", "    of those: `rebuild --version` alone (interpreter "
                      "start, the CLI's imports)", startup.run),
        ]
        samples = measure(contenders, ctx.reps, say, ctx.loads)
    for key, seconds in parts.items():
        samples[key] = seconds[-ctx.reps:]
    labels = {c.key: c.label for c in contenders}
    labels["outside"] = ("  of which: outside the build's stages (interpreter, imports, "
                         "exit: wall − timings.total)")
    labels["stages"] = ("  of which: the build's stages (timings.total: fetch, runs, "
                        "compare, evidence, audit log)")
    labels["containers"] = ("    of those: both containers, as rebuild times them "
                            "(runs[].seconds, max of a, b)")
    rows = timings(samples, {k: labels[k] for k in
                             ("rebuild", "outside", "startup", "stages", "containers", "raw",
                              "reprotest")},
                   informational=("startup", "outside", "stages", "containers"))
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
        "talks to the engine in-process (rebuild.build.engine); source copies and run B's "
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
