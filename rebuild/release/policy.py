"""Policies: the trust rules a verifier brings, read from a TOML file (README, "Policies").

A policy names the keys trusted to build, to rebuild (QA verdicts) and to approve by role,
and what the evidence must show. Its models are pydantic, like every file rebuild reads;
`rebuild.verify` applies the resulting `Policy`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

from rebuild.build.recipe import format_validation_error, parse_toml
from rebuild.build.variations import select_variations
from rebuild.errors import RebuildError, UsageError
from rebuild.evidence.sign import load_public_key
from rebuild.release.verify import Policy, Rule, Tier


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApprovalRule(_Strict):
    role: str = Field(min_length=1)
    keys: tuple[str, ...] = Field(min_length=1)


class LogRule(_Strict):
    required: bool = True  # every counted verdict, approval and evidence record is logged
    key: str = Field(min_length=1)  # the log's public key (`rebuild log keygen`), pinned
    # The timestamp authority's chain (PEM), pinned: every event under a timestamped checkpoint
    tsa_cert: str | None = Field(default=None, min_length=1)


class PolicyRules(_Strict):
    builder_keys: tuple[str, ...] = Field(min_length=1)  # .pub files, relative to the policy
    reproducible: bool = True
    # What run b must have varied for a match to count (`["all", "-cpus"]` style; README).
    variations: tuple[str, ...] = ("all",)
    sbom: bool = True
    tests: bool = False
    verdicts: int = Field(default=0, ge=0)  # PASSED QA verdicts, each from another qa key
    qa_keys: tuple[str, ...] = ()
    approvals: tuple[ApprovalRule, ...] = ()
    log: LogRule | None = None
    # Whose promotions into an environment under this policy count (`rebuild promote`,
    # `rebuild gate`, and the `requires` of a later environment).
    promoter_keys: tuple[str, ...] = ()


class TierRules(_Strict):
    """`[tier.NAME]`: what a release whose change has risk NAME must show."""

    tests: tuple[str, ...] = ()  # [[test]] suites that must have passed
    approvals: tuple[str, ...] = ()  # roles (of policy.approvals) that must approve
    verdicts: int = Field(default=0, ge=0)  # PASSED QA verdicts, each from another qa key
    trace: Literal["complete", "none"] = "none"
    waivers: tuple[str, ...] = ()  # roles (of policy.approvals) whose waivers count
    rules: tuple[str, ...] = ()  # CEL expressions that must be true


class PolicyFile(_Strict):
    policy: PolicyRules
    tier: dict[str, TierRules] = Field(default_factory=dict)


def load_policy(path: Path) -> Policy:
    """Read a policy file (TOML); keys are paths relative to it. Any problem exits 2."""
    try:
        data = parse_toml(path.read_bytes(), str(path))
        parsed = PolicyFile.model_validate(data)
        rules = parsed.policy
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the policy ({exc.strerror})") from None
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, PolicyFile, str(path))) from None
    variations = select_variations(rules.variations, where=f"{path}: policy.variations")
    if rules.reproducible and not variations:
        raise UsageError(f"{path}: policy.variations = {list(rules.variations)} requires no "
                         "variation, so a twin build of two identical runs would pass; name "
                         "at least one, or leave the key out (all twelve)")
    if rules.verdicts and not rules.qa_keys:
        raise UsageError(f"{path}: policy.verdicts = {rules.verdicts} needs policy.qa_keys: "
                         "whose verdicts count")

    def keys(key: str, files: Sequence[str]) -> tuple[SSlibKey, ...]:
        try:
            return tuple(load_public_key(path.parent / f) for f in files)
        except RebuildError as exc:
            raise UsageError(f"{path}: policy.{key}: {exc}") from None

    log_key = tsa = None
    if rules.log is not None and rules.log.required:
        from rebuild.store.auditlog import load_log_verifier
        from rebuild.store.timestamp import load_tsa_trust

        try:
            log_key = load_log_verifier(path.parent / rules.log.key)
        except RebuildError as exc:
            raise UsageError(f"{path}: policy.log.key: {exc}") from None
        try:
            tsa = (load_tsa_trust(path.parent / rules.log.tsa_cert) if rules.log.tsa_cert
                   else None)
        except RebuildError as exc:
            raise UsageError(f"{path}: policy.log.tsa_cert: {exc}") from None
    tiers = load_tiers(path, parsed.tier, rules)
    return Policy(keys("builder_keys", rules.builder_keys), rules.reproducible, rules.sbom,
                  rules.tests, rules.verdicts, keys("qa_keys", rules.qa_keys),
                  {a.role: keys(f"approvals[{a.role}].keys", a.keys) for a in rules.approvals},
                  variations=variations, log_key=log_key, tsa=tsa,
                  promoters=keys("promoter_keys", rules.promoter_keys), tiers=tiers)


def load_tiers(path: Path, tables: Mapping[str, TierRules], rules: PolicyRules
               ) -> dict[str, Tier]:
    """Each `[tier.NAME]` checked against the policy (its roles have keys, its verdicts have
    QA keys) with its CEL rules compiled: a rule that does not compile exits 2, named."""
    roles = {a.role for a in rules.approvals}
    tiers = {}
    for name, table in sorted(tables.items()):
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise UsageError(f"{path}: [tier.{name}]: a tier's name is what a recipe's "
                             "[change] risk says: lowercase letters, digits, _ and -")
        for key, named in (("approvals", table.approvals), ("waivers", table.waivers)):
            unknown = sorted(set(named) - roles)
            if unknown:
                raise UsageError(f"{path}: tier.{name}.{key}: role {unknown[0]!r} has no keys; "
                                 f"add [[policy.approvals]] role = {unknown[0]!r} with the keys "
                                 "trusted for it")
        if table.verdicts and not rules.qa_keys:
            raise UsageError(f"{path}: tier.{name}.verdicts = {table.verdicts} needs "
                             "policy.qa_keys: whose verdicts count")
        tiers[name] = Tier(name, table.tests, table.approvals, table.verdicts,
                           table.trace == "complete", table.waivers,
                           tuple(compile_rule(path, name, i, rule)
                                 for i, rule in enumerate(table.rules)))
    return tiers


def compile_rule(path: Path, tier: str, index: int, source: str) -> Rule:
    """A CEL rule compiled once, when the policy is read (cel-python)."""
    import celpy

    environment = celpy.Environment()
    try:
        program = environment.program(environment.compile(source))
    except Exception as exc:  # noqa: BLE001 (celpy's parse errors share no base but Exception)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: tier.{tier}.rules[{index}] {source!r} does not compile as "
                         f"CEL ({first}); fix the expression") from None
    return Rule(source, program)
