"""The Docker Engine API over its socket: the dozen calls the sandbox makes, and no more.

Only rebuild.build.sandbox uses this module. The docker SDK does the same over requests and
urllib3, whose loading alone cost every build 70 ms before its first container; http.client
speaks HTTP/1.1 to a unix socket as well, streams request bodies from files and reads chunked
answers. Each call opens its own connection, so the runs' threads share nothing but the
`Engine`.

Addresses are DOCKER_HOST values: `unix:///path/docker.sock` or `tcp://host:port`; with
DOCKER_TLS_VERIFY set, a tcp engine is reached over TLS with the client certificate and CA of
DOCKER_CERT_PATH (default ~/.docker), as the docker CLI does. The API version is the engine's
own, capped at 1.41 (Engine 20.10), which every later engine still serves.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from rebuild.errors import EnvironmentProblem

DEFAULT_HOST = "unix:///var/run/docker.sock"
API_VERSION = (1, 41)
TIMEOUT = 60.0  # seconds without an answer on one call (a wait has the run's timeout)
LOAD_TIMEOUT = 600.0  # an image archive of hundreds of MB is unpacked before the answer
MAX_ANSWER = 64 * 1024 * 1024  # a JSON answer larger than this is refused
CHUNK = 1 << 16


class EngineError(Exception):
    """The engine could not be reached, or refused a call."""


class Unreachable(EngineError):
    """No connection, or it was cut: the engine is down or the address is wrong."""


class ReadTimeout(Unreachable):
    """The engine did not answer within the call's timeout."""


class APIError(EngineError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class NotFound(APIError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Engine:
    """A Docker engine at a DOCKER_HOST address (None: $DOCKER_HOST, else the local socket)."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        url = urlsplit(self.host)
        self._path: str | None = None
        self._address = ("", 0)
        self._tls: ssl.SSLContext | None = None
        if url.scheme == "unix":
            self._path = url.path
        elif url.scheme == "tcp" and url.hostname:
            self._address = (url.hostname, url.port or 2375)
            if os.environ.get("DOCKER_TLS_VERIFY"):
                self._tls = _tls_context(Path(os.environ.get("DOCKER_CERT_PATH")
                                              or Path.home() / ".docker"))
        else:
            raise Unreachable(f"{self.host!r} is not an engine address this build can use "
                              "(unix:///path/docker.sock or tcp://host:port)")
        self._prefix = "/v{}.{}".format(*API_VERSION)

    # -- the calls -------------------------------------------------------------------------

    def ping(self) -> None:
        """Check the engine answers, and speak its API version if it is older than ours."""
        with self._call("GET", "/_ping", versioned=False) as answer:
            answer.read(1024)
            theirs = answer.getheader("Api-Version") or ""
        parts = theirs.split(".")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            self._prefix = "/v{}.{}".format(*min(API_VERSION, (int(parts[0]), int(parts[1]))))

    def info(self) -> dict[str, Any]:
        return dict(self._json("GET", "/info"))

    def containers(self, label: str) -> list[dict[str, Any]]:
        """Every container (running or not) that carries `label` (`key` or `key=value`)."""
        found = self._json("GET", "/containers/json",
                           query={"all": "1", "filters": json.dumps({"label": [label]})})
        return [dict(c) for c in found]

    def create(self, config: Mapping[str, Any]) -> str:
        """Create a container from an API `ContainerConfig` (with its `HostConfig`)."""
        return str(self._json("POST", "/containers/create", body=config)["Id"])

    def start(self, container: str) -> None:
        self._json("POST", f"/containers/{container}/start")

    def wait(self, container: str, timeout: float) -> int:
        """The container's exit code once it ends; ReadTimeout after `timeout` seconds."""
        answer = self._json("POST", f"/containers/{container}/wait", timeout=timeout)
        return int(answer.get("StatusCode", -1))

    def kill(self, container: str) -> None:
        self._json("POST", f"/containers/{container}/kill")

    def remove(self, container: str, *, volumes: bool = True) -> None:
        """Remove the container, stopping it first, and (`volumes`) its anonymous volumes."""
        self._json("DELETE", f"/containers/{container}",
                   query={"force": "1", "v": "1" if volumes else "0"})

    def logs(self, container: str) -> Iterator[bytes]:
        """The finished container's stdout and stderr as it wrote them, chunk by chunk."""
        with self._call("GET", f"/containers/{container}/logs",
                        query={"stdout": "1", "stderr": "1"}) as answer:
            # Without a TTY each write comes framed: stream (1 byte), 3 zero bytes, a
            # big-endian 32-bit length, then that many bytes.
            while header := _read_exactly(answer, 8):
                size = int.from_bytes(header[4:8], "big")
                while size:
                    chunk = answer.read(min(size, CHUNK))
                    if not chunk:
                        raise Unreachable("the engine cut the log short")
                    size -= len(chunk)
                    yield chunk

    def put_archive(self, container: str, path: str, data: IO[bytes]) -> None:
        """Unpack a tar (read from `data`) into the container at `path`."""
        self._json("PUT", f"/containers/{container}/archive", query={"path": path},
                   stream=data, content_type="application/x-tar")

    def get_archive(self, container: str, path: str) -> Iterator[bytes]:
        """A tar of `path` in the container, chunk by chunk."""
        with self._call("GET", f"/containers/{container}/archive",
                        query={"path": path}) as answer:
            while chunk := answer.read(CHUNK):
                yield chunk

    def image_id(self, reference: str) -> str | None:
        """The id of the image a name or id refers to; None when the engine has none."""
        try:
            return str(self._json("GET", f"/images/{quote(reference, safe='')}/json")["Id"])
        except NotFound:
            return None

    def load(self, archive: Path) -> str:
        """`docker load` a docker-archive; the id of the (first) image it holds."""
        with archive.open("rb") as data, \
                self._call("POST", "/images/load", query={"quiet": "1"}, stream=data,
                           content_type="application/x-tar", timeout=LOAD_TIMEOUT) as answer:
            said = _read_bounded(answer).decode(errors="replace")
        loaded = []
        for line in said.splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not a message of the API's: nothing to learn from it
            if not isinstance(message, dict):
                continue
            if "errorDetail" in message:
                raise APIError(500, str(message["errorDetail"].get("message", message)))
            text = str(message.get("stream", "")).strip()
            for prefix in ("Loaded image ID: ", "Loaded image: "):
                if text.startswith(prefix):
                    loaded.append(text.removeprefix(prefix))
        image = self.image_id(loaded[0]) if loaded else None
        if image is None:
            raise APIError(500, f"the engine loaded no image from {archive.name}: {said[:300]}")
        return image

    # -- HTTP --------------------------------------------------------------------------------

    def _json(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
              body: Mapping[str, Any] | None = None, stream: IO[bytes] | None = None,
              content_type: str | None = None, timeout: float = TIMEOUT) -> Any:
        """Make a call and return its JSON answer ({} for an empty one)."""
        with self._call(method, path, query=query, body=body, stream=stream,
                        content_type=content_type, timeout=timeout) as answer:
            data = _read_bounded(answer)
        return json.loads(data) if data.strip() else {}

    @contextmanager
    def _call(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
              body: Mapping[str, Any] | None = None, stream: IO[bytes] | None = None,
              content_type: str | None = None, timeout: float = TIMEOUT,
              versioned: bool = True) -> Iterator[http.client.HTTPResponse]:
        """The answer to one call, on a connection of its own; an error status raises."""
        url = (self._prefix if versioned else "") + path
        if query:
            url += "?" + urlencode(query)
        headers = {"Host": "docker"}
        payload: bytes | IO[bytes] | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif stream is not None:
            payload = stream
            headers["Content-Type"] = content_type or "application/octet-stream"
            headers["Content-Length"] = str(os.fstat(stream.fileno()).st_size - stream.tell())
        connection = self._connection(timeout)
        try:
            try:
                connection.request(method, url, body=payload, headers=headers)
                answer = connection.getresponse()
                if answer.status >= 400:
                    raise _api_error(answer)
                yield answer
            except TimeoutError as exc:
                raise ReadTimeout(f"no answer from the engine within {timeout:.0f} s "
                                  f"({method} {path})") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise Unreachable(f"{exc.__class__.__name__}: {exc}") from exc
        finally:
            connection.close()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._path is not None:
            return _UnixConnection(self._path, timeout)
        if self._tls is not None:
            return http.client.HTTPSConnection(*self._address, timeout=timeout,
                                               context=self._tls)
        return http.client.HTTPConnection(*self._address, timeout=timeout)


def _tls_context(certs: Path) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        context.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    except (OSError, ssl.SSLError) as exc:
        raise EnvironmentProblem(
            f"DOCKER_TLS_VERIFY is set, but the engine's CA and this client's certificate "
            f"could not be read from {certs} ({exc}); put ca.pem, cert.pem and key.pem there "
            "or point DOCKER_CERT_PATH at them") from None
    return context


def _api_error(answer: http.client.HTTPResponse) -> APIError:
    said = answer.read(64 * 1024).decode(errors="replace")
    try:
        message = str(json.loads(said).get("message", said))
    except (ValueError, AttributeError):
        message = said.strip()
    return (NotFound if answer.status == 404 else APIError)(answer.status, message)


def _read_bounded(answer: http.client.HTTPResponse) -> bytes:
    data = answer.read(MAX_ANSWER + 1)
    if len(data) > MAX_ANSWER:
        raise APIError(answer.status, f"the engine's answer exceeds {MAX_ANSWER} bytes")
    return data


def _read_exactly(answer: http.client.HTTPResponse, size: int) -> bytes:
    """`size` bytes, or b"" at the end of the answer."""
    data = b""
    while len(data) < size:
        chunk = answer.read(size - len(data))
        if not chunk:
            if data:
                raise Unreachable("the engine cut the log short")
            break
        data += chunk
    return data
