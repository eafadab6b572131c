"""Plans: what each run of a twin build will do, as pure data (style: "plan, then run").

`plan_build(recipe, …)` returns a `BuildPlan`; the sandbox runs a `RunPlan` and nothing
else. Every environment variable a build sees is decided here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rebuild.build.limits import DEFAULT as DEFAULT_LIMITS
from rebuild.build.limits import Limits
from rebuild.build.recipe import Recipe
from rebuild.build.variations import RunSettings, apply_variations, describe

# Where the sandbox mounts rebuild's own helpers inside every container (read-only).
FAKETIME_LIB = "/usr/lib/rebuild/faketime/libfaketime.so.1"
# A tmpfs of its own (not /tmp, which a build may clean): the run's clock offset, written
# when the command starts and read by libfaketime in every process (FAKETIME_TIMESTAMP_FILE).
CLOCK_DIR = "/usr/lib/rebuild/clock"
CLOCK_FILE = f"{CLOCK_DIR}/faketimerc"
LOCALE_DIR = "/usr/lib/rebuild/locale"
OUT_DIR = "/out"
RESULTS_DIR = "/results"  # where a [[test]] suite writes its JUnit XML
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
# A build with an npm_lock: npm's content-addressed cache of the lock's tarballs is mounted
# here (read-only) and copied to NPM_CACHE on the tmpfs (npm writes its logs and index
# there), the same path in every run; npm is pointed at it and kept offline by environment.
NPM_DIR = "/usr/lib/rebuild/npm"
NPM_CACHE = "/tmp/rebuild-npm-cache"
COPY_NPM_CACHE = f"mkdir -p {NPM_CACHE} && cp -R {NPM_DIR}/. {NPM_CACHE}/"
NPM_ENV = {
    "npm_config_cache": NPM_CACHE,
    "npm_config_offline": "true",
    "npm_config_audit": "false",
    "npm_config_fund": "false",
    "npm_config_update_notifier": "false",
}


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
    npm: bool = False  # an npm_lock: its offline cache is copied into place first
    max_log_size: int = DEFAULT_LIMITS.max_log_size  # bytes of the log kept: head and tail

    @property
    def user(self) -> str:
        return f"{self.settings.uid}:{self.settings.gid}"

    @property
    def argv(self) -> tuple[str, ...]:
        # Docker has no umask option: set it in a shell, then exec the recipe's argv as is.
        steps = ['umask "$0"']
        if self.wheels is not None:  # a python_lock: its venv, with exactly the locked wheels
            steps += [CREATE_VENV, INSTALL_WHEELS] if self.wheels else [CREATE_VENV]
        if self.npm:
            steps.append(COPY_NPM_CACHE)
        script = " && ".join([*steps, START_CLOCK, 'shift', 'exec "$@"'])
        return ("/bin/sh", "-c", script, self.settings.umask, str(self.settings.clock),
                *self.command)

    def describe(self) -> dict[str, str]:
        return describe(self.variations)

    def record(self) -> dict[str, Any]:
        """What this run had, as the signed provenance states it (docs/build-type.md): the
        container's settings and its whole environment (Docker adds HOSTNAME, libfaketime
        FAKETIME_SHARED for its child processes)."""
        s = self.settings
        return {
            "variations": list(self.variations),
            "clock": datetime.fromtimestamp(s.clock, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "build_path": s.build_path,
            "hostname": s.hostname,
            "domainname": s.domainname,
            "umask": s.umask,
            "user": self.user,
            "cpuset": s.cpuset if s.cpuset is not None else "all",
            "file_order": "shuffled" if s.shuffle_dirents else "natural",
            "env": dict(sorted(self.env.items())),
        }


@dataclass(frozen=True)
class BuildPlan:
    release: str
    image: str
    outputs: tuple[str, ...]
    source_date_epoch: int
    variations: tuple[str, ...]
    runs: tuple[RunPlan, ...]
    limits: Limits = DEFAULT_LIMITS


# Starts the run's clock half a second past the instant in "$1" (seconds since the epoch),
# just before the command runs.
#
# libfaketime's start-at mode (FAKETIME="@…") parses its instant with strptime and mktime in
# every process before main(); mktime reads TZ and glibc then keeps that time zone, so a
# program that sets TZ itself and relies on the first localtime_r to read it (coreutils
# `date -u` puts TZ=UTC0 and never calls tzset) formats in the run's TZ: under the timezone
# variation `date -u -d @$SOURCE_DATE_EPOCH` came out 14 hours off. Relative mode
# (FAKETIME="+N.NNNNNNNNN") parses a number only, so the clock and TZ stay apart. The offset
# is taken inside the container from the real clock, in nanoseconds (LD_PRELOAD emptied:
# that date must read the real clock), so the command starts at the instant and every
# process sees the clock run on from there: run a's clock is pinned, as before. Half a second
# past the instant, not on it: the kernel stamps a file with its coarse clock, a tick (up to
# 10 ms) behind the clock `date` reads, so a file written at once would otherwise be dated
# in the second before the instant in one run and in the instant's own in another; half a
# second each way keeps a quick build's files in the instant's second in every run.
START_CLOCK = (
    'rebuild_now=$(LD_PRELOAD= date +%s%N) && case "$rebuild_now" in '
    "''|*[!0-9]*) echo 'rebuild: cannot read the clock (date +%s%N)' >&2; exit 125;; esac "
    '&& rebuild_d=$(($1 * 1000000000 + 500000000 - rebuild_now)) && rebuild_s=+ && '
    'if [ "$rebuild_d" -lt 0 ]; then rebuild_s=- rebuild_d=$((-rebuild_d)); fi && '
    "printf '%s%d.%09d\\n' \"$rebuild_s\" $((rebuild_d / 1000000000)) "
    f"$((rebuild_d % 1000000000)) > {CLOCK_FILE} && unset rebuild_now rebuild_d rebuild_s")


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
        # libfaketime, relative mode: the offset is in CLOCK_FILE (start_clock), the same
        # path in every run, so the environment a build sees does not follow the real clock.
        "LD_PRELOAD": FAKETIME_LIB,
        "FAKETIME_TIMESTAMP_FILE": CLOCK_FILE,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    env.update(recipe_env)
    env.update(settings.extra_env)
    return env


def plan_run(recipe: Recipe, name: str, variations: tuple[str, ...],
             source_date_epoch: int, command: tuple[str, ...] | None = None, *,
             wheels: tuple[str, ...] | None = None, npm: bool = False) -> RunPlan:
    settings = apply_variations(RunSettings(), variations)
    env = run_environment(settings, source_date_epoch, recipe.build.env)
    if wheels is not None:
        env.update(PATH=f"{VENV_DIR}/bin:{env['PATH']}", VIRTUAL_ENV=VENV_DIR)
    if npm:
        env.update(NPM_ENV)
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
        npm=npm,
        max_log_size=recipe.bounds.max_log_size,
    )


def plan_build(recipe: Recipe, source_date_epoch: int, *,
               wheels: tuple[str, ...] | None = None, npm: bool = False) -> BuildPlan:
    """Run A is the baseline; run B differs in every variation the recipe enables.

    `wheels` (from `Inputs.wheel_files`): both runs install them into a venv first. `npm`
    (`Inputs.npm_lock` is set): both runs get the offline npm cache.
    """
    variations = recipe.variations
    return BuildPlan(
        release=recipe.release,
        image=recipe.environment.image,
        outputs=recipe.build.outputs,
        source_date_epoch=source_date_epoch,
        variations=variations,
        runs=(plan_run(recipe, "a", (), source_date_epoch, wheels=wheels, npm=npm),
              plan_run(recipe, "b", variations, source_date_epoch, wheels=wheels, npm=npm)),
        limits=recipe.bounds,
    )
