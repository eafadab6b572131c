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

import pytest

from rebuild.errors import StoreError
from rebuild.store.layout import REF_NAME, Descriptor, Store
from tests.conftest import run_rebuild, tamper


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
    assert store.gc(grace_seconds=0) == []
    assert list((store.root / ".tmp").iterdir()) == []


def test_gc_keeps_what_the_index_reaches(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    kept, _ = store.put_bytes(b"kept")
    subject = store.put_artifact("application/x-test", [Descriptor("text/plain", kept, 4)])
    store.add_to_index(subject, {REF_NAME: "x@1"})
    orphan, _ = store.put_bytes(b"orphan")
    assert store.gc() == []  # too young: a build may be about to name it
    assert store.gc(grace_seconds=0) == [orphan]
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
