"""npm locks without Docker: parsing package-lock.json v2/v3, what is refused (no integrity,
sha1 only, git, file and link dependencies, a tarball whose hash differs), fetching the
tarballs from a local HTTP server once, npm's offline cache layout, the evidence (purls,
sha512), and the network hint for builds that reach for the network."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from rebuild.build.network import network_hint
from rebuild.errors import UsageError
from rebuild.evidence.provenance import NpmPackage, make_provenance, npm_purl
from rebuild.evidence.sbom import make_sbom, reference_sbom
from rebuild.inputs.fetch import NpmTarball, export_npm_cache
from rebuild.inputs.npm import cache_path, parse_npm_lock
from rebuild.store.layout import Store
from tests.conftest import run_rebuild
from tests.inputs_support import FileServer, file_server, write_recipe
from tests.test_evidence_formats import FACTS


def npm_tarball(name: str, version: str) -> bytes:
    """A package tarball as npm packs it: package/package.json (gzip, fixed times)."""
    manifest = json.dumps({"name": name, "version": version}).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("package/package.json")
        info.size, info.mtime = len(manifest), 499162500
        tar.addfile(info, io.BytesIO(manifest))
    import gzip

    return gzip.compress(raw.getvalue(), mtime=0)


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def lock(packages: dict[str, dict[str, Any]], version: int = 3) -> bytes:
    return json.dumps({"name": "app", "version": "1.0.0", "lockfileVersion": version,
                       "requires": True,
                       "packages": {"": {"name": "app", "version": "1.0.0"}, **packages}}
                      ).encode()


def entry(url: str, data: bytes, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"version": version, "resolved": url, "integrity": sri(data), **extra}


# -- parsing --------------------------------------------------------------------------------


def test_parse_lock_v3_reads_every_registry_tarball() -> None:
    a, b = npm_tarball("is-odd", "3.0.1"), npm_tarball("@scope/num", "6.0.0")
    packages = parse_npm_lock(lock({
        "node_modules/is-odd": entry("https://r.example/is-odd/-/is-odd-3.0.1.tgz", a, "3.0.1"),
        "node_modules/is-odd/node_modules/@scope/num":
            entry("https://r.example/@scope/num/-/num-6.0.0.tgz", b, "6.0.0"),
        # the same tarball installed twice is fetched once
        "node_modules/@scope/num": entry("https://r.example/@scope/num/-/num-6.0.0.tgz", b,
                                         "6.0.0"),
        # bundled packages come inside their parent's tarball
        "node_modules/is-odd/node_modules/inner": {"version": "1.0.0", "inBundle": True},
    }))
    assert packages == (
        NpmPackage("@scope/num", "6.0.0", "https://r.example/@scope/num/-/num-6.0.0.tgz",
                   hashlib.sha512(b).hexdigest()),
        NpmPackage("is-odd", "3.0.1", "https://r.example/is-odd/-/is-odd-3.0.1.tgz",
                   hashlib.sha512(a).hexdigest()))
    assert packages[1].integrity == sri(a)


def test_parse_lock_v2_and_aliases() -> None:
    data = npm_tarball("real", "2.0.0")
    [package] = parse_npm_lock(lock({"node_modules/alias": entry(
        "https://r.example/real/-/real-2.0.0.tgz", data, "2.0.0", name="real")}, version=2))
    assert (package.name, package.version) == ("real", "2.0.0")


def test_integrity_with_several_algorithms_uses_sha512() -> None:
    data = npm_tarball("x", "1.0.0")
    both = "sha1-" + base64.b64encode(hashlib.sha1(data).digest()).decode() + " " + sri(data)
    [package] = parse_npm_lock(lock({"node_modules/x": {
        "version": "1.0.0", "resolved": "https://r.example/x-1.0.0.tgz", "integrity": both}}))
    assert package.sha512 == hashlib.sha512(data).hexdigest()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("node_modules/no-int", {"version": "1.0.0", "resolved": "https://r.example/a.tgz"},
     "no-int@1.0.0 (node_modules/no-int): no integrity in the lock"),
    ("node_modules/old", {"version": "1.0.0", "resolved": "https://r.example/a.tgz",
                          "integrity": "sha1-" + base64.b64encode(b"x" * 20).decode()},
     "old@1.0.0 (node_modules/old): integrity 'sha1-"),
    ("node_modules/gitdep", {"version": "1.0.0",
                             "resolved": "git+ssh://git@github.com/a/b.git#" + "a" * 40},
     "gitdep@1.0.0 (node_modules/gitdep): a git dependency"),
    ("node_modules/filedep", {"version": "1.0.0", "resolved": "file:../filedep-1.0.0.tgz",
                              "integrity": sri(b"x")},
     "filedep@1.0.0 (node_modules/filedep): a file dependency"),
    ("node_modules/linked", {"resolved": "packages/linked", "link": True},
     "linked@? (node_modules/linked): a link to a local directory"),
    ("node_modules/unresolved", {"version": "1.0.0", "integrity": sri(b"x")},
     "unresolved@1.0.0 (node_modules/unresolved): no `resolved` address"),
])
def test_lock_entries_that_cannot_be_fetched_are_refused(path: str, value: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_npm_lock(lock({path: value}), source="package-lock.json")
    assert f"package-lock.json: {message}" in str(caught.value)


def test_lockfile_v1_is_refused() -> None:
    with pytest.raises(UsageError, match="lockfileVersion 1 is not supported"):
        parse_npm_lock(json.dumps({"lockfileVersion": 1, "dependencies": {}}).encode())


def test_purl_encodes_the_scope() -> None:
    assert npm_purl("is-odd", "3.0.1") == "pkg:npm/is-odd@3.0.1"
    assert npm_purl("@babel/core", "7.24.0") == "pkg:npm/%40babel/core@7.24.0"


def test_cache_path_is_cacache_content_by_sha512() -> None:
    digest = hashlib.sha512(b"x").hexdigest()
    assert str(cache_path(digest)) == (f"_cacache/content-v2/sha512/{digest[:2]}/"
                                       f"{digest[2:4]}/{digest[4:]}")


def test_export_lays_out_the_cache_and_checks_sha512(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.init()
    data = npm_tarball("x", "1.0.0")
    blob, _ = store.put_bytes(data)
    package = NpmPackage("x", "1.0.0", "https://r.example/x-1.0.0.tgz",
                         hashlib.sha512(data).hexdigest())
    out = export_npm_cache(store, [NpmTarball(package, blob)], tmp_path / "npm")
    target = out / cache_path(package.sha512)
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o644
    assert (out / "_cacache").stat().st_mode & 0o777 == 0o755
    wrong = dataclasses.replace(package, sha512="0" * 128)
    with pytest.raises(Exception, match="does not have the sha512"):
        export_npm_cache(store, [NpmTarball(wrong, blob)], tmp_path / "npm2")


# -- fetch ----------------------------------------------------------------------------------


@pytest.fixture
def server() -> FileServer:
    with file_server() as s:
        yield s  # type: ignore[misc]


def npm_recipe(tmp_path: Path, lock_bytes: bytes) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "package-lock.json").write_bytes(lock_bytes)
    return write_recipe(tmp_path / "t.toml", {"path": "src"}, npm_lock="package-lock.json")


def blob_names(store: Path) -> set[str]:
    directory = store / "blobs" / "sha256"
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def test_fetch_downloads_verifies_and_stores_once(server: FileServer, tmp_path: Path,
                                                  store: Path) -> None:
    a, b = npm_tarball("is-odd", "3.0.1"), npm_tarball("@s/num", "6.0.0")
    server.files["/is-odd-3.0.1.tgz"], server.files["/num-6.0.0.tgz"] = a, b
    recipe = npm_recipe(tmp_path, lock({
        "node_modules/is-odd": entry(f"{server.url}/is-odd-3.0.1.tgz", a, "3.0.1"),
        "node_modules/@s/num": entry(f"{server.url}/num-6.0.0.tgz", b, "6.0.0")}))
    first = run_rebuild("fetch", recipe, "--json", store=store)
    assert first.code == 0, first.stderr
    [report] = first.json["recipes"]
    assert [(p["name"], p["version"], p["sha512"], p["downloaded"]) for p in report["npm"]] == [
        ("@s/num", "6.0.0", hashlib.sha512(b).hexdigest(), True),
        ("is-odd", "3.0.1", hashlib.sha512(a).hexdigest(), True)]
    assert {hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()} <= blob_names(store)
    assert "2 npm package(s): 2 downloaded" in first.stderr
    seen = len(server.requests)

    second = run_rebuild("fetch", recipe, "--json", store=store)
    assert second.code == 0, second.stderr
    assert len(server.requests) == seen, "the second fetch made requests"
    assert all(not p["downloaded"] for p in second.json["recipes"][0]["npm"])

    # store gc keeps them: they are named in index.json as a fetch
    gc = run_rebuild("store", "gc", "--grace", "0", store=store)
    assert gc.code == 0, gc.stderr
    assert hashlib.sha256(a).hexdigest() in blob_names(store)


def test_tarball_whose_hash_differs_exits_2_naming_the_package(server: FileServer,
                                                               tmp_path: Path,
                                                               store: Path) -> None:
    good, bad = npm_tarball("left-pad", "1.3.0"), npm_tarball("left-pad", "6.6.6")
    server.files["/left-pad-1.3.0.tgz"] = bad
    recipe = npm_recipe(tmp_path, lock({"node_modules/left-pad": entry(
        f"{server.url}/left-pad-1.3.0.tgz", good, "1.3.0")}))
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "npm package left-pad@1.3.0" in result.stderr
    assert "does not match the lock's integrity" in result.stderr
    assert "nothing was stored" in result.stderr
    assert hashlib.sha256(bad).hexdigest() not in blob_names(store)


@pytest.mark.parametrize(("value", "message"), [
    ({"version": "1.0.0", "resolved": "https://r.example/dep-1.0.0.tgz"},
     "dep@1.0.0 (node_modules/dep): no integrity"),
    ({"version": "1.0.0", "resolved": "git+https://example.org/dep.git#" + "b" * 40},
     "dep@1.0.0 (node_modules/dep): a git dependency"),
    ({"version": "file:../dep", "resolved": "file:../dep"},
     "dep@file:../dep (node_modules/dep): a file dependency"),
], ids=["no-integrity", "git", "file"])
def test_fetch_refuses_unpinnable_entries_with_exit_2(tmp_path: Path, store: Path,
                                                      value: dict[str, Any],
                                                      message: str) -> None:
    recipe = npm_recipe(tmp_path, lock({"node_modules/dep": value}))
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_npm_lock_missing_from_the_source_exits_2(tmp_path: Path, store: Path) -> None:
    (tmp_path / "src").mkdir()
    recipe = write_recipe(tmp_path / "t.toml", {"path": "src"}, npm_lock="package-lock.json")
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "package-lock.json is not a file of the source tree" in result.stderr


def test_npm_lock_outside_the_source_is_refused(tmp_path: Path, store: Path) -> None:
    (tmp_path / "src").mkdir()
    recipe = write_recipe(tmp_path / "t.toml", {"path": "src"}, npm_lock="../package-lock.json")
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "must be a path inside the source tree" in result.stderr


# -- evidence -------------------------------------------------------------------------------

NPM = (NpmPackage("is-odd", "3.0.1", "https://registry.npmjs.org/is-odd/-/is-odd-3.0.1.tgz",
                  hashlib.sha512(b"is-odd").hexdigest()),
       NpmPackage("@babel/core", "7.24.0",
                  "https://registry.npmjs.org/@babel/core/-/core-7.24.0.tgz",
                  hashlib.sha512(b"core").hexdigest()))


def test_provenance_names_npm_packages_by_purl_and_sha512() -> None:
    provenance = make_provenance(dataclasses.replace(FACTS, npm_packages=NPM))
    resolved = provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
    npm = [d for d in resolved if d["name"].startswith("npm/")]
    assert npm == [
        {"name": "npm/@babel/core-7.24.0.tgz", "uri": "pkg:npm/%40babel/core@7.24.0",
         "digest": {"sha512": NPM[1].sha512}, "annotations": {"url": NPM[1].resolved}},
        {"name": "npm/is-odd-3.0.1.tgz", "uri": "pkg:npm/is-odd@3.0.1",
         "digest": {"sha512": NPM[0].sha512}, "annotations": {"url": NPM[0].resolved}}]


def test_sbom_lists_npm_packages_with_purls_and_hashes() -> None:
    facts = dataclasses.replace(FACTS, npm_packages=NPM)
    sbom = json.loads(make_sbom(facts))
    npm = {c["purl"]: c for c in sbom["components"] if c.get("purl", "").startswith("pkg:npm")}
    assert set(npm) == {"pkg:npm/is-odd@3.0.1", "pkg:npm/%40babel/core@7.24.0"}
    assert npm["pkg:npm/%40babel/core@7.24.0"]["hashes"] == [
        {"alg": "SHA-512", "content": NPM[1].sha512}]
    assert npm["pkg:npm/%40babel/core@7.24.0"]["name"] == "@babel/core"
    artifact = next(d for d in sbom["dependencies"] if d["ref"].startswith("artifact:"))
    assert "pkg:npm/is-odd@3.0.1" in artifact["dependsOn"]
    # merged the fast way, the same bytes as the library's whole BOM; and order-free
    assert make_sbom(facts) == reference_sbom(facts)
    assert make_sbom(dataclasses.replace(facts, npm_packages=NPM[::-1])) == make_sbom(facts)


def test_sbom_without_npm_keeps_its_serial_number() -> None:
    # facts without npm packages give the bytes they gave before npm locks existed
    golden = json.loads((Path(__file__).parent / "golden" / "sbom.json").read_text())
    assert json.loads(make_sbom(FACTS))["serialNumber"] == golden["serialNumber"]


# -- the network hint -------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    "npm error request to https://registry.npmjs.org/is-odd failed, reason: getaddrinfo "
    "EAI_AGAIN registry.npmjs.org",
    "npm ERR! code ENOTFOUND",
    "curl: (6) Could not resolve host: example.org",
    "wget: unable to resolve host address 'ftp.gnu.org'",
    "ssh: Could not resolve hostname github.com: Temporary failure in name resolution",
    "WARNING: Retrying ... NewConnectionError: Failed to establish a new connection: "
    "[Errno -3] Temporary failure in name resolution",
    "socket.gaierror: [Errno -2] Name or service not known",
    "dial tcp: lookup proxy.golang.org: no such host",
    "fatal: unable to access 'https://github.com/a/b/': Could not resolve host: github.com",
])
def test_dns_errors_get_a_hint_naming_offline_inputs(line: str) -> None:
    hint = network_hint(f"building...\n{line}\nexit 1\n".encode())
    assert hint is not None
    for kind in ("python_lock", "npm_lock", "[source] url/git"):
        assert kind in hint


@pytest.mark.parametrize("log", [
    b"", b"make: *** [Makefile:3: all] Error 1\n", b"error: undefined reference to `main'\n",
    b"npm error code ENOENT\nnpm error path /src/package.json\n",
])
def test_other_failures_get_no_network_hint(log: bytes) -> None:
    assert network_hint(log) is None


# -- the plan -------------------------------------------------------------------------------


def test_plan_with_npm_copies_the_cache_and_points_npm_at_it_offline() -> None:
    from rebuild.build.plan import NPM_CACHE, NPM_DIR, plan_build
    from rebuild.build.recipe import parse_recipe
    from tests.test_evidence_formats import RECIPE

    recipe = parse_recipe({**RECIPE, "environment": {
        "image": RECIPE["environment"]["image"], "npm_lock": "web/package-lock.json",
        "source_date_epoch": 1700000000}})
    assert recipe.environment.npm_lock == "web/package-lock.json"
    with_npm, without = plan_build(recipe, 1700000000, npm=True), plan_build(recipe, 1700000000)
    for run in with_npm.runs:
        assert run.env["npm_config_cache"] == NPM_CACHE
        assert run.env["npm_config_offline"] == "true"
        assert f"cp -R {NPM_DIR}/. {NPM_CACHE}/" in run.argv[2]
        assert run.record()["env"]["npm_config_offline"] == "true"
    for run in without.runs:
        assert "npm_config_cache" not in run.env
        assert NPM_DIR not in run.argv[2]


def test_tarball_over_the_download_limit_exits_2_naming_the_package(server: FileServer,
                                                                    tmp_path: Path,
                                                                    store: Path) -> None:
    import os

    big = npm_tarball("big", "1.0.0") + os.urandom(4096)
    server.files["/big-1.0.0.tgz"] = big
    recipe = npm_recipe(tmp_path, lock({"node_modules/big": entry(
        f"{server.url}/big-1.0.0.tgz", big)}))
    recipe.write_text(recipe.read_text() + "\n[limits]\nmax_download_size = \"1k\"\n")
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "npm package big@1.0.0:" in result.stderr
    assert "max_download_size" in result.stderr
    assert hashlib.sha256(big).hexdigest() not in blob_names(store)
