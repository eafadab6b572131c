"""The command line: the only place that prints, and that turns errors into exit codes.

`--json` prints one JSON document on stdout; everything for people goes to stderr. Each
command group lives in a module of its own; this one assembles them and runs them."""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer._click.exceptions import ClickException

from rebuild import __version__, runtime
from rebuild.errors import ExitCode, RebuildError

if TYPE_CHECKING:
    pass

from rebuild.cli import coerce
from rebuild.cli.common import OPTIONS, JsonOpt, KeyOpt, StoreOpt, emit, say

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproducible, hermetic builds: twin runs in sandboxed containers, "
                       "compared bit for bit, with the evidence kept in a store.")


def _print_version(value: bool) -> None:
    if value:
        print(f"rebuild {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
    tsa: Annotated[str | None, typer.Option(
        "--tsa", help="Timestamp authority (RFC 3161) for the audit log: each new checkpoint "
        "gets a token from this URL (env REBUILD_TSA_URL).", metavar="URL",
        show_default=False)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version,
                                          is_eager=True, help="Print the version.")] = False,
) -> None:
    OPTIONS.store = store or Path(os.environ.get("REBUILD_STORE", ".rebuild/store"))
    OPTIONS.json = json_out
    OPTIONS.debug = debug
    OPTIONS.key = key
    if tsa is not None:  # the log's appenders read it where they read REBUILD_LOG_KEY
        os.environ["REBUILD_TSA_URL"] = tsa
    # Every temporary file and directory of this process (and of the tools it runs) goes in
    # its runtime directory: removed at exit, and by the next build if this process is killed.
    tempfile.tempdir = os.environ["TMPDIR"] = str(runtime.process_dir())


# Command name -> (module of rebuild.cli, function); groups -> (module, typer app). Only the
# command being run is imported and registered: typer inspects the signature of every
# command it registers, which every start would pay for (`rebuild show` must take < 200 ms).
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("build", "build"), "lock": ("build", "lock"), "fetch": ("build", "fetch"),
    "keygen": ("keys", "keygen"), "reproduce": ("release", "reproduce_cmd"),
    "verify": ("release", "verify"), "show": ("release", "show"),
    "export": ("release", "export_cmd"), "approve": ("release", "approve_cmd"),
    "withdraw": ("release", "withdraw_cmd"), "promote": ("promote", "promote_cmd"),
    "gate": ("promote", "gate_cmd"), "trace": ("change", "trace_cmd"),
    "waive": ("change", "waive_cmd"), "notes": ("change", "notes_cmd"),
    "dashboard": ("dashboard", "dashboard_cmd"), "serve": ("dashboard", "serve_cmd"),
    "compare-upstream": ("release", "compare_upstream_cmd")}
GROUPS: dict[str, tuple[str, str]] = {
    "image": ("build", "image_app"), "recipe": ("build", "recipe_app"),
    "store": ("store", "store_app"), "log": ("log", "log_app")}
# The options of `main_options` that take a value: what follows them is not a command.
VALUED_OPTIONS = ("--store", "--key", "--tsa")


def invoked_command(argv: Sequence[str]) -> str | None:
    """The command (or group) named on a command line, before typer parses it; None when
    there is none (`rebuild --help`, `rebuild --version`)."""
    args = iter(argv)
    for arg in args:
        if arg == "--":
            return next(args, None)
        if arg in VALUED_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _loaded(module: str, name: str) -> Any:
    # __import__, not importlib.import_module: `python -X importtime` sees only the former.
    return getattr(__import__(f"rebuild.cli.{module}", fromlist=[name]), name)


def register_commands(target: typer.Typer, argv: Sequence[str]) -> None:
    """Register the command that `argv` runs, or every command when it names none that
    exists (so that help and click's "No such command" list them all)."""
    wanted = invoked_command(argv)
    known = wanted in COMMANDS or wanted in GROUPS
    for name, (module, function) in COMMANDS.items():
        if not known or name == wanted:
            target.command(name)(_loaded(module, function))
    for name, (module, group) in GROUPS.items():
        if not known or name == wanted:
            sub = _loaded(module, group)
            assert isinstance(sub, typer.Typer)
            target.add_typer(sub, name=name)


def main() -> NoReturn:
    """The `rebuild` command: `run`, then leave without the interpreter's teardown."""
    try:
        run()
    except SystemExit as exc:
        runtime.leave(exc.code)
    runtime.leave(0)


def run() -> None:
    """Run the CLI: every failure is one message and an exit code from design.md's table;
    a traceback only with --debug. Ends in SystemExit."""
    runtime.install_interrupt_handlers()
    coerce.install()
    try:
        if isinstance(app, typer.Typer) and not app.registered_commands + app.registered_groups:
            register_commands(app, sys.argv[1:])
        code = app(standalone_mode=False)
        if runtime.interrupting_signal():  # typer turns KeyboardInterrupt into 130
            _exit_interrupted()
        sys.exit(code if isinstance(code, int) else 0)
    except RebuildError as exc:
        _fail(str(exc), exc.exit_code, hint=exc.hint)
    except KeyboardInterrupt:
        _exit_interrupted()
    except ClickException as exc:
        # Unknown command or option, missing or bad argument: click's usage message (exit 2).
        exc.show()
        sys.exit(ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code)
    except OSError as exc:
        _fail(_os_error_message(exc), ExitCode.ENVIRONMENT)
    except Exception as exc:  # noqa: BLE001 (the last resort: never a bare traceback)
        # Not "the claim failed" (1): nothing was checked. The check could not be carried out
        # here, which is what exit 3 means; the message says it is a fault of rebuild's.
        _fail(f"unexpected {type(exc).__name__}: {_one_line(str(exc))}; this is a bug in "
              "rebuild: rerun with --debug for the traceback and report it", ExitCode.ENVIRONMENT)


def _fail(message: str, code: int, *, hint: str | None = None) -> NoReturn:
    if OPTIONS.debug:
        import traceback  # only with --debug: linecache and tokenize cost every start

        traceback.print_exc()
    say(f"error: {message}")
    if hint is not None:
        say(f"hint: {hint}")
        if OPTIONS.json:  # the one JSON document of a failure that has something to say
            emit({"error": message, "exit_code": int(code), "hint": hint})
    sys.exit(code)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"


def _os_error_message(exc: OSError) -> str:
    """What the operating system refused, where, and what to do (exit 3: the environment)."""
    where = f" ({exc.filename})" if exc.filename is not None else ""
    what = exc.strerror or _one_line(str(exc))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{what}{where}: the disk is full; free space (or point TMPDIR, --store or "
                "REBUILD_CACHE elsewhere) and run again; the store keeps only complete blobs")
    return f"{what}{where}; rerun with --debug for the traceback"


def _exit_interrupted() -> None:
    # SIGTERM and SIGHUP unwind like Ctrl-C (runtime.install_interrupt_handlers): every
    # container, mount and workspace was removed on the way out.
    signum = runtime.interrupting_signal() or signal.SIGINT
    say(f"interrupted ({signal.Signals(signum).name})")
    sys.exit(128 + signum)
