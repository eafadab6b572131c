"""A build that reaches for the network: `npm ci` without an npm_lock fails on a DNS error in
the sandbox, and rebuild says which inputs it can give the build offline (issue 17, item 2)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, RecipeWriter, run_rebuild

pytestmark = pytest.mark.docker


def test_npm_ci_without_npm_lock_fails_with_the_network_hint(
        node_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    example = ROOT / "examples" / "npm-app"
    files = {name: (example / name).read_text()
             for name in ("package.json", "package-lock.json", "build.js")}
    # No retries and a short timeout: the DNS error comes at once, not after npm's back-off.
    recipe = write_recipe(node_image, "npm ci --fetch-retries=0 --fetch-timeout=5000 && "
                          "node build.js /out", ["parity.txt"], files=files, vary=("umask",))
    started = time.monotonic()
    result = run_rebuild("build", recipe, "--json", store=store)
    assert result.code == 4, result.stderr
    assert time.monotonic() - started < 120
    assert "error: the build command (run " in result.stderr
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    for kind in ("python_lock", "npm_lock", "npm ci --offline", "[source] url/git"):
        assert kind in hint
    assert result.json["exit_code"] == 4
    assert result.json["hint"] == hint.removeprefix("hint: ")
    assert "EAI_AGAIN" in result.json["hint"] or "ENOTFOUND" in result.json["hint"]
