"""A stand-in for Sigstore's OIDC issuer, Fulcio and Rekor v1 on 127.0.0.1, for offline tests.

It speaks just enough of the real APIs for sigstore-python 4.x to sign and verify keyless
bundles against it through a custom client trust config:

- an OIDC issuer: `token(subject)` mints an ES256 JWT (audience "sigstore");
- Fulcio (`POST /api/v2/signingCert`): checks the token and the CSR's proof of possession and
  returns a 10-minute code-signing certificate for the token's identity, with one embedded SCT
  signed by the stand-in CT log key (RFC 6962 precertificate form);
- Rekor v1 (`POST /api/v1/log/entries`, kind dsse 0.0.1): checks the envelope signature against
  the certificate, appends the entry to an RFC 6962 Merkle tree, and answers with the entry, a
  signed entry timestamp and an inclusion proof with a signed checkpoint.

Every key is generated fresh per instance; `trust_config()` is the JSON that trusts them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from tests.conftest import serving

ISSUER = "https://oidc.standin.invalid"
AUDIENCE = "sigstore"
OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")  # raw bytes
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")  # DER UTF8String
SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def _der_spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _log_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """RFC 6962 log id: sha256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(_der_spki(key)).digest()


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _der_octet_string(content: bytes) -> bytes:
    return b"\x04" + _der_length(len(content)) + content


def _der_utf8_string(text: str) -> bytes:
    content = text.encode()
    return b"\x0c" + _der_length(len(content)) + content


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _u24(n: int) -> bytes:
    return struct.pack("!I", n)[1:]


# -- RFC 6962 Merkle tree ---------------------------------------------------------------------


def _leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (RFC 6962, 2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node_hash(_root(leaves[:k]), _root(leaves[k:]))


def _audit_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 2.1.1 PATH(m, D[n]), from the leaf up."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*_audit_path(index, leaves[:k]), _root(leaves[k:])]
    return [*_audit_path(index - k, leaves[k:]), _root(leaves[:k])]


class KeylessStandin:
    """The OIDC issuer, Fulcio and Rekor stand-ins, served on one 127.0.0.1 port."""

    def __init__(self) -> None:
        self.oidc_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.started = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
        self.ca_cert = self._make_ca()
        self.leaves: list[bytes] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    # -- OIDC --------------------------------------------------------------------------------

    def token(self, subject: str, *, email: str | None = None, lifetime: int = 300) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject,
                                  "iat": now, "nbf": now, "exp": now + lifetime}
        if email is not None:
            claims["email"] = email
        return jwt.encode(claims, self.oidc_key, algorithm="ES256")

    # -- trust config ------------------------------------------------------------------------

    def trusted_root(self) -> dict[str, Any]:
        """Sigstore's TrustedRoot v0.1 JSON for this stand-in: its Fulcio CA, CT log and Rekor
        keys (what `@sigstore/verify` and sigstore-python verify against)."""
        start = {"start": self.started.isoformat().replace("+00:00", "Z")}

        def log(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
            return {"baseUrl": self.url, "hashAlgorithm": "SHA2_256",
                    "publicKey": {"rawBytes": _b64(_der_spki(key.public_key())),
                                  "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": start},
                    "logId": {"keyId": _b64(_log_id(key.public_key()))}}

        der = self.ca_cert.public_bytes(serialization.Encoding.DER)
        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.rekor_key)],
            "certificateAuthorities": [{
                "subject": {"organization": "standin", "commonName": "standin-fulcio"},
                "uri": self.url, "certChain": {"certificates": [{"rawBytes": _b64(der)}]},
                "validFor": start}],
            "ctlogs": [log(self.ct_key)],
            "timestampAuthorities": [],
        }

    def trust_config(self) -> dict[str, Any]:
        """A sigstore ClientTrustConfig v0.1 that trusts this stand-in and nothing else."""
        start = {"start": self.started.isoformat().replace("+00:00", "Z")}

        def service() -> dict[str, Any]:
            return {"url": self.url, "majorApiVersion": 1, "validFor": start,
                    "operator": "standin"}

        return {
            "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": self.trusted_root(),
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": [service()],
                "oidcUrls": [],
                "rekorTlogUrls": [service()],
                "rekorTlogConfig": {"selector": "ANY"},
                "tsaUrls": [],
                "tsaConfig": {"selector": "ANY"},
            },
        }

    # -- Fulcio ------------------------------------------------------------------------------

    def _make_ca(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "standin"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "standin-fulcio")])
        public = self.ca_key.public_key()
        return (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name).public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.started)
                .not_valid_after(self.started + dt.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                               critical=False)
                .sign(self.ca_key, hashes.SHA256()))

    def issue(self, csr_pem: bytes, token: str) -> list[x509.Certificate]:
        """A signing certificate for the token's identity, with an embedded SCT."""
        claims = jwt.decode(token, self.oidc_key.public_key(), algorithms=["ES256"],
                            audience=AUDIENCE, issuer=ISSUER)
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("CSR signature does not verify (no proof of possession)")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise ValueError("only ECDSA keys are supported")
        san: x509.GeneralName = (x509.RFC822Name(claims["email"]) if "email" in claims
                                 else x509.UniformResourceIdentifier(claims["sub"]))
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([])).issuer_name(self.ca_cert.subject)
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(minutes=10))
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       key_cert_sign=False, crl_sign=False, encipher_only=False,
                       decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                  critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.ca_key.public_key()), critical=False)
                   .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                   .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V1, ISSUER.encode()),
                                  critical=False)
                   .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V2,
                                                             _der_utf8_string(ISSUER)),
                                  critical=False))
        # The SCT signs the certificate without its SCT extension (RFC 6962 3.2): sign that
        # form first, then add the extension last so that removing it gives the same bytes.
        precert = builder.sign(self.ca_key, hashes.SHA256())
        sct = self._sct(precert.tbs_certificate_bytes)
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        cert = builder.add_extension(
            x509.UnrecognizedExtension(SCT_LIST, _der_octet_string(sct_list)),
            critical=False).sign(self.ca_key, hashes.SHA256())
        return [cert, self.ca_cert]

    def _sct(self, tbs: bytes) -> bytes:
        timestamp = int(time.time() * 1000)
        issuer_key_hash = _log_id(self.ca_key.public_key())
        # RFC 6962 3.2 digitally-signed struct: v1, certificate_timestamp, timestamp,
        # precert_entry, issuer key hash, TBSCertificate, no extensions.
        signed = (struct.pack("!BBQH", 0, 0, timestamp, 1) + issuer_key_hash + _u24(len(tbs))
                  + tbs + struct.pack("!H", 0))
        signature = _sign(self.ct_key, signed)
        # SCT: version, log id, timestamp, extensions, sha256 (4) + ecdsa (3), signature.
        return (b"\x00" + _log_id(self.ct_key.public_key()) + struct.pack("!QH", timestamp, 0)
                + b"\x04\x03" + struct.pack("!H", len(signature)) + signature)

    # -- Rekor -------------------------------------------------------------------------------

    def log_entry(self, proposed: dict[str, Any]) -> dict[str, Any]:
        """Integrate a proposed dsse 0.0.1 entry; returns Rekor v1's response."""
        if proposed.get("kind") != "dsse" or proposed.get("apiVersion") != "0.0.1":
            raise ValueError("only dsse 0.0.1 entries are supported")
        content = proposed["spec"]["proposedContent"]
        envelope_json: str = content["envelope"]
        envelope = json.loads(envelope_json)
        verifier_b64: str = content["verifiers"][0]
        cert = x509.load_pem_x509_certificate(base64.b64decode(verifier_b64))
        payload = base64.b64decode(envelope["payload"])
        payload_type = envelope["payloadType"].encode()
        pae = b"DSSEv1 %d %b %d %b" % (len(payload_type), payload_type, len(payload), payload)
        signatures = []
        for signature in envelope["signatures"]:
            public = cert.public_key()
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(base64.b64decode(signature["sig"]), pae, ec.ECDSA(hashes.SHA256()))
            signatures.append({"signature": signature["sig"], "verifier": verifier_b64})
        body = rfc8785.dumps({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {"envelopeHash": {"algorithm": "sha256",
                                      "value": hashlib.sha256(envelope_json.encode()).hexdigest()},
                     "payloadHash": {"algorithm": "sha256",
                                     "value": hashlib.sha256(payload).hexdigest()},
                     "signatures": signatures}})
        log_id = _log_id(self.rekor_key.public_key()).hex()
        with self.lock:
            index = len(self.leaves)
            self.bodies.append(body)
            self.leaves.append(_leaf_hash(body))
            leaves = list(self.leaves)
        integrated_time = int(time.time())
        root = _root(leaves)
        promise = rfc8785.dumps({"body": _b64(body), "integratedTime": integrated_time,
                                 "logID": log_id, "logIndex": index})
        # The note's signer is named after the log's address, as Rekor names its own
        # ("rekor.sigstore.dev"): @sigstore/verify only accepts a checkpoint signature whose
        # name is a substring of the trusted log's baseUrl (tlog/checkpoint.js).
        name = self.url.removeprefix("http://")
        note = f"{name}\n{len(leaves)}\n{_b64(root)}\n"
        note_signature = _log_id(self.rekor_key.public_key())[:4] + _sign(self.rekor_key,
                                                                          note.encode())
        checkpoint = f"{note}\n\u2014 {name} {_b64(note_signature)}\n"
        entry = {
            "body": _b64(body), "integratedTime": integrated_time, "logID": log_id,
            "logIndex": index,
            "verification": {
                "signedEntryTimestamp": _b64(_sign(self.rekor_key, promise)),
                "inclusionProof": {"logIndex": index, "treeSize": len(leaves),
                                   "rootHash": root.hex(), "checkpoint": checkpoint,
                                   "hashes": [h.hex() for h in _audit_path(index, leaves)]},
            },
        }
        return {secrets.token_hex(32): entry}

    # -- serving -----------------------------------------------------------------------------

    @contextmanager
    def serving(self) -> Iterator[KeylessStandin]:
        with serving(self.server):
            yield self


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _handler(standin: KeylessStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                if self.path == "/api/v2/signingCert":
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    csr = base64.b64decode(request["certificateSigningRequest"])
                    chain = standin.issue(csr, token)
                    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain]
                    self._reply(200, {"signedCertificateEmbeddedSct": {
                        "chain": {"certificates": pems}}})
                elif self.path == "/api/v1/log/entries":
                    self._reply(201, standin.log_entry(request))
                else:
                    self._reply(404, {"code": 404, "message": f"no route {self.path}"})
            except (ValueError, KeyError, InvalidSignature, jwt.InvalidTokenError) as e:
                self._reply(400, {"code": 400, "message": f"{type(e).__name__}: {e}"})

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler
