"""Images travel: an archived base image pushed to a real registry, pulled into a store that
never ran mmdebstrap, loaded into Docker with its recorded id, and built with."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RecipeWriter, require_tool, run_rebuild, seed_store
from tests.registry_support import start_registry

pytestmark = pytest.mark.docker


def image_entry(store: Path, reference: str) -> dict[str, object]:
    index = json.loads((store / "index.json").read_bytes())["manifests"]
    [entry] = [e for e in index if e.get("annotations", {}).get("dev.rebuild.image.ref")
               == reference and e["annotations"].get("dev.rebuild.kind") == "image"]
    return entry  # type: ignore[no-any-return]


def test_an_image_from_a_registry_loads_with_its_id_and_builds(
        minimal_image: str, write_recipe: RecipeWriter, tmp_path: Path) -> None:
    require_tool("docker")
    registry = start_registry(tmp_path / "registry")
    try:
        source = tmp_path / "source"
        seed_store(source)
        pushed = run_rebuild("image", "push", minimal_image, registry.url(), "--json",
                             store=source)
        assert pushed.code == 0, pushed.stderr
        again = run_rebuild("image", "push", minimal_image, registry.url(), "--json",
                            store=source)
        assert again.code == 0 and again.json["blobs_sent"] == 0

        store = tmp_path / "store"  # no base image: nothing but what the registry gives
        pulled = run_rebuild("image", "pull", registry.url(), minimal_image, "--json",
                             store=store)
        assert pulled.code == 0, pulled.stderr
        original, copy = image_entry(source, minimal_image), image_entry(store, minimal_image)
        assert copy == original  # the same manifest, with the same index entry
        manifest = json.loads((store / "blobs/sha256" / str(copy["digest"])[7:]).read_bytes())
        for layer in manifest["layers"]:  # archive, package list, definition: byte-exact
            name = layer["digest"][7:]
            assert (store / "blobs/sha256" / name).read_bytes() == \
                (source / "blobs/sha256" / name).read_bytes()
        assert run_rebuild("store", "fsck", store=store).code == 0

        loaded = run_rebuild("image", "load", minimal_image, "--json", store=store)
        assert loaded.code == 0, loaded.stderr
        recorded = minimal_image.rpartition("@")[2]
        assert loaded.json["id"] == recorded
        inspected = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}",
                                    recorded], capture_output=True, text=True, check=True)
        assert inspected.stdout.strip() == recorded

        recipe = write_recipe(minimal_image, "umask 022 && printf 'x\\n' > /out/r")
        built = run_rebuild("build", recipe, "--json", store=store)
        assert built.code == 0, built.stderr

        # build --store oci://…: the pinned image comes from the registry into a fresh
        # cache, and the release goes up.
        cache = {"REBUILD_CACHE": str(tmp_path / "cache")}
        remote = write_recipe(minimal_image, "umask 022 && printf 'u\\n' > /out/r", name="u")
        up = run_rebuild("build", remote, "--json", store=Path(registry.url()), env=cache)
        assert up.code == 0, up.stderr
        fresh = tmp_path / "fresh"
        assert run_rebuild("store", "pull", registry.url(), "u@1.0.0", store=fresh).code == 0
        story = run_rebuild("show", "u@1.0.0", "--json", store=fresh)
        assert story.code == 0 and story.json["manifest"] == up.json["manifest"]
        conflict = write_recipe(minimal_image, "printf 'other\\n' > /out/r", name="u")
        refused = run_rebuild("build", conflict, store=Path(registry.url()),
                              env={"REBUILD_CACHE": str(tmp_path / "cache2")})
        assert refused.code == 2 and "already exists" in refused.stderr

        missing = run_rebuild("image", "pull", registry.url(),
                              "rebuild/nothing:bookworm@sha256:" + "0" * 64, store=store)
        assert missing.code == 5 and "Traceback" not in missing.stderr
        bad = run_rebuild("image", "load", "not-a-reference", store=store)
        assert bad.code == 2 and "NAME:TAG@sha256:ID" in bad.stderr
    finally:
        registry.stop()


def test_a_pulled_release_carries_its_image_record(minimal_image: str,
                                                   write_recipe: RecipeWriter,
                                                   tmp_path: Path) -> None:
    registry = start_registry(tmp_path / "registry")
    try:
        source = tmp_path / "source"
        seed_store(source)
        recipe = write_recipe(minimal_image, "umask 022 && printf 'y\\n' > /out/r")
        assert run_rebuild("build", recipe, store=source).code == 0
        assert run_rebuild("store", "push", "t@1.0.0", registry.url(), store=source).code == 0
        store = tmp_path / "store"
        assert run_rebuild("store", "pull", registry.url(), "t@1.0.0", store=store).code == 0
        assert image_entry(store, minimal_image) == image_entry(source, minimal_image)
        loaded = run_rebuild("image", "load", minimal_image, "--json", store=store)
        assert loaded.code == 0 and loaded.json["id"] == minimal_image.rpartition("@")[2]
    finally:
        registry.stop()
