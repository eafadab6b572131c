"""Provenance: SLSA provenance v1 and test-result statements of a release (design.md, "Evidence").

Pure: `make_provenance(facts)` and `make_test_result(...)` turn frozen data into in-toto
Statement v1 dicts; the caller serializes them with `rebuild.store.layout.canonical_json`, signs and
stores them. Nothing here reads a clock or a file: every time and digest comes from the
inputs, so the same build gives the same bytes. The build type is documented in
docs/build-type.md.
"""

from __future__ import annotations

import base64
import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
SBOM_PREDICATE = "https://cyclonedx.org/bom"  # an SBOM wrapped in a statement
# What a twin-container build is and what its parameters mean: docs/build-type.md.
BUILD_TYPE = "https://rebuild.dev/buildtypes/twin-container/v1"
# The builder is this program running on the caller's machine, not a hosted service: the id
# names that trust boundary (SLSA "builder.id"); bump "@v1" when its guarantees change.
BUILDER_ID = "https://rebuild.dev/builder/local@v1"


@dataclass(frozen=True)
class Subject:
    """A build artifact: its path relative to /out and its sha256 (hex)."""

    name: str
    sha256: str
    # An artifact that is not a file (an output image's manifest) says what it is, as an
    # in-toto ResourceDescriptor may.
    media_type: str | None = None


@dataclass(frozen=True)
class Dependency:
    """An input of the build, as a SLSA resolvedDependencies entry (a ResourceDescriptor)."""

    name: str
    uri: str
    digest: Mapping[str, str]  # e.g. {"sha256": "<hex>"}
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DebPackage:
    """A Debian package installed in a base image."""

    name: str
    version: str
    architecture: str


@dataclass(frozen=True)
class PyPackage:
    """A Python requirement of a hashed pip-tools lock: every sha256 the lock allows."""

    name: str
    version: str
    sha256: tuple[str, ...]


@dataclass(frozen=True)
class NpmPackage:
    """One tarball of an npm lock: where the lock says it comes from and its sha512."""

    name: str  # "is-odd", "@scope/name"
    version: str
    resolved: str  # the registry tarball address from the lock
    sha512: str  # hex

    @property
    def filename(self) -> str:
        """The tarball's title in the store: `npm/<name>-<version>.tgz` (a scope kept)."""
        return f"npm/{self.name}-{self.version}.tgz"

    @property
    def integrity(self) -> str:
        return "sha512-" + base64.b64encode(bytes.fromhex(self.sha512)).decode()

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "resolved": self.resolved,
                "sha512": self.sha512}


@dataclass(frozen=True, kw_only=True)
class BuildFacts:
    """Everything the evidence of one release says, gathered by the caller after the build."""

    release: str  # "hello-c@1.0.0"
    name: str
    version: str
    recipe: Mapping[str, Any]  # the parsed recipe, model_dump(mode="json")
    recipe_digest: str  # "sha256:<hex>" of the recipe file's bytes
    requirements: tuple[str, ...]  # traceability ids from [recipe]
    change: str | None
    source: Dependency  # digest {"sha256": <tree hex>}
    image: Dependency  # digest {"sha256": <image id hex>}
    wheels: tuple[Dependency, ...]
    deb_packages: tuple[DebPackage, ...]
    py_packages: tuple[PyPackage, ...]
    source_date_epoch: int
    variations: Mapping[str, Mapping[str, str]]  # run name -> {variation: what that run got}
    # run name -> the settings and environment that run had (RunPlan.record)
    runs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    subjects: tuple[Subject, ...]
    comparison: Mapping[str, Any]  # {"reproducible": bool, "record": "sha256:…", …}
    logs: Mapping[str, str]  # run name -> "sha256:<hex>" of its log
    builder_id: str = BUILDER_ID
    builder_version: str  # rebuild.__version__
    invocation_id: str  # deterministic, e.g. the attempt manifest's digest
    # The recipe's [change] (id, risk, requirements, hazards, summary), when it has one.
    change_record: Mapping[str, Any] | None = None
    # The purl `distro` qualifier of the image's Debian packages (bookworm is debian-12).
    debian_distro: str = "debian-12"
    # The tarballs of the recipe's npm_lock (resolvedDependencies and the SBOM's pkg:npm).
    npm_packages: tuple[NpmPackage, ...] = ()


def make_provenance(facts: BuildFacts) -> dict[str, Any]:
    """The SLSA provenance v1 statement of a release: what was built, from what, and how.

    runDetails.metadata carries the invocation id only. startedOn/finishedOn are omitted
    (both are optional in SLSA v1): a wall-clock time would make two builds of the same
    inputs differ, and SOURCE_DATE_EPOCH is not when the build ran, so writing it there
    would be a false statement.
    """
    external: dict[str, Any] = {
        "recipe": {"digest": digest_set(facts.recipe_digest),
                   "content": plain_json(facts.recipe)},
        "requirements": list(facts.requirements),
    }
    if facts.change is not None:
        external["change"] = facts.change
    if facts.change_record is not None:
        # Also in the recipe's content above; here as its own parameter, so a verifier reads
        # the risk that selects its policy tier without knowing the recipe format.
        external["changeRecord"] = plain_json(facts.change_record)
    dependencies = [facts.source, facts.image, *sorted(facts.wheels, key=_by_name_uri),
                    *sorted((npm_dependency(p) for p in facts.npm_packages), key=_by_name_uri)]
    byproducts = [{
        "name": "comparison.json",
        "digest": digest_set(facts.comparison["record"]),
        "annotations": {"reproducible": bool(facts.comparison["reproducible"])},
    }]
    byproducts += [{"name": f"log/{run}", "digest": digest_set(digest)}
                   for run, digest in sorted(facts.logs.items())]
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": external,
            "internalParameters": {
                "variations": plain_json(facts.variations),
                "runs": plain_json(facts.runs),
                "source_date_epoch": facts.source_date_epoch,
            },
            "resolvedDependencies": [resource_descriptor(d) for d in dependencies],
        },
        "runDetails": {
            "builder": {"id": facts.builder_id, "version": {"rebuild": facts.builder_version}},
            "metadata": {"invocationId": facts.invocation_id},
            "byproducts": byproducts,
        },
    }
    return make_statement(facts.subjects, SLSA_PROVENANCE, predicate)


def make_test_result(*, subjects: Sequence[Subject], passed: bool, command: Sequence[str],
                     log_digest: str, configuration: Sequence[Dependency],
                     url: str | None = None) -> dict[str, Any]:
    """An in-toto test-result v0.1 statement for the recipe's [test] command.

    rebuild runs one test command, so the command line is the name of the one test, listed in
    passedTests or failedTests. The predicate has no field for a log; the spec allows the
    schema to be extended, so the log's digest is in `log` (a ResourceDescriptor), binding
    the signed verdict to the output it was read from.
    """
    test = shlex.join(command)
    predicate: dict[str, Any] = {
        "result": "PASSED" if passed else "FAILED",
        "configuration": [resource_descriptor(d)
                          for d in sorted(configuration, key=_by_name_uri)],
        "passedTests": [test] if passed else [],
        "failedTests": [] if passed else [test],
        "log": {"name": "log/test", "digest": digest_set(log_digest)},
    }
    if url is not None:
        predicate["url"] = url
    return make_statement(subjects, TEST_RESULT, predicate)


def resource_descriptor(dependency: Dependency) -> dict[str, Any]:
    """An in-toto ResourceDescriptor; empty annotations are left out."""
    out: dict[str, Any] = {"name": dependency.name, "uri": dependency.uri,
                           "digest": plain_json(dependency.digest)}
    if dependency.annotations:
        out["annotations"] = plain_json(dependency.annotations)
    return out


def plain_json(value: Any) -> Any:
    """A deep copy made of dicts and lists (dataclasses become dicts of their fields), so that
    a statement shares nothing with its frozen inputs and any Mapping or tuple in them
    serializes as a JSON object or array."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value


def digest_set(digest: str) -> dict[str, str]:
    """Rebuild's "sha256:<hex>" as an in-toto DigestSet, {"sha256": "<hex>"}."""
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return {algorithm: value}


def make_statement(subjects: Sequence[Subject], predicate_type: str,
                   predicate: dict[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1 about `subjects` (sorted by name)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [subject_json(s) for s in sorted(subjects, key=lambda s: s.name)],
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def subject_json(subject: Subject) -> dict[str, Any]:
    """A statement's subject: name and digest, and the media type of one that is no file."""
    out: dict[str, Any] = {"name": subject.name, "digest": {"sha256": subject.sha256}}
    if subject.media_type is not None:
        out["mediaType"] = subject.media_type
    return out


def _by_name_uri(dependency: Dependency) -> tuple[str, str]:
    return dependency.name, dependency.uri


def npm_dependency(package: NpmPackage) -> Dependency:
    """An npm tarball as a resolvedDependencies entry: its purl, sha512 and where it came from."""
    return Dependency(package.filename, npm_purl(package.name, package.version),
                      {"sha512": package.sha512}, {"url": package.resolved})


def npm_purl(name: str, version: str) -> str:
    """`pkg:npm/NAME@VERSION`; a scope is the namespace, its `@` percent-encoded (purl-spec)."""
    from packageurl import PackageURL

    scope, _, base = name.rpartition("/")
    return str(PackageURL(type="npm", namespace=scope or None, name=base,
                          version=version).to_string())
