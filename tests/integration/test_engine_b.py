"""`build --engine-b`: run B on a second Docker engine, named in the record and provenance.

The second engine is started by the test on its own socket, data root and exec root, with a
label of its own, so that the record can be checked to name the engine run B really ran on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RecipeWriter, require_tool, run_rebuild
from tests.registry_support import cli_certs, free_port

pytestmark = pytest.mark.docker

CAREFUL = "umask 022 && printf 'hello\\n' > /out/r"
LABEL = "dev.rebuild.test=engine-b"


def docker_b(host: str, *args: str, tls: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tls)} if tls else None
    return subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True,
                          check=False, timeout=120, env=env)


@contextlib.contextmanager
def second_engine(*hide: Path, tls: Path | None = None) -> Iterator[str]:
    """A second dockerd, detached (setsid, output to a file, stdin /dev/null); stopped by its
    pid and its data removed afterwards. Yields its DOCKER_HOST. `hide`: directories of this
    host that the engine does not see (an empty tmpfs over each in its own mount namespace),
    as an engine on another machine would not. `tls`: certificates in the docker CLI's
    layout; the engine then listens on tcp://127.0.0.1 and requires a client certificate."""
    require_tool("dockerd")
    # Short: the socket paths of dockerd and its containerd must fit in sun_path.
    root = Path(tempfile.mkdtemp(prefix="rb-engine-", dir="/tmp"))
    host = f"tcp://127.0.0.1:{free_port()}" if tls else f"unix://{root}/sock"
    argv = ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "pid"), "-H", host, "--bridge=none",
            "--iptables=false", "--ip-masq=false", "--label", LABEL]
    if tls:
        argv += ["--tlsverify", f"--tlscacert={tls / 'ca.pem'}", f"--tlscert={tls / 'cert.pem'}",
                 f"--tlskey={tls / 'key.pem'}"]
    if hide:
        require_tool("unshare")
        mounts = " && ".join(f'mount -t tmpfs tmpfs "{path}"' for path in hide)
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'{mounts} && exec "$@"', "sh", *argv]
    with (root / "dockerd.log").open("wb") as log:
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while docker_b(host, "info", "--format", "{{.ID}}", tls=tls).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the second engine did not start: "
                            + (root / "dockerd.log").read_text()[-2000:])
            time.sleep(0.5)
        yield host
    finally:
        os.kill(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def engine_b() -> Iterator[str]:
    with second_engine() as host:
        yield host


def test_run_b_runs_on_the_second_engine_and_the_record_names_both(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, engine_b: str,
        tmp_path: Path) -> None:
    assert run_rebuild("keygen", "--out", tmp_path / "ci").code == 0
    image_id = minimal_image.rsplit("@", 1)[1]
    assert docker_b(engine_b, "image", "inspect", image_id).returncode != 0  # a fresh engine
    since = str(int(time.time()) - 1)
    result = run_rebuild("build", write_recipe(minimal_image, CAREFUL), "--engine-b", engine_b,
                         "--key", tmp_path / "ci.key", "--json", store=store)
    assert result.code == 0, result.stderr
    assert result.json["reproducible"] is True
    assert "run b on engine" in result.stderr
    # The image was loaded into engine B from the store's archive, and exactly one container
    # (run b's) was created there, from it, and removed.
    assert docker_b(engine_b, "image", "inspect", image_id).returncode == 0
    # --until takes whole seconds: the next one, or an event of this second is missed.
    events = docker_b(engine_b, "events", "--since", since, "--until",
                      str(int(time.time()) + 1),
                      "--filter", "type=container", "--filter", "event=create",
                      "--format", "{{json .}}").stdout.splitlines()
    assert len(events) == 1 and json.loads(events[0])["from"] == image_id
    assert docker_b(engine_b, "ps", "-aq").stdout.strip() == ""

    blobs = store / "blobs" / "sha256"
    attempt = json.loads((blobs / result.json["evidence"]["attempt"][7:]).read_bytes())
    record = json.loads((blobs / attempt["layers"][0]["digest"][7:]).read_bytes())
    engines = {run["name"]: run["engine"] for run in record["runs"]}
    assert set(engines) == {"a", "b"}
    assert LABEL in engines["b"]["labels"] and LABEL not in engines["a"]["labels"]
    info = json.loads(docker_b(engine_b, "info", "--format", "{{json .}}").stdout)
    assert engines["b"] == {"id": info["ID"], "name": info["Name"],
                            "version": info["ServerVersion"], "kernel": info["KernelVersion"],
                            "os": info["OperatingSystem"], "os_type": info["OSType"],
                            "arch": info["Architecture"], "cpus": info["NCPU"],
                            "labels": sorted(info["Labels"])}
    for facts in engines.values():  # the engine, never a path of this host
        assert engine_b not in json.dumps(facts) and str(store) not in json.dumps(facts)
    statement = json.loads((blobs / result.json["evidence"]["provenance"][7:]).read_bytes())
    runs = statement["predicate"]["buildDefinition"]["internalParameters"]["runs"]
    assert {name: run["engine"] for name, run in runs.items()} == engines
    # Signed: the release and its provenance verify with the build's key.
    show = run_rebuild("show", "t@1.0.0", "--key", tmp_path / "ci.pub", "--json", store=store)
    assert show.code == 0, show.stderr
    assert show.json["verification"]["verified"] is True
    assert show.json["provenance"]["signature"]["status"] == "verified"


def test_run_b_runs_on_an_engine_reached_over_tls(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, tmp_path: Path) -> None:
    """A tcp engine that requires a client certificate, reached with DOCKER_TLS_VERIFY and
    DOCKER_CERT_PATH as the docker CLI reads them: the image is loaded into it and run b runs
    there; without the certificates the engine is unreachable (exit 3)."""
    certs = cli_certs(tmp_path / "certs")
    recipe = write_recipe(minimal_image, CAREFUL)
    with second_engine(tls=certs) as host:
        refused = run_rebuild("build", recipe, "--engine-b", host, store=store)
        assert refused.code == 3, refused.stderr
        assert "unreachable" in refused.stderr and "Traceback" not in refused.stderr
        since = str(int(time.time()) - 1)
        result = run_rebuild("build", recipe, "--engine-b", host, "--json", store=store,
                             env={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)})
        assert result.code == 0, result.stderr
        assert result.json["reproducible"] is True
        events = docker_b(host, "events", "--since", since, "--until",
                          str(int(time.time()) + 1), "--filter", "type=container",
                          "--filter", "event=create", "--format", "{{json .}}",
                          tls=certs).stdout.splitlines()
        assert len(events) == 1  # run b's container, created on the TLS engine
        assert docker_b(host, "ps", "-aq", tls=certs).stdout.strip() == ""


def test_an_unreachable_engine_b_is_an_environment_problem(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, tmp_path: Path) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, CAREFUL), "--engine-b",
                         f"unix://{tmp_path}/no-engine.sock", store=store)
    assert result.code == 3, result.stderr
    assert "--engine-b" in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_engine_b_that_cannot_see_this_hosts_files_gets_the_inputs_copied(
        minimal_image: str, write_recipe: RecipeWriter, store: Path, tmp_path: Path) -> None:
    """As an engine on another machine: this host's run directories and its libfaketime are
    hidden from it (an empty tmpfs over each), so a bind mount of any of them is refused.
    Run B still runs there, its inputs copied in and /out copied back, reproducible: chosen
    with --engine-b-copy, and detected without it. A recipe that varies the directory order
    (disorderfs, on this host only) is refused there rather than recorded as varied."""
    from rebuild.build.sandbox import faketime_library

    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir()
    env = {"REBUILD_RUNTIME_DIR": str(runtime_dir)}
    assert run_rebuild("keygen", "--out", tmp_path / "ci").code == 0
    no_order = ["all", "-file_order"]
    with second_engine(runtime_dir, faketime_library().parent) as host:
        since = str(int(time.time()) - 1)
        chosen = run_rebuild("--debug", "build", write_recipe(minimal_image, CAREFUL,
                                                              vary=no_order),
                             "--engine-b", host, "--engine-b-copy", "--key", tmp_path / "ci.key",
                             "--json", store=store, env=env)
        assert chosen.code == 0, chosen.stderr
        assert chosen.json["reproducible"] is True
        assert "nothing of this host is mounted" in chosen.stderr
        # The runs print at once, each line whole.
        [line] = [line for line in chosen.stderr.splitlines()
                  if line.startswith("run b: docker run")]
        assert "type=bind" not in line and "--volume=" not in line
        assert "--mount=type=volume,target=/out" in line
        # Run B's container had anonymous volumes, and they went with it.
        volumes = docker_b(host, "events", "--since", since, "--until",
                           str(int(time.time()) + 1), "--filter", "type=volume",
                           "--filter", "event=create", "--format", "{{json .}}")
        assert len(volumes.stdout.splitlines()) >= 4, volumes.stdout
        assert docker_b(host, "volume", "ls", "-q").stdout.strip() == ""

        detected = run_rebuild("build", write_recipe(minimal_image, CAREFUL, name="d",
                                                     vary=no_order),
                               "--engine-b", host, "--json", store=store, env=env)
        assert detected.code == 0, detected.stderr
        assert detected.json["reproducible"] is True
        assert "does not see this host's files" in detected.stderr

        refused = run_rebuild("build", write_recipe(minimal_image, CAREFUL, name="o"),
                              "--engine-b", host, store=store, env=env)
        assert docker_b(host, "ps", "-aq").stdout.strip() == ""
    assert refused.code == 3, refused.stderr
    assert "file_order" in refused.stderr and "Traceback" not in refused.stderr
    assert run_rebuild("show", "o@1.0.0", store=store).code != 0  # no release recorded
    # Signed, and verified under a policy that accepts run b without the directory order.
    policy = tmp_path / "policy.toml"
    policy.write_text('[policy]\nbuilder_keys = ["ci.pub"]\nvariations = ["all", "-file_order"]\n')
    verified = run_rebuild("verify", "t@1.0.0", "--policy", policy, store=store)
    assert verified.code == 0, verified.stderr
