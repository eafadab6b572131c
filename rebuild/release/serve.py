"""Serve: the dashboard's site over HTTP, read-only (`rebuild serve`).

The standard library's threading HTTP server over the site directory: GET and HEAD only
(anything else is 405), nothing outside the site (a path with `..`, percent-encoded or
not, or naming a hidden file such as the page cache, is 404), and before each request the
site is brought up to date when the store's index or audit log changed (a few `stat`s).
"""

from __future__ import annotations

import mimetypes
import posixpath
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rebuild.errors import RebuildError

TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8"}


class SiteFreshness:
    """Regenerates the site when the store's signature changed, once at a time."""

    def __init__(self, signature: Callable[[], str], regenerate: Callable[[], None]) -> None:
        self._signature = signature
        self._regenerate = regenerate
        self._seen: str | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        current = self._signature()
        if current == self._seen:
            return
        with self._lock:
            current = self._signature()
            if current != self._seen:
                self._regenerate()
                self._seen = current


def site_file(root: Path, url_path: str) -> Path | None:
    """The file a request path names inside the site, or None (404): `..` and hidden
    segments are refused before and after percent-decoding, and the resolved file must lie
    under the site's root."""
    raw = urlsplit(url_path).path
    decoded = unquote(raw)
    for path in (raw, decoded):
        if "\\" in path or "\0" in path or any(
                part in ("..", ".") or part.startswith(".")
                for part in path.split("/") if part):
            return None
    relative = posixpath.normpath(decoded).lstrip("/")
    candidate = root / relative if relative not in ("", ".") else root
    if candidate.is_dir():
        candidate = candidate / "index.html"
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
        return None
    return resolved


def make_server(root: Path, bind: str, port: int, freshness: SiteFreshness,
                log: Callable[[str], None]) -> ThreadingHTTPServer:
    """A server of `root` on (bind, port); `serve_forever` runs it."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "rebuild-dashboard"
        sys_version = ""

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _refuse(self) -> None:
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def __getattr__(self, name: str) -> Callable[[], None]:
            # http.server looks up `do_<METHOD>` and answers 501 when there is none: every
            # method but GET and HEAD gets 405 instead (read-only, and says what is allowed).
            if name.startswith("do_"):
                return self._refuse
            raise AttributeError(name)

        def _answer(self, body: bool) -> None:
            try:
                freshness.ensure()
            except (RebuildError, OSError) as exc:
                # The site as it was stays served; the reason is said once per request.
                log(f"error: the site could not be brought up to date: {exc}")
            found = site_file(root, self.path)
            if found is None:
                data = b"not found\n"
                self.send_response(HTTPStatus.NOT_FOUND)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
            else:
                data = found.read_bytes()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", TYPES.get(found.suffix) or
                                 mimetypes.guess_type(found.name)[0] or
                                 "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log(f"{self.address_string()} {format % args}")

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    return server
