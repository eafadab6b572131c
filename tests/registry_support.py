"""A real Debian `docker-registry` (distribution 2.8) for the tests: on 127.0.0.1, on a free
port, with its own config and root directory, optionally with htpasswd and TLS (a test CA
made with `cryptography`), stopped by its pid."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
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


def start_registry(directory: Path, *, user: str | None = None, password: str | None = None
                   ) -> RunningRegistry:
    """Serve a registry from `directory`; with `user`, behind htpasswd and TLS."""
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
