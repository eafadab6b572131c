"""A download cache for the real-world corpus, kept between runs on one machine.

Files are kept under their sha256 (`.rebuild/realworld-downloads/<hex>`), exactly as a store
keeps blobs: a test's store gets them as blobs before it runs, and `rebuild fetch` (and
`compare-upstream`) then finds a pinned download in the store by its hash instead of
downloading it. A changed pin names another hash, which is not in the cache, so it is
downloaded: the cache never hides a change. The store verifies every blob it reads, so a
damaged cache file fails the test instead of passing it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from tests.conftest import ROOT

CACHE = ROOT / ".rebuild" / "realworld-downloads"


def _link(src: Path, dest: Path) -> None:
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def seed_downloads(store: Path) -> None:
    """Put every cached download into `store` as a blob."""
    blobs = store / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for cached in CACHE.glob("*") if CACHE.is_dir() else ():
        _link(cached, blobs / cached.name)


def keep_downloads(store: Path, *sha256: str) -> None:
    """Keep these pinned downloads (hex digests) of `store` for the next run."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for digest in sha256:
        blob = store / "blobs" / "sha256" / digest
        with contextlib.suppress(FileNotFoundError):
            _link(blob, CACHE / digest)
