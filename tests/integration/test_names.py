"""Names are bound by signatures: which release `name@version` means comes from the signed
provenance, never from index.json, the SQLite query cache or a bundle's index.

Each test forges what an attacker with write access to the store or a bundle, but not the
keys, can: a renamed index entry, an entry pointing at another release's manifest or
evidence, a consistently relabelled release, an edited cache row, a rewritten bundle, a newer
unsigned inputs record. `verify`, `show`, `export` and `approve` must refuse or say NOT
VERIFIED. Two releases are built once for the module; each test forges a copy of the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rebuild.release.export import Member, bundle_index, index_entry, sums_file, write_archive
from rebuild.store.layout import RELEASE_ANN, canonical_json
from tests.conftest import Result, run_rebuild, seed_store

pytestmark = pytest.mark.docker

RELEASE = "fw@1.0.0"
OTHER = "tool@1.0.0"
REF = "org.opencontainers.image.ref.name"
RECIPE = """[recipe]
name = "{name}"
version = "1.0.0"

[source]
path = "src"

[environment]
image = "{image}"
source_date_epoch = 1700000000

[build]
command = ["sh", "-c", "umask 022 && mkdir -p /out && printf '{text}\\\\n' > /out/fw.bin"]
outputs = ["fw.bin"]
timeout = 120
memory = "512m"
"""


@dataclass(frozen=True)
class Built:
    work: Path
    store: Path  # pristine: tests forge copies
    manifests: dict[str, str]  # release -> release manifest digest

    def key(self, name: str) -> Path:
        return self.work / name


def ok(result: Result) -> Result:
    assert result.code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def built(minimal_image: str, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """fw@1.0.0 and tool@1.0.0, built and signed by CI into one store."""
    work = tmp_path_factory.mktemp("names")
    store = work / "store"
    seed_store(store)
    for name in ("ci", "quality"):
        ok(run_rebuild("keygen", "--out", work / name))
    (work / "src").mkdir()
    (work / "src" / "README").write_text("firmware\n")
    manifests = {}
    for release, text in ((RELEASE, "firmware"), (OTHER, "a tool")):
        recipe = work / f"{release.split('@')[0]}.toml"
        recipe.write_text(RECIPE.format(name=release.split("@")[0], image=minimal_image,
                                        text=text))
        result = ok(run_rebuild("build", recipe, "--key", work / "ci.key", "--json",
                                store=store))
        manifests[release] = result.json["manifest"]
    return Built(work, store, manifests)


def copy_store(source: Path, target: Path) -> Path:
    """A copy to forge: blobs hard-linked (forgeries add new blobs), the rest copied."""
    (target / "blobs" / "sha256").mkdir(parents=True)
    for blob in (source / "blobs" / "sha256").iterdir():
        os.link(blob, target / "blobs" / "sha256" / blob.name)
    for name in ("oci-layout", "index.json"):
        shutil.copy(source / name, target / name)
    return target


@pytest.fixture
def store(built: Built, tmp_path: Path) -> Path:
    return copy_store(built.store, tmp_path / "store")


def edit_index(store: Path, change: Callable[[list[dict[str, Any]]], None]) -> None:
    index = json.loads((store / "index.json").read_bytes())
    change(index["manifests"])
    (store / "index.json").write_text(json.dumps(index))


def put(store: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (store / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest


def read(store: Path, digest: str) -> Any:
    return json.loads((store / "blobs" / "sha256" / digest[7:]).read_bytes())


def relabel(store: Path, old: str, new_name: str) -> str:
    """Rewrite a release manifest under another name and every manifest and index entry that
    names it, consistently: only the signatures can tell."""
    manifest = read(store, old)
    manifest["annotations"][RELEASE_ANN] = new_name
    new = put(store, canonical_json(manifest))
    index = json.loads((store / "index.json").read_bytes())
    for entry in index["manifests"]:
        text = (store / "blobs" / "sha256" / entry["digest"][7:]).read_text()
        if entry["digest"] != old and old in text:
            entry["digest"] = put(store, text.replace(old, new).encode())
        if entry["digest"] == old:
            entry["digest"] = new
        annotations = entry.get("annotations", {})
        for key, value in annotations.items():
            annotations[key] = new if value == old else value
        if annotations.get(REF) == RELEASE:
            annotations[REF] = new_name
    (store / "index.json").write_text(json.dumps(index))
    return new


def refused_everywhere(built: Built, store: Path, target: str) -> None:
    """verify exits 1, show says NOT VERIFIED, approve refuses (1), export refuses (1) or
    writes a bundle that `verify FILE` rejects."""
    ci = built.key("ci.pub")
    verified = run_rebuild("verify", target, "--key", ci, "--json", store=store)
    assert verified.code == 1, verified.stderr
    assert verified.json["verified"] is False and verified.json["release"] is None
    shown = run_rebuild("show", target, "--key", ci, store=store)
    assert shown.code == 0, shown.stderr
    assert "Evidence NOT VERIFIED" in shown.stdout and "Evidence VERIFIED" not in shown.stdout
    assert "From what (NOT VERIFIED" in shown.stdout
    story = ok(run_rebuild("show", target, "--key", ci, "--json", store=store)).json
    assert story["facts_verified"] is False and story["verification"]["verified"] is False
    approved = run_rebuild("approve", target, "--role", "quality", "--meaning", "released",
                           "--name", "Q", "--key", built.key("quality.key"), "--trust", ci,
                           store=store)
    assert approved.code == 1 and "approval refused" in approved.stderr, approved.stderr
    bundle = store.parent / "bundle.tar"
    bundle.unlink(missing_ok=True)
    exported = run_rebuild("export", target, "-o", bundle, "--key", ci, store=store)
    if exported.code == 0:
        assert "evidence NOT verified" in exported.stderr
        rejected = run_rebuild("verify", bundle, "--key", ci, "--json",
                               store=store.parent / "no-store")
        assert rejected.code == 1, rejected.stderr
        assert rejected.json["release"] is None
    else:
        assert exported.code == 1 and "refusing to export" in exported.stderr, exported.stderr
        assert not bundle.exists()


def test_the_genuine_release_verifies_with_its_name_bound(built: Built, store: Path) -> None:
    result = ok(run_rebuild("verify", RELEASE, "--key", built.key("ci.pub"), "--json",
                            store=store))
    checks = {c["name"]: c for c in result.json["checks"]}
    assert result.json["release"] == RELEASE
    assert checks["release name"]["ok"] and checks["release manifest"]["ok"]
    story = ok(run_rebuild("show", RELEASE, "--key", built.key("ci.pub"), "--json",
                           store=store)).json
    assert story["facts_verified"] is True and story["inputs"]["matches_provenance"] is True
    assert story["attempts"][-1]["matches_provenance"] is True
    text = ok(run_rebuild("show", RELEASE, "--key", built.key("ci.pub"), store=store)).stdout
    assert "NOT" not in text
    unkeyed = ok(run_rebuild("show", RELEASE, store=store)).stdout
    assert "From what (NOT VERIFIED: from unsigned store records)" in unkeyed


def test_a_renamed_index_entry(built: Built, store: Path) -> None:
    edit_index(store, lambda entries: [e["annotations"].update({REF: "fw@2.0.0"})
                                       for e in entries if e["annotations"].get(REF) == RELEASE])
    refused_everywhere(built, store, "fw@2.0.0")
    assert ok(run_rebuild("store", "fsck", store=store)).code == 0  # only signatures can tell


def test_an_entry_pointing_at_another_release_manifest(built: Built, store: Path) -> None:
    other = built.manifests[OTHER]
    edit_index(store, lambda entries: [e.update({"digest": other}) for e in entries
                                       if e["annotations"].get(REF) == RELEASE])
    result = run_rebuild("verify", RELEASE, "--key", built.key("ci.pub"), store=store)
    assert result.code == 1
    assert f"names {OTHER}" in result.stderr
    refused_everywhere(built, store, RELEASE)


def test_evidence_of_another_release_attached(built: Built, store: Path) -> None:
    """The release's own evidence replaced by the other release's: first its index entry,
    then a forged evidence manifest (subject rewritten) carrying the other's signed bundles."""
    mine, other = built.manifests[RELEASE], built.manifests[OTHER]
    index = json.loads((store / "index.json").read_bytes())["manifests"]
    theirs = next(e for e in index if e["annotations"].get("dev.rebuild.kind") == "evidence"
                  and e["annotations"].get("dev.rebuild.subject") == other)
    forged_manifest = read(store, theirs["digest"])
    forged_manifest["subject"]["digest"] = mine
    forged = put(store, canonical_json(forged_manifest))
    for digest in (theirs["digest"], forged):
        def swap(entries: list[dict[str, Any]], digest: str = digest) -> None:
            for e in entries:
                if e["annotations"].get("dev.rebuild.kind") == "evidence" and \
                        e["annotations"].get("dev.rebuild.subject") == mine:
                    e["digest"] = digest
        edit_index(store, swap)
        refused_everywhere(built, store, RELEASE)


def test_a_consistently_relabelled_release(built: Built, store: Path) -> None:
    relabel(store, built.manifests[RELEASE], "fw@9.9.9")
    assert ok(run_rebuild("store", "fsck", store=store)).code == 0
    result = run_rebuild("verify", "fw@9.9.9", "--key", built.key("ci.pub"), store=store)
    assert result.code == 1 and f"names {RELEASE}" in result.stderr
    refused_everywhere(built, store, "fw@9.9.9")


def test_an_edited_cache_row(built: Built, store: Path) -> None:
    ok(run_rebuild("verify", RELEASE, "--key", built.key("ci.pub"), store=store))
    cache = store / ".cache" / "query.sqlite"
    with sqlite3.connect(cache) as db:  # a column alone: the row no longer checks
        db.execute("UPDATE entries SET ref_name = ? WHERE ref_name = ?", ("fw@2.0.0", RELEASE))
    renamed = run_rebuild("verify", "fw@2.0.0", "--key", built.key("ci.pub"), store=store)
    assert renamed.code == 5 and "no release 'fw@2.0.0'" in renamed.stderr
    ok(run_rebuild("verify", RELEASE, "--key", built.key("ci.pub"), store=store))
    with sqlite3.connect(cache) as db:  # a consistent edit: the row points at another release
        (text,) = db.execute("SELECT entry FROM entries WHERE ref_name = ?",
                             (RELEASE,)).fetchone()
        entry = json.loads(text)
        entry["digest"] = built.manifests[OTHER]
        db.execute("UPDATE entries SET entry = ? WHERE ref_name = ?",
                   (json.dumps(entry), RELEASE))
    refused_everywhere(built, store, RELEASE)
    fsck = run_rebuild("store", "fsck", store=store)
    assert fsck.code == 5 and "query cache disagrees with index.json" in fsck.stderr
    ok(run_rebuild("store", "fsck", store=store))  # rebuilt from index.json
    ok(run_rebuild("verify", RELEASE, "--key", built.key("ci.pub"), store=store))


def test_a_newer_unsigned_inputs_record_is_not_shown_as_verified(built: Built,
                                                                 store: Path) -> None:
    mine = built.manifests[RELEASE]
    index = json.loads((store / "index.json").read_bytes())["manifests"]
    inputs = next(e for e in index if e["annotations"].get("dev.rebuild.kind") == "inputs"
                  and e["annotations"].get("dev.rebuild.subject") == mine)
    manifest = read(store, inputs["digest"])
    manifest["annotations"]["dev.rebuild.source-date-epoch"] = "1234567890"
    forged = put(store, canonical_json(manifest))
    edit_index(store, lambda entries: entries.append({**inputs, "digest": forged}))
    story = ok(run_rebuild("show", RELEASE, "--key", built.key("ci.pub"), "--json",
                           store=store)).json
    assert story["verification"]["verified"] is True and story["facts_verified"] is True
    assert story["source_date_epoch"] == 1700000000  # the signed one
    assert story["inputs"]["manifest"] == forged
    assert story["inputs"]["matches_provenance"] is False
    text = ok(run_rebuild("show", RELEASE, "--key", built.key("ci.pub"), store=store)).stdout
    assert "1700000000" in text and "1234567890" not in text
    assert f"{forged} does NOT match the provenance" in text


def test_a_bundle_rewritten_consistently_under_another_name(built: Built, store: Path,
                                                            tmp_path: Path) -> None:
    ci = built.key("ci.pub")
    bundle = tmp_path / "fw.tar"
    ok(run_rebuild("export", RELEASE, "-o", bundle, "--key", ci, store=store))
    assert ok(run_rebuild("verify", bundle, "--key", ci, "--json",
                          store=tmp_path / "none")).json["release"] == RELEASE
    with tarfile.open(bundle) as tar:
        files = {i.name: tar.extractfile(i).read() for i in tar}  # type: ignore[union-attr]
    old = built.manifests[RELEASE]
    manifest = json.loads(files[f"blobs/sha256/{old[7:]}"])
    manifest["annotations"][RELEASE_ANN] = "fw@9.9.9"
    renamed = {old: "sha256:" + hashlib.sha256(canonical_json(manifest)).hexdigest()}
    files[f"blobs/sha256/{renamed[old][7:]}"] = canonical_json(manifest)
    del files[f"blobs/sha256/{old[7:]}"]
    index = json.loads(files["index.json"])["manifests"]
    entries = []
    for entry in index:  # every record names the release as its subject: rewrite them all
        digest = entry["digest"]
        data = files.pop(f"blobs/sha256/{digest[7:]}", None)
        if data is None:  # the release manifest, rewritten above
            data = files[f"blobs/sha256/{renamed[old][7:]}"]
        data = data.replace(old.encode(), renamed[old].encode())
        new = "sha256:" + hashlib.sha256(data).hexdigest()
        files[f"blobs/sha256/{new[7:]}"] = data
        entries.append(index_entry(new, len(data), json.loads(data), renamed[old]))
    files["index.json"] = bundle_index(entries)
    files.pop("SHA256SUMS")
    files["SHA256SUMS"] = sums_file([(p, hashlib.sha256(d).hexdigest())
                                     for p, d in files.items()])
    forged = tmp_path / "forged.tar"
    with forged.open("wb") as out:
        write_archive([Member(p, len(d), "", lambda d=d: io.BytesIO(d))  # type: ignore[misc]
                       for p, d in files.items()], 1700000000, out, compress=False)
    result = run_rebuild("verify", forged, "--key", ci, "--json", store=tmp_path / "none")
    assert result.code == 1, result.stderr
    checks = {c["name"]: c for c in result.json["checks"]}
    assert checks["bundle files"]["ok"] is True  # a consistent forgery: only names differ
    assert checks["release name"]["ok"] is False
    assert RELEASE in checks["release name"]["detail"]
    assert result.json["release"] is None


def verdicts(store: Path) -> list[dict[str, Any]]:
    index = json.loads((store / "index.json").read_bytes())["manifests"]
    return [e for e in index if e["annotations"].get("dev.rebuild.kind") == "verdict"]


def test_reproduce_signs_a_verdict_naming_the_recorded_recipe(built: Built,
                                                              store: Path) -> None:
    result = ok(run_rebuild("reproduce", RELEASE, "--key", built.key("quality.key"), "--json",
                            store=store))
    assert result.json["release"] == RELEASE and result.json["reproducible"] is True
    [entry] = verdicts(store)
    layers = {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"]
              for layer in read(store, entry["digest"])["layers"]}
    statement = read(store, layers["verdict.json"])
    assert statement["predicate"]["resourceUri"] == f"rebuild:release:{RELEASE}"


@pytest.mark.parametrize("forgery", ["renamed index entry", "relabelled release"])
def test_reproduce_refuses_to_sign_a_verdict_under_a_false_name(built: Built, store: Path,
                                                                forgery: str) -> None:
    """The name comes from the recorded recipe: a store that names the release otherwise gets
    no verdict (exit 1, before anything is built)."""
    if forgery == "renamed index entry":
        edit_index(store, lambda entries: [
            e["annotations"].update({REF: "fw@2.0.0"}) for e in entries
            if e["annotations"].get(REF) == RELEASE])
        targets = ["fw@2.0.0"]
    else:
        relabel(store, built.manifests[RELEASE], "fw@9.9.9")
        artifact = read(store, built.manifests[RELEASE])["layers"][0]["digest"]
        targets = ["fw@9.9.9", artifact]  # by name, and by the artifact it holds
    for target in targets:
        result = run_rebuild("reproduce", target, "--key", built.key("quality.key"), "--json",
                             store=store)
        assert result.code == 1, result.stderr
        assert f"builds {RELEASE}; refusing" in result.stderr, result.stderr
        assert "nothing was built" in result.stderr and "Traceback" not in result.stderr
        assert "rebuilding from the store alone" not in result.stderr
        assert verdicts(store) == []
