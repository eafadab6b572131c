"""Output images (rebuild.build.output_image): the deterministic layer, the config, the
manifest, the report of two images that differ, and `[image_output]` in a recipe."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest

from rebuild.build.compare import Artifact
from rebuild.build.output_image import (
    CONFIG_MEDIA,
    IMAGE_ARTIFACT,
    LAYER_MEDIA,
    REVISION_ANN,
    SOURCE_ANN,
    assemble_image,
    describe_difference,
    image_annotations,
    image_config,
    layer_members,
    write_layer,
    write_loadable,
)
from rebuild.build.recipe import parse_recipe
from rebuild.errors import UsageError
from rebuild.store.layout import CREATED_ANN, OCI_MANIFEST, Store

EPOCH = 1700000000
RECIPE = {
    "recipe": {"name": "img", "version": "1.0.0"},
    "source": {"path": "src", "digest": "sha256:" + "ab" * 32},
    "environment": {"image": "rebuild/debian-minimal:bookworm@sha256:" + "cd" * 32,
                    "source_date_epoch": EPOCH},
    "build": {"command": ["true"], "outputs": ["bin/*"]},
}
OUTPUTS = {"bin/hello": (b"#!/bin/sh\necho hi\n", 0o755), "share/a.txt": (b"a\n", 0o644),
           "share/deep/b.txt": (b"b\n", 0o600)}


def recipe_with(**image_output: object):  # type: ignore[no-untyped-def]
    return parse_recipe({**RECIPE, "image_output": {"base": "scratch", **image_output}})


def write_outputs(root: Path, *, mtime: float, umask: int) -> list[Artifact]:
    """The outputs on disk with the given host mtime and umask; modes as recorded."""
    old = os.umask(umask)
    try:
        artifacts = []
        for name, (data, mode) in OUTPUTS.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (mtime, mtime))
            artifacts.append(Artifact(name, hashlib.sha256(data).hexdigest(), len(data), path,
                                      mode=mode))
        artifacts.append(Artifact("bin/hi", hashlib.sha256(b"hello").hexdigest(), 5,
                                  root / "bin" / "hi", link="hello"))
        return artifacts
    finally:
        os.umask(old)


def layer_bytes(artifacts: list[Artifact], root: str = "app") -> bytes:
    out = io.BytesIO()
    write_layer(layer_members(artifacts, root), out, EPOCH)
    return out.getvalue()


def test_layer_is_independent_of_host_mtimes_umask_and_order(tmp_path: Path) -> None:
    first = write_outputs(tmp_path / "one", mtime=1_000, umask=0o022)
    second = write_outputs(tmp_path / "two", mtime=2_000_000_000, umask=0o077)
    shuffled = list(second)
    random.Random(7).shuffle(shuffled)
    assert shuffled != second
    assert layer_bytes(first) == layer_bytes(second) == layer_bytes(shuffled)
    # Content or a mode is what changes it.
    changed = [a if a.name != "share/a.txt" else Artifact(a.name, a.sha256, a.size, a.path,
                                                          mode=0o664) for a in first]
    assert layer_bytes(changed) != layer_bytes(first)


def test_layer_entries_sorted_root_owned_clamped_without_pax_times(tmp_path: Path) -> None:
    data = layer_bytes(write_outputs(tmp_path, mtime=2_000_000_000, umask=0o022))
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) == ["app", "app/bin", "app/bin/hello", "app/bin/hi",
                                      "app/share", "app/share/a.txt", "app/share/deep",
                                      "app/share/deep/b.txt"]
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == EPOCH
        assert member.pax_headers == {}
    modes = {m.name: m.mode for m in members}
    assert modes["app/bin/hello"] == 0o755 and modes["app/share/deep/b.txt"] == 0o600
    assert modes["app/share"] == 0o755
    link = next(m for m in members if m.name == "app/bin/hi")
    assert link.issym() and link.linkname == "hello"
    # No PAX extended header at all for short ASCII names (typeflag "x" or "g").
    assert all(data[i + 156:i + 157] not in (b"x", b"g") for i in range(0, len(data), 512)
               if data[i + 257:i + 262] == b"ustar")


def test_an_output_that_is_also_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    artifacts = [Artifact("a", "00" * 32, 1, path, mode=0o644),
                 Artifact("a/b", "00" * 32, 1, path, mode=0o644)]
    with pytest.raises(UsageError, match="rename one"):
        layer_members(artifacts, "")


def test_config_has_the_recipe_fields_and_a_fixed_time() -> None:
    spec = recipe_with(entrypoint=["/app/bin/hello"], cmd=["--loud"], env={"A": "1"},
                       workdir="/app", user="65534:65534", labels={"x": "y"}).image_output
    assert spec is not None
    base = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin", "A=0"]},
            "history": [{"created_by": "base"}], "rootfs": {"diff_ids": ["sha256:b"]}}
    config = json.loads(image_config(spec, base, ["sha256:b", "sha256:o"], EPOCH))
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"] == {"Entrypoint": ["/app/bin/hello"], "Cmd": ["--loud"],
                                "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/app",
                                "User": "65534:65534", "Labels": {"x": "y"}}
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:b", "sha256:o"]}
    assert len(config["history"]) == 2  # one entry per layer
    assert image_config(spec, base, ["sha256:b", "sha256:o"], EPOCH) == \
        image_config(spec, base, ["sha256:b", "sha256:o"], EPOCH)


def test_annotations_name_source_revision_and_time() -> None:
    annotations = image_annotations(recipe_with(), EPOCH)
    assert annotations[SOURCE_ANN] == "src"
    assert annotations[REVISION_ANN] == "sha256:" + "ab" * 32
    assert annotations[CREATED_ANN] == "2023-11-14T22:13:20Z"
    git = parse_recipe({**RECIPE, "source": {"git": "repo.git", "rev": "1" * 40},
                        "image_output": {"base": "scratch"}})
    assert image_annotations(git, EPOCH)[REVISION_ANN] == "1" * 40


def test_assembled_scratch_image_is_stored_and_deterministic(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.init()
    recipe = recipe_with(path="/app", entrypoint=["/app/bin/hello"])
    one = assemble_image(store, recipe, EPOCH, write_outputs(tmp_path / "1", mtime=5,
                                                              umask=0o022), None)
    two = assemble_image(store, recipe, EPOCH, write_outputs(tmp_path / "2", mtime=9e8,
                                                              umask=0o002), None)
    assert one == two  # same manifest, config and layers
    manifest = store.read_json(one.manifest)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA
    assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_MEDIA]
    assert one.artifact.name == IMAGE_ARTIFACT
    assert one.artifact.media_type == OCI_MANIFEST
    assert "sha256:" + one.artifact.sha256 == one.manifest
    # Docker loads what write_loadable writes; the tar is the same bytes each time.
    write_loadable(store, one.manifest, "img:1.0.0", tmp_path / "a.tar")
    config = write_loadable(store, one.manifest, "img:1.0.0", tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert config == one.config
    with tarfile.open(tmp_path / "a.tar") as tar:
        docker = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert docker[0]["Config"] == f"blobs/sha256/{one.config[7:]}"


def test_an_output_named_like_the_image_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    path = tmp_path / "x"
    path.write_bytes(b"x")
    with pytest.raises(UsageError, match=IMAGE_ARTIFACT):
        assemble_image(store, recipe_with(), EPOCH,
                       [Artifact(IMAGE_ARTIFACT, "00" * 32, 1, path, mode=0o644)], None)


def test_difference_report_names_the_layer_and_the_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.init()
    recipe = recipe_with(path="/app")
    a = write_outputs(tmp_path / "a", mtime=0, umask=0o022)
    b = write_outputs(tmp_path / "b", mtime=0, umask=0o022)
    (tmp_path / "b" / "share" / "a.txt").write_bytes(b"A\n")
    b = [x if x.name != "share/a.txt" else Artifact(x.name, hashlib.sha256(b"A\n").hexdigest(),
                                                    2, x.path, mode=0o644) for x in b]
    one, two = (assemble_image(store, recipe, EPOCH, run, None) for run in (a, b))
    assert one.manifest != two.manifest
    text = describe_difference(store, one.manifest, two.manifest, ["share/a.txt"], "app")
    assert f"layer 1 of 1 (the outputs' layer) differs: run a {one.layers[-1]}" in text
    assert "/app/share/a.txt" in text


@pytest.mark.parametrize(("table", "message"), [
    ({"base": "debian"}, "base = 'debian'"),
    ({"base": "scratch", "path": "app"}, "absolute path"),
    ({"base": "scratch", "workdir": "/a/../b"}, "absolute path"),
    ({"base": "scratch", "entrypont": ["x"]}, "did you mean 'entrypoint'"),
    ({"base": "scratch", "env": {"A=B": "c"}}, "non-empty"),
    ({"path": "/app"}, "missing key 'image_output.base'"),
])
def test_invalid_image_output_is_a_usage_error(table: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match="image_output") as caught:
        parse_recipe({**RECIPE, "image_output": table}, source="r.toml")
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_base_may_name_the_pinned_image() -> None:
    image = RECIPE["environment"]["image"]  # type: ignore[index]
    assert parse_recipe({**RECIPE, "image_output": {"base": image}}).image_output is not None
    assert parse_recipe({**RECIPE, "image_output": {"base": "environment"}}).image_output


def test_a_recipe_without_image_output_dumps_as_before() -> None:
    assert "image_output" not in parse_recipe(RECIPE).model_dump(mode="json")
    assert recipe_with().model_dump(mode="json")["image_output"]["base"] == "scratch"


def test_base_layers_come_from_the_archive_once(tmp_path: Path) -> None:
    from rebuild.build.image import (
        ImageDefinition,
        StoredImage,
        write_docker_archive,
    )
    from rebuild.build.output_image import base_layers

    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"base\n"))
    defn = ImageDefinition(name="t/base", tag="x", suite="bookworm", variant="apt",
                           source_date_epoch=EPOCH)
    archive = write_docker_archive(rootfs, defn, tmp_path / "image.tar")
    store = Store(tmp_path / "store")
    store.init()
    archive_digest, _ = store.put_file(archive.path)
    image = StoredImage(archive.reference, archive.image_id, "sha256:" + "0" * 64,
                        archive_digest, (), True)
    config, layers = base_layers(store, image)
    assert [layer.digest for layer in layers] == [archive.layer_diff_id]
    assert store.read_json(archive.image_id) == config  # the config, stored by its id
    # A second build reads the config and layer blobs, not the archive.
    store.blob_path(archive_digest).chmod(0o644)
    store.blob_path(archive_digest).unlink()
    assert base_layers(store, image) == (config, layers)


def test_load_of_a_release_without_image_is_refused(tmp_path: Path) -> None:
    from rebuild.build.output_image import release_image
    from rebuild.store.layout import KIND, REF_NAME, RELEASE_TYPE, TITLE, Descriptor

    store = Store(tmp_path / "store")
    store.init()
    digest, size = store.put_bytes(b"x")
    release = store.put_artifact(RELEASE_TYPE, [Descriptor("application/octet-stream", digest,
                                                           size, {TITLE: "x"})])
    store.add_to_index(release, {REF_NAME: "r@1", KIND: "release"})
    with pytest.raises(UsageError, match="no \\[image_output\\]") as caught:
        release_image(store, "r@1")
    assert caught.value.exit_code == 2
    with pytest.raises(Exception, match="no release q@1") as missing:
        release_image(store, "q@1")
    assert getattr(missing.value, "exit_code", None) == 5


def test_layer_config_and_manifest_match_golden(tmp_path: Path) -> None:
    """The exact bytes of a small image on a base: the format is a contract
    (docs/formats.md); REBUILD_UPDATE_GOLDEN=1 rewrites the golden file after a deliberate
    change."""
    from rebuild.build.output_image import image_manifest
    from rebuild.store.layout import Descriptor

    artifacts = write_outputs(tmp_path, mtime=0, umask=0o022)
    layer = layer_bytes(artifacts)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    recipe = recipe_with(base="environment", path="/app", entrypoint=["/app/bin/hello"],
                         env={"A": "1"}, workdir="/app", user="65534:65534",
                         labels={"x": "y"})
    assert recipe.image_output is not None
    base = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "rebuild"}],
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]}}
    config = image_config(recipe.image_output, base, ["sha256:" + "b" * 64, layer_digest],
                          EPOCH)
    manifest = image_manifest(
        Descriptor(CONFIG_MEDIA, "sha256:" + hashlib.sha256(config).hexdigest(), len(config)),
        [Descriptor(LAYER_MEDIA, "sha256:" + "b" * 64, 1024),
         Descriptor(LAYER_MEDIA, layer_digest, len(layer))],
        image_annotations(recipe, EPOCH))
    got = json.dumps({"layer": layer_digest, "config": json.loads(config),
                      "manifest": json.loads(manifest),
                      "manifest_digest": "sha256:" + hashlib.sha256(manifest).hexdigest()},
                     indent=2, sort_keys=True) + "\n"
    path = Path(__file__).parent / "golden" / "output-image.json"
    if os.environ.get("REBUILD_UPDATE_GOLDEN") == "1":
        path.write_text(got)
    assert path.exists(), f"{path} is missing; run with REBUILD_UPDATE_GOLDEN=1 to write it"
    assert got == path.read_text(), "the output image's bytes changed; if intended, rerun " \
        "with REBUILD_UPDATE_GOLDEN=1 and review the diff"


def test_a_bad_image_output_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from tests.conftest import run_rebuild

    recipe = tmp_path / "r.toml"
    recipe.write_text('[recipe]\nname = "r"\nversion = "1"\n[source]\npath = "."\n'
                      '[environment]\nimage = "a/b:c@sha256:' + "0" * 64 + '"\n'
                      'source_date_epoch = 1\n[build]\ncommand = ["true"]\noutputs = ["x"]\n'
                      '[image_output]\nbase = "debian:12"\n')
    result = run_rebuild("lock", recipe, store=tmp_path / "store")
    assert result.code == 2
    assert "[image_output] base = 'debian:12'" in result.stderr
    assert "Traceback" not in result.stderr
