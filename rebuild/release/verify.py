"""Verify: check a stored release offline: artifacts, signatures, subjects, provenance, policy.

Every check is recorded with its reason; the claim holds only if all of them pass. What a
verifier trusts comes from the caller (`--key`, or a keyless identity and issuer) or a policy
file, never from the store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

from rebuild.build.limits import BundleLimits
from rebuild.build.variations import NAMES
from rebuild.checks import Check
from rebuild.errors import ClaimFailed, StoreError, UsageError
from rebuild.evidence.provenance import (
    BUILD_TYPE,
    BUILDER_ID,
    SBOM_PREDICATE,
    SLSA_PROVENANCE,
    TEST_RESULT,
)
from rebuild.evidence.sign import (
    KeylessIdentity,
    UntrustedSigner,
    load_public_key,
    verify_bundle,
    verify_signed,
)
from rebuild.release.trace import SUITE_PREFIX, change_record, suite_statements, trace_matrix
from rebuild.store.layout import (
    BUNDLE_MEDIA,
    KIND,
    LINK_ANN,
    MODE_ANN,
    OCI_MANIFEST,
    REF_NAME,
    RELEASE_ANN,
    RELEASE_TYPE,
    TITLE,
    Descriptor,
    Store,
    artifact_manifest,
    canonical_json,
    release_annotations,
)

if TYPE_CHECKING:  # x509 and the TSA client load only when a TSA is pinned
    from rebuild.store.timestamp import TsaTrust
    from rebuild.store.tlog import NoteVerifier

BINDING_CHECKS = ("artifacts", "signed evidence", "release name", "release manifest")
VERDICT_URI = "rebuild:release:"  # a QA verdict's resourceUri: this prefix, then name@version
NOW_ENV = "REBUILD_NOW"  # evaluation_time
PREDICATES = {"provenance": SLSA_PROVENANCE, "sbom": SBOM_PREDICATE,
              "test-result": TEST_RESULT}


@dataclass(frozen=True)
class Rule:
    """A policy's CEL rule: its text and the program compiled from it (rebuild.policy)."""

    source: str
    program: Any  # celpy.Runner


@dataclass(frozen=True)
class Tier:
    """What a release whose change has this risk must show (a policy's `[tier.NAME]`)."""

    name: str
    tests: tuple[str, ...] = ()  # suites that must have PASSED
    approvals: tuple[str, ...] = ()  # roles that must have approved
    verdicts: int = 0  # PASSED QA verdicts, each from another qa key
    trace: bool = False  # every requirement of the change covered by a passing case
    waivers: tuple[str, ...] = ()  # roles whose waivers this tier accepts
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Waiver:
    """An accepted waiver: what it waives (`test` SUITE or SUITE/CASE, or `requirement`)."""

    scope: str  # "test" or "requirement"
    target: str
    role: str
    expires: str
    residual_risk: str

    def covers(self, scope: str, target: str) -> bool:
        return self.scope == scope and self.target == target

    @property
    def shown(self) -> str:
        return f"waived by {self.role} until {self.expires}"


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
    # With `reproducible`: the variations run b must have had, read from the signed
    # provenance. The default is the recipe default, all twelve (README, "Policies").
    variations: tuple[str, ...] = NAMES
    log_key: NoteVerifier | None = None  # when set, the release's records must be logged
    # When set, so must they be, each under a checkpoint timestamped by this TSA (RFC 3161).
    tsa: TsaTrust | None = None
    promoters: tuple[SSlibKey, ...] = ()  # whose promotions into an environment count
    # Tiers by name: the change record's risk picks one (design.md Part 2). With tiers, the
    # roles of `approvals` name whose keys count; the tier says which roles must approve.
    tiers: Mapping[str, Tier] = field(default_factory=dict)
    # When waivers are judged (None: now); injectable so an expiry can be tested.
    now: datetime | None = None


def evaluation_time(env: Mapping[str, str] | None = None) -> datetime:
    """The instant a policy is evaluated at: now, or REBUILD_NOW (ISO 8601, UTC when it
    names no zone) so that a deploy gate can be checked as of another time. It sets only the
    time of evaluation (what has expired by then), never a time that is signed as the
    present."""
    text = (os.environ if env is None else env).get(NOW_ENV)
    return parse_time(text, NOW_ENV) if text else datetime.now(UTC)


def verify_binding(store: Store, target: str, policy: Policy,
                   refused: str) -> tuple[Descriptor, Report]:
    """The release's manifest and its verification under the policy's builder keys alone
    (signatures, subjects and names bound; a tier's gaps are what a trace matrix or release
    notes show, so they do not stop them). Not bound: ClaimFailed, `refused` saying what is
    not done."""
    release = resolve_release(store, target)
    report = verify_release(store, target, Policy(policy.builder_keys, keyless=policy.keyless))
    if not report.bound:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
        raise ClaimFailed(f"{target}: NOT VERIFIED, {refused} ({failed})")
    return release, report


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 date or time (UTC when it names no zone); `what` names it in the error."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a date or time; write YYYY-MM-DD or "
                         "YYYY-MM-DDTHH:MM:SSZ") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class Report:
    target: str
    release: str | None = None  # the release's name, once its signed evidence verified
    checks: list[Check] = field(default_factory=list)
    # The trusted statements that counted, by kind (the facts `show` may call verified).
    statements: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def bound(self) -> bool:
        """The release's facts are proven: a trusted provenance names it, its manifest is
        the one that provenance defines, and every counted statement is about its artifacts
        (policy checks such as approvals aside)."""
        binding = [c for c in self.checks if c.name in BINDING_CHECKS
                   or c.name.startswith(("subjects: ", "signature: "))]
        return "provenance" in self.statements and all(c.ok for c in binding) and \
            {"release name", "release manifest"} <= {c.name for c in binding}

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "release": self.release, "verified": self.ok,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                           for c in self.checks]}


def keys_policy(keys: Sequence[Path], keyless: Sequence[KeylessIdentity] = ()) -> Policy:
    """The default policy: the given keys and keyless identities are trusted builders;
    reproducible, with an SBOM. Here, not in rebuild.release.policy, so that `verify --key`
    does not load pydantic, which only a policy file needs."""
    if not keys and not keyless:
        raise UsageError("say whom to trust: --key PREFIX.pub, --certificate-identity ID "
                         "--certificate-oidc-issuer URL (keyless), or --policy FILE.toml")
    return Policy(tuple(load_public_key(k) for k in keys), keyless=tuple(keyless))


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
    """Check `target` against `policy`. Which release a name means is taken from the signed
    provenance, never from index.json or the query cache: those only find the candidates,
    and the release manifest they lead to must be the one the signed statements define."""
    release = resolve_release(store, target)
    manifest = store.read_json(release.digest)
    indexed = (release.annotations or {}).get(REF_NAME)
    # The name asked for; for an artifact digest, the name the index gives (checked below).
    wanted = (indexed or _get(manifest, "annotations", RELEASE_ANN)
              if target.startswith("sha256:") else target)
    report = Report(target, None)
    artifacts = _check_artifacts(store, manifest, report)
    evidence = attached(store, release, "evidence")
    verified: dict[str, dict[str, Any]] = {}
    untrusted: list[str] = []
    elsewhere: list[str] = []  # releases that trusted statements attached here name instead
    for entry in evidence:
        layers = {layer["annotations"][TITLE]: layer
                  for layer in store.read_json(entry.digest)["layers"]}
        suites = sorted(t.removesuffix(".sigstore.json") for t in layers
                        if t.startswith(SUITE_PREFIX) and t.endswith(".sigstore.json"))
        for kind in [*PREDICATES, *suites]:
            bundle = layers.get(f"{kind}.sigstore.json")
            if bundle is None or bundle["mediaType"] != BUNDLE_MEDIA or kind in verified:
                continue
            try:
                statement = _check_bundle(store, kind, bundle["digest"], policy, report)
            except UntrustedSigner as exc:
                untrusted.append(f"{kind}: {exc}")
                continue
            if statement is None:
                continue
            if kind.startswith(SUITE_PREFIX) and _get(statement, "predicate", "suite") != \
                    kind.removeprefix(SUITE_PREFIX):
                # A suite's statement under another suite's title counts for neither.
                elsewhere.append(f"the signed {kind} is about another suite")
                continue
            named = statement_release(kind, statement)
            if not kind.startswith("test-result") and named != wanted:
                # Signed, but about another release (its evidence attached or relabelled
                # here): true of that release, so it neither counts nor fails by itself.
                elsewhere.append(f"the signed {kind} names {named or 'no release'}")
                continue
            verified[kind] = statement
    others = f"; {len(untrusted)} statement(s) by keys not given ignored" if untrusted else ""
    others += (f"; {len(elsewhere)} signed statement(s) about another release ignored"
               if elsewhere else "")
    detail = (f"verified: {', '.join(sorted(verified)) or 'nothing'} "
              f"({len(evidence)} evidence artifact(s) attached{others})")
    if not verified and untrusted:
        detail += f": {untrusted[0]}"
    report.add("signed evidence", bool(verified), detail)
    if "provenance" not in verified and elsewhere:
        report.add("release name", False, f"asked for {wanted}, but {elsewhere[0]}")
    if not verified:
        return report
    report.statements.update(verified)
    if "provenance" in verified:
        _check_release(store, release, indexed, wanted, manifest, verified["provenance"],
                       report)
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
        results = {kind: _get(st, "predicate", "result") for kind, st in verified.items()
                   if kind.startswith("test-result")}
        all_passed = bool(results) and all(r == "PASSED" for r in results.values())
        if any(kind.startswith(SUITE_PREFIX) for kind in results):
            shown = "test results: " + ", ".join(f"{k.removeprefix(SUITE_PREFIX)} {r}"
                                                 for k, r in sorted(results.items()))
        else:  # the single [test]
            shown = f"test result: {results.get('test-result') or 'none'}"
        report.add("tests", all_passed, shown)
    name = str(wanted)
    if policy.verdicts:
        passed = signed_statements(store, release, "verdict", policy.qa_keys, artifacts, name)
        keyids = {keyid for keyid, st in passed
                  if st.get("predicate", {}).get("verificationResult") == "PASSED"}
        report.add("QA verdicts", len(keyids) >= policy.verdicts,
                   f"{len(keyids)} PASSED verdict(s) from trusted QA keys, "
                   f"{policy.verdicts} required")
    # With tiers, the tier picks the roles that must approve (_check_tier).
    for role in sorted(policy.approvals) if not policy.tiers else ():
        approvals = role_approvals(store, release, role, policy, artifacts, name)
        names = ", ".join(sorted({a["predicate"]["signer"]["name"] for a in approvals}))
        report.add(f"approval: {role}", bool(approvals),
                   f"approved by {names}" if approvals
                   else f"no {role} approval by a trusted key")
    if policy.tiers and "provenance" in verified:
        _check_tier(store, release, artifacts, name, verified, policy, report)
    if policy.log_key is not None or policy.tsa is not None:
        # The log's code loads only for a policy that requires the log (`show` < 200 ms).
        from rebuild.store.auditlog import release_log_checks

        referrers = [((e.annotations or {}).get(KIND, ""), e.digest)
                     for e in store.referrers(release.digest)]
        for check in release_log_checks(store, release.digest, referrers, policy.log_key,
                                        policy.tsa):
            report.add(check.name, check.ok, check.detail)
    if report.ok:
        report.release = name
    return report


def role_approvals(store: Store, release: Descriptor, role: str, policy: Policy,
                   artifacts: Mapping[str, str], name: str) -> list[dict[str, Any]]:
    """The approvals in `role` by keys the policy trusts for it, less those withdrawn."""
    role_keys = policy.approvals.get(role, ())
    # An approval its own signer withdrew (`rebuild withdraw`) no longer counts.
    withdrawn = {(keyid, st.get("predicate", {}).get("withdraws", {}).get("approval"))
                 for keyid, st in signed_statements(store, release, "withdrawal",
                                                    role_keys, artifacts, name)}
    return [st for keyid, st in signed_statements(store, release, "approval", role_keys,
                                                  artifacts, name)
            if st.get("predicate", {}).get("role") == role and (keyid, _digest(st))
            not in withdrawn]


def release_tier(policy: Policy, provenance: Mapping[str, Any]) -> Tier | None:
    """The tier the signed change record's risk selects; None when it has no risk. A risk
    the policy has no tier for is the policy's or the recipe's mistake: exit 2."""
    risk = _get(change_record(provenance), "risk")
    if not isinstance(risk, str):
        return None
    tier = policy.tiers.get(risk)
    if tier is None:
        raise UsageError(f"the release's change record has risk = {risk!r}, but the policy has "
                         f"no [tier.{risk}] (its tiers: {', '.join(sorted(policy.tiers))}); "
                         "add the tier to the policy or correct [change] risk")
    return tier


def accepted_waivers(store: Store, release: Descriptor, artifacts: Mapping[str, str],
                     name: str, policy: Policy, tier: Tier) -> tuple[list[Waiver], list[str]]:
    """The waivers this tier accepts (signed by a key the policy trusts for the waiver's
    role, a role the tier lets waive, not expired), and why each other one does not count."""
    now = policy.now or evaluation_time()
    accepted: list[Waiver] = []
    refused: list[str] = []
    seen: set[str] = set()
    for role, keys in sorted(policy.approvals.items()):
        for _, statement in signed_statements(store, release, "waiver", keys, artifacts,
                                              name):
            predicate = statement.get("predicate") or {}
            digest = _digest(statement)
            if predicate.get("role") != role or digest in seen:
                continue  # a key of another role: counted under that role, if at all
            seen.add(digest)
            scope = next((k for k in ("test", "requirement") if isinstance(
                _get(predicate, "waives", k), str)), None)
            if scope is None:
                continue
            target = str(_get(predicate, "waives", scope))
            expires = str(predicate.get("expires", ""))
            what = f"waiver of {scope} {target} by {role}"
            if role not in tier.waivers:
                refused.append(f"{what}: tier {tier.name} lets "
                               f"{', '.join(tier.waivers) or 'no role'} waive")
            elif (until := _parse_time(expires)) is None or until <= now:
                refused.append(f"{what}: expired {expires}")
            else:
                accepted.append(Waiver(scope, target, role, expires,
                                       str(predicate.get("residualRisk", ""))))
    others = len(attached(store, release, "waiver")) - len(seen)
    if others > 0:
        refused.append(f"{others} waiver(s) not signed by a key the policy trusts for "
                       "their role")
    return accepted, refused


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _check_tier(store: Store, release: Descriptor, artifacts: Mapping[str, str], name: str,
                verified: Mapping[str, dict[str, Any]], policy: Policy,
                report: Report) -> None:
    """The tier the change's risk selects: its suites, approvals, verdicts, trace and CEL
    rules, each failing check naming the rule, the tier and what is missing."""
    tiers = ", ".join(sorted(policy.tiers))
    tier = release_tier(policy, verified["provenance"])
    if tier is None:
        report.add("tier", False, f"the policy has tiers ({tiers}) but the release's signed "
                   "change record names no risk; add [change] risk = \"<tier>\" to the recipe")
        return
    report.add("tier", True, f"tier {tier.name}, selected by the change record's risk")
    waivers, refused = accepted_waivers(store, release, artifacts, name, policy, tier)
    not_counted = f"; not counted: {'; '.join(refused)}" if refused else ""
    suites = suite_statements(verified)
    for suite in tier.tests:
        label = f"tier {tier.name}: tests: {suite}"
        waived = next((w for w in waivers if w.covers("test", suite)), None)
        predicate = suites.get(suite)
        if predicate is None:
            report.add(label, waived is not None, f"suite {suite} {waived.shown}: no signed "
                       f"test result" if waived else f"rule tests of tier {tier.name}: suite "
                       f"{suite} is missing (no signed test-result/{suite}){not_counted}")
            continue
        failed = [c for c in predicate.get("failedTests") or [] if isinstance(c, str)]
        open_cases = [c for c in failed if not any(w.covers("test", f"{suite}/{c}")
                                                    for w in waivers)]
        exit_code = predicate.get("exitCode", 0)
        # A failed suite passes once every failed case is waived (its nonzero exit is then
        # those cases' failing), never when its command failed with no case failing.
        ok = predicate.get("result") in ("PASSED", "WARNED") or (
            not open_cases and bool(failed))
        if waived is not None:
            report.add(label, True, f"suite {suite} {predicate.get('result')}, "
                       f"{waived.shown}")
        elif ok:
            note = f" (failed cases waived: {', '.join(failed)})" if failed else ""
            report.add(label, True, f"suite {suite} {predicate.get('result')}{note}")
        else:
            missing = (f"failed cases {', '.join(open_cases)}" if open_cases
                       else f"its command exited {exit_code}")
            report.add(label, False, f"rule tests of tier {tier.name}: suite {suite} "
                       f"{predicate.get('result')}: {missing}{not_counted}")
    for role in tier.approvals:
        approvals = role_approvals(store, release, role, policy, artifacts, name)
        names = ", ".join(sorted({str(_get(a, "predicate", "signer", "name"))
                                  for a in approvals}))
        report.add(f"tier {tier.name}: approval: {role}", bool(approvals),
                   f"approved by {names}" if approvals else
                   f"rule approvals of tier {tier.name}: no {role} approval by a key the "
                   f"policy trusts for {role}")
    if tier.verdicts:
        passed = signed_statements(store, release, "verdict", policy.qa_keys, artifacts, name)
        keyids = {keyid for keyid, st in passed
                  if _get(st, "predicate", "verificationResult") == "PASSED"}
        report.add(f"tier {tier.name}: verdicts", len(keyids) >= tier.verdicts,
                   f"{len(keyids)} PASSED verdict(s) from trusted QA keys, {tier.verdicts} "
                   f"required" if len(keyids) >= tier.verdicts else
                   f"rule verdicts of tier {tier.name}: {len(keyids)} PASSED verdict(s) from "
                   f"trusted QA keys, {tier.verdicts} required: "
                   f"{tier.verdicts - len(keyids)} missing")
    if tier.trace:
        matrix = trace_matrix(name, release.digest, verified)
        open_reqs = [r for r in matrix.uncovered
                     if not any(w.covers("requirement", r) for w in waivers)]
        waived_reqs = [r for r in matrix.uncovered if r not in open_reqs]
        wanted = [r for r in matrix.rows if r.in_change]
        note = ("; waived: " + ", ".join(
            f"{r} ({next(w for w in waivers if w.covers('requirement', r)).shown})"
            for r in waived_reqs)) if waived_reqs else ""
        report.add(f"tier {tier.name}: trace", not open_reqs,
                   f"{len(wanted) - len(matrix.uncovered)} of {len(wanted)} requirement(s) "
                   f"covered by a passing test case{note}" if not open_reqs else
                   f"rule trace = \"complete\" of tier {tier.name}: uncovered requirement(s) "
                   f"{', '.join(open_reqs)} (no passing test case){note}{not_counted}")
    for rule in tier.rules:
        ok, detail = _evaluate_rule(rule, verified, tier)
        report.add(f"tier {tier.name}: rule {rule.source}", ok, detail)


def _evaluate_rule(rule: Rule, verified: Mapping[str, dict[str, Any]],
                   tier: Tier) -> tuple[bool, str]:
    """A CEL rule over the verified statements: `statements` (kind -> statement), `suites`
    (suite -> its test-result predicate), `change` (the change record) and `tier`."""
    from celpy.adapter import json_to_cel
    from celpy.celtypes import BoolType, StringType

    activation = {
        "statements": json_to_cel({k: dict(v) for k, v in verified.items()}),
        "suites": json_to_cel({k: dict(v) for k, v in suite_statements(verified).items()}),
        "change": json_to_cel(change_record(verified.get("provenance")) or {}),
        "tier": StringType(tier.name),
    }
    try:
        value = rule.program.evaluate(activation)
    except Exception as exc:  # noqa: BLE001 (celpy raises its own and Python's errors)
        return False, (f"rule {rule.source!r} of tier {tier.name} could not be evaluated: "
                       f"{_first_line(exc)}")
    if isinstance(value, Exception):  # celpy returns some errors as values
        return False, (f"rule {rule.source!r} of tier {tier.name} could not be evaluated: "
                       f"{_first_line(value)}")
    if not isinstance(value, (bool, BoolType)):
        return False, f"rule {rule.source!r} of tier {tier.name} gave {value!r}, not a bool"
    return bool(value), (f"rule {rule.source!r} of tier {tier.name} holds" if value else
                   f"rule {rule.source!r} of tier {tier.name} is false")


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _digest(statement: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(statement)).hexdigest()


def verify_bundle_file(path: Path, policy: Policy,
                       limits: BundleLimits | None = None) -> Report:
    """Verify an exported bundle (`rebuild export`) offline: every byte of the archive, each
    failure naming its file (rebuild.export), then `verify_release` on the layout inside.
    What extracting it may write is bounded by `limits` (defaults: rebuild.limits)."""

    from rebuild.release.bundle import open_bundle

    with tempfile.TemporaryDirectory(prefix="rebuild-verify-") as tmp:
        bundle = open_bundle(path, Path(tmp), limits or BundleLimits())
        report = Report(str(path), None, list(bundle.checks))
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
        if policy.log_key is None and policy.tsa is None:
            _check_bundled_log(Store(bundle.root), bundle.release, report)
        report.statements.update(inner.statements)
        # Named only when proven: the bundle's index.json is as unsigned as a store's.
        report.release = inner.release if report.ok else None
        return report


def _check_bundled_log(store: Store, release: str, report: Report) -> None:
    """Without a pinned log key the proofs still show each event is in the tree its
    checkpoint names; only the checkpoint's signature stays unchecked, and says so."""
    from rebuild.store.auditlog import (
        check_events,
        newest_per_event,
        release_events,
        trusted_time_check,
    )

    try:
        found = store.find(release)
        events = release_events(store, found.digest if found else "")
    except (ClaimFailed, ValueError, OSError) as exc:
        report.add("audit log", False, f"the bundle's log proofs are unreadable: {exc}")
        return
    if not events:
        return
    failed = check_events(events, None)
    for check in failed:
        report.add(check.name, check.ok, check.detail)
    if not failed:
        report.add("audit log", True, f"{len(newest_per_event(events))} event(s) included "
                   "in the log's tree; "
                   "checkpoint signature NOT VERIFIED (pass --log-key PUB)")
        timed = trusted_time_check(events, None, None)
        if timed is not None:
            report.add(timed.name, timed.ok, timed.detail)


def signed_statements(store: Store, release: Descriptor, kind: str,
                      trusted: Sequence[SSlibKey], artifacts: Mapping[str, str], name: str
                      ) -> list[tuple[str, dict[str, Any]]]:
    """(key id, statement) of every `kind` statement attached to the release that a trusted
    key signed, whose subjects are the release's artifacts and which names the release
    `name` (a verdict or approval of another version with the same bytes does not count)."""
    found = []
    for entry in attached(store, release, kind):
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
        if subjects == artifacts and statement_release(kind, verified.statement) == name and \
                statement_manifest(kind, verified.statement) in (None, release.digest):
            found.append((verified.keyid, verified.statement))
    return found


def attached(store: Store, release: Descriptor, kind: str) -> list[Descriptor]:
    """The `kind` records attached to the release: found through the index (a cache), kept
    only when their own manifest names the release as its subject."""
    found = []
    for entry in store.referrers(release.digest):
        if (entry.annotations or {}).get(KIND) != kind:
            continue
        subject = _get(store.read_json(entry.digest), "subject", "digest")
        if subject == release.digest:
            found.append(entry)
    return found


def statement_release(kind: str, statement: Mapping[str, Any]) -> str | None:
    """The release (name@version) a signed statement names, or None if it names none: the
    provenance by the recipe it records, the SBOM by its main component, a QA verdict by
    its resourceUri, an approval, its withdrawal or a promotion by its release."""
    predicate = statement.get("predicate")
    named: Any = None
    if kind == "provenance":
        recipe = _get(predicate, "buildDefinition", "externalParameters", "recipe", "content",
                      "recipe")
        name, version = _get(recipe, "name"), _get(recipe, "version")
        if isinstance(name, str) and isinstance(version, str):
            named = f"{name}@{version}"
    elif kind == "sbom":
        named = _get(predicate, "metadata", "component", "bom-ref")
    elif kind == "verdict":
        uri = _get(predicate, "resourceUri")
        if isinstance(uri, str) and uri.startswith(VERDICT_URI):
            named = uri.removeprefix(VERDICT_URI)
    elif kind in ("approval", "withdrawal", "promotion", "waiver"):
        named = _get(predicate, "release")
    return named if isinstance(named, str) else None


def statement_manifest(kind: str, statement: Mapping[str, Any]) -> str | None:
    """The release manifest digest a signed statement names, if its format records one."""
    manifest = (_get(statement.get("predicate"), "manifest")
                if kind in ("approval", "promotion", "waiver") else None)
    return manifest if isinstance(manifest, str) else None


def release_manifest(store: Store, provenance: Mapping[str, Any],
                     layers: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The release manifest the signed provenance defines: its name, its SOURCE_DATE_EPOCH
    and its subjects (sorted by name, as a build stores them), each layer's size being its
    blob's. A link keeps its target only when the target is the subject's content. None when
    the provenance lacks a fact or an artifact blob is missing."""
    name = statement_release("provenance", provenance)
    epoch = _get(provenance.get("predicate"), "buildDefinition", "internalParameters",
                 "source_date_epoch")
    if name is None or not isinstance(epoch, int):
        return None
    links = {_get(layer, "annotations", TITLE): _get(layer, "annotations", LINK_ANN)
             for layer in layers}
    modes = _signed_modes(store, provenance)
    out = []
    for subject in provenance.get("subject", []):
        title, hexdigest = _get(subject, "name"), _get(subject, "digest", "sha256")
        if not isinstance(title, str) or not isinstance(hexdigest, str):
            return None
        digest = f"sha256:{hexdigest}"
        annotations = {TITLE: title}
        link = links.get(title)
        if isinstance(link, str) and hashlib.sha256(link.encode()).hexdigest() == hexdigest:
            annotations[LINK_ANN] = link
        if title in modes:
            annotations[MODE_ANN] = modes[title]
        try:
            size = store.blob_path(digest).stat().st_size
        except (OSError, StoreError):
            return None
        # An output image's manifest is a layer of the OCI manifest type (so gc and push
        # follow it to the image's blobs); the signed subject says so.
        media = OCI_MANIFEST if _get(subject, "mediaType") == OCI_MANIFEST else \
            "application/octet-stream"
        out.append(Descriptor(media, digest, size, annotations))
    out.sort(key=lambda d: (d.annotations or {})[TITLE])
    return artifact_manifest(RELEASE_TYPE, out, annotations=release_annotations(name, epoch))


def _signed_modes(store: Store, provenance: Mapping[str, Any]) -> dict[str, str]:
    """Each artifact's permission bits from the comparison record the signed provenance pins
    (by digest, among its byproducts); none for a record made before modes were compared."""
    byproducts = _get(provenance.get("predicate"), "runDetails", "byproducts")
    found = next((b for b in byproducts or [] if _get(b, "name") == "comparison.json"), None)
    hexdigest = _get(found, "digest", "sha256")
    if not isinstance(hexdigest, str):
        return {}
    try:
        record = store.read_json(f"sha256:{hexdigest}")
    except (StoreError, ValueError):
        return {}
    return {a["name"]: a["mode"] for a in _get(record, "artifacts") or []
            if isinstance(a, Mapping) and isinstance(a.get("name"), str)
            and isinstance(a.get("mode"), str)}


def _get(value: Any, *path: str) -> Any:
    """value[path[0]][path[1]]…, or None where a step is missing or not an object: the
    store's records are read as untrusted data."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _check_release(store: Store, release: Descriptor, indexed: str | None, wanted: str | None,
                   manifest: Mapping[str, Any], provenance: Mapping[str, Any],
                   report: Report) -> None:
    """The index's name and the release manifest against the signed provenance (which the
    caller already found to name `wanted`)."""
    ok = indexed == wanted
    report.add("release name", ok, f"the signed provenance names {wanted}" if ok else
               f"the signed provenance names {wanted}, but index.json calls {release.digest} "
               f"{indexed or 'nothing'}")
    expected = release_manifest(store, provenance, manifest.get("layers", []))
    digest = None if expected is None else \
        "sha256:" + hashlib.sha256(canonical_json(expected)).hexdigest()
    ok = digest == release.digest
    report.add("release manifest", ok, f"{release.digest} is the manifest the signed "
               "provenance defines (name, version, artifacts, SOURCE_DATE_EPOCH)" if ok else
               f"{release.digest} is not the manifest the signed provenance defines "
               f"({digest or 'incomplete provenance'}): its name, artifacts or creation "
               "time were changed")


def _check_artifacts(store: Store, manifest: Mapping[str, Any], report: Report
                     ) -> dict[str, str]:
    artifacts = {}
    bad = []
    for layer in manifest["layers"]:
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
    expected = TEST_RESULT if kind.startswith(SUITE_PREFIX) else PREDICATES[kind]
    if statement.get("predicateType") != expected:
        report.add(f"signature: {kind}", False,
                   f"predicateType is {statement.get('predicateType')!r}, "
                   f"expected {expected!r}")
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
        _check_variations(predicate, policy, report)


def _check_variations(predicate: Mapping[str, Any], policy: Policy, report: Report) -> None:
    """A match means as much as the variations run b had: the signed record must show every
    variation the policy requires (a recipe could turn some off with [check] vary)."""
    runs = predicate.get("buildDefinition", {}).get("internalParameters", {}).get(
        "variations", {})
    run_b = runs.get("b") if isinstance(runs, Mapping) else None
    varied: set[str] = set(run_b) if isinstance(run_b, Mapping) else set()
    missing = [n for n in policy.variations if n not in varied]
    shown = ", ".join(n for n in NAMES if n in varied) or "nothing"
    report.add("variations", not missing,
               f"run b varied {len(varied & set(NAMES))} of {len(NAMES)} ({shown})"
               if not missing else
               f"run b did not vary {', '.join(missing)}, which the policy requires "
               f"(signed record: {shown}); rebuild with those variations, or accept "
               f"fewer with policy.variations")
