"""The `--json` documents scripts rely on (design.md), compared with golden files.

Digests that depend on the base image (which changes when Debian publishes new packages),
the store path and the timings are replaced by placeholders; everything else (field names,
variations, artifacts and their digests, checks) must match byte for byte. Regenerate with
`REBUILD_UPDATE_GOLDEN=1`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, RecipeWriter, run_rebuild

pytestmark = pytest.mark.docker

GOLDEN = ROOT / "tests" / "golden"
SCRIPT = ("mkdir -p /out/usr/bin && printf 'hello\\n' > /out/usr/bin/hello && "
          "chmod 755 /out/usr/bin/hello")


def normalized(document: dict[str, Any], keep: set[str], paths: dict[str, str]) -> str:
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
    for path, name in paths.items():
        text = text.replace(path, name)
    text = re.sub(r'"(seconds|total|fetch|runs|compare|evidence)": [0-9.]+', r'"\1": 0', text)
    text = re.sub(r'"timeVerified": "[^"]+"', '"timeVerified": "<time>"', text)
    text = re.sub(r"\b[0-9a-f]{16}\u2026", "<key>\u2026", text)  # key ids shortened for people
    return re.sub(r"(sha256:)?[0-9a-f]{64}",
                  lambda m: m.group(0) if m.group(0).removeprefix("sha256:") in keep
                  else "<digest>", text) + "\n"


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("REBUILD_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with REBUILD_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text()


def test_build_verify_and_reproduce_json(minimal_image: str, write_recipe: RecipeWriter,
                                         store: Path, tmp_path: Path) -> None:
    assert run_rebuild("keygen", "--out", tmp_path / "ci").code == 0
    recipe = write_recipe(minimal_image, SCRIPT, ["usr/bin/hello"])
    built = run_rebuild("build", recipe, "--key", tmp_path / "ci.key", "--json", store=store)
    assert built.code == 0, built.stderr
    keep = {a["sha256"] for a in built.json["artifacts"]}
    paths = {str(store): "<store>", str(tmp_path): "<tmp>"}
    check("build.json", normalized(built.json, keep, paths))
    verified = run_rebuild("verify", "t@1.0.0", "--key", tmp_path / "ci.pub", "--json",
                           store=store)
    check("verify.json", normalized(verified.json, keep, paths))
    reproduced = run_rebuild("reproduce", "t@1.0.0", "--json", store=store)
    check("reproduce.json", normalized(reproduced.json, keep, paths))
