"""Limits: the recipe's [limits], bounded logs, output count and size, diffoscope's memory and
its byte-level fallback (README, "Limits"). Real files, a real diffoscope; no Docker."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rebuild.build.compare import (
    Difference,
    byte_report,
    collect_outputs,
    diff_reports,
    keep_outputs,
)
from rebuild.build.limits import DEFAULT, HeadTail, Limits, parse_size, show_size
from rebuild.build.recipe import parse_recipe
from rebuild.errors import BuildFailed, ExitCode, UsageError
from rebuild.store.layout import sha256_file
from tests.conftest import Result, run_rebuild
from tests.inputs_support import write_recipe

RECIPE = {
    "recipe": {"name": "x", "version": "1"},
    "source": {"path": "."},
    "environment": {"image": "r/i:t@sha256:" + "0" * 64, "source_date_epoch": 1},
    "build": {"command": ["true"], "outputs": ["*"]},
}


def test_sizes_parse_and_show() -> None:
    assert parse_size("512m", what="x") == 512 << 20
    assert parse_size(" 8G ", what="x") == 8 << 30
    assert parse_size(1000, what="x") == 1000
    for bad in ("0", "-1", "1.5g", "lots", True, 0, None):
        with pytest.raises(UsageError):
            parse_size(bad, what="x")
    assert show_size(64 << 20) == "64m"
    assert show_size(1000) == "1000"


def test_recipe_limits_override_the_defaults() -> None:
    recipe = parse_recipe({**RECIPE, "limits": {"max_outputs": 3, "max_log_size": "1m"}})
    assert recipe.bounds == Limits(max_outputs=3, max_log_size=1 << 20)
    assert parse_recipe(RECIPE).bounds == DEFAULT


def test_a_recipe_without_limits_is_recorded_as_before() -> None:
    assert "limits" not in parse_recipe(RECIPE).model_dump(mode="json")
    dumped = parse_recipe({**RECIPE, "limits": {"max_log_size": "1m"}}).model_dump(mode="json")
    assert dumped["limits"]["max_log_size"] == 1 << 20


@pytest.mark.parametrize(("limits", "message"), [
    ({"max_log_size": "1x"}, "limits.max_log_size: '1x' is not a size"),
    ({"max_output": 3}, "unknown key 'limits.max_output'; did you mean 'max_outputs'?"),
    ({"download_timeout": 0}, "limits.download_timeout"),
])
def test_bad_limits_exit_2_naming_the_key(limits: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_recipe({**RECIPE, "limits": limits})
    assert message in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("limit", [1, 2, 7, 100, 4096])
def test_head_tail_keeps_both_ends_and_says_what_it_cut(limit: int) -> None:
    rng = random.Random(limit)
    for _ in range(40):
        data = rng.randbytes(rng.randrange(3 * limit + 10))
        kept = HeadTail(limit)
        i = 0
        while i < len(data):
            step = rng.randrange(1, 2 * limit + 2)
            kept.add(data[i:i + step])
            i += step
        value = kept.value()
        if len(data) <= limit:
            assert value == data
        else:
            assert value.startswith(data[:limit // 2])
            assert value.endswith(data[len(data) - (limit - limit // 2):])
            cut = len(data) - limit
            assert f"[rebuild: {cut} bytes of {len(data)} left out here: [limits] " \
                   "max_log_size is" in value.decode(errors="replace")


def test_head_tail_memory_stays_bounded() -> None:
    kept = HeadTail(1 << 20)
    chunk = b"x" * 65536
    for _ in range(4096):  # 256 MiB through a 1 MiB window
        kept.add(chunk)
        assert len(kept.head) + kept.tail_size <= (1 << 20) + len(chunk)
    assert len(kept.value()) < (1 << 20) + 200


def write_files(root: Path, count: int, size: int = 10) -> None:
    for i in range(count):
        (root / f"f{i:03d}").write_bytes(b"x" * size)


def test_outputs_over_the_count_limit_exit_4_naming_it(tmp_path: Path) -> None:
    write_files(tmp_path, 11)
    assert len(collect_outputs(tmp_path, ["*"], "a", Limits(max_outputs=11))) == 11
    with pytest.raises(BuildFailed) as caught:
        collect_outputs(tmp_path, ["*"], "a", Limits(max_outputs=10))
    assert "more than 10 declared outputs (limit [limits] max_outputs)" in str(caught.value)
    assert caught.value.exit_code == ExitCode.BUILD


def test_outputs_over_the_size_limit_exit_4_naming_it(tmp_path: Path) -> None:
    write_files(tmp_path, 4, size=1024)
    (tmp_path / "unmatched").write_bytes(b"y" * 8192)  # not an output: not counted
    assert len(collect_outputs(tmp_path, ["f*"], "a", Limits(max_output_size=4096))) == 4
    with pytest.raises(BuildFailed) as caught:
        collect_outputs(tmp_path, ["f*"], "b", Limits(max_output_size=4095))
    assert "run b's declared outputs are over 4095 in all (limit [limits] max_output_size" \
        in str(caught.value)


def test_a_sparse_output_counts_its_apparent_size(tmp_path: Path) -> None:
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(1 << 30)  # a 1 GiB hole: no block on disk
    with pytest.raises(BuildFailed, match="max_output_size"):
        collect_outputs(tmp_path, ["sparse"], "a", Limits(max_output_size=1 << 29))


def test_byte_report_finds_every_differing_run(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = rng.randbytes(3 << 20)
    changed = bytearray(data)
    for offset in (5, 4097, 2 << 20, (2 << 20) + 1):
        changed[offset] ^= 0xFF
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(data)
    b.write_bytes(bytes(changed) + b"tail")
    report = byte_report(a, b)
    assert f"a is {len(data)} bytes, sha256:{hashlib.sha256(data).hexdigest()}" in report
    assert f"b is {len(data) + 4} bytes" in report
    assert "from offset 5 (0x5) to 8192" in report  # two adjacent blocks: one run
    assert f"from offset {2 << 20} " in report
    assert f"from offset {len(data)} " in report  # b is longer
    assert "4 block(s) of 4096 bytes differ" in report


@pytest.mark.skipif(shutil.which("diffoscope") is None, reason="diffoscope is not installed")
def test_diffoscope_over_its_memory_limit_falls_back_to_bytes(tmp_path: Path) -> None:
    # 64 MiB of random bytes: diffoscope's hexdump of it does not fit in 160 MiB of
    # address space (it does in the default); the report says so, and where the bytes differ.
    rng = random.Random(1)
    data = bytearray(rng.randbytes(64 << 20))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "big").write_bytes(data)
    data[40 << 20] ^= 1
    (tmp_path / "b" / "big").write_bytes(data)
    (a,), (b,) = (collect_outputs(tmp_path / r, ["big"], r) for r in ("a", "b"))
    reports = diff_reports(Difference("big", a, b), memory=160 << 20)
    text = reports.text.decode()
    assert "diffoscope stopped at its memory limit, [limits] diffoscope_memory = 160m" in text
    assert f"from offset {40 << 20} " in text
    assert "byte comparison" in reports.json.decode()


def test_prlimit_bounds_what_diffoscope_can_allocate() -> None:
    # The mechanism itself: under prlimit --as, a process cannot grow past the limit.
    prlimit = shutil.which("prlimit")
    assert prlimit is not None
    grow = "bytearray(512 << 20)"
    result = subprocess.run([prlimit, f"--as={256 << 20}", "--", "python3", "-c", grow],
                            capture_output=True, text=True, check=False,
                            env={"PATH": os.environ["PATH"]})
    assert result.returncode != 0 and "MemoryError" in result.stderr


# -- bundles from anyone: `rebuild verify FILE` -----------------------------------------------

def gzip_bomb(path: Path, inflated: int) -> None:
    """A bundle-shaped gzip (the header `rebuild export` writes) of a tar of zeros."""
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="",
                                               compresslevel=9) as gz:
        info = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
        info.size = inflated
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(inflated >> 20):
            gz.write(zeros)


def verify_file(bundle: Path, tmp_path: Path, *args: str) -> tuple[Result, list[Path]]:
    """`rebuild verify FILE` with a temporary directory of its own; returns what it left
    (the shared parent of every process's runtime directory stays, empty)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    if not (tmp_path / "k.pub").exists():
        assert run_rebuild("keygen", "--out", tmp_path / "k").code == 0
    result = run_rebuild("verify", bundle, "--key", tmp_path / "k.pub", *args,
                         env={"TMPDIR": str(scratch)})
    return result, sorted(p for p in scratch.rglob("*") if p != scratch / "rebuild-runtime")


def test_a_gzip_bomb_bundle_stops_at_the_ratio_limit(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    gzip_bomb(bomb, 256 << 20)  # about 0.25 MB inflating to 256 MiB
    assert bomb.stat().st_size < 1 << 20
    result, left = verify_file(bomb, tmp_path)
    assert result.code == ExitCode.USAGE, result.stderr
    assert "limit --max-extract-ratio" in result.stderr
    assert "Traceback" not in result.stderr
    assert left == []  # nothing of the extraction is left behind


def test_a_bundle_over_the_size_limit_stops_before_writing(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    gzip_bomb(bomb, 64 << 20)
    result, left = verify_file(bomb, tmp_path, "--max-extract-size", "16m",
                               "--max-extract-ratio", "1000000")
    assert result.code == ExitCode.USAGE, result.stderr
    assert "more than 16m (limit --max-extract-size)" in result.stderr
    assert left == []
    result, _ = verify_file(bomb, tmp_path, "--max-extract-size", "lots")
    assert result.code == ExitCode.USAGE and "--max-extract-size: 'lots' is not a size" \
        in result.stderr


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
def test_a_sparse_member_is_refused_at_its_full_size(tmp_path: Path) -> None:
    # 20 GiB of hole in a tar of a few KiB: refused before a byte of it is written.
    member = tmp_path / "blobs" / "sha256" / ("0" * 64)
    member.parent.mkdir(parents=True)
    with member.open("wb") as f:
        f.truncate(20 << 30)
    bundle = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(bundle), "-C", str(tmp_path), "blobs"],
                   check=True)
    assert bundle.stat().st_size < 1 << 20
    result, left = verify_file(bundle, tmp_path)
    assert result.code == ExitCode.USAGE, result.stderr
    assert "limit --max-extract-ratio" in result.stderr
    assert left == []


# -- downloads: an endless server and one that trickles ---------------------------------------

class Endless(BaseHTTPRequestHandler):
    """/endless never stops sending; /trickle sends a byte every second, forever."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            while True:
                if self.path.startswith("/trickle"):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(1)
                else:
                    self.wfile.write(bytes(1 << 16))
        except OSError:  # the client hung up: what the test wants
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endless() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def fetch_with_limits(tmp_path: Path, url: str, limits: str) -> tuple[Result, Path]:
    recipe = write_recipe(tmp_path / "t.toml", {"url": url, "sha256": "0" * 64})
    recipe.write_text(recipe.read_text() + f"\n[limits]\n{limits}\n")
    store = tmp_path / "store"
    return run_rebuild("fetch", recipe, store=store, timeout=120), store


def stored_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file() and p.name not in ("oci-layout",
                                                                          "index.json")]


def test_an_endless_download_stops_at_the_size_limit(tmp_path: Path, endless: str) -> None:
    started = time.monotonic()
    result, store = fetch_with_limits(tmp_path, f"{endless}/endless/pkg.tar.gz",
                                      'max_download_size = "8m"')
    assert result.code == ExitCode.USAGE, result.stderr
    assert "is over 8m" in result.stderr and "limit [limits] max_download_size" in result.stderr
    assert "nothing was stored" in result.stderr and "Traceback" not in result.stderr
    assert stored_files(store) == []
    assert time.monotonic() - started < 60


def test_a_trickling_download_stops_at_the_time_limit(tmp_path: Path, endless: str) -> None:
    # A byte a second never trips a per-read timeout; the whole download's limit stops it.
    started = time.monotonic()
    result, store = fetch_with_limits(tmp_path, f"{endless}/trickle/pkg.tar.gz",
                                      "download_timeout = 3")
    assert result.code == ExitCode.ENVIRONMENT, result.stderr
    assert "took over 3 s" in result.stderr and "limit [limits] download_timeout" \
        in result.stderr
    assert stored_files(store) == []
    assert time.monotonic() - started < 30


def test_kept_outputs_stay_sparse(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    sparse = out / "disk.img"
    with sparse.open("wb") as f:
        f.seek(1 << 20)
        f.write(b"data")
        f.truncate(1 << 30)  # 1 GiB apparent, a few KiB on disk
    (out / "link").symlink_to("disk.img")
    keep_outputs({"a": out}, tmp_path / "keep")
    kept = tmp_path / "keep" / "a" / "disk.img"
    assert kept.stat().st_size == 1 << 30
    assert kept.stat().st_blocks * 512 < 1 << 20
    assert sha256_file(kept) == sha256_file(sparse)
    assert (tmp_path / "keep" / "a" / "link").readlink() == Path("disk.img")

