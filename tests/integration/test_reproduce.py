"""Reproduce a stored release from the store alone: no network, no source, no image."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, RecipeWriter, Result, repoint_blob, require_tool, run_rebuild

pytestmark = pytest.mark.docker

SCRIPT = ("umask 022 && mkdir -p /out/usr/bin && printf 'hello\\n' > /out/usr/bin/hello && "
          "tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner "
          "--mode=go-w -cf - . | gzip -n > /out/src.tar.gz")


@pytest.fixture
def released(minimal_image: str, write_recipe: RecipeWriter, store: Path,
             tmp_path: Path) -> tuple[Path, Path, str]:
    assert run_rebuild("keygen", "--out", tmp_path / "ci").code == 0
    recipe = write_recipe(minimal_image, SCRIPT, ["usr/bin/hello", "*.tar.gz"],
                          files={"a.txt": "a\n", "sub/b.txt": "b\n"})
    built = run_rebuild("build", recipe, "--key", tmp_path / "ci.key", store=store)
    assert built.code == 0, built.stderr
    return recipe, tmp_path / "src-t", minimal_image


def reproduce_offline(store: Path, *args: str) -> Result:
    """`rebuild reproduce` in a network namespace of its own: no interface but lo."""
    require_tool("unshare")
    proc = subprocess.run(["unshare", "-n", sys.executable, "-m", "rebuild", "--store",
                           str(store), "reproduce", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_reproduce_with_nothing_but_the_store(released: tuple[Path, Path, str], store: Path,
                                              tmp_path: Path) -> None:
    _, source, image = released
    moved = tmp_path / "elsewhere" / "archive"
    shutil.copytree(store, moved, copy_function=os.link)
    shutil.rmtree(store)
    shutil.rmtree(source)
    image_id = image.rsplit("@", 1)[1]
    subprocess.run(["docker", "rmi", "-f", image_id], check=True, capture_output=True)
    result = reproduce_offline(moved, "t@1.0.0", "--json", "--key", str(tmp_path / "ci.key"))
    assert result.code == 0, result.stderr
    assert result.json["reproducible"] is True
    assert {a["name"]: a["match"] for a in result.json["artifacts"]} == {
        "src.tar.gz": True, "usr/bin/hello": True}
    assert "loading image" in result.stderr
    assert subprocess.run(["docker", "image", "inspect", image_id],
                          capture_output=True).returncode == 0
    assert result.json["verdict"].startswith("sha256:")


def test_reproduce_by_artifact_digest_with_the_twin_check(
        released: tuple[Path, Path, str], store: Path) -> None:
    ls = run_rebuild("build", released[0], "--json", store=store)
    digest = "sha256:" + ls.json["artifacts"][0]["sha256"]
    result = run_rebuild("reproduce", digest, "--runs", "2", "--json", store=store)
    assert result.code == 0, result.stderr
    assert [r["name"] for r in result.json["runs"]] == ["a", "b"]


def test_a_record_the_inputs_do_not_produce_fails(released: tuple[Path, Path, str],
                                                  store: Path) -> None:
    listing = run_rebuild("build", released[0], "--json", store=store)
    hello = next(a for a in listing.json["artifacts"] if a["name"] == "usr/bin/hello")
    repoint_blob(store, "sha256:" + hello["sha256"], b"forged\n")
    result = run_rebuild("reproduce", "t@1.0.0", "--json", store=store)
    assert result.code == 1
    assert result.json["reproducible"] is False
    assert result.json["differences"] == ["usr/bin/hello"]
    [report] = [a["report"] for a in result.json["artifacts"] if a["report"]]
    text = run_rebuild("store", "cat", report, store=store).stdout
    assert "forged" in text and "hello" in text  # the record against the rebuilt bytes


def test_unknown_release_exits_5(store: Path, minimal_image: str) -> None:
    result = run_rebuild("reproduce", "nope@1", store=store)
    assert result.code == 5


def test_gc_keeps_the_closure_of_a_release(released: tuple[Path, Path, str],
                                           store: Path) -> None:
    """With only the release's own records left in index.json, gc drops everything else and
    the release still reproduces: its inputs (source, image archive) are in its closure."""
    from rebuild.store.layout import Store

    index = json.loads((store / "index.json").read_bytes())
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("dev.rebuild.kind")
                          not in ("image", "fetch")]
    (store / "index.json").write_text(json.dumps(index))
    removed = Store(store).gc(grace_seconds=0).removed
    assert removed  # the other base image of the seeded store, at least
    assert run_rebuild("store", "fsck", store=store).code == 0
    result = run_rebuild("reproduce", "t@1.0.0", "--json", store=store)
    assert result.code == 0, result.stderr


def test_reproduce_explain_names_the_culprit_of_a_twin_difference(
        minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    # Built without the hostname variation, the release is reproducible; its stored recipe is
    # then forged to vary everything, so the twin check at reproduce time differs, and
    # --explain must blame the hostname alone.
    recipe = write_recipe(minimal_image, "umask 022 && uname -n > /out/r",
                          vary=["all", "-hostname"])
    assert run_rebuild("build", recipe, store=store).code == 0
    stored = recipe.read_bytes()
    old = "sha256:" + hashlib.sha256(stored).hexdigest()
    assert (store / "blobs" / "sha256" / old[7:]).exists()  # the recipe is an input blob
    repoint_blob(store, old, stored.replace(b'"-hostname"', b'"-cpus"'))
    result = run_rebuild("reproduce", "t@1.0.0", "--explain", "--json", store=store)
    assert result.code == 1
    assert [r["name"] for r in result.json["runs"]] == ["a", "b"]
    assert result.json["explain"] == {"r": {"variations": ["hostname"],
                                            "hints": result.json["explain"]["r"]["hints"]}}
    assert "twin runs differ on r: caused by hostname" in result.stderr
