"""A rebuilder: reproduce every release of a remote store that has no verdict from its key yet.

Each release is pulled into the local cache store of the registry, reproduced there offline
(`reproduce`) and its signed verdict pushed back with the closure. Several workers, on one
machine or many, share a registry without losing or duplicating verdicts:

- a worker *claims* a release before it works on it: a small referrer
  (`application/vnd.rebuild.claim.v1+json`, subject = the release) naming the key, the worker
  and the end of its lease; a claim whose lease ended (a worker that died) claims nothing;
- it skips a release that has a verdict from its key, or a live claim of another worker of
  that key that came first: of the live claims the earliest (time, then digest) wins, and a
  worker looks again after a pause, so two claims placed at once settle on one;
- right before it pushes, it looks for a verdict from its key once more and keeps its own
  in the cache when another worker's arrived meanwhile.

Claims only schedule work; nothing trusts them (an unsigned claim could at worst delay a
verdict by one lease). If two workers still race, `show` counts one verdict per key.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rebuild.errors import RebuildError
from rebuild.evidence.sign import StatementSigner
from rebuild.release.reproduce import reproduce
from rebuild.store.layout import (
    EMPTY_DIGEST,
    KIND,
    OCI_EMPTY,
    SIGNER_ANN,
    Descriptor,
    Store,
    artifact_manifest,
    canonical_json,
)
from rebuild.store.registry import Registry, parse_remote
from rebuild.store.transfer import (
    CLAIM_TYPE,
    CLOSURE_TYPE,
    attach_referrer,
    cache_location,
    list_referrers,
    list_releases,
    split_release,
    transfer,
)

Log = Callable[[str], None]
VERDICT_TYPE = "application/vnd.rebuild.verdict.v1+json"
WORKER_ANN = "dev.rebuild.claim.worker"
CREATED_ANN = "dev.rebuild.claim.created"  # seconds since the epoch
EXPIRES_ANN = "dev.rebuild.claim.expires"
EMPTY = Descriptor(OCI_EMPTY, EMPTY_DIGEST, 2)


@dataclass(frozen=True)
class Claim:
    digest: str
    keyid: str
    worker: str
    created: float
    expires: float


@dataclass(frozen=True)
class Outcome:
    release: str
    state: str  # reproduced | not reproduced | skipped | failed
    detail: str
    verdict: str | None = None
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "state": self.state, "detail": self.detail,
                "verdict": self.verdict}


def claim_manifest(subject: Descriptor, keyid: str, worker: str, now: float,
                   lease: int) -> bytes:
    """A claim on `subject` by `worker` for `keyid` until now + lease (pure)."""
    return canonical_json(artifact_manifest(
        CLAIM_TYPE, [EMPTY], subject=subject,
        annotations={SIGNER_ANN: keyid, WORKER_ANN: worker, CREATED_ANN: f"{now:.6f}",
                     EXPIRES_ANN: f"{now + lease:.6f}"}))


def parse_claims(referrers: Iterable[tuple[Descriptor, bytes]]) -> list[Claim]:
    claims = []
    for descriptor, data in referrers:
        if descriptor.artifact_type != CLAIM_TYPE:
            continue
        notes = json.loads(data).get("annotations") or {}
        try:
            claims.append(Claim(descriptor.digest, str(notes[SIGNER_ANN]),
                                str(notes[WORKER_ANN]), float(notes[CREATED_ANN]),
                                float(notes[EXPIRES_ANN])))
        except (KeyError, ValueError):
            continue  # not a claim this version understands: it claims nothing
    return claims


def verdict_signers(referrers: Iterable[tuple[Descriptor, bytes]]) -> set[str]:
    """The keys that attached a verdict: from the verdict referrers themselves and from the
    index entries the closure manifests carry."""
    signers: set[str] = set()
    for descriptor, data in referrers:
        if descriptor.artifact_type == VERDICT_TYPE:
            signers.add(str((descriptor.annotations or {}).get(SIGNER_ANN)))
        elif descriptor.artifact_type == CLOSURE_TYPE:
            for layer in json.loads(data).get("layers") or []:
                notes = layer.get("annotations") or {}
                if notes.get(KIND) == "verdict":
                    signers.add(str(notes.get(SIGNER_ANN)))
    return signers


def first_live_claim(claims: Sequence[Claim], keyid: str, now: float) -> Claim | None:
    """The claim that holds the release for `keyid`: the earliest live one (pure)."""
    live = [c for c in claims if c.keyid == keyid and c.expires > now]
    return min(live, key=lambda c: (c.created, c.digest)) if live else None


def rebuild_pending(location: str, signer: StatementSigner, *, cache_root: Path, lease: int,
                    log: Log, debug: Log = lambda _: None,
                    settle: float = 1.0) -> list[Outcome]:
    """Reproduce every release in the remote store `location` with no verdict from
    `signer`'s key, attaching each verdict there."""
    remote = parse_remote(location)
    keyid = signer.identity
    worker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    cache = cache_location(remote, cache_root)
    registry = Registry.connect(remote)
    outcomes = []
    try:
        releases = list_releases(registry)
        log(f"{remote}: {len(releases)} release(s); worker {worker}")
        for release in releases:
            try:
                outcomes.append(_rebuild_one(registry, location, release, signer, keyid,
                                             worker, cache, cache_root, lease, settle, log,
                                             debug))
            except RebuildError as exc:
                log(f"{release}: {exc}")
                outcomes.append(Outcome(release, "failed", str(exc), None, exc.exit_code))
    finally:
        registry.close()
    return outcomes


def _rebuild_one(registry: Registry, location: str, release: str, signer: StatementSigner,
                 keyid: str, worker: str, cache: Path, cache_root: Path, lease: int,
                 settle: float, log: Log, debug: Log) -> Outcome:
    name, version = split_release(release)
    repo = registry.remote.release_repository(name)
    found = registry.get_manifest(repo, version)
    if found is None:
        return Outcome(release, "skipped", "gone from the registry")
    data, media = found
    subject = Descriptor(json.loads(data).get("mediaType") or media,
                         "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    referrers = list_referrers(registry, repo, subject.digest, log)
    if keyid in verdict_signers(referrers):
        return Outcome(release, "skipped", "has a verdict from this key")
    holder = first_live_claim(parse_claims(referrers), keyid, time.time())
    if holder is not None:
        return Outcome(release, "skipped", f"claimed by {holder.worker}")
    mine = attach_referrer(registry, repo,
                           claim_manifest(subject, keyid, worker, time.time(), lease), log)
    # Claims placed at the same moment: each worker looks again once all are visible.
    time.sleep(settle * random.uniform(1.0, 1.5))  # noqa: S311 (a pause, not a secret)
    referrers = list_referrers(registry, repo, subject.digest, log)
    holder = first_live_claim(parse_claims(referrers), keyid, time.time())
    if holder is None or holder.digest != mine:
        return Outcome(release, "skipped",
                       f"claimed first by {holder.worker if holder else 'another worker'}")
    if keyid in verdict_signers(referrers):
        return Outcome(release, "skipped", "has a verdict from this key")
    log(f"{release}: claimed ({mine}); pulling into {cache}")
    transfer(location, str(cache), release, log=log)
    verdict = reproduce(Store(cache), release, cache_dir=cache_root, signer=signer, log=log,
                        debug=debug)
    state = "reproduced" if verdict.reproducible else "not reproduced"
    if keyid in verdict_signers(list_referrers(registry, repo, subject.digest, log)):
        return Outcome(release, state, "another worker attached a verdict from this key "
                       "meanwhile; this one stays in the cache", verdict.verdict,
                       0 if verdict.reproducible else 1)
    transfer(str(cache), location, release, log=log)
    return Outcome(release, state, "verdict attached", verdict.verdict,
                   0 if verdict.reproducible else 1)

