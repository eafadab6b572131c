"""Benchmark of the audit log: the cost of one append and of `rebuild log verify` at
1,000, 100,000 and 1,000,000 entries (design.md, "The audit log": an append rewrites only
the right edge of the tiles, so it should cost the same at every size).

The logs are filled through the library in batches of 10,000 (the same code path as one
append, with more entries per call); each timed append is one signed entry, as a build or an
approval makes. `log verify` is the CLI, recomputing the whole tree. Results go to
bench/results/auditlog.md and auditlog.json. Usage: .venv/bin/python bench/auditlog.py
[--sizes 1000,100000,1000000] [--reps 20].
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rebuild.store import tlog
from rebuild.store.auditlog import AuditLog
from rebuild.store.layout import Store, canonical_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BATCH = 10_000


def entry(i: int) -> bytes:
    """An entry the size of a real approval entry (about 600 bytes); it names no store
    record, so that `log verify`'s store check has nothing to look up."""
    return canonical_json({
        "v": 1, "event": "bench", "release": f"bench@1.0.{i}", "manifest": "sha256:" + "a" * 64,
        "records": [],
        "statements": {"approval": {"statement": "sha256:" + "c" * 64,
                                    "bundle": "sha256:" + "d" * 64}},
        "actor": {"keyid": "e" * 64, "name": "Bench Quality", "role": "quality"},
        "meaning": "released for the benchmark", "time": "2030-01-01T00:00:00Z"})


def measure(size: int, reps: int, work: Path, signer: tlog.NoteSigner,
            public: Path) -> dict[str, object]:
    store = Store(work / f"store-{size}")
    store.init()
    log = AuditLog.of(store)
    started = time.perf_counter()
    for start in range(0, size, BATCH):
        log.append([entry(i) for i in range(start, min(size, start + BATCH))], signer)
    fill = time.perf_counter() - started
    appends = []
    for i in range(reps):
        t0 = time.perf_counter()
        AuditLog.of(store).append([entry(size + i)], signer)  # a fresh reader, as a CLI has
        appends.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rebuild", "--store", str(store.root), "log",
                           "verify", "--log-key", str(public)], capture_output=True, text=True,
                          check=False)
    verify = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"log verify failed at {size}: {proc.stderr}")
    return {"entries": size + reps, "fill_s": round(fill, 2),
            "append_median_ms": round(statistics.median(appends) * 1000, 2),
            "append_max_ms": round(max(appends) * 1000, 2),
            "verify_s": round(verify, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    signer = tlog.NoteSigner.generate("bench.local/audit-log")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rebuild-bench-log-") as tmp:
        public = Path(tmp) / "log.pub"
        public.write_text(signer.verifier.to_text())
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"audit log: {size} entries …", file=sys.stderr, flush=True)
            rows.append(measure(size, args.reps, Path(tmp), signer, public))
    load = os.getloadavg()
    lines = ["# Audit log benchmark", "",
             f"Measured {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}, nproc {os.cpu_count()}, load "
             f"average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine). One append = "
             f"one signed entry through `AuditLog.append` (median and max of {args.reps}); "
             "`log verify` = the CLI recomputing every leaf, tile and the root, with the "
             "checkpoint signature checked.", "",
             "| entries | fill (batches of 10,000) s | append median ms | append max ms | "
             "log verify s |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['entries']:,} | {r['fill_s']} | {r['append_median_ms']} | "
              f"{r['append_max_ms']} | {r['verify_s']} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auditlog.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "auditlog.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
