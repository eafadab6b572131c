"""The detection corpus (tests/corpus): every entry's verdict and exact culprits.

Each entry is built with `rebuild build --explain --json`: a non-reproducible entry must be
caught and blamed on exactly the variations its expect.toml names (per artifact where it
names them); a clean entry must pass. About 1.5 minutes on 2 cores (measured 95 s;
225 s while other test suites shared the machine).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rebuild.build.explain import HINTS, INHERENT
from rebuild.build.variations import NAMES
from tests.corpus.corpus import Entry, load_entries, run_rebuild_entry

ENTRIES = load_entries()


def test_the_corpus_covers_every_variation_and_has_clean_entries() -> None:
    assert len(ENTRIES) >= 20
    assert sum(e.reproducible for e in ENTRIES) >= 4
    blamed = {v for e in ENTRIES for v in e.variations}
    assert blamed <= set(NAMES)
    assert blamed == set(NAMES), f"no entry blames {set(NAMES) - blamed}"
    assert any(e.inherent for e in ENTRIES)
    for entry in ENTRIES:
        assert (entry.path / "build.sh").is_file(), entry.name
        assert not (entry.reproducible and entry.variations), entry.name
        assert not (entry.inherent and entry.variations), entry.name


@pytest.mark.docker
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_entry_verdict_and_culprits(entry: Entry, minimal_image: str, c_image: str,
                                    store: Path, tmp_path: Path) -> None:
    image = {"minimal": minimal_image, "c": c_image}[entry.image]
    verdict = run_rebuild_entry(entry, image, store, tmp_path)
    log = verdict.raw["stderr"]
    assert verdict.detected is not entry.reproducible, log
    assert verdict.culprits == entry.variations, log
    for artifact, culprits in entry.artifacts.items():
        assert verdict.per_artifact.get(artifact) == culprits, log
    differences = verdict.raw["differences"]
    assert all(d["explained"] and d["hints"] for d in differences), log
    if entry.inherent:
        assert verdict.inherent, log
        assert all(d["hints"] == [HINTS[INHERENT]] for d in differences), log
