"""The detection corpus: small builds with one known cause of non-reproducibility each.

Each entry is a directory `tests/corpus/NAME/` holding a source tree, `build.sh` (writes its
artifacts to `$OUT`, default `/out`) and `expect.toml`:

    description = "what the build does wrong"
    fix = "what would make it reproducible"
    image = "minimal" | "c"          # rebuild/debian-minimal or rebuild/debian-c
    reproducible = true | false
    variations = ["time", …]         # exactly the culprits over all differing artifacts
    inherent = true                   # optional: differs between identical runs (no culprit)
    outputs = ["**"]                  # optional: the recipe's [build] outputs
    [artifacts]                       # optional: exact culprits per artifact
    "name" = ["umask", "user"]

`run_rebuild_entry` builds an entry with `rebuild build --explain --json`; the reprotest
side of the comparison is in run_reprotest.py. Neither needs pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent
# Correct builds, each written as reproducible-builds.org documents its tool: must pass.
MUST_PASS = CORPUS / "must-pass"
IMAGES = ("minimal", "c")
EXPECT_KEYS = {"description", "fix", "image", "reproducible", "variations", "inherent",
               "outputs", "artifacts"}


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    description: str
    fix: str
    image: str
    reproducible: bool
    variations: tuple[str, ...]
    inherent: bool = False
    outputs: tuple[str, ...] = ("**",)
    artifacts: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """What one tool said about one entry."""

    detected: bool  # found the build not reproducible
    culprits: tuple[str, ...]  # rebuild's variation names, sorted
    seconds: float
    per_artifact: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inherent: bool = False  # every difference was blamed on chance, none on a variation
    raw: dict[str, Any] = field(default_factory=dict)


def load_entry(path: Path) -> Entry:
    data = tomllib.loads((path / "expect.toml").read_text())
    unknown = set(data) - EXPECT_KEYS
    if unknown:
        raise ValueError(f"{path}/expect.toml: unknown keys {sorted(unknown)}")
    if data["image"] not in IMAGES:
        raise ValueError(f"{path}/expect.toml: image must be one of {IMAGES}")
    return Entry(name=path.name, path=path, description=data["description"], fix=data["fix"],
                 image=data["image"], reproducible=data["reproducible"],
                 variations=tuple(sorted(data["variations"])),
                 inherent=data.get("inherent", False),
                 outputs=tuple(data.get("outputs", ["**"])),
                 artifacts={k: tuple(sorted(v)) for k, v in data.get("artifacts", {}).items()})


def load_entries(root: Path = CORPUS) -> list[Entry]:
    return [load_entry(p) for p in sorted(root.iterdir()) if (p / "expect.toml").is_file()]


# Every entry has one known cause, in its content: the outputs' own modes are set after
# build.sh, or the umask would also change every file a build writes (rebuild compares modes).
BUILD_COMMAND = ["sh", "-c", 'sh build.sh && chmod -R u=rwX,go=rX "${OUT:-/out}"']


def write_recipe(entry: Entry, image: str, dest: Path) -> Path:
    """A recipe building `entry` on the pinned `image`, in dest/NAME.toml."""
    recipe = dest / f"{entry.name}.toml"
    recipe.write_text(
        f'[recipe]\nname = "{entry.name}"\nversion = "1.0.0"\n\n'
        f"[source]\npath = {json.dumps(str(entry.path))}\n\n"
        f'[environment]\nimage = "{image}"\nsource_date_epoch = 1700000000\n\n'
        f"[build]\ncommand = {json.dumps(BUILD_COMMAND)}\n"
        f"outputs = {json.dumps(list(entry.outputs))}\n"
        f'timeout = 120\nmemory = "512m"\n\n[check]\nvary = ["all"]\n')
    return recipe


def run_rebuild_entry(entry: Entry, image: str, store: Path, workdir: Path,
                      python: str = sys.executable) -> Verdict:
    """`rebuild build --explain --json` on one entry; its verdict and wall time."""
    recipe = write_recipe(entry, image, workdir)
    started = time.monotonic()
    proc = subprocess.run([python, "-m", "rebuild", "--store", str(store), "build", "--explain",
                           "--json", str(recipe)], capture_output=True, text=True,
                          timeout=600, check=False, env=os.environ.copy())
    seconds = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"rebuild build {entry.name} exited {proc.returncode}:\n"
                           f"{proc.stderr}")
    result = json.loads(proc.stdout)
    per_artifact = {d["name"]: tuple(sorted(d["variations"])) for d in result["differences"]}
    culprits = tuple(sorted({v for vs in per_artifact.values() for v in vs}))
    inherent = bool(result["differences"]) and not culprits
    return Verdict(detected=not result["reproducible"], culprits=culprits, seconds=seconds,
                   per_artifact=per_artifact, inherent=inherent,
                   raw={**result, "stderr": proc.stderr})
