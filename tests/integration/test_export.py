"""`rebuild export`: one byte-reproducible bundle that verifies offline with the store gone,
names any changed file, reproduces with --with-inputs, and whose report renders in Chromium."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, Result, require_tool, run_rebuild, seed_store

pytestmark = pytest.mark.docker

RELEASE = "fw@2.1.0"
SCRIPT = ("umask 022 && mkdir -p /out/usr/bin && printf 'hello\\n' > /out/usr/bin/hello && "
          "echo 2 > /out/n")
RECIPE = """[recipe]
name = "fw"
version = "2.1.0"
requirements = ["REQ-12", "REQ-14"]
change = "CR-101"

[source]
path = "src"

[environment]
image = "{image}"
source_date_epoch = 1700000000

[build]
command = ["sh", "-c", {script}]
outputs = ["usr/bin/hello", "n"]
timeout = 120
memory = "512m"

[test]
command = ["sh", "-c", "grep -q hello /out/usr/bin/hello"]

[check]
vary = ["all"]
"""
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]


@dataclass(frozen=True)
class Exported:
    work: Path
    keys: dict[str, str]  # name -> key id
    built: dict  # type: ignore[type-arg]  # `rebuild build --json`
    tar: Path  # exported twice: tar and tar_again
    tar_again: Path
    gz: Path
    gz_again: Path
    with_inputs: Path
    export_json: dict  # type: ignore[type-arg]

    def key(self, name: str) -> Path:
        return self.work / f"{name}.pub"


def ok(result: Result) -> Result:
    assert result.code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def exported(minimal_image: str, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A release built and signed by CI, rebuilt by QA (a signed verdict), approved by quality,
    exported five ways; then the store is deleted."""
    work = tmp_path_factory.mktemp("export")
    store = work / "store"
    seed_store(store)
    keys = {name: ok(run_rebuild("keygen", "--out", work / name, "--json")).json["keyid"]
            for name in ("ci", "qa", "quality")}
    (work / "src").mkdir()
    (work / "src" / "README").write_text("firmware\n")
    recipe = work / "fw.toml"
    recipe.write_text(RECIPE.format(image=minimal_image, script=json.dumps(SCRIPT)))
    built = ok(run_rebuild("build", recipe, "--key", work / "ci.key", "--json", store=store)).json
    ok(run_rebuild("reproduce", RELEASE, "--key", work / "qa.key", store=store))
    ok(run_rebuild("approve", RELEASE, "--role", "quality", "--meaning", "released for pilot",
                   "--name", "Quinn Quality", "--comment", "CAPA-7 closed", "--key",
                   work / "quality.key", "--trust", work / "ci.pub", store=store))
    pubs = [arg for name in keys for arg in ("--key", str(work / f"{name}.pub"))]
    paths = {n: work / n for n in ("a.tar", "b.tar", "a.tar.gz", "b.tar.gz", "inputs.tar")}
    export_json = {}
    for name, path in paths.items():
        extra = ["--with-inputs"] if name == "inputs.tar" else []
        result = ok(run_rebuild("export", RELEASE, "-o", path, *pubs, *extra, "--json",
                                store=store))
        export_json[name] = result.json
    shutil.rmtree(store)
    return Exported(work, keys, built, paths["a.tar"], paths["b.tar"], paths["a.tar.gz"],
                    paths["b.tar.gz"], paths["inputs.tar"], export_json["a.tar"])


def verify_file(bundle: Path, *keys: Path) -> Result:
    """`rebuild verify FILE` with no store at all."""
    args = [a for k in keys for a in ("--key", str(k))]
    return run_rebuild("verify", bundle, *args, "--json", store=bundle.parent / "no-store")


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {info.name: tar.extractfile(info).read()  # type: ignore[union-attr]
                for info in tar}


def repack(bundle: Path, out: Path, name: str, position: int) -> None:
    """The same archive with one byte of one member changed (headers kept as they were)."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for info in src:
            data = bytearray(src.extractfile(info).read())  # type: ignore[union-attr]
            if info.name == name:
                data[position] ^= 0x01
            dst.addfile(info, io.BytesIO(bytes(data)))


def test_exporting_twice_gives_identical_bytes(exported: Exported) -> None:
    assert exported.tar.read_bytes() == exported.tar_again.read_bytes()
    assert exported.gz.read_bytes() == exported.gz_again.read_bytes()
    assert exported.gz.read_bytes()[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    report = exported.export_json
    assert report["export"] == str(exported.tar)
    assert report["sha256"] == hashlib.sha256(exported.tar.read_bytes()).hexdigest()
    assert report["files"] == len(members(exported.tar))
    assert report["verified"] is True


def test_the_bundle_holds_the_release_closure(exported: Exported, tmp_path: Path) -> None:
    files = members(exported.tar)
    hello = next(a for a in exported.built["artifacts"] if a["name"] == "usr/bin/hello")
    assert hashlib.sha256(files["artifacts/usr/bin/hello"]).hexdigest() == hello["sha256"]
    assert f"blobs/sha256/{hello['sha256']}" in files
    for name, keyid in exported.keys.items():
        assert files[f"keys/{keyid}.pub"] == exported.key(name).read_bytes()
    index = json.loads(files["index.json"])
    kinds = sorted(m["annotations"]["dev.rebuild.kind"] for m in index["manifests"])
    assert kinds == ["approval", "attempt", "evidence", "export", "inputs", "release",
                     "verdict"]
    with tarfile.open(exported.tar) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {
        (1700000000, 0, 0, "", "", 0o644)}
    # the source archive and the image are named, not included, without --with-inputs
    inputs = json.loads(files[f"blobs/sha256/{exported.built['evidence']['inputs'][7:]}"])
    named = {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
             for layer in inputs["layers"]}
    assert f"blobs/sha256/{named['fw.toml'][7:]}" in files
    full = members(exported.with_inputs)
    for title in ("source.tar", "image"):
        assert f"blobs/sha256/{named[title][7:]}" not in files
        assert f"blobs/sha256/{named[title][7:]}" in full
    # GNU sha256sum agrees with SHA256SUMS
    with tarfile.open(exported.tar) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    check = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=tmp_path / "x",
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_bundle_verifies_offline_with_the_store_gone(exported: Exported) -> None:
    for bundle in (exported.tar, exported.gz, exported.with_inputs):
        result = verify_file(bundle, exported.key("ci"))
        assert result.code == 0, result.stderr
        assert result.json["verified"] is True
        names = {c["name"] for c in result.json["checks"]}
        assert {"bundle files", "artifacts", "signature: provenance", "twin build"} <= names
    wrong = verify_file(exported.tar, exported.key("qa"))
    assert wrong.code == 1
    assert "not trusted" in wrong.stderr
    no_key = run_rebuild("verify", exported.tar)
    assert no_key.code == 2


@pytest.mark.parametrize("kind", ["blob: artifact", "blob: signed provenance",
                                  "blob: release manifest", "artifact copy", "report.html",
                                  "report.md", "SHA256SUMS", "index.json", "public key",
                                  "oci-layout"])
def test_a_changed_byte_fails_naming_the_file(exported: Exported, tmp_path: Path,
                                              kind: str) -> None:
    hello = next(a for a in exported.built["artifacts"] if a["name"] == "usr/bin/hello")
    name = {"blob: artifact": f"blobs/sha256/{hello['sha256']}",
            "blob: signed provenance":
                f"blobs/sha256/{exported.built['evidence']['bundles']['provenance'][7:]}",
            "blob: release manifest": f"blobs/sha256/{exported.built['manifest'][7:]}",
            "artifact copy": "artifacts/usr/bin/hello",
            "public key": f"keys/{exported.keys['ci']}.pub"}.get(kind, kind)
    size = len(members(exported.tar)[name])
    for position in sorted({0, size // 2, size - 1}):
        tampered = tmp_path / f"tampered-{position}.tar"
        repack(exported.tar, tampered, name, position)
        assert tampered.read_bytes() != exported.tar.read_bytes()
        result = verify_file(tampered, exported.key("ci"))
        assert result.code in (1, 5), (position, result.stderr)
        assert f"FAIL bundle file {name}:" in result.stderr, (position, result.stderr)


def test_a_changed_byte_outside_the_files_fails(exported: Exported, tmp_path: Path) -> None:
    data = exported.tar.read_bytes()
    with tarfile.open(exported.tar) as tar:
        infos = tar.getmembers()
    index = next(i for i in infos if i.name == "index.json")
    padded = next(i for i in infos if i.size % 512)
    cases = {"a header": (index.offset + 110, "index.json", False),  # its uid field
             "a header, checksum fixed": (index.offset + 110, "index.json", True),
             "padding": (padded.offset_data + padded.size + 1, padded.name, False),
             "the end": (len(data) - 1, exported.tar.name, False)}
    for what, (position, named, fix_checksum) in cases.items():
        tampered = tmp_path / exported.tar.name
        changed = bytearray(data)
        changed[position] ^= 0x01
        if fix_checksum:
            header = changed[index.offset:index.offset + 512]
            header[148:156] = b" " * 8
            changed[index.offset + 148:index.offset + 156] = b"%06o\0 " % sum(header)
        tampered.write_bytes(bytes(changed))
        result = verify_file(tampered, exported.key("ci"))
        assert result.code == 1, (what, result.stderr)
        assert named in result.stderr and "FAIL bundle" in result.stderr, (what, result.stderr)
    gz = bytearray(exported.gz.read_bytes())
    gz[len(gz) // 2] ^= 0x01
    tampered = tmp_path / exported.gz.name
    tampered.write_bytes(bytes(gz))
    result = verify_file(tampered, exported.key("ci"))
    assert result.code == 1
    assert f"FAIL bundle archive {exported.gz.name}" in result.stderr


def test_with_inputs_reproduces_from_the_bundle_alone(exported: Exported,
                                                      tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    with tarfile.open(exported.with_inputs) as tar:
        tar.extractall(layout, filter="data")
    # the store is gone and the network too: only the extracted bundle remains
    require_tool("unshare")
    proc = subprocess.run(["unshare", "-n", sys.executable, "-m", "rebuild", "--store",
                           str(layout), "reproduce", RELEASE, "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["reproducible"] is True
    assert {a["name"] for a in verdict["artifacts"]} == {"usr/bin/hello", "n"}


def test_an_extracted_bundle_can_reload_the_image(exported: Exported, tmp_path: Path) -> None:
    """With the image gone from Docker, `reproduce` reloads it from the layout. The load is
    faked here: removing the shared base image would disturb concurrent test sessions."""
    from rebuild.build.image import load_archived, stored_image
    from rebuild.release.reproduce import stored_inputs
    from rebuild.release.verify import resolve_release
    from rebuild.store.layout import Store

    with tarfile.open(exported.with_inputs) as tar:
        tar.extractall(tmp_path / "layout", filter="data")
    store = Store(tmp_path / "layout")
    inputs = stored_inputs(store, resolve_release(store, RELEASE))
    image = stored_image(store, inputs.image_manifest)
    load_archived(store, image, lambda archive: image.image_id)


def test_report_renders_in_chromium(exported: Exported, tmp_path: Path) -> None:
    require_tool("chromium")
    page = tmp_path / "report.html"
    page.write_bytes(members(exported.tar)["report.html"])
    text = page.read_text()
    # self-contained: nothing to load, nothing to run
    for needle in ("<script", "src=", "href=", "url(", "@import"):
        assert needle not in text.lower(), needle
    argv = [*CHROMIUM, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*argv, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=180, check=True).stdout
    hello = next(a for a in exported.built["artifacts"] if a["name"] == "usr/bin/hello")
    assert f"<h1>{RELEASE}</h1>" in dom
    assert hello["sha256"] in dom
    assert "Evidence VERIFIED" in dom
    qa = dom.split("Independent rebuilds")[1].split("Verification of the evidence")[0]
    assert "PASSED" in qa and exported.keys["qa"] in qa
    assert "Quinn Quality" in dom and "REQ-12" in dom and "CR-101" in dom
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    shot = out / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*argv, f"--screenshot={shot}", "--window-size=1200,1600",
                    page.as_uri()], capture_output=True, timeout=180, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
