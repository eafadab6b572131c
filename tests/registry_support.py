"""A real Debian `docker-registry` (distribution 2.8) for the tests: on 127.0.0.1, on a free
port, with its own config and root directory, optionally with htpasswd and TLS (a test CA
made with `cryptography`) or with Bearer tokens from a small token service of the test's
own (JWTs signed by a test key the registry trusts), stopped by its pid."""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.conftest import require_tool


@dataclass
class RunningRegistry:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    ca: Path | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, repository: str = "rebuild") -> str:
        scheme = "oci" if self.ca else "oci+http"
        return f"{scheme}://{self.host}/{repository}"

    def requests(self, method: str, path_part: str = "") -> int:
        """How many requests of `method` (on a path holding `path_part`) the registry served,
        from its access log."""
        pattern = re.compile(rf'"{method} (/v2/\S*)')
        return sum(1 for m in pattern.finditer(self.log.read_text(errors="replace"))
                   if path_part in m.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rebuild test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def cli_certs(directory: Path) -> Path:
    """A CA and a certificate for 127.0.0.1 it signed (server and client alike), in the
    docker CLI's layout (DOCKER_CERT_PATH): ca.pem, cert.pem, key.pem."""
    directory.mkdir()
    for name, made in zip(("ca.pem", "cert.pem", "key.pem"), make_tls(directory), strict=True):
        made.rename(directory / name)
    return directory


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """A token endpoint (docker token auth): checks Basic credentials and answers a JWT,
    ES256 with the signing certificate in `x5c`, that grants the scopes asked for."""

    user: str
    password: str
    directory: Path
    service: str = "rebuild-test"
    issuer: str = "rebuild-test-issuer"
    scopes: list[str] = field(default_factory=list)  # every scope a token was asked for
    refused: int = 0

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rebuild test tokens")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        self.bundle = self.directory / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                expected = "Basic " + base64.b64encode(
                    f"{service.user}:{service.password}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    service.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                query = parse_qs(urlsplit(self.path).query)
                scopes = [s for item in query.get("scope", []) for s in item.split()]
                service.scopes += scopes
                body = json.dumps({"token": service.token(scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(
            self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": self.issuer, "sub": self.user, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_registry(directory: Path, *, user: str | None = None, password: str | None = None,
                   tokens: TokenService | None = None) -> RunningRegistry:
    """Serve a registry from `directory`; with `user`, behind htpasswd and TLS; with
    `tokens`, behind Bearer tokens from that service (plain HTTP)."""
    require_tool("docker-registry")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = ["version: 0.1", "log:", "  level: info", "storage:", "  filesystem:",
              f"    rootdirectory: {directory / 'data'}", "  delete:", "    enabled: true",
              "http:", f"  addr: 127.0.0.1:{port}"]
    ca = None
    if user is not None:
        require_tool("htpasswd")
        ca, cert, key = make_tls(directory)
        config += ["  tls:", f"    certificate: {cert}", f"    key: {key}"]
        htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password or ""], check=True,
                                  capture_output=True, text=True).stdout
        (directory / "htpasswd").write_text(htpasswd)
        config += ["auth:", "  htpasswd:", "    realm: rebuild-test",
                   f"    path: {directory / 'htpasswd'}"]
    elif tokens is not None:
        config += ["auth:", "  token:", f"    realm: {tokens.realm}",
                   f"    service: {tokens.service}", f"    issuer: {tokens.issuer}",
                   f"    rootcertbundle: {tokens.bundle}"]
    (directory / "config.yml").write_text("\n".join(config) + "\n")
    log = directory / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["docker-registry", "serve", str(directory / "config.yml")],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    running = RunningRegistry(directory, port, process, log, ca)
    scheme = "https" if ca else "http"
    deadline = time.monotonic() + 30
    while True:
        try:
            import ssl

            context = ssl.create_default_context(cafile=str(ca)) if ca else None
            urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/v2/", timeout=2,
                                   context=context)
            break
        except urllib.error.HTTPError:
            break  # 401: up, and asking for credentials
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                running.stop()
                raise RuntimeError(f"docker-registry did not start: {log.read_text()}") from None
            time.sleep(0.1)
    return running
