"""Verify: check a stored release offline: artifacts, signatures, subjects, provenance, policy.

Every check is recorded with its reason; the claim holds only if all of them pass. What a
verifier trusts comes from the caller (`--key`, or a keyless identity and issuer) or a policy
file, never from the store.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

from rebuild.errors import ClaimFailed, StoreError
from rebuild.evidence.provenance import (
    BUILD_TYPE,
    BUILDER_ID,
    SBOM_PREDICATE,
    SLSA_PROVENANCE,
    TEST_RESULT,
)
from rebuild.evidence.sign import KeylessIdentity, UntrustedSigner, verify_bundle, verify_signed
from rebuild.store.layout import BUNDLE_MEDIA, KIND, REF_NAME, TITLE, Descriptor, Store

PREDICATES = {"provenance": SLSA_PROVENANCE, "sbom": SBOM_PREDICATE,
              "test-result": TEST_RESULT}


@dataclass(frozen=True)
class Policy:
    builder_keys: tuple[SSlibKey, ...]
    reproducible: bool = True
    sbom: bool = True
    tests: bool = False
    verdicts: int = 0
    qa_keys: tuple[SSlibKey, ...] = ()
    approvals: Mapping[str, tuple[SSlibKey, ...]] = field(default_factory=dict)
    keyless: tuple[KeylessIdentity, ...] = ()  # trusted keyless builders (Fulcio identities)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    target: str
    release: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "release": self.release, "verified": self.ok,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                           for c in self.checks]}


def resolve_release(store: Store, target: str) -> Descriptor:
    """A release by `name@version`, or the release holding the artifact `sha256:<hex>`."""
    store.require()
    if target.startswith("sha256:"):
        for entry in store.entries("release"):
            layers = store.read_json(entry.digest)["layers"]
            if any(layer["digest"] == target for layer in layers):
                return entry
        raise StoreError(f"no release in {store.root} holds an artifact {target}")
    named = store.find(target)
    if named is None:
        raise StoreError(f"no release {target!r} in the store {store.root}; "
                         "`rebuild store ls` lists them")
    return named


def verify_release(store: Store, target: str, policy: Policy) -> Report:
    release = resolve_release(store, target)
    report = Report(target, (release.annotations or {}).get(REF_NAME))
    artifacts = _check_artifacts(store, release, report)
    evidence = [e for e in store.referrers(release.digest)
                if (e.annotations or {}).get(KIND) == "evidence"]
    verified: dict[str, dict[str, Any]] = {}
    untrusted: list[str] = []
    for entry in evidence:
        layers = {layer["annotations"][TITLE]: layer
                  for layer in store.read_json(entry.digest)["layers"]}
        for kind in PREDICATES:
            bundle = layers.get(f"{kind}.sigstore.json")
            if bundle is None or bundle["mediaType"] != BUNDLE_MEDIA or kind in verified:
                continue
            try:
                statement = _check_bundle(store, kind, bundle["digest"], policy, report)
            except UntrustedSigner as exc:
                untrusted.append(f"{kind}: {exc}")
                continue
            if statement is not None:
                verified[kind] = statement
    others = f"; {len(untrusted)} statement(s) by keys not given ignored" if untrusted else ""
    detail = (f"verified: {', '.join(sorted(verified)) or 'nothing'} "
              f"({len(evidence)} evidence artifact(s) attached{others})")
    if not verified and untrusted:
        detail += f": {untrusted[0]}"
    if not report.add("signed evidence", bool(verified), detail):
        return report
    for kind, statement in sorted(verified.items()):
        _check_subjects(kind, statement, artifacts, report)
    if "provenance" in verified:
        _check_provenance(verified["provenance"], policy, report)
    else:
        report.add("provenance", False, "no provenance signed by a trusted key")
    if policy.sbom:
        report.add("sbom", "sbom" in verified, "an SBOM signed by a trusted key"
                   if "sbom" in verified else "no SBOM signed by a trusted key")
    if policy.tests:
        result = verified.get("test-result", {}).get("predicate", {}).get("result")
        report.add("tests", result == "PASSED", f"test result: {result or 'none'}")
    if policy.verdicts:
        passed = signed_statements(store, release, "verdict", policy.qa_keys, artifacts)
        keyids = {keyid for keyid, st in passed
                  if st.get("predicate", {}).get("verificationResult") == "PASSED"}
        report.add("QA verdicts", len(keyids) >= policy.verdicts,
                   f"{len(keyids)} PASSED verdict(s) from trusted QA keys, "
                   f"{policy.verdicts} required")
    for role, role_keys in sorted(policy.approvals.items()):
        approvals = [st for _, st in signed_statements(store, release, "approval", role_keys,
                                                        artifacts)
                     if st.get("predicate", {}).get("role") == role]
        names = ", ".join(sorted({a["predicate"]["signer"]["name"] for a in approvals}))
        report.add(f"approval: {role}", bool(approvals),
                   f"approved by {names}" if approvals
                   else f"no {role} approval by a trusted key")
    return report


def verify_bundle_file(path: Path, policy: Policy) -> Report:
    """Verify an exported bundle (`rebuild export`) offline: every byte of the archive, each
    failure naming its file (rebuild.export), then `verify_release` on the layout inside."""
    from rebuild.release.export import open_bundle  # export builds on this module

    with tempfile.TemporaryDirectory(prefix="rebuild-verify-") as tmp:
        bundle = open_bundle(path, Path(tmp))
        report = Report(str(path), bundle.release, list(bundle.checks))
        if bundle.release is None:
            report.add("release", False, "no release to verify: the bundle's index.json is "
                       "missing, unreadable or names none")
            return report
        try:
            inner = verify_release(Store(bundle.root), bundle.release, policy)
        except StoreError as exc:
            report.add("release", False, str(exc))
            return report
        report.checks.extend(inner.checks)
        return report


def signed_statements(store: Store, release: Descriptor, kind: str,
                      trusted: Sequence[SSlibKey], artifacts: Mapping[str, str]
                      ) -> list[tuple[str, dict[str, Any]]]:
    """(key id, statement) of every `kind` statement attached to the release that a trusted
    key signed and whose subjects are the release's artifacts; the rest do not count."""
    found = []
    for entry in store.referrers(release.digest):
        if (entry.annotations or {}).get(KIND) != kind:
            continue
        layers = {layer["annotations"][TITLE]: layer
                  for layer in store.read_json(entry.digest)["layers"]}
        bundle = layers.get(f"{kind}.sigstore.json")
        if bundle is None:
            continue
        try:
            verified = verify_bundle(store.read_bytes(bundle["digest"]), trusted)
        except (ClaimFailed, StoreError):
            continue
        subjects = {s.get("name"): s.get("digest", {}).get("sha256")
                    for s in verified.statement.get("subject", [])}
        if subjects == artifacts:
            found.append((verified.keyid, verified.statement))
    return found


def _check_artifacts(store: Store, release: Descriptor, report: Report) -> dict[str, str]:
    artifacts = {}
    bad = []
    for layer in store.read_json(release.digest)["layers"]:
        name = layer["annotations"][TITLE]
        artifacts[name] = layer["digest"].removeprefix("sha256:")
        try:
            with store.open_verified(layer["digest"]):
                pass
        except StoreError as exc:
            bad.append(f"{name}: {exc}")
    report.add("artifacts", not bad, "; ".join(bad) or
               f"{len(artifacts)} artifact(s) present and matching their digests")
    return artifacts


def _check_bundle(store: Store, kind: str, digest: str, policy: Policy,
                  report: Report) -> dict[str, Any] | None:
    try:
        verified = verify_signed(store.read_bytes(digest), keys=policy.builder_keys,
                                 keyless=policy.keyless)
    except UntrustedSigner:
        raise  # counted by the caller: another signer's statement neither counts nor fails
    except ClaimFailed as exc:
        report.add(f"signature: {kind}", False, str(exc))
        return None
    statement = verified.statement
    if statement.get("predicateType") != PREDICATES[kind]:
        report.add(f"signature: {kind}", False,
                   f"predicateType is {statement.get('predicateType')!r}, "
                   f"expected {PREDICATES[kind]!r}")
        return None
    report.add(f"signature: {kind}", True, f"signed keyless by trusted {verified.identity}"
               if verified.identity else f"signed by trusted key {verified.keyid[:16]}…")
    return statement


def _check_subjects(kind: str, statement: Mapping[str, Any], artifacts: Mapping[str, str],
                    report: Report) -> None:
    subjects = {s.get("name"): s.get("digest", {}).get("sha256")
                for s in statement.get("subject", [])}
    ok = subjects == artifacts
    detail = "subjects match the stored artifacts" if ok else (
        f"subjects {sorted(subjects.items())} differ from the artifacts "
        f"{sorted(artifacts.items())}")
    report.add(f"subjects: {kind}", ok, detail)


def _check_provenance(statement: Mapping[str, Any], policy: Policy, report: Report) -> None:
    predicate = statement.get("predicate", {})
    builder = predicate.get("runDetails", {}).get("builder", {}).get("id")
    build_type = predicate.get("buildDefinition", {}).get("buildType")
    report.add("builder", builder == BUILDER_ID, f"builder.id {builder!r}")
    report.add("build type", build_type == BUILD_TYPE, f"buildType {build_type!r}")
    if policy.reproducible:
        byproducts = predicate.get("runDetails", {}).get("byproducts", [])
        comparison: dict[str, Any] = next(
            (b for b in byproducts if b.get("name") == "comparison.json"), {})
        reproducible = comparison.get("annotations", {}).get("reproducible") is True
        report.add("twin build", reproducible, "both runs gave identical artifacts"
                   if reproducible else "the twin build did not match")
