"""The wider probe: `rebuild recipe pypi` + `rebuild build` + `rebuild compare-upstream` on the
most downloaded pure-Python packages on PyPI; how many reproduce the published wheel bit for
bit, and why the others do not (bench/results/pypi_probe.md). Not in CI: it takes a while.

The ranking is hugovk/top-pypi-packages, `top-pypi-packages-30-days.min.json` as last updated
2022-01-01 (the snapshot read when this probe was written; its order is in `RANKED`). Each
project's newest release on PyPI is probed. A project is pure-Python when that release has a
`…-none-any.whl`; the first `--count` (25) such projects are probed, in rank order, and every
one is reported, with the step at which it stopped and why.

    .venv/bin/python bench/pypi_probe.py [--count 25] [--only NAME …]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import C_DEFINITION, RESULTS, ROOT, base_image, rebuild_argv, say, seed_store

SOURCE = ("hugovk/top-pypi-packages, top-pypi-packages-30-days.min.json, "
          "last_update 2022-01-01 09:13:14")
RANKED = (
    "setuptools", "botocore", "urllib3", "boto3", "s3transfer", "six", "python-dateutil",
    "pyyaml", "requests", "idna", "certifi", "awscli", "charset-normalizer", "colorama", "rsa",
    "jmespath", "pyasn1", "wheel", "typing-extensions", "packaging", "numpy", "pip",
    "importlib-metadata", "pyparsing", "google-api-core", "zipp", "cryptography", "protobuf",
    "pandas", "cffi", "click", "markupsafe", "jinja2", "docutils", "attrs", "pytz", "pyjwt",
    "pycparser", "google-auth", "oauthlib", "requests-oauthlib", "cachetools",
    "pyasn1-modules", "google-cloud-core", "sqlalchemy", "wrapt", "chardet", "werkzeug",
    "google-cloud-storage", "azure-core", "isodate", "toml", "aiohttp", "websocket-client",
    "flask", "googleapis-common-protos", "multidict", "yarl", "decorator", "greenlet")
WORK = ROOT / ".rebuild" / "pypi-probe"
OUT = RESULTS / "pypi_probe.md"
STEP_TIMEOUT = 1800


@dataclass
class Probe:
    project: str
    version: str = ""
    stage: str = "pending"  # recipe, build, compare, equal
    backend: str = ""
    twin: str = ""  # reproducible / NOT reproducible / failed
    upstream: str = ""  # equal / differs / not compared
    why: str = ""
    seconds: float = 0.0


def newest(project: str) -> tuple[str, list[dict[str, Any]]]:
    """The newest release's version and files (PyPI's project JSON)."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{project}/json", timeout=60) as r:
        data = json.loads(r.read(64 << 20))
    version = str(data["info"]["version"])
    return version, list(data.get("releases", {}).get(version, []))


def is_pure(files: list[dict[str, Any]]) -> bool:
    return any(str(f["filename"]).endswith("-none-any.whl") for f in files)


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                          check=False)


def last_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    text = lines[-1].removeprefix("error: ") if lines else proc.stderr.strip()[-300:]
    return " ".join(text.split())[:400]


def why_differs(report: str) -> str:
    """A one-line reading of a wheel comparison's report (build.compare's zip summary)."""
    summary = re.search(r"zip archive: (\d+) member\(s\) in a, (\d+) in b; content differs "
                        r"in (\d+): (.*?); \S+ compares", report)
    if summary is None:
        return "see the report (no member summary)"
    in_a, in_b, count, names = summary.groups()
    members = "" if in_a == in_b else f"{in_a} members against {in_b}; "
    if count == "0":
        return members + "same member contents, other zip metadata (times, modes, order)"
    shown = [n.rsplit("/", 1)[-1] if ".dist-info/" in n else n for n in names.split(", ")[:5]]
    return f"{members}content differs in {count}: {', '.join(shown)}"


def probe(project: str, store: Path, recipes: Path) -> Probe:
    result = Probe(project)
    started = time.perf_counter()
    try:
        result.version, _ = newest(project)
    except OSError as exc:
        result.stage, result.why = "recipe", f"PyPI: {exc}"
        return result
    spec = f"{project}=={result.version}"
    proc = run(rebuild_argv(store, "recipe", "pypi", spec, "-o", recipes, "--json"), ROOT)
    if proc.returncode != 0:
        result.stage, result.why = "recipe", last_error(proc)
        result.seconds = time.perf_counter() - started
        return result
    written = json.loads(proc.stdout)
    result.backend = str(written["backend_pin"])
    proc = run(rebuild_argv(store, "build", written["recipe"], "--json"), ROOT)
    if proc.returncode not in (0, 1):
        result.stage, result.twin, result.why = "build", "failed", last_error(proc)
        result.seconds = time.perf_counter() - started
        return result
    built = json.loads(proc.stdout)
    result.twin = "reproducible" if built["reproducible"] else "NOT reproducible"
    if not built["reproducible"]:
        result.stage = "build"
        report = "\n".join(run(rebuild_argv(store, "store", "cat", d["report"]), ROOT).stdout
                           for d in built["differences"])
        keep_report(project, "twin", report)
        result.why = "runs a and b differ: " + why_differs(report)
        result.seconds = time.perf_counter() - started
        return result
    proc = run(rebuild_argv(store, "compare-upstream", written["release"], "--json"), ROOT)
    result.seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        result.stage, result.upstream, result.why = "compare", "not compared", last_error(proc)
        return result
    compared = json.loads(proc.stdout)
    if compared["equal"]:
        result.stage, result.upstream = "equal", "equal"
        return result
    result.stage, result.upstream = "compare", "differs"
    report = run(rebuild_argv(store, "store", "cat", compared["report"]), ROOT).stdout
    keep_report(project, "upstream", report)
    result.why = why_differs(report)
    return result


def keep_report(project: str, kind: str, report: str) -> None:
    (WORK / "reports").mkdir(parents=True, exist_ok=True)
    (WORK / "reports" / f"{project}-{kind}.txt").write_text(report)


def write_report(probes: list[Probe], skipped: list[str], seconds: float) -> None:
    equal = sum(p.stage == "equal" for p in probes)
    lines = [
        "# PyPI probe: published wheels rebuilt from their sdists", "",
        "Written by `bench/pypi_probe.py` (not by hand). For each project: `rebuild recipe "
        "pypi NAME==VERSION` (newest release), `rebuild build` (twin build, network off), "
        "`rebuild compare-upstream` (the built wheel against the published one, byte for "
        "byte).", "",
        f"Ranking: {SOURCE}; the first {len(probes)} projects whose newest release has a "
        "pure-Python wheel, in rank order.", "",
        f"**{equal} of {len(probes)} reproduce the published wheel bit for bit.** "
        f"Total {seconds / 60:.1f} min on this machine (2 cores, shared).", "",
        "| # | project | version | backend | twin build | upstream | why not | s |",
        "|---|---|---|---|---|---|---|---|"]
    for n, p in enumerate(probes, 1):
        lines.append(f"| {n} | {p.project} | {p.version} | {p.backend or '—'} | "
                     f"{p.twin or '—'} | {p.upstream or '—'} | "
                     f"{p.why.replace('|', '/') or '—'} | {p.seconds:.0f} |")
    lines += ["", "Not pure-Python (skipped: no `…-none-any.whl` in the newest release): "
              + (", ".join(skipped) or "none") + ".", "",
              "Diffoscope reports of the wheels that differ: `.rebuild/pypi-probe/reports/` "
              "after a run (not committed).", ""]
    OUT.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=25)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    base_image(C_DEFINITION)
    WORK.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d%H%M%S")
    store = seed_store(WORK / f"store-{stamp}")
    recipes = WORK / f"recipes-{stamp}"
    probes: list[Probe] = []
    skipped: list[str] = []
    for project in args.only or RANKED:
        if len(probes) >= args.count:
            break
        try:
            _, files = newest(project)
        except OSError as exc:
            say(f"{project}: PyPI unreachable ({exc})")
            continue
        if not is_pure(files):
            skipped.append(project)
            continue
        say(f"[{len(probes) + 1}/{args.count}] {project}")
        result = probe(project, store, recipes)
        say(f"  {result.stage}: {result.twin} {result.upstream} {result.why} "
            f"({result.seconds:.0f} s)")
        probes.append(result)
        write_report(probes, skipped, time.perf_counter() - started)
    write_report(probes, skipped, time.perf_counter() - started)
    say(f"wrote {OUT}")


if __name__ == "__main__":
    main()
