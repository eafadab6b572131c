"""Fetching inputs: a warm fetch in the process and as a command."""

from __future__ import annotations

import itertools
import json
import shlex
import time
from collections.abc import Mapping
from pathlib import Path

from harness import (
    C_DEFINITION,
    BenchError,
    Contender,
    Context,
    Section,
    base_image,
    copy_demo,
    measure,
    rebuild_argv,
    say,
    seed_store,
    startup_contender,
    timed,
    timings,
)

from rebuild.build.recipe import load_recipe
from rebuild.inputs.fetch import fetch_inputs
from rebuild.store.layout import (
    Store,
)


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
