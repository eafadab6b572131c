"""The real-world corpus, side by side with reprotest: writes tests/realworld/RESULTS.md.

Each entry is built the way tests/realworld/ builds it (tests/realworld/entries.py), timed,
and then built by reprotest on the host from the same source tree with the same command:

- GNU hello 2.10 (Debian's orig tarball): the plain build with `rebuild build --explain`
  (the verdict and the culprits it names) and `reprotest --variations=+all`; the build with
  `-ffile-prefix-map` with both.
- idna 3.10 and attrs 24.2.0: `rebuild recipe pypi`, `rebuild build` and `rebuild
  compare-upstream`; reprotest runs the recipe's command on the sdist's tree in a host venv
  holding the recipe's hashed lock (its SOURCE_DATE_EPOCH, TZ and variations as the recipe
  has them).

    .venv/bin/python bench/realworld.py        (about 15 minutes on 2 shared cores)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import C_DEFINITION, ROOT, base_image, package_version, rebuild_argv, say, seed_store

sys.path.insert(0, str(ROOT))
from tests.realworld.entries import (
    HELLO_BUILD,
    HELLO_EPOCH,
    PREFIX_MAP,
    PYPI,
    hello_recipe,
)

NODE_DEFINITION = ROOT / "images" / "debian-node.toml"
OUT = ROOT / "tests" / "realworld" / "RESULTS.md"
WORK = ROOT / ".rebuild" / "realworld-bench"
CACHE = ROOT / ".rebuild" / "realworld-downloads"
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
LONG = 3600


@dataclass
class Row:
    entry: str
    rebuild: str
    rebuild_s: float
    reprotest: str
    reprotest_s: float
    note: str = ""


def timed(argv: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None
          ) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=LONG,
                          check=False, env=env)
    return time.perf_counter() - started, proc


def seed_downloads(store: Path) -> None:
    for cached in CACHE.glob("*") if CACHE.is_dir() else ():
        target = store / "blobs" / "sha256" / cached.name
        if not target.exists():
            os.link(cached, target)


def reprotest(source: Path, command: str, artifact: str, variations: str, home: str
              ) -> tuple[str, float]:
    argv = ["reprotest", "--verbosity=1", f"--variations={variations}", "--min-cpus=1",
            "-c", command, str(source), artifact]
    env = {"PATH": HOST_PATH, "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    seconds, proc = timed(argv, env=env)
    out = proc.stdout + proc.stderr
    verdict = ("reproducible" if "Reproduction successful" in out else
               "NOT reproducible" if proc.returncode == 1 else f"error (exit {proc.returncode})")
    return verdict, seconds


def rebuild_verdict(proc: subprocess.CompletedProcess[str]) -> str:
    if proc.returncode not in (0, 1):
        return f"error (exit {proc.returncode})"
    return "reproducible" if json.loads(proc.stdout)["reproducible"] else "NOT reproducible"


def hello_rows(image: str, store: Path, home: str) -> list[Row]:
    rows = []
    plain = hello_recipe(WORK, image, prefix_map=False)
    mapped = hello_recipe(WORK, image, prefix_map=True)
    timed(rebuild_argv(store, "fetch", plain))  # both tools start from a source tree
    with tarfile.open(store / "blobs" / "sha256" / tomllib.loads(plain.read_text())[
            "source"]["sha256"]) as tar:
        tar.extractall(WORK, filter="data")
    source = WORK / "hello-2.10"
    for path in source.rglob("*"):  # the tree as rebuild's source tar gives it
        os.utime(path, (HELLO_EPOCH, HELLO_EPOCH), follow_symlinks=False)
    say("gnu hello: rebuild build (plain)")
    seconds, proc = timed(rebuild_argv(store, "build", plain, "--json"))
    say("gnu hello: rebuild build --explain (plain)")
    explain_s, explained = timed(rebuild_argv(store, "build", plain, "--explain", "--json"))
    culprits = sorted({v for d in json.loads(explained.stdout).get("differences", [])
                       for v in d["variations"]}) if explained.returncode in (0, 1) else []
    say("gnu hello: reprotest (plain)")
    peer, peer_s = reprotest(source, HELLO_BUILD.format(flags="").replace("/out", "out"),
                             "out/hello", "+all", home)
    rows.append(Row("GNU hello 2.10, plain `./configure && make`",
                    f"{rebuild_verdict(proc)}; --explain names {', '.join(culprits) or '—'}",
                    seconds, peer, peer_s,
                    f"twin builds timed; rebuild build --explain took {explain_s:.0f} s"))
    say("gnu hello: rebuild build (prefix map)")
    seconds, proc = timed(rebuild_argv(store, "build", mapped, "--json"))
    say("gnu hello: reprotest (prefix map)")
    peer, peer_s = reprotest(source, HELLO_BUILD.format(flags=PREFIX_MAP).replace("/out", "out"),
                             "out/hello", "+all", home)
    rows.append(Row("GNU hello 2.10, `CFLAGS=-ffile-prefix-map=$PWD=.`", rebuild_verdict(proc),
                    seconds, peer, peer_s))
    return rows


def pypi_rows(store: Path, home: str) -> list[Row]:
    rows = []
    for entry in PYPI:
        say(f"{entry.spec}: rebuild recipe pypi, build, compare-upstream")
        recipes = WORK / "recipes"
        s1, written = timed(rebuild_argv(store, "recipe", "pypi", entry.spec, "-o", recipes,
                                         "--json"))
        if written.returncode != 0:
            rows.append(Row(entry.spec, f"recipe failed: {written.stderr.strip()[-200:]}",
                            s1, "not run", 0))
            continue
        recipe_path = Path(json.loads(written.stdout)["recipe"])
        s2, built = timed(rebuild_argv(store, "build", recipe_path, "--json"))
        s3, compared = timed(rebuild_argv(store, "compare-upstream", entry.release, "--json"))
        upstream = ("equal to the published wheel" if compared.returncode == 0 else
                    "differs from the published wheel" if compared.returncode == 1 else
                    f"not compared (exit {compared.returncode})")
        recipe = tomllib.loads(recipe_path.read_text())
        source, venv = WORK / f"src-{entry.release}", WORK / f"venv-{entry.release}"
        with tarfile.open(store / "blobs" / "sha256" / recipe["source"]["sha256"]) as tar:
            tar.extractall(source, filter="data")
        tree = next(source.iterdir())
        epoch = int(recipe["environment"]["source_date_epoch"])
        for path in tree.rglob("*"):
            os.utime(path, (epoch, epoch), follow_symlinks=False)
        timed(["/usr/bin/python3", "-m", "venv", str(venv)])
        timed([str(venv / "bin" / "pip"), "install", "--quiet", "--require-hashes", "-r",
               str(recipes / recipe["environment"]["python_lock"])],
              env={"PATH": HOST_PATH, "HOME": home, "PIP_CONFIG_FILE": "/dev/null"})
        exports = "".join(f"export {k}={shlex.quote(v)}; "
                          for k, v in recipe["build"].get("env", {}).items())
        command = (f"export SOURCE_DATE_EPOCH={epoch} PATH={venv}/bin:$PATH; {exports}"
                   + recipe["build"]["command"][2].replace("/out", "out"))
        variations = "+all" if recipe["check"]["vary"] == ["all"] else "+all,-timezone"
        say(f"{entry.spec}: reprotest")
        wheel = recipe["build"]["outputs"][0]
        peer, peer_s = reprotest(tree, command, f"out/{wheel}", variations, home)
        rows.append(Row(entry.spec, f"{rebuild_verdict(built)}; {upstream}", s1 + s2 + s3,
                        peer, peer_s, f"backend {json.loads(written.stdout)['backend_pin']}; "
                        "rebuild's time: recipe pypi + build + compare-upstream"))
    return rows


def npm_rows(store: Path, home: str) -> list[Row]:
    """examples/npm-app: rebuild from its lock with the network off; reprotest on the host
    with npm's cache filled from the same verified tarballs, installing offline too."""
    image = base_image(NODE_DEFINITION)
    shutil.copytree(ROOT / "examples" / "npm-app", WORK / "examples" / "npm-app")
    (WORK / "recipes").mkdir(exist_ok=True)
    recipe = WORK / "recipes" / "npm-app.toml"
    text = (ROOT / "recipes" / "npm-app.toml").read_text()
    recipe.write_text(re.sub(r'image = "[^"]*"', f'image = "{image}"', text, count=1))
    _, fetched = timed(rebuild_argv(store, "fetch", recipe, "--json"))
    packages = json.loads(fetched.stdout)["recipes"][0]["npm"]
    say("npm-app: rebuild build")
    seconds, proc = timed(rebuild_argv(store, "build", recipe, "--json"))
    cache = WORK / "npm-cache"
    for package in packages:
        # npm takes a file for a tarball by its name's extension.
        tarball = WORK / f"{package['name'].replace('/', '-')}-{package['version']}.tgz"
        shutil.copy(store / "blobs" / "sha256" / package["blob"].removeprefix("sha256:"),
                    tarball)
        subprocess.run(["npm", "cache", "add", str(tarball), "--cache", str(cache)],
                       check=True, capture_output=True)
    say("npm-app: reprotest")
    peer, peer_s = reprotest(WORK / "examples" / "npm-app",
                             f"npm ci --offline --cache {cache} && npm run build -- out",
                             "out/parity.txt", "+all", home)
    return [Row("npm-app (is-odd 3.0.1, is-number 6.0.0), from its package-lock.json",
                rebuild_verdict(proc), seconds, peer, peer_s,
                "rebuild: npm ci --offline from the fetched tarballs; reprotest: host npm, "
                "its cache filled from the same tarballs")]


def kept_rows(prefix: str) -> list[str]:
    """The table rows of RESULTS.md that do not start with `prefix` (an entry left as it
    was when another one is run alone)."""
    if not OUT.exists():
        return []
    return [line for line in OUT.read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| entry ", f"| {prefix}"))]


def write(rows: list[Row], kept: Sequence[str] = ()) -> None:
    lines = [
        "# Real-world corpus: results", "",
        "Written by `bench/realworld.py` (not by hand), on this repository's machine (2 cores, "
        "shared with other builds: times vary with the load). rebuild runs both builds at once "
        "in containers, network off, twelve variations (fewer where the recipe says); "
        f"reprotest {package_version('reprotest')} builds on the host, one build after the "
        "other, from the same source tree with the same command.", "",
        "| entry | rebuild | rebuild s | reprotest | reprotest s | note |",
        "|---|---|---|---|---|---|"]
    lines += [*kept, *(f"| {r.entry} | {r.rebuild} | {r.rebuild_s:.0f} | {r.reprotest} | "
                       f"{r.reprotest_s:.0f} | {r.note} |" for r in rows)]
    lines += ["", "reprotest's verdict is about its own two builds (it does not compare with "
              "the published wheel); its `user_group` variation is off unless configured, and "
              "it has no container isolation.", ""]
    OUT.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("npm",), help="run this entry alone, keeping the "
                        "other rows of RESULTS.md as they are")
    only = parser.parse_args().only
    if WORK.exists():
        subprocess.run(["rm", "-rf", str(WORK)], check=True)
    WORK.mkdir(parents=True)
    store = seed_store(WORK / "store")
    seed_downloads(store)
    with tempfile.TemporaryDirectory(prefix="reprotest-home-") as home:
        if only == "npm":
            write(npm_rows(store, home), kept_rows("npm-app"))
        else:
            write(hello_rows(base_image(C_DEFINITION), store, home) + pypi_rows(store, home) +
                  npm_rows(store, home))
    say(f"wrote {OUT}")


if __name__ == "__main__":
    main()
