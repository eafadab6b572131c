"""Export: a release's evidence bundle (rebuild.release.bundle) written from a store.

The release is resolved and its story told (rebuild.release.report), checked against the keys
given, and packed with its closure; `rebuild verify FILE` checks the result offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rebuild.errors import ClaimFailed, StoreError, UsageError
from rebuild.evidence.sign import load_public_key
from rebuild.release.bundle import (
    EXPORT_TYPE,
    HUMAN_MEDIA,
    KEY_MEDIA,
    OCI_LAYOUT,
    SUMS,
    WITH_INPUTS_ANN,
    Member,
    artifact_copy_path,
    bundle_index,
    bytes_member,
    index_entry,
    public_key_file,
    release_epoch,
    sums_file,
    walk_closure,
    write_archive,
)
from rebuild.release.pages import render_html, render_markdown
from rebuild.release.report import release_story
from rebuild.release.verify import Policy, resolve_release
from rebuild.store.auditlog import bundle_files, release_events
from rebuild.store.layout import (
    REF_NAME,
    RELEASE_ANN,
    TITLE,
    Descriptor,
    Store,
    artifact_manifest,
    canonical_json,
    sha256_file,
)


@dataclass(frozen=True)
class Exported:
    release: str
    path: Path
    sha256: str
    files: int
    with_inputs: bool
    verified: bool | None  # the evidence under the given keys; None: no key was given
    keys: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"export": str(self.path), "sha256": self.sha256, "files": self.files,
                "release": self.release, "with_inputs": self.with_inputs,
                "verified": self.verified, "keys": list(self.keys)}


def export_release(store: Store, target: str, out: Path, *, keys: Sequence[Path] = (),
                   with_inputs: bool = False) -> Exported:
    """Write the bundle of `target` to `out` (atomically); see the module docstring."""
    if out.is_dir():
        raise UsageError(f"-o {out} is a directory; name the bundle file, e.g. {out}/x.tar")
    release = resolve_release(store, target)
    release_manifest = store.read_json(release.digest)
    # The bundle names its release by the manifest's own annotation (`index_entry`); an index
    # or cache entry that calls the manifest something else is refused, not exported under
    # a name the bundle cannot prove (the signatures are checked by `rebuild verify FILE`).
    name = str(release_manifest.get("annotations", {}).get(RELEASE_ANN, ""))
    asked = target if not target.startswith("sha256:") else (release.annotations or {}).get(
        REF_NAME, name)
    if name != asked:
        raise ClaimFailed(f"refusing to export {target}: the store's index names the release "
                          f"manifest {release.digest} {asked}, but the manifest records "
                          f"{name or 'no name'}; run `rebuild store fsck` and `rebuild verify`")
    pems = dict(public_key_file(k) for k in keys)
    policy = Policy(tuple(load_public_key(k) for k in keys))
    story = release_story(store, name, policy)
    story["bundle"] = {"release": name, "with_inputs": with_inputs, "keys": sorted(pems)}
    human = {"report.html": render_html(story).encode(),
             "report.md": render_markdown(story).encode(),
             **{f"keys/{k}.pub": pem for k, pem in sorted(pems.items())}}

    # Every record whose subject is the release (the inputs name it by annotation).
    records = [r for r in store.referrers(release.digest) if r.digest != release.digest]
    closure = walk_closure(store.read_json, [release.digest, *(r.digest for r in records)],
                           with_inputs=with_inputs)
    if closure.unreadable:
        raise StoreError(f"cannot read {sorted(closure.unreadable)[0]} in {store.root}; run "
                         "`rebuild store fsck`")
    missing = sorted(d for d in closure.blobs if not store.has(d))
    if missing:
        raise StoreError(f"the store {store.root} lacks {missing[0]}, which the bundle of "
                         f"{name} needs; run `rebuild store fsck` and restore it")
    members = [Member(f"blobs/sha256/{d[7:]}", store.blob_path(d).stat().st_size, d[7:],
                      partial(store.open_verified, d)) for d in sorted(closure.blobs)]

    # The human files, pinned by an export manifest whose subject is the release.
    layers = [Descriptor(HUMAN_MEDIA.get(path, KEY_MEDIA), "sha256:" + member.sha256,
                         member.size, {TITLE: path})
              for path, data in human.items() for member in [bytes_member(path, data)]]
    export_manifest = canonical_json(artifact_manifest(
        EXPORT_TYPE, layers, subject=release,
        annotations={RELEASE_ANN: name, WITH_INPUTS_ANN: str(with_inputs).lower()}))
    extra = {"sha256:" + hashlib.sha256(b).hexdigest(): b
             for b in [export_manifest, *human.values(), b"{}"]}
    members += [bytes_member(f"blobs/sha256/{d[7:]}", b) for d, b in sorted(extra.items())
                if d not in closure.blobs]
    export_digest = "sha256:" + hashlib.sha256(export_manifest).hexdigest()

    entries = [index_entry(d.digest, store.blob_path(d.digest).stat().st_size,
                           store.read_json(d.digest), release.digest)
               for d in [release, *records]]
    entries.append(index_entry(export_digest, len(export_manifest),
                               json.loads(export_manifest), release.digest))
    members += [bytes_member("oci-layout", OCI_LAYOUT),
                bytes_member("index.json", bundle_index(entries))]
    members += [bytes_member(path, data) for path, data in human.items()]
    # The release's audit-log events with inclusion proofs (pinned by SHA256SUMS; their
    # trust is the proofs and the checkpoint's signature, checked by `rebuild verify`). The
    # proofs the store only carries (log-proof records) travel as records, among the blobs.
    members += [bytes_member(path, data) for path, data in
                sorted(bundle_files(release_events(store, release.digest,
                                                            carried=False)).items())]
    for layer in release_manifest["layers"]:
        path = artifact_copy_path(layer)
        if path is not None:
            members.append(Member(path, int(layer["size"]), layer["digest"][7:],
                                  partial(store.open_verified, layer["digest"])))
    members.append(bytes_member(SUMS, sums_file([(m.path, m.sha256) for m in members])))

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write_archive(members, release_epoch(release_manifest), f,
                          compress=out.name.endswith((".gz", ".tgz")))
            f.flush()
            os.fsync(f.fileno())
        Path(tmp_name).chmod(0o644)
        Path(tmp_name).replace(out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    verification = story["verification"]
    return Exported(name, out, sha256_file(out), len(members), with_inputs,
                    verification["verified"], tuple(sorted(pems)))
