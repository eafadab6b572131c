"""Pinned inputs without Docker: url, zip and git sources, archive safety, python locks,
wheels fetched once, and `rebuild lock` for python locks (issue "Pinned inputs, offline
builds"). Files and a package index are served by a counting HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from rebuild.errors import UsageError
from rebuild.inputs.fetch import hash_tree, parse_lock, scan_tree, unpack_archive
from tests.conftest import run_rebuild
from tests.inputs_support import (
    FileServer,
    file_server,
    git_repo,
    index_env,
    lock_line,
    make_tar,
    make_wheel,
    make_zip,
    write_recipe,
)

TARBALL = [("pkg-1.0/", "dir", ""), ("pkg-1.0/hello.txt", "file", "hello\n"),
           ("pkg-1.0/bin/run.sh", "exec", "#!/bin/sh\necho run\n"),
           ("pkg-1.0/link", "link", "hello.txt")]


def blobs(store: Path) -> set[str]:
    directory = store / "blobs" / "sha256"
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


@pytest.fixture
def server() -> FileServer:
    with file_server() as s:
        yield s  # type: ignore[misc]


# -- url sources ------------------------------------------------------------------------------


def test_url_whose_bytes_changed_exits_2_and_stores_nothing(server: FileServer, tmp_path: Path,
                                                            store: Path) -> None:
    pinned = make_tar(TARBALL)
    server.files["/pkg-1.0.tar.gz"] = make_tar([*TARBALL, ("pkg-1.0/extra", "file", "x")])
    actual = hashlib.sha256(server.files["/pkg-1.0.tar.gz"]).hexdigest()
    expected = hashlib.sha256(pinned).hexdigest()
    recipe = write_recipe(tmp_path / "t.toml", {"url": f"{server.url}/pkg-1.0.tar.gz",
                                                "sha256": expected})
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert f"expected {expected}" in result.stderr
    assert f"downloaded {actual}" in result.stderr
    assert "nothing was stored" in result.stderr
    assert blobs(store) == set()
    assert server.requests == ["/pkg-1.0.tar.gz"]


def test_url_fetch_is_incremental(server: FileServer, tmp_path: Path, store: Path) -> None:
    data = make_tar(TARBALL)
    server.files["/pkg-1.0.tar.gz"] = data
    recipe = write_recipe(tmp_path / "t.toml", {"url": f"{server.url}/pkg-1.0.tar.gz",
                                                "sha256": hashlib.sha256(data).hexdigest()})
    first = run_rebuild("fetch", recipe, "--json", store=store)
    assert first.code == 0, first.stderr
    assert len(server.requests) == 1
    [report] = first.json["recipes"]
    assert report["source"]["downloaded"] is True
    assert report["source"]["fetched"] == "sha256:" + hashlib.sha256(data).hexdigest()
    before = blobs(store)

    second = run_rebuild("fetch", recipe, "--json", store=store)
    assert second.code == 0, second.stderr
    assert len(server.requests) == 1, "the second fetch made a request"
    [again] = second.json["recipes"]
    assert again["downloaded"] == [] and again["source"]["downloaded"] is False
    assert again["source"]["tree"] == report["source"]["tree"]
    assert again["source"]["archive"] == report["source"]["archive"]
    assert blobs(store) == before


def test_url_archive_is_stripped_and_pinned_by_lock(server: FileServer, tmp_path: Path,
                                                    store: Path) -> None:
    data = make_tar(TARBALL, "w:xz")
    server.files["/pkg-1.0.tar.xz"] = data
    recipe = write_recipe(tmp_path / "t.toml", {"url": f"{server.url}/pkg-1.0.tar.xz",
                                                "sha256": hashlib.sha256(data).hexdigest()})
    locked = run_rebuild("lock", recipe, "--json", store=store)
    assert locked.code == 0, locked.stderr
    pinned = locked.json["recipes"][0]["changed"]["source.digest"]["new"]
    assert f'digest = "{pinned}"' in recipe.read_text()
    # the tree is the archive's content without its top-level directory
    expected = tmp_path / "expected"
    (expected / "bin").mkdir(parents=True)
    (expected / "hello.txt").write_text("hello\n")
    (expected / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (expected / "bin" / "run.sh").chmod(0o755)
    (expected / "link").symlink_to("hello.txt")
    assert pinned == hash_tree(scan_tree(expected))
    fetched = run_rebuild("fetch", recipe, "--json", store=store)
    assert fetched.code == 0, fetched.stderr
    assert fetched.json["recipes"][0]["source"]["tree"] == pinned
    assert len(server.requests) == 1  # lock stored the download; fetch found it
    relock = run_rebuild("lock", recipe, "--json", store=store)
    assert relock.json["recipes"][0]["changed"] == {}


def test_zip_source_is_unpacked(server: FileServer, tmp_path: Path, store: Path) -> None:
    data = make_zip([("pkg/", "dir", ""), ("pkg/hello.txt", "file", "hello\n"),
                     ("pkg/run.sh", "exec", "#!/bin/sh\n")])
    server.files["/pkg.zip"] = data
    recipe = write_recipe(tmp_path / "t.toml", {"url": f"{server.url}/pkg.zip",
                                                "sha256": hashlib.sha256(data).hexdigest()})
    result = run_rebuild("fetch", recipe, "--json", store=store)
    assert result.code == 0, result.stderr
    expected = tmp_path / "expected"
    expected.mkdir()
    (expected / "hello.txt").write_text("hello\n")
    (expected / "run.sh").write_text("#!/bin/sh\n")
    (expected / "run.sh").chmod(0o755)
    assert result.json["recipes"][0]["source"]["tree"] == hash_tree(scan_tree(expected))


def test_a_plain_file_is_placed_under_its_own_name(server: FileServer, tmp_path: Path,
                                                   store: Path) -> None:
    server.files["/tool-2.0.bin"] = b"\x7fELF not really"
    recipe = write_recipe(tmp_path / "t.toml", {
        "url": f"{server.url}/tool-2.0.bin?download=1",
        "sha256": hashlib.sha256(b"\x7fELF not really").hexdigest()})
    result = run_rebuild("fetch", recipe, "--json", store=store)
    assert result.code == 0, result.stderr
    expected = tmp_path / "expected"
    expected.mkdir()
    (expected / "tool-2.0.bin").write_bytes(b"\x7fELF not really")
    assert result.json["recipes"][0]["source"]["tree"] == hash_tree(scan_tree(expected))


def test_archive_with_dotdot_member_is_refused(server: FileServer, tmp_path: Path,
                                               store: Path) -> None:
    data = make_tar([("pkg/ok", "file", "ok"), ("pkg/../../evil", "file", "evil")])
    server.files["/evil.tgz"] = data
    recipe = write_recipe(tmp_path / "t.toml", {"url": f"{server.url}/evil.tgz",
                                                "sha256": hashlib.sha256(data).hexdigest()})
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "contains '..'" in result.stderr and "escape" in result.stderr
    assert not (tmp_path / "evil").exists()


ESCAPES = {
    "absolute path": ([("/etc/evil", "file", "x")], "absolute path"),
    "dot-dot": ([("a/../../evil", "file", "x")], "contains '..'"),
    "absolute link": ([("p/ok", "file", "x"), ("p/l", "link", "/etc/passwd")],
                      "points outside"),
    "relative link outside": ([("p/ok", "file", "x"), ("p/d/l", "link", "../../x")],
                              "points outside"),
    "link to the stripped parent": ([("p/ok", "file", "x"), ("p/l", "link", "..")],
                                    "points outside"),
    "link chain": ([("p/ok", "file", "x"), ("p/a", "link", "."), ("p/d/b", "link", "../a/..")],
                   "resolves outside"),
    "write through a link": ([("p/ok", "file", "x"), ("p/l", "link", "."),
                              ("p/l/f", "file", "x")], "not a directory"),
    "hard link outside": ([("p/ok", "file", "x"), ("p/h", "hardlink", "/etc/passwd")],
                          "absolute path"),
    "hard link to nothing": ([("p/ok", "file", "x"), ("p/h", "hardlink", "p/nope")],
                             "does not name a file"),
    "duplicate": ([("p/ok", "file", "x"), ("p/ok", "file", "y")], "appears twice"),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(("kind", "case"), [
    (kind, case) for case, (members, _) in sorted(ESCAPES.items()) for kind in ("tar", "zip")
    if kind == "tar" or all(k != "hardlink" for _, k, _ in members)])  # zip: no hard links
def test_escaping_members_are_refused(kind: str, case: str, tmp_path: Path) -> None:
    members, message = ESCAPES[case]
    archive = tmp_path / f"a.{'zip' if kind == 'zip' else 'tar.gz'}"
    archive.write_bytes(make_zip(members) if kind == "zip" else make_tar(members))
    with pytest.raises(UsageError, match=message) as caught:
        unpack_archive(archive, archive.name, tmp_path / "tree", strip=True, where="r.toml")
    assert caught.value.exit_code == 2
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_hard_link_inside_is_a_copy(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.bz2"
    archive.write_bytes(make_tar([("p/f", "exec", "data"), ("p/h", "hardlink", "p/f")],
                                 "w:bz2"))
    unpack_archive(archive, archive.name, tmp_path / "tree", strip=True, where="r.toml")
    assert (tmp_path / "tree" / "h").read_text() == "data"
    assert os.access(tmp_path / "tree" / "h", os.X_OK)


def test_no_single_top_level_directory_is_kept_as_is(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    archive.write_bytes(make_tar([("a.txt", "file", "a"), ("b/c.txt", "file", "c")]))
    unpack_archive(archive, archive.name, tmp_path / "tree", strip=True, where="r.toml")
    assert sorted(p.relative_to(tmp_path / "tree").as_posix()
                  for p in (tmp_path / "tree").rglob("*")) == ["a.txt", "b", "b/c.txt"]


def test_not_an_archive_exits_2(server: FileServer, tmp_path: Path, store: Path) -> None:
    server.files["/broken.tar.gz"] = b"not gzip at all"
    recipe = write_recipe(tmp_path / "t.toml", {
        "url": f"{server.url}/broken.tar.gz",
        "sha256": hashlib.sha256(b"not gzip at all").hexdigest()})
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "not a valid archive" in result.stderr


def test_missing_url_exits_2(server: FileServer, tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "t.toml", {"url": f"{server.url}/gone.tar.gz",
                                                "sha256": "0" * 64})
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "404" in result.stderr


# -- git sources ------------------------------------------------------------------------------


def test_git_source_epoch_is_the_commit_time(tmp_path: Path, store: Path) -> None:
    rev = git_repo(tmp_path / "repo", {"a.txt": "a\n", "src/b.txt": "b\n"}, 1650000000)
    recipe = write_recipe(tmp_path / "t.toml", {"git": "repo", "rev": rev}, epoch="git")
    result = run_rebuild("fetch", recipe, "--json", store=store)
    assert result.code == 0, result.stderr
    [report] = result.json["recipes"]
    assert report["source_date_epoch"] == 1650000000
    assert report["source"]["uri"] == f"git+repo@{rev}"
    expected = tmp_path / "expected"
    (expected / "src").mkdir(parents=True)
    (expected / "a.txt").write_text("a\n")
    (expected / "src" / "b.txt").write_text("b\n")
    assert report["source"]["tree"] == hash_tree(scan_tree(expected))  # no .git, not stripped

    # remembered by commit id: a second fetch needs no repository at all
    shutil.rmtree(tmp_path / "repo")
    again = run_rebuild("fetch", recipe, "--json", store=store)
    assert again.code == 0, again.stderr
    assert again.json["recipes"][0]["source"] == {**report["source"], "downloaded": False}


def test_git_rev_that_is_not_40_hex_exits_2(tmp_path: Path, store: Path) -> None:
    git_repo(tmp_path / "repo", {"a.txt": "a\n"}, 1650000000)
    recipe = write_recipe(tmp_path / "t.toml", {"git": "repo", "rev": "main"}, epoch="git")
    for verb in ("fetch", "lock"):
        result = run_rebuild(verb, recipe, store=store)
        assert result.code == 2, result.stderr
        assert "40-hex commit" in result.stderr


def test_git_missing_commit_exits_2(tmp_path: Path, store: Path) -> None:
    git_repo(tmp_path / "repo", {"a.txt": "a\n"}, 1650000000)
    recipe = write_recipe(tmp_path / "t.toml", {"git": "repo", "rev": "1" * 40})
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "is not a commit of repo" in result.stderr


def test_lock_pins_a_git_source(tmp_path: Path, store: Path) -> None:
    rev = git_repo(tmp_path / "repo", {"a.txt": "a\n"}, 1650000000)
    recipe = write_recipe(tmp_path / "t.toml", {"git": "repo", "rev": rev}, epoch="git")
    assert run_rebuild("lock", recipe, store=store).code == 0
    assert 'digest = "sha256:' in recipe.read_text()
    assert run_rebuild("fetch", recipe, store=store).code == 0


# -- path sources -----------------------------------------------------------------------------


def test_path_source_changed_since_lock_exits_2(tmp_path: Path, store: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    recipe = write_recipe(tmp_path / "t.toml", {"path": "src"})
    assert run_rebuild("lock", recipe, store=store).code == 0
    assert run_rebuild("fetch", recipe, store=store).code == 0
    (tmp_path / "src" / "main.c").write_text("int main(void) { return 1; }\n")
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "source changed since lock" in result.stderr
    assert "rebuild lock" in result.stderr


# -- python locks and wheels ------------------------------------------------------------------


def test_parse_lock_reads_pip_compile_output() -> None:
    text = ("# rebuild: in-sha256=abc\n"
            + lock_line("Flit_Core", "3.9.0", "a" * 64, "b" * 64)
            + "    # via -r x.in\n\n"
            + "six==1.16.0 --hash=sha256:" + "c" * 64 + '  ; python_version >= "3"\n')
    flit, six = parse_lock(text, source="x.lock.txt")
    assert (flit.name, flit.version, flit.hashes, flit.line) == (
        "flit-core", "3.9.0", frozenset({"a" * 64, "b" * 64}), 2)
    assert six.has_marker and six.line == 7


@pytest.mark.parametrize(("text", "message"), [
    ("demo-pkg==1.0\n", "line 1: 'demo-pkg==1.0' has no --hash=sha256"),
    ("demo-pkg>=1.0 --hash=sha256:" + "a" * 64 + "\n", "not pinned as name==version"),
    ("--index-url https://example.invalid/simple\n", "options are not allowed"),
    ("-e ./src\n", "options are not allowed"),
    ("demo-pkg==1.0 --hash=md5:abc\n", "only sha256"),
    (lock_line("a", "1", "a" * 64) + lock_line("A", "2", "b" * 64), "listed twice"),
])
def test_bad_lock_lines_exit_2(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_lock(text, source="x.lock.txt")


def test_lock_line_without_hash_exits_2(tmp_path: Path, store: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "t.lock.txt").write_text(
        lock_line("six", "1.16.0", "a" * 64) + "demo-pkg==1.0\n    # via -r t.in\n")
    recipe = write_recipe(tmp_path / "t.toml", {"path": "src"}, python_lock="t.lock.txt")
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "t.lock.txt: line 3: 'demo-pkg==1.0' has no --hash=sha256" in result.stderr


def python_recipe(tmp_path: Path, server: FileServer, *, lock: str | None = None,
                  requirements: str = "demo-pkg\n") -> Path:
    """A path-source recipe whose python lock lists the demo wheel of the test index."""
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "py.in").write_text(requirements)
    if lock is not None:
        (tmp_path / "py.lock.txt").write_text(lock)
    return write_recipe(tmp_path / "t.toml", {"path": "src"}, python_lock="py.lock.txt")


def test_wheel_fetch_is_incremental(server: FileServer, tmp_path: Path, store: Path) -> None:
    sha = server.add_wheel(make_wheel(tmp_path / "dist"))
    recipe = python_recipe(tmp_path, server, lock=lock_line("demo-pkg", "1.0", sha))
    env = index_env(server, tmp_path)
    first = run_rebuild("fetch", recipe, "--json", store=store, env=env)
    assert first.code == 0, first.stderr
    [report] = first.json["recipes"]
    assert report["wheels"] == [{"name": "demo-pkg", "version": "1.0",
                                 "filename": "demo_pkg-1.0-py3-none-any.whl", "sha256": sha,
                                 "blob": f"sha256:{sha}", "downloaded": True}]
    assert report["python_lock"] == "sha256:" + hashlib.sha256(
        (tmp_path / "py.lock.txt").read_bytes()).hexdigest()
    assert "/files/demo_pkg-1.0-py3-none-any.whl" in server.requests
    seen = len(server.requests)

    second = run_rebuild("fetch", recipe, "--json", store=store, env=env)
    assert second.code == 0, second.stderr
    assert len(server.requests) == seen, "the second fetch made requests"
    assert second.json["recipes"][0]["downloaded"] == []
    assert second.json["recipes"][0]["wheels"][0]["downloaded"] is False

    # another lock naming the same wheel finds it in the store by its hash
    (tmp_path / "py.lock.txt").write_text("# another lock\n" + lock_line("demo-pkg", "1.0", sha))
    third = run_rebuild("fetch", recipe, "--json", store=store, env=env)
    assert third.code == 0, third.stderr
    assert len(server.requests) == seen
    assert third.json["recipes"][0]["wheels"][0]["blob"] == f"sha256:{sha}"


def test_wheel_not_matching_the_lock_exits_2(server: FileServer, tmp_path: Path,
                                             store: Path) -> None:
    sha = server.add_wheel(make_wheel(tmp_path / "dist"))
    recipe = python_recipe(tmp_path, server, lock=lock_line("demo-pkg", "1.0", "e" * 64))
    result = run_rebuild("fetch", recipe, store=store, env=index_env(server, tmp_path))
    assert result.code == 2, result.stderr
    assert "does not match the lock's hashes" in result.stderr
    assert sha not in blobs(store)


def test_gc_keeps_fetched_wheels(server: FileServer, tmp_path: Path, store: Path) -> None:
    sha = server.add_wheel(make_wheel(tmp_path / "dist"))
    recipe = python_recipe(tmp_path, server, lock=lock_line("demo-pkg", "1.0", sha))
    assert run_rebuild("fetch", recipe, store=store, env=index_env(server, tmp_path)).code == 0
    old = time.time() - 7 * 86400
    for blob in (store / "blobs" / "sha256").iterdir():
        os.utime(blob, (old, old))
    assert run_rebuild("store", "gc", store=store).code == 0
    lock_blob = hashlib.sha256((tmp_path / "py.lock.txt").read_bytes()).hexdigest()
    assert {sha, lock_blob} <= blobs(store)


def test_lock_compiles_a_stable_lock_without_local_paths(server: FileServer, tmp_path: Path,
                                                         store: Path) -> None:
    sha = server.add_wheel(make_wheel(tmp_path / "dist"))
    recipe = python_recipe(tmp_path, server)
    env = index_env(server, tmp_path)
    first = run_rebuild("lock", recipe, "--json", store=store, env=env)
    assert first.code == 0, first.stderr
    assert "python_lock" in first.json["recipes"][0]["changed"]
    lock = tmp_path / "py.lock.txt"
    text = lock.read_text()
    in_sha = hashlib.sha256(b"demo-pkg\n").hexdigest()
    assert text.startswith(f"# rebuild: in-sha256={in_sha}\n")
    assert lock.stat().st_mode & 0o777 == 0o644
    assert f"demo-pkg==1.0 \\\n    --hash=sha256:{sha}" in text
    for forbidden in (server.url, "127.0.0.1", "://", "file:", str(tmp_path), "/opt/",
                      "--index-url", "--extra-index-url", "--find-links", "--trusted-host"):
        assert forbidden not in text, forbidden
    assert [r.name for r in parse_lock(text)] == ["demo-pkg"]

    requests, stat = len(server.requests), lock.stat()
    second = run_rebuild("lock", recipe, "--json", store=store, env=env)
    assert second.code == 0, second.stderr
    assert second.json["recipes"][0]["changed"] == {}
    assert "already locked" in second.stderr
    assert lock.read_text() == text and lock.stat().st_mtime_ns == stat.st_mtime_ns
    assert len(server.requests) == requests  # not recompiled

    # the locked recipe fetches
    fetched = run_rebuild("fetch", recipe, "--json", store=store, env=env)
    assert fetched.code == 0, fetched.stderr
    assert [w["sha256"] for w in fetched.json["recipes"][0]["wheels"]] == [sha]

    # a changed .in recompiles
    (tmp_path / "py.in").write_text("demo-pkg==1.0\n")
    third = run_rebuild("lock", recipe, "--json", store=store, env=env)
    assert third.code == 0, third.stderr
    assert lock.read_text() != text


def test_lock_names_a_python_lock_by_its_in_file(tmp_path: Path, store: Path) -> None:
    (tmp_path / "src").mkdir()
    recipe = write_recipe(tmp_path / "t.toml", {"path": "src"}, python_lock="py.lock.txt")
    result = run_rebuild("lock", recipe, store=store)
    assert result.code == 2
    assert "py.in" in result.stderr
    bad = write_recipe(tmp_path / "u.toml", {"path": "src"}, python_lock="requirements.txt")
    result = run_rebuild("lock", bad, store=store)
    assert result.code == 2
    assert "NAME.lock.txt" in result.stderr


def test_fetch_json_lists_inputs(tmp_path: Path, store: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("f")
    recipe = write_recipe(tmp_path / "t.toml", {"path": "src"})
    result = run_rebuild("fetch", recipe, "--json", store=store)
    assert result.code == 0, result.stderr
    [report] = result.json["recipes"]
    assert report["source"]["kind"] == "path" and report["source"]["downloaded"] is False
    assert report["python_lock"] is None and report["wheels"] == []
    assert json.loads(result.stdout)["store"] == str(store)
