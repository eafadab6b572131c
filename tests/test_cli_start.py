"""What a command imports at start: only the command being run is registered (typer inspects
every registered signature), so `rebuild show` and `rebuild verify` stay quick on a large
store; help and unknown commands still see every command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rebuild.cli.main import COMMANDS, GROUPS, invoked_command


@pytest.mark.parametrize(("argv", "expected"), [
    (["show", "x@1"], "show"),
    (["--store", "s", "--json", "verify", "x@1"], "verify"),
    (["--store=s", "--key", "k.pub", "show", "x@1"], "show"),
    (["--debug", "store", "gc"], "store"),
    (["--version"], None),
    (["--help"], None),
    ([], None),
    (["--", "build"], "build"),
])
def test_the_command_is_found_before_typer_parses(argv: list[str], expected: str | None
                                                   ) -> None:
    assert invoked_command(argv) == expected


def imported(tmp_path: Path, *args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules a real `rebuild ARGS` had imported when it exited, and its result."""
    listing = tmp_path / "modules.json"
    code = ("import atexit, json, runpy, sys\n"
            f"atexit.register(lambda: open({str(listing)!r}, 'w').write(json.dumps("
            "sorted(sys.modules))))\n"
            f"sys.argv = ['rebuild', '--store', {str(tmp_path / 'store')!r}, *{list(args)!r}]\n"
            "runpy.run_module('rebuild', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, cwd=tmp_path)
    return set(json.loads(listing.read_text())), proc


def test_show_imports_neither_other_commands_nor_x509(tmp_path: Path) -> None:
    modules, proc = imported(tmp_path, "show", "nothing@1.0.0")
    assert proc.returncode == 5, proc.stderr[-500:]  # the store is missing: exit 5, one line
    assert "rebuild.cli.release" in modules
    assert not modules & {"rebuild.cli.build", "rebuild.cli.keys", "rebuild.cli.store",
                          "rebuild.cli.log", "cryptography.x509", "docker"}


def test_help_and_an_unknown_command_still_list_every_command(tmp_path: Path) -> None:
    _, proc = imported(tmp_path, "--help")
    assert proc.returncode == 0
    for name in (*COMMANDS, *GROUPS):
        assert f" {name} " in proc.stdout
    _, proc = imported(tmp_path, "shoe", "x@1")
    assert proc.returncode == 2
    assert "No such command 'shoe'" in proc.stderr


@pytest.mark.parametrize("command", ["show", "verify"])
def test_show_and_verify_load_no_pydantic_and_nothing_they_do_not_use(
        tmp_path: Path, command: str) -> None:
    """typer's own coercion would load pydantic for every option: rebuild.cli.coerce converts
    the plain ones, and the audit log, the bundle reader and the policy file's model load only
    when they are used."""
    keygen = subprocess.run([sys.executable, "-m", "rebuild", "keygen", "--out",
                             str(tmp_path / "ci")], capture_output=True, text=True, check=False)
    assert keygen.returncode == 0, keygen.stderr
    modules, proc = imported(tmp_path, command, "nothing@1.0.0", "--key", "ci.pub", "--json")
    assert proc.returncode == 5, proc.stderr[-500:]  # the key read, then the store missing
    assert not {m for m in modules if m.split(".")[0] in {
        "pydantic", "jinja2", "docker", "requests", "tarfile", "concurrent"}}
    assert not modules & {"rebuild.store.auditlog", "rebuild.release.bundle",
                          "rebuild.release.policy", "rebuild.build.recipe"}


def test_an_option_typer_must_coerce_itself_still_does(tmp_path: Path) -> None:
    """A number given as text goes to typer's coercion: its range check and message hold."""
    _, proc = imported(tmp_path, "verify", "nothing@1.0.0", "--key", "ci.pub",
                       "--max-extract-ratio", "0")
    assert proc.returncode == 2 and "--max-extract-ratio" in proc.stderr
    _, proc = imported(tmp_path, "verify", "nothing@1.0.0", "--key", "ci.pub",
                       "--max-extract-ratio", "many")
    assert proc.returncode == 2 and "--max-extract-ratio" in proc.stderr
    _, proc = imported(tmp_path, "store", "gc", "--grace", "-1")
    assert proc.returncode == 2 and "--grace" in proc.stderr
