"""Commands about a stored release: `reproduce`, `verify`, `show`, `export`, `approve`,
`withdraw`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rebuild.build.limits import BundleLimits, parse_size, show_size
from rebuild.errors import ExitCode, UsageError
from rebuild.store.layout import Store

if TYPE_CHECKING:
    pass

from rebuild.cli.common import (
    OPTIONS,
    JsonOpt,
    KeylessOpt,
    KeyOpt,
    Options,
    StoreOpt,
    TrustConfigOpt,
    TsaCertOpt,
    command_options,
    emit,
    log_verifier,
    make_signer,
    push_back,
    remote_location,
    say,
    shown,
    store_for,
    terminal_safe,
    tsa_trust,
)


def reproduce_cmd(
    target: Annotated[str | None, typer.Argument(
        help="A release (name@version) or an artifact digest (sha256:<hex>); none with "
        "--pending.", show_default=False)] = None,
    pending: Annotated[bool, typer.Option(
        "--pending", help="Be a rebuilder: reproduce every release of the remote store "
        "(--store oci://…) that has no verdict from --key yet, attaching each verdict "
        "there.")] = False,
    lease: Annotated[int, typer.Option(
        "--lease", min=60, metavar="SECONDS", help="With --pending: how long a claim on a "
        "release holds off other workers of the same key.")] = 7200,
    runs: Annotated[int, typer.Option("--runs", min=1, max=2, help="1: rebuild once; 2: also "
                                      "repeat the twin check with every variation.")] = 1,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Repeat the twin check and name the variation(s) behind each "
        "difference between the two runs.")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
    keyless: KeylessOpt = False,
    trust_config: TrustConfigOpt = None,
) -> None:
    """Rebuild a stored release from its recorded inputs only; sign the verdict with --key
    or --keyless."""
    from rebuild.release.reproduce import reproduce

    opts = command_options(store, json_out, key)
    if pending:
        _rebuild_pending(opts, target, lease, keyless, trust_config)
        return
    if target is None:
        raise UsageError("name the release to reproduce, or pass --pending with --store "
                         "oci://… to reproduce every release that has no verdict from --key")
    signer = make_signer(opts, what="verdict", keyless=keyless, trust_config=trust_config)
    directory = store_for(opts, target)
    verdict = reproduce(Store(directory), target, runs=runs, cache_dir=opts.cache,
                        signer=signer, explain=explain, log=say,
                        debug=say if opts.debug else lambda _: None)
    for artifact in verdict.artifacts:
        state = "same" if artifact.match else "DIFFERS"
        differs = "" if artifact.match else f" ({', '.join(artifact.differs)})"
        say(f"  {state:<8} {shown(artifact.name)}{differs}  recorded sha256:{artifact.recorded}  "
            f"rebuilt sha256:{artifact.rebuilt}")
        if artifact.report:
            say(f"           report: rebuild store cat {artifact.report}")
    for name, blame in verdict.explanation.items():
        culprits = ", ".join(blame.variations) or "no variation (inherent)"
        say(f"  twin runs differ on {shown(name)}: caused by {culprits}")
    outcome = "REPRODUCED bit for bit" if verdict.reproducible else "NOT reproduced"
    signed = f"; signed verdict {verdict.verdict}" if verdict.verdict else ""
    say(f"{verdict.release}: {outcome}{signed}")
    if verdict.verdict:
        push_back(opts, directory, target)
    if opts.json:
        emit(verdict.to_json())
    if not verdict.reproducible:
        raise typer.Exit(ExitCode.CLAIM_FAILED)


def _rebuild_pending(opts: Options, target: str | None, lease: int, keyless: bool,
                     trust_config: Path | None) -> None:
    from rebuild.release.rebuilder import rebuild_pending

    location = remote_location(opts.store)
    if target is not None or location is None:
        raise UsageError("--pending reproduces the releases of a remote store: pass --store "
                         "oci://HOST/REPOSITORY and no release")
    if opts.key is None and not keyless:
        raise UsageError("--pending attaches signed verdicts: pass --key PREFIX.key "
                         "(or --keyless)")
    signer = make_signer(opts, what="verdict", keyless=keyless, trust_config=trust_config)
    assert signer is not None
    outcomes = rebuild_pending(location, signer, cache_root=opts.cache, lease=lease, log=say,
                               debug=say if opts.debug else lambda _: None)
    for outcome in outcomes:
        say(f"  {outcome.state:<14} {outcome.release}: {outcome.detail}")
    done = sum(o.state in ("reproduced", "not reproduced") for o in outcomes)
    say(f"{location}: {len(outcomes)} release(s), {done} reproduced by this worker")
    if opts.json:
        emit({"store": location, "releases": [o.to_json() for o in outcomes]})
    worst = max((o.exit_code for o in outcomes if o.state == "failed"), default=0) or \
        max((o.exit_code for o in outcomes), default=0)
    if worst:
        raise typer.Exit(worst)


def verify(
    target: Annotated[str, typer.Argument(help="A release (name@version), an artifact "
                                                "digest (sha256:<hex>), or an exported bundle "
                                                "FILE (`rebuild export`).")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy file (TOML).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="Trusted public key (PREFIX.pub); repeatable.")] = None,
    identity: Annotated[str | None, typer.Option(
        "--certificate-identity", help="Trusted keyless signer: the certificate's identity "
        "(e-mail address or URI), exactly.", metavar="ID", show_default=False)] = None,
    issuer: Annotated[str | None, typer.Option(
        "--certificate-oidc-issuer", help="The OIDC issuer of --certificate-identity.",
        metavar="URL", show_default=False)] = None,
    trust_config: TrustConfigOpt = None,
    log_key: Annotated[Path | None, typer.Option(
        "--log-key", help="Require the release's records in the audit log, under checkpoints "
        "signed by this log key (PREFIX.pub of `rebuild log keygen`).", metavar="PUB",
        show_default=False)] = None,
    tsa_cert: TsaCertOpt = None,
    max_extract_size: Annotated[str, typer.Option(
        "--max-extract-size", help="A bundle FILE: the most its extraction may write "
        "(bytes, or k/m/g/t).")] = show_size(BundleLimits.max_size),
    max_extract_ratio: Annotated[int, typer.Option(
        "--max-extract-ratio", min=1, help="A bundle FILE: the most bytes its extraction "
        "may write per byte of the file.")] = BundleLimits.max_ratio,
) -> None:
    """Check a release's artifacts, signatures, subjects and provenance, offline; or every
    byte of an exported bundle FILE, then the release inside it (no store needed)."""
    from dataclasses import replace

    from rebuild.evidence.sign import load_keyless_identity
    from rebuild.release.verify import keys_policy, verify_bundle_file, verify_release

    opts = command_options(store, json_out)
    keys = key or ([OPTIONS.key] if OPTIONS.key else [])
    if (identity is None) != (issuer is None) or (trust_config and identity is None):
        raise UsageError("keyless verification takes --certificate-identity ID and "
                         "--certificate-oidc-issuer URL together (and --trust-config FILE "
                         "unless the signer used Sigstore's public-good instance)")
    keyless = ([load_keyless_identity(identity, issuer, trust_config)]
               if identity is not None and issuer is not None else [])
    if policy:
        from rebuild.release.policy import load_policy  # pydantic: only for a policy file

        rules = replace(load_policy(policy), keyless=tuple(keyless))
    else:
        rules = keys_policy(keys, keyless)
    if log_key is not None:
        rules = replace(rules, log_key=log_verifier(log_key))
    if tsa_cert is not None:
        rules = replace(rules, tsa=tsa_trust(tsa_cert))
    if Path(target).is_file():
        limits = BundleLimits(parse_size(max_extract_size, what="--max-extract-size"),
                              max_extract_ratio)
        report = verify_bundle_file(Path(target), rules, limits)
    elif target.endswith((".tar", ".gz", ".tgz")) or "/" in target:
        raise UsageError(f"{target}: no such bundle file")
    else:
        report = verify_release(Store(store_for(opts, target)), target, rules)
    for check in report.checks:
        say(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    say(f"{report.release or target}: {'VERIFIED' if report.ok else 'NOT VERIFIED'}")
    if opts.json:
        emit(report.to_json())
    if not report.ok:
        raise typer.Exit(ExitCode.CLAIM_FAILED)


def show(
    target: Annotated[str, typer.Argument(help="A release (name@version) or an artifact "
                                                "digest (sha256:<hex>).")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy file (TOML).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="Trusted public key (PREFIX.pub); repeatable. Without keys nothing is "
        "shown as verified.")] = None,
) -> None:
    """The release's story: what, from what, by whom, how checked, who approved."""
    from rebuild.evidence.sign import load_public_key
    from rebuild.release.report import release_story, render_text
    from rebuild.release.verify import Policy

    opts = command_options(store, json_out)
    keys = key or ([OPTIONS.key] if OPTIONS.key else [])
    if policy is not None:
        from rebuild.release.policy import load_policy  # pydantic: only when a policy file is read

        rules = load_policy(policy)
    else:
        rules = Policy(tuple(load_public_key(k) for k in keys))
    story = release_story(Store(store_for(opts, target)), target, rules)
    if opts.json:
        emit(story)
    else:
        print(terminal_safe(render_text(story)), end="")


def export_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version) or an artifact "
                                                "digest (sha256:<hex>).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle: a tar, "
                                         "compressed when the name ends in .gz or .tgz.",
                                         metavar="FILE")],
    with_inputs: Annotated[bool, typer.Option(
        "--with-inputs", help="Include the inputs (source, base image, wheels), so that the "
        "release can be reproduced from the bundle alone.")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="A signer's public key (PREFIX.pub), copied into the bundle and used "
        "to check the evidence for the report; repeatable.")] = None,
) -> None:
    """Write one self-contained, byte-reproducible evidence bundle of a release."""
    from rebuild.release.export import export_release

    opts = command_options(store, json_out)
    keys = key or ([OPTIONS.key] if OPTIONS.key else [])
    if not keys:
        say("warning: no --key: the bundle's report will not say whether the signatures "
            "verify; pass the signers' public keys (PREFIX.pub)")
    exported = export_release(Store(store_for(opts, target)), target, output, keys=keys,
                              with_inputs=with_inputs)
    state = {True: "evidence verified", False: "evidence NOT verified",
             None: "signatures not checked"}[exported.verified]
    say(f"{exported.release}: wrote {output} ({exported.files} files, "
        f"{'with' if with_inputs else 'without'} inputs; {state}); sha256 {exported.sha256}")
    if opts.json:
        emit(exported.to_json())


def approve_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version).")],
    role: Annotated[str, typer.Option("--role", help="e.g. quality, release-manager.")],
    meaning: Annotated[str, typer.Option("--meaning", help='What the signature means, e.g. '
                                         '"released for clinical pilot".')],
    comment: Annotated[str | None, typer.Option("--comment")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="The signer's printed name (default: env REBUILD_SIGNER_NAME, or the "
        "login name).")] = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Policy the evidence must meet first.")] = None,
    trust: Annotated[list[Path] | None, typer.Option(
        "--trust", help="Trusted builder key (PREFIX.pub), instead of a policy.")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
) -> None:
    """Sign an approval (name, role, meaning, time) of a release whose evidence verifies."""
    import getpass
    from datetime import UTC, datetime

    from rebuild.release.approve import approve
    from rebuild.release.policy import load_policy
    from rebuild.release.verify import keys_policy

    opts = command_options(store, json_out, key)
    if opts.key is None:
        raise UsageError("an approval must be signed: pass --key PREFIX.key")
    signer = make_signer(opts, what="approval")
    from rebuild.evidence.sign import KeySigner

    assert isinstance(signer, KeySigner)
    rules = load_policy(policy) if policy else keys_policy(trust or [])
    signer_name = name or os.environ.get("REBUILD_SIGNER_NAME") or getpass.getuser()
    directory = store_for(opts, target)
    digest = approve(Store(directory), target, role=role, meaning=meaning, name=signer_name,
                     comment=comment, signer=signer.key, policy=rules, time=datetime.now(UTC))
    say(f"{target}: approved by {signer_name} as {role} ({meaning}); approval {digest}")
    push_back(opts, directory, target)
    if opts.json:
        emit({"release": target, "approval": digest, "role": role, "name": signer_name,
              "keyid": signer.identity})


def withdraw_cmd(
    entry: Annotated[int, typer.Argument(help="The audit-log entry of the approval "
                                              "(`rebuild log show`).")],
    reason: Annotated[str, typer.Option("--reason", help="Why the approval is withdrawn.")],
    name: Annotated[str | None, typer.Option(
        "--name", help="The signer's printed name (default: env REBUILD_SIGNER_NAME, or the "
        "login name).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
) -> None:
    """Withdraw an approval: a signed correction naming its log entry; nothing is removed."""
    import getpass
    from datetime import UTC, datetime

    from rebuild.evidence.sign import KeySigner, load_signer, passphrase_from_env
    from rebuild.release.approve import withdraw_approval

    opts = command_options(store, json_out, key)
    if opts.key is None:
        raise UsageError("a withdrawal must be signed by the approval's key: pass --key "
                         "PREFIX.key")
    signer = KeySigner(load_signer(opts.key, passphrase_from_env()))
    signer_name = name or os.environ.get("REBUILD_SIGNER_NAME") or getpass.getuser()
    digest = withdraw_approval(Store(opts.store), entry, reason=reason, name=signer_name,
                               signer=signer.key, time=datetime.now(UTC))
    say(f"approval of entry {entry} withdrawn by {signer_name}; withdrawal {digest}")
    if opts.json:
        emit({"withdrawn": entry, "withdrawal": digest, "name": signer_name,
              "keyid": signer.identity})


def compare_upstream_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version) whose recipe has "
                                          "[upstream].")],
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare a release's artifact with the one its maintainers published, bit for bit."""
    from rebuild.release.upstream import compare_upstream

    opts = command_options(store, json_out)
    result = compare_upstream(Store(opts.store), target, log=say)
    if result.equal:
        say(f"{result.release}: {result.artifact} is EQUAL to upstream: the same bytes "
            f"(sha256:{result.built}) as {result.upstream_url}")
    else:
        say(f"{result.release}: {result.artifact} DIFFERS from upstream: built "
            f"sha256:{result.built}, published sha256:{result.upstream} ({result.upstream_url})")
        say(f"  report: rebuild store cat {result.report} (HTML {result.html}, JSON "
            f"{result.json_report})")
    if opts.json:
        emit(result.to_json())
    if not result.equal:
        raise typer.Exit(ExitCode.CLAIM_FAILED)
