"""The store: write-once blobs verified on read, atomic writes, concurrent writers, fsck, gc."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

from rebuild.errors import StoreError
from rebuild.runtime import current_owner
from rebuild.store import layout
from rebuild.store.layout import (
    JOURNAL,
    KIND,
    REF_NAME,
    SUBJECT,
    WAL,
    Descriptor,
    Store,
    canonical_json,
)
from tests.conftest import require_tool, run_rebuild, tamper


def make_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    store.init()
    return store


def test_layout_is_an_oci_image_layout(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []


def test_blobs_are_named_by_their_hash_and_written_once(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest, size = store.put_bytes(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest() and size == 5
    path = store.blob_path(digest)
    mtime = path.stat().st_mtime_ns
    assert store.put_bytes(b"hello") == (digest, 5)
    assert path.stat().st_mtime_ns == mtime
    assert oct(path.stat().st_mode & 0o777) == "0o444"
    source = tmp_path / "big"
    source.write_bytes(os.urandom(3 << 20))
    big, big_size = store.put_file(source)
    assert big == "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    assert big_size == 3 << 20
    assert store.read_bytes(big) == source.read_bytes()


def test_a_flipped_byte_is_refused_on_read_and_found_by_fsck(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest, _ = store.put_bytes(b"some evidence")
    manifest = store.put_artifact("application/x-test", [Descriptor("text/plain", digest, 13)])
    store.add_to_index(manifest, {REF_NAME: "x@1"})
    assert store.fsck() == []
    tamper(store.blob_path(digest))
    with pytest.raises(StoreError, match=f"blob {digest} is corrupt"):
        store.read_bytes(digest)
    with pytest.raises(StoreError, match="corrupt"), store.open_verified(digest):
        pass
    [problem] = store.fsck()
    assert problem.digest == digest and "corrupt" in problem.what

    result = run_rebuild("store", "fsck", store=store.root)
    assert result.code == 5
    assert digest in result.stderr
    result = run_rebuild("store", "cat", digest, store=store.root)
    assert result.code == 5 and "corrupt" in result.stderr


def test_a_missing_blob_is_named_by_fsck(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest, _ = store.put_bytes(b"layer")
    manifest = store.put_artifact("application/x-test", [Descriptor("text/plain", digest, 5)])
    store.add_to_index(manifest, {REF_NAME: "x@1"})
    store.blob_path(digest).unlink()
    [problem] = store.fsck()
    assert problem.digest == digest and problem.what.startswith("missing")
    result = run_rebuild("store", "fsck", "--json", store=store.root)
    assert result.code == 5
    assert result.json["problems"][0]["digest"] == digest


def test_index_entries_are_not_duplicated(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    manifest = store.put_artifact("application/x-test", [])
    for _ in range(3):
        store.add_to_index(manifest, {REF_NAME: "x@1"})
    assert len(store.index()) == 1
    assert store.find("x@1") is not None and store.find("y@1") is None


def _writer(root: str, worker: int) -> list[str]:
    store = Store(Path(root))
    digests = []
    for i in range(40):
        digest, _ = store.put_bytes(f"shared blob {i}".encode())  # every worker writes these
        own, _ = store.put_bytes(f"worker {worker} blob {i}".encode())
        manifest = store.put_artifact("application/x-test",
                                      [Descriptor("text/plain", own, 1)])
        store.add_to_index(manifest, {REF_NAME: f"w{worker}@{i}"})
        digests += [digest, own]
    return digests


def test_concurrent_writers_do_not_corrupt_each_other(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with ProcessPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_writer, [str(store.root)] * 4, range(4)))
    assert all(store.has(d) for digests in results for d in digests)
    assert len(store.index()) == 4 * 40  # no index update was lost
    assert store.fsck() == []


def test_sigkill_mid_write_leaves_no_partial_blob(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from rebuild.store.layout import Store; "
                               "Store(Path(sys.argv[1])).put_file(Path(sys.argv[2]))",
                               str(store.root), str(fifo)])
    with fifo.open("wb") as feed:
        feed.write(os.urandom(1 << 20))  # the writer is now mid-blob, waiting for more
        feed.flush()
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size for p in (store.root / ".tmp").iterdir()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert list(store.blobs.iterdir()) == []  # nothing under a digest name
    assert store.fsck() == []
    assert store.gc(grace_seconds=0).removed == ()
    assert list((store.root / ".tmp").iterdir()) == []


def test_gc_keeps_what_the_index_reaches(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    kept, _ = store.put_bytes(b"kept")
    subject = store.put_artifact("application/x-test", [Descriptor("text/plain", kept, 4)])
    store.add_to_index(subject, {REF_NAME: "x@1"})
    orphan, _ = store.put_bytes(b"orphan")
    assert store.gc().removed == ()  # too young: a build may be about to name it
    assert store.gc(grace_seconds=0).digests == [orphan]
    assert store.has(kept) and store.has(subject.digest)
    assert store.fsck() == []


def test_the_query_index_follows_index_json(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = store.put_artifact("application/x-test", [])
    store.add_to_index(first, {REF_NAME: "x@1", "dev.rebuild.kind": "release"})
    assert store.find("x@1") == store.index()[0]
    second = store.put_artifact("application/x-test", [],
                                subject=first, annotations={"n": "2"})
    store.add_to_index(second, {"dev.rebuild.kind": "evidence",
                                "dev.rebuild.subject": first.digest})
    assert [e.digest for e in store.referrers(first.digest)] == [second.digest]
    # edited by hand (or by another tool): the cache notices and is rebuilt
    index = json.loads((store.root / "index.json").read_text())
    index["manifests"][0]["annotations"][REF_NAME] = "y@1"
    (store.root / "index.json").write_text(json.dumps(index))
    assert store.find("x@1") is None
    assert store.find("y@1") is not None
    assert [e.digest for e in store.entries("evidence")] == [second.digest]


def test_an_edited_query_cache_row_is_never_believed(tmp_path: Path) -> None:
    """The cache is derived data: a row whose columns are not its own entry's is rebuilt from
    index.json on lookup, and fsck compares every row with index.json."""
    import sqlite3

    store = make_store(tmp_path)
    named = {}
    for name in ("x@1", "y@1"):
        digest, size = store.put_bytes(name.encode())
        manifest = store.put_artifact("application/x-test",
                                      [Descriptor("text/plain", digest, size)])
        named[name] = store.add_to_index(manifest, {REF_NAME: name}).digest
    assert store.find("x@1") is not None and store.fsck() == []
    cache = store.root / ".cache" / "query.sqlite"
    with sqlite3.connect(cache) as db:
        db.execute("UPDATE entries SET ref_name = 'z@1' WHERE ref_name = 'x@1'")
    assert store.find("z@1") is None
    found = store.find("x@1")
    assert found is not None and found.digest == named["x@1"]
    with sqlite3.connect(cache) as db:  # consistent with itself, not with index.json
        (text,) = db.execute("SELECT entry FROM entries WHERE ref_name = 'x@1'").fetchone()
        db.execute("UPDATE entries SET entry = ? WHERE ref_name = 'x@1'",
                   (text.replace(named["x@1"], named["y@1"]),))
    problems = store.fsck()
    assert [p.digest for p in problems] == [".cache/query.sqlite"]
    assert "query cache disagrees with index.json: row 0 differs" in problems[0].what
    assert store.fsck() == []  # rebuilt
    found = store.find("x@1")
    assert found is not None and found.digest == named["x@1"]
    result = run_rebuild("store", "fsck", store=store.root)
    assert result.code == 0, result.stderr


def age(store: Store, *digests: str, days: float = 2) -> None:
    old = time.time() - days * 86400
    for digest in digests:
        os.utime(store.blob_path(digest), (old, old))


def named_store(tmp_path: Path) -> tuple[Store, str, Descriptor]:
    store = make_store(tmp_path)
    layer, _ = store.put_bytes(b"an artifact")
    release = store.put_artifact("application/x-test", [Descriptor("text/plain", layer, 11)])
    store.add_to_index(release, {REF_NAME: "x@1"})
    return store, layer, release


@pytest.mark.parametrize("index", [None, b'{"schemaVersion":2,"manifests":[]}'])
def test_fsck_and_gc_refuse_a_missing_or_empty_index(tmp_path: Path, index: bytes | None) -> None:
    store, _, _ = named_store(tmp_path)
    before = sorted(p.name for p in store.blobs.iterdir())
    age(store, *("sha256:" + name for name in before))
    if index is None:
        (store.root / "index.json").unlink()
    else:
        (store.root / "index.json").write_bytes(index)
    [problem] = store.fsck()
    assert problem.digest == "index.json"
    assert ("missing" if index is None else "names no manifest") in problem.what
    fsck = run_rebuild("store", "fsck", store=store.root)
    assert fsck.code == 5 and "index.json" in fsck.stderr
    assert "all blobs verified" not in fsck.stderr
    with pytest.raises(StoreError, match="gc removed nothing"):
        store.gc(grace_seconds=0)
    gc = run_rebuild("store", "gc", "--grace", "0", store=store.root)
    assert gc.code == 5 and "removed nothing" in gc.stderr and "Traceback" not in gc.stderr
    assert sorted(p.name for p in store.blobs.iterdir()) == before


def test_an_empty_store_is_fine(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.fsck() == []
    assert store.gc(grace_seconds=0).removed == ()


def test_gc_never_removes_every_blob(tmp_path: Path) -> None:
    store, layer, release = named_store(tmp_path)
    # An index naming only a manifest that is gone (a hand edit, a bad copy): its blobs'
    # references are unknown, so nothing may be taken for garbage.
    index = json.loads((store.root / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:" + "1" * 64
    (store.root / "index.json").write_text(json.dumps(index))
    age(store, layer, release.digest)
    with pytest.raises(StoreError, match="missing manifest"):
        store.gc(grace_seconds=0)
    assert store.has(layer) and store.has(release.digest)


def test_gc_follows_manifests_by_media_type_only(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    orphan, _ = store.put_bytes(b"referenced only inside an artifact's bytes")
    # Artifacts whose bytes look like manifests: one without a config (it crashed gc), one
    # naming the orphan, one that is not even an object.
    fakes = [json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json"}),
             json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "config": {"digest": orphan}, "layers": [{"digest": orphan}]}),
             json.dumps(["application/vnd.oci.image.manifest.v1+json"])]
    layers = [Descriptor("application/octet-stream", *store.put_bytes(f.encode()))
              for f in fakes]
    release = store.put_artifact("application/x-test", layers)
    store.add_to_index(release, {REF_NAME: "x@1"})
    age(store, orphan)
    assert store.gc(grace_seconds=0).digests == [orphan]
    assert all(store.has(layer.digest) for layer in layers)
    assert store.fsck() == []


def test_gc_dry_run_says_what_it_would_remove(tmp_path: Path) -> None:
    store, _, _ = named_store(tmp_path)
    orphan, size = store.put_bytes(b"nothing names me")
    age(store, orphan)
    dry = run_rebuild("store", "gc", "--dry-run", "--json", store=store.root)
    assert dry.code == 0, dry.stderr
    assert dry.json["removed"] == [{"digest": orphan, "size": size}]
    assert dry.json["dry_run"] is True
    assert f"would remove {orphan} ({size} bytes)" in dry.stderr
    assert store.has(orphan)
    done = run_rebuild("store", "gc", "--json", store=store.root)
    assert done.code == 0, done.stderr
    assert done.json["removed"] == [{"digest": orphan, "size": size}]
    assert not store.has(orphan)


def test_a_lease_keeps_the_blobs_a_build_uses(tmp_path: Path) -> None:
    store, _, _ = named_store(tmp_path)
    found, _ = store.put_bytes(b"an old input a build finds")
    read, _ = store.put_bytes(b"an old input a build reads")
    rewritten = b"an old blob a build writes again"
    written, _ = store.put_bytes(rewritten)
    other, _ = store.put_bytes(b"an old blob nobody uses")
    age(store, found, read, written, other)
    building = Store(store.root)
    with building.lease():
        assert building.has(found)
        building.read_bytes(read)
        building.put_bytes(rewritten)
        collected = Store(store.root).gc(grace_seconds=0)
        assert collected.digests == [other]
        assert collected.leased == 3
        assert all(store.has(d) for d in (found, read, written))
    assert list((store.root / ".leases").iterdir()) == []
    assert sorted(Store(store.root).gc(grace_seconds=0).digests) == sorted([found, read,
                                                                            written])


def test_a_killed_builds_lease_and_partial_blob_are_removed(tmp_path: Path) -> None:
    store, _, _ = named_store(tmp_path)
    old, _ = store.put_bytes(b"leased by a build that gets killed")
    age(store, old)
    code = ("import os, sys, signal; from pathlib import Path\n"
            "from rebuild.store.layout import Store\n"
            "s = Store(Path(sys.argv[1]))\n"
            "with s.lease():\n"
            "    s.has(sys.argv[2])\n"
            "    (s.root / '.tmp' / (s._temp_prefix('blob') + 'x')).write_bytes(b'partial')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(store.root), old], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert len(list((store.root / ".leases").iterdir())) == 1
    assert len(list((store.root / ".tmp").iterdir())) == 1
    collected = store.gc()  # the default grace: the partial blob goes because its writer died
    assert collected.temporary == 2 and collected.leased == 0
    assert collected.digests == [old]
    assert list((store.root / ".leases").iterdir()) == []
    assert list((store.root / ".tmp").iterdir()) == []


# -- index.json, appended in place: complete at every moment, a write's cost flat -----------


def _named(store: Store, name: str, subject: Descriptor | None = None) -> Descriptor:
    digest, size = store.put_bytes(name.encode())
    manifest = store.put_artifact("application/x-test", [Descriptor("text/plain", digest, size)],
                                  subject=subject)
    annotations = {REF_NAME: name, KIND: "release"} if subject is None else {
        KIND: "evidence", SUBJECT: subject.digest}
    return store.add_to_index(manifest, annotations)


def _index_json(store: Store) -> dict[str, Any]:
    data = (store.root / "index.json").read_bytes()
    parsed = json.loads(data)
    assert canonical_json(parsed) == data  # what a whole rewrite would have written
    return cast(dict[str, Any], parsed)


def test_index_json_names_each_entry_right_after_its_write_appended_in_place(
        tmp_path: Path) -> None:
    store = make_store(tmp_path)
    index_json = store.root / "index.json"
    inode = index_json.stat().st_ino
    first = _named(store, "x@1")
    evidence = _named(store, "e", subject=first)
    for _ in range(2):
        _named(store, "y@1")  # a second identical entry is not named twice
    assert index_json.stat().st_ino == inode  # never replaced: written in place
    assert [m["annotations"] for m in _index_json(store)["manifests"]] == [
        {REF_NAME: "x@1", KIND: "release"}, {KIND: "evidence", SUBJECT: first.digest},
        {REF_NAME: "y@1", KIND: "release"}]
    assert store.find("x@1") == first and store.referrers(first.digest) == [evidence]
    assert [e.annotations for e in store.entries("release")] == [
        {REF_NAME: "x@1", KIND: "release"}, {REF_NAME: "y@1", KIND: "release"}]
    assert (store.root / WAL).read_bytes() == b""  # the record is cleared once written
    assert store.fsck() == []
    (store.root / ".cache" / "query.sqlite").unlink()
    assert Store(store.root).find("y@1") == store.index()[2]


def test_skopeo_finds_a_release_in_the_store_right_after_its_write(tmp_path: Path) -> None:
    """An OCI tool that reads index.json alone (no `store compact`) finds every release."""
    require_tool("skopeo")
    store = make_store(tmp_path)
    names = [_named(store, f"hello@1.0.{i}") for i in range(40)]
    for i in (0, 39):
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{store.root}:hello@1.0.{i}"],
                             check=True, capture_output=True).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == names[i].digest


def _killed_mid_append(root: Path, name: str, written: int) -> None:
    """Run `_named(store, name)` in a process killed by SIGKILL in the middle of its
    index.json write, after `written` bytes of it (its write-ahead record is durable)."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from rebuild.store import layout\n"
        "from tests.test_store import _named\n"
        "real = os.pwrite\n"
        "def torn(fd, data, offset):\n"
        "    if os.readlink(f'/proc/self/fd/{fd}').endswith('index.json'):\n"
        f"        real(fd, data[:{written}], offset)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(fd, data, offset)\n"
        "layout.os.pwrite = torn\n"
        f"_named(layout.Store(Path(sys.argv[1])), {name!r})\n")
    killed = subprocess.run([sys.executable, "-c", code, str(root)], check=False,
                            cwd=Path(__file__).parent.parent)
    assert killed.returncode == -signal.SIGKILL


@pytest.mark.parametrize("written", [0, 1, 20])
def test_a_writer_killed_mid_append_is_redone_by_the_next_reader(
        tmp_path: Path, written: int) -> None:
    store = make_store(tmp_path)
    first = _named(store, "x@1")
    assert store.find("x@1") == first  # a cache, which the torn append makes stale
    _killed_mid_append(store.root, "y@1", written)
    assert (store.root / WAL).read_bytes()  # the record of the append that was cut short
    if written:
        with pytest.raises(ValueError):  # torn: what a tool reading it then would see
            json.loads((store.root / "index.json").read_bytes())
    reopened = Store(store.root)
    second = reopened.find("y@1")  # a reader redoes the append from the record
    assert second is not None and second.annotations == {REF_NAME: "y@1", KIND: "release"}
    assert [m["annotations"][REF_NAME] for m in _index_json(store)["manifests"]] == [
        "x@1", "y@1"]
    assert (store.root / WAL).read_bytes() == b""
    assert reopened.index() == [first, second] and reopened.fsck() == []


def test_fsck_and_gc_redo_an_append_a_killed_writer_left_torn(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    _named(store, "x@1")
    _killed_mid_append(store.root, "y@1", 9)
    assert store.fsck() == []
    _killed_mid_append(store.root, "z@1", 9)
    assert store.gc(grace_seconds=0).removed == ()
    assert [e.annotations[REF_NAME] for e in store.index() if e.annotations] == [
        "x@1", "y@1", "z@1"]


def test_a_writer_killed_mid_append_is_redone_by_the_next_writer(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = _named(store, "x@1")
    _killed_mid_append(store.root, "y@1", 7)
    third = _named(Store(store.root), "z@1")
    assert [m["annotations"][REF_NAME] for m in _index_json(store)["manifests"]] == [
        "x@1", "y@1", "z@1"]
    assert store.index()[0] == first and store.index()[2] == third
    assert store.find("y@1") == store.index()[1] and store.fsck() == []


def test_a_record_cut_short_was_never_applied(tmp_path: Path) -> None:
    """A writer killed while writing its record had not touched index.json: nothing to redo."""
    store = make_store(tmp_path)
    first = _named(store, "x@1")
    before = (store.root / "index.json").read_bytes()
    (store.root / WAL).write_bytes(b'{"entry":{"digest":"sha256:')
    assert store.index() == [first]
    assert (store.root / "index.json").read_bytes() == before
    assert (store.root / WAL).read_bytes() == b""


def test_a_corrupt_record_is_a_corrupt_store(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    _named(store, "x@1")
    (store.root / WAL).write_bytes(b'{"entry":{"digest":"md5:1"},"inode":1,"length":2}\n')
    with pytest.raises(StoreError, match="not a valid write-ahead record"):
        store.index()
    result = run_rebuild("store", "ls", store=store.root)
    assert result.code == 5 and "index.wal" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_index_json_written_by_another_tool_is_rewritten_once_then_appended_to(
        tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = _named(store, "x@1")
    pretty = json.dumps({"schemaVersion": 2, "mediaType": layout.OCI_INDEX,
                         "manifests": [first.to_json()]}, indent=2)
    (store.root / "index.json").write_text(pretty)
    second = _named(store, "y@1")
    inode = (store.root / "index.json").stat().st_ino
    third = _named(store, "z@1")
    assert (store.root / "index.json").stat().st_ino == inode
    assert _index_json(store)["manifests"] == [e.to_json() for e in (first, second, third)]
    assert store.find("z@1") == third and store.fsck() == []


def _older_store(store: Store, journaled: int) -> list[Descriptor]:
    """A store as an older rebuild left it: index.json, then `journaled` entries in
    index.journal only, and a line its writer never finished."""
    names = [_named(store, f"x@{i}") for i in range(1 + journaled)]
    index = {"manifests": [names[0].to_json()], "mediaType": layout.OCI_INDEX,
             "schemaVersion": 2}
    (store.root / "index.json").write_bytes(canonical_json(index))
    (store.root / JOURNAL).write_bytes(b"".join(canonical_json(e.to_json()) + b"\n"
                                                for e in names[1:]) + b'{"digest":"sha')
    return names


def test_the_journal_of_an_older_rebuild_is_folded_on_first_use(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    names = _older_store(store, 3)
    assert Store(store.root).find("x@3") == names[3]
    assert not (store.root / JOURNAL).exists()
    assert _index_json(store)["manifests"] == [e.to_json() for e in names]
    assert store.fsck() == []
    names += [_named(store, "x@4")]
    assert store.index() == names
    # compact: nothing left to fold
    result = run_rebuild("store", "compact", "--json", store=store.root)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["folded"] == 0


def test_store_compact_folds_an_older_rebuilds_journal(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    names = _older_store(store, 2)
    assert Store(store.root).compact() == 2
    assert _index_json(store)["manifests"] == [e.to_json() for e in names]


def test_gc_keeps_what_an_older_journal_names(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    names = _older_store(store, 1)
    orphan, _ = store.put_bytes(b"orphan")
    age(store, *("sha256:" + p.name for p in store.blobs.iterdir()))
    assert Store(store.root).gc(grace_seconds=0).digests == [orphan]
    assert store.has(names[1].digest) and not (store.root / JOURNAL).exists()
    assert store.fsck() == []


def test_an_older_journal_beside_an_emptied_index_json_is_not_the_whole_index(
        tmp_path: Path) -> None:
    store = make_store(tmp_path)
    _older_store(store, 1)
    store.root.joinpath("index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    age(store, *("sha256:" + p.name for p in store.blobs.iterdir()))
    blobs = sorted(store.blobs.iterdir())
    with pytest.raises(StoreError, match="names no manifest"):
        store.gc(grace_seconds=0)
    with pytest.raises(StoreError, match="compact changed nothing"):
        store.compact()
    with pytest.raises(StoreError, match="not the whole index"):
        store.find("x@1")
    assert sorted(store.blobs.iterdir()) == blobs
    assert [p.digest for p in store.fsck()] == ["index.json"]


def test_a_corrupt_line_of_an_older_journal_is_a_corrupt_store(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    _older_store(store, 1)
    with (store.root / JOURNAL).open("ab") as journal:
        journal.write(b'\n{"digest":"md5:1"}\n')
    with pytest.raises(StoreError, match=r"line 2 .* not a valid descriptor"):
        store.index()
    result = run_rebuild("store", "ls", store=store.root)
    assert result.code == 5 and "index.journal" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_query_cache_reads_only_what_was_appended(tmp_path: Path) -> None:
    """A cache one append behind (another process wrote it) takes the new entries from the
    appended bytes: the rows already there are kept, not rebuilt."""
    import sqlite3

    store = make_store(tmp_path)
    first = _named(store, "x@1")
    assert store.find("x@1") == first
    cache = store.root / ".cache" / "query.sqlite"
    with sqlite3.connect(cache) as db:
        (kept,) = db.execute("SELECT rowid FROM entries WHERE ref_name = 'x@1'").fetchone()
        db.execute("UPDATE meta SET signature = 'behind'")  # as if another writer ran
        db.execute("UPDATE meta SET signature = ?", (store._signature(),))
    with store._locked():
        assert store._append_in_place(Descriptor(first.media_type, first.digest, first.size,
                                                 {REF_NAME: "y@1", KIND: "release"}))
    assert store.find("y@1") is not None and store.find("x@1") == first
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT rowid FROM entries WHERE ref_name = 'x@1'").fetchone() == (
            kept,)


def test_an_edited_cache_row_is_never_believed(tmp_path: Path) -> None:
    import sqlite3

    store = make_store(tmp_path)
    named = {name: _named(store, name) for name in ("x@1", "y@1")}
    assert store.find("x@1") == named["x@1"]
    cache = store.root / ".cache" / "query.sqlite"
    with sqlite3.connect(cache) as db:
        db.execute("UPDATE entries SET ref_name = 'z@1' WHERE ref_name = 'x@1'")
    assert store.find("z@1") is None and store.find("x@1") == named["x@1"]
    with sqlite3.connect(cache) as db:
        (text,) = db.execute("SELECT entry FROM entries WHERE ref_name = 'y@1'").fetchone()
        db.execute("UPDATE entries SET entry = ? WHERE ref_name = 'y@1'",
                   (text.replace(named["y@1"].digest, named["x@1"].digest),))
    problems = store.fsck()
    assert [p.digest for p in problems] == [".cache/query.sqlite"]
    assert store.fsck() == [] and store.find("y@1") == named["y@1"]


def _appending_writer(root: str, worker: int) -> None:
    store = Store(Path(root))
    for i in range(30):
        _named(store, f"w{worker}@{i}")
        assert store.find(f"w{worker}@{i}") is not None
        # Every reader between two writes sees a whole index.json.
        assert any(m["annotations"].get(REF_NAME) == f"w{worker}@{i}"
                   for m in json.loads(store.root.joinpath("index.json").read_bytes())[
                       "manifests"])


def test_concurrent_appenders_lose_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    _named(store, "base@0")
    assert store.find("nothing") is None  # a cache that the writers then bring up to date
    with ProcessPoolExecutor(max_workers=4) as pool:
        list(pool.map(_appending_writer, [str(store.root)] * 4, range(4)))
    assert len(_index_json(store)["manifests"]) == 1 + 4 * 30
    assert all(store.find(f"w{w}@{i}") is not None for w in range(4) for i in range(30))
    assert store.fsck() == []


def test_staged_outputs_are_stored_in_one_pass_leased_and_named_only_on_commit(
        tmp_path: Path) -> None:
    """collect_outputs with a staging area hashes each output once while copying it into the
    store: the same artifacts as without, no blob named before commit, every committed blob
    leased (a concurrent gc keeps it), and nothing left in .tmp either way."""
    from rebuild.build.compare import HASHERS, collect_outputs

    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    for i in range(HASHERS * 8):
        (out / "d" / f"f{i}").write_text(f"{i % (HASHERS * 4)}\n")  # half of them twice
    (out / "d" / "link").symlink_to("f0")
    store, _, _ = named_store(tmp_path)
    plain = collect_outputs(out, ["d/**"], "a")
    building = Store(store.root)
    with building.lease():
        with building.staging() as staging:
            staged = collect_outputs(out, ["d/**"], "a", stage=staging)
            assert staged == plain
            files = [a for a in staged if a.link is None]
            assert not any(store.blob_path(f"sha256:{a.sha256}").exists() for a in files)
            [directory] = (store.root / ".tmp").iterdir()  # named by its owner
            assert directory.name.startswith(current_owner().token)
            assert len(list(directory.iterdir())) == HASHERS * 4  # identical contents once
            staging.commit()
        for artifact in files:
            digest = f"sha256:{artifact.sha256}"
            assert store.read_bytes(digest) == artifact.path.read_bytes()
            assert store.blob_path(digest).stat().st_mode & 0o777 == 0o444
        age(store, *{f"sha256:{a.sha256}" for a in files})
        assert Store(store.root).gc(grace_seconds=0).leased == HASHERS * 4
    assert list((store.root / ".tmp").iterdir()) == []
    with Store(store.root).staging() as staging:  # not committed: nothing named, nothing left
        (out / "d" / "new").write_text("only staged\n")
        [new] = collect_outputs(out, ["d/new"], "a", stage=staging)
    assert not store.blob_path(f"sha256:{new.sha256}").exists()
    assert list((store.root / ".tmp").iterdir()) == []


def test_a_query_cache_of_the_previous_rebuild_is_kept_when_it_held_no_journal(
        tmp_path: Path) -> None:
    """Upgrading costs a large store no rebuild of its cache: the previous rebuild's
    signature ("index.json's, then 0:0 for no journal") names the same rows."""
    import sqlite3

    store = make_store(tmp_path)
    first = _named(store, "x@1")
    assert store.find("x@1") == first
    cache = store.root / ".cache" / "query.sqlite"
    with sqlite3.connect(cache) as db:
        db.execute("UPDATE meta SET signature = ?", (store._signature() + " 0:0",))
        (kept,) = db.execute("SELECT rowid FROM entries WHERE ref_name = 'x@1'").fetchone()
    assert Store(store.root).find("x@1") == first
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT rowid FROM entries WHERE ref_name = 'x@1'").fetchone() == (
            kept,)
        db.execute("UPDATE meta SET signature = ?", (store._signature() + " 7:120",))
    assert Store(store.root).find("x@1") == first  # journal lines: rebuilt from index.json
    assert store.fsck() == []
