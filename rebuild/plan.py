"""Plans: what each run of a twin build will do, as pure data (style: "plan, then run").

`plan_build(recipe, …)` returns a `BuildPlan`; the sandbox runs a `RunPlan` and nothing
else. Every environment variable a build sees is decided here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rebuild.recipe import Recipe
from rebuild.variations import RunSettings, apply_variations, describe

# Where the sandbox mounts rebuild's own helpers inside every container (read-only).
FAKETIME_LIB = "/usr/lib/rebuild/faketime/libfaketime.so.1"
LOCALE_DIR = "/usr/lib/rebuild/locale"
OUT_DIR = "/out"


@dataclass(frozen=True)
class RunPlan:
    """One run: its name ("a", "b", or a variation name when explaining) and its settings."""

    name: str
    variations: tuple[str, ...]
    settings: RunSettings
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    timeout: int
    memory: str
    pids_limit: int = 1024

    @property
    def user(self) -> str:
        return f"{self.settings.uid}:{self.settings.gid}"

    @property
    def argv(self) -> tuple[str, ...]:
        # Docker has no umask option: set it in a shell, then exec the recipe's argv as is.
        return ("/bin/sh", "-c", 'umask "$0" && exec "$@"', self.settings.umask, *self.command)

    def describe(self) -> dict[str, str]:
        return describe(self.variations)


@dataclass(frozen=True)
class BuildPlan:
    release: str
    image: str
    outputs: tuple[str, ...]
    source_date_epoch: int
    variations: tuple[str, ...]
    runs: tuple[RunPlan, ...]


def run_environment(settings: RunSettings, source_date_epoch: int,
                    recipe_env: Mapping[str, str]) -> dict[str, str]:
    """The complete environment of a run: nothing from the caller's environment leaks in."""
    env = {
        "PATH": settings.path,
        "HOME": settings.home,
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
        "TZ": settings.timezone,
        "LANG": settings.locale,
        "LC_ALL": settings.locale,
        "LOCPATH": LOCALE_DIR,
        # libfaketime, start-at mode: each process starts at this instant (design.md, "time").
        "LD_PRELOAD": FAKETIME_LIB,
        "FAKETIME": f"@{settings.clock}",
        "FAKETIME_FMT": "%s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    env.update(recipe_env)
    env.update(settings.extra_env)
    return env


def plan_run(recipe: Recipe, name: str, variations: tuple[str, ...],
             source_date_epoch: int, command: tuple[str, ...] | None = None) -> RunPlan:
    settings = apply_variations(RunSettings(), variations)
    return RunPlan(
        name=name,
        variations=variations,
        settings=settings,
        image=recipe.environment.image,
        command=command or recipe.build.command,
        env=run_environment(settings, source_date_epoch, recipe.build.env),
        timeout=recipe.build.timeout,
        memory=recipe.build.memory,
    )


def plan_build(recipe: Recipe, source_date_epoch: int) -> BuildPlan:
    """Run A is the baseline; run B differs in every variation the recipe enables."""
    variations = recipe.variations
    return BuildPlan(
        release=recipe.release,
        image=recipe.environment.image,
        outputs=recipe.build.outputs,
        source_date_epoch=source_date_epoch,
        variations=variations,
        runs=(plan_run(recipe, "a", (), source_date_epoch),
              plan_run(recipe, "b", variations, source_date_epoch)),
    )
