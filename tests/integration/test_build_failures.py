"""A failing command, a timeout and a missing output exit 4, and keep the logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RecipeWriter, run_rebuild

pytestmark = pytest.mark.docker


def test_failing_command(minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, "echo oops >&2; exit 3"),
                         store=store)
    assert result.code == 4
    assert "exited with 3" in result.stderr
    assert "oops" in result.stderr
    assert "logs kept in the store" in result.stderr


def test_timeout(minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, "sleep 60", timeout=3),
                         store=store)
    assert result.code == 4
    assert "timed out" in result.stderr


def test_missing_output(minimal_image: str, write_recipe: RecipeWriter, store: Path) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, "echo > /out/r", ["r", "*.tar"]),
                         store=store)
    assert result.code == 4
    assert "'*.tar' matched nothing" in result.stderr


def test_symlink_output_is_not_followed(minimal_image: str, write_recipe: RecipeWriter,
                                        store: Path) -> None:
    result = run_rebuild("build", write_recipe(minimal_image, "ln -s /etc/shadow /out/r"),
                         "--json", store=store)
    assert result.code == 0, result.stderr
    [art] = result.json["artifacts"]
    assert art["link"] == "/etc/shadow"
    assert art["size"] == len("/etc/shadow")
