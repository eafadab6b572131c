"""Compare: collect the declared outputs of each run, hash them, and diff what differs.

Outputs are read from a run's `/out` without ever following a link (a build could point one
at a host file). Equal hashes end the comparison; diffoscope runs only on files that differ,
bounded in time and report size.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rebuild.errors import BuildFailed
from rebuild.store import CHUNK

DIFFOSCOPE_TIMEOUT = 120  # seconds per differing file
DIFFOSCOPE_MAX_REPORT = 4 << 20  # bytes of text report


@dataclass(frozen=True)
class Artifact:
    name: str  # path relative to /out
    sha256: str  # hex
    size: int
    path: Path  # where it is on the host, in the run's output directory
    link: str | None = None  # the target, when the output is a symbolic link

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "sha256": self.sha256, "size": self.size}
        if self.link is not None:
            out["link"] = self.link
        return out


@dataclass(frozen=True)
class Difference:
    name: str
    a: Artifact | None
    b: Artifact | None


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Shell-style globs over relative paths: `*` stays within a directory, `**` crosses."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + "(?:/.*)?")  # a matched directory brings its contents


def collect_outputs(out_dir: Path, globs: Sequence[str], run: str) -> tuple[Artifact, ...]:
    """Hash every file under `out_dir` that a declared glob matches; each must match one."""
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(out_dir):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            files[(base / name).relative_to(out_dir).as_posix()] = base / name
    chosen: dict[str, Path] = {}
    for pattern in globs:
        regex = glob_to_regex(pattern)
        matched = {rel: path for rel, path in files.items() if regex.fullmatch(rel)}
        if not matched:
            raise BuildFailed(f"declared output {pattern!r} matched nothing in /out of run "
                              f"{run}; fix [build] outputs or make the build write it")
        chosen.update(matched)
    return tuple(_artifact(rel, chosen[rel]) for rel in sorted(chosen))


def _artifact(name: str, path: Path) -> Artifact:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        target = str(path.readlink())
        data = target.encode()
        return Artifact(name, hashlib.sha256(data).hexdigest(), len(data), path, target)
    if not stat.S_ISREG(st.st_mode):
        raise BuildFailed(f"output {name} is not a regular file or link")
    digest = hashlib.sha256()
    # O_NOFOLLOW: the file was a regular file at lstat; refuse it if it became a link since.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return Artifact(name, digest.hexdigest(), st.st_size, path)


def compare_artifacts(a: Sequence[Artifact], b: Sequence[Artifact]) -> tuple[Difference, ...]:
    by_a: Mapping[str, Artifact] = {x.name: x for x in a}
    by_b: Mapping[str, Artifact] = {x.name: x for x in b}
    names = sorted(by_a.keys() | by_b.keys())
    return tuple(Difference(n, by_a.get(n), by_b.get(n)) for n in names
                 if by_a.get(n) is None or by_b.get(n) is None
                 or by_a[n].sha256 != by_b[n].sha256)


def diff_report(diff: Difference, *, timeout: int = DIFFOSCOPE_TIMEOUT) -> bytes:
    """A text report of one difference: diffoscope's, bounded; a plain note without it."""
    if diff.a is None or diff.b is None:
        present = "a" if diff.a is not None else "b"
        return f"{diff.name}: only run {present} produced this output\n".encode()
    header = (f"--- a/{diff.name}\tsha256:{diff.a.sha256}\n"
              f"+++ b/{diff.name}\tsha256:{diff.b.sha256}\n").encode()
    diffoscope = shutil.which("diffoscope")
    if diffoscope is None:
        return header + b"(diffoscope is not installed: apt-get install -y diffoscope-minimal)\n"
    if diff.a.link is not None or diff.b.link is not None:
        return header + f"link a -> {diff.a.link}\nlink b -> {diff.b.link}\n".encode()
    command = [diffoscope, "--text", "-", "--text-color", "never", "--no-progress",
               "--timeout", str(timeout), "--max-report-size", str(DIFFOSCOPE_MAX_REPORT),
               "--exclude-directory-metadata", "yes", str(diff.a.path), str(diff.b.path)]
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout + 30, check=False,
                                env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8",
                                     "TZ": "UTC", "HOME": "/nonexistent"})
    except subprocess.TimeoutExpired:
        return header + f"(diffoscope did not finish within {timeout + 30} s)\n".encode()
    report = result.stdout.replace(str(diff.a.path).encode(), f"a/{diff.name}".encode())
    report = report.replace(str(diff.b.path).encode(), f"b/{diff.name}".encode())
    if result.returncode not in (0, 1):
        report += b"\n(diffoscope failed: " + result.stderr.strip()[-2000:] + b")\n"
    return header + report
