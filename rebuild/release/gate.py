"""The deploy gate: may this artifact run in this environment, now?

Yes only when a release in the environment's repository holds the artifact, that release
has a promotion into the environment signed by a key the environment's policy trusts
(`promoter_keys`), and the release still meets the policy at the time of evaluation
(`verify_release`: a withdrawn approval, or anything else the policy counts, is judged as it
stands now). The answer is an SLSA verification summary (`verification_summary/v1`) whose
`resourceUri` is the artifact in the environment and whose `inputAttestations` name every
statement relied on. Works on a read-only store and on a registry: nothing is written there.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rebuild import __version__
from rebuild.checks import Check
from rebuild.errors import StoreError, UsageError
from rebuild.evidence.provenance import STATEMENT_TYPE
from rebuild.release.environments import Environment
from rebuild.release.promote import environment_store, promoters, valid_promotions
from rebuild.release.verify import Policy, Report, signed_statements, verify_release
from rebuild.store.layout import REF_NAME, TITLE, Descriptor, Store, canonical_json
from rebuild.store.registry import Registry, parse_remote
from rebuild.store.transfer import list_releases, split_release
from rebuild.twin import release_artifacts

VSA = "https://slsa.dev/verification_summary/v1"
GATE_VERIFIER = "https://rebuild.dev/verifier/gate@v1"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
Log = Callable[[str], None]


@dataclass(frozen=True)
class ArtifactRef:
    digest: str  # sha256:<hex>
    given: str  # as the caller wrote it
    repository: str | None = None  # REPO of REPO@sha256:…


def parse_artifact(text: str) -> ArtifactRef:
    """A digest, REPO@sha256:<hex>, or a file (hashed). Anything else exits 2."""
    if _DIGEST.fullmatch(text):
        return ArtifactRef(text, text)
    repo, sep, digest = text.rpartition("@")
    if sep and repo and _DIGEST.fullmatch(digest):
        return ArtifactRef(digest, text, repo)
    path = Path(text)
    if path.is_file():
        hasher = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    hasher.update(chunk)
        except OSError as exc:
            raise UsageError(f"{text}: cannot read the artifact ({exc.strerror})") from None
        return ArtifactRef("sha256:" + hasher.hexdigest(), text)
    raise UsageError(f"{text!r} is not an artifact: give sha256:<64 hex>, "
                     "REPOSITORY@sha256:<64 hex>, or a file")


def _bare(location: str) -> str:
    return location.split("://", 1)[-1].rstrip("/")


def in_repository(ref: ArtifactRef, env: Environment) -> bool:
    """REPO@… names the environment's repository (or a release repository under it)."""
    if ref.repository is None:
        return True
    repo, env_repo = _bare(ref.repository), _bare(env.location)
    return repo == env_repo or repo.startswith(env_repo + "/")


@dataclass
class GateResult:
    env: Environment
    artifact: ArtifactRef
    release: str | None = None
    manifest: str | None = None
    checks: list[Check] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # inputAttestations
    store: Store | None = None  # where the release was evaluated

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


def _candidates(registry: Registry, env: Environment, ref: ArtifactRef) -> list[str]:
    """The releases to look in: those of the release repository REPO@… names, or all."""
    repo, env_repo = _bare(ref.repository or ""), _bare(env.location)
    if repo.startswith(env_repo + "/"):
        name = repo[len(env_repo) + 1:]
        return [f"{name}@{tag}" for tag in registry.tags(registry.remote.release_repository(
            name)) if not tag.startswith("sha256-")]
    return list_releases(registry)


def find_release(env: Environment, ref: ArtifactRef, cache_root: Path, log: Log
                 ) -> tuple[Store, str] | None:
    """The release (and a local store holding it) in the environment's repository whose
    artifacts include `digest`: the store's index, or each release manifest of the registry
    (one small GET each) until one lists it."""
    digest = ref.digest
    if not env.remote:
        store = Store(Path(env.repository))
        if not store.exists():
            return None
        for entry in store.entries("release"):
            layers = store.read_json(entry.digest).get("layers", [])
            if any(layer.get("digest") == digest for layer in layers):
                name = (entry.annotations or {}).get(REF_NAME)
                if name:
                    return store, name
        return None
    registry = Registry.connect(parse_remote(env.repository))
    try:
        for release in _candidates(registry, env, ref):
            name, version = split_release(release)
            got = registry.get_manifest(registry.remote.release_repository(name), version)
            if got is None:
                continue
            try:
                layers = json.loads(got[0]).get("layers", [])
            except ValueError:
                continue
            if any(isinstance(layer, dict) and layer.get("digest") == digest
                   for layer in layers):
                break
        else:
            return None
    finally:
        registry.close()
    pulled = environment_store(env, release, cache_root, log)
    return (pulled, release) if pulled is not None else None


def evaluate(env: Environment, ref: ArtifactRef, policy: Policy, *, now: datetime,
             cache_root: Path, log: Log) -> GateResult:
    """The gate's decision, with each check and every statement it relied on."""
    result = GateResult(env, ref)
    trusted = promoters(env, policy)
    if not in_repository(ref, env):
        result.add("repository", False, f"{ref.repository} is not the repository of "
                   f"{env.name} ({env.location})")
        return result
    found = find_release(env, ref, cache_root, log)
    if found is None:
        result.add("artifact", False, f"no release in {env.location} holds {ref.digest}: "
                   f"it was never promoted into {env.name}")
        return result
    store, name = found
    release = store.find(name)
    if release is None:
        raise StoreError(f"{name} vanished from {store.root} while it was being read")
    result.store, result.release, result.manifest = store, name, release.digest
    result.add("artifact", True, f"{ref.digest} is an artifact of {name} in {env.location}")
    promotions = valid_promotions(store, release, name, env, trusted, now)
    signers = ", ".join(sorted({f"key {keyid[:16]}…" for keyid, _ in promotions}))
    result.add("promotion", bool(promotions),
               f"promoted into {env.name}, signed by {signers}" if promotions else
               f"no promotion of {name} into {env.name} signed by a key its policy trusts "
               "(promoter_keys)")
    result.inputs += [_input("promotion", st) for _, st in promotions]
    report = verify_release(store, name, policy)
    for check in report.checks:
        result.add(f"policy: {check.name}", check.ok, check.detail)
    result.inputs += _relied_on(store, release, name, policy, report)
    return result


def _input(kind: str, statement: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(canonical_json(statement)).hexdigest()
    return {"uri": f"{kind}.json", "digest": {"sha256": digest}}


def _relied_on(store: Store, release: Descriptor, name: str, policy: Policy,
               report: Report) -> list[dict[str, Any]]:
    """The statements the policy evaluation counted: the build's evidence, the QA verdicts
    from trusted keys and the approvals of trusted keys that were not withdrawn."""
    out = [_input(kind, st) for kind, st in sorted(report.statements.items())]
    artifacts = {a.name: a.sha256 for a in release_artifacts(store, release)}
    if policy.verdicts:
        out += [_input("verdict", st) for _, st in signed_statements(
            store, release, "verdict", policy.qa_keys, artifacts, name)]
    for role_keys in policy.approvals.values():
        withdrawn = {st.get("predicate", {}).get("withdraws", {}).get("approval")
                     for _, st in signed_statements(store, release, "withdrawal", role_keys,
                                                    artifacts, name)}
        for _, st in signed_statements(store, release, "approval", role_keys, artifacts, name):
            item = _input("approval", st)
            if "sha256:" + item["digest"]["sha256"] not in withdrawn and item not in out:
                out.append(item)
    return out


def summary_statement(result: GateResult, *, policy_uri: str, policy_digest: str,
                      verified: datetime, evaluated: datetime | None = None
                      ) -> dict[str, Any]:
    """The SLSA verification summary of a gate decision (pure). `verified`: when it was
    made; `evaluated`: the other instant it was judged as of (REBUILD_NOW), if any."""
    subject = {"name": result.artifact.given, "digest": {
        "sha256": result.artifact.digest.removeprefix("sha256:")}}
    if result.store is not None and result.manifest is not None:
        titles = [layer["annotations"][TITLE]
                  for layer in result.store.read_json(result.manifest)["layers"]
                  if layer["digest"] == result.artifact.digest]
        subject["name"] = titles[0] if titles else subject["name"]
    levels = ([f"REBUILD_ENVIRONMENT_{result.env.name.upper()}"] if result.passed else [])
    predicate: dict[str, Any] = {
        "verifier": {"id": GATE_VERIFIER, "version": {"rebuild": __version__}},
        "timeVerified": verified.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resourceUri": f"{result.env.location}@{result.artifact.digest}",
        "policy": {"uri": policy_uri, "digest": {"sha256": policy_digest}},
        "inputAttestations": sorted(result.inputs, key=lambda i: (i["uri"],
                                                                 i["digest"]["sha256"])),
        "verificationResult": "PASSED" if result.passed else "FAILED",
        "verifiedLevels": levels,
        "environment": result.env.name,
    }
    if evaluated is not None:
        predicate["evaluationTime"] = evaluated.strftime("%Y-%m-%dT%H:%M:%SZ")
    if result.release is not None:
        predicate["release"] = result.release
        predicate["manifest"] = result.manifest
    return {"_type": STATEMENT_TYPE, "subject": [subject], "predicateType": VSA,
            "predicate": predicate}
