"""The error contract: every failure exits with design.md's code and one message, never a
traceback (that only with --debug), and nothing refused is left in the store.

The table runs the real CLI as a subprocess against a dead engine (nothing may need one);
the two cases that must reach the engine (a FIFO in /out with --keep, a full workspace) are
marked `docker`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import RecipeWriter, Result, require_tool, run_rebuild

DEAD_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
IMAGE = "rebuild/debian-minimal:bookworm@sha256:" + "a" * 64


def recipe_text(*, source: str = 'path = "src"', environment: str = "",
                build: str = "") -> str:
    return (f'[recipe]\nname = "e"\nversion = "1.0.0"\n\n[source]\n{source}\n\n'
            f'[environment]\nimage = "{IMAGE}"\nsource_date_epoch = 1700000000\n{environment}\n'
            f'[build]\ncommand = ["true"]\noutputs = ["r"]\n{build}\n')


def with_epoch(value: str) -> str:
    return recipe_text().replace("source_date_epoch = 1700000000",
                                 f"source_date_epoch = {value}")


@dataclass(frozen=True)
class Case:
    """argv (with {recipe}, {store}, {dir} filled in), the recipe's text, what to set up."""

    argv: tuple[str, ...]
    code: int
    expected: tuple[str, ...]
    recipe: str | bytes | None = None
    setup: Callable[[Path], None] | None = None


def index_is(data: object) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        store = tmp / "store"
        (store / "blobs" / "sha256").mkdir(parents=True)
        (store / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (store / "index.json").write_text(json.dumps(data))
        (store / "blobs" / "sha256" / hashlib.sha256(b"{}").hexdigest()).write_bytes(b"{}")
    return setup


def non_utf8_policy(tmp: Path) -> None:
    (tmp / "policy.toml").write_bytes(b'[policy]\nbuilder_keys = ["\xff\xfe.pub"]\n')


def git_repo_with_tag(tmp: Path) -> None:
    repo = tmp / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f").write_text("x\n")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    subprocess.run([*git, "tag", "-a", "-m", "annotated", "v1"], check=True)
    tag = subprocess.run([*git, "rev-parse", "v1"], capture_output=True, text=True,
                         check=True).stdout.strip()
    recipe = recipe_text(source=f'git = "repo"\nrev = "{tag}"')
    (tmp / "r.toml").write_text(recipe)


def fifo_in_source(tmp: Path) -> None:
    os.mkfifo(tmp / "src" / "pipe")


DEEP = "a = " + "[" * 5000 + "]" * 5000 + "\n"

CASES: dict[str, Case] = {
    "unknown command": Case(("store", "mirror"), 2, ("No such command 'mirror'", "Usage:")),
    "unknown top-level command": Case(("biuld",), 2, ("No such command 'biuld'",)),
    "unknown option": Case(("build", "--bogus"), 2, ("No such option: --bogus",)),
    "missing argument": Case(("build",), 2, ("Missing argument",)),
    "missing option": Case(("keygen",), 2, ("Missing option '--out'",)),
    "option out of range": Case(("reproduce", "x@1", "--runs", "5"), 2, ("--runs",)),
    "index.json is a list": Case(("store", "ls"), 5, ("index.json", "manifests"),
                                 setup=index_is([{"digest": "sha256:" + "0" * 64}])),
    "index entry without digest": Case(
        ("store", "ls"), 5, ("manifests[0]", "restore index.json"),
        setup=index_is({"schemaVersion": 2, "manifests": [{"mediaType": "x", "size": 1}]})),
    "gc refuses a malformed index": Case(
        ("store", "gc"), 5, ("manifests[0]",),
        setup=index_is({"schemaVersion": 2, "manifests": [{"digest": "nope", "size": 1,
                                                           "mediaType": "x"}]})),
    "huge timeout": Case(("build", "{recipe}"), 2, ("build.timeout", "more than a week"),
                         recipe_text(build="timeout = 99999999999999999999")),
    "huge source_date_epoch": Case(("build", "{recipe}"), 2, ("after the year 9999",),
                                   with_epoch("99999999999999999999")),
    "memory 1k": Case(("build", "{recipe}"), 2, ("build.memory", "6 MiB"),
                      recipe_text(build='memory = "1k"')),
    "memory beyond 1024g": Case(("build", "{recipe}"), 2, ("build.memory",),
                                recipe_text(build='memory = "99999999999g"')),
    "empty env key": Case(("build", "{recipe}"), 2, ("build.env", "non-empty"),
                          recipe_text(build='env = { "" = "x" }')),
    "env key with =": Case(("build", "{recipe}"), 2, ("build.env", "'A=B'"),
                           recipe_text(build='env = { "A=B" = "x" }')),
    "env key with NUL": Case(("build", "{recipe}"), 2, ("build.env", "NUL"),
                             recipe_text(build='env = { "A\\u0000B" = "x" }')),
    "env value with NUL": Case(("build", "{recipe}"), 2, ("build.env", "NUL"),
                               recipe_text(build='env = { A = "x\\u0000y" }')),
    "TOML nested 5000 deep": Case(("build", "{recipe}"), 2, ("nested too deeply",), DEEP),
    "TOML nested 5000 deep, lock": Case(("lock", "{recipe}"), 2, ("nested too deeply",),
                                        DEEP),
    "non-UTF-8 recipe": Case(("build", "{recipe}"), 2, ("not UTF-8",),
                             recipe_text().encode() + b"# \xff\n"),
    "non-UTF-8 policy": Case(("verify", "e@1.0.0", "--policy", "{dir}/policy.toml"), 2,
                             ("policy.toml", "not UTF-8"), setup=non_utf8_policy),
    "annotated-tag git rev": Case(("fetch", "{dir}/r.toml"), 2,
                                  ("is a tag object, not a commit", "^{commit}"),
                                  setup=git_repo_with_tag),
    "path = /proc": Case(("fetch", "{recipe}"), 2, ("pseudo-filesystem",),
                         recipe_text(source='path = "/proc"')),
    "path = /sys": Case(("lock", "{recipe}"), 2, ("pseudo-filesystem",),
                        recipe_text(source='path = "/sys/kernel"')),
    "path = /dev": Case(("fetch", "{recipe}"), 2, ("pseudo-filesystem",),
                        recipe_text(source='path = "/dev"')),
    "FIFO in the source tree": Case(("fetch", "{recipe}"), 2, ("pipe", "not a regular file"),
                                    recipe_text(), setup=fifo_in_source),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_path(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "r").write_text("r\n")
    recipe = tmp_path / "recipe.toml"
    if case.recipe is not None:
        if isinstance(case.recipe, bytes):
            recipe.write_bytes(case.recipe)
        else:
            recipe.write_text(case.recipe)
    if case.setup is not None:
        case.setup(tmp_path)
    blobs_before = _blobs(tmp_path / "store")
    argv = [a.format(recipe=recipe, dir=tmp_path) for a in case.argv]
    started = time.monotonic()
    result = run_rebuild(*argv, store=tmp_path / "store", env=DEAD_ENGINE, timeout=60)
    assert result.code == case.code, result.stderr
    assert time.monotonic() - started < 30  # refused quickly: /proc is never read
    _assert_one_clear_error(result)
    for fragment in case.expected:
        assert fragment in result.stderr
    assert _blobs(tmp_path / "store") == blobs_before  # nothing refused is stored


def _assert_one_clear_error(result: Result) -> None:
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) <= 1


def _blobs(store: Path) -> set[str]:
    blobs = store / "blobs" / "sha256"
    return {p.name for p in blobs.iterdir()} if blobs.is_dir() else set()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(DEEP)
    result = run_rebuild("--debug", "build", recipe, env=DEAD_ENGINE)
    assert result.code == 2
    assert "Traceback" in result.stderr and "nested too deeply" in result.stderr


def test_an_unexpected_error_is_one_line_with_a_hint(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from rebuild.cli import main as cli

    def crash(**_: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "app", crash)
    monkeypatch.setattr(cli.OPTIONS, "debug", False)
    with pytest.raises(SystemExit) as exited:
        cli.run()
    assert exited.value.code == 3  # not 1: no claim was checked
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: unexpected ZeroDivisionError: division by zero; this is "
                                "a bug in rebuild: rerun with --debug for the traceback and "
                                "report it"]
    monkeypatch.setattr(cli.OPTIONS, "debug", True)
    with pytest.raises(SystemExit):
        cli.run()
    assert "Traceback" in capsys.readouterr().err


# -- refused inputs leave nothing in the store -----------------------------------------------


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_refused_download_leaves_no_blob(tmp_path: Path) -> None:
    archive = tmp_path / "evil-1.0.tar.gz"
    archive.write_bytes(_tar_gz({"evil-1.0/ok": b"x", "evil-1.0/../../escape": b"y"}))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(source=f'url = "{archive.as_uri()}"\nsha256 = "{sha}"'))
    store = tmp_path / "store"
    result = run_rebuild("fetch", recipe, store=store)
    assert result.code == 2, result.stderr
    assert "'..'" in result.stderr
    assert sha not in _blobs(store)
    # Accepted inputs are still stored: a good archive at the same place is kept.
    archive.write_bytes(_tar_gz({"good-1.0/ok": b"x"}))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    recipe.write_text(recipe_text(source=f'url = "{archive.as_uri()}"\nsha256 = "{sha}"'))
    assert run_rebuild("fetch", recipe, store=store).code == 0
    assert sha in _blobs(store)


def test_a_refused_git_export_leaves_no_blob(tmp_path: Path) -> None:
    require_tool("git")
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "escape").symlink_to("../../../etc/passwd")
    subprocess.run([*git, "add", "escape"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    rev = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(source=f'git = "repo"\nrev = "{rev}"'))
    result = run_rebuild("fetch", recipe, store=tmp_path / "store")
    assert result.code == 2, result.stderr
    assert "points outside" in result.stderr
    assert _blobs(tmp_path / "store") == set()


def test_a_git_repository_named_like_an_option_is_not_an_option(tmp_path: Path) -> None:
    require_tool("git")
    marker = tmp_path / "ran"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(
        source=f'git = "--upload-pack=touch {marker};x://h/r"\nrev = "{"a" * 40}"'))
    result = run_rebuild("fetch", recipe, store=tmp_path / "store")
    assert result.code == 3, result.stderr  # a remote that cannot be cloned
    assert "cannot clone" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


# -- a full disk -----------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `where` (the tests run as root), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI"):
            pytest.fail("a full-disk test needs root and mount")
        pytest.skip("a full-disk test needs root and mount")
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_store_disk_is_a_clear_error_and_harms_nothing(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        store = disk / "store"
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "small").write_text("small\n")
        recipe = tmp_path / "recipe.toml"
        recipe.write_text(recipe_text())
        assert run_rebuild("fetch", recipe, store=store).code == 0
        before = _blobs(store)
        (tmp_path / "src" / "big").write_bytes(os.urandom(2 << 20))
        result = run_rebuild("fetch", recipe, store=store, env=DEAD_ENGINE)
        assert result.code == 3, result.stderr
        _assert_one_clear_error(result)
        assert "disk is full" in result.stderr or "no space left" in result.stderr
        assert _blobs(store) == before
        assert list((store / ".tmp").iterdir()) == []
        fsck = run_rebuild("store", "fsck", store=store)
        assert fsck.code == 0, fsck.stderr


def test_say_shows_terminal_escapes_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from rebuild.cli.common import say, shown

    say(f"  {shown('usr/bin/x' + chr(27) + '[2J')}  sha256:…")
    say("plain line\twith a tab")
    err = capsys.readouterr().err
    assert chr(27) not in err
    assert "'usr/bin/x\\x1b[2J'" in err
    assert "plain line\twith a tab" in err
    assert shown("a\nb") == "'a\\nb'" and shown("usr/bin/hello") == "usr/bin/hello"


# -- with the engine -------------------------------------------------------------------------


@pytest.mark.docker
def test_a_fifo_in_out_is_kept_as_a_fifo(minimal_image: str, write_recipe: RecipeWriter,
                                         store: Path, tmp_path: Path) -> None:
    recipe = write_recipe(minimal_image, "mkfifo /out/pipe && echo r > /out/r", vary=["time"])
    result = run_rebuild("build", recipe, "--keep", tmp_path / "kept", store=store)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    for run in ("a", "b"):
        assert stat.S_ISFIFO((tmp_path / "kept" / run / "pipe").lstat().st_mode)
        assert (tmp_path / "kept" / run / "r").read_text() == "r\n"


@pytest.mark.docker
def test_a_full_workspace_is_a_clear_error(minimal_image: str, write_recipe: RecipeWriter,
                                           store: Path, tmp_path: Path) -> None:
    recipe = write_recipe(minimal_image, "cp big /out/r", vary=["time"])
    (recipe.parent / "src-t" / "big").write_bytes(os.urandom(3 << 20))
    with small_tmpfs(tmp_path / "workspace", "4m") as workspace:
        result = run_rebuild("build", recipe, store=store, env={"TMPDIR": str(workspace)})
        assert result.code == 3, result.stderr
        _assert_one_clear_error(result)
        assert "disk is full" in result.stderr
    fsck = run_rebuild("store", "fsck", store=store)
    assert fsck.code == 0, fsck.stderr
    ls = run_rebuild("store", "ls", "--json", store=store)
    assert not [e for e in ls.json["entries"] if e["kind"] in ("release", "attempt")]


# -- smaller fixes ---------------------------------------------------------------------------


PIP_COMPILE_OUTPUT = """\
flit-core==3.9.0 \\
    --hash=sha256:7aada352fb0c7f5538c4fafeddf314d3a6a92ee8e2b1de70482329e42de70301
    # via -r hello.in

# The following packages are considered to be unsafe in a requirements file:
setuptools==69.0.2 \\
    --hash=sha256:1e8fdff6797d3865f37397be788a4e3cba233608e9b509382a2777d25ebde7f2
    # via -r hello.in
"""


def test_lock_accepts_pip_compiles_unsafe_section(tmp_path: Path) -> None:
    from rebuild.errors import UsageError
    from rebuild.inputs.lock import _refuse_local_references

    lock, source = tmp_path / "hello.lock.txt", tmp_path / "hello.in"
    _refuse_local_references(PIP_COMPILE_OUTPUT, lock, source)  # setuptools/pip can be locked
    for bad in ("pkg @ file:///srv/pkg-1.0-py3-none-any.whl", "--index-url https://x/simple",
                f"-e {tmp_path}/pkg"):
        with pytest.raises(UsageError, match="a local path, an index or an option"):
            _refuse_local_references(PIP_COMPILE_OUTPUT + bad + "\n", lock, source)


def test_double_star_reaches_names_with_a_newline(tmp_path: Path) -> None:
    from rebuild.build.compare import collect_outputs, glob_to_regex

    assert glob_to_regex("**").fullmatch("a\nb")
    assert glob_to_regex("share/**").fullmatch("share/doc/x\ny")
    assert glob_to_regex("*.txt").fullmatch("a\nb.txt")
    assert not glob_to_regex("*.txt").fullmatch("d/a.txt")
    (tmp_path / "share" / "doc").mkdir(parents=True)
    (tmp_path / "share" / "doc" / "line\nbreak").write_text("x")
    (tmp_path / "share" / "plain").write_text("y")
    names = [a.name for a in collect_outputs(tmp_path, ["share/**"], "a")]
    assert names == ["share/doc/line\nbreak", "share/plain"]


def test_a_recipe_conflicting_with_a_release_is_refused_before_the_runs(tmp_path: Path) -> None:
    from rebuild.build.recipe import LoadedRecipe, parse_recipe
    from rebuild.errors import UsageError
    from rebuild.store.layout import KIND, REF_NAME, SUBJECT, Descriptor, Store
    from rebuild.twin import refuse_release_conflict

    def loaded(text: str) -> LoadedRecipe:
        import tomllib

        return LoadedRecipe(tmp_path / "e.toml", text.encode(),
                            parse_recipe(tomllib.loads(text)))

    store = Store(tmp_path / "store")
    store.init()
    original = loaded(recipe_text())
    refuse_release_conflict(store, original)  # no such release yet
    recipe_blob, size = store.put_bytes(original.text)
    release = store.put_artifact("application/vnd.test.release", [])
    store.add_to_index(release, {REF_NAME: "e@1.0.0", KIND: "release"})
    inputs = store.put_artifact("application/vnd.test.inputs",
                                [Descriptor("application/toml", recipe_blob, size)])
    store.add_to_index(inputs, {KIND: "inputs", SUBJECT: release.digest})

    refuse_release_conflict(store, original)  # the same recipe may build it again
    refuse_release_conflict(store, original, {recipe_blob})
    with pytest.raises(UsageError, match="built from another recipe") as info:
        refuse_release_conflict(store, loaded(recipe_text(build="timeout = 60")))
    assert info.value.exit_code == 2 and "bump [recipe] version" in str(info.value)
    with pytest.raises(UsageError, match="other inputs"):
        refuse_release_conflict(store, original, {recipe_blob, "sha256:" + "1" * 64})


def test_a_full_disk_while_staging_outputs_names_nothing_and_leaves_nothing(
        tmp_path: Path) -> None:
    from rebuild.build.compare import collect_outputs
    from rebuild.errors import EnvironmentProblem
    from rebuild.store.layout import Store

    out = tmp_path / "out"
    out.mkdir()
    (out / "small").write_text("small\n")
    (out / "big").write_bytes(os.urandom(2 << 20))
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        store = Store(disk / "store")
        store.init()
        with pytest.raises(EnvironmentProblem, match="no space left"), \
                store.staging() as staging:
            collect_outputs(out, ["*"], "a", stage=staging)
        assert list(store.blobs.iterdir()) == []
        assert list((store.root / ".tmp").iterdir()) == []
