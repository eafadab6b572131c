"""What every command shares: the global options, the common option types, and the one way
to print (text for people on stderr, one JSON document on stdout).

Commands import the stages they use inside themselves: `rebuild show` or `--version` need
neither Docker's SDK nor the recipe models, and start-up time is most of a small command.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rebuild.errors import UsageError

if TYPE_CHECKING:
    from rebuild.evidence.sign import StatementSigner
    from rebuild.store.transfer import Transferred


LogKeyOpt = Annotated[Path | None, typer.Option(
    "--log-key", help="The log's public key (PREFIX.pub of `rebuild log keygen`), pinned: "
    "checkpoint signatures are checked against it.", metavar="PUB", show_default=False)]

TsaCertOpt = Annotated[Path | None, typer.Option(
    "--tsa-cert", help="The timestamp authority's certificate chain (PEM: its root and any "
    "intermediates), pinned: the log's RFC 3161 tokens are checked against it.",
    metavar="FILE", show_default=False)]

StoreOpt = Annotated[Path | None, typer.Option(
    "--store", help="Store directory (env REBUILD_STORE; default .rebuild/store).",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
KeyOpt = Annotated[Path | None, typer.Option(
    "--key", help="Key file: PREFIX.key signs, PREFIX.pub verifies (passphrase: env "
    "REBUILD_KEY_PASSPHRASE).", show_default=False)]
KeylessOpt = Annotated[bool, typer.Option(
    "--keyless", help="Sign keyless with Sigstore (Fulcio certificate, Rekor entry) as the "
    "OIDC identity of env SIGSTORE_ID_TOKEN or of the CI's ambient credential.")]
TrustConfigOpt = Annotated[Path | None, typer.Option(
    "--trust-config", help="Sigstore client trust config (JSON) naming Fulcio, Rekor and "
    "their roots (default: Sigstore's public-good instance).", metavar="FILE",
    show_default=False)]


@dataclass
class Options:
    store: Path
    json: bool
    debug: bool
    key: Path | None = None

    @property
    def cache(self) -> Path:
        default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rebuild"
        return Path(os.environ.get("REBUILD_CACHE", default))


def remote_location(store: Path) -> str | None:
    """`--store oci://HOST/REPOSITORY` as the location it names: the option arrives as a Path,
    which folds `//` into `/`. None for a store directory."""
    match = re.fullmatch(r"(oci|oci\+http):/+(.+)", str(store))
    return f"{match.group(1)}://{match.group(2)}" if match else None


def store_for(opts: Options, release: str) -> Path:
    """The store directory a command runs on: --store itself, or for a remote store its local
    cache with `release`'s closure pulled into it (every blob checked against its digest)."""
    location = remote_location(opts.store)
    if location is None:
        return opts.store
    from rebuild.store.registry import parse_remote
    from rebuild.store.transfer import cache_location, transfer

    cache = cache_location(parse_remote(location), opts.cache)
    transfer(location, str(cache), release, log=say)
    return cache


def push_back(opts: Options, store: Path, release: str) -> None:
    """After a command wrote into the cache of a remote store: push what it added."""
    location = remote_location(opts.store)
    if location is not None:
        from rebuild.store.transfer import transfer

        result = transfer(str(store), location, release, log=say)
        say(f"{release}: pushed to {location} ({result.manifests_sent} manifest(s), "
            f"{result.blobs_sent} blob(s) sent)")


OPTIONS = Options(Path(".rebuild/store"), json=False, debug=False)


def command_options(store: Path | None, json_out: bool, key: Path | None = None) -> Options:
    if store is not None:
        OPTIONS.store = store
    if key is not None:
        OPTIONS.key = key
    OPTIONS.json = OPTIONS.json or json_out
    return OPTIONS


def say(message: str) -> None:
    # One write with its newline: the lines of runs printing at once never interleave.
    sys.stderr.write(terminal_safe(message) + "\n")
    sys.stderr.flush()


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Control characters (terminal escapes) from names a build chose, shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def shown(name: str) -> str:
    """An output name for a line of text: as it is, or quoted and escaped (repr) when it
    holds a newline or another character that is not printable."""
    return name if name.isprintable() else repr(name)


def emit(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def make_signer(opts: Options, what: str = "evidence", *, keyless: bool = False,
            trust_config: Path | None = None) -> StatementSigner | None:
    if keyless and opts.key is not None:
        raise UsageError("--key and --keyless: choose one way to sign")
    if trust_config is not None and not keyless:
        raise UsageError("--trust-config is for keyless signing: add --keyless")
    if opts.key is None and not keyless:
        say(f"warning: the {what} will not be signed; pass --key PREFIX.key "
            "(`rebuild keygen --out PREFIX` makes one) or --keyless")
        return None
    # Loaded only to sign: an unsigned build loads neither it nor cryptography.
    from rebuild.evidence.sign import KeylessSigner, KeySigner, load_signer, passphrase_from_env

    if opts.key is not None:
        return KeySigner(load_signer(opts.key, passphrase_from_env()))
    if trust_config is None:
        say("signing keyless with Sigstore's public-good instance (Fulcio, Rekor); pass "
            "--trust-config FILE for another")
    # Fails now (exit 6) without a token or with a bad trust config, before any build.
    return KeylessSigner(trust_config)


def tsa_trust(path: Path | None) -> Any:
    from rebuild.store.timestamp import load_tsa_trust

    return load_tsa_trust(path) if path is not None else None


def log_verifier(path: Path | None) -> Any:
    from rebuild.store.auditlog import load_log_verifier

    return load_log_verifier(path) if path is not None else None


Location = Annotated[str, typer.Argument(
    metavar="STORE", help="A store directory, or oci://HOST[:PORT]/REPOSITORY "
    "(oci+http:// for a plain-HTTP registry on this machine).")]


def report_transfer(result: Transferred, what: str, destination: str, json_out: bool) -> None:
    """What a copy between stores (`store push/pull/copy`, `image push/pull`) did: one JSON
    document from the same data as the line for people."""
    if json_out:
        emit(result.to_json())
    say(f"{what} ({result.digest}): {result.manifests} manifest(s) and {result.blobs} "
        f"blob(s) in {destination}; sent {result.blobs_sent} blob(s) ({result.bytes_sent} "
        f"bytes) and {result.manifests_sent} manifest(s), the rest were there already")
