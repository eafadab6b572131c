"""`rebuild dashboard` and `rebuild serve`: the releases of a store as a static site, and
that site served read-only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rebuild.errors import EnvironmentProblem, UsageError
from rebuild.store.layout import Store

if TYPE_CHECKING:
    from rebuild.release.verify import Policy

from rebuild.cli.common import (
    OPTIONS,
    JsonOpt,
    StoreOpt,
    command_options,
    emit,
    remote_location,
    say,
)

PolicyOpt = Annotated[Path | None, typer.Option(
    "--policy", help="Policy file (TOML): its keys and rules decide each release's status.")]
KeysOpt = Annotated[list[Path] | None, typer.Option(
    "--key", help="Trusted builder public key (PREFIX.pub); repeatable. Without keys or a "
    "policy nothing is shown as verified.")]


def _policy(policy: Path | None, keys: list[Path]) -> Policy:
    from rebuild.evidence.sign import load_public_key
    from rebuild.release.verify import Policy

    if policy is not None:
        from rebuild.release.policy import load_policy

        return load_policy(policy)
    return Policy(tuple(load_public_key(k) for k in keys))


def _site_dir(output: Path) -> Path:
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output}: not a directory; name a directory for the site (it is "
                         "created when missing)")
    return output


def _store(opts_store: Path) -> Store:
    if remote_location(opts_store) is not None:
        raise UsageError("the dashboard reads a store directory; `rebuild store pull` the "
                         "releases of a registry into one first")
    return Store(opts_store)


def dashboard_cmd(
    output: Annotated[Path, typer.Option("-o", "--output", help="The site's directory "
                                         "(created; its .cache keeps unchanged pages).",
                                         metavar="DIR")],
    policy: PolicyOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeysOpt = None,
    recheck: Annotated[bool, typer.Option(
        "--recheck", help="Verify every release again, not only those whose records or log "
        "entries changed (a blob edited in place is caught so, or by `store fsck`).")] = False,
) -> None:
    """Write the release dashboard: a static site that works offline."""
    from datetime import UTC, datetime

    from rebuild.release.site import write_site

    opts = command_options(store, json_out)
    keys = key or ([OPTIONS.key] if OPTIONS.key else [])
    rules = _policy(policy, keys)
    if not (rules.builder_keys or rules.keyless):
        say("warning: no --key or --policy: no release is shown as verified")
    result = write_site(_store(opts.store), _site_dir(output), rules, today=datetime.now(UTC),
                        recheck=recheck, log=say)
    counts = ", ".join(f"{n} {g}" for g, n in result.counts.items())
    say(f"wrote {output / 'index.html'}: {result.releases} release(s) ({counts}); "
        f"{result.rendered} page(s) checked and written, the rest unchanged")
    if opts.json:
        emit(result.to_json())


def serve_cmd(
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="The site's directory (default: a temporary one).",
        metavar="DIR", show_default=False)] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="TCP port (0: any free one).")] = 8080,
    bind: Annotated[str, typer.Option(
        "--bind", help="Address to listen on; another than 127.0.0.1 only when you ask.",
        metavar="ADDR")] = "127.0.0.1",
    policy: PolicyOpt = None,
    store: StoreOpt = None,
    key: KeysOpt = None,
) -> None:
    """Serve the release dashboard read-only (GET and HEAD), regenerated when the store
    changes."""
    import tempfile
    from datetime import UTC, datetime

    from rebuild.release.serve import SiteFreshness, make_server
    from rebuild.release.site import store_signature, write_site

    opts = command_options(store, False)
    keys = key or ([OPTIONS.key] if OPTIONS.key else [])
    rules = _policy(policy, keys)
    target = _store(opts.store)
    target.require()
    with tempfile.TemporaryDirectory(prefix="rebuild-site-") as tmp:
        root = _site_dir(output) if output is not None else Path(tmp)

        def regenerate() -> None:
            write_site(target, root, rules, today=datetime.now(UTC), log=say)

        freshness = SiteFreshness(lambda: store_signature(target), regenerate)
        freshness.ensure()
        try:
            server = make_server(root, bind, port, freshness, say)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot listen on {bind}:{port}: {exc.strerror}; "
                                     "choose another --port") from None
        host, bound = server.server_address[:2]
        say(f"serving {target.root} read-only on http://{host!s}:{bound}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        finally:
            server.server_close()
