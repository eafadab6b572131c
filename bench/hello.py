"""GNU hello 2.10, a real autotools build: the twin build and the culprit search, against
reprotest doing the same on the host.

The source is Debian's `hello_2.10.orig.tar.gz` (the upstream release tarball), fetched once
with `apt-get source --download-only` through a private sources list (deb-src lines in a
directory of the bench's own, so the machine's apt configuration is not touched) and kept in
.rebuild/bench-sources/. The build is upstream's plain `./configure && make` with no
reproducibility flags: the binary records the directory it was built in (DWARF comp_dir), so
both tools must find it not reproducible, and the culprit search must name build_path.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    C_DEFINITION,
    EPOCH,
    ROOT,
    BenchError,
    Context,
    Section,
    Timing,
    base_image,
    load_1min,
    load_average,
    package_version,
    rebuild_argv,
    say,
    seed_store,
)

SOURCES = ROOT / ".rebuild" / "bench-sources"
ORIG = "hello_2.10.orig.tar.gz"
# reprotest's name of a variation -> rebuild's (as tests/corpus/run_reprotest.py maps them).
REPROTEST_NAMES = {"build_path": "build_path", "domain_host": "hostname", "environment": "env",
                   "exec_path": "exec_path", "fileordering": "file_order", "home": "home",
                   "locales": "locale", "num_cpus": "cpus", "time": "time",
                   "timezone": "timezone", "umask": "umask", "user_group": "user"}
# Configure and make quietly; the binary's mode is set (modes are compared, the umask varies).
BUILD = ("./configure --prefix=/usr >/dev/null && make >/dev/null && mkdir -p {out} "
         "&& cp hello {out}/hello && chmod 755 {out}/hello")
LONG = 3600  # a culprit search on a loaded machine can take well over the harness's 600 s
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def fetch_hello() -> Path:
    """The upstream tarball from Debian's source package (cached)."""
    tarball = SOURCES / ORIG
    if tarball.exists():
        return tarball
    SOURCES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apt-src-") as tmp:
        parts, lists = Path(tmp) / "sources.list.d", Path(tmp) / "lists"
        parts.mkdir()
        (lists / "partial").mkdir(parents=True)
        (parts / "deb-src.sources").write_text(
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
        apt = ["apt-get", "-q", "-o", "Dir::Etc::SourceList=/dev/null",
               "-o", f"Dir::Etc::SourceParts={parts}", "-o", f"Dir::State::Lists={lists}"]
        for argv in ([*apt, "update"], [*apt, "source", "--download-only", "hello=2.10-3"]):
            proc = subprocess.run(argv, cwd=SOURCES, capture_output=True, text=True,
                                  timeout=600, check=False)
            if proc.returncode != 0:
                raise BenchError(f"{shlex.join(argv)} failed: {proc.stderr.strip()[-1000:]}")
    if not tarball.exists():
        raise BenchError(f"apt-get source hello did not leave {ORIG} in {SOURCES}")
    return tarball


def unpack(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest / "hello-2.10"


def write_recipe(directory: Path, image: str) -> Path:
    recipe = directory / "gnu-hello.toml"
    recipe.write_text(
        '[recipe]\nname = "gnu-hello"\nversion = "2.10"\n\n[source]\npath = "hello-2.10"\n\n'
        f'[environment]\nimage = "{image}"\nsource_date_epoch = {EPOCH}\n\n'
        f'[build]\ncommand = ["sh", "-c", {json.dumps(BUILD.format(out="/out"))}]\n'
        'outputs = ["hello"]\ntimeout = 1200\nmemory = "2g"\n\n[check]\nvary = ["all"]\n')
    return recipe


def run(argv: list[str], what: str, *, cwd: Path, ok: tuple[int, ...] = (0,),
        env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=LONG,
                          check=False, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode not in ok:
        raise BenchError(f"{what} exited with {proc.returncode}: {shlex.join(argv)}\n"
                         f"{(proc.stderr + proc.stdout).strip()[-2000:]}")
    return seconds, proc


def reprotest_env(home: str) -> dict[str, str]:
    # The host's Debian tools, as the corpus runs reprotest (tests/corpus/run_reprotest.py).
    return {"PATH": HOST_PATH, "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
            "SOURCE_DATE_EPOCH": str(EPOCH)}


def reprotest_culprits(output: str) -> tuple[str, ...] | None:
    """reprotest --auto-build's culprits in rebuild's names; None: it named none."""
    found = re.search(r"Observed unreproducibility when varying each of the following:\n"
                      r"(.*)\n", output)
    if found is None:
        return None
    return tuple(sorted(REPROTEST_NAMES.get(v, v) for v in found.group(1).split()))


def gnu_hello(ctx: Context) -> Section:
    """GNU hello 2.10: twin build and culprit search, rebuild against reprotest (once each:
    a round takes minutes)."""
    image = base_image(C_DEFINITION)
    directory = ctx.work / "hello"
    directory.mkdir()
    tarball = fetch_hello()
    source = unpack(tarball, directory)
    recipe = write_recipe(directory, image)
    store = seed_store(directory / "store")
    twin_argv = rebuild_argv(store, "build", recipe, "--json")
    explain_argv = rebuild_argv(store, "build", recipe, "--explain", "--json")
    reprotest_twin = ["reprotest", "--verbosity=1", "--variations=+all", "--min-cpus=1",
                      "-c", BUILD.format(out="out"), str(source), "out/hello"]
    reprotest_auto = ["reprotest", "--variations=+all", "--auto-build", "--min-cpus=1",
                      "-c", BUILD.format(out="out"), str(source), "out/hello"]
    samples: dict[str, float] = {}
    loads: dict[str, float] = {}
    facts: dict[str, Any] = {}
    # The fetch of the source into the store, untimed: both tools start from a source tree.
    run(rebuild_argv(store, "fetch", recipe), "rebuild fetch", cwd=directory)
    with tempfile.TemporaryDirectory(prefix="reprotest-home-") as home:
        steps = (
            ("rebuild_twin", twin_argv, (0, 1), None),
            ("reprotest_twin", reprotest_twin, (0, 1), reprotest_env(home)),
            ("rebuild_explain", explain_argv, (0, 1), None),
            ("reprotest_explain", reprotest_auto, (0, 1), reprotest_env(home)),
        )
        for key, argv, ok, env in steps:
            say(f"  {key} (load {load_1min():.2f})")
            before = load_1min()
            seconds, proc = run(argv, key, cwd=directory, ok=ok, env=env)
            samples[key] = seconds
            loads[key] = max(before, load_1min())
            ctx.loads.append(load_1min())
            say(f"  {key}: {seconds:.1f} s (load {load_1min():.2f})")
            facts[key] = proc
    twin = json.loads(facts["rebuild_twin"].stdout)
    explained = json.loads(facts["rebuild_explain"].stdout)
    if twin["reproducible"] or explained["reproducible"]:
        raise BenchError("rebuild found GNU hello's plain build reproducible: the binary "
                         "records its build directory, so it cannot be")
    rebuild_culprits = tuple(sorted({v for d in explained["differences"]
                                     for v in d["variations"]}))
    extra_runs = len(explained["explain"]["runs"]) if "explain" in explained else None
    reprotest_out = facts["reprotest_explain"].stdout + facts["reprotest_explain"].stderr
    peer_culprits = reprotest_culprits(reprotest_out)
    peer_twin = facts["reprotest_twin"].stdout
    if "Reproduction successful" in peer_twin:
        raise BenchError("reprotest found GNU hello's plain build reproducible")
    labels = {
        "rebuild_twin": "rebuild build (twin, 12 variations)",
        "reprotest_twin": "reprotest --variations=+all (control + experiment, host)",
        "rebuild_explain": "rebuild build --explain (twin + culprit search)",
        "reprotest_explain": "reprotest --variations=+all --auto-build (host)",
    }
    rows = tuple(Timing(k, f"{label} [load {loads[k]:.1f}]", (samples[k],))
                 for k, label in labels.items())
    twin_ratio = samples["rebuild_twin"] / samples["reprotest_twin"]
    explain_ratio = samples["rebuild_explain"] / samples["reprotest_explain"]
    verdicts = (
        f"twin build: rebuild {samples['rebuild_twin']:.1f} s, reprotest "
        f"{samples['reprotest_twin']:.1f} s: {twin_ratio:.2f}× reprotest's time (1-minute "
        f"load {loads['rebuild_twin']:.1f} / {loads['reprotest_twin']:.1f})",
        f"culprit search: rebuild --explain {samples['rebuild_explain']:.1f} s, reprotest "
        f"--auto-build {samples['reprotest_explain']:.1f} s: {explain_ratio:.2f}× reprotest's "
        f"time (1-minute load {loads['rebuild_explain']:.1f} / "
        f"{loads['reprotest_explain']:.1f})",
        f"culprits: rebuild {', '.join(rebuild_culprits) or 'inherent'}; reprotest "
        f"{', '.join(peer_culprits) if peer_culprits else 'none named'}",
    )
    return Section(
        name="gnu_hello",
        title="GNU hello 2.10: twin build and culprit search against reprotest",
        method=("GNU hello 2.10 from Debian's source package (the upstream tarball), "
                f"`{BUILD.format(out='/out')}`; each contender once, in the order rebuild "
                "twin, reprotest twin, rebuild --explain, reprotest --auto-build (a round "
                "takes minutes; the machine is shared, so each row gives the 1-minute load "
                "average, the higher of before and after). Wall seconds."),
        timings=rows,
        verdicts=verdicts,
        commands=(("rebuild twin", shlex.join(twin_argv)),
                  ("rebuild culprit search", shlex.join(explain_argv)),
                  ("reprotest twin", shlex.join(reprotest_twin)),
                  ("reprotest culprit search", shlex.join(reprotest_auto))),
        notes=(
            f"Source: {ORIG} ({tarball.stat().st_size:,} bytes), from `apt-get source "
            "--download-only hello=2.10-3` through a private deb-src list; GitHub is not "
            "reachable here, Debian's archive is.",
            "rebuild builds in the debian-c image (bookworm's gcc), network off, both runs "
            "at once; run b varies all 12 variations. Its culprit search runs as many "
            f"extra runs at once as the machine has cores ({os.cpu_count()}), bounded by "
            "the recipe's memory (2g) against available RAM"
            + (f"; it made {extra_runs} extra runs" if extra_runs is not None else "") + ".",
            f"reprotest {package_version('reprotest')} builds on the host (bookworm's gcc "
            "too), one build after the other, --min-cpus=1 as the corpus runs it; "
            "--auto-build runs a control build, then one build per variation.",
            f"load average around the section: {load_average()} at the end",
        ),
        data={"twin_ratio": round(twin_ratio, 3), "explain_ratio": round(explain_ratio, 3),
              "rebuild_culprits": list(rebuild_culprits),
              "reprotest_culprits": list(peer_culprits or ()),
              "loads": {k: round(v, 2) for k, v in loads.items()}, "image": image},
        repeated=False,
    )
