"""The culprit search run in parallel (`run_search`): the same verdicts as one run at a time,
whatever order the runs end in, `width` runs at once, and an early end.

The runs are stood in for by a function of the varied set (pure logic: the real runs are
covered by tests/integration/test_explain.py and test_corpus.py); each sleeps a few
milliseconds chosen per set, so runs end in an order unlike the order they were asked for.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rebuild.build.compare import Artifact, Difference
from rebuild.build.explain import (
    Blame,
    Probe,
    Suspects,
    blame_outputs,
    marked_variations,
    next_probes,
    probe_width,
    run_search,
    split,
)
from rebuild.build.variations import BY_NAME, NAMES

ALL = NAMES
F = frozenset
Observed = dict[frozenset[str], frozenset[str] | None]
Oracle = Callable[[frozenset[str]], "set[str] | None"]

def culprit(name: str) -> Oracle:
    return lambda varied: {"r"} if name in varied else set()


# Truth tables like the corpus's: single culprits, several, interactions, inherent, failures.
CASES: dict[str, tuple[tuple[str, ...], list[str], Oracle]] = {
    **{f"one-{c}": (ALL, ["r"], culprit(c)) for c in ALL},
    "two-outputs": (ALL, ["stamp", "env"], lambda v: (
        ({"stamp"} if v & {"time", "hostname"} else set())
        | ({"env"} if v & {"time", "home"} else set()))),
    "every-variation": (ALL, ["r"], lambda v: {"r"} if v else set()),
    "inherent-and-user": (ALL, ["r", "s"],
                          lambda v: {"r"} | ({"s"} if "user" in v else set())),
    "all-inherent": (ALL, ["r"], lambda v: {"r"}),
    "interaction-across-halves": (ALL, ["r"],
                                  lambda v: {"r"} if {"umask", "user"} <= v else set()),
    "interaction-in-a-half": (ALL, ["r"],
                              lambda v: {"r"} if {"time", "hostname"} <= v else set()),
    "failed-run": (("time", "user"), ["r"], lambda v: None if v == {"user"} else set()),
}


def sequential(enabled: tuple[str, ...], differing: list[str], oracle: Oracle,
               suspects: Suspects | None = None) -> tuple[dict[str, Blame], int]:
    """The search one round at a time, every run of a round before the next decision."""
    observed: Observed = {F(enabled): F(differing)}
    made = 0
    while wanted := next_probes(enabled, differing, observed, suspects):
        for probe in wanted:
            changed = oracle(F(probe))
            observed[F(probe)] = None if changed is None else F(changed)
            made += 1
    return blame_outputs(enabled, differing, observed, suspects), made


class Runs:
    """Stands in for the sandbox: answers from the oracle after a delay chosen per set, and
    counts how many runs go at once."""

    def __init__(self, oracle: Oracle, salt: str) -> None:
        self.oracle, self.salt = oracle, salt
        self.lock = threading.Lock()
        self.now = self.most = 0

    def __call__(self, variations: tuple[str, ...]) -> Probe:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        digest = hashlib.sha256(f"{self.salt}:{'+'.join(variations)}".encode()).digest()
        time.sleep(digest[0] / 255 * 0.01)
        changed = self.oracle(F(variations))
        with self.lock:
            self.now -= 1
        return Probe(variations, None if changed is None else F(changed),
                     1 if changed is None else 0, 0.0)


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parallel_search_gives_the_verdicts_of_one_run_at_a_time(case: str, width: int
                                                                 ) -> None:
    enabled, differing, oracle = CASES[case]
    expected, made = sequential(enabled, differing, oracle)
    for salt in ("a", "b"):  # two different orders in which the runs end
        observed: Observed = {F(enabled): F(differing)}
        probes = run_search(enabled, differing, observed, Runs(oracle, salt), width)
        assert blame_outputs(enabled, differing, observed) == expected
        assert len({F(p.variations) for p in probes}) == len(probes), "a run made twice"
        # Deciding as each run ends asks for no run the rounds would not have made, and
        # may skip some (the rerun proving everything inherent before the half ends).
        assert len(probes) <= made
        assert probes[0].variations == ()  # in the order they started: the rerun first


def test_a_group_is_split_between_its_suspects_and_the_rest() -> None:
    assert split(ALL, F({"build_path"})) == (("build_path",),
                                             tuple(n for n in ALL if n != "build_path"))
    assert split(("time", "hostname", "user"), F({"user", "cpus"})) == (("user",),
                                                                        ("time", "hostname"))
    # No suspect in the group, or nothing but suspects: halves.
    assert split(("time", "hostname", "user"), F({"cpus"})) == (("time",), ("hostname", "user"))
    assert split(("time", "user"), F({"time", "user"})) == (("time",), ("user",))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("marked", [("build_path",), ("time", "hostname"), ("umask", "home"),
                                    ("file_order",), tuple(NAMES)])
def test_suspects_change_the_runs_never_the_verdict(case: str, marked: tuple[str, ...]) -> None:
    """Right or wrong, suspects only choose the order of the runs: the verdicts are those of
    the search without them, in parallel as one run at a time."""
    enabled, differing, oracle = CASES[case]
    expected, _ = sequential(enabled, differing, oracle)
    suspects = {name: F(marked) & F(enabled) for name in differing}
    assert sequential(enabled, differing, oracle, suspects)[0] == expected
    observed: Observed = {F(enabled): F(differing)}
    run_search(enabled, differing, observed, Runs(oracle, "s"), 2, suspects=suspects)
    assert blame_outputs(enabled, differing, observed, suspects) == expected


def test_the_right_suspect_is_proven_in_two_runs_beside_the_rerun() -> None:
    oracle = culprit("build_path")
    _, without = sequential(ALL, ["r"], oracle)
    blames, made = sequential(ALL, ["r"], oracle, {"r": F({"build_path"})})
    assert blames["r"].variations == ("build_path",)
    assert (made, without) == (3, 9)  # the rerun, build_path alone, the other eleven


def _artifact(path: Path, data: bytes) -> Artifact:
    path.write_bytes(data)
    return Artifact(path.name, "0" * 64, len(data), path)


def test_suspects_are_marks_run_b_wrote_and_run_a_did_not(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path_b = b"/build/variation/a-longer-source-path"
    a = _artifact(tmp_path / "a" / "o", b"built 2030 on rebuild in /build/src, 2031 lines")
    b = _artifact(tmp_path / "b" / "o", b"built 2031 on variant-host in " + path_b
                  + b", 2031 lines")
    found = marked_variations(Difference("o", a, b), NAMES)
    assert found == F({"build_path", "hostname"})  # 2031 is in run A's output too
    assert marked_variations(Difference("o", a, b), ("time", "umask")) == F()  # not enabled
    assert marked_variations(Difference("o", None, b), NAMES) == F(
        {"build_path", "hostname", "time"})


def test_a_mark_across_two_chunks_is_found(tmp_path: Path) -> None:
    mark = BY_NAME["build_path"].marks[0]
    data = b"x" * ((1 << 20) - 5) + mark + b"y" * 10  # the mark spans the first read
    b = _artifact(tmp_path / "o", data)
    assert marked_variations(Difference("o", None, b), NAMES) == F({"build_path"})


def test_runs_go_width_at_a_time() -> None:
    _, differing, oracle = CASES["two-outputs"]
    runs = Runs(oracle, "w")
    run_search(ALL, differing, {F(ALL): F(differing)}, runs, 3)
    assert runs.most == 3
    runs = Runs(oracle, "w")
    run_search(ALL, differing, {F(ALL): F(differing)}, runs, 1)
    assert runs.most == 1


def test_the_search_stops_when_the_rerun_proves_everything_inherent() -> None:
    gate = threading.Event()

    def probe(variations: tuple[str, ...]) -> Probe:
        if variations:  # the first half: would take long; the search must not wait for it
            gate.wait(5)
        return Probe(variations, F({"r"}), 0, 0.0)

    observed: Observed = {F(ALL): F({"r"})}
    started = time.monotonic()
    probes = run_search(ALL, ["r"], observed, probe, 2)
    gate.set()
    assert time.monotonic() - started < 2
    assert [p.variations for p in probes] == [()]
    assert blame_outputs(ALL, ["r"], observed)["r"].inherent


def test_the_width_follows_cores_and_memory() -> None:
    gib = 1 << 30
    assert probe_width(2 * gib, 2, 24 * gib) == 2  # cores bound it
    assert probe_width(2 * gib, 16, 9 * gib) == 4  # memory bounds it
    assert probe_width(8 * gib, 4, 3 * gib) == 1  # never fewer than one
    assert probe_width(2 * gib, 4, None) == 4  # memory unknown: cores alone
