"""Commands about a release's change control: `trace` (the trace matrix) and `waive`
(a signed waiver of a gap), design.md Part 2."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rebuild.cli.common import (
    OPTIONS,
    JsonOpt,
    KeyOpt,
    StoreOpt,
    command_options,
    emit,
    make_signer,
    push_back,
    say,
    store_for,
    terminal_safe,
)
from rebuild.errors import UsageError
from rebuild.store.layout import Store

if TYPE_CHECKING:
    from rebuild.release.verify import Policy

KeysOpt = Annotated[list[Path] | None, typer.Option(
    "--key", help="Trusted builder key (PREFIX.pub); repeatable.")]
PolicyOpt = Annotated[Path | None, typer.Option("--policy", help="Policy file (TOML).")]


def _trust(policy: Path | None, keys: list[Path] | None) -> Policy:
    from rebuild.release.policy import load_policy
    from rebuild.release.verify import keys_policy

    if policy is not None:
        return load_policy(policy)
    return keys_policy(keys or ([OPTIONS.key] if OPTIONS.key else []))


def trace_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version) or an artifact "
                                                "digest (sha256:<hex>).")],
    csv_out: Annotated[bool, typer.Option("--csv", help="CSV on stdout: one line per "
                                          "requirement and test case.")] = False,
    policy: PolicyOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeysOpt = None,
) -> None:
    """The trace matrix: each requirement of the change, the test cases that carry it, their
    outcome, for this release digest; requirements with no passing test case are named.
    Built only from statements signed by a trusted key (exit 1 when none verify)."""
    from rebuild.release.trace import format_table, trace_matrix
    from rebuild.release.verify import verify_binding

    opts = command_options(store, json_out)
    if csv_out and opts.json:
        raise UsageError("choose one of --json and --csv")
    trusted = _trust(policy, key)
    directory = Store(store_for(opts, target))
    release, report = verify_binding(directory, target, trusted, "no trace matrix shown")
    matrix = trace_matrix(str(report.release or target), release.digest, report.statements)
    if opts.json:
        emit(matrix.to_json())
    elif csv_out:
        print(matrix.to_csv(), end="")
    else:
        print(terminal_safe("\n".join(format_table(matrix))))


def waive_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version).")],
    justification: Annotated[str, typer.Option("--justification",
                                               help="Why the gap is acceptable.")],
    residual_risk: Annotated[str, typer.Option("--residual-risk",
                                               help="The risk that remains, accepted.")],
    expires: Annotated[str, typer.Option("--expires", help="When the waiver ends: YYYY-MM-DD "
                                         "(00:00 UTC) or an ISO 8601 time.")],
    role: Annotated[str, typer.Option("--role", help="The signer's role, e.g. quality.")],
    test: Annotated[str | None, typer.Option(
        "--test", help="Waive a test suite, or one case: SUITE/CASE.")] = None,
    requirement: Annotated[str | None, typer.Option(
        "--requirement", help="Waive an uncovered requirement of the change.")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="The signer's printed name (default: env REBUILD_SIGNER_NAME, or the "
        "login name).")] = None,
    trust: Annotated[list[Path] | None, typer.Option(
        "--trust", help="Trusted builder key (PREFIX.pub) the evidence must verify "
        "against.")] = None,
    policy: PolicyOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
) -> None:
    """Sign a waiver (what, why, residual risk, expiry, role) of a release whose evidence
    verifies; a policy counts it only for a tier that lets the role waive, until it expires."""
    import getpass
    from datetime import UTC, datetime

    from rebuild.evidence.sign import KeySigner
    from rebuild.release.waive import parse_expiry, waive

    opts = command_options(store, json_out, key)
    if opts.key is None:
        raise UsageError("a waiver must be signed: pass --key PREFIX.key")
    if policy is None and not trust:
        raise UsageError("say whose builds to trust before waiving: --trust PREFIX.pub "
                         "(a builder key) or --policy FILE.toml")
    rules = _trust(policy, trust)
    signer = make_signer(opts, what="waiver")
    assert isinstance(signer, KeySigner)
    signer_name = name or os.environ.get("REBUILD_SIGNER_NAME") or getpass.getuser()
    directory = store_for(opts, target)
    digest = waive(Store(directory), target, test=test, requirement=requirement,
                   justification=justification, residual_risk=residual_risk,
                   expires=parse_expiry(expires), role=role, name=signer_name,
                   signer=signer.key, policy=rules, time=datetime.now(UTC))
    what = f"test {test}" if test is not None else f"requirement {requirement}"
    say(f"{target}: {what} waived by {signer_name} as {role} until {expires}; waiver {digest}")
    push_back(opts, directory, target)
    if opts.json:
        emit({"release": target, "waiver": digest, "role": role, "name": signer_name,
              "keyid": signer.identity, "waives": what, "expires": expires})


def notes_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version).")],
    since: Annotated[str | None, typer.Option(
        "--since", help="A previous release: list what changed since it (artifacts, and "
        "dependencies from the two SBOMs).", metavar="PREVIOUS")] = None,
    form: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    policy: PolicyOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeysOpt = None,
) -> None:
    """Release notes as evidence: the change, its requirements, artifacts and digests, the
    validation summary, approvals, waivers with residual risks, known limitations, and what
    changed since PREVIOUS. Only from statements signed by a trusted key."""
    from rebuild.release.notes import release_notes
    from rebuild.release.pages import render_notes

    if form not in ("md", "html"):
        raise UsageError(f"--format {form!r}: write md or html")
    opts = command_options(store, json_out)
    notes = release_notes(Store(store_for(opts, target)), target, _trust(policy, key), since)
    if opts.json:
        emit(notes)
    else:
        print(render_notes(notes, form), end="")
