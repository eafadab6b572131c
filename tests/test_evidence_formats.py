"""Evidence formats: provenance, SBOM and test results against golden files (style.md, 11).

The facts below are fixed, so the outputs are too. After an intended format change,
regenerate the golden files with `REBUILD_UPDATE_GOLDEN=1 pytest tests/test_evidence_formats.py`
and review the diff.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from rebuild.attest import build_statements, prepare_sbom
from rebuild.build.image import DebPackage, StoredImage
from rebuild.build.plan import plan_run
from rebuild.build.recipe import parse_recipe
from rebuild.evidence.provenance import (
    BUILD_TYPE,
    BUILDER_ID,
    BuildFacts,
    Dependency,
    PyPackage,
    Subject,
    digest_set,
    make_provenance,
    make_test_result,
)
from rebuild.evidence.sbom import (
    SERIAL_NAMESPACE,
    make_sbom,
    reference_sbom,
    render_debian,
    serial_number,
    sort_facts,
)
from rebuild.store.layout import canonical_json

GOLDEN = Path(__file__).parent / "golden"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


RECIPE: dict[str, Any] = {
    "recipe": {"name": "hello-c", "version": "1.0.0", "requirements": ["REQ-12", "REQ-7"],
               "change": "CR-101"},
    "source": {"path": "../examples/hello-c", "url": None, "sha256": None, "git": None,
               "rev": None, "digest": "sha256:" + sha("tree")},
    "environment": {"image": "rebuild/debian-c:bookworm@sha256:" + sha("image"),
                    "python_lock": "hello.lock.txt", "source_date_epoch": 1700000000},
    "build": {"command": ["make", "install", "DESTDIR=/out"],
              "outputs": ["usr/bin/hello", "*.tar.gz"], "env": {"CFLAGS": "-O2"},
              "timeout": 600, "memory": "2g"},
    "test": {"command": ["sh", "-c", "./run-tests"]},
    "check": {"vary": ["all"]},
}

# Two runs as a build plans them (run b varies the build path and the time zone).
RUNS = tuple(plan_run(parse_recipe(RECIPE), name, variations, 1700000000)
             for name, variations in (("a", ()), ("b", ("build_path", "timezone"))))

# Listed out of order on purpose: the outputs must not depend on it.
FACTS = BuildFacts(
    release="hello-c@1.0.0",
    name="hello-c",
    version="1.0.0",
    recipe=RECIPE,
    recipe_digest="sha256:" + sha("recipe"),
    requirements=("REQ-12", "REQ-7"),
    change="CR-101",
    source=Dependency("source", "file:examples/hello-c", {"sha256": sha("tree")}),
    image=Dependency("rebuild/debian-c:bookworm", "docker-image:rebuild/debian-c:bookworm",
                     {"sha256": sha("image")}),
    wheels=(Dependency("click-8.1.7-py3-none-any.whl",
                       "https://files.pythonhosted.org/packages/click-8.1.7-py3-none-any.whl",
                       {"sha256": sha("click wheel")}),),
    deb_packages=(DebPackage("tzdata", "2024a-0+deb12u1", "all"),
                  DebPackage("libcap2", "1:2.66-4", "amd64"),
                  DebPackage("base-files", "12.4+deb12u5", "amd64")),
    py_packages=(PyPackage("markupsafe", "2.1.5", (sha("markupsafe b"), sha("markupsafe a"))),
                 PyPackage("click", "8.1.7", (sha("click wheel"),))),
    source_date_epoch=1700000000,
    variations={run.name: run.describe() for run in reversed(RUNS)},
    runs={run.name: run.record() for run in reversed(RUNS)},
    subjects=(Subject("usr/bin/hello", sha("hello")),
              Subject("hello-1.0.0.tar.gz", sha("tarball"))),
    comparison={"reproducible": True, "record": "sha256:" + sha("record"), "differences": []},
    logs={"b": "sha256:" + sha("log b"), "a": "sha256:" + sha("log a")},
    builder_id=BUILDER_ID,
    builder_version="0.1.0",
    invocation_id="sha256:" + sha("attempt"),
)


def shuffled(facts: BuildFacts) -> BuildFacts:
    """The same facts with every collection in reverse order."""
    return dataclasses.replace(
        facts,
        wheels=facts.wheels[::-1],
        deb_packages=facts.deb_packages[::-1],
        py_packages=tuple(dataclasses.replace(p, sha256=p.sha256[::-1])
                          for p in facts.py_packages[::-1]),
        subjects=facts.subjects[::-1],
        variations=dict(reversed(list(facts.variations.items()))),
        runs=dict(reversed(list(facts.runs.items()))),
        logs=dict(reversed(list(facts.logs.items()))),
    )


def passed_test_result() -> dict[str, Any]:
    return make_test_result(
        subjects=FACTS.subjects, passed=True, command=["sh", "-c", "./run-tests"],
        log_digest="sha256:" + sha("log test"),
        configuration=[FACTS.image, Dependency("recipe", "file:recipes/hello-c.toml",
                                               {"sha256": sha("recipe")})])


def check_golden(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("REBUILD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"{path} is missing; run with REBUILD_UPDATE_GOLDEN=1 to write it"
    assert data == path.read_bytes(), (
        f"{name} differs from its golden file; if the change is intended, rerun with "
        "REBUILD_UPDATE_GOLDEN=1 and review the diff")


# -- golden files -----------------------------------------------------------------------------

def test_provenance_matches_golden() -> None:
    check_golden("provenance.json", canonical_json(make_provenance(FACTS)))


def test_sbom_matches_golden() -> None:
    check_golden("sbom.json", make_sbom(FACTS))


def test_test_result_matches_golden() -> None:
    check_golden("test-result.json", canonical_json(passed_test_result()))


# -- provenance -------------------------------------------------------------------------------

def test_provenance_subject_is_every_artifact_sorted() -> None:
    statement = make_provenance(FACTS)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [
        {"name": "hello-1.0.0.tar.gz", "digest": {"sha256": sha("tarball")}},
        {"name": "usr/bin/hello", "digest": {"sha256": sha("hello")}},
    ]


def test_provenance_records_recipe_inputs_and_comparison() -> None:
    predicate = make_provenance(FACTS)["predicate"]
    definition = predicate["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {
        "recipe": {"digest": {"sha256": sha("recipe")}, "content": RECIPE},
        "requirements": ["REQ-12", "REQ-7"], "change": "CR-101"}
    assert definition["internalParameters"]["source_date_epoch"] == 1700000000
    assert [d["uri"] for d in definition["resolvedDependencies"]] == [
        "file:examples/hello-c", "docker-image:rebuild/debian-c:bookworm",
        "https://files.pythonhosted.org/packages/click-8.1.7-py3-none-any.whl"]
    run = predicate["runDetails"]
    assert run["builder"] == {"id": BUILDER_ID, "version": {"rebuild": "0.1.0"}}
    assert run["metadata"] == {"invocationId": "sha256:" + sha("attempt")}  # no wall clock
    assert run["byproducts"] == [
        {"name": "comparison.json", "digest": {"sha256": sha("record")},
         "annotations": {"reproducible": True}},
        {"name": "log/a", "digest": {"sha256": sha("log a")}},
        {"name": "log/b", "digest": {"sha256": sha("log b")}},
    ]


def test_provenance_is_canonical_and_order_independent() -> None:
    data = canonical_json(make_provenance(FACTS))
    assert canonical_json(json.loads(data)) == data
    assert canonical_json(make_provenance(shuffled(FACTS))) == data


def test_provenance_leaves_out_absent_change() -> None:
    statement = make_provenance(dataclasses.replace(FACTS, change=None))
    assert "change" not in statement["predicate"]["buildDefinition"]["externalParameters"]


def test_provenance_carries_the_change_record() -> None:
    record = {"id": "CR-101", "risk": "high", "requirements": ["REQ-12"], "hazards": ["HAZ-3"],
              "summary": "Risk score behind a flag"}
    statement = make_provenance(dataclasses.replace(FACTS, change_record=record))
    external = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert external["changeRecord"] == record
    assert "changeRecord" not in make_provenance(FACTS)["predicate"]["buildDefinition"][
        "externalParameters"]


def test_change_and_suites_parse_and_recipe_without_them_dumps_as_before() -> None:
    recipe = parse_recipe({**RECIPE, "change": {"id": "CR-1", "risk": "low"},
                           "test": [{"name": "unit", "command": ["pytest"],
                                     "results": "unit.xml"}]})
    assert recipe.change is not None and recipe.change.risk == "low"
    assert [s.name for s in recipe.suites] == ["unit"]
    dumped = parse_recipe(RECIPE).model_dump(mode="json")
    assert "change" not in dumped and dumped["test"] == {"command": ["sh", "-c", "./run-tests"]}
    assert parse_recipe(RECIPE).suites == ()


def test_provenance_shares_nothing_with_its_inputs() -> None:
    statement = make_provenance(FACTS)
    statement["predicate"]["buildDefinition"]["externalParameters"]["recipe"]["content"][
        "build"]["command"].append("oops")
    assert RECIPE["build"]["command"] == ["make", "install", "DESTDIR=/out"]


def test_digest_set_refuses_other_forms() -> None:
    assert digest_set("sha256:" + sha("x")) == {"sha256": sha("x")}
    with pytest.raises(ValueError, match="not a sha256 digest"):
        digest_set(sha("x"))


# -- test results -----------------------------------------------------------------------------

def test_test_result_names_the_command_as_the_test() -> None:
    passed = passed_test_result()
    assert passed["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    assert passed["predicate"]["result"] == "PASSED"
    assert passed["predicate"]["passedTests"] == ["sh -c ./run-tests"]
    assert passed["predicate"]["failedTests"] == []
    assert [c["name"] for c in passed["predicate"]["configuration"]] == [
        "rebuild/debian-c:bookworm", "recipe"]
    failed = make_test_result(subjects=FACTS.subjects, passed=False, command=["make", "check"],
                              log_digest="sha256:" + sha("log"), configuration=[],
                              url="https://ci.example/run/1")
    assert failed["predicate"]["result"] == "FAILED"
    assert failed["predicate"]["failedTests"] == ["make check"]
    assert failed["predicate"]["url"] == "https://ci.example/run/1"
    assert failed["subject"] == make_provenance(FACTS)["subject"]


# -- SBOM -------------------------------------------------------------------------------------

def sbom_json(facts: BuildFacts = FACTS) -> dict[str, Any]:
    return json.loads(make_sbom(facts))  # type: ignore[no-any-return]


def component(sbom: dict[str, Any], ref: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in sbom["components"] if c["bom-ref"] == ref)
    return found


def test_sbom_passes_the_strict_schema() -> None:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(make_sbom(FACTS).decode())
    assert errors is None, errors


def test_sbom_is_deterministic_canonical_and_order_independent() -> None:
    data = make_sbom(FACTS)
    assert make_sbom(FACTS) == data
    assert canonical_json(json.loads(data)) == data
    assert make_sbom(shuffled(FACTS)) == data


def test_sbom_metadata_has_fixed_time_and_derived_serial() -> None:
    sbom = sbom_json()
    assert sbom["specVersion"] == "1.6"
    assert sbom["metadata"]["timestamp"] == "2023-11-14T22:13:20+00:00"
    facts = json.loads(json.dumps(dataclasses.asdict(sort_facts(FACTS))))
    assert facts.pop("npm_packages") == []  # left out when empty: serials as before npm locks
    assert facts.pop("change_record") is None  # likewise a release without [change]
    for subject in facts["subjects"]:  # a file's media type (none) is left out
        assert subject.pop("media_type") is None
    expected = uuid.uuid5(SERIAL_NAMESPACE, canonical_json(facts).decode())
    assert sbom["serialNumber"] == f"urn:uuid:{expected}" == f"urn:uuid:{serial_number(FACTS)}"
    other = dataclasses.replace(FACTS, version="1.0.1", release="hello-c@1.0.1")
    assert serial_number(other) != serial_number(FACTS)
    release = sbom["metadata"]["component"]
    assert (release["type"], release["name"], release["version"], release["bom-ref"]) == (
        "application", "hello-c", "1.0.0", "hello-c@1.0.0")


def test_sbom_lists_debian_packages_with_exact_purls() -> None:
    purls = sorted(c["purl"] for c in sbom_json()["components"]
                   if c.get("purl", "").startswith("pkg:deb/"))
    assert purls == [
        "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64&distro=debian-12",
        "pkg:deb/debian/libcap2@1:2.66-4?arch=amd64&distro=debian-12",
        "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12",
    ]


def test_sbom_lists_artifacts_python_packages_source_and_image() -> None:
    sbom = sbom_json()
    hello = component(sbom, "artifact:usr/bin/hello")
    assert hello["type"] == "file"
    assert hello["hashes"] == [{"alg": "SHA-256", "content": sha("hello")}]
    markupsafe = component(sbom, "pkg:pypi/markupsafe@2.1.5")
    assert markupsafe["purl"] == "pkg:pypi/markupsafe@2.1.5"
    assert {h["content"] for h in markupsafe["hashes"]} == {sha("markupsafe a"),
                                                            sha("markupsafe b")}
    assert component(sbom, "pkg:pypi/click@8.1.7")["version"] == "8.1.7"
    assert {"name": "rebuild:tree-digest", "value": "sha256:" + sha("tree")} in component(
        sbom, "source")["properties"]
    assert component(sbom, "image")["type"] == "container"


def test_sbom_dependency_graph() -> None:
    graph = {d["ref"]: sorted(d.get("dependsOn", [])) for d in sbom_json()["dependencies"]}
    assert graph["hello-c@1.0.0"] == ["artifact:hello-1.0.0.tar.gz", "artifact:usr/bin/hello"]
    assert graph["artifact:usr/bin/hello"] == ["image", "pkg:pypi/click@8.1.7",
                                               "pkg:pypi/markupsafe@2.1.5", "source"]
    assert graph["image"] == sorted(c["bom-ref"] for c in sbom_json()["components"]
                                    if c["bom-ref"].startswith("pkg:deb/"))
    assert graph["pkg:deb/debian/libcap2@1:2.66-4?arch=amd64&distro=debian-12"] == []


# -- SBOM: the Debian share made ahead ----------------------------------------------------------
# make_sbom(facts, debian) merges a part rendered by render_debian (while the build runs) into a
# BOM of the rest; it must give the very bytes of one cyclonedx BOM of everything,
# make_sbom(facts).

# The 180 packages of rebuild/debian-c:bookworm, the image of the demo release (its
# packages.json in the store).
DEBIAN_C = tuple(DebPackage(**p) for p in json.loads(
    (Path(__file__).parent / "data" / "debian-c-packages.json").read_text()))

# Python and Debian packages that cyclonedx must interleave: equal names (the bom-ref decides),
# versions that sort as strings, upper case, an empty architecture, two architectures.
COLLIDING = dataclasses.replace(
    FACTS,
    deb_packages=(*FACTS.deb_packages, DebPackage("aaa", "1", ""),
                  DebPackage("libcap2", "1:2.66-4", "i386"), DebPackage("zzz", "1.0", "amd64"),
                  DebPackage("click", "8.1.7", "all")),
    py_packages=(*FACTS.py_packages,
                 PyPackage("tzdata", "2024a-0+deb12u1", (sha("tzdata"),)),
                 PyPackage("libcap2", "1:2.66-3", (sha("libcap2"),)),
                 PyPackage("base-files", "9", (sha("base-files"),)),
                 PyPackage("Zope", "5.0", (sha("zope"),))),
)


def made_ahead(facts: BuildFacts) -> bytes:
    return make_sbom(facts, render_debian(facts.deb_packages, facts.debian_distro))


@pytest.mark.parametrize("facts", [
    FACTS, shuffled(FACTS), COLLIDING, shuffled(COLLIDING),
    dataclasses.replace(FACTS, deb_packages=()),
    dataclasses.replace(FACTS, deb_packages=DEBIAN_C),
    dataclasses.replace(FACTS, deb_packages=DEBIAN_C, py_packages=(), wheels=(),
                        subjects=FACTS.subjects[:1], change=None),
], ids=["golden", "golden-shuffled", "colliding", "colliding-shuffled", "no-debian",
        "debian-c", "demo-release"])
def test_sbom_with_debian_made_ahead_is_byte_identical(facts: BuildFacts) -> None:
    assert made_ahead(facts) == make_sbom(facts) == reference_sbom(facts)


def many_artifacts(n: int) -> BuildFacts:
    # Names that sort differently as strings and as paths, and against the other components.
    names = [f"usr/share/doc/f{i}" for i in range(n)] + ["a", "A b", "zz/-x", "usr/share/doc"]
    return dataclasses.replace(COLLIDING, subjects=tuple(Subject(name, sha(name))
                                                         for name in names))


WITH_IMAGE = dataclasses.replace(FACTS, subjects=(*FACTS.subjects, Subject(
    "oci-image", sha("image"), "application/vnd.oci.image.manifest.v1+json")))


@pytest.mark.parametrize("facts", [many_artifacts(60), dataclasses.replace(FACTS, subjects=()),
                                   WITH_IMAGE, shuffled(WITH_IMAGE)],
                         ids=["many-artifacts", "no-artifacts", "image", "image-shuffled"])
# The library warns of a release without artifacts, which no build makes.
@pytest.mark.filterwarnings("ignore:The Component this BOM is describing:UserWarning")
def test_sbom_merging_artifacts_matches_the_library(facts: BuildFacts) -> None:
    assert made_ahead(facts) == reference_sbom(facts)


def test_an_output_image_is_a_container_component_and_a_typed_subject() -> None:
    sbom = json.loads(make_sbom(WITH_IMAGE))
    image = next(c for c in sbom["components"] if c["name"] == "oci-image")
    assert image["type"] == "container"
    assert image["hashes"] == [{"alg": "SHA-256", "content": sha("image")}]
    subjects = make_provenance(WITH_IMAGE)["subject"]
    assert {"name": "oci-image", "digest": {"sha256": sha("image")},
            "mediaType": "application/vnd.oci.image.manifest.v1+json"} in subjects
    assert all("mediaType" not in s for s in subjects if s["name"] != "oci-image")


def test_sbom_is_linear_in_the_artifacts() -> None:
    # 20,000 artifacts: 89 s for 4,000 with cyclonedx's own graph; a few seconds now.
    sbom = json.loads(make_sbom(many_artifacts(20_000)))
    assert len(sbom["components"]) > 20_000
    graph = {d["ref"]: d.get("dependsOn", []) for d in sbom["dependencies"]}
    assert len(graph["hello-c@1.0.0"]) == 20_004


def test_sbom_with_debian_made_ahead_matches_golden() -> None:
    check_golden("sbom.json", made_ahead(FACTS))


def test_sbom_of_a_real_image_passes_the_strict_schema() -> None:
    sbom = made_ahead(dataclasses.replace(FACTS, deb_packages=DEBIAN_C))
    assert sum(c["bom-ref"].startswith("pkg:deb/") for c in json.loads(sbom)["components"]) == 180
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.decode())
    assert errors is None, errors


def test_debian_part_does_not_depend_on_package_order() -> None:
    assert render_debian(DEBIAN_C[::-1], "debian-12") == render_debian(DEBIAN_C, "debian-12")


def test_debian_part_of_other_packages_is_not_used() -> None:
    assert make_sbom(FACTS, render_debian(DEBIAN_C, "debian-12")) == make_sbom(FACTS)
    assert make_sbom(FACTS, render_debian(FACTS.deb_packages, "debian-11")) == make_sbom(FACTS)


def test_prepare_sbom_gives_the_statements_of_a_build_on_the_image() -> None:
    image = StoredImage("rebuild/debian-c:bookworm@sha256:" + sha("image"),
                        "sha256:" + sha("image"), "sha256:" + sha("manifest"),
                        "sha256:" + sha("archive"), DEBIAN_C, cached=True)
    facts = dataclasses.replace(FACTS, deb_packages=image.packages)
    part = prepare_sbom(image).result(timeout=120)
    assert build_statements(facts, passed_test_result(), part) == build_statements(
        facts, passed_test_result())


def test_cli_start_does_not_import_cyclonedx() -> None:
    # They cost a tenth of a second at every start; only a build's evidence needs them.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, rebuild.cli.main; print(sorted({m.split('.')[0] for m "
         "in sys.modules} & {'cyclonedx', 'packageurl', 'sortedcontainers'}))"],
        capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
