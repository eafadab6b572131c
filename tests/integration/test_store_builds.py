"""Builds and the store: releases as OCI artifacts, no duplicates, concurrent builds."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rebuild.store.layout import EMPTY_DIGEST, KIND, OCI_EMPTY, REF_NAME, Descriptor, Store
from tests.conftest import RecipeWriter, require_tool, run_rebuild

pytestmark = pytest.mark.docker

CAREFUL = ("umask 022 && printf 'hello\\n' > /out/r && mkdir -p /out/usr/bin && "
           "printf 'bin' > /out/usr/bin/x")


def blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs" / "sha256").iterdir()}


def test_release_is_an_oci_artifact_with_titled_layers(minimal_image: str,
                                                       write_recipe: RecipeWriter,
                                                       store: Path) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, CAREFUL, ["r", "usr/bin/*"]),
                         "--json", store=store)
    assert result.code == 0, result.stderr
    index = json.loads((store / "index.json").read_text())
    [release] = [m for m in index["manifests"]
                 if m["annotations"].get("org.opencontainers.image.ref.name") == "t@1.0.0"]
    manifest = json.loads((store / "blobs" / "sha256" / release["digest"][7:]).read_bytes())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == "application/vnd.rebuild.release.v1+json"
    titles = {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
              for layer in manifest["layers"]}
    assert titles == {a["name"]: "sha256:" + a["sha256"] for a in result.json["artifacts"]}
    # evidence hangs off the release: its subject is the release manifest
    attempt = json.loads((store / "blobs" / "sha256" /
                          result.json["evidence"]["attempt"][7:]).read_bytes())
    assert attempt["subject"]["digest"] == release["digest"]
    titles = [layer["annotations"]["org.opencontainers.image.title"]
              for layer in attempt["layers"]]
    assert titles == ["comparison.json", "run-a.log", "run-b.log"]

    ls = run_rebuild("store", "ls", "--json", store=store)
    assert [e["name"] for e in ls.json["entries"] if e["kind"] == "release"] == ["t@1.0.0"]


def test_index_json_names_a_release_as_soon_as_it_is_built_in_a_large_store(
        minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    """No `store compact`, no journal: an OCI tool reading index.json alone (skopeo) finds the
    release right after its build, which appended to index.json in place."""
    require_tool("skopeo")
    st = Store(store)
    st.init()
    st.put_bytes(b"{}")
    with st._locked():  # 2 MB of other entries: a store far past a few hundred releases
        st._write_index([*st._index_file(), *(
            Descriptor(OCI_EMPTY, EMPTY_DIGEST, 2, {REF_NAME: f"filler-{i}@1", KIND: "filler"})
            for i in range(12_000))])
    inode = (store / "index.json").stat().st_ino
    result = run_rebuild("build", write_recipe(minimal_image, CAREFUL, ["r", "usr/bin/*"]),
                         "--json", store=store)
    assert result.code == 0, result.stderr
    assert (store / "index.json").stat().st_ino == inode  # appended to, not rewritten
    index = json.loads((store / "index.json").read_bytes())
    [release] = [m for m in index["manifests"] if m["annotations"].get(REF_NAME) == "t@1.0.0"]
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{store}:t@1.0.0"], check=True,
                         capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == release["digest"]
    assert not (store / "index.journal").exists()
    assert (store / "index.wal").read_bytes() == b""


def test_building_again_adds_nothing(minimal_image: str, write_recipe: RecipeWriter,
                                     store: Path) -> None:
    recipe = write_recipe(minimal_image, CAREFUL + " && echo building", ["r", "usr/bin/x"])
    first = run_rebuild("build", recipe, "--json", store=store)
    assert first.code == 0, first.stderr
    before, index = blobs(store), (store / "index.json").read_bytes()
    second = run_rebuild("build", recipe, "--json", store=store)
    assert second.code == 0, second.stderr
    assert blobs(store) == before
    assert (store / "index.json").read_bytes() == index
    assert second.json["evidence"] == first.json["evidence"]


def test_a_diff_report_is_kept_with_the_attempt(minimal_image: str, write_recipe: RecipeWriter,
                                                store: Path) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, "uname -n > /out/r"), "--json",
                         store=store)
    assert result.code == 1
    [diff] = result.json["differences"]
    report = run_rebuild("store", "cat", diff["report"], store=store)
    assert report.code == 0
    assert "rebuild" in report.stdout and "variant-host" in report.stdout
    assert result.json["manifest"] is None  # no release is named for a failed claim


def test_two_builds_into_one_store_at_once(minimal_image: str, write_recipe: RecipeWriter,
                                           store: Path) -> None:
    recipes = [write_recipe(minimal_image, CAREFUL + f" && echo {i} > /out/n", ["r", "n"],
                            name=f"c{i}") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "rebuild", "--store", str(store), "build",
                               str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in recipes]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    fsck = run_rebuild("store", "fsck", store=store)
    assert fsck.code == 0, fsck.stderr
    ls = run_rebuild("store", "ls", "--json", store=store)
    assert {e["name"] for e in ls.json["entries"] if e["kind"] == "release"} == {
        "c0@1.0.0", "c1@1.0.0"}


def test_a_release_is_immutable(minimal_image: str, write_recipe: RecipeWriter,
                                store: Path) -> None:
    first = run_rebuild("build", write_recipe(minimal_image, "umask 022 && echo one > /out/r"),
                        store=store)
    assert first.code == 0, first.stderr
    attempts = _attempts(store)
    second = run_rebuild("build", write_recipe(minimal_image, "echo two > /out/r"), store=store)
    # Another recipe for an existing release: refused before the runs (exit 2), nothing stored.
    assert second.code == 2, second.stderr
    assert "already exists" in second.stderr and "nothing was built" in second.stderr
    assert _attempts(store) == attempts


def _attempts(store: Path) -> list[str]:
    ls = run_rebuild("store", "ls", "--json", store=store)
    return [e["digest"] for e in ls.json["entries"] if e["kind"] == "attempt"]
