"""Variations: how run B differs from the baseline run A (design.md, "Variations").

Pure data. A run's environment is a `RunSettings`; the baseline pins every field, including
the clock, so that a rerun of A differs from A only by chance. Each variation changes one
field for run B. `select_variations` turns a recipe's `[check] vary` list into names.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rebuild.errors import UsageError

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run's environment that a variation may change."""

    # The instant the recipe's command starts at, seconds since the epoch
    # (2030-01-01T00:00:00Z); the clock runs on from there (libfaketime, relative mode: see
    # rebuild.build.plan.start_clock).
    clock: int = 1893456000
    build_path: str = "/build/src"
    hostname: str = "rebuild"
    domainname: str = "build.invalid"
    timezone: str = "UTC"
    locale: str = "C.UTF-8"
    umask: str = "0022"
    uid: int = 1000
    gid: int = 1000
    home: str = "/home/build"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    path: str = BASE_PATH
    # A cpuset for the container; None means every CPU of the machine.
    cpuset: str | None = "0"
    shuffle_dirents: bool = False


@dataclass(frozen=True)
class Variation:
    name: str
    changes: Mapping[str, object]
    shown: str  # what run B gets, for people and for `runs[].variations`
    # Bytes of run B's value that a build which records it writes as they are (its clock's
    # year, its path): where run B's output holds one that run A's does not, the culprit
    # search tests this variation first (rebuild.build.explain). Empty: nothing to look for.
    marks: tuple[bytes, ...] = ()


# Run B's values. The clock moves by exactly 548 days (more than a year, a whole number of
# days, so the hour of day is unchanged and only date-sensitive builds differ).
VARIATIONS: tuple[Variation, ...] = (
    Variation("time", {"clock": 1893456000 + 548 * 86400}, "clock starts at 2031-07-03T00:00:00Z",
              (b"2031",)),
    Variation("build_path", {"build_path": "/build/variation/a-longer-source-path"},
              "/build/variation/a-longer-source-path", (b"variation/a-longer-source-path",)),
    Variation("hostname", {"hostname": "variant-host", "domainname": "variant.invalid"},
              "variant-host.variant.invalid", (b"variant-host", b"variant.invalid")),
    Variation("timezone", {"timezone": "GMT-14"}, "GMT-14", (b"GMT-14",)),
    Variation("locale", {"locale": "fr_FR.UTF-8"}, "fr_FR.UTF-8", (b"fr_FR",)),
    Variation("umask", {"umask": "0002"}, "0002"),
    Variation("user", {"uid": 2000, "gid": 2000}, "2000:2000"),
    Variation("home", {"home": "/var/lib/variant-home"}, "/var/lib/variant-home",
              (b"variant-home",)),
    Variation("env", {"extra_env": {"REBUILD_VARIATION": "extra"}}, "REBUILD_VARIATION=extra",
              (b"REBUILD_VARIATION",)),
    Variation("exec_path", {"path": BASE_PATH + ":/usr/local/variant/bin"},
              "PATH += /usr/local/variant/bin", (b"variant/bin",)),
    Variation("cpus", {"cpuset": None}, "all CPUs"),
    Variation("file_order", {"shuffle_dirents": True}, "shuffled directory entries"),
)
NAMES: tuple[str, ...] = tuple(v.name for v in VARIATIONS)
BY_NAME: Mapping[str, Variation] = {v.name: v for v in VARIATIONS}


# Environment variables a variation sets (in run b, and pinned in run a). A recipe that set
# one in [build] env would cancel that variation while the record said it ran, so it may
# set one only when the variation is off (rebuild.recipe). LANGUAGE outranks LC_ALL for
# messages; any other LC_* is overridden by LC_ALL, so setting it would silently do nothing.
# HOSTNAME is the variable Docker sets to the container's host name.
ENV_VARIATIONS: Mapping[str, str] = {
    "TZ": "timezone", "LANG": "locale", "LC_ALL": "locale", "LANGUAGE": "locale",
    "HOSTNAME": "hostname", "REBUILD_VARIATION": "env",
}


def controlling_variation(key: str) -> str | None:
    """The variation that sets the environment variable `key`, if any."""
    return ENV_VARIATIONS.get(key) or ("locale" if key.startswith("LC_") else None)


def select_variations(vary: Iterable[str], *, where: str = "[check] vary") -> tuple[str, ...]:
    """Resolve `["all", "-cpus"]`-style lists to variation names, in table order."""
    chosen: set[str] = set()
    for item in vary:
        remove = item.startswith("-")
        name = item[1:] if remove else item
        names = set(NAMES) if name == "all" else {name}
        if name != "all" and name not in BY_NAME:
            close = difflib.get_close_matches(name, [*NAMES, "all"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{where}: unknown variation {item!r}{hint}; "
                             f"known: all, {', '.join(NAMES)}")
        chosen = chosen - names if remove else chosen | names
    return tuple(n for n in NAMES if n in chosen)


def apply_variations(base: RunSettings, names: Iterable[str]) -> RunSettings:
    """The settings of a run that differs from `base` in each named variation."""
    changes: dict[str, object] = {}
    for name in names:
        changes.update(BY_NAME[name].changes)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def describe(names: Iterable[str]) -> dict[str, str]:
    """`runs[].variations` of the JSON output: variation name -> what that run got."""
    return {name: BY_NAME[name].shown for name in names}
