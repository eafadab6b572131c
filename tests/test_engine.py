"""The Engine API client against a stand-in engine on a unix socket: the API version it
speaks, the framing of a container's log, errors and timeouts. The real engine is what every
build test runs on (tests/integration)."""

from __future__ import annotations

import http.server
import json
import re
import socketserver
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from rebuild.build.engine import APIError, Engine, NotFound, ReadTimeout, Unreachable
from rebuild.errors import EnvironmentProblem
from tests.conftest import serving
from tests.registry_support import cli_certs

LOG = [(1, b"hello "), (2, b"warning\n"), (1, b"x" * 70000), (1, b"done\n")]


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the wait that timed out: its client is gone when the answer comes


class StandIn(http.server.BaseHTTPRequestHandler):
    """Answers like Engine 20.10 where the client needs it; records what it was asked."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []
    hold: ClassVar[threading.Event] = threading.Event()

    def log_message(self, *_: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"

    def _answer(self, status: int, body: bytes, *, chunked: bool = False,
                headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if chunked:  # in pieces that cut through the log's frames
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 7):
                piece = body[start:start + 7]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self) -> None:
        StandIn.seen.append(f"GET {self.path}")
        if self.path == "/_ping":
            self._answer(200, b"OK", headers={"Api-Version": "1.40"})
        elif self.path.startswith("/v1.40/containers/c1/logs"):
            frames = b"".join(bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data
                              for stream, data in LOG)
            self._answer(200, frames, chunked=True)
        elif self.path.startswith("/v1.40/images/"):
            self._answer(404, b'{"message": "No such image: sha256:ab"}')
        else:
            self._answer(500, b'{"message": "something broke"}')

    def do_POST(self) -> None:
        StandIn.seen.append(f"POST {self.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1.40/containers/create":
            assert json.loads(body)["HostConfig"]["NetworkMode"] == "none"
            self._answer(201, b'{"Id": "c1", "Warnings": []}')
        elif self.path == "/v1.40/containers/c1/wait":
            StandIn.hold.wait(5)
            self._answer(200, b'{"StatusCode": 3}')
        else:
            self._answer(204, b"")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    socket_path = tmp_path / "docker.sock"
    StandIn.seen, StandIn.hold = [], threading.Event()
    with serving(UnixHTTPServer(str(socket_path), StandIn)):
        client = Engine(f"unix://{socket_path}")
        client.ping()
        yield client
        StandIn.hold.set()


def test_an_older_engine_is_spoken_to_in_its_own_api_version(engine: Engine) -> None:
    assert engine.create({"Image": "i", "HostConfig": {"NetworkMode": "none"}}) == "c1"
    engine.start("c1")
    assert StandIn.seen == ["GET /_ping", "POST /v1.40/containers/create",
                            "POST /v1.40/containers/c1/start"]


def test_a_log_comes_back_whole_from_frames_cut_anywhere(engine: Engine) -> None:
    assert b"".join(engine.logs("c1")) == b"".join(data for _, data in LOG)


def test_errors_carry_the_engines_message(engine: Engine) -> None:
    assert engine.image_id("sha256:ab") is None  # a 404 is an answer: no such image
    with pytest.raises(APIError) as refused:
        engine.info()
    assert not isinstance(refused.value, NotFound)
    assert (refused.value.status, refused.value.message) == (500, "something broke")


def test_a_wait_past_its_timeout_is_a_read_timeout(engine: Engine) -> None:
    with pytest.raises(ReadTimeout):
        engine.wait("c1", timeout=0.3)
    StandIn.hold.set()
    assert engine.wait("c1", timeout=5) == 3


def test_no_engine_and_an_unknown_address_are_unreachable(tmp_path: Path) -> None:
    with pytest.raises(Unreachable, match="FileNotFoundError"):
        Engine(f"unix://{tmp_path}/missing.sock").ping()
    with pytest.raises(Unreachable, match=re.escape("unix:///path/docker.sock or tcp://host:port")):
        Engine("ssh://builder")


def test_a_tcp_engine_is_reached_over_tls_with_the_cli_s_certificates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as the docker CLI reads them: the engine's
    CA, and a client certificate the engine requires."""
    certs = cli_certs(tmp_path / "certs")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    StandIn.seen = []
    with serving(server):
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", str(certs))
        Engine(address).ping()
        assert StandIn.seen == ["GET /_ping"]
        monkeypatch.setenv("DOCKER_CERT_PATH", str(cli_certs(tmp_path / "other")))
        with pytest.raises(Unreachable):  # another CA's certificates: no side trusts the other
            Engine(address).ping()
        monkeypatch.delenv("DOCKER_TLS_VERIFY")
        with pytest.raises(Unreachable):  # plain HTTP to a TLS engine
            Engine(address).ping()
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / "none"))
    with pytest.raises(EnvironmentProblem, match="DOCKER_CERT_PATH"):  # exit 3, one line
        Engine(address)

