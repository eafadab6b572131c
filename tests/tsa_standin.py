"""A stand-in RFC 3161 timestamp authority on 127.0.0.1, for offline tests.

`POST /` with an `application/timestamp-query` body (a TimeStampReq, parsed with
rfc3161-client) answers an `application/timestamp-reply`: a TimeStampResp whose token is a
CMS SignedData over a TSTInfo (eContentType id-ct-TSTInfo), signed with ECDSA P-256 by a TSA
certificate (critical EKU id-kp-timeStamping) issued by a test root CA. Neither rfc3161-client
nor `cryptography` builds tokens (cryptography's PKCS7 builder signs id-data only), so the DER
is assembled here with a minimal encoder, in the test code only.

Every key is generated fresh per instance: `root_pem()` is what a verifier pins, and a second
instance is an untrusted TSA.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rfc3161_client import _rust as rfc3161_rust

from tests.conftest import serving

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_TST_INFO = "1.2.840.113549.1.9.16.1.4"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SIGNING_CERT_V2 = "1.2.840.113549.1.9.16.2.47"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
POLICY = "1.3.6.1.4.1.4146.2.3"


# -- a minimal DER encoder ------------------------------------------------------------------


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _len(len(content)) + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def set_of(*items: bytes) -> bytes:
    return tlv(0x31, b"".join(sorted(items)))  # DER: SET OF sorted by encoding


def integer(n: int) -> bytes:
    return tlv(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def octets(data: bytes) -> bytes:
    return tlv(0x04, data)


def explicit(n: int, content: bytes) -> bytes:
    return tlv(0xA0 + n, content)


def gentime(when: dt.datetime) -> bytes:
    return tlv(0x18, when.astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ").encode())


def algorithm(dotted: str) -> bytes:
    return seq(oid(dotted))


# -- the authority --------------------------------------------------------------------------


class TsaStandin:
    def __init__(self, name: str = "standin-tsa") -> None:
        self.name = name
        self.started = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = self._ca()
        self.cert = self._leaf()
        self.serial = 0
        self.requests = 0
        self.clock: dt.datetime | None = None  # a fixed genTime, when a test wants one
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def root_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def _ca(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} root")])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.started)
                .not_valid_after(self.started + dt.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                    self.ca_key.public_key()), critical=False)
                .sign(self.ca_key, hashes.SHA256()))

    def _leaf(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        return (x509.CertificateBuilder().subject_name(name)
                .issuer_name(self.ca_cert.subject).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.started)
                .not_valid_after(self.started + dt.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                               critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                    self.key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.ca_key.public_key()), critical=False)
                .sign(self.ca_key, hashes.SHA256()))

    def respond(self, query: bytes) -> bytes:
        """A granted TimeStampResp for a DER TimeStampReq."""
        request = rfc3161_rust.parse_timestamp_request(query)
        imprint = request.message_imprint
        self.serial += 1
        self.requests += 1
        when = self.clock or dt.datetime.now(dt.UTC)
        fields = [integer(1), oid(POLICY),
                  seq(algorithm(imprint.hash_algorithm.dotted_string),
                      octets(imprint.message)),
                  integer(self.serial), gentime(when)]
        if request.nonce is not None:
            fields.append(integer(request.nonce))
        tst_info = seq(*fields)
        token = self._sign(tst_info, bool(request.cert_req))
        return seq(seq(integer(0)), token)

    def _sign(self, content: bytes, with_cert: bool) -> bytes:
        cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        issuer = self.cert.issuer.public_bytes()
        ess = seq(seq(seq(octets(hashlib.sha256(cert_der).digest()),
                          seq(seq(explicit(4, issuer)), integer(self.cert.serial_number)))))
        attrs = [seq(oid(OID_CONTENT_TYPE), set_of(oid(OID_TST_INFO))),
                 seq(oid(OID_MESSAGE_DIGEST), set_of(octets(hashlib.sha256(content).digest()))),
                 seq(oid(OID_SIGNING_CERT_V2), set_of(ess))]
        signed_attrs = set_of(*attrs)  # signed as a SET, stored as [0] IMPLICIT
        signature = self.key.sign(signed_attrs, ec.ECDSA(hashes.SHA256()))
        signer_info = seq(integer(1), seq(issuer, integer(self.cert.serial_number)),
                          algorithm(OID_SHA256), b"\xa0" + signed_attrs[1:],
                          algorithm(OID_ECDSA_SHA256), octets(signature))
        signed_data = seq(integer(3), set_of(algorithm(OID_SHA256)),
                          seq(oid(OID_TST_INFO), explicit(0, octets(content))),
                          *([tlv(0xA0, cert_der)] if with_cert else []),
                          set_of(signer_info))
        return seq(oid(OID_SIGNED_DATA), explicit(0, signed_data))

    @contextmanager
    def serving(self) -> Iterator[TsaStandin]:
        with serving(self.server):
            yield self


def _handler(tsa: TsaStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Type") != "application/timestamp-query":
                self._reply(415, b"expected application/timestamp-query")
                return
            try:
                reply = tsa.respond(body)
            except ValueError as exc:
                self._reply(400, str(exc).encode())
                return
            self._reply(200, reply, "application/timestamp-reply")

        def _reply(self, status: int, data: bytes, kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler
