"""Environments: the ordered places a release is promoted into (`environments.toml`).

Each environment names the repository its artifacts live in (a registry, `oci://…` or
`oci+http://…` on loopback, or a store directory), the policy a release must meet to enter
it, and the environments it must have entered first (README, "Environments, promotion and
the deploy gate"). Read and validated here (pydantic, unknown keys refused); promotion and
the deploy gate (rebuild.release.promote, rebuild.release.gate) act on the result.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rebuild.build.recipe import format_validation_error, parse_toml
from rebuild.errors import UsageError
from rebuild.release.policy import load_policy
from rebuild.release.verify import Policy
from rebuild.store.registry import is_remote, parse_remote

DEFAULT_FILES = (Path("environments.toml"), Path("recipes/environments.toml"))
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvironmentRule(_Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    repository: str = Field(min_length=1)  # oci://…, oci+http://… or a store directory
    policy: str = Field(min_length=1)  # a policy file, relative to environments.toml
    requires: tuple[str, ...] = ()


class EnvironmentsFile(_Strict):
    environment: tuple[EnvironmentRule, ...] = Field(min_length=1)


@dataclass(frozen=True)
class Environment:
    name: str
    repository: str  # a remote location as written, or an absolute store directory
    location: str  # the repository as environments.toml writes it (what statements name)
    policy_path: Path
    policy_uri: str  # the policy as environments.toml names it
    requires: tuple[str, ...]

    @property
    def remote(self) -> bool:
        return is_remote(self.repository)

    def policy_digest(self) -> str:
        """sha256 hex of the policy file's bytes: what a promotion and a gate summary name."""
        try:
            return hashlib.sha256(self.policy_path.read_bytes()).hexdigest()
        except OSError as exc:
            raise UsageError(f"{self.policy_path}: cannot read the policy of environment "
                             f"{self.name} ({exc.strerror})") from None

    def load_policy(self) -> Policy:
        return load_policy(self.policy_path)


@dataclass(frozen=True)
class Environments:
    path: Path
    order: tuple[Environment, ...]

    def get(self, name: str) -> Environment:
        for env in self.order:
            if env.name == name:
                return env
        known = ", ".join(e.name for e in self.order)
        raise UsageError(f"{self.path}: no environment {name!r} (it names {known})")


def find_environments(path: Path | None) -> Path:
    """--environments FILE, or environments.toml here or under recipes/."""
    if path is not None:
        return path
    for candidate in DEFAULT_FILES:
        if candidate.is_file():
            return candidate
    raise UsageError("no environments.toml here or in recipes/: pass --environments FILE")


def load_environments(path: Path) -> Environments:
    """Read environments.toml; any problem exits 2 naming the file, the key and the fix."""
    try:
        data = parse_toml(path.read_bytes(), str(path))
        rules = EnvironmentsFile.model_validate(data).environment
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the environments ({exc.strerror})") from None
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, EnvironmentsFile, str(path))) from None
    return parse_environments(rules, path)


def parse_environments(rules: tuple[EnvironmentRule, ...], path: Path) -> Environments:
    """Check the order and the names (pure): each name once, `requires` naming only
    environments listed before it."""
    seen: list[str] = []
    out = []
    for rule in rules:
        if rule.name in seen:
            raise UsageError(f"{path}: environment {rule.name!r} is listed twice; give each "
                             "environment one [[environment]] table")
        for required in rule.requires:
            if required not in seen:
                later = "is listed after it" if any(r.name == required for r in rules) \
                    else "is not listed"
                raise UsageError(f"{path}: environment {rule.name!r} requires {required!r}, "
                                 f"which {later}; list the environments in promotion order")
        if is_remote(rule.repository):
            try:
                parse_remote(rule.repository)
            except UsageError as exc:
                raise UsageError(f"{path}: environment {rule.name!r}: {exc}") from None
            repository = rule.repository
        elif "://" in rule.repository:
            raise UsageError(f"{path}: environment {rule.name!r}: repository "
                             f"{rule.repository!r} is neither oci://HOST/REPOSITORY, "
                             "oci+http://… (loopback) nor a store directory")
        else:
            repository = str((path.parent / rule.repository).absolute())
        out.append(Environment(rule.name, repository, rule.repository,
                               path.parent / rule.policy, rule.policy, tuple(rule.requires)))
        seen.append(rule.name)
    return Environments(path, tuple(out))
