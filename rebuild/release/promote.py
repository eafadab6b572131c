"""Promotion: the exact bytes of a verified release copied into an environment's repository,
and a signed statement saying so (`https://rebuild.dev/promotion/v1`).

Nothing is built: the release is verified against the environment's policy with
`verify_release` (whatever that policy asks, it asks here too), every environment it
`requires` must hold a promotion of the same release manifest signed by a key that
environment's policy trusts, and only then is the closure copied, every digest kept. A
failure of any of these copies nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rebuild.attest import attach_statement
from rebuild.errors import ClaimFailed, SigningError, StoreError, UsageError
from rebuild.evidence.provenance import STATEMENT_TYPE
from rebuild.evidence.sign import KeySigner
from rebuild.release.environments import Environment, Environments
from rebuild.release.verify import (
    Policy,
    Report,
    resolve_release,
    signed_statements,
    verify_release,
)
from rebuild.store.layout import Descriptor, Store, canonical_json
from rebuild.store.registry import is_remote, parse_remote
from rebuild.store.transfer import Transferred, cache_location, remote_has, transfer
from rebuild.twin import release_artifacts

PROMOTION = "https://rebuild.dev/promotion/v1"
# What checking a release's evidence does not read: the inputs and the base image archive
# (hundreds of MiB), left in the registry when a promotion or a gate reads from it.
NOT_EVIDENCE = frozenset({"inputs", "image"})
Log = Callable[[str], None]


def promotion_statement(*, release: str, manifest: str, artifacts: Mapping[str, str],
                        source: Mapping[str, Any], env: Environment, policy_digest: str,
                        report: Report, name: str, keyid: str, time: datetime
                        ) -> dict[str, Any]:
    """The promotion statement (pure): subjects are the release's artifacts, like every
    statement about a release."""
    passed = sum(c.ok for c in report.checks)
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(artifacts.items())],
            "predicateType": PROMOTION,
            "predicate": {
                "release": release,
                "manifest": manifest,
                "artifacts": {n: f"sha256:{d}" for n, d in sorted(artifacts.items())},
                "from": dict(source),
                "to": {"environment": env.name, "repository": env.location},
                "policy": {"uri": env.policy_uri, "digest": {"sha256": policy_digest},
                           "result": "PASSED" if report.ok else "FAILED",
                           "checks": {"passed": passed, "total": len(report.checks)}},
                "signer": {"name": name, "keyid": keyid},
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ")}}


@dataclass(frozen=True)
class Promotion:
    release: str
    manifest: str
    environment: str
    repository: str
    record: str  # the promotion record (artifact manifest) in the source store
    statement: str  # digest of the signed statement
    copied: Transferred
    policy: Report

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "manifest": self.manifest,
                "environment": self.environment, "repository": self.repository,
                "promotion": self.record, "statement": self.statement,
                "copied": self.copied.to_json(),
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                           for c in self.policy.checks]}


def valid_promotions(store: Store, release: Descriptor, name: str, env: Environment,
                     trusted: tuple[Any, ...], now: datetime | None = None
                     ) -> list[tuple[str, dict[str, Any]]]:
    """(key id, statement) of each promotion of `release` into `env` found in `store`: signed
    by a trusted key, about exactly this release manifest and its artifacts, into this
    environment's repository, after its policy PASSED, and made no later than `now`."""
    artifacts = {a.name: a.sha256 for a in release_artifacts(store, release)}
    found = []
    for keyid, statement in signed_statements(store, release, "promotion", trusted,
                                              artifacts, name):
        predicate = statement.get("predicate", {})
        to = predicate.get("to", {})
        when = predicate.get("time")
        if predicate.get("manifest") != release.digest or \
                to.get("environment") != env.name or to.get("repository") != env.location or \
                predicate.get("policy", {}).get("result") != "PASSED" or \
                not isinstance(when, str):
            continue
        if now is not None and when > now.strftime("%Y-%m-%dT%H:%M:%SZ"):
            continue  # not yet made at the time of evaluation
        found.append((keyid, statement))
    return found


def environment_store(env: Environment, release: str, cache_root: Path, log: Log
                      ) -> Store | None:
    """A local store holding `release` as the environment's repository has it: the directory
    itself, or the release's closure, less its inputs, pulled from the registry into its
    cache (every blob checked). None when the repository does not hold the release."""
    if not env.remote:
        store = Store(Path(env.repository))
        return store if store.exists() and store.find(release) is not None else None
    if not remote_has(env.repository, release):
        return None
    cache = cache_location(parse_remote(env.repository), cache_root)
    transfer(env.repository, str(cache), release, log=log, skip=NOT_EVIDENCE)
    return Store(cache)


def promoters(env: Environment, policy: Policy) -> tuple[Any, ...]:
    if not policy.promoters:
        raise UsageError(f"{env.policy_path}: the policy of environment {env.name} names no "
                         "promoter_keys, so no promotion into it can count; add "
                         "promoter_keys = [\"keys/release.pub\"]")
    return policy.promoters


def check_required(envs: Environments, env: Environment, release: str, manifest: str,
                   cache_root: Path, log: Log) -> None:
    """Every environment `env` requires holds a valid promotion of this exact release
    manifest (exit 1 naming the first that does not)."""
    for required_name in env.requires:
        required = envs.get(required_name)
        trusted = promoters(required, required.load_policy())
        store = environment_store(required, release, cache_root, log)
        held = store.find(release) if store is not None else None
        if store is None or held is None:
            raise ClaimFailed(f"promotion into {env.name} refused: {release} was never "
                              f"promoted into {required.name}, which {env.name} requires "
                              f"first ({required.location} does not hold it); nothing was "
                              "copied")
        if held.digest != manifest:
            raise ClaimFailed(f"promotion into {env.name} refused: {required.location} holds "
                              f"{release} as {held.digest}, not {manifest}; nothing was copied")
        if not valid_promotions(store, held, release, required, trusted):
            raise ClaimFailed(f"promotion into {env.name} refused: {required.location} holds "
                              f"{release} but no promotion into {required.name} signed by a "
                              f"key its policy trusts (promoter_keys); nothing was copied")


def copy_origin(envs: Environments, env: Environment, source: str) -> str:
    """Where the bytes are copied from: the store promoted from, or a required environment
    on the same registry as `env`, which holds the same release manifest (checked) and whose
    blobs the registry then mounts instead of receiving them again. What only the source
    holds (a newer approval, the promotion) follows in the second copy."""
    if is_remote(source) or not env.remote:
        return source
    base = parse_remote(env.repository).base
    for name in env.requires:
        required = envs.get(name)
        if required.remote and parse_remote(required.repository).base == base:
            return required.repository
    return source


def promote(store: Store, source: str, target: str, envs: Environments, env: Environment, *,
            signer: KeySigner, name: str, time: datetime, cache_root: Path,
            log: Log) -> Promotion:
    """Promote `target` (name@version) from `store` (its copy of `source`, a directory or a
    remote location) into `env`; returns what was done."""
    if target.startswith("sha256:"):
        raise UsageError("promote names a release: write NAME@VERSION")
    policy = env.load_policy()
    if signer.identity not in {k.keyid for k in promoters(env, policy)}:
        raise SigningError(f"key {signer.identity[:16]}… is not among the promoter_keys of "
                           f"{env.policy_path}: a promotion it signed would not count in "
                           f"{env.name}; nothing was copied")
    release = resolve_release(store, target)
    report = verify_release(store, target, policy)
    if not report.ok:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
        raise ClaimFailed(f"promotion into {env.name} refused: {target} does not meet "
                          f"{env.policy_uri} ({failed}); nothing was copied")
    ref = str(report.release)  # the name the signed provenance gives, bound to the manifest
    check_required(envs, env, ref, release.digest, cache_root, log)
    copied = transfer(copy_origin(envs, env, source), env.repository, ref, log=log,
                      expect=release.digest)
    artifacts = {a.name: a.sha256 for a in release_artifacts(store, release)}
    origin = next((e.name for e in envs.order if e.repository == source), None)
    statement = promotion_statement(
        release=ref, manifest=release.digest, artifacts=artifacts,
        source={"environment": origin,
                "repository": source if "://" in source else "local store"},
        env=env, policy_digest=env.policy_digest(), report=report, name=name,
        keyid=signer.identity, time=time)
    record = attach_statement(store, release, ref, "promotion", statement, signer)
    # The promotion travels with the release: the second copy sends only its record.
    try:
        transfer(str(store.root), env.repository, ref, log=log, expect=release.digest)
    except StoreError as exc:
        raise StoreError(f"{ref} was copied into {env.location} but its promotion record "
                         f"could not follow ({exc}); run the promotion again") from None
    digest = "sha256:" + hashlib.sha256(canonical_json(statement)).hexdigest()
    return Promotion(ref, release.digest, env.name, env.location, record, digest, copied,
                     report)
