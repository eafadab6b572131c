"""SBOM: the CycloneDX 1.6 bill of materials of a release (design.md, "Evidence formats").

Pure: `make_sbom(facts)` writes the BOM as CycloneDX JSON and returns its canonical bytes.
The same facts give the same bytes, whatever order the caller listed them in:

- `metadata.timestamp` is SOURCE_DATE_EPOCH, never the clock;
- `serialNumber` is a UUIDv5 of the facts;
- every component has an explicit bom-ref;
- the inputs are sorted before they are used.

Components: the release (metadata.component), each artifact (a file with its sha256), the
source, every Python package of the lock, every npm package of the npm lock (`pkg:npm`, its
sha512), the base image and every Debian package in it. Graph: release -> artifacts;
artifact -> source, Python and npm packages, image; image -> Debian packages.

cyclonedx-python-lib is the reference, not the writer: `reference_sbom` builds the same BOM
with it, and tests/test_evidence_formats.py checks that both give the same bytes and that
they pass the library's strict schema validation. The library's serializer is quadratic in
the components (20,000 artifacts did not finish in ten minutes) and loading it took a tiny
build 60 ms. The Debian share depends on the image's package list only: `render_debian`
makes it ahead, while the build runs, and `make_sbom(facts, debian)` uses it.

packageurl is imported where purls are made.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rebuild.evidence.provenance import (
    BuildFacts,
    DebPackage,
    Dependency,
    NpmPackage,
    PyPackage,
    Subject,
    npm_purl,
    plain_json,
)
from rebuild.store.layout import canonical_json

if TYPE_CHECKING:
    from cyclonedx.model import Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component
    from packageurl import PackageURL

# Serial numbers are uuid5(SERIAL_NAMESPACE, canonical JSON of the sorted facts): stable for
# the same facts, different for any other build. The namespace is fixed forever: changing it
# changes every serial number.
SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://rebuild.dev/sbom/serial-number")
IMAGE_REF = "image"


@dataclass(frozen=True)
class DebianPart:
    """The Debian packages' share of an SBOM, as cyclonedx renders it (JSON values, read-only).

    `components` are the packages' components and `dependencies` the image's entry and the
    packages' own, each in the library's order.
    """

    packages: tuple[DebPackage, ...]  # sorted as `sort_facts` sorts them
    distro: str
    components: tuple[Any, ...]
    dependencies: tuple[Any, ...]


def make_sbom(facts: BuildFacts, debian: DebianPart | None = None) -> bytes:
    """The release's CycloneDX 1.6 JSON, byte-identical for the same facts.

    `debian`, from `render_debian` for the facts' packages, saves rendering them again; a
    part made for other packages is not used.

    Written as plain JSON, in the library's orders: cyclonedx registers each dependency with
    a scan of those it has (a BOM of 20,000 artifacts did not finish in ten minutes), and
    loading it took a tiny build 60 ms. `reference_sbom` renders the same BOM with the
    library, and tests/test_evidence_formats.py checks that both give the same bytes.
    """
    facts = sort_facts(facts)
    if debian is None or (debian.packages, debian.distro) != (facts.deb_packages,
                                                              facts.debian_distro):
        debian = render_debian(facts.deb_packages, facts.debian_distro)
    artifacts = [_artifact_json(s) for s in facts.subjects]
    python = [_python_json(p) for p in facts.py_packages]
    npm = [_npm_json(p) for p in facts.npm_packages]
    source = _component_json("file", facts.source.name, None, "source", properties=_named(
        _property_pairs(facts.source, "rebuild:tree-digest")))
    image = _component_json("container", facts.image.name, None, IMAGE_REF, properties=_named(
        _property_pairs(facts.image, "rebuild:image-id")))
    release = _component_json("application", facts.name, facts.version, facts.release,
                              properties=_named(_release_pairs(facts)))
    tool = _component_json("application", "rebuild", facts.builder_version, "tool:rebuild")
    # Every artifact depends on the same components: the source, the Python and npm
    # packages, the image (the library lists a dependency's refs in string order).
    inputs = sorted(c["bom-ref"] for c in (source, *python, *npm, image))
    graph = [_dependency(facts.release, (a["bom-ref"] for a in artifacts))]
    graph += [_dependency(a["bom-ref"], inputs) for a in artifacts]
    graph += [_dependency(c["bom-ref"], ()) for c in (source, *python, *npm)]
    document = {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial_number(facts).urn,
        "version": 1,
        "metadata": {"component": release, "tools": {"components": [tool]},
                     "timestamp": datetime.fromtimestamp(facts.source_date_epoch,
                                                         UTC).isoformat()},
        "components": sorted([*artifacts, source, *python, *npm, image, *debian.components],
                             key=_component_order),
        "dependencies": sorted([*graph, *debian.dependencies], key=lambda d: d["ref"]),
    }
    # Canonical (design.md: JSON that is hashed is canonical), so that the SBOM's digest
    # depends on its content only.
    return canonical_json(document)


def reference_sbom(facts: BuildFacts) -> bytes:
    """The same BOM as `make_sbom`, rendered by cyclonedx alone: the reference its merging
    must match (quadratic in the artifacts: for tests on small releases)."""
    facts = sort_facts(facts)
    debian = [_debian_component(p, facts.debian_distro) for p in facts.deb_packages]
    return canonical_json(_render(_release_bom(facts, debian)))


def render_debian(packages: Sequence[DebPackage], distro: str) -> DebianPart:
    """The Debian share of the SBOM of any release built on an image with these packages."""
    packages = _sort_packages(packages)
    components = tuple(sorted((_debian_json(p, distro) for p in packages),
                              key=_component_order))
    refs = [c["bom-ref"] for c in components]
    return DebianPart(packages, distro, components,
                      dependencies=(_dependency(IMAGE_REF, refs),
                                    *(_dependency(ref, ()) for ref in refs)))


def serial_number(facts: BuildFacts) -> uuid.UUID:
    """A UUIDv5 of all the facts (sorted first, so that their order does not matter)."""
    data = plain_json(sort_facts(facts))
    if not data["npm_packages"]:
        # Facts from before npm locks name the same serial number as they always did.
        del data["npm_packages"]
    # Subjects got a media type with output images; a file's (none) keeps the serial it had.
    for subject in data["subjects"]:
        if subject.get("media_type") is None:
            subject.pop("media_type", None)
    if data["change_record"] is None:
        # Facts made before [change] existed keep their serial number (it is in the recipe).
        del data["change_record"]
    return uuid.uuid5(SERIAL_NAMESPACE, canonical_json(data).decode())


def sort_facts(facts: BuildFacts) -> BuildFacts:
    """The same facts with every unordered collection in one order."""
    return dataclasses.replace(
        facts,
        subjects=tuple(sorted(facts.subjects, key=lambda s: s.name)),
        wheels=tuple(sorted(facts.wheels, key=lambda w: (w.name, w.uri))),
        deb_packages=_sort_packages(facts.deb_packages),
        py_packages=tuple(sorted(
            (dataclasses.replace(p, sha256=tuple(sorted(p.sha256))) for p in facts.py_packages),
            key=lambda p: (p.name, p.version))),
        npm_packages=tuple(sorted(facts.npm_packages,
                                  key=lambda p: (p.name, p.version, p.sha512))),
    )


def pypi_purl(package: PyPackage) -> PackageURL:
    from packageurl import PackageURL

    return PackageURL(type="pypi", name=package.name, version=package.version)


def deb_purl(package: DebPackage, distro: str) -> PackageURL:
    from packageurl import PackageURL

    # purl-spec: pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12 (an empty arch,
    # from a dpkg record without one, is left out by packageurl).
    return PackageURL(type="deb", namespace="debian", name=package.name,
                      version=package.version,
                      qualifiers={"arch": package.architecture, "distro": distro})


def _release_bom(facts: BuildFacts, debian: Sequence[Component]) -> Bom:
    """The BOM of the sorted `facts`, with `debian` as the image's packages, built with
    cyclonedx: `reference_sbom`'s."""
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository

    release = Component(
        type=ComponentType.APPLICATION, name=facts.name, version=facts.version,
        bom_ref=facts.release,
        properties=_properties(_release_pairs(facts)),
    )
    tool = Component(type=ComponentType.APPLICATION, name="rebuild",
                     version=facts.builder_version, bom_ref="tool:rebuild")
    bom = Bom(
        serial_number=serial_number(facts),
        metadata=BomMetaData(component=release, tools=ToolRepository(components=[tool]),
                             timestamp=datetime.fromtimestamp(facts.source_date_epoch, UTC)),
    )
    artifacts = [Component(type=ComponentType.CONTAINER if s.media_type else ComponentType.FILE,
                           name=s.name, bom_ref=f"artifact:{s.name}",
                           hashes=[HashType(alg=HashAlgorithm.SHA_256, content=s.sha256)])
                 for s in facts.subjects]
    # The tree digest is rebuild's hash of a directory, not the sha256 of the component's
    # bytes, so it is a property: as a CycloneDX hash, tools would try to match it to a file.
    source = Component(type=ComponentType.FILE, name=facts.source.name, bom_ref="source",
                       properties=_properties(_property_pairs(facts.source,
                                                              "rebuild:tree-digest")))
    # Likewise the image id is the digest of the image's config, not of an archive.
    image = Component(type=ComponentType.CONTAINER, name=facts.image.name, bom_ref=IMAGE_REF,
                      properties=_properties(_property_pairs(facts.image, "rebuild:image-id")))
    python = [_python_component(p) for p in facts.py_packages]
    npm = [_npm_component(p) for p in facts.npm_packages]

    bom.components.update([*artifacts, source, *python, *npm, image, *debian])
    bom.register_dependency(release, artifacts)
    for artifact in artifacts:
        bom.register_dependency(artifact, [source, *python, *npm, image])
    bom.register_dependency(image, debian)
    return bom


# -- the components as cyclonedx renders those `_release_bom` makes ----------------------------
# (absent values left out; properties, hashes and refs in the library's sorted order)

def _component_json(kind: str, name: str, version: str | None, ref: str, *,
                    purl: str | None = None, hashes: Iterable[tuple[str, str]] = (),
                    properties: Iterable[dict[str, str]] = ()) -> dict[str, Any]:
    component: dict[str, Any] = {"bom-ref": ref, "name": name, "type": kind}
    if version is not None:
        component["version"] = version
    if purl is not None:
        component["purl"] = purl
    if listed := sorted(hashes):
        component["hashes"] = [{"alg": alg, "content": content} for alg, content in listed]
    if listed_properties := sorted(properties, key=lambda p: (p["name"], p["value"])):
        component["properties"] = listed_properties
    return component


def _artifact_json(subject: Subject) -> dict[str, Any]:
    """An artifact (an output image's manifest is a container)."""
    return _component_json("container" if subject.media_type else "file", subject.name, None,
                           f"artifact:{subject.name}", hashes=[("SHA-256", subject.sha256)])


def _python_json(package: PyPackage) -> dict[str, Any]:
    purl = pypi_purl(package).to_string()
    return _component_json("library", package.name, package.version, purl, purl=purl,
                           hashes=[("SHA-256", h) for h in package.sha256])


def _npm_json(package: NpmPackage) -> dict[str, Any]:
    from packageurl import PackageURL

    # As `_npm_component`: the library keeps the purl parsed, so its string is re-rendered.
    purl = PackageURL.from_string(npm_purl(package.name, package.version)).to_string()
    return _component_json("library", package.name, package.version, purl, purl=purl,
                           hashes=[("SHA-512", package.sha512)])


def _debian_json(package: DebPackage, distro: str) -> dict[str, Any]:
    purl = deb_purl(package, distro).to_string()
    return _component_json("library", package.name, package.version, purl, purl=purl)


def _named(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def _dependency(ref: str, depends_on: Iterable[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"ref": ref}
    if listed := sorted(depends_on):
        entry["dependsOn"] = listed
    return entry


def _render(bom: Bom) -> Any:
    from cyclonedx.output.json import JsonV1Dot6

    return json.loads(JsonV1Dot6(bom).output_as_string())


def _component_order(component: Any) -> tuple[Any, ...]:
    """Where cyclonedx puts a component (JSON) among the components of this module: its
    Component.__comparable_tuple begins (type, group, name, version, bom-ref), None last; none
    of ours has a group, and bom-refs are unique, so nothing after them counts."""
    version = component.get("version")
    return component["type"], component["name"], version is None, version or "", \
        component["bom-ref"]


def _sort_packages(packages: Iterable[DebPackage]) -> tuple[DebPackage, ...]:
    return tuple(sorted(packages, key=lambda p: (p.name, p.architecture, p.version)))


def _python_component(package: PyPackage) -> Component:
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component, ComponentType

    purl = pypi_purl(package)
    return Component(type=ComponentType.LIBRARY, name=package.name, version=package.version,
                     purl=purl, bom_ref=purl.to_string(),
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h)
                             for h in package.sha256])


def _npm_component(package: NpmPackage) -> Component:
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    purl = PackageURL.from_string(npm_purl(package.name, package.version))
    # The scope stays in the name (`@scope/name`), not in `group`: `make_sbom` merges
    # components in an order that assumes none has a group (_component_order).
    return Component(type=ComponentType.LIBRARY, name=package.name,
                     version=package.version, purl=purl, bom_ref=purl.to_string(),
                     hashes=[HashType(alg=HashAlgorithm.SHA_512, content=package.sha512)])


def _debian_component(package: DebPackage, distro: str) -> Component:
    from cyclonedx.model.component import Component, ComponentType

    purl = deb_purl(package, distro)
    return Component(type=ComponentType.LIBRARY, name=package.name, version=package.version,
                     purl=purl, bom_ref=purl.to_string())


def _release_pairs(facts: BuildFacts) -> list[tuple[str, str]]:
    """The release's properties: the requirements it meets, its change record."""
    return [*(("rebuild:requirement", r) for r in facts.requirements),
            *([("rebuild:change", facts.change)] if facts.change else [])]


def _property_pairs(dependency: Dependency, digest_name: str) -> list[tuple[str, str]]:
    """A dependency's properties: where it came from, and its digests."""
    return [("rebuild:uri", dependency.uri),
            *((digest_name, f"{algorithm}:{value}")
              for algorithm, value in sorted(dependency.digest.items()))]


def _properties(pairs: Iterable[tuple[str, str]]) -> list[Property]:
    from cyclonedx.model import Property

    return [Property(name=name, value=value) for name, value in pairs]
