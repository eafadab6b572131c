"""Plans: what each run of a twin build will do, as pure data (style: "plan, then run").

`plan_build(recipe, …)` returns a `BuildPlan`; the sandbox runs a `RunPlan` and nothing
else. Every environment variable a build sees is decided here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rebuild.build.recipe import Recipe
from rebuild.build.variations import RunSettings, apply_variations, describe

# Where the sandbox mounts rebuild's own helpers inside every container (read-only).
FAKETIME_LIB = "/usr/lib/rebuild/faketime/libfaketime.so.1"
LOCALE_DIR = "/usr/lib/rebuild/locale"
OUT_DIR = "/out"
# A build with a python_lock: the wheels and the lock are mounted here (read-only), and are
# installed offline into a venv on the tmpfs, at the same path in every run.
WHEELS_DIR = "/usr/lib/rebuild/wheels"
WHEELS_LOCK_NAME = "python.lock.txt"
VENV_DIR = "/tmp/rebuild-venv"
CREATE_VENV = f"python3 -m venv {VENV_DIR}"
INSTALL_WHEELS = (
    f"PIP_CONFIG_FILE=/dev/null {VENV_DIR}/bin/pip install --quiet --no-cache-dir "
    f"--disable-pip-version-check --no-index --find-links {WHEELS_DIR} --require-hashes "
    f"-r {WHEELS_DIR}/{WHEELS_LOCK_NAME}")


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
    # Wheel files to install into a venv before the command (None: no python_lock, no venv).
    wheels: tuple[str, ...] | None = None

    @property
    def user(self) -> str:
        return f"{self.settings.uid}:{self.settings.gid}"

    @property
    def argv(self) -> tuple[str, ...]:
        # Docker has no umask option: set it in a shell, then exec the recipe's argv as is.
        steps = ['umask "$0"']
        if self.wheels is not None:  # a python_lock: its venv, with exactly the locked wheels
            steps += [CREATE_VENV, INSTALL_WHEELS] if self.wheels else [CREATE_VENV]
        script = " && ".join([*steps, 'exec "$@"'])
        return ("/bin/sh", "-c", script, self.settings.umask, *self.command)

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
             source_date_epoch: int, command: tuple[str, ...] | None = None, *,
             wheels: tuple[str, ...] | None = None) -> RunPlan:
    settings = apply_variations(RunSettings(), variations)
    env = run_environment(settings, source_date_epoch, recipe.build.env)
    if wheels is not None:
        env.update(PATH=f"{VENV_DIR}/bin:{env['PATH']}", VIRTUAL_ENV=VENV_DIR)
    return RunPlan(
        name=name,
        variations=variations,
        settings=settings,
        image=recipe.environment.image,
        command=command or recipe.build.command,
        env=env,
        timeout=recipe.build.timeout,
        memory=recipe.build.memory,
        wheels=wheels,
    )


def plan_build(recipe: Recipe, source_date_epoch: int, *,
               wheels: tuple[str, ...] | None = None) -> BuildPlan:
    """Run A is the baseline; run B differs in every variation the recipe enables.

    `wheels` (from `Inputs.wheel_files`): both runs install them into a venv first.
    """
    variations = recipe.variations
    return BuildPlan(
        release=recipe.release,
        image=recipe.environment.image,
        outputs=recipe.build.outputs,
        source_date_epoch=source_date_epoch,
        variations=variations,
        runs=(plan_run(recipe, "a", (), source_date_epoch, wheels=wheels),
              plan_run(recipe, "b", variations, source_date_epoch, wheels=wheels)),
    )
