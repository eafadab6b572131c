"""Output images on the real engine, store and registry: a release whose recipe declares
`[image_output]` is an OCI image reproducible under all twelve variations, signed as a
subject, loaded into Docker and run, pushed byte-exact, and a stamped one is caught with
the layer and the file named."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from tests.conftest import require_tool, run_rebuild, seed_store, toml_value
from tests.registry_support import start_registry

pytestmark = pytest.mark.docker

NAME = "imgout"
RELEASE = f"{NAME}@1.0.0"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BUILD = ("install -D -m 0755 hello.sh /out/bin/hello && "
         "install -D -m 0644 greeting.txt /out/share/greeting.txt")
HELLO = "#!/bin/sh\ncat /app/share/greeting.txt\n"


def write_image_recipe(base: Path, image: str, script: str, *, name: str = NAME) -> Path:
    src = base / f"src-{name}"
    src.mkdir()
    (src / "hello.sh").write_text(HELLO)
    (src / "greeting.txt").write_text("hello from the image\n")
    recipe = base / f"{name}.toml"
    # A label unique to this test session: the image id (its config's digest) is ours alone,
    # so removing it from the engine afterwards removes nobody else's.
    recipe.write_text(
        f'[recipe]\nname = "{name}"\nversion = "1.0.0"\n\n[source]\npath = "{src.name}"\n\n'
        f'[environment]\nimage = "{image}"\nsource_date_epoch = 1700000000\n\n'
        f'[build]\ncommand = ["sh", "-c", {toml_value(script)}]\n'
        'outputs = ["bin/hello", "share/*"]\ntimeout = 120\nmemory = "512m"\n\n'
        '[check]\nvary = ["all"]\n\n'
        '[image_output]\nbase = "environment"\npath = "/app"\n'
        'entrypoint = ["/app/bin/hello"]\nworkdir = "/app"\nuser = "65534:65534"\n'
        f'labels = {{ "dev.rebuild.test" = "{os.getpid()}-{name}" }}\n')
    return recipe


@pytest.fixture(scope="module")
def built(minimal_image: str, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, Path, dict]:  # type: ignore[type-arg]
    """The image release, built once for the module and signed: (store, keys dir, --json)."""
    base = tmp_path_factory.mktemp("imgout")
    assert run_rebuild("keygen", "--out", base / "ci").code == 0
    store = base / "store"
    seed_store(store)
    result = run_rebuild("build", write_image_recipe(base, minimal_image, BUILD), "--key",
                         base / "ci.key", "--json", store=store)
    assert result.code == 0, result.stderr
    return store, base, result.json


def image_artifact(outcome: dict) -> dict:  # type: ignore[type-arg]
    return next(a for a in outcome["artifacts"] if a["name"] == "oci-image")


def blob(store: Path, digest: str) -> bytes:
    return (store / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def test_image_is_reproducible_under_all_twelve_variations(built: tuple[Path, Path, dict]
                                                            ) -> None:  # type: ignore[type-arg]
    store, _, outcome = built
    assert outcome["reproducible"] is True
    assert len(outcome["runs"][1]["variations"]) == 12
    image = image_artifact(outcome)
    assert image["media_type"] == OCI_MANIFEST
    manifest = json.loads(blob(store, image["sha256"]))
    # The base image's layer, then the outputs' layer; created and source annotations.
    assert len(manifest["layers"]) == 2
    assert manifest["annotations"]["org.opencontainers.image.created"] == \
        "2023-11-14T22:13:20Z"
    assert manifest["annotations"]["org.opencontainers.image.source"] == f"src-{NAME}"
    config = json.loads(blob(store, manifest["config"]["digest"]))
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert config["config"]["Entrypoint"] == ["/app/bin/hello"]
    # The release manifest names the image as a layer of the OCI manifest type.
    release = json.loads(blob(store, outcome["manifest"]))
    layer = next(x for x in release["layers"]
                 if x["annotations"]["org.opencontainers.image.title"] == "oci-image")
    assert (layer["mediaType"], layer["digest"]) == (OCI_MANIFEST, f"sha256:{image['sha256']}")


def test_provenance_and_sbom_name_the_image_and_verify(built: tuple[Path, Path, dict]
                                                       ) -> None:  # type: ignore[type-arg]
    store, keys, outcome = built
    digest = image_artifact(outcome)["sha256"]
    provenance = json.loads(blob(store, outcome["evidence"]["provenance"]))
    assert {"name": "oci-image", "digest": {"sha256": digest},
            "mediaType": OCI_MANIFEST} in provenance["subject"]
    sbom_bytes = blob(store, outcome["evidence"]["sbom"])
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom_bytes.decode()) is None
    image = next(c for c in json.loads(sbom_bytes)["components"] if c["name"] == "oci-image")
    assert (image["type"], image["hashes"][0]["content"]) == ("container", digest)
    verified = run_rebuild("verify", RELEASE, "--key", keys / "ci.pub", "--json", store=store)
    assert verified.code == 0, verified.stdout + verified.stderr
    assert verified.json["verified"] is True


def test_image_loads_into_docker_and_runs(built: tuple[Path, Path, dict]  # type: ignore[type-arg]
                                          ) -> None:
    store, _, _ = built
    loaded = run_rebuild("image", "load", RELEASE, "--json", store=store)
    assert loaded.code == 0, loaded.stderr
    image_id = loaded.json["id"]
    try:
        ran = subprocess.run(["docker", "run", "--rm", "--network", "none", image_id],
                             capture_output=True, text=True, timeout=120, check=False)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "hello from the image\n"
        user = subprocess.run(["docker", "image", "inspect", "--format",
                               "{{.Config.User}} {{.Created}}", image_id],
                              capture_output=True, text=True, check=True).stdout.split()
        assert user[0] == "65534:65534" and user[1].startswith("2023-11-14T22:13:20")
    finally:
        subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True, check=False)


def test_a_release_without_image_says_so(minimal_image: str, built: tuple[Path, Path, dict],
                                         ) -> None:  # type: ignore[type-arg]
    store, _, _ = built
    missing = run_rebuild("image", "load", "nothing@1.0.0", store=store)
    assert missing.code == 5 and "no release nothing@1.0.0" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_push_is_byte_exact(built: tuple[Path, Path, dict], tmp_path: Path  # type: ignore[type-arg]
                            ) -> None:
    require_tool("skopeo")
    store, _, outcome = built
    digest = image_artifact(outcome)["sha256"]
    registry = start_registry(tmp_path / "registry")
    try:
        pushed = run_rebuild("store", "push", RELEASE, registry.url(), store=store)
        assert pushed.code == 0, pushed.stderr
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{registry.host}/rebuild/{NAME}@sha256:{digest}"],
                             capture_output=True, check=False, timeout=120)
        assert raw.returncode == 0, raw.stderr
        assert hashlib.sha256(raw.stdout).hexdigest() == digest
        manifest = json.loads(raw.stdout)
        config = subprocess.run(["skopeo", "inspect", "--raw", "--config", "--tls-verify=false",
                                 f"docker://{registry.host}/rebuild/{NAME}@sha256:{digest}"],
                                capture_output=True, check=True, timeout=120).stdout
        assert "sha256:" + hashlib.sha256(config).hexdigest() == manifest["config"]["digest"]
        # Docker pulls it by that digest (its own client, not rebuild's) and runs it.
        ref = f"{registry.host}/rebuild/{NAME}@sha256:{digest}"
        pulled_by_docker = subprocess.run(["docker", "pull", ref], capture_output=True,
                                          text=True, timeout=300, check=False)
        try:
            assert pulled_by_docker.returncode == 0, pulled_by_docker.stderr
            ran = subprocess.run(["docker", "run", "--rm", "--network", "none", ref],
                                 capture_output=True, text=True, timeout=120, check=False)
            assert (ran.returncode, ran.stdout) == (0, "hello from the image\n"), ran.stderr
        finally:
            subprocess.run(["docker", "rmi", ref], capture_output=True, check=False)
        # The release verifies from the registry: its manifest, with the image layer, is
        # the one the signed provenance defines.
        verified = run_rebuild("verify", RELEASE, "--key", built[1] / "ci.pub",
                               store=Path(registry.url()),
                               env={"REBUILD_CACHE": str(tmp_path / "cache")})
        assert verified.code == 0, verified.stderr
        # Docker loads it from the registry too (through a cache of verified blobs).
        loaded = run_rebuild("image", "load", RELEASE, "--json", store=Path(registry.url()),
                             env={"REBUILD_CACHE": str(tmp_path / "cache")})
        assert loaded.code == 0, loaded.stderr
        assert loaded.json["manifest"] == f"sha256:{digest}"
        subprocess.run(["docker", "rmi", loaded.json["id"]], capture_output=True, check=False)
        # And back: a fresh store pulls the release with the image, byte-exact.
        pulled = tmp_path / "pulled"
        assert run_rebuild("store", "pull", registry.url(), RELEASE, store=pulled).code == 0
        assert blob(pulled, digest) == blob(store, digest)
        for layer in manifest["layers"]:
            assert (pulled / "blobs/sha256" / layer["digest"][7:]).is_file()
    finally:
        registry.stop()


def test_reproduce_rebuilds_the_image(built: tuple[Path, Path, dict]  # type: ignore[type-arg]
                                      ) -> None:
    store, _, outcome = built
    result = run_rebuild("reproduce", RELEASE, "--json", store=store)
    assert result.code == 0, result.stderr
    assert result.json["reproducible"] is True
    rebuilt = next(a for a in result.json["artifacts"] if a["name"] == "oci-image")
    assert rebuilt["sha256"] == rebuilt["recorded"] == image_artifact(outcome)["sha256"]


def test_a_stamped_image_is_caught_naming_layer_and_file(minimal_image: str, tmp_path: Path
                                                         ) -> None:
    store = tmp_path / "store"
    seed_store(store)
    stamped = BUILD + " && date > /out/share/stamp.txt"
    recipe = write_image_recipe(tmp_path, minimal_image, stamped, name="imgstamp")
    result = run_rebuild("build", recipe, "--json", store=store)
    assert result.code == 1, result.stderr
    differences = {d["name"]: d for d in result.json["differences"]}
    assert set(differences) == {"oci-image", "share/stamp.txt"}
    report = run_rebuild("store", "cat", differences["oci-image"]["report"], store=store)
    assert report.code == 0
    assert "layer 2 of 2 (the outputs' layer) differs" in report.stdout
    assert "/app/share/stamp.txt" in report.stdout
    assert "/app/share/greeting.txt" not in report.stdout
