"""Each of the twelve variations takes effect, in a minimal image (no tzdata, no locales).

For each variation a build sensitive to exactly it is caught with `vary = ["all"]` and
passes with `vary = ["all", "-NAME"]`; a careful build passes with all twelve.
"""

from __future__ import annotations

import pytest

from rebuild.build.variations import NAMES
from tests.conftest import RecipeWriter, run_rebuild

pytestmark = pytest.mark.docker

MANY_FILES = {f"files/f{i:02d}": f"{i}\n" for i in range(30)}

SENSITIVE = {
    "time": "date -u +%F > /out/r",
    "build_path": "pwd > /out/r",
    "hostname": "uname -n > /out/r && cat /proc/sys/kernel/domainname >> /out/r",
    "timezone": "date +%H > /out/r",
    "locale": "printf 'a\\nB\\n' | sort > /out/r",
    "umask": "touch made && stat -c %a made > /out/r",
    "user": "id -u > /out/r",
    "home": 'echo "$HOME" > /out/r',
    "env": "env | cut -d= -f1 | sort > /out/r",
    "exec_path": 'echo "$PATH" > /out/r',
    "cpus": "nproc > /out/r",
    "file_order": "ls -U files > /out/r",
}


def test_every_variation_has_a_probe() -> None:
    assert sorted(SENSITIVE) == sorted(NAMES)


@pytest.mark.parametrize("variation", NAMES)
def test_variation_is_caught_and_can_be_removed(variation: str, minimal_image: str,
                                                write_recipe: RecipeWriter, store) -> None:
    # The output's own mode is fixed, so that the probe shows in its content alone.
    script = SENSITIVE[variation] + " && chmod 644 /out/r"
    caught = run_rebuild("build", write_recipe(minimal_image, script, files=MANY_FILES),
                         "--json", store=store)
    assert caught.code == 1, caught.stderr
    assert [d["name"] for d in caught.json["differences"]] == ["r"]

    spared = run_rebuild("build", write_recipe(minimal_image, script, files=MANY_FILES,
                                               name="spared", vary=["all", f"-{variation}"]),
                         "--json", store=store)
    assert spared.code == 0, spared.stderr
    assert spared.json["reproducible"] is True
    assert variation not in spared.json["runs"][1]["variations"]


def test_careful_build_passes_all_twelve(minimal_image: str, write_recipe: RecipeWriter,
                                         store) -> None:
    script = ("printf 'hello\\n' > /out/r && tar --sort=name --mtime=@$SOURCE_DATE_EPOCH "
              "--owner=0 --group=0 --numeric-owner --mode=go-w -cf - files "
              "| gzip -n > /out/files.tar.gz && chmod 644 /out/r /out/files.tar.gz")
    result = run_rebuild("build", write_recipe(minimal_image, script, ["r", "*.tar.gz"],
                                               files=MANY_FILES), "--json", store=store)
    assert result.code == 0, result.stderr
    assert sorted(result.json["runs"][1]["variations"]) == sorted(NAMES)
    assert [a["name"] for a in result.json["artifacts"]] == ["files.tar.gz", "r"]


@pytest.mark.parametrize("epoch", [946684800, 1700000000])
def test_day_resolution_date_is_always_caught(epoch: int, minimal_image: str,
                                              write_recipe: RecipeWriter, store) -> None:
    # reprotest's time variation is skipped at random for sources over 180 days old; here the
    # clock of run b is always more than a year ahead, whatever the age of the source.
    for attempt in range(2):
        result = run_rebuild("build", write_recipe(minimal_image, "date -u +%F > /out/r",
                                                   name=f"d{attempt}", epoch=epoch),
                             "--json", store=store)
        assert result.code == 1, result.stderr
        assert result.json["differences"][0]["name"] == "r"
