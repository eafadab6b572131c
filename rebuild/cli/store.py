"""`rebuild store`: listing, checking and collecting the store."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from rebuild.errors import EnvironmentProblem, StoreError
from rebuild.store.layout import KIND, REF_NAME, RELEASE_ANN, Store

if TYPE_CHECKING:
    from rebuild.build.sandbox import Reaped

from rebuild.cli.common import (
    JsonOpt,
    Location,
    StoreOpt,
    command_options,
    emit,
    report_transfer,
    say,
)

store_app = typer.Typer(no_args_is_help=True, help="Store upkeep.")


@store_app.command("ls")
def store_ls(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """List what the store holds: releases, images, attempts."""
    opts = command_options(store, json_out)
    st = Store(opts.store)
    st.require()
    rows = [{"kind": (e.annotations or {}).get(KIND, "?"),
             "name": (e.annotations or {}).get(REF_NAME)
             or (e.annotations or {}).get(RELEASE_ANN)
             or (e.annotations or {}).get("dev.rebuild.image.ref", ""),
             "status": (e.annotations or {}).get("dev.rebuild.status", ""),
             "digest": e.digest} for e in st.index()]
    if opts.json:
        emit({"store": str(opts.store), "entries": rows})
        return
    for row in rows:
        print(f"{row['kind']:<8} {row['name']:<40} {row['status']:<17} {row['digest']}")


@store_app.command("fsck")
def store_fsck(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Verify every blob's hash and every reference; exit 5 naming what is wrong."""
    opts = command_options(store, json_out)
    st = Store(opts.store)
    problems = st.fsck()
    if opts.json:
        emit({"store": str(opts.store), "ok": not problems,
              "problems": [{"digest": p.digest, "problem": p.what} for p in problems]})
    for problem in problems:
        say(f"{problem.digest}: {problem.what}")
    if problems:
        raise StoreError(f"{len(problems)} problem(s) in the store {opts.store}")
    say(f"store {opts.store}: all blobs verified")


@store_app.command("gc")
def store_gc(
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would be removed; remove nothing.")] = False,
    grace: Annotated[int, typer.Option(
        "--grace", min=0, metavar="SECONDS",
        help="Keep unreferenced blobs younger than this.")] = 3600,
) -> None:
    """Remove blobs that nothing in index.json references (except those a running build
    uses, and recent ones), and what killed rebuild processes left behind."""
    opts = command_options(store, json_out)
    st = Store(opts.store)
    collected = st.gc(grace, dry_run=dry_run)
    reaped = None if dry_run else _reap_orphans()
    verb = "would remove" if dry_run else "removed"
    for digest, size in collected.removed if dry_run else ():
        say(f"would remove {digest} ({size} bytes)")
    if opts.json:
        emit({"store": str(opts.store), "dry_run": dry_run,
              "removed": [{"digest": d, "size": n} for d, n in collected.removed],
              "bytes": collected.size, "kept": {"leased": collected.leased,
                                               "young": collected.young},
              "temporary": collected.temporary,
              **({"reaped": vars(reaped)} if reaped is not None else {})})
    say(f"{verb} {len(collected.removed)} unreferenced blob(s), {collected.size} bytes; kept "
        f"{collected.leased} in use by running builds and {collected.young} younger than "
        f"{grace} s; {verb} {collected.temporary} temporary file(s) of finished writers")
    if reaped is not None:
        say(f"removed {reaped.describe()} left by killed rebuild processes")


@store_app.command("compact")
def store_compact(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Fold the index journal an older rebuild kept into index.json (any use of the store
    does this too; index.json names every entry written by this rebuild)."""
    opts = command_options(store, json_out)
    folded = Store(opts.store).compact()
    if opts.json:
        emit({"store": str(opts.store), "folded": folded})
    say(f"store {opts.store}: {folded} journaled entr{'y' if folded == 1 else 'ies'} folded "
        "into index.json; index.json names every entry")


def _reap_orphans() -> Reaped:
    """Remove what killed rebuild processes left on this machine (their containers when the
    engine answers)."""
    from rebuild.build.sandbox import connect, reap_orphans

    try:
        client = connect()
    except EnvironmentProblem as exc:
        say(f"warning: {exc}; containers of killed builds are left for later")
        client = None
    return reap_orphans(client)


@store_app.command("cat")
def store_cat(digest: Annotated[str, typer.Argument(help="sha256:<hex>")],
              store: StoreOpt = None) -> None:
    """Print a blob (a report, a log, a manifest), verified."""
    opts = command_options(store, False)
    sys.stdout.buffer.write(Store(opts.store).read_bytes(digest))


ReleaseArg = Annotated[str, typer.Argument(metavar="RELEASE", help="NAME@VERSION")]


@store_app.command("push")
def store_push(release: ReleaseArg, destination: Location, store: StoreOpt = None,
               json_out: JsonOpt = False) -> None:
    """Copy a release with its whole closure from the store to another (a registry)."""
    from rebuild.store.transfer import transfer

    opts = command_options(store, json_out)
    report_transfer(transfer(str(opts.store), destination, release, log=say), release,
                    destination, opts.json)


@store_app.command("pull")
def store_pull(source: Location, release: ReleaseArg, store: StoreOpt = None,
               json_out: JsonOpt = False) -> None:
    """Copy a release with its whole closure from another store (a registry) into the store."""
    from rebuild.store.transfer import transfer

    opts = command_options(store, json_out)
    report_transfer(transfer(source, str(opts.store), release, log=say), release,
                    str(opts.store), opts.json)


@store_app.command("copy")
def store_copy(source: Location, destination: Location, release: ReleaseArg,
               json_out: JsonOpt = False) -> None:
    """Copy a release with its whole closure between two stores (directories or registries)."""
    from rebuild.store.transfer import transfer

    opts = command_options(None, json_out)
    report_transfer(transfer(source, destination, release, log=say), release,
                    destination, opts.json)
