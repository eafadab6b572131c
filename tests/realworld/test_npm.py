"""The real-world corpus, npm entry: examples/npm-app, a small project using real packages from
the npm registry (is-odd, which needs is-number), built from its package-lock.json with the
network off, reproducible under every variation, its packages in the SBOM, and rebuilt from
the store alone."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import IMAGE_STORE, ROOT, run_rebuild

pytestmark = pytest.mark.docker

# The tarballs examples/npm-app/package-lock.json pins (sha512 from its integrity).
PACKAGES = {
    "pkg:npm/is-number@6.0.0": "5aed551de20b04af0a016254022499417f781a6384e39460ebfe77f1f2b08a"
                               "5a14bb6d4a9dc1246063eaa1bda8499e66513ef7bcb1ab1d08cac3728c3f07c3ce",
    "pkg:npm/is-odd@3.0.1": "090a6758fac3c263f5f923075d986d2ed26ff74ca2c957e5b86b17e62342564a"
                            "e142d5374d01ec5163c6f7091d93d2e0779c8da4083d8d0128f7408169781630",
}
PARITY = "".join(f"{n} {'odd' if n % 2 else 'even'}\n" for n in range(10)).encode()


def copy_recipe(tmp_path: Path) -> Path:
    """recipes/npm-app.toml and its example, locked to the image built for the tests."""
    (tmp_path / "recipes").mkdir()
    shutil.copytree(ROOT / "examples" / "npm-app", tmp_path / "examples" / "npm-app")
    recipe = tmp_path / "recipes" / "npm-app.toml"
    shutil.copy(ROOT / "recipes" / "npm-app.toml", recipe)
    locked = run_rebuild("lock", "--update-image", recipe, store=IMAGE_STORE)
    assert locked.code == 0, locked.stderr
    return recipe


def test_npm_app_builds_offline_reproducibly_with_its_packages_in_the_sbom(
        node_image: str, tmp_path: Path, store: Path) -> None:
    recipe = copy_recipe(tmp_path)
    fetched = run_rebuild("fetch", recipe, "--json", store=store)
    assert fetched.code == 0, fetched.stderr
    assert {p["name"]: p["version"] for p in fetched.json["recipes"][0]["npm"]} == {
        "is-number": "6.0.0", "is-odd": "3.0.1"}

    built = run_rebuild("build", recipe, "--json", store=store)
    assert built.code == 0, built.stderr
    assert built.json["reproducible"] is True
    [artifact] = built.json["artifacts"]
    assert (artifact["name"], artifact["sha256"]) == ("parity.txt",
                                                      hashlib.sha256(PARITY).hexdigest())
    assert len(built.json["runs"][1]["variations"]) == 12

    sbom = json.loads(run_rebuild("store", "cat", built.json["evidence"]["sbom"],
                                  store=store).stdout)
    npm = {c["purl"]: c["hashes"] for c in sbom["components"]
           if c.get("purl", "").startswith("pkg:npm/")}
    assert npm == {purl: [{"alg": "SHA-512", "content": sha512}]
                   for purl, sha512 in PACKAGES.items()}
    provenance = json.loads(run_rebuild("store", "cat", built.json["evidence"]["provenance"],
                                        store=store).stdout)
    resolved = provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {d["uri"]: d["digest"] for d in resolved if d["uri"].startswith("pkg:npm/")} == {
        purl: {"sha512": sha512} for purl, sha512 in PACKAGES.items()}

    # From the store alone: the example and its lock are gone, and nothing is fetched.
    shutil.rmtree(tmp_path / "examples")
    again = run_rebuild("reproduce", "npm-app@1.0.0", "--json", store=store)
    assert again.code == 0, again.stderr
    assert again.json["reproducible"] is True
