"""Shared fixtures: the CLI as a subprocess, recipe writers, and the base images.

Integration tests (marker `docker`) run against the real engine. A test that cannot run for
a missing tool is skipped naming the tool, and under CI (CI=true) such a skip is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.registry_support import RunningRegistry

ROOT = Path(__file__).resolve().parent.parent
# Containers started by this test session carry this prefix in their session label.
SESSION_PREFIX = f"pytest-{os.getpid()}-"
os.environ["REBUILD_SESSION_PREFIX"] = SESSION_PREFIX
# Base images are cached in a store of their own across test sessions and checkouts of this
# machine's user (REBUILD_TEST_IMAGES to choose another); `rebuild image build` rebuilds them
# whenever the definition or the Debian mirror changes, so the cache never hides a change.
IMAGE_STORE = Path(os.environ.get("REBUILD_TEST_IMAGES") or
                   Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                   / "rebuild" / "test-images")


def require_tool(name: str) -> None:
    """Skip (or, under CI, fail) a test that needs a tool this machine lacks."""
    if shutil.which(name) is None:
        message = f"{name} is not installed (make setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    """A test's HTTP server answering on a thread of its own until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.stdout)


def run_rebuild(*args: str | Path, store: Path | None = None, env: dict[str, str] | None = None,
                cwd: Path | None = None, timeout: float = 600) -> Result:
    argv = [sys.executable, "-m", "rebuild", *(str(a) for a in args)]
    if store is not None:
        argv[3:3] = ["--store", str(store)]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def build_image(definition: str) -> str:
    require_tool("mmdebstrap")
    result = run_rebuild("image", "build", ROOT / "images" / definition, "--json",
                         store=IMAGE_STORE)
    assert result.code == 0, result.stderr
    return str(result.json["image"])


@pytest.fixture(scope="session")
def minimal_image() -> str:
    """rebuild/debian-minimal: no tzdata, no locales."""
    require_tool("docker")
    return build_image("debian-minimal.toml")


@pytest.fixture(scope="session")
def c_image() -> str:
    """rebuild/debian-c: a C toolchain and python3."""
    require_tool("docker")
    return build_image("debian-c.toml")


@pytest.fixture(scope="session")
def node_image() -> str:
    """rebuild/debian-node: Debian's nodejs and npm (recipes with an npm_lock)."""
    require_tool("docker")
    return build_image("debian-node.toml")


def toml_value(value: object) -> str:
    return json.dumps(value) if not isinstance(value, dict) else (
        "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }")


RecipeWriter = Callable[..., Path]


@pytest.fixture
def write_recipe(tmp_path: Path) -> RecipeWriter:
    """Write a recipe and its source tree; returns the recipe's path."""

    def write(image: str, script: str, outputs: Sequence[str] = ("r",), *,
              name: str = "t", vary: Sequence[str] = ("all",), files: dict[str, str] | None = None,
              epoch: int = 1700000000, timeout: int = 120, extra: str = "") -> Path:
        src = tmp_path / f"src-{name}"
        src.mkdir(exist_ok=True)
        for rel, text in (files or {}).items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(
            f'[recipe]\nname = "{name}"\nversion = "1.0.0"\n\n'
            f'[source]\npath = "{src.name}"\n\n'
            f'[environment]\nimage = "{image}"\nsource_date_epoch = {epoch}\n\n'
            f'[build]\ncommand = ["sh", "-c", {toml_value(script)}]\n'
            f"outputs = {toml_value(list(outputs))}\ntimeout = {timeout}\nmemory = \"512m\"\n\n"
            f"[check]\nvary = {toml_value(list(vary))}\n{extra}")
        return recipe

    return write


def seed_store(target: Path, source: Path = IMAGE_STORE) -> None:
    """A new store holding the archived base images (hard links: blobs never change)."""
    (target / "blobs" / "sha256").mkdir(parents=True)
    for blob in (source / "blobs" / "sha256").iterdir():
        try:
            os.link(blob, target / "blobs" / "sha256" / blob.name)
        except OSError:
            shutil.copy2(blob, target / "blobs" / "sha256" / blob.name)
    for name in ("oci-layout", "index.json"):
        shutil.copy(source / name, target / name)


@pytest.fixture
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh store for the test; with the base images archived when the test uses one."""
    path = tmp_path / "store"
    images = [f for f in ("minimal_image", "c_image", "node_image")
              if f in request.fixturenames]
    for fixture in images:
        request.getfixturevalue(fixture)
    if images:
        seed_store(path)
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """Debian's docker-registry on 127.0.0.1, plain HTTP, for one test module."""
    from tests.registry_support import start_registry  # it imports this module

    running = start_registry(tmp_path_factory.mktemp("registry"))
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def no_containers_left(request: pytest.FixtureRequest) -> object:
    """Every engine test leaves no rebuild container behind (`docker ps -a` after it)."""
    yield
    if request.node.get_closest_marker("docker") is None or shutil.which("docker") is None:
        return
    listed = subprocess.run(["docker", "ps", "-a", "--filter", "label=dev.rebuild.session",
                             "--format", '{{.ID}} {{.Label "dev.rebuild.session"}}'],
                            capture_output=True, text=True, check=False).stdout.splitlines()
    left = [line for line in listed if line.split()[1].startswith(SESSION_PREFIX)]
    assert not left, f"containers left behind: {left}"


def tamper(path: Path) -> None:
    """Flip one byte of a stored blob, without touching other stores that hard-link it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.unlink()
    path.write_bytes(bytes(data))


def repoint_blob(store: Path, old: str, data: bytes) -> str:
    """Replace a blob by other bytes the way a forger with write access would: store them
    under their own digest and rewrite every manifest (and index entry) that named the old
    one, so that the store itself stays consistent and only signatures can tell."""
    import hashlib

    def put(content: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        (store / "blobs" / "sha256" / digest[7:]).write_bytes(content)
        return digest

    new = put(data)
    index = json.loads((store / "index.json").read_bytes())
    renamed = {old: new}
    changed = True
    while changed:
        changed = False
        for entry in index["manifests"]:
            path = store / "blobs" / "sha256" / entry["digest"][7:]
            text = path.read_text()
            if entry["digest"] in renamed or not any(o in text for o in renamed):
                continue
            for o, n in renamed.items():
                text = text.replace(o, n)
            renamed[entry["digest"]] = put(text.encode())
            changed = True
    for entry in index["manifests"]:
        entry["digest"] = renamed.get(entry["digest"], entry["digest"])
        for key, value in entry.get("annotations", {}).items():
            entry["annotations"][key] = renamed.get(value, value)
    (store / "index.json").write_text(json.dumps(index))
    return new
