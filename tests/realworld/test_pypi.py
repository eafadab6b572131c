"""idna 3.10 (flit) and attrs 24.2.0 (hatchling) through `rebuild recipe pypi`: rebuilt
offline from their sdists, equal byte for byte to the wheels on PyPI; and a rebuild that
ignores the backend's rule is caught by `compare-upstream`, with diffoscope's report."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.conftest import run_rebuild
from tests.realworld.downloads import keep_downloads, seed_downloads
from tests.realworld.entries import PYPI, PypiEntry

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("entry", PYPI, ids=[e.spec for e in PYPI])
def test_pypi_release_equals_the_published_wheel(entry: PypiEntry, c_image: str, store: Path,
                                                 tmp_path: Path) -> None:
    seed_downloads(store)
    written = run_rebuild("recipe", "pypi", entry.spec, "-o", tmp_path / "recipes", "--json",
                          store=store)
    assert written.code == 0, written.stderr
    inferred = written.json
    assert inferred["backend_pin"] == entry.backend_pin
    assert inferred["unset_source_date_epoch"] is entry.unset_epoch
    assert inferred["upstream"]["sha256"] == entry.wheel_sha256
    recipe = tomllib.loads(Path(inferred["recipe"]).read_text())
    keep_downloads(store, recipe["source"]["sha256"], entry.wheel_sha256)
    lock = (tmp_path / "recipes" / recipe["environment"]["python_lock"]).read_text()
    assert f"{entry.backend_pin} \\" in lock and "--hash=sha256:" in lock

    built = run_rebuild("build", inferred["recipe"], "--json", store=store, timeout=1800)
    assert built.code == 0, built.stderr
    assert built.json["reproducible"] is True
    compared = run_rebuild("compare-upstream", entry.release, "--json", store=store)
    assert compared.code == 0, compared.stderr
    assert compared.json["equal"] is True and compared.json["compared"] == "bytes"
    assert compared.json["built"] == compared.json["upstream"]["sha256"] == \
        f"sha256:{entry.wheel_sha256}"
    assert "EQUAL to upstream" in compared.stderr


def test_a_wheel_built_against_the_rule_differs_from_upstream(c_image: str, store: Path,
                                                               tmp_path: Path) -> None:
    """idna with SOURCE_DATE_EPOCH left set: flit then dates its dist-info files with it,
    not 2016-01-01 as the published wheel has them. Twin-reproducible, yet not upstream's."""
    entry = PYPI[0]
    seed_downloads(store)
    written = run_rebuild("recipe", "pypi", entry.spec, "-o", tmp_path, "--json", store=store)
    assert written.code == 0, written.stderr
    recipe = Path(written.json["recipe"])
    recipe.write_text(recipe.read_text().replace("env -u SOURCE_DATE_EPOCH ", ""))
    built = run_rebuild("build", recipe, "--json", store=store, timeout=1800)
    assert built.code == 0, built.stderr
    compared = run_rebuild("compare-upstream", entry.release, "--json", store=store)
    assert compared.code == 1, compared.stderr
    assert compared.json["equal"] is False
    assert compared.json["built"] != compared.json["upstream"]["sha256"]
    assert "EQUAL" not in compared.stderr and "DIFFERS from upstream" in compared.stderr
    report = run_rebuild("store", "cat", compared.json["report"], store=store)
    assert report.code == 0
    assert "idna-3.10.dist-info/WHEEL" in report.stdout or "2016-01-01" in report.stdout, \
        report.stdout[:2000]
