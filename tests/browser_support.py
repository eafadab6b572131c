"""Headless Chromium for tests: load a page from disk with the network off, and read back its
DOM (after its scripts ran) or a screenshot. Debian's `chromium` (scripts/setup-host).

The network is cut with `unshare -n` (a network namespace with only a loopback that is down)
when this process may make one, and in any case every host name resolves to nothing, so a
page that tried to load something from elsewhere would get nothing.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND")
TIMEOUT = 120


def require_chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        message = "chromium is not installed (make setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@functools.cache
def _offline_prefix() -> tuple[str, ...]:
    """`unshare -n` when it works here (root, or user namespaces), else nothing."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, check=False)
    return (unshare, "-n") if probe.returncode == 0 else ()


def _run(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    chromium = require_chromium()
    with tempfile.TemporaryDirectory(prefix="rebuild-chromium-") as profile:
        argv = [*_offline_prefix(), chromium, *FLAGS, f"--user-data-dir={profile}", *args, url]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def page_url(path: Path, fragment: str = "") -> str:
    return path.resolve().as_uri() + (f"#{fragment}" if fragment else "")


def dump_dom(path: Path, fragment: str = "") -> str:
    """The page's DOM as HTML once it has loaded and its scripts ran."""
    return _run(["--dump-dom", "--virtual-time-budget=5000"], page_url(path, fragment)).stdout


def screenshot(path: Path, png: Path, width: int = 1280, height: int = 1800) -> Path:
    """A PNG of the page as a laptop's browser shows it."""
    png.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--screenshot={png.resolve()}", f"--window-size={width},{height}",
          "--hide-scrollbars"], page_url(path))
    assert png.is_file() and png.stat().st_size > 0, f"no screenshot at {png}"
    return png
