"""Upstream: is a stored release's artifact the one its maintainers published, bit for bit?

The recipe recorded with the release (its inputs in the store, never the file on disk, which
may have changed since) names the published artifact in `[upstream]` (url and sha256). It is
fetched (hash-verified against that pin, then kept in the store), and its bytes are compared
with the release's artifact of the same name. Equal bytes are the only "equal"; otherwise
diffoscope's report (build.compare's bounded runner) says what differs, and is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rebuild.build.compare import Artifact, Difference, diff_reports
from rebuild.errors import UsageError
from rebuild.inputs.fetch import fetch_url
from rebuild.release.reproduce import recorded_name, stored_inputs
from rebuild.release.verify import resolve_release
from rebuild.store.layout import Store
from rebuild.twin import release_artifacts

Log = Callable[[str], None]


@dataclass(frozen=True)
class UpstreamComparison:
    release: str
    artifact: str  # the release's artifact compared (its name under /out)
    built: str  # sha256 hex of the release's artifact
    upstream_url: str
    upstream: str  # sha256 hex of the published bytes, as fetched and checked
    report: str | None  # digest of the stored text report when they differ
    html: str | None
    json_report: str | None

    @property
    def equal(self) -> bool:
        return self.built == self.upstream

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "artifact": self.artifact,
                "equal": self.equal, "compared": "bytes",
                "built": f"sha256:{self.built}",
                "upstream": {"url": self.upstream_url, "sha256": f"sha256:{self.upstream}"},
                "report": self.report, "html": self.html, "json": self.json_report}


def compare_upstream(store: Store, target: str, *, log: Log = lambda _: None,
                     memory: int | None = None) -> UpstreamComparison:
    with store.lease():
        release = resolve_release(store, target)
        inputs = stored_inputs(store, release)
        name = recorded_name(store, release, target, inputs)
        upstream = inputs.recipe.recipe.upstream
        if upstream is None:
            raise UsageError(f"{name}: its recipe records no [upstream] artifact to compare "
                             "with (`rebuild recipe pypi` writes one: wheel = URL, "
                             "sha256 = HEX)")
        artifacts = {a.name: a for a in release_artifacts(store, release)}
        built = artifacts.get(upstream.filename)
        if built is None:
            raise UsageError(f"{name} has no artifact {upstream.filename} to compare with "
                             f"{upstream.wheel} (its artifacts: {', '.join(sorted(artifacts))})")
        store.read_bytes("sha256:" + built.sha256)  # verified on read: a corrupt blob exits 5
        with fetch_url(upstream.wheel, upstream.sha256, store, where=f"{name}: [upstream]",
                       log=log, downloaded=set()) as (_, path):
            published = Artifact(upstream.filename, upstream.sha256, path.stat().st_size,
                                 path, mode=built.mode)
            if published.sha256 == built.sha256:
                return UpstreamComparison(name, built.name, built.sha256, upstream.wheel,
                                          upstream.sha256, None, None, None)
            log(f"{name}: {built.name} differs from the published one; diffoscope compares "
                "them")
            limits = inputs.recipe.recipe.bounds
            reports = diff_reports(Difference(built.name, built, published),
                                   memory=memory or limits.diffoscope_memory)
        digests = [store.put_bytes(data)[0] for data in (reports.text, reports.html,
                                                          reports.json)]
        return UpstreamComparison(name, built.name, built.sha256, upstream.wheel,
                                  upstream.sha256, *digests)
