"""Report: a release's story for people, told from the store's records.

What was built (artifacts and digests), from what (recipe, source, image, SOURCE_DATE_EPOCH,
dependencies, traceability ids), by whom (builder, signing keys), how it was checked (twin
build, variations, tests, QA verdicts, the verification of the evidence) and who approved it
(design.md: the question every release must answer).

`release_story` gathers it into JSON-able data; `report_view` turns it into the text the pages
show, and `render_markdown` and `render_html` lay that out with the Jinja2 templates in
rebuild/templates (autoescaped HTML). All three are pure and deterministic (no clock, no host
paths), so an exported bundle is byte-reproducible. The HTML is self-contained: inline CSS, no
scripts, nothing loaded from anywhere, and a Content Security Policy that says so. A
statement's signature is checked against the keys the caller trusts; one that cannot be
checked is shown as such, never as verified.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

from rebuild.errors import ClaimFailed, StoreError
from rebuild.evidence.sign import KeylessIdentity, verify_bundle, verify_signed
from rebuild.release.trace import suite_statements, trace_matrix
from rebuild.release.verify import (
    Policy,
    Report,
    attached,
    resolve_release,
    statement_manifest,
    statement_release,
    verify_release,
)
from rebuild.store.layout import (
    CREATED_ANN,
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

Story = dict[str, Any]


# -- gathering ----------------------------------------------------------------------------


def release_story(store: Store, release: str, policy: Policy) -> Story:
    """The story of `release` (name@version or an artifact digest), as JSON-able data.

    Signatures are checked against every key `policy` names (builders, QA, approvers); the
    verification section is `verify_release` under `policy`, or "not run" without keys.
    What was built, from what and by whom are told from the signed provenance that the
    verification bound to this release (`facts_verified`); without one, from the store's
    records, and the story says they are not verified.
    """
    entry = resolve_release(store, release)
    manifest = store.read_json(entry.digest)
    verification, report = _verification(store, release, policy)
    bound = report is not None and report.bound
    indexed = (entry.annotations or {}).get(REF_NAME) or manifest.get("annotations", {}).get(
        RELEASE_ANN, release)
    name = str(report.release) if report is not None and report.ok else indexed
    trusted = Trusted(_trusted_keys(policy), policy.keyless)
    referrers = store.referrers(entry.digest)

    def of_kind(kind: str) -> list[Descriptor]:
        return sorted(attached(store, entry, kind), key=lambda r: r.digest)

    artifacts = [_artifact(layer) for layer in manifest.get("layers", [])]
    recorded = {a["name"]: a["sha256"] for a in artifacts}
    binding = Binding(name if bound else indexed, entry.digest, recorded)
    evidence = [_evidence(store, e, trusted, binding) for e in of_kind("evidence")]
    if bound and report is not None:
        provenance: dict[str, Any] | None = _bound_statement(evidence, report, "provenance")
        test_result = _bound_statement(evidence, report, "test-result")
    else:
        provenance = _first_statement(evidence, "provenance")
        test_result = _first_statement(evidence, "test-result")
    told = _provenance(provenance)
    # The newest inputs record, the one `rebuild reproduce` uses: unsigned, so it is shown
    # as matching the signed provenance or not.
    inputs = _inputs(store, [r for r in reversed(referrers)
                             if (r.annotations or {}).get(KIND) == "inputs"], told)
    epoch = told.get("source_date_epoch") if told else None
    if epoch is None and not bound and inputs:
        epoch = inputs.get("source_date_epoch")
    # The trace matrix only from statements the verification counted (never unsigned ones).
    matrix = (trace_matrix(str(name), entry.digest, report.statements)
              if bound and report is not None else None)
    shows_trace = matrix is not None and (matrix.change is not None or bool(matrix.rows))
    suites = [{"suite": suite, "result": str(predicate.get("result"))}
              for suite, predicate in suite_statements(report.statements).items()
              ] if bound and report is not None else []
    return {
        **({"suites": suites} if suites else {}),
        **({"trace": matrix.to_json()} if shows_trace and matrix is not None else {}),
        "format": STORY_FORMAT,
        "release": name,
        "facts_verified": bound,
        "manifest": entry.digest,
        "created": manifest.get("annotations", {}).get(CREATED_ANN),
        "source_date_epoch": epoch,
        "artifacts": artifacts,
        "inputs": inputs,
        "provenance": told,
        "sbom": _sbom(store, evidence),
        "evidence": [_public(e) for e in evidence],
        "attempts": [_attempt(store, a, told) for a in of_kind("attempt")],
        "tests": None if test_result is None else {
            "result": test_result["statement"].get("predicate", {}).get("result"),
            "signature": test_result["signature"]},
        "verdicts": one_verdict_per_key(
            [_verdict(store, v, trusted, binding) for v in of_kind("verdict")]),
        "approvals": sorted((_approval(store, a, trusted, binding) for a in of_kind("approval")),
                            key=lambda a: (str(a["time"]), a["manifest"])),
        "verification": verification,
    }


def one_verdict_per_key(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each signer's verdict once (two rebuilders of one key that raced may both have attached
    one): a verified one before any other, then the latest; verdicts naming no key stay."""
    def rank(v: dict[str, Any]) -> tuple[bool, str, str]:
        return (v["signature"].get("status") == "verified", str(v["time"]), v["manifest"])

    best: dict[str, dict[str, Any]] = {}
    unnamed = []
    for verdict in verdicts:
        key = verdict.get("signer")
        if not key:
            unnamed.append(verdict)
        elif key not in best or rank(verdict) > rank(best[key]):
            best[key] = verdict
    return sorted([*best.values(), *unnamed], key=lambda v: (str(v["time"]), v["manifest"]))


@dataclass(frozen=True)
class Binding:
    """What a signed statement must name to be about this release: its name, its manifest
    and its artifacts (name -> sha256 hex)."""

    name: str
    manifest: str
    artifacts: Mapping[str, str]

    def problem(self, kind: str, statement: Mapping[str, Any]) -> str | None:
        """Why a statement whose signature verified is not about this release, or None."""
        subjects = {s.get("name"): s.get("digest", {}).get("sha256")
                    for s in statement.get("subject", []) if isinstance(s, Mapping)}
        if subjects != self.artifacts:
            return "its subjects are not this release's artifacts"
        named = statement_release(kind, statement)
        if kind != "test-result" and named != self.name:
            return f"it is about {named or 'no release'}, not {self.name}"
        if statement_manifest(kind, statement) not in (None, self.manifest):
            return "it names another release manifest"
        return None


def _bound_statement(evidence: Sequence[Mapping[str, Any]], report: Report, kind: str
                     ) -> dict[str, Any] | None:
    """The `kind` statement the verification counted, with its signature status."""
    statement = report.statements.get(kind)
    for e in evidence:
        found = e["statements"].get(kind)
        if found is not None and found["statement"] == statement:
            return dict(found)
    return None


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
               trusted: Trusted, binding: Binding) -> tuple[dict[str, Any], dict[str, Any]]:
    """(statement, signature status) of the `kind` statement in an artifact's layers; a
    verified signature of a statement about another release is "unbound"."""
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
        statement = verified.statement
        problem = binding.problem(kind, statement)
        status.update(status="unbound", detail=f"signature verified, but {problem}") \
            if problem else status.update(status="verified", detail="signature verified")
    return statement, status


def _evidence(store: Store, entry: Descriptor, trusted: Trusted, binding: Binding
              ) -> dict[str, Any]:
    layers = _layers(store, entry.digest)
    statements = {}
    for title in sorted(layers):
        if title.endswith(".json") and not title.endswith(".sigstore.json") \
                and title != "sbom.cdx.json":
            kind = title.removesuffix(".json")
            statement, signature = _signature(store, layers, kind, trusted, binding)
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


def _inputs(store: Store, entries: Sequence[Descriptor], provenance: Mapping[str, Any] | None
            ) -> dict[str, Any] | None:
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
        out["matches_provenance"] = _inputs_match(out, provenance)
        return out
    return None


def _inputs_match(inputs: Mapping[str, Any], provenance: Mapping[str, Any] | None) -> bool:
    """Whether an (unsigned) inputs record names what the provenance does: the recipe, the
    source tree and archive, the image and SOURCE_DATE_EPOCH."""
    if provenance is None:
        return False
    by_name = {d["name"]: d for d in provenance["dependencies"]}
    source = by_name.get("source", {})
    images = [d for d in provenance["dependencies"]
              if str(d.get("uri")).startswith("docker-image:")]
    recipe, tree, image = inputs.get("recipe"), inputs.get("source"), inputs.get("image")
    return (recipe is not None and recipe["digest"] == f"sha256:{provenance['recipe_digest']}"
            and tree is not None
            and tree["tree"] == f"sha256:{source.get('digest', {}).get('sha256')}"
            and tree["archive"] == source.get("annotations", {}).get("archive")
            and image is not None and len(images) == 1
            and image["id"] == f"sha256:{images[0].get('digest', {}).get('sha256')}"
            and inputs.get("source_date_epoch") == provenance.get("source_date_epoch"))


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
                          "digest": d.get("digest", {}), "annotations": d.get("annotations", {})}
                         for d in definition.get("resolvedDependencies", [])],
        "source_date_epoch": definition.get("internalParameters", {}).get("source_date_epoch"),
        "variations": definition.get("internalParameters", {}).get("variations", {}),
        "reproducible": comparison.get("annotations", {}).get("reproducible"),
        "comparison": comparison.get("digest", {}).get("sha256"),
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


def _attempt(store: Store, entry: Descriptor, provenance: Mapping[str, Any] | None
             ) -> dict[str, Any]:
    layers = _layers(store, entry.digest)
    record = store.read_json(layers["comparison.json"]["digest"]) \
        if "comparison.json" in layers else {}
    # An attempt record is unsigned; the provenance names the one comparison it stands on.
    signed = (provenance or {}).get("comparison")
    return {
        "manifest": entry.digest,
        "matches_provenance": signed is not None and
        layers.get("comparison.json", {}).get("digest") == f"sha256:{signed}",
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
             binding: Binding) -> dict[str, Any]:
    recorded = binding.artifacts
    statement, signature = _signature(store, _layers(store, entry.digest), "verdict", trusted,
                                      binding)
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


def _approval(store: Store, entry: Descriptor, trusted: Trusted, binding: Binding
              ) -> dict[str, Any]:
    statement, signature = _signature(store, _layers(store, entry.digest), "approval", trusted,
                                      binding)
    predicate = statement.get("predicate", {})
    signer = predicate.get("signer", {})
    return {"manifest": entry.digest, "name": signer.get("name"),
            "keyid": signer.get("keyid") or signature.get("key"), "role": predicate.get("role"),
            "meaning": predicate.get("meaning"), "time": predicate.get("time"),
            "comment": predicate.get("comment"), "signature": signature}


def _verification(store: Store, target: str, policy: Policy
                  ) -> tuple[dict[str, Any], Report | None]:
    keys = sorted(_trusted_keys(policy)) + sorted(str(k) for k in policy.keyless)
    if not policy.builder_keys and not policy.keyless:
        return {"ran": False, "keys": keys, "verified": None, "checks": []}, None
    try:
        report = verify_release(store, target, policy)
    except StoreError as exc:
        return {"ran": True, "keys": keys, "verified": False,
                "checks": [{"name": "store", "ok": False, "detail": str(exc)}]}, None
    return {"ran": True, "keys": keys, "verified": report.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                       for c in report.checks]}, report


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
            "unbound": f"NOT about this release (signed, {who})",
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


def facts_label(story: Story) -> str:
    """Appended to the headings of the facts (what, from what, by whom): they are verified
    only when a trusted signed provenance was bound to this release."""
    return "" if story.get("facts_verified") else \
        " (NOT VERIFIED: from unsigned store records)"


def _from_what(story: Story) -> list[tuple[str, str]]:
    """(label, value) rows of the inputs, told from the provenance; values are plain text."""
    rows: list[tuple[str, str]] = []
    inputs = story.get("inputs") or {}
    provenance = story.get("provenance") or {}
    dependencies = provenance.get("dependencies", [])
    source = next((d for d in dependencies if d.get("name") == "source"), None)
    images = [d for d in dependencies if str(d.get("uri")).startswith("docker-image:")]
    if provenance.get("recipe_digest"):
        rows.append(("Recipe", f"sha256:{provenance['recipe_digest']}"))
    if source is not None:
        rows.append(("Source tree", f"sha256:{source.get('digest', {}).get('sha256')}"))
        archive = source.get("annotations", {}).get("archive")
        if archive:
            rows.append(("Source archive", str(archive)))
    rows += [("Base image", str(d["uri"]).removeprefix("docker-image:")) for d in images]
    rows.append(("SOURCE_DATE_EPOCH", _utc(story.get("source_date_epoch"))))
    if inputs:
        state = ("matches the signed provenance" if inputs.get("matches_provenance") else
                 "does NOT match the provenance: not verified")
        rows.append(("Inputs record", f"{inputs['manifest']} {state}"))
        if not provenance:  # nothing signed to tell it from: the record, marked as such
            if inputs.get("recipe"):
                rows.append(("Recipe (unverified)",
                             f"{inputs['recipe']['title']} {inputs['recipe']['digest']}"))
            if inputs.get("source"):
                rows.append(("Source tree (unverified)", str(inputs["source"]["tree"])))
    if inputs.get("python_lock"):
        rows.append(("Python lock", str(inputs["python_lock"])))
    wheels = sum(1 for d in dependencies if str(d.get("name")).startswith("wheels/"))
    npm = sum(1 for d in dependencies if str(d.get("uri")).startswith("pkg:npm/"))
    sbom = story.get("sbom")
    counted = (f"{len(dependencies)} resolved (source, base image, {wheels} wheel(s)"
               + (f", {npm} npm package(s)" if npm else "") + ")")
    if sbom:
        counted += (f"; SBOM: {sbom['components']} components ({sbom['debian']} Debian, "
                    f"{sbom['python']} Python, {sbom['other']} other) {sbom['digest']}")
    rows.append(("Dependencies", counted))
    requirements = ", ".join(provenance.get("requirements", [])) or "none recorded"
    rows.append(("Requirements", requirements))
    rows.append(("Change request", provenance.get("change") or "none recorded"))
    return rows


def _builder_rows(provenance: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not provenance:
        return []
    version = ", ".join(f"{k} {v}" for k, v in sorted(provenance["builder"]["version"].items()))
    return [("Builder", f"{provenance['builder']['id']} ({version})"),
            ("Build type", str(provenance["build_type"]))]


def _by_whom(story: Story) -> list[tuple[str, str]]:
    rows = _builder_rows(story.get("provenance"))
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
    checked = [(f"twin build ({a['status']}"
                f"{'' if a['matches_provenance'] else ', unsigned record: not verified'})",
                "; ".join(f"run {r['name']}: {_variations(r['variations'])}" for r in a["runs"]))
               for a in attempts[-1:]]
    suites = story.get("suites") or []
    checked.append(("tests", f"{tests['result']}, {_signature_text(tests['signature'])}"
                    if tests else "suites: " + ", ".join(
                        f"{s['suite']} {s['result']}" for s in suites) + " (signed, verified)"
                    if suites else "none recorded" if story["facts_verified"]
                    else "none verified (no trusted key)"))
    checked += [(f"QA verdict {v['result']}", f"{v['verifier']}, key {_short(v['signer'])}, "
                 f"{_signature_text(v['signature'])}, {v['time']}") for v in story["verdicts"]]
    checked += [(f"check {c['name']}", ("ok: " if c["ok"] else "FAIL: ") + c["detail"])
                for c in story["verification"]["checks"]]
    facts = facts_label(story)
    sections = [
        ("What was built" + facts, [(a["name"], f"sha256:{a['sha256']} ({a['size']} bytes)")
                                    for a in story["artifacts"]]),
        ("From what" + facts, _from_what(story)),
        ("By whom" + facts, _by_whom(story) or [("builder", "no provenance recorded")]),
        ("How it was checked", checked),
        ("Who approved", [(f"approval ({_signature_text(a['signature'])})", _approval_text(a))
                          for a in story["approvals"]] or [("", "no approval yet")]),
    ]
    if story.get("trace"):
        sections.insert(4, ("Trace matrix (requirement: status, test cases)",
                            _trace_rows(story["trace"])))
    width = max((len(k) for _, rows in sections for k, _ in rows), default=0)
    out = [f"{story['release']}  {story['manifest']}", headline]
    for title, rows in sections:
        out += ["", title] + [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(out) + "\n"


# -- the pages: a view for the templates ----------------------------------------------------


def report_view(story: Story) -> dict[str, Any]:
    """What the HTML and Markdown pages show, as plain data: every value is the text shown.

    Pure; the templates (rebuild/templates) only lay it out, so this is where the wording
    lives and where it is tested.
    """
    css, headline = _headline(story)
    tests = story.get("tests")
    bundle = story.get("bundle")
    return {
        "release": str(story["release"]),
        "manifest": str(story["manifest"]),
        "created": str(story.get("created")),
        "headline": {"css": css, "text": headline},
        "facts": facts_label(story),
        "artifacts": [{"name": str(a["name"]),
                       "link": str(a["link"]) if "link" in a else None,
                       "sha256": str(a["sha256"]), "size": str(a["size"])}
                      for a in story["artifacts"]],
        "from_what": [[k, v] for k, v in _from_what(story)],
        "builder": [[k, v] for k, v in _builder_rows(story.get("provenance"))],
        "by_whom": [[k, v] for k, v in
                    _by_whom(story) or [("Builder", "no provenance recorded")]],
        "evidence": [{"signer": str(e["signer"] or "nobody"), "kind": str(s["kind"]),
                      "digest": str(s["digest"]), "signature": _signature_view(s["signature"])}
                     for e in story["evidence"] for s in e["statements"]],
        "attempts": [{
            "status": str(a["status"]), "manifest": str(a["manifest"]),
            "runs": [{"name": str(r["name"]), "variations": _variations(r["variations"]),
                      "exit_code": str(r["exit_code"]), "log": str(r["log"])}
                     for r in a["runs"]],
            "differences": [{"name": str(d["name"]), "variations": ", ".join(d["variations"])}
                            for d in a["differences"]],
            "files": [{"title": str(f["title"]), "digest": str(f["digest"])}
                      for f in a["files"]],
        } for a in story["attempts"]],
        "tests": None if not tests else {"result": str(tests["result"]),
                                         "signature": _signature_view(tests["signature"])},
        "verdicts": [{"result": str(v["result"]), "verifier": str(v["verifier"]),
                      "signer": str(v["signer"]), "signature": _signature_view(v["signature"]),
                      "time": str(v["time"]),
                      "rebuilt": [{"name": str(a["name"]),
                                   "state": "same" if a["match"] else "DIFFERS"}
                                  for a in v["rebuilt"]]}
                     for v in story["verdicts"]],
        "checks": [{"name": str(c["name"]), "result": "ok" if c["ok"] else "FAIL",
                    "detail": str(c["detail"])} for c in story["verification"]["checks"]],
        "approvals": [{"text": _approval_text(a), "name": str(a["name"]),
                       "role": str(a["role"]), "meaning": str(a["meaning"]),
                       "time": str(a["time"]), "comment": str(a["comment"] or ""),
                       "keyid": str(a["keyid"]), "signature": _signature_view(a["signature"])}
                      for a in story["approvals"]],
        "bundle": _bundle_lines(story, bundle) if bundle else None,
        **({"trace": _trace_view(story["trace"])} if story.get("trace") else {}),
    }


def _trace_rows(trace: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [(str(r["requirement"]), f"{_trace_status(r)}: " + (", ".join(
        f"{c['suite']}/{c['id']} {c['outcome']}" for c in r["cases"]) or "no test case"))
        for r in trace["requirements"]]
    if trace["uncovered"]:
        rows.append(("uncovered", ", ".join(trace["uncovered"])))
    return rows or [("", "no requirements recorded")]


def _trace_status(row: Mapping[str, Any]) -> str:
    return "covered" if row["covered"] else "UNCOVERED" if row["in_change"] else \
        "not in the change"


def _trace_view(trace: Mapping[str, Any]) -> dict[str, Any]:
    return {"change": str(trace.get("change") or ""),
            "rows": [{"requirement": str(r["requirement"]), "status": _trace_status(r),
                      "cases": [{"suite": str(c["suite"]), "id": str(c["id"]),
                                 "outcome": str(c["outcome"])} for c in r["cases"]],
                      "text": ", ".join(f"{c['suite']}/{c['id']} {c['outcome']}"
                                        for c in r["cases"]) or "no test case"}
                     for r in trace["requirements"]],
            "uncovered": ", ".join(trace["uncovered"])}


def _signature_view(signature: Mapping[str, Any]) -> dict[str, str | None]:
    key = signature.get("key")
    return {"status": str(signature.get("status")), "key": str(key) if key else None,
            "text": _signature_text(signature)}


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
