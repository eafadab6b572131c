"""`rebuild keygen`: signing key pairs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rebuild.errors import UsageError

if TYPE_CHECKING:
    pass

from rebuild.cli.common import JsonOpt, command_options, emit, say


def keygen(
    out: Annotated[Path, typer.Option("--out", help="Writes OUT.key (0600) and OUT.pub.")],
    algorithm: Annotated[str, typer.Option(
        "--algorithm", help="ecdsa-p256 (default) or ed25519.")] = "ecdsa-p256",
    json_out: JsonOpt = False,
) -> None:
    """Make a signing key pair; a passphrase is taken from REBUILD_KEY_PASSPHRASE if set."""
    from rebuild.evidence.sign import generate_keypair, passphrase_from_env

    opts = command_options(None, json_out)
    if algorithm not in ("ecdsa-p256", "ed25519"):
        raise UsageError(f"--algorithm {algorithm!r}: choose ecdsa-p256 or ed25519")
    pair = generate_keypair(out, algorithm=algorithm,  # type: ignore[arg-type]
                            passphrase=passphrase_from_env())
    if opts.json:
        emit({"private": str(pair.private_path), "public": str(pair.public_path),
              "keyid": pair.keyid, "algorithm": algorithm})
    say(f"wrote {pair.private_path} (private, 0600) and {pair.public_path}; key id "
        f"{pair.keyid}")
