"""Keys, DSSE signing and Sigstore bundle v0.3 files (design.md, "Evidence formats").

This module owns rebuild's signing keys (generation, loading, key ids), signs in-toto
statements as DSSE envelopes and writes them as Sigstore bundle v0.3 JSON, and verifies such
bundles. Nothing else in rebuild signs or verifies a signature.

Two ways to sign:
- with a local key (the default): bundles are built here by hand, because sigstore-python
  cannot sign with a local key and refuses bundles whose verification material is a public
  key. The layout follows sigstore/protobuf-specs `Bundle` v0.3:
  `verificationMaterial.publicKey.hint` names the key, `tlogEntries` is empty and
  `dsseEnvelope` holds the signature, so `@sigstore/verify` and cosign can check them too;
- keyless, with a CI's OIDC token: sigstore-python gets a Fulcio certificate and a Rekor entry,
  using the services and roots named in a Sigstore client trust config file.

The pipeline signs through `StatementSigner`: a `KeySigner` or a `KeylessSigner`;
`verify_signed` checks a bundle signed either way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
    generate_private_key,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    KeySerializationEncryption,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError

# securesystemslib.signer re-exports these without __all__, which mypy --strict flags.
from securesystemslib.signer import (  # type: ignore[attr-defined]
    CryptoSigner,
    Signature,
    Signer,
    SSlibKey,
)

from rebuild.errors import ClaimFailed, SigningError
from rebuild.store.layout import canonical_json

if TYPE_CHECKING:
    from cryptography import x509
    from sigstore.models import ClientTrustConfig
    from sigstore.sign import Signer as SigstoreSigner

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
PASSPHRASE_ENV = "REBUILD_KEY_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
ID_TOKEN_ENV = "SIGSTORE_ID_TOKEN"  # noqa: S105 (the variable cosign and GitLab use)

Algorithm = Literal["ecdsa-p256", "ed25519"]
SigningKey = EllipticCurvePrivateKey | Ed25519PrivateKey
KEYGEN_HINT = "create a supported key with `rebuild keygen --out PREFIX` (ECDSA P-256 or Ed25519)"


@dataclass(frozen=True)
class KeyPair:
    """The two files `generate_keypair` wrote, and the key's id."""

    private_path: Path
    public_path: Path
    keyid: str


@dataclass(frozen=True)
class Verified:
    """What a verified bundle says, and which trusted key vouched for it.

    For a keyless bundle, `keyid` is the id of the certificate's short-lived key and `identity`
    the certificate's identity and issuer that the verifier trusted.
    """

    statement: dict[str, Any]
    keyid: str
    payload_type: str
    identity: KeylessIdentity | None = None


@dataclass(frozen=True)
class KeylessIdentity:
    """Whom a keyless bundle must name: the certificate identity (its SAN: an e-mail address
    or a URI) and OIDC issuer, and the trust config whose roots vouch for certificate and log.
    `trust_config` None is Sigstore's public-good instance, as sigstore-python ships it."""

    identity: str
    issuer: str
    trust_config: Path | None

    def __str__(self) -> str:
        return f"{self.identity} (issuer {self.issuer})"


class StatementSigner(Protocol):
    """What the pipeline signs with: a local key (`KeySigner`) or keyless (`KeylessSigner`)."""

    @property
    def identity(self) -> str:
        """Who signs: the key id, or the certificate identity (SAN) of a keyless signer."""
        ...

    @property
    def description(self) -> str:
        """Who signs, for people."""
        ...

    def sign(self, statement: Mapping[str, Any]) -> bytes:
        """The statement signed as a DSSE envelope in a Sigstore bundle v0.3 (canonical JSON)."""
        ...


# -- keys -----------------------------------------------------------------------------------



class UntrustedSigner(ClaimFailed):
    """A well-formed bundle signed by a key the caller did not give: not a forgery, but
    nothing that counts either."""

def keyid(public_key: PublicKeyTypes) -> str:
    """The key's id: sha256 hex of its DER SubjectPublicKeyInfo.

    Independent of securesystemslib's default id (a hash of its own JSON form), so the
    `hint` in a bundle is the same whichever tool computes it (`openssl pkey -pubin -outform
    DER | sha256sum`).
    """
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def passphrase_from_env(var: str = PASSPHRASE_ENV) -> bytes | None:
    """The key passphrase from the environment; unset or empty means no passphrase."""
    value = os.environ.get(var)
    return value.encode() if value else None


def generate_keypair(prefix: Path, *, algorithm: Algorithm = "ecdsa-p256",
                     passphrase: bytes | None = None) -> KeyPair:
    """Write PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SubjectPublicKeyInfo PEM).

    Existing files are never overwritten: a lost private key cannot be recovered.
    """
    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError(f"{path} already exists; refusing to overwrite a key. "
                               "Choose another --out PREFIX or move the old key away first.")
    private_key: SigningKey
    if algorithm == "ecdsa-p256":
        private_key = generate_private_key(SECP256R1())
    elif algorithm == "ed25519":
        private_key = Ed25519PrivateKey.generate()
    else:
        raise SigningError(f"unknown key algorithm {algorithm!r}; use ecdsa-p256 or ed25519")
    encryption: KeySerializationEncryption = (
        BestAvailableEncryption(passphrase) if passphrase else NoEncryption())
    private_pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    public_pem = private_key.public_key().public_bytes(Encoding.PEM,
                                                       PublicFormat.SubjectPublicKeyInfo)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        _write_new(private_path, private_pem, 0o600)
        try:
            _write_new(public_path, public_pem, 0o644)
        except BaseException:
            private_path.unlink()  # never leave half a key pair behind
            raise
    except FileExistsError as e:
        raise SigningError(f"{e.filename} already exists; refusing to overwrite a key. "
                           "Choose another --out PREFIX.") from e
    except OSError as e:
        raise SigningError(f"cannot write the key pair {prefix}.key/.pub: {e.strerror}. "
                           "Check that the directory exists and is writable.") from e
    return KeyPair(private_path, public_path, keyid(private_key.public_key()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: the check above is only for a friendly message; this is the guarantee.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the mode asked for, whatever the umask
        with os.fdopen(os.dup(fd), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink()
        raise
    finally:
        os.close(fd)


def load_signer(path: Path, passphrase: bytes | None) -> Signer:
    """A securesystemslib signer for the private key in `path`."""
    private_key = _load_private_key(path, passphrase)
    return CryptoSigner(private_key, _sslib_key(private_key.public_key()))


def load_public_key(path: Path, *, passphrase: bytes | None = None) -> SSlibKey:
    """The public key in a `.pub` PEM file, or the public half of a `.key` file."""
    data = _read_key_file(path)
    if b"PRIVATE KEY-----" in data:
        return _sslib_key(_load_private_key(path, passphrase).public_key())
    try:
        public_key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SigningError(f"{path} is not a PEM public key ({e}); pass the PREFIX.pub file "
                           "that `rebuild keygen` wrote.") from e
    if not isinstance(public_key, EllipticCurvePublicKey | Ed25519PublicKey):
        raise SigningError(f"{path} holds an unsupported key type; {KEYGEN_HINT}.")
    return _sslib_key(public_key)


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SigningError(f"cannot read key file {path}: {e.strerror}. "
                           f"Check the --key path, or {KEYGEN_HINT}.") from e


def _load_private_key(path: Path, passphrase: bytes | None) -> SigningKey:
    data = _read_key_file(path)
    try:
        private_key: PrivateKeyTypes = load_pem_private_key(data, passphrase)
    except TypeError as e:
        # cryptography says TypeError when a passphrase is missing or superfluous.
        if passphrase is None:
            raise SigningError(f"{path} is encrypted and no passphrase was given; set "
                               f"{PASSPHRASE_ENV} to its passphrase.") from e
        raise SigningError(f"{path} is not encrypted but a passphrase was given; unset "
                           f"{PASSPHRASE_ENV}.") from e
    except ValueError as e:
        # Wrong passphrase and malformed PEM are indistinguishable here.
        hint = (f"check {PASSPHRASE_ENV}" if passphrase is not None
                else "pass the PREFIX.key file that `rebuild keygen` wrote")
        raise SigningError(f"cannot load private key {path}: wrong passphrase or not a PEM "
                           f"private key; {hint}.") from e
    except UnsupportedAlgorithm as e:
        raise SigningError(f"{path} uses an unsupported key algorithm; {KEYGEN_HINT}.") from e
    if isinstance(private_key, Ed25519PrivateKey):
        return private_key
    if isinstance(private_key, EllipticCurvePrivateKey) and isinstance(private_key.curve,
                                                                        SECP256R1):
        return private_key
    # P-384 and RSA would sign here, but the independent verifier refuses them.
    kind = (f"ECDSA {private_key.curve.name}" if isinstance(private_key, EllipticCurvePrivateKey)
            else type(private_key).__name__.removeprefix("_").replace("PrivateKey", ""))
    raise SigningError(f"{path} is an unsupported key type ({kind}); {KEYGEN_HINT}.")


def _sslib_key(public_key: PublicKeyTypes) -> SSlibKey:
    return SSlibKey.from_crypto(public_key, keyid=keyid(public_key))


def _crypto_public_key(key: SSlibKey) -> PublicKeyTypes:
    # SSlibKey keeps Ed25519 keys as raw hex and every other type as PEM.
    if key.keytype == "ed25519":
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))
    return load_pem_public_key(key.keyval["public"].encode())


# -- bundles --------------------------------------------------------------------------------


def sign_statement(statement: Mapping[str, Any], signer: Signer) -> bytes:
    """Sign an in-toto statement; returns a Sigstore bundle v0.3, canonical JSON."""
    if not isinstance(signer.public_key, SSlibKey):
        raise SigningError("only local ECDSA P-256 or Ed25519 keys can sign a key bundle; "
                           f"{KEYGEN_HINT}.")
    # The signer may carry securesystemslib's default key id; the bundle names the key by ours.
    # The DSSE signature covers payload type and payload only, not the key id.
    signer_keyid = keyid(_crypto_public_key(signer.public_key))
    envelope = Envelope(canonical_json(dict(statement)), IN_TOTO_PAYLOAD_TYPE, {})
    signature = envelope.sign(signer)
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": signer_keyid}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": _b64(envelope.payload),
            "payloadType": envelope.payload_type,
            "signatures": [{"sig": _b64(bytes.fromhex(signature.signature)),
                            "keyid": signer_keyid}],
        },
    }
    return canonical_json(bundle)


@dataclass(frozen=True)
class KeySigner:
    """Signs with a local key; `key` also signs in-toto links (rebuild.intoto)."""

    key: Signer

    @property
    def identity(self) -> str:
        return str(self.key.public_key.keyid)

    @property
    def description(self) -> str:
        return f"key {_short(self.identity)}"

    def sign(self, statement: Mapping[str, Any]) -> bytes:
        return sign_statement(statement, self.key)


def verify_bundle(data: bytes, trusted: Sequence[SSlibKey]) -> Verified:
    """Verify a key-signed bundle against the trusted keys; returns its statement."""
    bundle = _parse_bundle(data)
    if bundle.payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise ClaimFailed(f"bundle payload type is {bundle.payload_type!r}, not "
                          f"{IN_TOTO_PAYLOAD_TYPE!r}: it is not an in-toto statement.")
    if bundle.hint is None:
        raise ClaimFailed("bundle is not signed with a key (no verificationMaterial.publicKey); "
                          "a keyless bundle needs keyless verification: a certificate identity, "
                          "its OIDC issuer and a trust config.")
    if bundle.signature_keyid not in (None, "", bundle.hint):
        raise ClaimFailed(f"bundle names key {_short(bundle.hint)} but its signature names key "
                          f"{_short(bundle.signature_keyid or '')}; the bundle is malformed.")
    by_id = {keyid(_crypto_public_key(key)): key for key in trusted}
    key = by_id.get(bundle.hint)
    if key is None:
        raise UntrustedSigner(f"signed by key {_short(bundle.hint)}, which is not trusted; pass "
                              "its public key (PREFIX.pub) if you trust it.")
    envelope = Envelope(bundle.payload, bundle.payload_type, {})
    try:
        key.verify_signature(Signature(key.keyid, bundle.signature.hex()), envelope.pae())
    except (UnverifiedSignatureError, VerificationError) as e:
        raise ClaimFailed(f"signature does not verify with key {_short(bundle.hint)}: payload "
                          "altered or wrong key.") from e
    return Verified(_statement(bundle.payload), bundle.hint, bundle.payload_type)


def read_bundle_statement(data: bytes) -> dict[str, Any]:
    """The statement in a bundle, UNVERIFIED: for display only, never for a decision."""
    return _statement(_parse_bundle(data).payload)


# -- keyless (Sigstore: Fulcio certificate + Rekor log entry) --------------------------------
# sigstore is imported inside these functions: it costs half a second at start-up, and only
# keyless signing needs it.

NO_TOKEN = (f"keyless signing needs an OIDC identity token and none was found: set "
            f"{ID_TOKEN_ENV}, or run in a CI that provides one (GitHub Actions: `permissions: "
            f"id-token: write`; GitLab: an `id_tokens` entry {ID_TOKEN_ENV} with `aud: "
            "sigstore`).")


def ambient_identity_token() -> str | None:
    """The OIDC token for keyless signing: SIGSTORE_ID_TOKEN when set (as cosign reads it),
    else the CI's ambient credential (GitHub Actions, GitLab, Buildkite, CircleCI, ...), if any."""
    token = os.environ.get(ID_TOKEN_ENV)
    if token:
        return token
    from sigstore.oidc import IdentityError, detect_credential

    try:
        return detect_credential()
    except IdentityError as e:
        raise SigningError(f"cannot get an OIDC identity token from this CI: {e}; grant the "
                           "job an id-token (GitHub: `permissions: id-token: write`).") from e


class KeylessSigner:
    """Signs with short-lived Fulcio certificates for an OIDC identity and logs every signature
    in Rekor (sigstore-python), with the services and roots of a client trust config (None:
    Sigstore's public-good instance).

    The certificate is requested when the signer is made, so that a missing or refused token
    or an unreachable Fulcio fails before a build rather than after it. It signs every statement
    until shortly before it expires (10 minutes at Fulcio, and a build can take longer); then a
    fresh token from `identity_token` buys a new one.
    """

    RENEW_BEFORE = 60  # seconds of validity a certificate must have left to sign with it

    def __init__(self, trust_config: Path | None,
                 identity_token: Callable[[], str | None] = ambient_identity_token) -> None:
        self._trust_config = trust_config
        self._config = _load_trust_config(trust_config)  # a bad file fails before any build
        self._identity_token = identity_token
        self._signer, self._certificate, self._issuer = self._new_signer()

    @property
    def identity(self) -> str:
        """The certificate's identity (every renewal in one CI job gets the same)."""
        return _certificate_identity(self._certificate)

    @property
    def description(self) -> str:
        return f"{self.identity} (keyless; OIDC issuer {self._issuer})"

    def sign(self, statement: Mapping[str, Any]) -> bytes:
        from sigstore import dsse

        expires = self._certificate.not_valid_after_utc.timestamp()
        if time.time() > expires - self.RENEW_BEFORE:
            self._signer, self._certificate, self._issuer = self._new_signer()
        with self._errors():
            bundle = self._signer.sign_dsse(dsse.Statement(canonical_json(dict(statement))))
        return canonical_json(json.loads(bundle.to_json()))

    def _new_signer(self) -> tuple[SigstoreSigner, x509.Certificate, str]:
        """A sigstore signer with a fresh key and its certificate, and the token's issuer."""
        from sigstore.oidc import IdentityToken
        from sigstore.sign import Signer as SigstoreSigner
        from sigstore.sign import SigningContext

        token = self._identity_token()
        if token is None:
            raise SigningError(NO_TOKEN)
        with self._errors():
            identity_token = IdentityToken(token)
            # cache=True is required, not an optimization: it makes one key and requests its
            # certificate now; without it sigstore-python 4.5 makes a fresh key on every use,
            # so the certificate and the signature would disagree.
            signer = SigstoreSigner(identity_token, SigningContext.from_trust_config(
                self._config), cache=True)
            # sigstore-python has no public accessor for the certificate it holds; this returns
            # the cached one (checked against the CT log's SCT when it was issued).
            certificate = signer._signing_cert()
        return signer, certificate, identity_token.federated_issuer

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from sigstore._internal.fulcio.client import ExpiredCertificate, FulcioClientError
        from sigstore._internal.rekor import RekorClientError
        from sigstore.errors import Error
        from sigstore.oidc import ExpiredIdentity

        try:
            yield
        except (Error, ExpiredIdentity, ExpiredCertificate, FulcioClientError,
                RekorClientError, OSError, ValueError) as e:
            # requests' errors are OSErrors; Fulcio's HTTP errors keep their reason in
            # __cause__.
            reason = str(e) or str(e.__cause__ or type(e).__name__)
            raise SigningError(f"keyless signing failed ({type(e).__name__}): {reason}. Check "
                               f"the identity token and that the services in "
                               f"{_trust_config_name(self._trust_config)} are reachable."
                               ) from e


def sign_keyless(statement: Mapping[str, Any], *, trust_config: Path | None,
                 identity_token: str) -> bytes:
    """Sign a statement with a short-lived Fulcio certificate for `identity_token` and log it in
    Rekor (sigstore-python); returns the Sigstore bundle v0.3, canonical JSON."""
    return KeylessSigner(trust_config, lambda: identity_token).sign(statement)


def _certificate_identity(certificate: x509.Certificate) -> str:
    """The identity a Fulcio certificate vouches for: its SAN e-mail address or URI."""
    from cryptography import x509  # keyless only: X.509 costs every other command ~20 ms

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as e:
        raise SigningError("the signing certificate from Fulcio has no subject alternative "
                           "name, so no identity; check the trust config's CA URL.") from e
    names = (san.get_values_for_type(x509.RFC822Name)
             + san.get_values_for_type(x509.UniformResourceIdentifier))
    if not names:
        raise SigningError("the signing certificate from Fulcio names no e-mail address or "
                           "URI identity; check the trust config's CA URL.")
    return names[0]


def load_keyless_identity(identity: str, issuer: str, trust_config: Path | None
                          ) -> KeylessIdentity:
    """A keyless identity to trust, its trust config checked now (SigningError if unusable)."""
    _load_trust_config(trust_config)
    return KeylessIdentity(identity, issuer, trust_config)


def verify_keyless(data: bytes, *, trust_config: Path | None, identity: str,
                   issuer: str) -> Verified:
    """Verify a keyless bundle offline: certificate chain to the trusted Fulcio root, SCT, Rekor
    inclusion proof and promise, signer identity and OIDC issuer, DSSE signature.

    `Verified.keyid` is the id (as `keyid`) of the certificate's short-lived key.
    """
    from sigstore.models import Bundle
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity

    trusted_root = _load_trust_config(trust_config).trusted_root
    if _parse_bundle(data).hint is not None:
        raise ClaimFailed("bundle is signed with a key, not keyless; verify it with the signer's "
                          "public key.")
    try:
        bundle = Bundle.from_json(data)
        verifier = Verifier(trusted_root=trusted_root)
        payload_type, payload = verifier.verify_dsse(
            bundle, Identity(identity=identity, issuer=issuer))
    except Exception as e:
        # sigstore-python raises assorted types (its own, pydantic's, cryptography's) for a bad
        # bundle; whatever the type, the bundle is not verified.
        raise ClaimFailed(f"keyless bundle does not verify for {identity} (issuer {issuer}): "
                          f"{e}") from e
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise ClaimFailed(f"bundle payload type is {payload_type!r}, not "
                          f"{IN_TOTO_PAYLOAD_TYPE!r}: it is not an in-toto statement.")
    return Verified(_statement(payload), keyid(bundle.signing_certificate.public_key()),
                    payload_type, KeylessIdentity(identity, issuer, trust_config))


def verify_signed(data: bytes, *, keys: Sequence[SSlibKey],
                  keyless: Sequence[KeylessIdentity] = ()) -> Verified:
    """Verify a bundle signed either way: with one of the trusted keys, or keyless by one of
    the trusted identities."""
    if _parse_bundle(data).hint is not None or not keyless:
        return verify_bundle(data, keys)
    failures = []
    for trusted in keyless:
        try:
            return verify_keyless(data, trust_config=trusted.trust_config,
                                  identity=trusted.identity, issuer=trusted.issuer)
        except ClaimFailed as e:
            failures.append(str(e))
    raise ClaimFailed("; ".join(failures))


def _trust_config_name(path: Path | None) -> str:
    return str(path) if path is not None else "Sigstore's public-good trust config"


def _load_trust_config(path: Path | None) -> ClientTrustConfig:
    from sigstore.errors import Error
    from sigstore.models import ClientTrustConfig

    if path is None:
        # sigstore-python ships the public-good trusted root and signing config; offline, it
        # uses that copy (or a newer one a previous online run cached) without asking TUF.
        try:
            return ClientTrustConfig.production(offline=True)
        except (Error, OSError, ValueError) as e:
            raise SigningError(f"cannot load Sigstore's public-good trust config as "
                               f"sigstore-python ships it ({e}); pass --trust-config FILE."
                               ) from e
    try:
        config = ClientTrustConfig.from_json(path.read_text())
        config.trusted_root  # noqa: B018 (validates the root now, not mid-signing)
    except OSError as e:
        raise SigningError(f"cannot read the Sigstore trust config {path}: {e.strerror}.") from e
    except (Error, ValueError) as e:
        raise SigningError(f"{path} is not a valid Sigstore client trust config (v0.1): "
                           f"{e}") from e
    return config


@dataclass(frozen=True)
class _Bundle:
    payload: bytes
    payload_type: str
    signature: bytes
    signature_keyid: str | None
    hint: str | None


def _parse_bundle(data: bytes) -> _Bundle:
    """The parts of a bundle that verification needs; ClaimFailed when it is malformed."""
    document = _strict_json(data, "bundle")
    if not isinstance(document, dict):
        raise ClaimFailed("bundle is not a JSON object; pass a Sigstore bundle (.sigstore.json).")
    media_type = document.get("mediaType")
    if media_type != BUNDLE_MEDIA_TYPE:
        raise ClaimFailed(f"bundle media type is {media_type!r}, not {BUNDLE_MEDIA_TYPE!r}; "
                          "only Sigstore bundle v0.3 is supported.")
    envelope = document.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise ClaimFailed("bundle has no dsseEnvelope; rebuild signs statements as DSSE "
                          "envelopes, and a bare message signature is not accepted.")
    payload = envelope.get("payload")
    payload_type = envelope.get("payloadType")
    signatures = envelope.get("signatures")
    if not isinstance(payload, str) or not isinstance(payload_type, str):
        raise ClaimFailed("bundle dsseEnvelope lacks a payload or payloadType string.")
    # One signature, as the Sigstore bundle spec requires for DSSE.
    if not isinstance(signatures, list) or len(signatures) != 1 or not isinstance(
            signatures[0], dict) or not isinstance(signatures[0].get("sig"), str):
        raise ClaimFailed("bundle dsseEnvelope must hold exactly one signature {sig, keyid}.")
    signature_keyid = signatures[0].get("keyid")
    if signature_keyid is not None and not isinstance(signature_keyid, str):
        raise ClaimFailed("bundle signature keyid is not a string.")
    material = document.get("verificationMaterial")
    public_key = material.get("publicKey") if isinstance(material, dict) else None
    hint = public_key.get("hint") if isinstance(public_key, dict) else None
    if public_key is not None and not isinstance(hint, str):
        raise ClaimFailed("bundle verificationMaterial.publicKey has no hint string.")
    return _Bundle(_unb64(payload, "payload"), payload_type,
                   _unb64(signatures[0]["sig"], "signature"), signature_keyid, hint)


def _statement(payload: bytes) -> dict[str, Any]:
    statement = _strict_json(payload, "statement")
    if not isinstance(statement, dict):
        raise ClaimFailed("the signed payload is not a JSON object, so not an in-toto statement.")
    return statement


def _strict_json(data: bytes, what: str) -> Any:
    # Duplicate keys and NaN would let two verifiers read different content from the same
    # signed bytes; refuse them instead of picking one reading.
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate key in {what}")
        return dict(items)

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data, object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ClaimFailed(f"{what} is not valid JSON: {e}") from e


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ClaimFailed(f"bundle {what} is not valid base64: {e}") from e


def _short(key_id: str) -> str:
    return key_id[:12] + "…" if len(key_id) > 12 else key_id
