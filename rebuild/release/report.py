"""Report: a release's story for people, told from the store's records.

What was built (artifacts and digests), from what (recipe, source, image, SOURCE_DATE_EPOCH,
dependencies, traceability ids), by whom (builder, signing keys), how it was checked (twin
build, variations, tests, QA verdicts, the verification of the evidence) and who approved it
(design.md: the question every release must answer).

`release_story` gathers it into JSON-able data; `render_markdown` and `render_html` are pure
and deterministic (no clock, no host paths), so an exported bundle is byte-reproducible. The
HTML is self-contained: inline CSS, no scripts, nothing loaded from anywhere, and a Content
Security Policy that says so. A statement's signature is checked against the keys the caller
trusts; one that cannot be checked is shown as such, never as verified.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

from rebuild.errors import ClaimFailed, StoreError
from rebuild.evidence.sign import KeylessIdentity, verify_bundle, verify_signed
from rebuild.release.verify import Policy, resolve_release, verify_release
from rebuild.store.layout import (
    EPOCH_ANN,
    IMAGE_ID_ANN,
    IMAGE_REF_ANN,
    INPUTS_TYPE,
    KIND,
    OCI_MANIFEST,
    REF_NAME,
    RELEASE_ANN,
    SIGNER_ANN,
    TITLE,
    Descriptor,
    Store,
)

STORY_FORMAT = "rebuild-story/v1"
CREATED_ANN = "org.opencontainers.image.created"

Story = dict[str, Any]


# -- gathering ----------------------------------------------------------------------------


def release_story(store: Store, release: str, policy: Policy) -> Story:
    """The story of `release` (name@version or an artifact digest), as JSON-able data.

    Signatures are checked against every key `policy` names (builders, QA, approvers); the
    verification section is `verify_release` under `policy`, or "not run" without keys.
    """
    entry = resolve_release(store, release)
    manifest = store.read_json(entry.digest)
    name = (entry.annotations or {}).get(REF_NAME) or manifest.get("annotations", {}).get(
        RELEASE_ANN, release)
    trusted = Trusted(_trusted_keys(policy), policy.keyless)
    referrers = store.referrers(entry.digest)

    def of_kind(kind: str) -> list[Descriptor]:
        return sorted((r for r in referrers if (r.annotations or {}).get(KIND) == kind),
                      key=lambda r: r.digest)

    evidence = [_evidence(store, e, trusted) for e in of_kind("evidence")]
    provenance = _first_statement(evidence, "provenance")
    test_result = _first_statement(evidence, "test-result")
    # The newest inputs record, the one `rebuild reproduce` uses.
    inputs = _inputs(store, [r for r in reversed(referrers)
                             if (r.annotations or {}).get(KIND) == "inputs"])
    epoch = inputs.get("source_date_epoch") if inputs else None
    if epoch is None and provenance is not None:
        epoch = (provenance["statement"].get("predicate", {}).get("buildDefinition", {})
                 .get("internalParameters", {}).get("source_date_epoch"))
    artifacts = [_artifact(layer) for layer in manifest.get("layers", [])]
    recorded = {a["name"]: a["sha256"] for a in artifacts}
    return {
        "format": STORY_FORMAT,
        "release": name,
        "manifest": entry.digest,
        "created": manifest.get("annotations", {}).get(CREATED_ANN),
        "source_date_epoch": epoch,
        "artifacts": artifacts,
        "inputs": inputs,
        "provenance": _provenance(provenance),
        "sbom": _sbom(store, evidence),
        "evidence": [_public(e) for e in evidence],
        "attempts": [_attempt(store, a) for a in of_kind("attempt")],
        "tests": None if test_result is None else {
            "result": test_result["statement"].get("predicate", {}).get("result"),
            "signature": test_result["signature"]},
        "verdicts": sorted((_verdict(store, v, trusted, recorded) for v in of_kind("verdict")),
                           key=lambda v: (str(v["time"]), v["manifest"])),
        "approvals": sorted((_approval(store, a, trusted) for a in of_kind("approval")),
                            key=lambda a: (str(a["time"]), a["manifest"])),
        "verification": _verification(store, name, policy),
    }


@dataclass(frozen=True)
class Trusted:
    """Whose signatures the story checks: every key and keyless identity the policy names."""

    keys: Mapping[str, SSlibKey]
    keyless: tuple[KeylessIdentity, ...]


def _trusted_keys(policy: Policy) -> dict[str, SSlibKey]:
    keys = [*policy.builder_keys, *policy.qa_keys,
            *(k for role in sorted(policy.approvals) for k in policy.approvals[role])]
    return {str(k.keyid): k for k in keys}


def _artifact(layer: Mapping[str, Any]) -> dict[str, Any]:
    annotations = layer.get("annotations", {})
    out: dict[str, Any] = {"name": annotations.get(TITLE, "?"),
                           "sha256": str(layer["digest"]).removeprefix("sha256:"),
                           "size": layer.get("size")}
    if "dev.rebuild.link" in annotations:
        out["link"] = annotations["dev.rebuild.link"]
    return out


def _layers(store: Store, digest: str) -> dict[str, dict[str, Any]]:
    return {layer.get("annotations", {}).get(TITLE, layer["digest"]): layer
            for layer in store.read_json(digest).get("layers", [])}


def _signature(store: Store, layers: Mapping[str, Mapping[str, Any]], kind: str,
               trusted: Trusted) -> tuple[dict[str, Any], dict[str, Any]]:
    """(statement, signature status) of the `kind` statement in an artifact's layers."""
    statement_layer = layers.get(f"{kind}.json")
    bundle_layer = layers.get(f"{kind}.sigstore.json")
    statement: dict[str, Any] = (store.read_json(statement_layer["digest"])
                                 if statement_layer else {})
    if bundle_layer is None:
        return statement, {"status": "unsigned", "key": None, "detail": "no signature"}
    data = store.read_bytes(bundle_layer["digest"])
    bundle = json.loads(data)
    hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint")
    status: dict[str, Any] = {"status": "untrusted", "key": hint, "bundle": bundle_layer["digest"]}
    if hint is None and not trusted.keyless:
        status["detail"] = "keyless signature, and no keyless identity was given: not checked"
        return statement, status
    if hint is not None and hint not in trusted.keys:
        status["detail"] = "signed by a key that was not given: signature not checked"
        return statement, status
    try:
        verified = (verify_bundle(data, [trusted.keys[hint]]) if hint is not None
                    else verify_signed(data, keys=(), keyless=trusted.keyless))
    except ClaimFailed as exc:
        status.update(status="invalid", detail=str(exc))
    else:
        if verified.identity is not None:
            status["key"] = str(verified.identity)
        status.update(status="verified", detail="signature verified")
        statement = verified.statement
    return statement, status


def _evidence(store: Store, entry: Descriptor, trusted: Trusted
              ) -> dict[str, Any]:
    layers = _layers(store, entry.digest)
    statements = {}
    for title in sorted(layers):
        if title.endswith(".json") and not title.endswith(".sigstore.json") \
                and title != "sbom.cdx.json":
            kind = title.removesuffix(".json")
            statement, signature = _signature(store, layers, kind, trusted)
            statements[kind] = {"digest": layers[title]["digest"], "signature": signature,
                                "statement": statement}
    return {"manifest": entry.digest, "signer": (entry.annotations or {}).get(SIGNER_ANN),
            "sbom": layers.get("sbom.cdx.json", {}).get("digest"),
            "statements": statements}


def _public(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """The evidence entry without the statements' bodies (the story keeps what it shows)."""
    return {"manifest": evidence["manifest"], "signer": evidence["signer"],
            "sbom": evidence["sbom"],
            "statements": [{"kind": kind, "digest": s["digest"], "signature": s["signature"]}
                           for kind, s in sorted(evidence["statements"].items())]}


def _first_statement(evidence: Sequence[Mapping[str, Any]], kind: str
                     ) -> dict[str, Any] | None:
    """The `kind` statement to tell the story from: a verified one if there is one."""
    found = [e["statements"][kind] for e in evidence if kind in e["statements"]]
    found.sort(key=lambda s: s["signature"]["status"] != "verified")
    return found[0] if found else None


def _inputs(store: Store, entries: Sequence[Descriptor]) -> dict[str, Any] | None:
    for entry in entries:
        manifest = store.read_json(entry.digest)
        if manifest.get("artifactType") != INPUTS_TYPE:
            continue
        out: dict[str, Any] = {"manifest": entry.digest, "recipe": None, "source": None,
                               "image": None, "python_lock": None, "wheels": []}
        epoch = manifest.get("annotations", {}).get(EPOCH_ANN)
        out["source_date_epoch"] = int(epoch) if epoch is not None else None
        for layer in manifest.get("layers", []):
            annotations = layer.get("annotations", {})
            title = annotations.get(TITLE, "")
            if title.endswith(".toml"):
                out["recipe"] = {"title": title, "digest": layer["digest"]}
            elif title == "source.tar":
                out["source"] = {"archive": layer["digest"],
                                 "tree": annotations.get("dev.rebuild.tree")}
            elif title == "image" and layer.get("mediaType") == OCI_MANIFEST:
                out["image"] = {"manifest": layer["digest"], "id": annotations.get(IMAGE_ID_ANN),
                                "reference": _image_reference(store, layer["digest"])}
            elif title == "python.lock.txt":
                out["python_lock"] = layer["digest"]
            elif title.startswith("wheels/"):
                out["wheels"].append({"name": title.removeprefix("wheels/"),
                                      "digest": layer["digest"]})
        return out
    return None


def _image_reference(store: Store, digest: str) -> str | None:
    if not store.has(digest):  # an exported bundle without its inputs names the image only
        return None
    reference = store.read_json(digest).get("annotations", {}).get(IMAGE_REF_ANN)
    return str(reference) if reference is not None else None


def _provenance(found: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if found is None:
        return None
    predicate = found["statement"].get("predicate", {})
    definition = predicate.get("buildDefinition", {})
    external = definition.get("externalParameters", {})
    builder = predicate.get("runDetails", {}).get("builder", {})
    byproducts = predicate.get("runDetails", {}).get("byproducts", [])
    comparison: dict[str, Any] = next(
        (b for b in byproducts if b.get("name") == "comparison.json"), {})
    return {
        "digest": found["digest"],
        "signature": found["signature"],
        "builder": {"id": builder.get("id"), "version": builder.get("version", {})},
        "build_type": definition.get("buildType"),
        "recipe_digest": external.get("recipe", {}).get("digest", {}).get("sha256"),
        "requirements": list(external.get("requirements", [])),
        "change": external.get("change"),
        "dependencies": [{"name": d.get("name"), "uri": d.get("uri"),
                          "digest": d.get("digest", {})}
                         for d in definition.get("resolvedDependencies", [])],
        "variations": definition.get("internalParameters", {}).get("variations", {}),
        "reproducible": comparison.get("annotations", {}).get("reproducible"),
    }


def _sbom(store: Store, evidence: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    for e in evidence:
        if e["sbom"] and store.has(e["sbom"]):
            components = store.read_json(e["sbom"]).get("components", [])
            purls = [str(c.get("purl", "")) for c in components]
            debian = sum(p.startswith("pkg:deb/") for p in purls)
            python = sum(p.startswith("pkg:pypi/") for p in purls)
            return {"digest": e["sbom"], "components": len(components), "debian": debian,
                    "python": python, "other": len(components) - debian - python}
    return None


def _attempt(store: Store, entry: Descriptor) -> dict[str, Any]:
    layers = _layers(store, entry.digest)
    record = store.read_json(layers["comparison.json"]["digest"]) \
        if "comparison.json" in layers else {}
    return {
        "manifest": entry.digest,
        "status": record.get("status", (entry.annotations or {}).get("dev.rebuild.status")),
        "image": record.get("image"),
        "runs": [{"name": r.get("name"), "variations": r.get("variations", {}),
                  "exit_code": r.get("exit_code"), "timed_out": r.get("timed_out"),
                  "log": r.get("log")} for r in record.get("runs", [])],
        "differences": [{"name": d.get("name"), "variations": d.get("variations", [])}
                        for d in record.get("differences", [])],
        "files": [{"title": title, "digest": layer["digest"], "size": layer.get("size")}
                  for title, layer in sorted(layers.items())],
    }


def _verdict(store: Store, entry: Descriptor, trusted: Trusted,
             recorded: Mapping[str, str]) -> dict[str, Any]:
    statement, signature = _signature(store, _layers(store, entry.digest), "verdict", trusted)
    predicate = statement.get("predicate", {})
    rebuilt = [{"name": a.get("name"), "sha256": a.get("digest", {}).get("sha256"),
                "match": a.get("digest", {}).get("sha256") == recorded.get(a.get("name", ""))}
               for a in predicate.get("rebuiltArtifacts", [])]
    return {"manifest": entry.digest, "result": predicate.get("verificationResult"),
            "verifier": predicate.get("verifier", {}).get("id"),
            "time": predicate.get("timeVerified"), "policy": predicate.get("policy", {}).get("uri"),
            "levels": list(predicate.get("verifiedLevels", [])),
            "signer": signature.get("key") or (entry.annotations or {}).get(SIGNER_ANN),
            "signature": signature, "rebuilt": rebuilt}


def _approval(store: Store, entry: Descriptor, trusted: Trusted
              ) -> dict[str, Any]:
    statement, signature = _signature(store, _layers(store, entry.digest), "approval", trusted)
    predicate = statement.get("predicate", {})
    signer = predicate.get("signer", {})
    return {"manifest": entry.digest, "name": signer.get("name"),
            "keyid": signer.get("keyid") or signature.get("key"), "role": predicate.get("role"),
            "meaning": predicate.get("meaning"), "time": predicate.get("time"),
            "comment": predicate.get("comment"), "signature": signature}


def _verification(store: Store, name: str, policy: Policy) -> dict[str, Any]:
    keys = sorted(_trusted_keys(policy)) + sorted(str(k) for k in policy.keyless)
    if not policy.builder_keys and not policy.keyless:
        return {"ran": False, "keys": keys, "verified": None, "checks": []}
    try:
        report = verify_release(store, name, policy)
    except StoreError as exc:
        return {"ran": True, "keys": keys, "verified": False,
                "checks": [{"name": "store", "ok": False, "detail": str(exc)}]}
    return {"ran": True, "keys": keys, "verified": report.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks]}


# -- rendering: shared ----------------------------------------------------------------------


def _utc(epoch: Any) -> str:
    if not isinstance(epoch, int):
        return "not recorded"
    return f"{epoch} ({datetime.fromtimestamp(epoch, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')})"


def _short(keyid: Any) -> str:
    return f"{keyid[:16]}…" if isinstance(keyid, str) and len(keyid) > 20 else str(keyid)


def _signature_text(signature: Mapping[str, Any]) -> str:
    key = signature.get("key")
    who = f"key {_short(key)}" if key else "no key"
    return {"verified": f"verified ({who})", "invalid": f"INVALID ({who})",
            "untrusted": f"not checked ({who} not given)",
            "unsigned": "unsigned"}.get(str(signature.get("status")), str(signature))


def _headline(story: Story) -> tuple[str, str]:
    """(css class, sentence) summing up the verification."""
    verification = story["verification"]
    if not verification["ran"]:
        return "warn", "Signatures not checked: no public key was given"
    keys = ", ".join(_short(k) for k in verification["keys"])
    if verification["verified"]:
        return "ok", f"Evidence VERIFIED with the given key(s): {keys}"
    return "bad", f"Evidence NOT VERIFIED with the given key(s): {keys}"


def _from_what(story: Story) -> list[tuple[str, str]]:
    """(label, value) rows of the inputs; values are plain text."""
    rows: list[tuple[str, str]] = []
    inputs = story.get("inputs") or {}
    provenance = story.get("provenance") or {}
    if inputs.get("recipe"):
        rows.append(("Recipe", f"{inputs['recipe']['title']} {inputs['recipe']['digest']}"))
    if inputs.get("source"):
        rows.append(("Source tree", str(inputs["source"]["tree"])))
        rows.append(("Source archive", str(inputs["source"]["archive"])))
    if inputs.get("image"):
        image = inputs["image"]
        reference = image.get("reference") or ""
        rows.append(("Base image", reference if str(image.get("id")) in reference
                     else f"{reference} id {image.get('id')}".strip()))
    else:
        rows += [("Base image", str(d["uri"]).removeprefix("docker-image:"))
                 for d in provenance.get("dependencies", [])
                 if str(d.get("uri")).startswith("docker-image:")]
    rows.append(("SOURCE_DATE_EPOCH", _utc(story.get("source_date_epoch"))))
    if inputs.get("python_lock"):
        rows.append(("Python lock", str(inputs["python_lock"])))
    dependencies = provenance.get("dependencies", [])
    wheels = len(inputs.get("wheels", []))
    sbom = story.get("sbom")
    counted = f"{len(dependencies)} resolved (source, base image, {wheels} wheel(s))"
    if sbom:
        counted += (f"; SBOM: {sbom['components']} components ({sbom['debian']} Debian, "
                    f"{sbom['python']} Python, {sbom['other']} other) {sbom['digest']}")
    rows.append(("Dependencies", counted))
    requirements = ", ".join(provenance.get("requirements", [])) or "none recorded"
    rows.append(("Requirements", requirements))
    rows.append(("Change request", provenance.get("change") or "none recorded"))
    return rows


def _by_whom(story: Story) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    provenance = story.get("provenance")
    if provenance:
        version = ", ".join(f"{k} {v}" for k, v in sorted(provenance["builder"]["version"]
                                                         .items()))
        rows.append(("Builder", f"{provenance['builder']['id']} ({version})"))
        rows.append(("Build type", str(provenance["build_type"])))
    unchecked = 0
    for evidence in story["evidence"]:
        statuses = {s["signature"].get("status") for s in evidence["statements"]}
        if statuses == {"untrusted"}:
            unchecked += 1  # signed by a key the reader did not give: summed up below
            continue
        kinds = "; ".join(f"{s['kind']}: {_signature_text(s['signature'])}"
                          for s in evidence["statements"])
        rows.append(("Evidence signed by", f"{evidence['signer'] or 'nobody'} — {kinds}"))
    if unchecked:
        rows.append(("Other evidence", f"{unchecked} record(s) signed by keys not given, "
                     "not checked (`rebuild show --json` lists them)"))
    return rows


def _variations(variations: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(variations.items())) or "baseline"


def _approval_text(a: Mapping[str, Any]) -> str:
    comment = f" — {a['comment']}" if a.get("comment") else ""
    return f"{a['name']} as {a['role']}: {a['meaning']} ({a['time']}){comment}"


# -- terminal -------------------------------------------------------------------------------


def render_text(story: Story) -> str:
    """The story for a terminal (`rebuild show`): five questions, one aligned table each."""
    _, headline = _headline(story)
    tests = story.get("tests")
    attempts = story["attempts"]
    checked = [(f"twin build ({a['status']})",
                "; ".join(f"run {r['name']}: {_variations(r['variations'])}" for r in a["runs"]))
               for a in attempts[-1:]]
    checked.append(("tests", f"{tests['result']}, {_signature_text(tests['signature'])}"
                    if tests else "none recorded"))
    checked += [(f"QA verdict {v['result']}", f"{v['verifier']}, key {_short(v['signer'])}, "
                 f"{_signature_text(v['signature'])}, {v['time']}") for v in story["verdicts"]]
    checked += [(f"check {c['name']}", ("ok: " if c["ok"] else "FAIL: ") + c["detail"])
                for c in story["verification"]["checks"]]
    sections = [
        ("What was built", [(a["name"], f"sha256:{a['sha256']} ({a['size']} bytes)")
                            for a in story["artifacts"]]),
        ("From what", _from_what(story)),
        ("By whom", _by_whom(story) or [("builder", "no provenance recorded")]),
        ("How it was checked", checked),
        ("Who approved", [(f"approval ({_signature_text(a['signature'])})", _approval_text(a))
                          for a in story["approvals"]] or [("", "no approval yet")]),
    ]
    width = max((len(k) for _, rows in sections for k, _ in rows), default=0)
    out = [f"{story['release']}  {story['manifest']}", headline]
    for title, rows in sections:
        out += ["", title] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(out) + "\n"


# -- Markdown -------------------------------------------------------------------------------


def _md(text: Any) -> str:
    """A table cell: pipes and line breaks would break the table."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def render_markdown(story: Story) -> str:
    """The story as Markdown (deterministic)."""
    _, headline = _headline(story)
    out = [f"# {story['release']}: release evidence", "", f"**{headline}**", "",
           f"Release manifest `{story['manifest']}`, created {story.get('created')}.", ""]
    out += ["## What was built", ""]
    out += _md_table(["Artifact", "sha256", "Size (bytes)"],
                     [(a["name"] + (f" → {a['link']}" if "link" in a else ""), a["sha256"],
                       a["size"]) for a in story["artifacts"]])
    out += ["## From what", ""]
    out += _md_table(["", ""], _from_what(story))
    out += ["## By whom", ""]
    out += _md_table(["", ""], _by_whom(story) or [("Builder", "no provenance recorded")])
    out += ["## How it was checked", "", "### Twin build", ""]
    for attempt in story["attempts"]:
        out += [f"Status **{attempt['status']}** (attempt `{attempt['manifest']}`).", ""]
        out += _md_table(["Run", "Variations", "Exit", "Log"],
                         [(r["name"], _variations(r["variations"]), r["exit_code"], r["log"])
                          for r in attempt["runs"]])
        if attempt["differences"]:
            out += _md_table(["Differs", "Variations"],
                             [(d["name"], ", ".join(d["variations"]))
                              for d in attempt["differences"]])
        out += _md_table(["Record", "Digest"], [(f["title"], f["digest"])
                                                for f in attempt["files"]])
    if not story["attempts"]:
        out += ["No build record is attached.", ""]
    out += ["### Tests", ""]
    tests = story.get("tests")
    out += [f"Test result **{tests['result']}**, signature {_signature_text(tests['signature'])}."
            if tests else "No test result recorded.", ""]
    out += ["### Independent rebuilds (QA verdicts)", ""]
    if story["verdicts"]:
        out += _md_table(["Verdict", "Verifier", "Key", "Signature", "Time"],
                         [(v["result"], v["verifier"], v["signer"],
                           _signature_text(v["signature"]), v["time"])
                          for v in story["verdicts"]])
    else:
        out += ["No QA verdict yet (`rebuild reproduce RELEASE --key QA.key`).", ""]
    out += ["### Verification of the evidence", ""]
    checks = story["verification"]["checks"]
    if checks:
        out += _md_table(["Check", "Result", "Detail"],
                         [(c["name"], "ok" if c["ok"] else "FAIL", c["detail"]) for c in checks])
    else:
        out += ["Not run: no public key was given.", ""]
    out += ["## Who approved", ""]
    if story["approvals"]:
        out += _md_table(["Approval", "Key", "Signature"],
                         [(_approval_text(a), a["keyid"], _signature_text(a["signature"]))
                          for a in story["approvals"]])
    else:
        out += ["No approval yet.", ""]
    out += _md_bundle(story)
    return "\n".join(out).rstrip("\n") + "\n"


def _md_bundle(story: Story) -> list[str]:
    bundle = story.get("bundle")
    if not bundle:
        return []
    out = ["## Check it yourself", ""]
    out += [f"- {line}" for line in _bundle_lines(story, bundle)]
    return [*out, ""]


def _bundle_lines(story: Story, bundle: Mapping[str, Any]) -> list[str]:
    # The builders' keys: those that signed the evidence (QA and approvers sign other things).
    signers = {e["signer"] for e in story["evidence"]}
    keys = " ".join(f"--key keys/{k}.pub" for k in bundle["keys"] if k in signers) \
        or "--key BUILDER.pub"
    lines = [f"Verify this bundle offline: rebuild verify BUNDLE {keys} (trust only keys you "
             "obtained independently; the copies in keys/ are for convenience).",
             "Every file is listed in SHA256SUMS: sha256sum -c SHA256SUMS."]
    if bundle["with_inputs"]:
        lines.append("The inputs are included: extract the bundle and run "
                     "rebuild --store DIR reproduce " + bundle["release"] + ".")
    else:
        lines.append("The inputs are named by digest only (export with --with-inputs to "
                     "include them).")
    return lines


# -- HTML -----------------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,"DejaVu Sans",sans-serif;color:#1d2433;background:#f6f7f9;
margin:0;padding:24px}
main{max-width:1100px;margin:auto;background:#fff;padding:24px 32px;border-radius:8px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h1{margin:0 0 8px;font-size:26px}h2{border-bottom:2px solid #e3e6eb;padding-bottom:4px;
margin-top:28px}h3{margin-bottom:6px}
table{border-collapse:collapse;width:100%;margin:6px 0 14px}
th,td{border:1px solid #e3e6eb;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5}code{font:13px "DejaVu Sans Mono",monospace;word-break:break-all}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-weight:600;font-size:13px}
.ok{background:#dff3e4;color:#13612e}.bad{background:#fbe0e0;color:#8a1c1c}
.warn{background:#fff1cc;color:#7a5200}
.headline{padding:10px 14px;border-radius:6px;font-weight:600;margin:12px 0}
.muted{color:#5b6474}
"""

# No scripts, no fetches: the page shows what it carries and nothing else.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _code(text: Any) -> str:
    return f"<code>{_h(text)}</code>"


def _badge(text: Any) -> str:
    word = str(text)
    css = ("ok" if word in ("PASSED", "ok", "verified", "reproducible", "same") else
           "bad" if word in ("FAILED", "FAIL", "invalid", "not-reproducible", "failed",
                             "test-failed") else "warn")
    return f'<span class="badge {css}">{_h(word)}</span>'


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{_h(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_pairs(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_h(k)}</th><td>{_digests_as_code(v)}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _digests_as_code(text: str) -> str:
    """Escape a plain-text value, setting digests and ids in monospace."""
    return " ".join(_code(w) if w.startswith(("sha256:", "https://")) or len(w) == 64
                    else _h(w) for w in text.split(" "))


def _sig_html(signature: Mapping[str, Any]) -> str:
    status = str(signature.get("status"))
    key = signature.get("key")
    return _badge(status) + (f" key {_code(key)}" if key else "")


def render_html(story: Story) -> str:
    """The story as one self-contained HTML page (deterministic)."""
    css, headline = _headline(story)
    parts = [f'<h1>{_h(story["release"])}</h1>',
             '<p class="muted">Release evidence: what was built, from what, by whom, how it '
             'was checked, and who approved it.</p>',
             f'<div class="headline {css}">{_h(headline)}</div>',
             _html_pairs([("Release", str(story["release"])),
                          ("Release manifest", str(story["manifest"])),
                          ("Created", str(story.get("created")))])]
    parts.append("<h2>What was built</h2>")
    parts.append(_html_table(["Artifact", "sha256", "Size (bytes)"], [
        (_h(a["name"]) + (f" → {_code(a['link'])}" if "link" in a else ""),
         _code(a["sha256"]), _h(a["size"])) for a in story["artifacts"]]))
    parts.append("<h2>From what</h2>" + _html_pairs(_from_what(story)))
    parts.append("<h2>By whom</h2>")
    provenance = story.get("provenance")
    if provenance:
        version = ", ".join(f"{k} {v}" for k, v in sorted(provenance["builder"]["version"]
                                                         .items()))
        parts.append(_html_pairs([("Builder", f"{provenance['builder']['id']} ({version})"),
                                  ("Build type", str(provenance["build_type"]))]))
    else:
        parts.append("<p>No provenance recorded.</p>")
    parts.append(_html_table(["Evidence signed by", "Statement", "Digest", "Signature"], [
        (_code(e["signer"] or "nobody"), _h(s["kind"]), _code(s["digest"]),
         _sig_html(s["signature"]))
        for e in story["evidence"] for s in e["statements"]]))
    parts.append("<h2>How it was checked</h2><h3>Twin build</h3>")
    for attempt in story["attempts"]:
        parts.append(f"<p>Status {_badge(attempt['status'])} attempt "
                     f"{_code(attempt['manifest'])}</p>")
        parts.append(_html_table(["Run", "Variations", "Exit code", "Log"], [
            (_h(r["name"]), _h(_variations(r["variations"])), _h(r["exit_code"]),
             _code(r["log"])) for r in attempt["runs"]]))
        if attempt["differences"]:
            parts.append(_html_table(["Differs", "Variations"], [
                (_h(d["name"]), _h(", ".join(d["variations"])))
                for d in attempt["differences"]]))
        parts.append(_html_table(["Record", "Digest"], [
            (_h(f["title"]), _code(f["digest"])) for f in attempt["files"]]))
    if not story["attempts"]:
        parts.append("<p>No build record is attached.</p>")
    tests = story.get("tests")
    parts.append("<h3>Tests</h3>" + (
        f"<p>Test result {_badge(tests['result'])} signature {_sig_html(tests['signature'])}"
        "</p>" if tests else "<p>No test result recorded.</p>"))
    parts.append("<h3>Independent rebuilds (QA verdicts)</h3>")
    if story["verdicts"]:
        parts.append(_html_table(["Verdict", "Verifier", "Key", "Signature", "Time",
                                  "Rebuilt"], [
            (_badge(v["result"]), _code(v["verifier"]), _code(v["signer"]),
             _sig_html(v["signature"]), _h(v["time"]),
             "<br>".join(f"{_h(a['name'])} {_badge('same' if a['match'] else 'DIFFERS')}"
                         for a in v["rebuilt"]))
            for v in story["verdicts"]]))
    else:
        parts.append("<p>No QA verdict yet.</p>")
    parts.append("<h3>Verification of the evidence</h3>")
    checks = story["verification"]["checks"]
    parts.append(_html_table(["Check", "Result", "Detail"], [
        (_h(c["name"]), _badge("ok" if c["ok"] else "FAIL"), _h(c["detail"]))
        for c in checks]) if checks else "<p>Not run: no public key was given.</p>")
    parts.append("<h2>Who approved</h2>")
    if story["approvals"]:
        parts.append(_html_table(["Name", "Role", "Meaning", "Time", "Comment", "Key",
                                  "Signature"], [
            (_h(a["name"]), _h(a["role"]), _h(a["meaning"]), _h(a["time"]),
             _h(a["comment"] or ""), _code(a["keyid"]), _sig_html(a["signature"]))
            for a in story["approvals"]]))
    else:
        parts.append("<p>No approval yet.</p>")
    bundle = story.get("bundle")
    if bundle:
        parts.append("<h2>Check it yourself</h2><ul>" + "".join(
            f"<li>{_h(line)}</li>" for line in _bundle_lines(story, bundle)) + "</ul>")
    title = _h(f"{story['release']}: release evidence")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(parts) + "\n</main></body></html>\n")
