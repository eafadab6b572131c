"""Trusted time for the audit log: RFC 3161 timestamp tokens over checkpoints.

A checkpoint carries no time (C2SP tlog-checkpoint). With a timestamp authority configured
(env REBUILD_TSA_URL, or `rebuild --tsa URL`), each new checkpoint is sent to it as a
message imprint (sha256 of the checkpoint's bytes, the signed note exactly as stored) and the
TSA's answer, a DER TimeStampResp (status granted and the signed token, as Sigstore bundles
carry it), is kept beside the checkpoint. A verifier pins the TSA's certificate chain
(`--tsa-cert FILE`, policy `[policy.log] tsa_cert`) and checks that the token is signed by a
certificate that chains to it and that the imprint is the checkpoint's hash: then every entry
under that checkpoint was in the log no later than the token's genTime.

Requests and verification use rfc3161-client; `request_token` is the only network access of
the store wing (a POST to the configured URL, bounded in time and size).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from rebuild.errors import EnvironmentProblem, SigningError, UsageError
from rebuild.store.tlog import ProofFailed

SHA256_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
TIMEOUT = 30.0  # seconds: an append holds the log's lock while the TSA answers
MAX_RESPONSE = 256 * 1024  # a token with a certificate chain is a few kilobytes


@dataclass(frozen=True)
class TsaTrust:
    """The pinned chain of a timestamp authority: its self-signed roots and any
    intermediates, from one PEM file."""

    source: str
    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class Timestamp:
    time: datetime  # the token's genTime (UTC)
    tsa: str  # the signing certificate's subject (RFC 4514)
    serial: int


def load_tsa_trust(path: Path) -> TsaTrust:
    """Certificates from a PEM file: self-signed ones are roots, the others intermediates."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the TSA certificate ({exc.strerror})") from None
    except ValueError:
        raise SigningError(f"{path}: not a PEM certificate chain (the TSA's root certificate, "
                           "and any intermediates)") from None
    roots = tuple(c for c in certs if c.issuer == c.subject)
    if not roots:
        raise SigningError(f"{path}: no self-signed root certificate: pin the TSA's root "
                           "(and any intermediates)")
    return TsaTrust(str(path), roots, tuple(c for c in certs if c.issuer != c.subject))


def imprint(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def request_token(url: str, data: bytes) -> bytes:
    """Ask the TSA at `url` for a token over sha256(data); return its DER TimeStampResp once
    its status is granted, its imprint is that hash and its nonce is ours. (The chain is
    checked by verifiers, who pin it.) Raises EnvironmentProblem."""
    import urllib.error  # only an append with a TSA needs HTTP (0.1 s to import)
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"timestamp authority {url!r}: not an http(s) URL")
    request = (TimestampRequestBuilder().data(data).hash_algorithm(HashAlgorithm.SHA256)
               .nonce(nonce=True).cert_request(cert_request=True).build())
    http = urllib.request.Request(  # noqa: S310 (the scheme is checked above: http(s) only)
        url, data=request.as_bytes(), method="POST", headers={
            "Content-Type": "application/timestamp-query",
            "Accept": "application/timestamp-reply"})
    try:
        with urllib.request.urlopen(http, timeout=TIMEOUT) as reply:  # noqa: S310
            body: bytes = reply.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        raise EnvironmentProblem(f"timestamp authority {url}: HTTP {exc.code} "
                                 f"{exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnvironmentProblem(f"timestamp authority {url}: {reason}") from None
    if len(body) > MAX_RESPONSE:
        raise EnvironmentProblem(f"timestamp authority {url}: the answer exceeds "
                                 f"{MAX_RESPONSE} bytes")
    try:
        response = decode_timestamp_response(body)
        status = PKIStatus(response.status)
        info = response.tst_info if status == PKIStatus.GRANTED else None
    except ValueError:
        raise EnvironmentProblem(f"timestamp authority {url}: the answer is not an RFC 3161 "
                                 "TimeStampResp") from None
    if info is None:
        text = "; ".join(response.status_string) or status.name
        raise EnvironmentProblem(f"timestamp authority {url} refused: {text}")
    if info.message_imprint.message != imprint(data) or info.nonce != request.nonce:
        raise EnvironmentProblem(f"timestamp authority {url}: the token is for another "
                                 "request (imprint or nonce differs)")
    return body


def _decode(token: bytes) -> TimeStampResponse:
    try:
        return decode_timestamp_response(token)
    except ValueError:
        raise ProofFailed("the timestamp token is not an RFC 3161 TimeStampResp") from None


def _signer_name(response: TimeStampResponse) -> str:
    infos = list(response.signed_data.signer_infos)
    for der in response.signed_data.certificates:
        cert = x509.load_der_x509_certificate(der)
        if infos and cert.issuer == infos[0].issuer and cert.serial_number == \
                infos[0].serial_number:
            return cert.subject.rfc4514_string()
    return "(no certificate in the token)"


def check_token(token: bytes, data: bytes, trust: TsaTrust) -> Timestamp:
    """The token's time, once it is proven: granted, signed by a certificate for time
    stamping that chains to the pinned roots, and its imprint is sha256(data). Raises
    ProofFailed naming what does not hold."""
    response = _decode(token)
    info = response.tst_info
    if info.message_imprint.hash_algorithm != SHA256_OID:
        raise ProofFailed("the timestamp token's imprint is not a sha256 hash")
    if info.message_imprint.message != imprint(data):
        raise ProofFailed("the timestamp token's imprint is not the checkpoint's sha256: "
                          "the checkpoint was changed after it was timestamped")
    builder = VerifierBuilder()
    for root in trust.roots:
        builder = builder.add_root_certificate(root)
    for cert in trust.intermediates:
        builder = builder.add_intermediate_certificate(cert)
    try:
        builder.build().verify(response, imprint(data))
    except VerificationError as exc:
        raise ProofFailed(f"the timestamp token is not from the pinned TSA ({trust.source}): "
                          f"{_reason(str(exc))}") from None
    return Timestamp(info.gen_time.astimezone(UTC), _signer_name(response), info.serial_number)


def _reason(message: str) -> str:
    """OpenSSL's error stack as one short reason (its `Verify error: …` or `reason: …`)."""
    found = re.search(r'data: "([^"]+)"', message) or re.search(r'reason: "([^"]+)"', message)
    return found.group(1) if found else message.splitlines()[0][:160]


def read_token(token: bytes) -> Timestamp:
    """What a token claims, unchecked: for saying which TSA a token names when no chain is
    pinned (shown as NOT VERIFIED, never as a trusted time)."""
    response = _decode(token)
    return Timestamp(response.tst_info.gen_time.astimezone(UTC), _signer_name(response),
                     response.tst_info.serial_number)


def utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
