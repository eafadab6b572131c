"""Site: the dashboard written as a static, offline site (`rebuild dashboard -o DIR`).

`index.html` (the overview and the trends, inline SVG), one page per release under
`releases/`, one stylesheet, and a small local script with its generated index for the search
box: nothing is loaded from anywhere else. A release's page and summary are cached in
`DIR/.cache/` under a key derived from its manifest digest, its referrers, its audit-log
entries, the policy's keys and rules and the templates: a release that did not change is not
verified again, so regenerating after one new release costs that release and the overview.
A page's status is therefore the check made when the page was written: a blob edited in place
under an unchanged index is caught by `recheck` (`rebuild dashboard --recheck`), which checks
every release again, or by `rebuild store fsck`.
The data comes from `rebuild.release.dashboard`; the pages from the Jinja2 templates in
rebuild/templates (autoescaped).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rebuild import __version__
from rebuild.evidence.sign import verify_bundle
from rebuild.release import dashboard
from rebuild.release.pages import render_page
from rebuild.release.report import release_story, report_view
from rebuild.release.verify import Policy
from rebuild.store.auditlog import AuditLog, statement_signatures
from rebuild.store.layout import KIND, REF_NAME, SUBJECT, Descriptor, Store, canonical_json

CACHE_FORMAT = "rebuild-dashboard-cache/v1"
CACHE_FILE = "summaries.json"
STAMP_FILE = "stamp.json"  # what the site was last written from
STATIC = ("dashboard.css", "dashboard-search.js")
PARALLEL_FROM = 64  # releases to (re)check before the work is spread over the cores


@dataclass(frozen=True)
class SiteResult:
    root: Path
    releases: int
    rendered: int  # release pages checked and written this time (the rest were cached)
    counts: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"site": str(self.root), "releases": self.releases, "rendered": self.rendered,
                "counts": dict(self.counts)}


class StoreSnapshot(Store):
    """The store with its index read once: lookups answered from memory, in the index's
    order, as the query cache answers them. A site is written in one pass over a store
    that the pass does not change; opening the query cache for each of the ten lookups a
    release's story makes cost more than the rest of the story."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._names: dict[str, Descriptor] = {}
        self._kinds: dict[str, list[Descriptor]] = {}
        self._subjects: dict[str, list[Descriptor]] = {}
        for entry in self.index():
            annotations = entry.annotations or {}
            if REF_NAME in annotations:
                self._names.setdefault(annotations[REF_NAME], entry)
            if KIND in annotations:
                self._kinds.setdefault(annotations[KIND], []).append(entry)
            if SUBJECT in annotations:
                self._subjects.setdefault(annotations[SUBJECT], []).append(entry)

    def find(self, ref_name: str) -> Descriptor | None:
        return self._names.get(ref_name)

    def entries(self, kind: str) -> list[Descriptor]:
        return list(self._kinds.get(kind, []))

    def referrers(self, subject_digest: str) -> list[Descriptor]:
        return list(self._subjects.get(subject_digest, []))


def store_signature(store: Store) -> str:
    """Changes whenever the store's index or its audit log changes: what `serve` checks
    before answering, without reading either."""
    parts = []
    for path in (store.root / "index.json", store.root / "index.journal",
                 AuditLog.of(store).root / "checkpoint"):
        try:
            st = path.stat()
            parts.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append("-")
    return " ".join(parts)


def write_site(store: Store, out: Path, policy: Policy, *, today: datetime,
               recheck: bool = False,
               log: Callable[[str], None] = lambda _: None) -> SiteResult:
    """Write (or bring up to date) the site for `store` in `out`, checked under `policy`;
    `recheck`: every release verified again, whatever the cache holds."""
    store.require()
    pinned = dashboard.policy_digest(policy) + _templates_digest()
    cache = out / ".cache"
    # Nothing changed since the site was written (the store's index and log, the policy,
    # the templates, the day that decides which waivers expire soon): it stands as it is.
    stamp = hashlib.sha256(canonical_json({
        "format": CACHE_FORMAT, "version": __version__, "store": store_signature(store),
        "pinned": pinned, "day": today.strftime("%Y-%m-%d")})).hexdigest()
    written = _read_stamp(cache / STAMP_FILE)
    if not recheck and written.get("stamp") == stamp and (out / "index.html").is_file():
        log(f"{written['releases']} release(s): nothing changed since the site was written")
        return SiteResult(out, int(written["releases"]), 0, dict(written["counts"]))
    store = StoreSnapshot(store.root)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(exist_ok=True)
    releases = [e for e in store.entries("release") if (e.annotations or {}).get(REF_NAME)]
    logged = _log_entries(store)
    keys = {e.digest: _page_key(store, e, logged, pinned) for e in releases}
    known = {} if recheck else _read_cache(cache / CACHE_FILE)
    summaries: dict[str, dict[str, Any]] = {}
    missing = []
    for entry in releases:
        cached = known.get(keys[entry.digest])
        if cached is not None and (out / cached["page"]).is_file():
            summaries[entry.digest] = cached
        else:
            missing.append(entry)
    log(f"{len(releases)} release(s): {len(releases) - len(missing)} unchanged, "
        f"{len(missing)} to check")
    for digest, summary in _render_all(store, missing, logged, policy, out):
        summaries[digest] = summary
    if missing or len(known) != len(summaries):
        _write(cache / CACHE_FILE, json.dumps({
            "format": CACHE_FORMAT,
            "pages": {keys[d]: summary for d, summary in summaries.items()}}).encode())
    ordered = sorted(summaries.values(), key=lambda s: (str(s["time"]), s["release"]))
    refused = [{**a, "time": _attempt_time(logged.get(a["release"], []))}
               for a in dashboard.refused_attempts(
                   store, {(e.annotations or {}).get(REF_NAME, "") for e in releases}, policy)]
    roles = sorted(policy.approvals)
    shown = dashboard.overview(ordered, refused, roles, today)
    points = dashboard.trends(ordered, refused)
    charts = [{"key": key, "title": title, "unit": unit,
               "chart": dashboard.chart(points[key], unit)}
              for key, title, unit in dashboard.METRICS]
    checked = bool(policy.builder_keys or policy.keyless)
    html = render_page("dashboard-overview.html.j2", overview=shown, charts=charts,
                       groups=dashboard.GROUPS, roles=roles, checked=checked,
                       version=__version__, root="")
    _write(out / "index.html", html.encode())
    # A script, not JSON: a page opened from disk (file://) may not fetch a file beside it.
    # "<" is escaped so no text in the index can close the script element.
    index = json.dumps(dashboard.search_entries(ordered), separators=(",", ":")).replace(
        "<", "\\u003c")
    _write(out / "search-index.js", f"window.REBUILD_SEARCH = {index};\n".encode())
    for name in STATIC:
        _write(out / name, resources.files("rebuild.templates").joinpath(name).read_bytes())
    _write(cache / STAMP_FILE, canonical_json({"stamp": stamp, "releases": len(releases),
                                                "counts": shown["counts"]}))
    return SiteResult(out, len(releases), len(missing), shown["counts"])


def _render_all(store: Store, entries: Sequence[Descriptor],
                logged: Mapping[str, list[tuple[int, bytes]]], policy: Policy, out: Path
                ) -> list[tuple[str, dict[str, Any]]]:
    """Each release's page written, and its (manifest digest, summary); spread over the
    cores when there are many (forked workers write the pages themselves)."""
    if len(entries) < PARALLEL_FROM or (os.cpu_count() or 1) < 2:
        return [_render_release(store, e, logged.get(_name(e), []), policy, out)
                for e in entries]
    # The first in this process: the templates are compiled once, before the workers fork.
    first = _render_release(store, entries[0], logged.get(_name(entries[0]), []), policy, out)
    global _JOB  # handed to the forked workers, never pickled
    _JOB = (store, entries, logged, policy, out)
    try:
        workers = os.cpu_count() or 2
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            chunk = max(1, len(entries) // (workers * 8))
            return [first, *pool.map(_render_index, range(1, len(entries)), chunksize=chunk)]
    finally:
        _JOB = None


_JOB: tuple[Store, Sequence[Descriptor], Mapping[str, list[tuple[int, bytes]]], Policy,
            Path] | None = None


def _render_index(i: int) -> tuple[str, dict[str, Any]]:
    assert _JOB is not None
    store, entries, logged, policy, out = _JOB
    return _render_release(store, entries[i], logged.get(_name(entries[i]), []), policy, out)


def _name(entry: Descriptor) -> str:
    return str((entry.annotations or {}).get(REF_NAME, ""))


def _render_release(store: Store, entry: Descriptor, events: Sequence[tuple[int, bytes]],
                    policy: Policy, out: Path) -> tuple[str, dict[str, Any]]:
    """One release: its story (verified under the policy), its page written, its summary."""
    story = release_story(store, entry.digest if not _name(entry) else _name(entry), policy)
    trusted = [*policy.builder_keys, *policy.qa_keys,
               *(k for role in sorted(policy.approvals) for k in policy.approvals[role])]
    artifacts = {a["name"]: a["sha256"] for a in story["artifacts"]}
    timeline = timeline_rows(store, events, trusted)
    release_time = next((row["time"] for row in timeline if row["event"] == "release"), None)
    summary = dashboard.summarize_release(
        story, policy, time=release_time,
        waivers=dashboard.release_waivers(store, entry, str(story["release"]), artifacts,
                                          policy),
        promotions=dashboard.release_promotions(store, entry, str(story["release"]),
                                                artifacts, [*trusted, *policy.promoters]))
    page = render_page("dashboard-release.html.j2", view=report_view(story), summary=summary,
                       trace=dashboard.trace_matrix(story), timeline=timeline,
                       notes=release_notes(story, summary), version=__version__, root="../")
    _write(out / summary["page"], page.encode())
    return entry.digest, summary


def timeline_rows(store: Store, events: Sequence[tuple[int, bytes]], trusted: Sequence[Any]
                  ) -> list[dict[str, Any]]:
    """The release's audit-log entries, each statement's signature checked against the
    trusted keys (as `rebuild log show` does); the log's own proofs are `log verify`'s."""
    rows = []
    withdrawn = {int(json.loads(e).get("corrects")) for _, e in events
                 if "corrects" in json.loads(e)}
    for index, raw in events:
        item = json.loads(raw)
        signatures = statement_signatures(store, item,
                                          lambda data: verify_bundle(data, trusted))
        actor = item.get("actor") or {}
        rows.append({"entry": index, "time": str(item.get("time")),
                     "event": str(item.get("event")), "meaning": str(item.get("meaning")),
                     "actor": f"{actor.get('name')} ({actor.get('role')})",
                     "key": str(actor.get("keyid") or "none"),
                     "signatures": [{"kind": k, "text": v, "ok": v.startswith("verified")}
                                    for k, v in signatures.items()],
                     "withdrawn": index in withdrawn})
    return rows


def release_notes(story: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """The release notes shown on its page: the change, requirements, artifacts, the
    validation summary, approvals and waivers (each as the story verified it)."""
    tests = story.get("tests")
    return {
        "change": summary["change"] or "none recorded",
        "requirements": ", ".join(summary["requirements"]) or "none recorded",
        "artifacts": [f"{a['name']} sha256:{a['sha256']}" for a in story["artifacts"]],
        "validation": ("test result " + str(tests["result"]) + " (signature "
                       + str(tests["signature"].get("status")) + ")") if tests
        else "no test result recorded",
    }


def _attempt_time(events: Sequence[tuple[int, bytes]]) -> str | None:
    """When the name's latest build attempt was logged (machine time), if it was."""
    times = [json.loads(raw).get("time") for _, raw in events
             if json.loads(raw).get("event") == "attempt"]
    return str(times[-1]) if times and times[-1] else None


def _log_entries(store: Store) -> dict[str, list[tuple[int, bytes]]]:
    """Every audit-log entry by the release it names, read once."""
    log = AuditLog.of(store)
    size = log.size()
    by_release: dict[str, list[tuple[int, bytes]]] = {}
    for index, raw in log.entries(0, size) if size else ():
        by_release.setdefault(str(json.loads(raw).get("release")), []).append((index, raw))
    return by_release


def _page_key(store: Store, entry: Descriptor, logged: Mapping[str, list[tuple[int, bytes]]],
              pinned: str) -> str:
    """A release page's cache key: what its page and status depend on. Records are
    write-once, so a changed referrer list or log means a new key."""
    refs = sorted(r.digest for r in store.referrers(entry.digest))
    events = [hashlib.sha256(raw).hexdigest() for _, raw in logged.get(_name(entry), [])]
    return hashlib.sha256(canonical_json({
        "format": CACHE_FORMAT, "version": __version__, "manifest": entry.digest,
        "name": _name(entry), "referrers": refs, "log": events, "pinned": pinned,
    })).hexdigest()


def _templates_digest() -> str:
    digest = hashlib.sha256()
    folder = resources.files("rebuild.templates")
    for name in sorted(p.name for p in folder.iterdir() if p.name.startswith("dashboard")):
        digest.update(name.encode() + b"\0" + folder.joinpath(name).read_bytes())
    return digest.hexdigest()


def _read_stamp(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("counts"), dict) and \
        isinstance(data.get("releases"), int) else {}


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Cache key -> summary of every page written before; nothing when the cache is
    missing, unreadable or of another format (then every page is written again)."""
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    pages = data.get("pages") if isinstance(data, dict) and \
        data.get("format") == CACHE_FORMAT else None
    return pages if isinstance(pages, dict) else {}


def _write(path: Path, data: bytes) -> None:
    """Atomically: `serve` may be reading the site while it is regenerated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
