"""The detection corpus beside reprotest."""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from harness import (
    C_DEFINITION,
    MINIMAL_DEFINITION,
    ROOT,
    BenchError,
    Context,
    Section,
    Table,
    base_image,
    load_1min,
    say,
    seed_store,
    timings,
)

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
