"""Pinned inputs on the real engine: a wheel built offline from a hashed lock (examples/pyhello),
locked wheels installed into the runs' venv, a tampered wheel caught, zip and git sources."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from rebuild.inputs.fetch import export_recorded_wheels
from rebuild.store.layout import TITLE, Descriptor, Store
from tests.conftest import IMAGE_STORE, ROOT, run_rebuild
from tests.inputs_support import (
    FileServer,
    file_server,
    git_repo,
    index_env,
    lock_line,
    make_wheel,
    make_zip,
    write_recipe,
)

pytestmark = pytest.mark.docker

PYHELLO_WHEEL = "pyhello-1.0.0-py3-none-any.whl"


@pytest.fixture
def server() -> FileServer:
    with file_server() as s:
        yield s  # type: ignore[misc]


def artifact_bytes(store: Path, result: dict, name: str) -> bytes:  # type: ignore[type-arg]
    sha = next(a["sha256"] for a in result["artifacts"] if a["name"] == name)
    return (store / "blobs" / "sha256" / sha).read_bytes()


def offline_env(tmp_path: Path) -> dict[str, str]:
    """pip pointed at nothing: a build that needed the network for wheels would fail."""
    empty = tmp_path / "nowhere"
    empty.mkdir(exist_ok=True)
    return {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "http://127.0.0.1:9/simple/",
            "PIP_FIND_LINKS": str(empty), "PIP_NO_INDEX": "1"}


def test_pyhello_wheel_builds_offline_and_reproducibly(c_image: str, tmp_path: Path,
                                                       store: Path) -> None:
    shutil.copytree(ROOT / "examples" / "pyhello", tmp_path / "examples" / "pyhello")
    (tmp_path / "recipes").mkdir()
    for name in ("pyhello.toml", "pyhello.in", "pyhello.lock.txt"):
        shutil.copy(ROOT / "recipes" / name, tmp_path / "recipes" / name)
    recipe = tmp_path / "recipes" / "pyhello.toml"
    locked = run_rebuild("lock", "--update-image", recipe, store=IMAGE_STORE)
    assert locked.code == 0, locked.stderr
    # the checked-in lock is current: locking again does not recompile it
    assert (tmp_path / "recipes" / "pyhello.lock.txt").read_bytes() == (
        ROOT / "recipes" / "pyhello.lock.txt").read_bytes()

    fetched = run_rebuild("fetch", recipe, "--json", store=store)  # the one networked step
    assert fetched.code == 0, fetched.stderr
    [wheel] = fetched.json["recipes"][0]["wheels"]
    assert wheel["name"] == "flit-core"

    result = run_rebuild("build", recipe, "--json", store=store, env=offline_env(tmp_path))
    assert result.code == 0, result.stderr
    assert result.json["reproducible"] is True
    assert [a["name"] for a in result.json["artifacts"]] == [PYHELLO_WHEEL]
    assert len(result.json["runs"][1]["variations"]) == 12
    built = tmp_path / PYHELLO_WHEEL
    built.write_bytes(artifact_bytes(store, result.json, PYHELLO_WHEEL))
    with zipfile.ZipFile(built) as archive:
        names = archive.namelist()
        assert "pyhello/__init__.py" in names and "pyhello-1.0.0.dist-info/RECORD" in names
        assert {info.date_time for info in archive.infolist()} == {(2023, 11, 14, 22, 13, 20)}

    # the lock and the wheels are layers of the inputs manifest (so gc keeps them)
    manifest = json.loads((store / "blobs" / "sha256" /
                           result.json["evidence"]["inputs"][7:]).read_bytes())
    titles = {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
              for layer in manifest["layers"]}
    assert titles["python.lock.txt"] == fetched.json["recipes"][0]["python_lock"]
    assert titles[f"wheels/{wheel['filename']}"] == wheel["blob"]
    # ... from which a rebuild gets the same wheels back, without the network
    layers = {layer["annotations"][TITLE]: Descriptor.from_json(layer)
              for layer in manifest["layers"]}
    files, directory = export_recorded_wheels(Store(store), layers, tmp_path / "wheels")
    assert files == (wheel["filename"],) and directory is not None
    assert (directory / "python.lock.txt").read_bytes() == (
        tmp_path / "recipes" / "pyhello.lock.txt").read_bytes()

    # the SBOM and the provenance name the locked Python package and its wheel
    sbom = json.loads((store / "blobs" / "sha256" /
                       result.json["evidence"]["sbom"][7:]).read_bytes())
    assert any(c.get("purl") == "pkg:pypi/flit-core@4.2.0" for c in sbom["components"])
    provenance = json.loads((store / "blobs" / "sha256" /
                             result.json["evidence"]["provenance"][7:]).read_bytes())
    dependencies = provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"sha256": wheel["sha256"]} in [d["digest"] for d in dependencies]

    # and a QA rebuild from the store alone, offline, installs the same wheels again
    again = run_rebuild("reproduce", "pyhello@1.0.0", "--runs", "2", "--json", store=store,
                        env=offline_env(tmp_path))
    assert again.code == 0, again.stderr
    assert again.json["reproducible"] is True


def demo_recipe(tmp_path: Path, server: FileServer, image: str, script: str) -> Path:
    sha = server.add_wheel(make_wheel(tmp_path / "dist"))
    (tmp_path / "src").mkdir()
    (tmp_path / "py.lock.txt").write_text(lock_line("demo-pkg", "1.0", sha))
    return write_recipe(tmp_path / "t.toml", {"path": "src"}, script, image=image,
                        python_lock="py.lock.txt")


def test_locked_wheels_are_installed_into_a_venv(c_image: str, server: FileServer,
                                                 tmp_path: Path, store: Path) -> None:
    script = ("umask 022 && python -c 'import demo_pkg, sys; print(demo_pkg.VALUE, sys.prefix)' "
              "> /out/r && echo \"$VIRTUAL_ENV\" >> /out/r")
    recipe = demo_recipe(tmp_path, server, c_image, script)
    fetched = run_rebuild("fetch", recipe, store=store, env=index_env(server, tmp_path))
    assert fetched.code == 0, fetched.stderr
    requests = len(server.requests)
    result = run_rebuild("build", recipe, "--json", store=store, env=offline_env(tmp_path))
    assert result.code == 0, result.stderr
    assert artifact_bytes(store, result.json, "r") == b"demo /tmp/rebuild-venv\n/tmp/rebuild-venv\n"
    assert len(server.requests) == requests


def test_tampered_wheel_blob_exits_5(c_image: str, server: FileServer, tmp_path: Path,
                                     store: Path) -> None:
    recipe = demo_recipe(tmp_path, server, c_image, "echo never > /out/r")
    fetched = run_rebuild("fetch", recipe, "--json", store=store,
                          env=index_env(server, tmp_path))
    assert fetched.code == 0, fetched.stderr
    blob = store / "blobs" / "sha256" / fetched.json["recipes"][0]["wheels"][0]["sha256"]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes() + b"tampered")
    result = run_rebuild("build", recipe, store=store, env=offline_env(tmp_path))
    assert result.code == 5, result.stderr
    assert "corrupt" in result.stderr
    assert not (store / "index.json").read_text().count('"release"')


def test_zip_source_builds(minimal_image: str, server: FileServer, tmp_path: Path,
                           store: Path) -> None:
    data = make_zip([("tool-1.0/", "dir", ""), ("tool-1.0/hello.txt", "file", "hello\n"),
                     ("tool-1.0/bin/run.sh", "exec", "#!/bin/sh\necho ran\n")])
    server.files["/tool-1.0.zip"] = data
    recipe = write_recipe(
        tmp_path / "t.toml", {"url": f"{server.url}/tool-1.0.zip",
                              "sha256": hashlib.sha256(data).hexdigest()},
        "umask 022 && cat hello.txt > /out/r && ./bin/run.sh >> /out/r", image=minimal_image)
    result = run_rebuild("build", recipe, "--json", store=store)
    assert result.code == 0, result.stderr
    assert artifact_bytes(store, result.json, "r") == b"hello\nran\n"
    assert server.requests == ["/tool-1.0.zip"]


def test_git_source_date_epoch_is_the_commit_time(minimal_image: str, tmp_path: Path,
                                                  store: Path) -> None:
    rev = git_repo(tmp_path / "repo", {"msg.txt": "from git\n"}, 1650000000)
    recipe = write_recipe(tmp_path / "t.toml", {"git": "repo", "rev": rev},
                          'umask 022 && printf "%s " "$SOURCE_DATE_EPOCH" > /out/r && '
                          "cat msg.txt >> /out/r && ls -a > /out/ls", image=minimal_image,
                          outputs=("r", "ls"), epoch="git")
    result = run_rebuild("build", recipe, "--json", store=store)
    assert result.code == 0, result.stderr
    assert artifact_bytes(store, result.json, "r") == b"1650000000 from git\n"
    assert ".git" not in artifact_bytes(store, result.json, "ls").decode().split()
