"""The one error base of rebuild and the exit-code table (design.md, "Exit codes").

Library code raises these; only the CLI turns them into an exit status and a message.
Every message says what happened, why, and what to do.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CLAIM_FAILED = 1
    USAGE = 2
    ENVIRONMENT = 3
    BUILD = 4
    STORE = 5
    KEYS = 6


class RebuildError(Exception):
    """Base of every error rebuild reports to its user; `hint`, when set, says what to
    change (the CLI shows it on a line of its own, and in --json)."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


class ClaimFailed(RebuildError):
    """Not reproducible, verification failed, policy failed."""

    exit_code = ExitCode.CLAIM_FAILED


class UsageError(RebuildError):
    """Bad arguments, or an invalid or unpinned recipe, image definition or policy."""

    exit_code = ExitCode.USAGE


class EnvironmentProblem(RebuildError):
    """The Docker engine is unreachable or a required tool is missing."""

    exit_code = ExitCode.ENVIRONMENT


class BuildFailed(RebuildError):
    """The build or test command failed, timed out, or a declared output is missing."""

    exit_code = ExitCode.BUILD


class StoreError(RebuildError):
    """A store object is missing or corrupt."""

    exit_code = ExitCode.STORE


class SigningError(RebuildError):
    """Keys and signatures."""

    exit_code = ExitCode.KEYS
