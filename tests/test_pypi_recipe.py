"""`rebuild recipe pypi`'s inference, on plain values and on wheels and sdists made here.

The real releases (idna 3.10, attrs 24.2.0) are rebuilt against PyPI in tests/realworld/."""

from __future__ import annotations

import io
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from rebuild.build.recipe import parse_recipe
from rebuild.errors import UsageError
from rebuild.inputs.pypi import (
    HATCHLING_DEFAULT_EPOCH,
    Published,
    PublishedFile,
    SdistFacts,
    WheelFacts,
    infer_recipe,
    parse_generator,
    parse_spec,
    pick_files,
    read_sdist,
    read_wheel,
    render_recipe,
)

IMAGE = "rebuild/debian-c:bookworm@sha256:" + "a" * 64
SHA = "b" * 64


def _file(name: str) -> dict[str, object]:
    return {"filename": name, "url": f"https://files.example/{name}",
            "digests": {"sha256": SHA}}


def _published(name: str = "idna", version: str = "3.10") -> Published:
    return Published(name, version,
                     PublishedFile(f"{name}-{version}.tar.gz",
                                   f"https://files.example/{name}-{version}.tar.gz", SHA),
                     PublishedFile(f"{name}-{version}-py3-none-any.whl",
                                   f"https://files.example/{name}-{version}-py3-none-any.whl",
                                   "c" * 64))


def _wheel(generator: str, generated: tuple[int, ...] = (2024, 9, 15, 18, 6, 54), *,
           name: str = "idna", version: str = "3.10") -> WheelFacts:
    return WheelFacts(generator, True, ("py3-none-any",), name, version, generated)


def test_spec_names_one_release() -> None:
    assert parse_spec("idna==3.10") == ("idna", "3.10")
    assert parse_spec(" attrs == 24.2.0 ") == ("attrs", "24.2.0")
    for bad in ("idna", "idna>=3", "idna==", "==3.10"):
        with pytest.raises(UsageError, match="NAME==VERSION"):
            parse_spec(bad)


def test_pick_files_takes_the_sdist_and_the_pure_wheel_of_that_version() -> None:
    files = [_file("idna-3.1.tar.gz"), _file("idna-3.1-py3-none-any.whl"),
             _file("idna-3.10.tar.gz"), _file("idna-3.10-py3-none-any.whl")]
    published = pick_files("idna", "3.10", files)
    assert published.sdist.filename == "idna-3.10.tar.gz"
    assert published.wheel.filename == "idna-3.10-py3-none-any.whl"
    assert pick_files("idna", "3.1", files).sdist.filename == "idna-3.1.tar.gz"


def test_pick_files_says_why_a_release_cannot_be_rebuilt() -> None:
    with pytest.raises(UsageError, match="no sdist"):
        pick_files("idna", "3.10", [_file("idna-3.10-py3-none-any.whl")])
    with pytest.raises(UsageError, match="compiled extension"):
        pick_files("lxml", "5.0", [_file("lxml-5.0.tar.gz"),
                                   _file("lxml-5.0-cp311-cp311-manylinux_2_28_x86_64.whl")])
    with pytest.raises(UsageError, match="no wheel"):
        pick_files("idna", "3.10", [_file("idna-3.10.tar.gz")])
    with pytest.raises(UsageError, match="no files"):
        pick_files("idna", "9.9", [_file("idna-3.10.tar.gz")])


@pytest.mark.parametrize(("line", "backend", "version"), [
    ("flit 3.9.0", "flit", "3.9.0"), ("hatchling 1.25.0", "hatchling", "1.25.0"),
    ("setuptools (75.1.0)", "setuptools", "75.1.0"), ("bdist_wheel (0.44.0)", "bdist_wheel",
                                                      "0.44.0"),
    ("poetry-core 1.9.0", "poetry-core", "1.9.0")])
def test_generator_names_backend_and_version(line: str, backend: str, version: str) -> None:
    found, pinned = parse_generator(line)
    assert (found.name, pinned) == (backend, version)


def test_unknown_or_versionless_generator_is_refused() -> None:
    with pytest.raises(UsageError, match="no rules for"):
        parse_generator("maturin (1.7.0)")
    with pytest.raises(UsageError, match="no backend and version"):
        parse_generator("")


def test_flit_without_epoch_unsets_it_and_pins_utc() -> None:
    sdist = SdistFacts(1726423614, ("flit_core >=3.2,<4",), "flit_core.buildapi")
    inference = infer_recipe(_published(), _wheel("flit 3.9.0", (2016, 1, 1, 0, 0, 0)), sdist)
    assert inference.backend_pin == "flit-core==3.9.0"
    assert inference.requirements == ("build", "flit-core==3.9.0")
    assert inference.unset_epoch and inference.env == {"TZ": "UTC"}
    assert inference.vary == ("all", "-timezone")
    assert inference.command[2].startswith("env -u SOURCE_DATE_EPOCH python -m build")
    assert inference.source_date_epoch == 1726423614


def test_flit_with_epoch_keeps_it_and_varies_everything() -> None:
    sdist = SdistFacts(1726423614, ("flit_core >=3.2,<4",), "flit_core.buildapi")
    inference = infer_recipe(_published(), _wheel("flit 3.9.0"), sdist)
    assert not inference.unset_epoch and inference.env == {} and inference.vary == ("all",)


def test_hatchling_pins_the_backend_and_keeps_the_other_requirements() -> None:
    sdist = SdistFacts(1722954453, ("hatchling", "hatch-vcs", "hatch-fancy-pypi-readme>=23.2.0"),
                       "hatchling.build")
    published = _published("attrs", "24.2.0")
    inference = infer_recipe(published, _wheel("hatchling 1.25.0", name="attrs",
                                               version="24.2.0"), sdist)
    assert inference.requirements == ("build", "hatchling==1.25.0", "hatch-vcs",
                                      "hatch-fancy-pypi-readme>=23.2.0")
    assert inference.source_date_epoch == 1722954453 and not inference.unset_epoch
    dated = infer_recipe(published, _wheel("hatchling 1.25.0", (2020, 2, 2, 0, 0, 0),
                                           name="attrs", version="24.2.0"), sdist)
    assert dated.source_date_epoch == HATCHLING_DEFAULT_EPOCH


def test_a_wheel_from_another_backend_or_release_is_refused() -> None:
    sdist = SdistFacts(1, ("hatchling",), "hatchling.build")
    with pytest.raises(UsageError, match="not built from this sdist"):
        infer_recipe(_published(), _wheel("flit 3.9.0"), sdist)
    with pytest.raises(UsageError, match="METADATA names"):
        infer_recipe(_published(), _wheel("flit 3.9.0", version="3.9"),
                     SdistFacts(1, (), "flit_core.buildapi"))
    impure = WheelFacts("flit 3.9.0", False, ("py3-none-any",), "idna", "3.10", (2016,))
    with pytest.raises(UsageError, match="compiled extension"):
        infer_recipe(_published(), impure, SdistFacts(1, (), None))


def test_the_written_recipe_is_a_valid_recipe_with_upstream() -> None:
    sdist = SdistFacts(1726423614, ("flit_core >=3.2,<4",), "flit_core.buildapi")
    published = _published()
    inference = infer_recipe(published, _wheel("flit 3.9.0", (2016, 1, 1, 0, 0, 0)), sdist)
    text = render_recipe(published, inference, IMAGE)
    data = tomllib.loads(text)
    data["source"]["digest"] = "sha256:" + "d" * 64
    recipe = parse_recipe(data, source="idna.toml")
    assert recipe.upstream is not None
    assert recipe.upstream.filename == "idna-3.10-py3-none-any.whl"
    assert recipe.build.outputs == ("idna-3.10-py3-none-any.whl",)
    assert recipe.build.env == {"TZ": "UTC"} and "timezone" not in recipe.variations
    assert recipe.model_dump()["upstream"]["sha256"] == "c" * 64
    # Without [upstream], a recipe is recorded as before the table existed (the provenance).
    plain = parse_recipe({k: v for k, v in data.items() if k != "upstream"})
    assert "upstream" not in plain.model_dump()


def test_upstream_must_be_a_wheel_url_with_a_hash() -> None:
    base = tomllib.loads(render_recipe(_published(), infer_recipe(
        _published(), _wheel("flit 3.9.0"), SdistFacts(1, (), "flit_core.buildapi")), IMAGE))
    for upstream, message in (({"wheel": "ftp://x/a.whl", "sha256": SHA}, "http"),
                              ({"wheel": "https://x/a.tar.gz", "sha256": SHA}, ".whl"),
                              ({"wheel": "https://x/a.whl", "sha256": "00"}, "64 lowercase"),
                              ({"wheel": "https://x/a.whl"}, "missing key")):
        with pytest.raises(UsageError, match=message):
            parse_recipe({**base, "upstream": upstream}, source="r.toml")


def test_read_wheel_and_sdist(tmp_path: Path) -> None:
    wheel = tmp_path / "idna-3.10-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("idna/__init__.py", "")
        z.writestr(zipfile.ZipInfo("idna-3.10.dist-info/WHEEL", (2016, 1, 1, 0, 0, 0)),
                   "Wheel-Version: 1.0\nGenerator: flit 3.9.0\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr("idna-3.10.dist-info/METADATA", "Metadata-Version: 2.1\nName: idna\n"
                   "Version: 3.10\n")
    facts = read_wheel(wheel)
    assert (facts.generator, facts.purelib, facts.tags, facts.name, facts.version,
            facts.generated_time) == ("flit 3.9.0", True, ("py3-none-any",), "idna", "3.10",
                                      (2016, 1, 1, 0, 0, 0))
    sdist = tmp_path / "idna-3.10.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data, mtime in (
                ("idna-3.10/pyproject.toml",
                 b'[build-system]\nrequires = ["flit_core >=3.2,<4"]\n'
                 b'build-backend = "flit_core.buildapi"\n', 1726423614.5),
                ("idna-3.10/PKG-INFO", b"", 0)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime  # type: ignore[assignment]
            tar.addfile(info, io.BytesIO(data))
    assert read_sdist(sdist) == SdistFacts(1726423614, ("flit_core >=3.2,<4",),
                                           "flit_core.buildapi")
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not a readable wheel"):
        read_wheel(tmp_path / "bad.whl")


def test_nothing_is_fetched_or_written_without_an_image_or_over_a_recipe(tmp_path: Path) -> None:
    from rebuild.inputs.pypi import recipe_for_release
    from rebuild.store.layout import Store

    store = Store(tmp_path / "store")
    with pytest.raises(UsageError, match="has no image rebuild/debian-c:bookworm"):
        recipe_for_release("idna==3.10", tmp_path / "recipes", store)
    assert not (tmp_path / "recipes").exists() and not store.exists()
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "idna.toml").write_text("# mine\n")
    with pytest.raises(UsageError, match=r"idna\.toml exists"):
        recipe_for_release("IDNA==3.10", tmp_path / "recipes", store, image=IMAGE)
    assert (tmp_path / "recipes" / "idna.toml").read_text() == "# mine\n"


def test_setuptools_builds_under_umask_022() -> None:
    sdist = SdistFacts(1, ("setuptools>=61",), "setuptools.build_meta")
    inference = infer_recipe(_published(), _wheel("setuptools (75.1.0)"), sdist)
    assert inference.requirements == ("build", "setuptools==75.1.0")
    assert inference.command[2].startswith("umask 022 && python -m build")
