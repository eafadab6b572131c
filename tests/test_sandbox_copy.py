"""Copy mode's way back (`build --engine-b-copy`): /out from an engine's archive, modes and
numeric owners exact (setuid included: the outputs are compared with run a's), and nothing
written outside /out. The archive is what `GET /containers/…/archive?path=/out` returns; the
engine standing in here only hands it over (the real engine: test_engine_b)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebuild.build.sandbox import _copy_out
from rebuild.errors import BuildFailed


class ArchiveOf:
    """An engine whose finished container "c" has /out as `members` (name, data or None for
    a directory, mode, uid, symlink target)."""

    def __init__(self, members: list[tuple[str, bytes | None, int, int, str | None]]) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data, mode, uid, link in members:
                info = tarfile.TarInfo(name)
                info.mode, info.uid, info.gid = mode, uid, uid
                if link is not None:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                    tar.addfile(info)
                elif data is None:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        self.data = buffer.getvalue()

    def get_archive(self, container: str, path: str) -> Iterator[bytes]:
        assert (container, path) == ("c", "/out")
        return iter([self.data[:1000], self.data[1000:]])


def test_out_comes_back_with_its_modes_and_owners(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    engine = ArchiveOf([("out", None, 0o755, 0, None),
                           ("out/bin", None, 0o750, 1234, None),
                           ("out/bin/tool", b"#!/bin/sh\n", 0o4755, 1234, None),
                           ("out/shared", b"x", 0o666, 1234, None),
                           ("out/link", None, 0o777, 1234, "bin/tool")])
    _copy_out(engine, "c", out, tmp_path)  # type: ignore[arg-type]
    tool = (out / "bin" / "tool").stat()
    assert tool.st_mode & 0o7777 == 0o4755 and tool.st_uid == 1234
    assert (out / "shared").stat().st_mode & 0o7777 == 0o666
    assert (out / "bin").stat().st_mode & 0o7777 == 0o750
    assert (out / "link").readlink() == Path("bin/tool")
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("members", [
    [("etc/passwd", b"x", 0o644, 0, None)],
    [("out/../escape", b"x", 0o644, 0, None)],
    [("out/l", None, 0o777, 0, "/etc"), ("out/l/written", b"x", 0o644, 0, None)],
])
def test_nothing_lands_outside_out(tmp_path: Path,
                                   members: list[tuple[str, bytes | None, int, int, str | None]]
                                   ) -> None:
    out = tmp_path / "run" / "out"
    out.mkdir(parents=True)
    with pytest.raises(BuildFailed):
        _copy_out(ArchiveOf(members), "c", out, tmp_path / "run")  # type: ignore[arg-type]
    assert not (tmp_path / "run" / "escape").exists() and not Path("/etc/written").exists()
