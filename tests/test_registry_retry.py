"""A registry's passing server error: a request that can be sent again is retried, a
lasting one still fails with the design's exit code (a stand-in server on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rebuild.errors import EnvironmentProblem
from rebuild.store.registry import SERVER_ERROR_RETRIES, Registry, parse_remote
from tests.conftest import serving

MANIFEST = b'{"schemaVersion":2}'


@contextmanager
def flaky_registry(failures: int) -> Iterator[tuple[Registry, list[str]]]:
    """A registry answering 500 to the first `failures` requests, then the manifest; with the
    paths it was asked for."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            if len(seen) <= failures:
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Content-Length", str(len(MANIFEST)))
            self.end_headers()
            self.wfile.write(MANIFEST)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with serving(server):
        yield Registry(parse_remote(f"oci+http://127.0.0.1:{server.server_address[1]}/t")), seen


def test_a_passing_server_error_is_retried() -> None:
    with flaky_registry(SERVER_ERROR_RETRIES) as (registry, seen):
        assert registry.get_manifest("t", "1.0.0") == (
            MANIFEST, "application/vnd.oci.image.manifest.v1+json")
    assert len(seen) == SERVER_ERROR_RETRIES + 1


def test_a_lasting_server_error_exits_3() -> None:
    with (flaky_registry(SERVER_ERROR_RETRIES + 1) as (registry, seen),
          pytest.raises(EnvironmentProblem, match="answered HTTP 500") as raised):
        registry.get_manifest("t", "1.0.0")
    assert raised.value.exit_code == 3
    assert len(seen) == SERVER_ERROR_RETRIES + 1
