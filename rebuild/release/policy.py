"""Policies: the trust rules a verifier brings, read from a TOML file (README, "Policies").

A policy names the keys trusted to build, to rebuild (QA verdicts) and to approve by role,
and what the evidence must show. Its models are pydantic, like every file rebuild reads;
`rebuild.verify` applies the resulting `Policy`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

from rebuild.build.recipe import format_validation_error
from rebuild.errors import RebuildError, UsageError
from rebuild.evidence.sign import KeylessIdentity, load_public_key
from rebuild.release.verify import Policy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApprovalRule(_Strict):
    role: str = Field(min_length=1)
    keys: tuple[str, ...] = Field(min_length=1)


class PolicyRules(_Strict):
    builder_keys: tuple[str, ...] = Field(min_length=1)  # .pub files, relative to the policy
    reproducible: bool = True
    sbom: bool = True
    tests: bool = False
    verdicts: int = Field(default=0, ge=0)  # PASSED QA verdicts, each from another qa key
    qa_keys: tuple[str, ...] = ()
    approvals: tuple[ApprovalRule, ...] = ()


class PolicyFile(_Strict):
    policy: PolicyRules


def load_policy(path: Path) -> Policy:
    """Read a policy file (TOML); keys are paths relative to it. Any problem exits 2."""
    try:
        data = tomllib.loads(path.read_text())
        rules = PolicyFile.model_validate(data).policy
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the policy ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, PolicyFile, str(path))) from None
    if rules.verdicts and not rules.qa_keys:
        raise UsageError(f"{path}: policy.verdicts = {rules.verdicts} needs policy.qa_keys: "
                         "whose verdicts count")

    def keys(key: str, files: Sequence[str]) -> tuple[SSlibKey, ...]:
        try:
            return tuple(load_public_key(path.parent / f) for f in files)
        except RebuildError as exc:
            raise UsageError(f"{path}: policy.{key}: {exc}") from None

    return Policy(keys("builder_keys", rules.builder_keys), rules.reproducible, rules.sbom,
                  rules.tests, rules.verdicts, keys("qa_keys", rules.qa_keys),
                  {a.role: keys(f"approvals[{a.role}].keys", a.keys) for a in rules.approvals})



def keys_policy(keys: Sequence[Path], keyless: Sequence[KeylessIdentity] = ()) -> Policy:
    """The default policy: the given keys and keyless identities are trusted builders;
    reproducible, with an SBOM."""
    if not keys and not keyless:
        raise UsageError("say whom to trust: --key PREFIX.pub, --certificate-identity ID "
                         "--certificate-oidc-issuer URL (keyless), or --policy FILE.toml")
    return Policy(tuple(load_public_key(k) for k in keys), keyless=tuple(keyless))
