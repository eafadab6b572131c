"""The shipped example recipes: two reproducible, one deliberately not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IMAGE_STORE, ROOT, run_rebuild

pytestmark = pytest.mark.docker


def copy_recipe(name: str, tmp_path: Path) -> Path:
    """A copy of recipes/NAME.toml and its example, locked to the image built for the tests."""
    (tmp_path / "recipes").mkdir()
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    recipe = tmp_path / "recipes" / f"{name}.toml"
    shutil.copy(ROOT / "recipes" / f"{name}.toml", recipe)
    locked = run_rebuild("lock", "--update-image", recipe, store=IMAGE_STORE)
    assert locked.code == 0, locked.stderr
    return recipe


@pytest.mark.parametrize(("name", "artifacts"), [
    ("hello-c", ["usr/bin/hello"]),
    ("release-tarball", ["SHA256SUM", "greeting-1.0.0.tar.gz"]),
])
def test_example_is_reproducible(name: str, artifacts: list[str], c_image: str,
                                 tmp_path: Path, store: Path) -> None:
    result = run_rebuild("build", copy_recipe(name, tmp_path), "--json", store=store)
    assert result.code == 0, result.stderr
    assert [a["name"] for a in result.json["artifacts"]] == artifacts


def test_image_example_is_reproducible_and_runs(c_image: str, tmp_path: Path,
                                                store: Path) -> None:
    result = run_rebuild("build", copy_recipe("hello-image", tmp_path), "--json", store=store)
    assert result.code == 0, result.stderr
    assert [a["name"] for a in result.json["artifacts"]] == [
        "bin/hello", "oci-image", "share/hello/greeting.txt"]
    loaded = run_rebuild("image", "load", "hello-image@1.0.0", "--json", store=store)
    assert loaded.code == 0, loaded.stderr
    try:
        ran = subprocess.run(["docker", "run", "--rm", "--network", "none", loaded.json["id"]],
                             capture_output=True, text=True, timeout=120, check=False)
        assert (ran.returncode, ran.stdout) == (0, "hello from a reproducible image\n")
    finally:
        subprocess.run(["docker", "rmi", loaded.json["id"]], capture_output=True, check=False)


def test_stamped_example_is_caught(c_image: str, tmp_path: Path, store: Path) -> None:
    result = run_rebuild("build", copy_recipe("stamped", tmp_path), "--json", store=store)
    assert result.code == 1
    assert {d["name"] for d in result.json["differences"]} >= {"share/stamp.txt",
                                                               "share/src.tar.gz"}


def test_hello_c_needs_its_prefix_map(c_image: str, tmp_path: Path, store: Path) -> None:
    recipe = copy_recipe("hello-c", tmp_path)
    makefile = tmp_path / "examples" / "hello-c" / "Makefile"
    makefile.write_text(makefile.read_text().replace("CFLAGS += -ffile-prefix-map", "#"))
    run_rebuild("lock", recipe, store=IMAGE_STORE)
    result = run_rebuild("build", recipe, "--json", store=store)
    assert result.code == 1
    assert [d["name"] for d in result.json["differences"]] == ["usr/bin/hello"]
