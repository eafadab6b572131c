"""Benchmarks: rebuild against the plain tools it wraps, side by side on this machine.

`make bench` runs every section in `SECTIONS`; `--only NAME` runs one, `--reps N` sets the
number of timed repetitions. Each section is a function from a `Context` to a `Section`, in a
module of its subject (twin, reproduce, inputs, evidence, outputs, show, dashboard, corpus,
hello, registry); `harness` holds what they share and `peers` the tools they are measured against.
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
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corpus import corpus
from dashboard import dashboard_10k
from evidence import evidence_share
from harness import (
    REBUILD_CLI,
    RESULTS,
    ROOT,
    BenchError,
    Context,
    Section,
    load_average,
    package_version,
    say,
)
from hello import gnu_hello
from inputs import fetch_warm
from outputs import outputs_20k
from registry import registry_transfer
from reproduce import reproduce_vs_build
from show import index_writes, show_10k, store_scale
from twin import twin_overhead

from rebuild import __version__

SectionFn = Callable[[Context], Section]
SECTIONS: tuple[SectionFn, ...] = (twin_overhead, reproduce_vs_build, fetch_warm,
                                   evidence_share, outputs_20k, show_10k, store_scale,
                                   index_writes, dashboard_10k, corpus, gnu_hello,
                                   registry_transfer)


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
