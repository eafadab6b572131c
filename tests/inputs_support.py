"""Helpers for the tests of pinned inputs: a counting HTTP server on 127.0.0.1, a PEP 503
package index served by it, hand-made wheels, archives, git repositories and recipes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAKE_IMAGE = "rebuild/none:test@sha256:" + "0" * 64


class FileServer:
    """Serves `files` (URL path -> bytes) and records every request's path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                data = server.files.get(self.path.split("?", 1)[0])
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                kind = "text/html" if self.path.endswith("/") else "application/octet-stream"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add_wheel(self, wheel: Path) -> str:
        """Publish a wheel in the index at /simple/; returns its sha256."""
        data = wheel.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        project = wheel.name.split("-")[0].replace("_", "-").lower()
        self.files[f"/files/{wheel.name}"] = data
        self.files[f"/simple/{project}/"] = (
            f'<!DOCTYPE html><html><body><a href="/files/{wheel.name}#sha256={digest}">'
            f"{wheel.name}</a></body></html>").encode()
        return digest


@contextmanager
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def index_env(server: FileServer, tmp_path: Path) -> dict[str, str]:
    """pip (and pip-compile) see only the test's index: no config, no find-links, no cache."""
    empty = tmp_path / "no-find-links"
    empty.mkdir(exist_ok=True)
    return {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": f"{server.url}/simple/",
            "PIP_FIND_LINKS": str(empty), "PIP_NO_CACHE_DIR": "1",
            "PIP_EXTRA_INDEX_URL": "", "PIP_CONSTRAINT": ""}


def make_wheel(dest: Path, name: str = "demo_pkg", version: str = "1.0",
               body: str = 'VALUE = "demo"\n') -> Path:
    """A minimal, valid pure-Python wheel (PEP 427), with a correct RECORD."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": body.encode(),
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\n"
                             f"Version: {version}\n").encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: rebuild-tests\n"
                         b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip('=')}"
        f",{len(data)}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(zipfile.ZipInfo(member, (2020, 1, 1, 0, 0, 0)), data)
    return path


def lock_line(name: str, version: str, *hashes: str) -> str:
    return f"{name}=={version}" + "".join(f" \\\n    --hash=sha256:{h}" for h in hashes) + "\n"


def make_tar(members: list[tuple[str, str, bytes | str]], mode: str = "w:gz") -> bytes:
    """A tar archive: (name, kind "file"/"exec"/"dir"/"link"/"hardlink", content or target)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:  # type: ignore[call-overload]
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1600000000
            if kind in ("file", "exec"):
                data = value if isinstance(value, bytes) else value.encode()
                info.size, info.mode = len(data), 0o755 if kind == "exec" else 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, str(value)
            else:
                info.type, info.linkname = tarfile.LNKTYPE, str(value)
            tar.addfile(info)
    return out.getvalue()


def make_zip(members: list[tuple[str, str, bytes | str]]) -> bytes:
    """A zip archive: (name, kind "file"/"exec"/"dir"/"link", content or target)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, kind, value in members:
            info = zipfile.ZipInfo(name + ("/" if kind == "dir" else ""), (2020, 1, 1, 0, 0, 0))
            mode = {"file": 0o100644, "exec": 0o100755, "dir": 0o040755, "link": 0o120777}[kind]
            info.external_attr = mode << 16
            archive.writestr(info, b"" if kind == "dir" else value)
    return out.getvalue()


def git_repo(path: Path, files: dict[str, str], commit_time: int) -> str:
    """A local git repository with one commit at `commit_time`; returns the commit id."""
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_AUTHOR_DATE": f"@{commit_time} +0000",
           "GIT_COMMITTER_DATE": f"@{commit_time} +0000", "PATH": "/usr/bin:/bin",
           "HOME": str(path.parent)}
    path.mkdir(parents=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    return git("rev-parse", "HEAD")


def write_recipe(path: Path, source: dict[str, str], script: str = "true", *,
                 image: str = FAKE_IMAGE, outputs: tuple[str, ...] = ("r",),
                 epoch: int | str = 1700000000, python_lock: str | None = None,
                 vary: tuple[str, ...] = ("all",), name: str = "t",
                 npm_lock: str | None = None) -> Path:
    """A recipe with any kind of source; `image` is a fake pin unless a test builds."""
    lines = [f'[recipe]\nname = "{name}"\nversion = "1.0.0"\n\n[source]']
    lines += [f"{key} = {json.dumps(value)}" for key, value in source.items()]
    lines += ["", "[environment]", f"image = {json.dumps(image)}",
              f"source_date_epoch = {json.dumps(epoch)}"]
    if python_lock is not None:
        lines.append(f"python_lock = {json.dumps(python_lock)}")
    if npm_lock is not None:
        lines.append(f"npm_lock = {json.dumps(npm_lock)}")
    lines += ["", "[build]", f"command = {json.dumps(['sh', '-c', script])}",
              f"outputs = {json.dumps(list(outputs))}", "timeout = 300", 'memory = "1g"', "",
              "[check]", f"vary = {json.dumps(list(vary))}", ""]
    path.write_text("\n".join(lines))
    return path
