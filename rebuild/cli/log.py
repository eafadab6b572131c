"""`rebuild log`: the audit log's timeline, its checks, checkpoints and proofs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rebuild.errors import ExitCode, StoreError, UsageError
from rebuild.store.layout import Store

if TYPE_CHECKING:
    pass

from rebuild.cli.common import (
    JsonOpt,
    LogKeyOpt,
    Options,
    StoreOpt,
    TsaCertOpt,
    command_options,
    emit,
    log_verifier,
    remote_location,
    say,
    store_for,
    tsa_trust,
)

log_app = typer.Typer(no_args_is_help=True, help="The audit log: an append-only, tamper-evident "
                      "record of builds, releases, verdicts and approvals.")


@log_app.command("keygen")
def log_keygen(
    out: Annotated[Path, typer.Option("--out", help="Writes OUT.key (0600) and OUT.pub.")],
    name: Annotated[str, typer.Option("--name", help="The log's name (its checkpoints' "
                                      "origin), e.g. example.com/rebuild-log.")]
    = "rebuild.local/audit-log",
    json_out: JsonOpt = False,
) -> None:
    """Make the log key (Ed25519, signed-note format); sign with env REBUILD_LOG_KEY=OUT.key,
    pin OUT.pub when verifying. Keep it apart from the store."""
    from rebuild.store.auditlog import generate_log_key

    opts = command_options(None, json_out)
    private, public, verifier = generate_log_key(out, name)
    if opts.json:
        emit({"private": str(private), "public": str(public), "verifier": verifier.to_text()})
    say(f"wrote {private} (private, 0600) and {public}: {verifier.to_text()}")


@log_app.command("show")
def log_show(
    release: Annotated[str | None, typer.Argument(help="A release (name@version); default: "
                                                       "every entry.")] = None,
    log_key: LogKeyOpt = None,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="Trusted public key (PREFIX.pub) of the statements' signers; "
        "repeatable.")] = None,
    tsa_cert: TsaCertOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The timeline: when, who (name and key), role, what and its meaning, each entry marked
    verified only when its inclusion and its statements' signatures checked out, and its
    time: the machine's, or bounded by a timestamp authority's when --tsa-cert verifies it."""
    from rebuild.evidence.sign import load_public_key, verify_bundle
    from rebuild.store.auditlog import carried_timeline, timeline

    opts = command_options(store, json_out)
    keys = [load_public_key(k) for k in (key or [])]
    verifier, tsa = log_verifier(log_key), tsa_trust(tsa_cert)
    if remote_location(opts.store) is not None:
        # A registry holds no log, only the proofs each push carried: the release's closure
        # (its log-proof records among it) comes into the local cache, checked blob by blob.
        if release is None:
            raise UsageError(f"{opts.store} is a registry: it holds each release's log "
                             "proofs, not the log; name the release (`rebuild log show "
                             "NAME@VERSION --store …`)")
        shown = carried_timeline(Store(store_for(opts, release)), release, verifier,
                                 lambda data: verify_bundle(data, keys), tsa)
    else:
        shown = timeline(Store(opts.store), release, verifier,
                         lambda data: verify_bundle(data, keys), tsa)
    if opts.json:
        emit(shown)
        return
    if shown.get("source") == "carried proofs":
        print(f"audit log {shown['origin']} (proofs carried with {release}, not the log): "
              f"{shown['size']} entries; checkpoint signatures {shown['checkpoint_signature']}; "
              f"times: {shown['time_source']}")
    else:
        print(f"audit log {shown['origin']}: {shown['size']} entries; checkpoint signature "
              f"{shown['checkpoint_signature']}; times: {shown['time_source']}")
    for row in shown["entries"]:
        actor = row["actor"]
        mark = "verified" if row["verified"] else "NOT VERIFIED"
        extra = ""
        if "corrects" in row:
            extra += f" (corrects entry {row['corrects']})"
        if "withdrawn_by" in row:
            extra += f" (WITHDRAWN by entry {row['withdrawn_by']})"
        sigs = "; ".join(f"{k}: {v}" for k, v in row["signatures"].items())
        print(f"#{row['entry']:<5} {row['time']}  {row['event']:<18} {row['release']}  "
              f"{actor['name']} ({actor['role']}, key {str(actor['keyid'])[:16]}): "
              f"{row['meaning']}{extra}  [{mark}; in log: {row['in_log']}"
              f"{'; ' + sigs if sigs else ''}]")
        if row.get("source") == "carried":
            checkpoint = row["checkpoint"]
            print(f"       carried proof {row['proof']} under checkpoint {checkpoint['size']} "
                  f"of {checkpoint['origin']} (signature {checkpoint['signature']})"
                  + (f": {row['problem']}" if "problem" in row else ""))
        print(f"       time: {_time_text(row['trusted_time'])}")
    for problem in shown["problems"]:
        print(f"NOT VERIFIED: {problem}")
    if "limits" in shown:
        say(f"note: {shown['limits']}")


def _time_text(bound: dict[str, Any]) -> str:
    """An entry's time as `log show` prints it: what backs it, precisely."""
    unproven = bound.get("unproven")
    note = (f" (token of checkpoint {unproven['checkpoint']} {unproven['token']}: "
            f"{unproven['detail']})" if unproven else "")
    if bound["source"] != "tsa":
        return f"machine time, not attested{note}"
    after = (f", after {bound['not_before']} (the previous timestamped checkpoint did not "
             "include it)" if "not_before" in bound else "")
    return (f"in the log no later than {bound['not_after']}{after}: time from TSA "
            f"{bound['tsa']}, verified (the first timestamped checkpoint that includes it, "
            f"{bound['checkpoint']} entries){note}")


@log_app.command("verify")
def log_verify(
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="A checkpoint kept earlier (`rebuild log checkpoint -o FILE`): "
        "the log must extend it.", metavar="FILE", show_default=False)] = None,
    log_key: LogKeyOpt = None,
    tsa_cert: TsaCertOpt = None,
    release: Annotated[list[str] | None, typer.Option(
        "--release", help="On a registry (--store oci://…) or a store without the log, "
        "whose carried log proofs to check: NAME@VERSION, repeatable.", metavar="RELEASE",
        show_default=False)] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Recompute the tree from the entries, check every tile and checkpoint, prove the log
    consistent with a kept checkpoint, check every timestamp token against the pinned TSA
    chain, and check the store against it; exit 1 naming the first entry that differs. On a
    registry, which holds proofs and not the log: check the proofs the releases carry."""
    from rebuild.store.auditlog import verify_log

    opts = command_options(store, json_out)
    verifier = log_verifier(log_key)
    tsa = tsa_trust(tsa_cert)
    from rebuild.store.auditlog import AuditLog

    location = remote_location(opts.store)
    if location is not None or (release and not AuditLog.of(Store(opts.store)).exists()):
        _verify_carried(opts, location or str(opts.store), release or [], checkpoint, verifier,
                        tsa)
        return
    if release:
        raise UsageError("--release checks the proofs a store without the log carries; this "
                         "store keeps its log, which is checked whole (and `rebuild verify "
                         "RELEASE --policy P` checks a release's events against it)")
    kept = None
    if checkpoint is not None:
        try:
            kept = checkpoint.read_bytes()
        except OSError as exc:
            raise UsageError(f"--checkpoint {checkpoint}: {exc.strerror}") from None
    st = Store(opts.store)
    st.require()
    report = verify_log(st, verifier, kept, tsa)
    for check in report.checks:
        say(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if report.signed is None:
        say("  checkpoint signatures NOT VERIFIED: pass --log-key PUB to check them")
    if report.stamps and report.stamps_verified is None:
        say(f"  {report.stamps} timestamp token(s) NOT VERIFIED: pass --tsa-cert FILE (the "
            "TSA's chain) to check them")
    elif not report.stamps:
        say("  no checkpoint is timestamped: entry times are the machine's, not attested")
    state = "consistent" if report.ok else "NOT consistent: rewritten or damaged"
    say(f"audit log of {report.size} entries: {state}")
    if opts.json:
        emit(report.to_json())
    if not report.ok:
        raise typer.Exit(ExitCode.CLAIM_FAILED)


def _verify_carried(opts: Options, location: str, releases: list[str],
                    checkpoint: Path | None, verifier: Any, tsa: Any) -> None:
    """`log verify` on a registry (or a store a release was pulled into, without the log):
    what can be checked there (each release's carried proofs against their checkpoints and
    the pinned log key, the records they name against the records attached) and, said
    plainly, what cannot (the whole tree is not there)."""
    from rebuild.store.auditlog import CARRIED_LIMITS, release_log_checks
    from rebuild.store.layout import KIND

    if checkpoint is not None:
        raise UsageError(f"--checkpoint: {location} holds proofs, not the log's tiles, so the "
                         "log's consistency with a kept checkpoint cannot be proven there; run "
                         "`rebuild log verify --checkpoint FILE` on the store that keeps the log")
    if not releases:
        raise UsageError(f"{location} is a registry: it holds each release's log proofs, not "
                         f"the log. Name the releases to check (--release NAME@VERSION); "
                         f"{CARRIED_LIMITS}")
    results: dict[str, list[dict[str, Any]]] = {}
    ok = True
    for name in releases:
        st = Store(store_for(opts, name))
        found = st.find(name)
        if found is None:
            raise StoreError(f"no release {name} in {location}")
        referrers = [((e.annotations or {}).get(KIND, ""), e.digest)
                     for e in st.referrers(found.digest)]
        checks = release_log_checks(st, found.digest, referrers, verifier, tsa, own=False)
        results[name] = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
        for check in checks:
            ok = ok and check.ok
            say(f"  {'ok  ' if check.ok else 'FAIL'} {name}: {check.name}: {check.detail}")
    if verifier is None:
        say("  checkpoint signatures NOT VERIFIED: pass --log-key PUB to check them")
    say(f"not checked here: {CARRIED_LIMITS}")
    say(f"log proofs of {len(releases)} release(s) in {location}: "
        f"{'verified' if ok else 'NOT VERIFIED: a proof or a record does not check'}")
    if opts.json:
        emit({"store": location, "ok": ok, "releases": results, "not_checked": CARRIED_LIMITS})
    if not ok:
        raise typer.Exit(ExitCode.CLAIM_FAILED)


@log_app.command("timestamp")
def log_timestamp(
    tsa: Annotated[str | None, typer.Option(
        "--tsa", help="The timestamp authority's URL (default: env REBUILD_TSA_URL).",
        metavar="URL", show_default=False)] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Get an RFC 3161 token for the current checkpoint (unless it has one): every entry in
    the log is then bounded by a trusted time. Appends do this themselves when a TSA is
    configured (`rebuild --tsa URL …`); this catches up a log appended without one."""
    import os

    from rebuild.store.auditlog import STAMP_DIR, TSA_URL_ENV, AuditLog
    from rebuild.store.timestamp import read_token, utc

    opts = command_options(store, json_out)
    url = tsa or os.environ.get(TSA_URL_ENV)
    if not url:
        raise UsageError("which timestamp authority? pass --tsa URL (or set REBUILD_TSA_URL)")
    st = Store(opts.store)
    st.require()
    stamp, fresh = AuditLog.of(st).timestamp_current(url)
    claimed = read_token(stamp.token)
    if opts.json:
        emit({"checkpoint": stamp.size, "new": fresh, "time": utc(claimed.time),
              "tsa": claimed.tsa, "token": f"log/{STAMP_DIR}/{stamp.size}.tsr"})
    say(f"{'timestamped' if fresh else 'already timestamped:'} the checkpoint of {stamp.size} "
        f"entries, {utc(claimed.time)} by {claimed.tsa} (log/{STAMP_DIR}/{stamp.size}.tsr; "
        "verifiers check it with --tsa-cert)")


@log_app.command("checkpoint")
def log_checkpoint(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to keep it.",
                                         metavar="FILE")],
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Save the current checkpoint, to prove later (`log verify --checkpoint`) that the log
    was only appended to since."""
    from rebuild.store import tlog
    from rebuild.store.auditlog import AuditLog

    opts = command_options(store, json_out)
    current = AuditLog.of(Store(opts.store)).read_checkpoint()
    if current is None:
        raise StoreError(f"no audit log in {opts.store}: nothing was recorded yet")
    output.write_bytes(current[0])
    if opts.json:
        emit({"checkpoint": str(output), "size": current[2].size,
              "root": tlog.b64(current[2].root), "origin": current[2].origin})
    say(f"wrote {output}: {current[2].size} entries, root {current[2].root.hex()[:16]}…")


@log_app.command("prove")
def log_prove(
    entry: Annotated[int | None, typer.Option(
        "--entry", help="An inclusion proof of this entry (C2SP tlog-proof).")] = None,
    since: Annotated[Path | None, typer.Option(
        "--since", help="A consistency proof from this kept checkpoint to the current one "
        "(base64 hashes, one a line).", metavar="FILE", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print a proof made from the tiles, for checkers other than rebuild (with --json: the
    proof's text in a JSON document)."""
    from rebuild.store import tlog
    from rebuild.store.auditlog import AuditLog

    opts = command_options(store, json_out)
    if (entry is None) == (since is None):
        raise UsageError("choose one: --entry N (inclusion) or --since FILE (consistency)")
    log = AuditLog.of(Store(opts.store))
    current = log.read_checkpoint()
    if current is None:
        raise StoreError(f"no audit log in {opts.store}: nothing was recorded yet")
    data, _, checkpoint = current
    if entry is not None:
        if not 0 <= entry < checkpoint.size:
            raise UsageError(f"--entry {entry}: the log has {checkpoint.size} entries")
        proof = tlog.InclusionProof(entry, tuple(log.inclusion_proof(entry, checkpoint.size)),
                                    data).to_bytes()
    else:
        assert since is not None
        try:
            old = tlog.parse_checkpoint(tlog.parse_note(since.read_bytes()).text)
        except OSError as exc:
            raise UsageError(f"--since {since}: {exc.strerror}") from None
        if old.size > checkpoint.size:
            raise UsageError(f"--since {since}: {old.size} entries, more than the log's "
                             f"{checkpoint.size}")
        proof = "".join(tlog.b64(h) + "\n" for h in
                        log.consistency_proof(old.size, checkpoint.size)).encode()
    if output is not None:
        output.write_bytes(proof)
    if opts.json:
        emit({"entry": entry, "since": str(since) if since else None,
              "size": checkpoint.size, "proof": proof.decode(),
              "output": str(output) if output else None})
    elif output is None:
        sys.stdout.buffer.write(proof)
