"""Commands about environments: `promote` (a verified release into an environment's
repository, signed) and `gate` (may this artifact run there now?)."""

from __future__ import annotations

import getpass
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rebuild.cli.common import (
    JsonOpt,
    KeyOpt,
    StoreOpt,
    command_options,
    emit,
    make_signer,
    push_back,
    remote_location,
    say,
    store_for,
)
from rebuild.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from rebuild.evidence.sign import StatementSigner
    from rebuild.release.gate import GateResult

EnvironmentsOpt = Annotated[Path | None, typer.Option(
    "--environments", help="The environments file (default: environments.toml here, or "
    "recipes/environments.toml).", metavar="FILE", show_default=False)]


def promote_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version).")],
    to: Annotated[str, typer.Option("--to", help="The environment to promote into.",
                                    metavar="ENV")],
    environments: EnvironmentsOpt = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="The promoter's printed name (default: env REBUILD_SIGNER_NAME, or the "
        "login name).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
) -> None:
    """Verify a release against an environment's policy, copy its exact bytes into the
    environment's repository and sign the promotion. Never builds."""
    from datetime import UTC, datetime

    from rebuild.evidence.sign import KeySigner
    from rebuild.release.environments import find_environments, load_environments
    from rebuild.release.promote import promote
    from rebuild.store.layout import Store

    opts = command_options(store, json_out, key)
    if opts.key is None:
        raise UsageError("a promotion must be signed: pass --key PREFIX.key")
    envs = load_environments(find_environments(environments))
    env = envs.get(to)
    signer = make_signer(opts, what="promotion")
    assert isinstance(signer, KeySigner)
    location = remote_location(opts.store)
    directory = store_for(opts, target)
    source = location or str(directory.absolute())
    done = promote(Store(directory), source, target, envs, env, signer=signer,
                   name=name or os.environ.get("REBUILD_SIGNER_NAME") or getpass.getuser(),
                   time=datetime.now(UTC), cache_root=opts.cache, log=say)
    push_back(opts, directory, done.release)
    say(f"{done.release}: promoted into {env.name} ({env.location}) as {done.manifest}; "
        f"{done.copied.manifests} manifest(s) and {done.copied.blobs} blob(s), "
        f"{done.copied.blobs_sent} blob(s) sent, {done.copied.blobs_mounted} mounted; "
        f"promotion {done.record}")
    if opts.json:
        emit(done.to_json())


def gate_cmd(
    artifact: Annotated[str, typer.Argument(help="sha256:<hex>, REPOSITORY@sha256:<hex>, or "
                                                  "a file (hashed).")],
    env_name: Annotated[str, typer.Option("--env", help="The environment to deploy into.",
                                          metavar="ENV")],
    environments: EnvironmentsOpt = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Judge by this policy instead of the environment's (its "
        "promoter_keys say whose promotions count).", metavar="FILE",
        show_default=False)] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
) -> None:
    """Exit 0 only when the artifact was promoted into ENV by a trusted key and the policy
    still holds now; --json prints an SLSA verification summary, --key signs it."""
    from datetime import UTC, datetime

    from rebuild.release.environments import find_environments, load_environments
    from rebuild.release.gate import evaluate, parse_artifact, summary_statement
    from rebuild.release.policy import load_policy
    from rebuild.release.verify import NOW_ENV, evaluation_time

    opts = command_options(store, json_out, key)
    envs = load_environments(find_environments(environments))
    env = envs.get(env_name)
    ref = parse_artifact(artifact)
    signer = make_signer(opts, what="gate summary") if opts.key is not None else None
    policy_path = policy or env.policy_path
    rules = load_policy(policy_path)
    try:
        policy_digest = hashlib.sha256(policy_path.read_bytes()).hexdigest()
    except OSError as exc:
        raise UsageError(f"{policy_path}: cannot read the policy ({exc.strerror})") from None
    now = evaluation_time()
    result = evaluate(env, ref, rules, now=now, cache_root=opts.cache, log=say)
    summary = summary_statement(
        result, policy_uri=str(policy) if policy else env.policy_uri,
        policy_digest=policy_digest, verified=datetime.now(UTC),
        evaluated=now if os.environ.get(NOW_ENV) else None)
    for check in result.checks:
        say(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    verdict = "PASSED" if result.passed else "FAILED"
    say(f"{ref.given} in {env.name}: {verdict}"
        + (f" ({result.release})" if result.release else ""))
    bundle = signer.sign(summary) if signer is not None else None
    _log_gate(result, summary, signer)
    if opts.json:
        import json

        emit(json.loads(bundle) if bundle is not None else summary)
    if not result.passed:
        raise typer.Exit(ExitCode.CLAIM_FAILED)


def _log_gate(result: GateResult, summary: dict[str, Any],
              signer: StatementSigner | None) -> None:
    """The decision goes into the environment's own store when it is a directory this
    process may write; a registry or a read-only store is only read."""
    from rebuild.attest import attach_statement
    from rebuild.store.auditlog import log_gate
    from rebuild.store.layout import canonical_json

    store = result.store
    if result.env.remote or store is None or result.release is None or \
            result.manifest is None or not os.access(store.root, os.W_OK):
        return
    try:
        release = store.find(result.release)
        if release is None:
            return
        if signer is not None:
            attach_statement(store, release, result.release, "gate", summary, signer)
        else:
            digest, _ = store.put_bytes(canonical_json(summary))
            log_gate(store, release=result.release, manifest=result.manifest,
                     summary=summary, summary_digest=digest)
    except OSError as exc:
        say(f"warning: the gate's decision was not logged in {store.root} ({exc.strerror})")
