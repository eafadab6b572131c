"""Attest: a build's evidence (provenance, SBOM, test result), signed and attached.

Gathers the facts of a finished twin build into `BuildFacts`, makes the statements with the
pure `provenance` and `sbom` modules, signs each as a DSSE envelope in a Sigstore bundle
(`sign`), and stores them as one OCI artifact whose subject is the release (or, for a build
that did not reproduce, the attempt). The same statements signed by the same key are stored
once: signing again would only add a new ECDSA signature of the same claim.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from rebuild import __version__
from rebuild.build.compare import Artifact
from rebuild.build.image import StoredImage
from rebuild.build.plan import BuildPlan
from rebuild.build.recipe import LoadedRecipe, parse_image_reference
from rebuild.evidence.provenance import (
    SBOM_PREDICATE,
    STATEMENT_TYPE,
    BuildFacts,
    Dependency,
    PyPackage,
    Subject,
    digest_set,
    make_provenance,
    subject_json,
)
from rebuild.evidence.sbom import DebianPart, make_sbom, render_debian
from rebuild.inputs.fetch import Inputs, LockedRequirement
from rebuild.store.auditlog import log_statement
from rebuild.store.layout import (
    BUNDLE_MEDIA,
    EVIDENCE_TYPE,
    KIND,
    LINK_MEDIA,
    RELEASE_ANN,
    SBOM_MEDIA,
    SIGNER_ANN,
    STATEMENT_MEDIA,
    SUBJECT,
    TITLE,
    Descriptor,
    Store,
    canonical_json,
)

if TYPE_CHECKING:
    from rebuild.evidence.sign import KeySigner, StatementSigner


@dataclass(frozen=True)
class Evidence:
    manifest: str  # digest of the evidence artifact manifest
    sbom: str  # digest of the CycloneDX document
    statements: Mapping[str, str]  # "provenance" / "sbom" / "test-result" -> blob digest
    bundles: Mapping[str, str]  # same keys -> bundle blob digest (when signed)
    signer: str | None  # key id, or the certificate identity of a keyless signer

    def to_json(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "provenance": self.statements["provenance"],
                "sbom": self.sbom, "statements": dict(self.statements),
                "bundles": dict(self.bundles), "signer": self.signer}


def gather_facts(loaded: LoadedRecipe, inputs: Inputs, image: StoredImage, plan: BuildPlan,
                 artifacts: Sequence[Artifact], *, reproducible: bool, record: str,
                 logs: Mapping[str, str], invocation_id: str,
                 requirements: Sequence[LockedRequirement] = (),
                 engines: Mapping[str, Mapping[str, Any]] | None = None) -> BuildFacts:
    """`requirements`: the parsed python_lock, for the SBOM's Python packages; `engines`:
    the Docker engine of each run, when they ran on two (`build --engine-b`)."""
    recipe = loaded.recipe
    name, tag, image_id = parse_image_reference(plan.image)
    return BuildFacts(
        release=recipe.release,
        name=recipe.recipe.name,
        version=recipe.recipe.version,
        recipe=recipe.model_dump(mode="json"),
        recipe_digest=loaded.digest,
        requirements=recipe.recipe.requirements,
        change=recipe.recipe.change,
        change_record=recipe.change.model_dump(mode="json") if recipe.change else None,
        source=Dependency("source", inputs.source.uri, digest_set(inputs.source.tree_digest),
                          {"archive": inputs.source.archive}),
        image=Dependency(f"{name}:{tag}" if tag else name, f"docker-image:{plan.image}",
                         digest_set(image_id), {"archive": image.archive}),
        wheels=tuple(Dependency(f"wheels/{w.filename}", f"pkg:pypi/{w.name}@{w.version}",
                                {"sha256": w.sha256}) for w in inputs.wheels),
        deb_packages=image.packages,
        py_packages=tuple(PyPackage(r.name, r.version, tuple(sorted(r.hashes)))
                          for r in requirements),
        source_date_epoch=plan.source_date_epoch,
        npm_packages=tuple(n.package for n in inputs.npm),
        variations={run.name: run.describe() for run in plan.runs},
        # With two engines, each run's record names the engine it ran on.
        runs={run.name: {**run.record(), **({"engine": dict(engines[run.name])}
                                           if engines else {})} for run in plan.runs},
        subjects=tuple(Subject(a.name, a.sha256, a.media_type) for a in artifacts),
        comparison={"reproducible": reproducible, "record": record},
        logs=logs,
        builder_version=__version__,
        invocation_id=invocation_id,
    )


def sbom_statement(facts: BuildFacts, sbom: bytes) -> dict[str, Any]:
    """The SBOM wrapped in an in-toto statement, so it is signed like every other claim."""
    return {"_type": STATEMENT_TYPE,
            "subject": [subject_json(s) for s in sorted(facts.subjects, key=lambda s: s.name)],
            "predicateType": SBOM_PREDICATE,
            "predicate": json.loads(sbom)}


def build_link(facts: BuildFacts, command: Sequence[str],
               signer: StatementSigner) -> tuple[str, bytes] | None:
    """The in-toto link of the build step (file name, DSSE bytes): materials are the inputs,
    products the artifacts, signed by the builder (docs/in-toto/README.md)."""
    # A layout trusts a link by its signer's key id; a keyless signer's key lives for one
    # certificate, so no layout could name it: a keyless build records no link (its signed
    # provenance names the same inputs and artifacts).
    if not _key_signed(signer):
        return None
    # Imported here: in-toto is heavy and only key-signed builds need it (prepare_sbom
    # imports it ahead, while the runs run).
    from rebuild.evidence.intoto import intoto_keyid, link_filename, make_link

    materials = {"recipe.toml": facts.recipe_digest, "source.tar": facts.source.annotations[
        "archive"], "image": facts.image.annotations["archive"]}
    materials.update({w.name: f"sha256:{w.digest['sha256']}" for w in facts.wheels})
    link = make_link("build", materials={k: v.removeprefix("sha256:")
                                         for k, v in materials.items()},
                     products={s.name: s.sha256 for s in facts.subjects},
                     command=command, signer=signer.key)
    return link_filename("build", intoto_keyid(signer.key.public_key)), link


def attach_evidence(store: Store, subject: Descriptor, release: str,
                    statements: Mapping[str, Mapping[str, Any]], sbom: bytes,
                    signer: StatementSigner | None,
                    link: tuple[str, bytes] | None = None) -> Evidence:
    """Store the statements (and their bundles when a signer is given) as one artifact."""
    signer_id = signer.identity if signer else None
    digests = {kind: store.put_bytes(canonical_json(st))[0] for kind, st in statements.items()}
    sbom_digest, sbom_size = store.put_bytes(sbom)
    existing = _existing_evidence(store, subject.digest, digests, signer_id)
    if existing is not None:
        return existing
    layers = [Descriptor(SBOM_MEDIA, sbom_digest, sbom_size, {TITLE: "sbom.cdx.json"})]
    layers += [Descriptor(STATEMENT_MEDIA, d, store.blob_path(d).stat().st_size,
                          {TITLE: f"{kind}.json"}) for kind, d in digests.items()]
    bundles: dict[str, str] = {}
    if signer is not None:
        for kind, statement in statements.items():
            bundles[kind], size = store.put_bytes(signer.sign(statement))
            layers.append(Descriptor(BUNDLE_MEDIA, bundles[kind], size,
                                     {TITLE: f"{kind}.sigstore.json"}))
    if link is not None:
        link_digest, link_size = store.put_bytes(link[1])
        layers.append(Descriptor(LINK_MEDIA, link_digest, link_size, {TITLE: link[0]}))
    annotations = {RELEASE_ANN: release}
    if signer_id:
        annotations[SIGNER_ANN] = signer_id
    manifest = store.put_artifact(EVIDENCE_TYPE, layers, subject=subject,
                                  annotations=annotations)
    store.add_to_index(manifest, {KIND: "evidence", RELEASE_ANN: release,
                                  SUBJECT: subject.digest, **annotations})
    return Evidence(manifest.digest, sbom_digest, digests, bundles, signer_id)


def _existing_evidence(store: Store, subject: str, digests: Mapping[str, str],
                       signer_id: str | None) -> Evidence | None:
    for entry in store.referrers(subject):
        if (entry.annotations or {}).get(KIND) != "evidence" or \
                (entry.annotations or {}).get(SIGNER_ANN) != signer_id:
            continue
        layers = store.read_json(entry.digest)["layers"]
        titles = {layer["annotations"][TITLE]: layer["digest"] for layer in layers}
        if all(titles.get(f"{kind}.json") == d for kind, d in digests.items()):
            bundles = {kind: titles[f"{kind}.sigstore.json"] for kind in digests
                       if f"{kind}.sigstore.json" in titles}
            return Evidence(entry.digest, titles["sbom.cdx.json"], dict(digests), bundles,
                            signer_id)
    return None


def _key_signed(signer: StatementSigner | None) -> TypeGuard[KeySigner]:
    """Whether a local key signs. The signing module is loaded by then (it made the signer):
    an unsigned build loads neither it nor cryptography."""
    if signer is None:
        return False
    from rebuild.evidence.sign import KeySigner

    return isinstance(signer, KeySigner)


def prepare_sbom(image: StoredImage, signer: StatementSigner | None = None
                 ) -> Future[DebianPart]:
    """Start rendering the Debian share of the SBOM of a build on `image` (its largest part,
    which needs only the image) in a thread of its own, while the containers run. A
    key-signed build's in-toto link module is loaded there too."""
    def prepare() -> DebianPart:
        if _key_signed(signer):
            import rebuild.evidence.intoto  # noqa: F401 (loaded ahead for build_link)
        # gather_facts leaves debian_distro at its default.
        return render_debian(image.packages, BuildFacts.debian_distro)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rebuild-sbom")
    try:
        return executor.submit(prepare)
    finally:
        executor.shutdown(wait=False)  # the thread ends when the rendering does


def build_statements(facts: BuildFacts, test_result: Mapping[str, Any] | None,
                     debian: DebianPart | None = None
                     ) -> tuple[dict[str, Mapping[str, Any]], bytes]:
    """The statements of a build, and the SBOM document they include; `debian`, from
    `prepare_sbom`, is the SBOM's Debian share made ahead."""
    sbom = make_sbom(facts, debian)
    statements: dict[str, Mapping[str, Any]] = {
        "provenance": make_provenance(facts),
        "sbom": sbom_statement(facts, sbom),
    }
    if test_result is not None:
        statements["test-result"] = test_result
    return statements, sbom


def attach_statement(store: Store, subject: Descriptor, release: str, kind: str,
                     statement: Mapping[str, Any], signer: StatementSigner, *,
                     reports: Sequence[str] = ()) -> str:
    """Sign one statement (a QA verdict, an approval) and attach it to a release, with the
    diff reports that back it; returns the digest of the artifact manifest that carries it."""
    digest, size = store.put_bytes(canonical_json(statement))
    bundle, bundle_size = store.put_bytes(signer.sign(statement))
    layers = [Descriptor(STATEMENT_MEDIA, digest, size, {TITLE: f"{kind}.json"}),
              Descriptor(BUNDLE_MEDIA, bundle, bundle_size, {TITLE: f"{kind}.sigstore.json"})]
    layers += [Descriptor("text/plain; charset=utf-8", r, store.blob_path(r).stat().st_size,
                          {TITLE: f"diff/{i}.txt"}) for i, r in enumerate(reports)]
    annotations = {RELEASE_ANN: release, SIGNER_ANN: signer.identity}
    manifest = store.put_artifact(f"application/vnd.rebuild.{kind}.v1+json", layers,
                                  subject=subject, annotations=annotations)
    store.add_to_index(manifest, {KIND: kind, SUBJECT: subject.digest, **annotations})
    log_statement(store, kind=kind, release=release, manifest=subject.digest,
                  record=manifest.digest, statement=statement, statement_digest=digest,
                  bundle=bundle, signer=signer.identity)
    return manifest.digest
