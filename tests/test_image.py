"""Tests of rebuild.image: definitions, dpkg status, docker-archive writing, and (marked docker)
a real mmdebstrap build twice plus `docker load`."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from rebuild.build.image import (
    DebPackage,
    ImageDefinition,
    build_rootfs,
    definition_digest,
    load_image_definition,
    mmdebstrap_command,
    parse_image_definition,
    read_packages,
    write_docker_archive,
)
from rebuild.errors import BuildFailed, EnvironmentProblem, UsageError

REPO = Path(__file__).resolve().parent.parent
EPOCH = 1700000000


def image_table(**overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": "rebuild/test",
        "tag": "bookworm",
        "suite": "bookworm",
        "variant": "minbase",
        "source_date_epoch": EPOCH,
    }
    table.update(overrides)
    return {"image": table}


def definition(**overrides: Any) -> ImageDefinition:
    return parse_image_definition(image_table(**overrides), "test.toml")


# --- Definitions -------------------------------------------------------------------------------


def test_parse_defaults() -> None:
    defn = definition()
    assert defn.mirror == "http://deb.debian.org/debian"
    assert defn.packages == ()


def test_unknown_key_suggests_closest() -> None:
    with pytest.raises(UsageError, match=r"images/x\.toml.*'pakages'.*did you mean 'packages'\?"):
        parse_image_definition(image_table(pakages=["git"]), "images/x.toml")


def test_unknown_table_suggests_image() -> None:
    with pytest.raises(UsageError, match="did you mean 'image'"):
        parse_image_definition({"imag": {}, **image_table()}, "x.toml")


def test_missing_key_names_file_key_and_fix() -> None:
    data = image_table()
    del data["image"]["suite"]
    with pytest.raises(UsageError, match=r"x\.toml: missing key 'suite'.*suite = \"bookworm\""):
        parse_image_definition(data, "x.toml")


@pytest.mark.parametrize("epoch", ["1700000000", 1.7e9, True, -1])
def test_epoch_must_be_a_non_negative_integer(epoch: object) -> None:
    with pytest.raises(UsageError, match=r"x\.toml: image\.source_date_epoch.*integer"):
        parse_image_definition(image_table(source_date_epoch=epoch), "x.toml")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", "Rebuild/Upper"),
        ("name", "rebuild//double"),
        ("tag", "has space"),
        ("variant", "tiny"),
        ("packages", ["git,curl"]),
        ("packages", "git"),
        ("mirror", "ftp://example.org"),
    ],
)
def test_bad_values_are_usage_errors(key: str, value: object) -> None:
    with pytest.raises(UsageError, match=rf"x\.toml: image\.{key}"):
        parse_image_definition(image_table(**{key: value}), "x.toml")


def test_load_reports_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[image\n")
    with pytest.raises(UsageError, match=r"bad\.toml: not valid TOML"):
        load_image_definition(bad)
    with pytest.raises(UsageError, match=r"missing\.toml: cannot read"):
        load_image_definition(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["debian-c", "debian-minimal"])
def test_checked_in_definitions_load(name: str) -> None:
    defn = load_image_definition(REPO / "images" / f"{name}.toml")
    assert defn.name == f"rebuild/{name}"
    assert defn.source_date_epoch == EPOCH


def test_definition_digest_is_canonical_and_sensitive() -> None:
    digest = definition_digest(definition())
    assert digest == definition_digest(definition())
    assert digest.startswith("sha256:") and len(digest) == 71
    assert digest != definition_digest(definition(packages=["git"]))


def test_mmdebstrap_command() -> None:
    cmd = mmdebstrap_command(definition(packages=["git", "zip"]), Path("/out/r.tar"))
    assert cmd[:3] == ["mmdebstrap", "--variant=minbase", "--include=git,zip"]
    assert cmd[-3:] == ["bookworm", "/out/r.tar", "http://deb.debian.org/debian"]
    assert "--mode=root" in cmd and "--format=tar" in cmd
    assert any(arg.startswith("--customize-hook=") for arg in cmd)


def test_build_rootfs_without_mmdebstrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(EnvironmentProblem, match="apt-get install -y mmdebstrap"):
        build_rootfs(definition(), tmp_path / "r.tar", log=lambda _line: None)


# --- Root filesystem tars ----------------------------------------------------------------------

DPKG_STATUS = """\
Package: zlib1g
Status: install ok installed
Architecture: amd64
Version: 1:1.2.13.dfsg-1
Description: compression library
 continuation line: with a colon

Package: removed-pkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134
"""


def add(tar: tarfile.TarFile, name: str, data: bytes | None = None, **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    if data is None:
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def make_rootfs(path: Path, *, mtime: int = EPOCH + 1000) -> Path:
    """A tiny rootfs as mmdebstrap writes it: "./" names, a /dev, a hard link, late mtimes."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        common: dict[str, Any] = {"mtime": mtime, "uname": "root", "gname": "root"}
        add(tar, "./", type=tarfile.DIRTYPE, mode=0o755, **common)
        add(tar, "./dev", type=tarfile.DIRTYPE, mode=0o755, **common)
        add(tar, "./dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, **common)
        add(tar, "./dev/fd", type=tarfile.SYMTYPE, linkname="/proc/self/fd", **common)
        add(tar, "./usr", type=tarfile.DIRTYPE, mode=0o755, **common)
        add(tar, "./usr/bin", type=tarfile.DIRTYPE, mode=0o755, **common)
        # The link target sorts after the link: the re-packed layer must swap them.
        add(tar, "./usr/bin/zz-real", b"#!/bin/sh\n", mode=0o755, **common)
        add(tar, "./usr/bin/aa-alias", type=tarfile.LNKTYPE, linkname="./usr/bin/zz-real", **common)
        add(tar, "./var/lib/dpkg/status", DPKG_STATUS.encode(), mode=0o644, **common)
        add(tar, "./home/user/file", b"data", mode=0o600, uid=1000, gid=1000, mtime=EPOCH - 5)
    return path


def test_read_packages(tmp_path: Path) -> None:
    assert read_packages(make_rootfs(tmp_path / "rootfs.tar")) == (
        DebPackage("adduser", "3.134", "all"),
        DebPackage("zlib1g", "1:1.2.13.dfsg-1", "amd64"),
    )


def test_read_packages_without_dpkg_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "./etc", type=tarfile.DIRTYPE)
    assert read_packages(path) == ()


def test_docker_archive_is_deterministic(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs.tar")
    first = write_docker_archive(rootfs, definition(), tmp_path / "a" / "image.tar")
    # Same content written at another time (mtimes past the epoch are clamped anyway).
    rootfs2 = make_rootfs(tmp_path / "rootfs2.tar", mtime=EPOCH + 99999)
    second = write_docker_archive(rootfs2, definition(), tmp_path / "b" / "image.tar")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.image_id == second.image_id
    assert first.size == first.path.stat().st_size
    assert first.reference == f"rebuild/test:bookworm@{first.image_id}"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["image.tar"]


def test_docker_archive_layout(tmp_path: Path) -> None:
    archive = write_docker_archive(
        make_rootfs(tmp_path / "rootfs.tar"), definition(), tmp_path / "image.tar"
    )
    config_hex = archive.image_id.removeprefix("sha256:")
    layer_hex = archive.layer_diff_id.removeprefix("sha256:")
    with tarfile.open(archive.path) as outer:
        names = outer.getnames()
        assert names == sorted(names)
        assert names == [f"{config_hex}.json", f"{layer_hex}/layer.tar", "manifest.json"]
        assert {(m.mtime, m.uid, m.gid) for m in outer.getmembers()} == {(EPOCH, 0, 0)}

        def read(name: str) -> bytes:
            member = outer.extractfile(name)
            assert member is not None
            return member.read()

        manifest = json.loads(read("manifest.json"))
        assert manifest == [
            {
                "Config": f"{config_hex}.json",
                "RepoTags": ["rebuild/test:bookworm"],
                "Layers": [f"{layer_hex}/layer.tar"],
            }
        ]
        config_bytes = read(f"{config_hex}.json")
        assert hashlib.sha256(config_bytes).hexdigest() == config_hex
        config = json.loads(config_bytes)
        assert config_bytes == json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        assert config["created"] == "2023-11-14T22:13:20Z"
        assert config["history"][0]["created"] == config["created"]
        assert "mmdebstrap" in config["history"][0]["comment"]
        assert config["rootfs"] == {"type": "layers", "diff_ids": [archive.layer_diff_id]}
        assert config["os"] == "linux"
        layer_bytes = read(f"{layer_hex}/layer.tar")
    assert hashlib.sha256(layer_bytes).hexdigest() == layer_hex

    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as layer:
        members = {m.name: m for m in layer.getmembers()}
        names = list(members)
    assert names == sorted(names)
    assert "dev/null" not in members and "dev/fd" in members
    assert not any(name.startswith(("./", "/")) or name == "." for name in names)
    assert all(m.mtime <= EPOCH and m.uname == "" and m.gname == "" for m in members.values())
    assert members["home/user/file"].uid == 1000
    assert members["home/user/file"].mtime == EPOCH - 5
    # The hard link group now starts at the first name in sorted order.
    assert members["usr/bin/aa-alias"].isfile() and members["usr/bin/aa-alias"].size == 10
    assert members["usr/bin/zz-real"].islnk()
    assert members["usr/bin/zz-real"].linkname == "usr/bin/aa-alias"


def test_dangling_hard_link_is_rejected(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        add(tar, "./a", type=tarfile.LNKTYPE, linkname="./missing")
    with pytest.raises(BuildFailed, match="hard link"):
        write_docker_archive(rootfs, definition(), tmp_path / "image.tar")


# --- Integration: real mmdebstrap and Docker ---------------------------------------------------


def build_image(defn: ImageDefinition, workdir: Path) -> tuple[Path, str]:
    workdir.mkdir()
    rootfs = workdir / "rootfs.tar"
    build_rootfs(defn, rootfs, log=lambda _line: None)
    archive = write_docker_archive(rootfs, defn, workdir / "image.tar")
    return archive.path, archive.image_id


@pytest.mark.docker
def test_minimal_image_builds_reproducibly_and_loads(tmp_path: Path) -> None:
    for tool in ("mmdebstrap", "docker"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    defn = load_image_definition(REPO / "images" / "debian-minimal.toml")
    first_path, first_id = build_image(defn, tmp_path / "one")
    second_path, second_id = build_image(defn, tmp_path / "two")
    assert first_id == second_id
    assert first_path.read_bytes() == second_path.read_bytes()

    subprocess.run(["docker", "load", "-i", str(first_path)], check=True, capture_output=True)
    inspected = subprocess.run(
        ["docker", "image", "inspect", f"{defn.name}:{defn.tag}", "--format", "{{.Id}}"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert inspected.stdout.strip() == first_id
