"""GNU hello 2.10 from Debian's orig tarball: its plain build records the build directory,
so the twin build must find it not reproducible; with -ffile-prefix-map it must be
reproducible under all twelve variations. (`--explain` naming build_path takes minutes: it
runs in bench/realworld.py, which writes RESULTS.md, not here.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_rebuild
from tests.realworld.downloads import keep_downloads, seed_downloads
from tests.realworld.entries import HELLO_SHA256, hello_recipe

pytestmark = pytest.mark.docker


def test_gnu_hello_needs_the_prefix_map(c_image: str, store: Path, tmp_path: Path) -> None:
    seed_downloads(store)
    plain = run_rebuild("build", hello_recipe(tmp_path, c_image, prefix_map=False), "--json",
                        store=store, timeout=1800)
    keep_downloads(store, HELLO_SHA256)
    assert plain.code == 1, plain.stderr
    assert plain.json["reproducible"] is False
    assert [d["name"] for d in plain.json["differences"]] == ["hello"]
    mapped = run_rebuild("build", hello_recipe(tmp_path, c_image, prefix_map=True), "--json",
                         store=store, timeout=1800)
    assert mapped.code == 0, mapped.stderr
    assert mapped.json["reproducible"] is True
    assert len(mapped.json["runs"][1]["variations"]) == 12
    # The release has no [upstream]: nothing to compare, said so (exit 2), never "equal".
    none = run_rebuild("compare-upstream", "gnu-hello-mapped@2.10", store=store)
    assert none.code == 2 and "no [upstream]" in none.stderr
