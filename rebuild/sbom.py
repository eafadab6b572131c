"""SBOM: the CycloneDX 1.6 bill of materials of a release (design.md, "Evidence formats").

Pure: `make_sbom(facts)` builds the BOM with cyclonedx-python-lib and returns its canonical
JSON bytes. The same facts give the same bytes, whatever order the caller listed them in:

- `metadata.timestamp` is SOURCE_DATE_EPOCH, never the clock (the library's default is "now");
- `serialNumber` is a UUIDv5 of the facts (the library's default is a random UUIDv4);
- every component has an explicit bom-ref (the library's default is a random one);
- the inputs are sorted before they are used.

Components: the release (metadata.component), each artifact (a file with its sha256), the
source, every Python package of the lock, the base image and every Debian package in it.
Graph: release -> artifacts; artifact -> source, Python packages, image; image -> Debian
packages.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from rebuild.image import DebPackage
from rebuild.provenance import BuildFacts, Dependency, PyPackage, plain_json
from rebuild.store import canonical_json

# Serial numbers are uuid5(SERIAL_NAMESPACE, canonical JSON of the sorted facts): stable for
# the same facts, different for any other build. The namespace is fixed forever: changing it
# changes every serial number.
SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://rebuild.dev/sbom/serial-number")


def make_sbom(facts: BuildFacts) -> bytes:
    """The release's CycloneDX 1.6 JSON, byte-identical for the same facts."""
    facts = sort_facts(facts)
    release = Component(
        type=ComponentType.APPLICATION, name=facts.name, version=facts.version,
        bom_ref=facts.release,
        properties=[Property(name="rebuild:requirement", value=r) for r in facts.requirements]
        + ([Property(name="rebuild:change", value=facts.change)] if facts.change else []),
    )
    tool = Component(type=ComponentType.APPLICATION, name="rebuild",
                     version=facts.builder_version, bom_ref="tool:rebuild")
    bom = Bom(
        serial_number=serial_number(facts),
        metadata=BomMetaData(component=release, tools=ToolRepository(components=[tool]),
                             timestamp=datetime.fromtimestamp(facts.source_date_epoch, UTC)),
    )
    artifacts = [Component(type=ComponentType.FILE, name=s.name, bom_ref=f"artifact:{s.name}",
                           hashes=[HashType(alg=HashAlgorithm.SHA_256, content=s.sha256)])
                 for s in facts.subjects]
    # The tree digest is rebuild's hash of a directory, not the sha256 of the component's
    # bytes, so it is a property: as a CycloneDX hash, tools would try to match it to a file.
    source = Component(type=ComponentType.FILE, name=facts.source.name, bom_ref="source",
                       properties=_properties(facts.source, "rebuild:tree-digest"))
    # Likewise the image id is the digest of the image's config, not of an archive.
    image = Component(type=ComponentType.CONTAINER, name=facts.image.name, bom_ref="image",
                      properties=_properties(facts.image, "rebuild:image-id"))
    python = [_python_component(p) for p in facts.py_packages]
    debian = [_debian_component(p, facts.debian_distro) for p in facts.deb_packages]

    bom.components.update([*artifacts, source, *python, image, *debian])
    bom.register_dependency(release, artifacts)
    for artifact in artifacts:
        bom.register_dependency(artifact, [source, *python, image])
    bom.register_dependency(image, debian)
    # Re-serialized canonically (design.md: JSON that is hashed is canonical), so that the
    # SBOM's digest depends on its content, not on the library's key order or whitespace.
    return canonical_json(json.loads(JsonV1Dot6(bom).output_as_string()))


def serial_number(facts: BuildFacts) -> uuid.UUID:
    """A UUIDv5 of all the facts (sorted first, so that their order does not matter)."""
    return uuid.uuid5(SERIAL_NAMESPACE, canonical_json(plain_json(sort_facts(facts))).decode())


def sort_facts(facts: BuildFacts) -> BuildFacts:
    """The same facts with every unordered collection in one order."""
    return dataclasses.replace(
        facts,
        subjects=tuple(sorted(facts.subjects, key=lambda s: s.name)),
        wheels=tuple(sorted(facts.wheels, key=lambda w: (w.name, w.uri))),
        deb_packages=tuple(sorted(facts.deb_packages,
                                  key=lambda p: (p.name, p.architecture, p.version))),
        py_packages=tuple(sorted(
            (dataclasses.replace(p, sha256=tuple(sorted(p.sha256))) for p in facts.py_packages),
            key=lambda p: (p.name, p.version))),
    )


def pypi_purl(package: PyPackage) -> PackageURL:
    return PackageURL(type="pypi", name=package.name, version=package.version)


def deb_purl(package: DebPackage, distro: str) -> PackageURL:
    # purl-spec: pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12 (an empty arch,
    # from a dpkg record without one, is left out by packageurl).
    return PackageURL(type="deb", namespace="debian", name=package.name,
                      version=package.version,
                      qualifiers={"arch": package.architecture, "distro": distro})


def _python_component(package: PyPackage) -> Component:
    purl = pypi_purl(package)
    return Component(type=ComponentType.LIBRARY, name=package.name, version=package.version,
                     purl=purl, bom_ref=purl.to_string(),
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h)
                             for h in package.sha256])


def _debian_component(package: DebPackage, distro: str) -> Component:
    purl = deb_purl(package, distro)
    return Component(type=ComponentType.LIBRARY, name=package.name, version=package.version,
                     purl=purl, bom_ref=purl.to_string())


def _properties(dependency: Dependency, digest_name: str) -> Iterable[Property]:
    yield Property(name="rebuild:uri", value=dependency.uri)
    for algorithm, value in sorted(dependency.digest.items()):
        yield Property(name=digest_name, value=f"{algorithm}:{value}")
