"""The dashboard's pure parts (statuses from checks, the overview, trends, charts, search) and
`rebuild serve`'s request handling, on plain values and a small site directory.

The site built from real releases and loaded in Chromium: tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rebuild.errors import StoreError
from rebuild.release.dashboard import (
    GROUPS,
    chart,
    flipped_cases,
    overview,
    release_status,
    search_entries,
    trends,
)
from rebuild.release.serve import SiteFreshness, make_server, site_file
from tests.conftest import serving


def ran(**checks: bool) -> dict[str, Any]:
    return {"ran": True, "checks": [{"name": n.replace("_", " ").replace("approval ",
                                                                         "approval: "),
                                     "ok": ok, "detail": ""} for n, ok in checks.items()]}


@pytest.mark.parametrize(("verification", "roles", "group", "pending"), [
    ({"ran": False, "checks": []}, [], "not verified", []),
    (ran(artifacts=True, twin_build=False), [], "not reproducible", []),
    (ran(artifacts=True, twin_build=True, sbom=False), [], "reproducible", []),
    (ran(artifacts=False), [], "not verified", []),
    (ran(artifacts=True, twin_build=True), [], "verified", []),
    (ran(artifacts=True, twin_build=True, approval_quality=False), ["quality"], "verified",
     ["quality"]),
    (ran(artifacts=True, twin_build=True, approval_quality=True), ["quality"], "approved", []),
    # An approval never lifts a release whose evidence failed.
    (ran(artifacts=False, twin_build=True, approval_quality=True), ["quality"],
     "reproducible", []),
])
def test_release_status_comes_from_the_checks(verification: dict[str, Any], roles: list[str],
                                              group: str, pending: list[str]) -> None:
    assert release_status(verification, roles) == (group, pending)


def summary(release: str, group: str, *, time: str = "2026-01-02T00:00:00Z",
            pending: tuple[str, ...] = (), cases: dict[str, str] | None = None,
            reproducible: bool | None = True, requirements: tuple[str, ...] = (),
            covered: tuple[str, ...] = (), waivers: tuple[dict[str, Any], ...] = (),
            promotions: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {"release": release, "name": release.split("@")[0], "page": f"releases/{release}",
            "time": time, "group": group, "facts_verified": group != "not verified",
            "reproducible": reproducible, "pending_roles": list(pending),
            "failed_verdicts": [], "evidence": {"expected": ["a", "b"], "present": ["a"]},
            "change": "CR-1", "requirements": list(requirements), "covered": list(covered),
            "test_cases": cases or {}, "artifacts": ["sha256:" + "ab" * 32],
            "waivers": list(waivers), "promotions": list(promotions)}


def test_overview_groups_counts_pending_and_expiring_waivers() -> None:
    today = datetime(2026, 6, 1, tzinfo=UTC)
    waiver = {"signature": "verified", "expires": "2026-06-20T00:00:00Z",
              "what": "requirement REQ-9", "role": "quality"}
    unsigned = {"signature": "not verified", "expires": None, "what": None, "role": None}
    later = {"signature": "verified", "expires": "2026-09-01T00:00:00Z", "what": "test unit",
             "role": "quality"}
    promoted = {"signature": "verified", "environment": "staging", "result": "PASSED"}
    shown = overview([
        summary("a@1", "verified", pending=("quality",), waivers=(waiver, unsigned, later)),
        summary("b@1", "approved", promotions=(promoted,)),
        summary("c@1", "not verified", reproducible=None),
    ], [{"release": "d@1", "attempt": "sha256:x", "status": "not-reproducible",
         "verified": True, "reproducible": False}], ["quality", "regulatory"], today)
    assert shown["counts"] == {"not reproducible": 1, "not verified": 1, "reproducible": 0,
                               "verified": 1, "approved": 1}
    assert set(shown["groups"]) == set(GROUPS)
    assert [r["release"] for r in shown["pending"]["quality"]] == ["a@1"]
    assert shown["pending"]["regulatory"] == []
    assert [(w["release"], w["expires"], w["what"]) for w in shown["expiring"]] == [
        ("a@1", "2026-06-20", "requirement REQ-9")]
    assert shown["promoted"] == {"staging": [{"release": "b@1", "page": "releases/b@1"}]}


def test_trends_say_nothing_where_nothing_is_recorded() -> None:
    points = trends([summary("a@1", "verified"), summary("b@1", "verified",
                                                         reproducible=False)], [])
    assert points["reproducibility"] == [("2026-01-02", 50.0)]
    assert points["completeness"] == [("2026-01-02", 50.0)]
    assert points["traceability"] == []  # no release names a requirement
    assert points["stability"] == []
    assert points["waiver_closure"] == []
    refused = trends([summary("a@1", "verified")], [
        {"release": "b@1", "attempt": "sha256:x", "status": "not-reproducible",
         "verified": True, "reproducible": False, "time": "2026-01-02T10:00:00Z"},
        {"release": "c@1", "attempt": "sha256:y", "status": "not-reproducible",
         "verified": False, "reproducible": None, "time": "2026-01-02T10:00:00Z"}])
    assert refused["reproducibility"] == [("2026-01-02", 50.0)]  # the unsigned one: unknown
    traced = trends([summary("a@1", "verified", requirements=("R1", "R2"), covered=("R1",)),
                     summary("b@1", "verified", requirements=("R1",), covered=("R1",))], [])
    assert traced["traceability"] == [("2026-01-02", 50.0)]


def test_stability_counts_cases_that_flipped_between_releases_of_one_name() -> None:
    releases = [
        summary("app@1", "verified", time="2026-01-01T00:00:00Z",
                cases={"t1": "passed", "t2": "passed"}),
        summary("app@2", "verified", time="2026-01-02T00:00:00Z",
                cases={"t1": "failed", "t2": "passed", "t3": "passed"}),
        summary("app@3", "verified", time="2026-01-03T00:00:00Z",
                cases={"t1": "passed", "t2": "failed"}),
        summary("other@1", "verified", time="2026-01-03T00:00:00Z", cases={"t1": "failed"}),
    ]
    assert flipped_cases(releases) == [("2026-01-02", 1.0), ("2026-01-03", 2.0)]


def test_chart_geometry_and_an_empty_chart() -> None:
    drawn = chart([("d1", 0.0), ("d2", 100.0)], "%", width=200, height=100)
    assert [(p["x"], p["y"]) for p in drawn["points"]] == [(24.0, 76.0), (176.0, 24.0)]
    assert drawn["polyline"] == "24.0,76.0 176.0,24.0" and drawn["last"] == "100.0"
    empty = chart([], "days")
    assert empty["points"] == [] and empty["last"] is None


def test_search_entries_cover_releases_changes_requirements_and_digests() -> None:
    rows = search_entries([summary("a@1", "verified", requirements=("REQ-1",))])
    assert {(text, kind) for text, kind, _ in rows} == {
        ("a@1", "release"), ("CR-1", "change"), ("REQ-1", "requirement"),
        ("sha256:" + "ab" * 32, "artifact")}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "releases").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / "index.html").write_text("<h1>overview</h1>")
    (root / "releases" / "a.html").write_text("release a")
    (root / ".cache" / "summaries.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "escape.html").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.mark.parametrize(("path", "found"), [
    ("/", "index.html"), ("/index.html", "index.html"), ("/releases/a.html", "releases/a.html"),
    ("/releases/a.html?x=1", "releases/a.html"), ("/releases/%61.html", "releases/a.html"),
    ("/../secret.txt", None), ("/releases/../../secret.txt", None), ("/%2e%2e/secret.txt", None),
    ("/%2E%2E%2Fsecret.txt", None), ("/releases/..%2f..%2fsecret.txt", None),
    ("/.cache/summaries.json", None), ("/%2ecache/summaries.json", None),
    ("/escape.html", None), ("/missing.html", None), ("/releases/a.html%00", None),
    ("/..\\secret.txt", None),
])
def test_site_file_stays_inside_the_site(site: Path, path: str, found: str | None) -> None:
    result = site_file(site, path)
    assert result == (None if found is None else (site / found).resolve())


def test_freshness_regenerates_once_per_store_change() -> None:
    state = {"signature": "1", "runs": 0}

    def regenerate() -> None:
        state["runs"] = int(state["runs"]) + 1

    freshness = SiteFreshness(lambda: str(state["signature"]), regenerate)
    freshness.ensure()
    freshness.ensure()
    assert state["runs"] == 1
    state["signature"] = "2"
    freshness.ensure()
    assert state["runs"] == 2


@pytest.fixture
def served(site: Path) -> Iterator[tuple[str, int]]:
    freshness = SiteFreshness(lambda: "same", lambda: None)
    server = make_server(site, "127.0.0.1", 0, freshness, lambda _: None)
    with serving(server):
        host, port = server.server_address[:2]
        yield str(host), int(port)


def call(address: tuple[str, int], method: str, path: str) -> tuple[int, bytes, str | None]:
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.putrequest(method, path)
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Allow")
    finally:
        connection.close()


def test_serve_answers_get_and_head_and_refuses_the_rest(served: tuple[str, int]) -> None:
    status, body, _ = call(served, "GET", "/")
    assert status == 200 and body == b"<h1>overview</h1>"
    assert call(served, "HEAD", "/releases/a.html")[:2] == (200, b"")
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "MKCOL"):
        status, _, allow = call(served, method, "/index.html")
        assert (status, allow) == (405, "GET, HEAD"), method
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/.cache/summaries.json"):
        status, body, _ = call(served, "GET", path)
        assert status == 404 and b"outside" not in body, path


def test_serve_keeps_serving_when_the_store_cannot_be_read(site: Path) -> None:
    def broken() -> None:
        raise StoreError("index.json is not valid JSON")

    said: list[str] = []
    server = make_server(site, "127.0.0.1", 0, SiteFreshness(lambda: "x", broken), said.append)
    with serving(server):
        host, port = server.server_address[:2]
        assert call((str(host), int(port)), "GET", "/")[:2] == (200, b"<h1>overview</h1>")
    assert any("could not be brought up to date: index.json" in line for line in said)


def test_dashboard_bad_input_is_one_line_and_its_exit_code(tmp_path: Path) -> None:
    from tests.conftest import run_rebuild

    missing = run_rebuild("dashboard", "-o", tmp_path / "site", store=tmp_path / "none")
    assert missing.code == 5 and "no store at" in missing.stderr
    assert "Traceback" not in missing.stderr
    store = tmp_path / "store"
    (store / "blobs" / "sha256").mkdir(parents=True)
    (store / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (store / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    (tmp_path / "file").write_text("")
    not_dir = run_rebuild("dashboard", "-o", tmp_path / "file", store=store)
    assert not_dir.code == 2 and "not a directory" in not_dir.stderr
    policy = run_rebuild("dashboard", "-o", tmp_path / "site", "--policy",
                         tmp_path / "nope.toml", store=store)
    assert policy.code == 2 and "cannot read the policy" in policy.stderr
    empty = run_rebuild("dashboard", "-o", tmp_path / "site", "--json", store=store)
    assert empty.code == 0, empty.stderr
    assert empty.json["releases"] == 0 and (tmp_path / "site" / "index.html").is_file()
