"""Report pages: the view (`report_view`) tested on its own, and the HTML and Markdown laid out
by the templates in rebuild/templates, against golden files (style.md, 11 and 15).

The golden pages were written by the renderer that assembled strings in Python, before the
templates: an exported bundle keeps its bytes. Regenerate them, after an intended change only,
with `REBUILD_UPDATE_GOLDEN=1 pytest tests/test_report.py`.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest
from setuptools import find_namespace_packages

from rebuild.release.pages import render_html, render_markdown
from rebuild.release.report import report_view
from tests.test_evidence_formats import check_golden

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
# `rebuild show --json` of the bundle exported by tests/integration/test_export.py, with the
# `bundle` section `rebuild export` adds: built by CI, rebuilt by QA, approved by quality.
EXPORTED: dict[str, Any] = json.loads((DATA / "story-exported.json").read_text())
DIGEST = "sha256:" + "ab" * 32

# A release that failed: run b differs, a key that was not given, an invalid signature, no
# provenance, no bundle; texts with the characters HTML and Markdown give a meaning to.
FAILED: dict[str, Any] = {
    "format": "rebuild-story/v1", "release": "tool@0.1", "manifest": DIGEST,
    "created": None, "source_date_epoch": 1700000000,
    "artifacts": [{"name": "bin/tool", "sha256": "cd" * 32, "size": 12},
                  {"name": "bin/t", "sha256": "ef" * 32, "size": 8, "link": "tool"}],
    "inputs": None, "provenance": None, "sbom": None,
    "evidence": [{"manifest": DIGEST, "signer": "k1", "sbom": None, "statements": [
        {"kind": "provenance", "digest": DIGEST,
         "signature": {"status": "invalid", "key": "k1", "detail": "bad"}}]},
                 {"manifest": DIGEST, "signer": None, "sbom": None, "statements": [
        {"kind": "provenance", "digest": DIGEST,
         "signature": {"status": "untrusted", "key": "k2", "detail": "not given"}}]}],
    "attempts": [{"manifest": DIGEST, "status": "not-reproducible", "image": None,
                  "runs": [{"name": "a", "variations": {}, "exit_code": 0, "timed_out": False,
                            "log": DIGEST},
                           {"name": "b", "variations": {"umask": "0002", "user": "2000:2000"},
                            "exit_code": 0, "timed_out": False, "log": DIGEST}],
                  "differences": [{"name": "bin/tool", "variations": ["umask", "user"]}],
                  "files": [{"title": "comparison.json", "digest": DIGEST, "size": 9}]}],
    "tests": None,
    "verdicts": [{"manifest": DIGEST, "result": "FAILED", "verifier": "qa", "time": "2030-01-01",
                  "policy": None, "levels": [], "signer": "k3",
                  "signature": {"status": "unsigned", "key": None, "detail": "no signature"},
                  "rebuilt": [{"name": "bin/tool", "sha256": "00", "match": False},
                              {"name": "bin/t", "sha256": "ef" * 32, "match": True}]}],
    "approvals": [{"manifest": DIGEST, "name": "O'Brien & Co", "keyid": "k4", "role": "qa",
                   "meaning": 'not "released"', "time": "2030-01-02", "comment": "a | b\nc",
                   "signature": {"status": "verified", "key": "k4", "detail": "ok"}}],
    "verification": {"ran": True, "keys": ["k1"], "verified": False,
                     "checks": [{"name": "twin build", "ok": False,
                                 "detail": "bin/tool differs <umask>"}]},
}


def test_the_view_is_the_text_the_pages_show() -> None:
    unchecked = {"status": "untrusted", "key": "k2", "text": "not checked (key k2 not given)"}
    assert report_view(FAILED) == {
        "release": "tool@0.1", "manifest": DIGEST, "created": "None",
        "headline": {"css": "bad", "text": "Evidence NOT VERIFIED with the given key(s): k1"},
        "facts": " (NOT VERIFIED: from unsigned store records)",
        "artifacts": [{"name": "bin/tool", "link": None, "sha256": "cd" * 32, "size": "12"},
                      {"name": "bin/t", "link": "tool", "sha256": "ef" * 32, "size": "8"}],
        "from_what": [["SOURCE_DATE_EPOCH", "1700000000 (2023-11-14T22:13:20Z)"],
                      ["Dependencies", "0 resolved (source, base image, 0 wheel(s))"],
                      ["Requirements", "none recorded"], ["Change request", "none recorded"]],
        "builder": [],
        "by_whom": [["Evidence signed by", "k1 — provenance: INVALID (key k1)"],
                    ["Other evidence", "1 record(s) signed by keys not given, not checked "
                     "(`rebuild show --json` lists them)"]],
        "evidence": [{"signer": "k1", "kind": "provenance", "digest": DIGEST,
                      "signature": {"status": "invalid", "key": "k1", "text": "INVALID (key k1)"}},
                     {"signer": "nobody", "kind": "provenance", "digest": DIGEST,
                      "signature": unchecked}],
        "attempts": [{"status": "not-reproducible", "manifest": DIGEST,
                      "runs": [{"name": "a", "variations": "baseline", "exit_code": "0",
                                "log": DIGEST},
                               {"name": "b", "variations": "umask=0002, user=2000:2000",
                                "exit_code": "0", "log": DIGEST}],
                      "differences": [{"name": "bin/tool", "variations": "umask, user"}],
                      "files": [{"title": "comparison.json", "digest": DIGEST}]}],
        "tests": None,
        "verdicts": [{"result": "FAILED", "verifier": "qa", "signer": "k3", "time": "2030-01-01",
                      "signature": {"status": "unsigned", "key": None, "text": "unsigned"},
                      "rebuilt": [{"name": "bin/tool", "state": "DIFFERS"},
                                  {"name": "bin/t", "state": "same"}]}],
        "checks": [{"name": "twin build", "result": "FAIL", "detail": "bin/tool differs <umask>"}],
        "approvals": [{"text": "O'Brien & Co as qa: not \"released\" (2030-01-02) — a | b\nc",
                       "name": "O'Brien & Co", "role": "qa", "meaning": 'not "released"',
                       "time": "2030-01-02", "comment": "a | b\nc", "keyid": "k4",
                       "signature": {"status": "verified", "key": "k4",
                                     "text": "verified (key k4)"}}],
        "bundle": None,
    }


def test_the_view_of_an_exported_release() -> None:
    view = report_view(EXPORTED)
    assert view["headline"]["css"] == "ok"
    assert view["headline"]["text"].startswith("Evidence VERIFIED with the given key(s): ")
    assert [a["name"] for a in view["artifacts"]] == ["n", "usr/bin/hello"]
    assert ["Requirements", "REQ-12, REQ-14"] in view["from_what"]
    assert ["Change request", "CR-101"] in view["from_what"]
    assert [v["result"] for v in view["verdicts"]] == ["PASSED"]
    assert {s["signature"]["status"] for s in view["evidence"]} == {"verified"}
    assert view["approvals"][0]["text"].startswith("Quinn Quality as quality: released for pilot")
    assert view["bundle"] is not None
    assert view["bundle"][0].startswith(f"Verify this bundle offline: rebuild verify BUNDLE "
                                        f"--key keys/{EXPORTED['evidence'][0]['signer']}.pub ")
    assert view["bundle"][2].startswith("The inputs are named by digest only")
    assert json.loads(json.dumps(view)) == view  # plain data, nothing else


@pytest.mark.parametrize(("story", "name"), [(EXPORTED, "exported"), (FAILED, "failed")])
def test_pages_match_their_golden_files(story: dict[str, Any], name: str) -> None:
    check_golden(f"report-{name}.html", render_html(story).encode())
    check_golden(f"report-{name}.md", render_markdown(story).encode())


def test_markup_in_a_release_name_or_comment_is_shown_escaped() -> None:
    story = copy.deepcopy(EXPORTED)
    story["release"] = "<script>alert('name')</script>@1"
    story["approvals"][0]["comment"] = '<script>alert("comment")</script> & <b>'
    page = render_html(story)
    assert "<script" not in page.lower()
    assert "<b>" not in page
    assert "<h1>&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;@1</h1>" in page
    assert "<title>&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;@1: release evidence" \
        "</title>" in page
    assert "<td>&lt;script&gt;alert(&quot;comment&quot;)&lt;/script&gt; &amp; &lt;b&gt;</td>" \
        in page
    # the page's own markup is left as it is
    assert page.count("<table>") == 10 and '<span class="badge ok">verified</span>' in page


def test_markdown_table_cells_keep_their_table() -> None:
    page = render_markdown(FAILED)
    row = ("| O'Brien & Co as qa: not \"released\" (2030-01-02) — a \\| b c | k4 | "
           "verified (key k4) |")
    assert row in page.splitlines()
    assert page.endswith("| verified (key k4) |\n")


def test_a_value_missing_from_the_view_is_an_error_not_a_blank() -> None:
    from rebuild.release.pages import _environment

    view = report_view(FAILED)
    del view["checks"]
    for name in ("report.html.j2", "report.md.j2"):
        with pytest.raises(jinja2.UndefinedError, match="checks"):
            _environment().get_template(name).render(view=view)


def test_the_templates_ship_with_the_package() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = setuptools["packages"]["find"]
    assert find["namespaces"]  # a folder of templates is a package only as a namespace
    packages = find_namespace_packages(str(ROOT), include=find["include"],
                                       exclude=find["exclude"])
    assert "rebuild.templates" in packages
    templates = sorted(p.name for p in (ROOT / "rebuild" / "templates").iterdir())
    assert templates == ["dashboard-base.html.j2", "dashboard-overview.html.j2",
                         "dashboard-release.html.j2", "dashboard-search.js", "dashboard.css",
                         "notes.html.j2", "notes.md.j2", "report.html.j2", "report.md.j2"]
    globs = setuptools["package-data"]["rebuild.templates"]
    for template in templates:
        assert any(fnmatch.fnmatch(template, g) for g in globs), template
