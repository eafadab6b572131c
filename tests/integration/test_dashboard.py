"""The release dashboard on real releases: built by the engine, signed, approved, refused;
loaded offline in headless Chromium, and served read-only over HTTP.

The releases are built once for the module. Each release must sit in the group that
`rebuild verify --policy` (run separately, per release) puts it in, the counts must equal
those, every metric must have a chart, and text a build or an approver chose is escaped.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.browser_support import dump_dom, screenshot
from tests.conftest import ROOT, Result, run_rebuild, seed_store, toml_value

pytestmark = pytest.mark.docker

SCRIPT = "umask 022 && mkdir -p /out && printf 'firmware {name}\\n' > /out/fw.bin"
STAMPED = "mkdir -p /out && date +%s%N > /out/fw.bin"
HOSTILE_REQUIREMENT = "<script>document.title='pwned-req'</script>"
HOSTILE_COMMENT = "ok <script>document.title='pwned-comment'</script>"
METRICS = ("reproducibility", "completeness", "traceability", "stability", "waiver_closure")
OUTPUT = ROOT / "test-output" / "dashboard"


class Dom(HTMLParser):
    """The elements of a dumped DOM, each with its attributes, its text and its ancestors'
    attributes (enough to ask "which group holds this release")."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.elements: list[tuple[str, dict[str, str], list[dict[str, str]], list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag in ("meta", "link", "input", "br", "img", "line", "circle", "polyline"):
            self.elements.append((tag, attributes, [a for _, a in self.stack], []))
            return
        self.elements.append((tag, attributes, [a for _, a in self.stack], []))
        self.stack.append((tag, attributes))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self.elements:
            if any(element[1] is a for _, a in self.stack):
                element[3].append(data)

    def find(self, tag: str, **attrs: str
             ) -> list[tuple[dict[str, str], list[dict[str, str]], str]]:
        return [(a, up, "".join(text)) for t, a, up, text in self.elements
                if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def recipe(directory: Path, image: str, name: str, script: str,
           requirements: list[str] | None = None) -> Path:
    src = directory / f"src-{name}"
    src.mkdir()
    (src / "README").write_text(f"{name}\n")
    extra = f"requirements = {toml_value(requirements)}\n" if requirements else ""
    # A change record names the requirements a waiver may waive (ids only: no markup).
    change = (f'\n[change]\nid = "CR-{name}"\nrequirements = ["REQ-1"]\n'
              if name == "pending" else "")
    path = directory / f"{name}.toml"
    path.write_text(
        f'[recipe]\nname = "{name}"\nversion = "1.0.0"\n{extra}\n'
        f'[source]\npath = "{src.name}"\n\n'
        f'[environment]\nimage = "{image}"\nsource_date_epoch = 1700000000\n\n'
        f'[build]\ncommand = ["sh", "-c", {toml_value(script.format(name=name))}]\n'
        'outputs = ["fw.bin"]\ntimeout = 120\nmemory = "512m"\n\n[check]\nvary = ["all"]\n'
        + change)
    return path


@pytest.fixture(scope="module")
def releases(minimal_image: str, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    """A store with a release pending approval, an approved one, one built unsigned, and a
    build refused as not reproducible; the keys and the policy."""
    work = tmp_path_factory.mktemp("dashboard")
    store = work / "store"
    seed_store(store)
    for who in ("ci", "quality"):
        assert run_rebuild("keygen", "--out", work / who).code == 0
    policy = work / "policy.toml"
    policy.write_text('[policy]\nbuilder_keys = ["ci.pub"]\npromoter_keys = ["ci.pub"]\n\n'
                      '[[policy.approvals]]\nrole = "quality"\nkeys = ["quality.pub"]\n')
    environments = work / "environments.toml"
    environments.write_text('[[environment]]\nname = "staging"\nrepository = "staging-store"\n'
                            'policy = "policy.toml"\n')
    builds = [("pending", SCRIPT, ["REQ-1", HOSTILE_REQUIREMENT], True, 0),
              ("approved", SCRIPT, ["REQ-2"], True, 0),
              ("unsigned", SCRIPT, None, False, 0),
              ("stamped", STAMPED, None, True, 1)]
    for name, script, requirements, signed, code in builds:
        argv = ["build", recipe(work, minimal_image, name, script, requirements)]
        result = run_rebuild(*argv, *(["--key", work / "ci.key"] if signed else []),
                             store=store)
        assert result.code == code, result.stderr
    approved = run_rebuild("approve", "approved@1.0.0", "--role", "quality", "--meaning",
                           "released for the pilot", "--comment", HOSTILE_COMMENT, "--name",
                           "Quinn Quality", "--key", work / "quality.key", "--trust",
                           work / "ci.pub", store=store)
    assert approved.code == 0, approved.stderr
    expires = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y-%m-%d")
    waived = run_rebuild("waive", "pending@1.0.0", "--requirement", "REQ-1",
                         "--justification", "covered by the bench test of CAPA-9",
                         "--residual-risk", "low", "--expires", expires, "--role", "quality",
                         "--name", "Quinn Quality", "--key", work / "quality.key", "--trust",
                         work / "ci.pub", store=store)
    assert waived.code == 0, waived.stderr
    promoted = run_rebuild("promote", "approved@1.0.0", "--to", "staging", "--environments",
                           environments, "--key", work / "ci.key", store=store)
    assert promoted.code == 0, promoted.stderr
    site = work / "site"
    result = run_rebuild("dashboard", "-o", site, "--policy", policy, "--json", store=store)
    assert result.code == 0, result.stderr
    return {"work": work, "store": store, "policy": policy, "site": site}


def verify_group(store: Path, policy: Path, release: str) -> str:
    """The group a release belongs in, from `rebuild verify --policy` alone."""
    result = run_rebuild("verify", release, "--policy", policy, "--json", store=store)
    checks = {c["name"]: c["ok"] for c in result.json["checks"]}
    if result.code == 0:
        return "approved"
    if checks.get("twin build") is False:
        return "not reproducible"
    others = [ok for name, ok in checks.items() if not name.startswith("approval: ")]
    if others and all(others):
        return "verified"
    return "reproducible" if checks.get("twin build") else "not verified"


def test_overview_in_chromium_groups_counts_and_charts(releases: dict[str, Path]) -> None:
    store, policy, site = releases["store"], releases["policy"], releases["site"]
    expected = {r: verify_group(store, policy, r)
                for r in ("pending@1.0.0", "approved@1.0.0", "unsigned@1.0.0")}
    assert expected == {"pending@1.0.0": "verified", "approved@1.0.0": "approved",
                        "unsigned@1.0.0": "not verified"}
    # The refused build recorded an attempt and no release: verify has nothing to check.
    assert run_rebuild("verify", "stamped@1.0.0", "--policy", policy, store=store).code == 5
    expected["stamped@1.0.0"] = "not reproducible"
    dom = Dom(dump_dom(site / "index.html"))
    for release, group in expected.items():
        found = [up for _, up, _ in dom.find("li", data_release=release)]
        groups = {a.get("data-group") for up in found for a in up if "data-group" in a}
        assert groups == {group}, (release, groups)
    counts = {a["data-group"]: int(text) for a, _, text in dom.find("td", **{"class": "count"})
              if "data-group" in a}
    wanted = {g: sum(1 for v in expected.values() if v == g) for g in counts}
    assert counts == wanted
    pending = dom.find("tr", data_role="quality")
    assert len(pending) == 1 and "pending@1.0.0" in pending[0][2]
    assert "approved@1.0.0" not in pending[0][2]
    staging = dom.find("section", data_environment="staging")
    assert len(staging) == 1
    assert [a["data-release"] for a, up, _ in dom.find("li")
            if staging[0][0] in up] == ["approved@1.0.0"]
    for metric in METRICS:
        figures = dom.find("figure", data_metric=metric)
        assert len(figures) == 1, metric
        assert any(t == "svg" and figures[0][0] in up for t, _, up, _ in dom.elements), metric
    expiring = "".join(t for _, _, t in dom.find("section", id="expiring"))
    assert "pending@1.0.0" in expiring and "requirement REQ-1" in expiring
    # Nothing recorded is said so, never drawn from made-up data.
    assert "none recorded" in "".join(t for _, _, t in dom.find("section", id="failed"))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    screenshot(site / "index.html", OUTPUT / "overview.png")


def release_page(site: Path, release: str) -> Path:
    index = json.loads((site / "search-index.js").read_text().split("=", 1)[1].rstrip(";\n"))
    return site / next(page for text, kind, page in index
                       if text == release and kind == "release")


def test_release_page_escapes_and_marks_signatures(releases: dict[str, Path]) -> None:
    site = releases["site"]
    page = release_page(site, "approved@1.0.0")
    html = page.read_text()
    assert HOSTILE_COMMENT not in html and "&lt;script&gt;" in html
    dom_text = dump_dom(page)
    dom = Dom(dom_text)
    assert [t for _, _, t in dom.find("title")] == ["approved@1.0.0: release"]
    assert [t for _, _, t in dom.find("h1")] == ["approved@1.0.0"]
    comments = [t for _, _, t in dom.find("td", **{"class": "comment"})]
    assert comments == [HOSTILE_COMMENT]  # shown as text, not run
    assert not [a for a, _, t in dom.find("script") if "pwned" in t]
    marks = [a["data-signature"] for a, _, _ in dom.find("span") if "data-signature" in a]
    assert marks and set(marks) == {"verified"}, marks
    assert [a["data-environment"] for a, _, _ in dom.find("tr")
            if "data-environment" in a] == ["staging"]
    screenshot(page, OUTPUT / "release.png")

    pending = Dom(dump_dom(release_page(site, "pending@1.0.0")))
    assert [t for _, _, t in pending.find("title")] == ["pending@1.0.0: release"]
    requirements = [a["data-requirement"] for a, _, _ in pending.find("tr")
                    if "data-requirement" in a]
    assert requirements == ["REQ-1"]  # the trace matrix: the change record's requirements
    cells = [t for _, _, t in pending.find("td")]
    assert any(HOSTILE_REQUIREMENT in t for t in cells)  # [recipe] requirements, as text
    assert not [t for _, _, t in pending.find("script") if "pwned" in t]

    unsigned = Dom(dump_dom(release_page(site, "unsigned@1.0.0")))
    marks = [a["data-signature"] for a, _, _ in unsigned.find("span") if "data-signature" in a]
    assert marks and "verified" not in marks


def test_search_box_finds_requirements_changes_and_digests(releases: dict[str, Path]) -> None:
    site = releases["site"]
    page = release_page(site, "pending@1.0.0")
    shown = run_rebuild("show", "pending@1.0.0", "--json", store=releases["store"])
    digest = "sha256:" + shown.json["artifacts"][0]["sha256"]
    for query in ("REQ-1", "CR-pending", digest, "pending@1.0.0"):
        dom = Dom(dump_dom(site / "index.html", f"search={query}"))
        links = [a["href"] for a, up, _ in dom.find("a")
                 if any(u.get("id") == "search-results" for u in up)]
        assert links == [page.relative_to(site).as_posix()], (query, links)


def test_regenerating_checks_only_what_changed(releases: dict[str, Path]) -> None:
    store, policy, site, work = (releases[k] for k in ("store", "policy", "site", "work"))
    again = run_rebuild("dashboard", "-o", site, "--policy", policy, "--json", store=store)
    assert again.code == 0 and again.json["rendered"] == 0, again.stderr
    approved = run_rebuild("approve", "pending@1.0.0", "--role", "quality", "--meaning",
                           "released", "--name", "Quinn Quality", "--key",
                           work / "quality.key", "--trust", work / "ci.pub", store=store)
    assert approved.code == 0, approved.stderr
    after = run_rebuild("dashboard", "-o", site, "--policy", policy, "--json", store=store)
    assert after.code == 0 and after.json["rendered"] == 1, after.stderr
    assert after.json["counts"]["approved"] == 2
    assert after.json["counts"]["verified"] == 0
    # Other keys: every page is checked again, none reused.
    keys = run_rebuild("dashboard", "-o", site, "--json", store=store)
    assert keys.code == 0 and keys.json["rendered"] == 3
    assert keys.json["counts"]["not verified"] == 3


@pytest.fixture
def server(releases: dict[str, Path], tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """`rebuild serve` on a port of its choosing; (host, port, site)."""
    site = tmp_path / "served"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rebuild", "--store", str(releases["store"]), "serve", "-o",
         str(site), "--port", "0", "--policy", str(releases["policy"])],
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"on http://([0-9.]+):(\d+)/", line)
            if match:
                yield match.group(1), int(match.group(2)), site
                break
            assert line or proc.poll() is None, "rebuild serve stopped"
        else:
            pytest.fail(f"rebuild serve did not start: {line}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def request(host: str, port: int, method: str, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def other_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: UDP connect picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_serve_is_local_read_only_and_stays_inside_the_site(
        server: tuple[str, int, Path], releases: dict[str, Path]) -> None:
    host, port, site = server
    assert host == "127.0.0.1"
    other = other_address()
    if other is not None:
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=5).close()
    status, body = request(host, port, "GET", "/")
    assert status == 200 and b"Release dashboard" in body
    assert request(host, port, "HEAD", "/index.html") == (200, b"")
    for method in ("POST", "PUT", "DELETE", "PATCH", "PROPFIND"):
        assert request(host, port, method, "/index.html")[0] == 405, method
    (site.parent / "secret.txt").write_text("outside the site\n")
    for path in ("/../secret.txt", "/releases/../../secret.txt", "/%2e%2e/secret.txt",
                 "/releases/%2E%2E/%2e%2e/secret.txt", "/%2e%2e%2fsecret.txt",
                 "/..%2fsecret.txt", "/.cache/", "/nothing.html"):
        status, body = request(host, port, "GET", path)
        assert status == 404 and b"outside" not in body, path
    # The store changes: the next request serves the site regenerated from it.
    page = "/" + release_page(releases["site"], "approved@1.0.0").relative_to(
        releases["site"]).as_posix()
    status, before = request(host, port, "GET", page)
    assert status == 200 and before.count(b"Second Approver") == 0
    approved = run_rebuild("approve", "approved@1.0.0", "--role", "quality", "--meaning",
                           "checked again", "--name", "Second Approver", "--key",
                           releases["work"] / "quality.key", "--trust",
                           releases["work"] / "ci.pub", store=releases["store"])
    assert approved.code == 0, approved.stderr
    status, after = request(host, port, "GET", page)
    assert status == 200 and after.count(b"Second Approver") >= 1


def test_recheck_catches_a_blob_edited_in_place(releases: dict[str, Path]) -> None:
    """Pages are cached by what names a release (its manifest, referrers and log entries); a
    signed bundle edited in place changes none of those, so only --recheck sees it (exit 5,
    the blob named, as every command that reads it)."""
    import shutil

    from rebuild.store.layout import TITLE, Store
    from tests.conftest import tamper

    work = releases["work"] / "recheck"
    shutil.copytree(releases["store"], work / "store", copy_function=os.link)
    for name in ("index.json", "index.db", "index.wal"):  # rewritten by rebuild: own copies
        if (releases["store"] / name).exists():
            (work / "store" / name).unlink()
            shutil.copy(releases["store"] / name, work / "store" / name)
    store = Store(work / "store")
    release = store.find("approved@1.0.0")
    assert release is not None
    bundles = [layer["digest"] for ref in store.referrers(release.digest)
               for layer in store.read_json(ref.digest).get("layers", [])
               if layer.get("annotations", {}).get(TITLE) == "provenance.sigstore.json"]
    assert bundles, "the approved release has a signed provenance bundle"

    def dashboard(*extra: str) -> Result:
        return run_rebuild("dashboard", "-o", work / "site", "--policy", releases["policy"],
                           "--json", *extra, store=work / "store")

    assert dashboard().code == 0  # every page written and cached
    tamper(store.blob_path(bundles[0]))
    cached = dashboard()
    assert cached.code == 0, cached.stderr
    assert cached.json["rendered"] == 0  # nothing that names a release changed
    rechecked = dashboard("--recheck")  # every release verified again: the store is corrupt
    assert rechecked.code == 5, rechecked.stderr
    assert f"blob {bundles[0]} is corrupt" in rechecked.stderr
