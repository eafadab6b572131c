"""Remote stores: a release with its whole closure pushed to, pulled from and copied between
real `docker-registry` instances, byte-exact."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, Result, require_tool, run_rebuild, seed_store, toml_value
from tests.integration.test_reproduce import reproduce_offline
from tests.registry_support import RunningRegistry, start_registry

pytestmark = pytest.mark.docker

RELEASE = "t@1.0.0"
SCRIPT = "umask 022 && mkdir -p /out/usr/bin && printf 'hello\\n' > /out/usr/bin/hello"


def entries(store: Path) -> list[str]:
    """index.json's entries, each as canonical text (order aside)."""
    index = json.loads((store / "index.json").read_bytes())
    return sorted(json.dumps(e, sort_keys=True) for e in index["manifests"])


def release_entries(store: Path) -> list[str]:
    """The entries of RELEASE's closure: the release, what names it, and the base-image record
    the inputs manifest names."""
    index = json.loads((store / "index.json").read_bytes())["manifests"]
    root = next(e["digest"] for e in index
                if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == RELEASE)
    inputs = next(e["digest"] for e in index
                  if e["annotations"].get("dev.rebuild.subject") == root
                  and e["annotations"]["dev.rebuild.kind"] == "inputs")
    layers = json.loads((store / "blobs/sha256" / inputs[7:]).read_bytes())["layers"]
    images = {layer["digest"] for layer in layers}
    return sorted(json.dumps(e, sort_keys=True) for e in index
                  if e["digest"] == root or e["annotations"].get("dev.rebuild.subject") == root
                  or (e["annotations"].get("dev.rebuild.kind") == "image"
                      and e["digest"] in images))


def blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs" / "sha256").iterdir()}


@pytest.fixture(scope="module")
def built(minimal_image: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A release built once for the module, signed with ci.key: (store, keys directory)."""
    base = tmp_path_factory.mktemp("built")
    assert run_rebuild("keygen", "--out", base / "ci").code == 0
    src = base / "src-t"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    recipe = base / "t.toml"
    recipe.write_text(
        f'[recipe]\nname = "t"\nversion = "1.0.0"\n\n[source]\npath = "src-t"\n\n'
        f'[environment]\nimage = "{minimal_image}"\nsource_date_epoch = 1700000000\n\n'
        f'[build]\ncommand = ["sh", "-c", {toml_value(SCRIPT)}]\n'
        f'outputs = ["usr/bin/hello"]\ntimeout = 120\nmemory = "512m"\n\n'
        '[check]\nvary = ["all"]\n')
    store = base / "store"
    seed_store(store)
    result = run_rebuild("build", recipe, "--key", base / "ci.key", store=store)
    assert result.code == 0, result.stderr
    return store, base


@pytest.fixture(scope="module")
def pushed(built: tuple[Path, Path], registry: RunningRegistry) -> Result:
    result = run_rebuild("store", "push", RELEASE, registry.url(), "--json", store=built[0])
    assert result.code == 0, result.stderr
    return result


def test_push_is_byte_exact_and_pull_restores_the_same_entries(
        built: tuple[Path, Path], registry: RunningRegistry, pushed: Result,
        tmp_path: Path) -> None:
    require_tool("skopeo")
    release = pushed.json["digest"]
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/rebuild/t:1.0.0"],
                         capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == release
    assert raw == (built[0] / "blobs/sha256" / release[7:]).read_bytes()

    pulled = tmp_path / "pulled"
    result = run_rebuild("store", "pull", registry.url(), RELEASE, "--json", store=pulled)
    assert result.code == 0, result.stderr
    assert result.json["digest"] == release
    # The same entries, and the log-proof record the push made from the store's log.
    proofs = [e for e in entries(pulled) if '"dev.rebuild.kind": "log-proof"' in e]
    assert len(proofs) == 1
    assert sorted(set(entries(pulled)) - set(proofs)) == release_entries(built[0])
    # Every blob of the closure arrived under its own digest, with the bytes it names.
    proof = json.loads(proofs[0])["digest"]
    made = {proof[7:], *(layer["digest"][7:] for layer in json.loads(
        (pulled / "blobs/sha256" / proof[7:]).read_bytes())["layers"])}
    assert blobs(pulled) - made <= blobs(built[0])
    for name in blobs(pulled):
        data = (pulled / "blobs/sha256" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == name
    assert run_rebuild("store", "fsck", store=pulled).code == 0
    verified = run_rebuild("verify", RELEASE, "--key", built[1] / "ci.pub", store=pulled)
    assert verified.code == 0, verified.stderr


def test_a_second_push_uploads_no_blob(built: tuple[Path, Path], registry: RunningRegistry,
                                       pushed: Result) -> None:
    posts, puts = registry.requests("POST"), registry.requests("PUT")
    again = run_rebuild("store", "push", RELEASE, registry.url(), "--json", store=built[0])
    assert again.code == 0, again.stderr
    assert again.json["blobs_sent"] == 0 and again.json["manifests_sent"] == 0
    assert registry.requests("POST") == posts  # no upload started
    assert registry.requests("PUT") == puts  # no blob, manifest or tag written
    assert registry.requests("HEAD") > 0


def test_copy_registry_to_registry(registry: RunningRegistry, pushed: Result,
                                   tmp_path: Path) -> None:
    other = start_registry(tmp_path / "other")
    try:
        result = run_rebuild("store", "copy", registry.url(), other.url("mirror"), RELEASE,
                             "--json")
        assert result.code == 0, result.stderr
        first, second = tmp_path / "first", tmp_path / "second"
        assert run_rebuild("store", "pull", registry.url(), RELEASE, store=first).code == 0
        assert run_rebuild("store", "pull", other.url("mirror"), RELEASE, store=second).code == 0
        assert entries(first) == entries(second)
        assert blobs(first) == blobs(second)
    finally:
        other.stop()


def test_qa_round_trip(built: tuple[Path, Path], registry: RunningRegistry, pushed: Result,
                       tmp_path: Path) -> None:
    keys = built[1]
    assert run_rebuild("keygen", "--out", tmp_path / "qa").code == 0
    qa_store = tmp_path / "qa-store"
    assert run_rebuild("store", "pull", registry.url(), RELEASE, store=qa_store).code == 0
    reproduced = reproduce_offline(qa_store, RELEASE, "--json", "--key", str(tmp_path / "qa.key"))
    assert reproduced.code == 0, reproduced.stderr
    verdict = reproduced.json["verdict"]
    back = run_rebuild("store", "push", RELEASE, registry.url(), "--json", store=qa_store)
    assert back.code == 0, back.stderr
    assert verdict in back.json["referrers"]

    ci_store = tmp_path / "ci-store"
    shutil.copytree(built[0], ci_store)
    assert run_rebuild("store", "pull", registry.url(), RELEASE, store=ci_store).code == 0
    shown = run_rebuild("show", RELEASE, "--key", keys / "ci.pub", "--key",
                        tmp_path / "qa.pub", "--json", store=ci_store)
    assert shown.code == 0, shown.stderr
    [found] = shown.json["verdicts"]
    assert found["signature"]["status"] == "verified"
    assert found["result"] == "PASSED"


def test_four_writers_attach_referrers_at_once(built: tuple[Path, Path],
                                               registry: RunningRegistry, pushed: Result,
                                               tmp_path: Path) -> None:
    keys = built[1]
    approvals: dict[str, str] = {}
    stores = []
    for n in range(4):
        store = tmp_path / f"writer{n}"
        shutil.copytree(built[0], store)
        assert run_rebuild("keygen", "--out", tmp_path / f"approver{n}").code == 0
        approved = run_rebuild("approve", RELEASE, "--role", f"role{n}", "--meaning", "ok",
                               "--name", f"Approver {n}", "--key", tmp_path / f"approver{n}.key",
                               "--trust", keys / "ci.pub", "--json", store=store)
        assert approved.code == 0, approved.stderr
        approvals[approved.json["approval"]] = f"role{n}"
        stores.append(store)
    procs = [subprocess.Popen([sys.executable, "-m", "rebuild", "--store", str(store), "store",
                               "push", RELEASE, registry.url()], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for store in stores]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()

    pulled = tmp_path / "pulled"
    assert run_rebuild("store", "pull", registry.url(), RELEASE, store=pulled).code == 0
    index = json.loads((pulled / "index.json").read_bytes())["manifests"]
    assert set(approvals) <= {e["digest"] for e in index}
    # The standard fallback index lists them too, once the writers are done.
    release = pushed.json["digest"]
    with urllib.request.urlopen(urllib.request.Request(
            f"http://{registry.host}/v2/rebuild/t/manifests/sha256-{release[7:]}",
            headers={"Accept": "application/vnd.oci.image.index.v1+json"})) as answer:
        listed = {d["digest"] for d in json.loads(answer.read())["manifests"]}
    assert set(approvals) <= listed


def test_missing_release_and_corrupt_blob_exit_5_and_write_nothing(
        registry: RunningRegistry, pushed: Result, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    missing = run_rebuild("store", "pull", registry.url(), "t@9.9.9", store=empty)
    assert missing.code == 5 and "no release t@9.9.9" in missing.stderr
    assert not (empty / "index.json").exists() or entries(empty) == []

    # The output blob of the release, rewritten in the registry's own storage.
    release = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://{registry.host}/v2/rebuild/t/manifests/1.0.0",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})).read())
    hello = release["layers"][0]["digest"][7:]
    data = next(registry.root.rglob(f"blobs/sha256/{hello[:2]}/{hello}/data"))
    original = data.read_bytes()
    data.write_bytes(b"X" * len(original))
    try:
        store = tmp_path / "store"
        result = run_rebuild("store", "pull", registry.url(), RELEASE, store=store)
        assert result.code == 5, result.stderr
        assert "do not match its digest" in result.stderr
        assert not (store / "blobs/sha256" / hello).exists()
        assert not (store / "index.json").exists() or entries(store) == []
    finally:
        data.write_bytes(original)


def test_unreachable_registry_exits_3(built: tuple[Path, Path]) -> None:
    from tests.registry_support import free_port

    result = run_rebuild("store", "push", RELEASE, f"oci+http://127.0.0.1:{free_port()}/r",
                         store=built[0])
    assert result.code == 3
    assert "unreachable" in result.stderr and "Traceback" not in result.stderr


def test_wrong_password_exits_3_and_never_shows_it(built: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    secure = start_registry(tmp_path / "secure", user="ci", password="right-horse-battery")
    try:
        assert secure.ca is not None
        wrong = "wrong-staple-9c1e"
        env = {"REBUILD_REGISTRY_USERNAME": "ci", "REBUILD_REGISTRY_PASSWORD": wrong,
               "REBUILD_REGISTRY_CA": str(secure.ca)}
        refused = run_rebuild("store", "push", RELEASE, secure.url(), "--json",
                              store=built[0], env=env)
        assert refused.code == 3
        assert "refused" in refused.stderr and "REBUILD_REGISTRY_PASSWORD" in refused.stderr
        debug = run_rebuild("--debug", "store", "push", RELEASE, secure.url(),
                            store=built[0], env=env)
        assert debug.code == 3
        for text in (refused.stdout, refused.stderr, debug.stdout, debug.stderr):
            assert wrong not in text
        for path in built[0].rglob("*"):
            if path.is_file():
                assert wrong.encode() not in path.read_bytes()
        untrusted = run_rebuild("store", "push", RELEASE, secure.url(), store=built[0],
                                env={**env, "REBUILD_REGISTRY_CA": ""})
        assert untrusted.code == 3 and "REBUILD_REGISTRY_CA" in untrusted.stderr
        # The right password, from Docker's config file.
        config = tmp_path / "docker"
        config.mkdir()
        import base64

        auth = base64.b64encode(b"ci:right-horse-battery").decode()
        (config / "config.json").write_text(json.dumps({"auths": {secure.host: {"auth": auth}}}))
        ok = run_rebuild("store", "push", RELEASE, secure.url(), store=built[0],
                         env={"DOCKER_CONFIG": str(config), "REBUILD_REGISTRY_CA": str(secure.ca)})
        assert ok.code == 0, ok.stderr
    finally:
        secure.stop()



def _fake_release(store: Path, release: str, sizes: list[int], seed: int) -> None:
    """A release whose artifacts are large files, written straight into a real store: the
    transfer is under test here, not the build."""
    import os

    from rebuild.store.layout import (
        KIND,
        REF_NAME,
        RELEASE_TYPE,
        TITLE,
        Descriptor,
        Store,
        release_annotations,
    )

    st = Store(store)
    st.init()
    layers = []
    for n, size in enumerate(sizes):
        path = store.parent / f"artifact-{n}"
        with path.open("wb") as f:
            f.write(bytes([seed, n]) * 4096)
            f.truncate(size)
        digest, written = st.put_file(path)
        os.unlink(path)
        layers.append(Descriptor("application/octet-stream", digest, written, {TITLE: f"f{n}"}))
    manifest = st.put_artifact(RELEASE_TYPE, layers,
                               annotations=release_annotations(release, 1700000000))
    st.add_to_index(manifest, {REF_NAME: release, KIND: "release"})


def test_a_1_gib_blob_pushes_under_200_mib_and_comes_back_whole(
        registry: RunningRegistry, tmp_path: Path) -> None:
    require_tool("/usr/bin/time")
    store = tmp_path / "store"
    _fake_release(store, "big@1.0.0", [1 << 30], seed=1)
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "rebuild", "--store",
                           str(store), "store", "push", "big@1.0.0", registry.url(), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(next(line.split(":")[1] for line in proc.stderr.splitlines()
                        if "Maximum resident set size" in line))
    assert peak_kib < 200 * 1024, f"peak {peak_kib} KiB"
    assert "pushing sha256:" in proc.stderr  # progress lines for a big transfer
    assert registry.requests("PATCH") >= (1 << 30) // (8 << 20)  # chunked upload
    pulled = tmp_path / "pulled"
    back = run_rebuild("store", "pull", registry.url(), "big@1.0.0", store=pulled)
    assert back.code == 0, back.stderr
    assert blobs(pulled) == blobs(store)


def test_a_push_killed_midway_is_finished_by_the_next(registry: RunningRegistry,
                                                      tmp_path: Path) -> None:
    import os
    import signal
    import time

    store = tmp_path / "store"
    _fake_release(store, "killed@1.0.0", [48 << 20] * 6, seed=2)
    finished = registry.requests("PUT", "digest=")
    proc = subprocess.Popen([sys.executable, "-m", "rebuild", "--store", str(store), "store",
                             "push", "killed@1.0.0", registry.url()], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while registry.requests("PUT", "digest=") < finished + 3:  # three blobs are up
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    name_tag = f"http://{registry.host}/v2/rebuild/killed/manifests/1.0.0"
    try:
        urllib.request.urlopen(urllib.request.Request(name_tag, method="HEAD"))
        tagged = True
    except OSError:
        tagged = False
    assert not tagged  # a half-finished push names no release
    rerun = run_rebuild("store", "push", "killed@1.0.0", registry.url(), "--json", store=store)
    assert rerun.code == 0, rerun.stderr
    assert rerun.json["blobs_sent"] <= 7 - 3  # six artifacts and the empty config, less those up
    pulled = tmp_path / "pulled"
    assert run_rebuild("store", "pull", registry.url(), "killed@1.0.0", store=pulled).code == 0
    assert blobs(pulled) == blobs(store)


def test_a_pull_killed_midway_is_resumed_by_the_next(registry: RunningRegistry,
                                                     tmp_path: Path) -> None:
    import os
    import signal
    import time

    source = tmp_path / "source"
    _fake_release(source, "resumed@1.0.0", [96 << 20] * 3, seed=3)
    assert run_rebuild("store", "push", "resumed@1.0.0", registry.url(), store=source).code == 0
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "rebuild", "--store", str(store), "store",
                             "pull", registry.url(), "resumed@1.0.0"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:  # killed once some blob is partly down
        parts = list((store / ".tmp").glob("pull-*.part")) if (store / ".tmp").is_dir() else []
        if any(p.stat().st_size > (8 << 20) for p in parts):
            break
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (store / "index.json").exists() or entries(store) == []  # nothing named yet
    rerun = run_rebuild("store", "pull", registry.url(), "resumed@1.0.0", "--json", store=store)
    assert rerun.code == 0, rerun.stderr
    import re

    resumed = re.search(r"resuming sha256:[0-9a-f]{64} at (\d+) of (\d+) bytes", rerun.stderr)
    assert resumed is not None, rerun.stderr
    assert 8 << 20 < int(resumed.group(1)) <= int(resumed.group(2))
    assert blobs(store) == blobs(source)
    assert run_rebuild("store", "fsck", store=store).code == 0
    assert not list((store / ".tmp").glob("pull-*"))


def test_bearer_tokens_from_a_token_service(tmp_path: Path) -> None:
    from tests.registry_support import TokenService

    (tmp_path / "tokens").mkdir()
    tokens = TokenService("ci", "token-horse-7d1f", tmp_path / "tokens")
    secure = start_registry(tmp_path / "registry", tokens=tokens)
    try:
        store = tmp_path / "store"
        _fake_release(store, "tok@1.0.0", [3 << 20, 1 << 10], seed=4)
        wrong = {"REBUILD_REGISTRY_USERNAME": "ci", "REBUILD_REGISTRY_PASSWORD": "nope-5a2c"}
        refused = run_rebuild("store", "push", "tok@1.0.0", secure.url(), store=store,
                              env=wrong)
        assert refused.code == 3, refused.stderr
        assert "refused" in refused.stderr and "nope-5a2c" not in refused.stderr
        assert tokens.refused > 0

        right = {"REBUILD_REGISTRY_USERNAME": "ci", "REBUILD_REGISTRY_PASSWORD": "token-horse-7d1f"}
        pushed = run_rebuild("store", "push", "tok@1.0.0", secure.url(), store=store, env=right)
        assert pushed.code == 0, pushed.stderr
        # The token asked for is the registry's challenge scope, whose actions Debian's
        # registry lists in either order ("pull,push" or "push,pull").
        assert ("repository:rebuild/tok", {"pull", "push"}) in [
            (s.rpartition(":")[0], set(s.rpartition(":")[2].split(","))) for s in tokens.scopes]
        pulled = tmp_path / "pulled"
        back = run_rebuild("store", "pull", secure.url(), "tok@1.0.0", store=pulled, env=right)
        assert back.code == 0, back.stderr
        assert blobs(pulled) == blobs(store)
        for text in (pushed.stderr, back.stderr):
            assert "token-horse-7d1f" not in text
    finally:
        secure.stop()
        tokens.stop()
