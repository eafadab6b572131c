"""Compare: collect the declared outputs of each run, hash them, and diff what differs.

Outputs are read from a run's `/out` without ever following a link (a build could point one
at a host file). Two outputs are the same artifact when every property in `COMPARED` is
equal: the file type, the content (a link's content is its target) and the permission bits,
which the umask and `chmod` decide and which ship with the file. Equal properties end the
comparison; diffoscope runs only on files whose content differs, bounded in time and report
size, and writes each report as text, HTML and JSON. Archives are compared member by member
first, so that diffoscope sees only the members that differ.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import html
import io
import json
import lzma
import os
import re
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rebuild.build.limits import DEFAULT as DEFAULT_LIMITS
from rebuild.build.limits import Limits, show_size
from rebuild.errors import BuildFailed, EnvironmentProblem, UsageError
from rebuild.store.layout import CHUNK, Staging, sha256_file

DIFFOSCOPE_TIMEOUT = 120  # seconds per differing file
DIFFOSCOPE_MAX_REPORT = 4 << 20  # bytes of each report (text, HTML, JSON)
# Lines fed to diff(1): a hexdump of 800 KB of binary. Its default (4 Mi lines) let two 28 MB
# random files run for minutes; the reports are cut far below what more lines would show.
DIFFOSCOPE_MAX_DIFF_INPUT = 50_000


# Outputs read (and stored) at once: opening, creating and renaming files waits on the file
# system's journal, not on a CPU, so 20,000 small outputs go several times faster this way.
HASHERS = 8

# The properties that make two outputs the same artifact, in the order reports name them. A
# link's content is its target (hashed as a string); a link has no mode of its own on Linux.
COMPARED = ("type", "content", "mode")
FILE, LINK = "file", "link"


@dataclass(frozen=True)
class Artifact:
    name: str  # path relative to /out
    sha256: str  # hex
    size: int
    path: Path  # where it is on the host, in the run's output directory
    link: str | None = None  # the target, when the output is a symbolic link
    # Permission bits (st_mode & 0o7777) of a file; None for a link, or when a record made
    # before modes were recorded does not say.
    mode: int | None = None
    # Set for an artifact that is not a file of /out: an output image's manifest
    # (rebuild.build.output_image), stored as a release layer of this media type.
    media_type: str | None = None

    @property
    def type(self) -> str:
        return LINK if self.link is not None else FILE

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "sha256": self.sha256, "size": self.size,
                                  "type": self.type}
        if self.link is not None:
            out["link"] = self.link
        if self.mode is not None:
            out["mode"] = format_mode(self.mode)
        if self.media_type is not None:
            out["media_type"] = self.media_type
        return out


def format_mode(mode: int) -> str:
    """Permission bits as four octal digits, as chmod takes them ("0644", "4755")."""
    return f"{mode & 0o7777:04o}"


def parse_mode(text: str) -> int:
    return int(text, 8) & 0o7777


def differing_properties(a: Artifact, b: Artifact) -> tuple[str, ...]:
    """Which of `COMPARED` differ; a mode is compared only where both sides record one."""
    if a.type != b.type:
        return ("type",)  # content and mode of a file and of a link do not compare
    differ = []
    if a.sha256 != b.sha256:
        differ.append("content")
    if a.mode is not None and b.mode is not None and a.mode != b.mode:
        differ.append("mode")
    return tuple(differ)


def describe_artifact(artifact: Artifact) -> str:
    """One line for a report: the type, and the link target or the mode and digest."""
    if artifact.link is not None:
        return f"symbolic link -> {artifact.link}"
    mode = f"mode {format_mode(artifact.mode)}, " if artifact.mode is not None else ""
    return f"regular file, {mode}{artifact.size} bytes, sha256:{artifact.sha256}"


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
    # DOTALL: a file name may hold a newline, and `**` must still reach it.
    return re.compile("".join(out) + "(?:/.*)?", re.DOTALL)  # a directory brings its contents


def collect_outputs(out_dir: Path, globs: Sequence[str], run: str,
                    limits: Limits = DEFAULT_LIMITS, *,
                    stage: Staging | None = None) -> tuple[Artifact, ...]:
    """Hash every file under `out_dir` that a declared glob matches; each must match one.

    Counted and sized as they are found, before any is hashed: a build that writes more
    than `limits.max_outputs` files or `limits.max_output_size` bytes of outputs stops here.
    With `stage`, every file is also copied into the store as it is hashed (one read of
    each output; `Staging.commit` names the blobs once the build proves reproducible).
    """
    regexes = [(pattern, glob_to_regex(pattern)) for pattern in globs]
    chosen: dict[str, str] = {}
    matched: set[str] = set()
    total = 0
    # os.scandir, not os.walk over Paths: its entries carry their lstat, and 20,000 outputs
    # made the Path arithmetic a cost of its own. Directories are entered, never followed.
    pending = [(os.fspath(out_dir), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue  # as os.walk did: an unreadable directory holds no outputs
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, rel + "/"))
                continue
            hits = [pattern for pattern, regex in regexes if regex.fullmatch(rel)]
            if not hits:
                continue
            matched.update(hits)
            chosen[rel] = entry.path
            total += entry.stat(follow_symlinks=False).st_size
            if len(chosen) > limits.max_outputs:
                raise BuildFailed(f"run {run} wrote more than {limits.max_outputs} declared "
                                  "outputs (limit [limits] max_outputs); raise it in the "
                                  "recipe or declare fewer outputs")
            if total > limits.max_output_size:
                raise BuildFailed(f"run {run}'s declared outputs are over "
                                  f"{show_size(limits.max_output_size)} in all (limit [limits] "
                                  f"max_output_size, reached at {rel}); raise it in the recipe "
                                  "or declare fewer outputs")
    for pattern in globs:
        if pattern not in matched:
            raise BuildFailed(f"declared output {pattern!r} matched nothing in /out of run "
                              f"{run}; fix [build] outputs or make the build write it")
    names = sorted(chosen)
    if len(names) < HASHERS:
        return tuple(_artifact(rel, Path(chosen[rel]), stage) for rel in names)
    with ThreadPoolExecutor(HASHERS, thread_name_prefix="rebuild-hash") as pool:
        return tuple(pool.map(lambda rel: _artifact(rel, Path(chosen[rel]), stage), names))


def _artifact(name: str, path: Path, stage: Staging | None = None) -> Artifact:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        target = str(path.readlink())
        data = target.encode()
        return Artifact(name, hashlib.sha256(data).hexdigest(), len(data), path, target)
    if not stat.S_ISREG(st.st_mode):
        raise BuildFailed(f"output {name!r} is not a regular file or link")
    # O_NOFOLLOW: the file was a regular file at lstat; refuse it if it became a link since.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        # O_NOATIME: the first read of a new file would otherwise write its inode (relatime),
        # one journal update per output. Only the file's owner or root may ask for it.
        fd = os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, flags)
    try:
        st = os.fstat(fd)  # the mode of what is hashed
        if stage is not None:
            digest, size = stage.copy(fd)
            return Artifact(name, digest.removeprefix("sha256:"), size, path,
                            mode=stat.S_IMODE(st.st_mode))
        hasher, size = hashlib.sha256(), 0
        while chunk := os.read(fd, CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return Artifact(name, hasher.hexdigest(), size, path, mode=stat.S_IMODE(st.st_mode))


def compare_artifacts(a: Sequence[Artifact], b: Sequence[Artifact]) -> tuple[Difference, ...]:
    by_a: Mapping[str, Artifact] = {x.name: x for x in a}
    by_b: Mapping[str, Artifact] = {x.name: x for x in b}
    names = sorted(by_a.keys() | by_b.keys())
    return tuple(Difference(n, by_a.get(n), by_b.get(n)) for n in names
                 if by_a.get(n) is None or by_b.get(n) is None
                 or differing_properties(by_a[n], by_b[n]))


# -- reports ---------------------------------------------------------------------------------
#
# Each differing output gets diffoscope's text, HTML and JSON reports, bounded in time and
# size. An archive (tar, compressed tar, zip) is read member by member in Python first: only
# the members whose content differs are extracted and given to diffoscope, next to a listing
# of every member's metadata, so a 150 MB archive with one changed member takes seconds
# where diffoscope on the whole archives took minutes (notes/libraries.md).

COMPRESSION_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, ValueError,
                  zlib.error, lzma.LZMAError)
LISTING = "listing.txt"


@dataclass(frozen=True)
class DiffReports:
    """One difference reported three ways, as diffoscope writes them."""

    text: bytes
    html: bytes
    json: bytes


@dataclass(frozen=True)
class Member:
    """One archive member: a listing line of its metadata, and its content's hash."""

    key: str  # its name, made unique when an archive holds a name twice
    line: str
    sha256: str | None  # None: not a regular file (its listing line says all)


def diff_report(diff: Difference, *, timeout: int = DIFFOSCOPE_TIMEOUT) -> bytes:
    """The text report of one difference (see `diff_reports`)."""
    return diff_reports(diff, timeout=timeout).text


def diff_reports(diff: Difference, *, timeout: int = DIFFOSCOPE_TIMEOUT,
                 max_report_size: int = DIFFOSCOPE_MAX_REPORT,
                 memory: int = DEFAULT_LIMITS.diffoscope_memory) -> DiffReports:
    """Text, HTML and JSON reports of one difference; plain notes where diffoscope can't.

    diffoscope runs with its address space limited to `memory` bytes (it once grew to 24 GiB
    on one 1 GiB file); when it fails or times out, the report compares the bytes instead.
    """
    if diff.a is None or diff.b is None:
        present = "a" if diff.a is not None else "b"
        return note_reports(diff.name, f"{diff.name}: only run {present} produced this output")
    header = (f"--- a/{diff.name}\tsha256:{diff.a.sha256}\n"
              f"+++ b/{diff.name}\tsha256:{diff.b.sha256}\n").encode()
    differ = differing_properties(diff.a, diff.b)
    sides = (f"differs in {', '.join(differ) or 'nothing'}\n"
             f"a: {describe_artifact(diff.a)}\nb: {describe_artifact(diff.b)}")
    # diffoscope compares contents only: a type, a link or a mode difference is said here.
    if "content" not in differ or diff.a.link is not None:
        return note_reports(diff.name, sides, header)
    if "mode" in differ:
        header += f"{sides}\n".encode()
    diffoscope = shutil.which("diffoscope")
    if diffoscope is None:
        return note_reports(diff.name, "(diffoscope is not installed: apt-get install -y "
                            "diffoscope-minimal)", header)
    with tempfile.TemporaryDirectory(prefix="rebuild-diff-") as tmp:
        work = Path(tmp)
        left, right, summary = diff.a.path, diff.b.path, ""
        kind = archive_kind(diff.a.path)
        if kind is not None and kind == archive_kind(diff.b.path):
            try:
                summary = stage_archives(kind, diff.a.path, diff.b.path, work / "a", work / "b")
                left, right = work / "a", work / "b"
            except ARCHIVE_ERRORS as exc:
                summary = (f"(could not read the {kind} archives member by member: {exc}; "
                           "diffoscope compares them whole)\n")
        reports = _run_diffoscope(diffoscope, left, right, diff.name, work, timeout,
                                  max_report_size, memory)
        if reports.failure is not None:
            return note_reports(diff.name, f"{reports.failure}\n"
                                + byte_report(diff.a.path, diff.b.path), header + summary.encode())
    return DiffReports(header + summary.encode() + reports.text, reports.html, reports.json)


def note_reports(name: str, note: str, header: bytes = b"") -> DiffReports:
    """Reports that carry a note only, in the three formats."""
    text = header + note.encode() + b"\n"
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(name)}'
            f"</title></head><body><pre>{html.escape(text.decode(errors='replace'))}</pre>"
            "</body></html>\n")
    document = {"diffoscope-json-version": 1, "source1": f"a/{name}", "source2": f"b/{name}",
                "unified_diff": None, "comments": note.splitlines(), "details": []}
    return DiffReports(text, page.encode(), json.dumps(document, indent=2).encode() + b"\n")


@dataclass(frozen=True)
class _Diffoscoped:
    text: bytes
    html: bytes
    json: bytes
    failure: str | None  # why diffoscope gave no report (then the reports are not used)


def _run_diffoscope(tool: str, left: Path, right: Path, name: str, work: Path, timeout: int,
                    limit: int, memory: int) -> _Diffoscoped:
    files = {fmt: work / f"report.{fmt}" for fmt in ("text", "html", "json")}
    # Report files are named relative to `work` (the cwd): the HTML title shows the command.
    # prlimit sets RLIMIT_AS for diffoscope and everything it starts (xxd, diff, …): past it,
    # allocations fail in diffoscope instead of the kernel's OOM killer choosing a victim.
    command = [find_prlimit(), f"--as={memory}", "--", tool,
               "--text", files["text"].name, "--html", files["html"].name,
               "--json", files["json"].name, "--text-color", "never", "--no-progress",
               "--timeout", str(timeout), "--max-report-size", str(limit),
               "--max-text-report-size", str(limit), "--max-page-size", str(limit),
               "--max-diff-input-lines", str(DIFFOSCOPE_MAX_DIFF_INPUT),
               "--exclude-directory-metadata", "yes", "--new-file", str(left), str(right)]
    # A session of its own, so that a timeout kills its helpers (xxd, diff, …) too.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work,
                          start_new_session=True,
                          env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8",
                               "TZ": "UTC", "HOME": "/nonexistent"}) as proc:
        try:
            _, stderr = proc.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return _Diffoscoped(b"", b"", b"", f"(diffoscope did not finish within "
                                f"{timeout + 30} s: the bytes are compared instead)")
    # Host paths out, a/NAME and b/NAME in: reports must not depend on where they were made.
    swaps: dict[str, Callable[[str], str]] = {
        "text": str, "html": html.escape, "json": lambda s: json.dumps(s)[1:-1]}
    out: dict[str, bytes] = {}
    for fmt, path in files.items():
        data = path.read_bytes() if path.is_file() else b""
        quote = swaps[fmt]
        for side, host in (("a", left), ("b", right)):
            data = data.replace(quote(str(host)).encode(), quote(f"{side}/{name}").encode())
        out[fmt] = data
    failed = proc.returncode not in (0, 1)
    why = stderr.strip()[-2000:].decode(errors="replace")
    if failed and (b"MemoryError" in stderr or b"Cannot allocate memory" in stderr
                   or proc.returncode < 0):
        return _Diffoscoped(b"", b"", b"", (
            f"(diffoscope stopped at its memory limit, [limits] diffoscope_memory = "
            f"{show_size(memory)} (exit {proc.returncode}): the bytes are compared instead; "
            f"its last words: {why[-300:] or '-'})"))
    problem = f"(diffoscope failed: {why})"
    if failed or len(out["json"]) > limit or not out["json"]:
        fallback = note_reports(name, problem if failed else
                                f"(the JSON report is over {limit} bytes or missing: see the "
                                "text report)")
        out["json"] = fallback.json
        out["html"] = out["html"] if out["html"] and not failed else fallback.html
    if len(out["text"]) > limit:  # diffoscope's own cut counts characters, not bytes
        out["text"] = out["text"][:limit] + f"\n[report cut at {limit} bytes]\n".encode()
    if failed:
        out["text"] += f"\n{problem}\n".encode()
    return _Diffoscoped(out["text"], out["html"], out["json"], None)


def find_prlimit() -> str:
    path = shutil.which("prlimit")
    if path is None:
        raise EnvironmentProblem("prlimit is not installed (it bounds diffoscope's memory); "
                                 "install it: apt-get install -y util-linux")
    return path


def byte_report(a: Path, b: Path, *, ranges: int = 20, block: int = 4096) -> str:
    """Where two files differ, read in chunks (any size, bounded memory): their sizes and
    hashes, and the first `ranges` runs of differing `block`-byte blocks, each from its first
    differing byte."""
    found: list[list[int]] = []  # [first differing byte, end of the run's last block]
    blocks = 0
    digests = hashlib.sha256(), hashlib.sha256()
    offset = 0
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            ca, cb = fa.read(CHUNK), fb.read(CHUNK)
            if not ca and not cb:
                break
            digests[0].update(ca)
            digests[1].update(cb)
            if ca != cb:
                for start in range(0, max(len(ca), len(cb)), block):
                    xa, xb = ca[start:start + block], cb[start:start + block]
                    if xa == xb:
                        continue
                    blocks += 1
                    at = offset + start
                    if found and found[-1][1] == at:
                        found[-1][1] = at + block
                    elif len(found) < ranges:
                        first = next((i for i, (x, y) in enumerate(zip(xa, xb, strict=False))
                                      if x != y), min(len(xa), len(xb)))
                        found.append([at + first, at + block])
            offset += max(len(ca), len(cb))
    size_a, size_b = a.stat().st_size, b.stat().st_size
    lines = [f"byte comparison: a is {size_a} bytes, sha256:{digests[0].hexdigest()}",
             f"                 b is {size_b} bytes, sha256:{digests[1].hexdigest()}",
             f"{blocks} block(s) of {block} bytes differ"
             + (f"; the first {len(found)} run(s) of them:" if found else "")]
    lines += [f"  from offset {first} (0x{first:x}) to {min(end, max(size_a, size_b))}"
              for first, end in found]
    return "\n".join(lines)


def archive_kind(path: Path) -> str | None:
    """"tar", "tar.gz", "tar.bz2", "tar.xz" or "zip" when `path` is one, else None."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return "zip" if zipfile.is_zipfile(path) else None
        compression = _compression(head)
        if compression is not None:
            with _open_tar_stream(path) as stream:
                head = stream.read(512)
        if head[257:262] != b"ustar":
            return None
        return "tar" if compression is None else f"tar.{compression}"
    except ARCHIVE_ERRORS:
        return None


def stage_archives(kind: str, a: Path, b: Path, dest_a: Path, dest_b: Path) -> str:
    """Lay out two archives for diffoscope: a listing, and the members whose content differs.

    Returns a summary for the top of the text report.
    """
    listed = [_list_zip(p) if kind == "zip" else _list_tar(p) for p in (a, b)]
    (head_a, members_a), (head_b, members_b) = listed
    by_a = {m.key: m for m in members_a}
    by_b = {m.key: m for m in members_b}
    keys = [m.key for m in members_a] + [m.key for m in members_b if m.key not in by_a]
    differ = [k for k in keys if (k in by_a) != (k in by_b)
              or (by_a[k].sha256 != by_b[k].sha256)]
    for path, dest, head, members in ((a, dest_a, head_a, members_a),
                                      (b, dest_b, head_b, members_b)):
        dest.mkdir()
        notes = _extract_members(kind, path, dest, set(differ))
        lines = [*head, *notes, *(m.line for m in members)]
        (dest / LISTING).write_text("\n".join(lines) + "\n", encoding="utf-8")
    shown = ", ".join(differ[:20]) + (f" and {len(differ) - 20} more" if len(differ) > 20
                                       else "")
    return (f"{kind} archive: {len(members_a)} member(s) in a, {len(members_b)} in b; "
            f"content differs in {len(differ)}: {shown or 'none (metadata only)'}; "
            f"{LISTING} compares every member's metadata\n")


class _HashingReader:
    """A read-only stream that hashes what passes through it (the decompressed tar)."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _compression(head: bytes) -> str | None:
    return next((c for magic, c in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def _open_tar_stream(path: Path) -> io.BufferedIOBase:
    """The tar inside `path`, decompressed as it is read."""
    with path.open("rb") as f:
        compression = _compression(f.read(8))
    if compression == "gz":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    return path.open("rb")


def _list_tar(path: Path) -> tuple[list[str], list[Member]]:
    head = [f"archive: sha256:{sha256_file(path)} {path.stat().st_size} bytes"]
    with path.open("rb") as f:
        if f.read(2) == b"\x1f\x8b":
            head.append(_gzip_header(path))
    members: list[Member] = []
    seen: dict[str, int] = {}
    with _open_tar_stream(path) as raw:
        reader = _HashingReader(raw)
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for info in tar:
                key = _unique(info.name, seen)
                sha = None
                if info.isreg():
                    digest = hashlib.sha256()
                    extracted = tar.extractfile(info)
                    assert extracted is not None
                    while chunk := extracted.read(CHUNK):
                        digest.update(chunk)
                    sha = digest.hexdigest()
                members.append(Member(key, _tar_line(info, sha), sha))
        reader.drain()
    head.append(f"tar stream: sha256:{reader.digest.hexdigest()} {reader.size} bytes")
    return head, members


def _tar_line(info: tarfile.TarInfo, sha: str | None) -> str:
    kinds = {tarfile.REGTYPE: "-", tarfile.AREGTYPE: "-", tarfile.DIRTYPE: "d",
             tarfile.SYMTYPE: "l", tarfile.LNKTYPE: "h", tarfile.CHRTYPE: "c",
             tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p"}
    line = (f"{kinds.get(info.type, '?')}{stat.filemode(info.mode)[1:]} "
            f"{info.uid}/{info.gid} {info.uname or '-'}/{info.gname or '-'} {info.size:>10} "
            f"{info.mtime} {info.name}")
    if info.linkname:
        line += f" -> {info.linkname}"
    if info.pax_headers:
        line += " pax:" + ",".join(f"{k}={v}" for k, v in sorted(info.pax_headers.items()))
    return line + (f" sha256:{sha[:16]}" if sha else "")


def _gzip_header(path: Path) -> str:
    with path.open("rb") as f:
        fixed = f.read(10)
        name = b""
        if fixed[3] & 0x08:  # FNAME: a NUL-terminated original file name follows
            if fixed[3] & 0x04:  # FEXTRA comes first
                f.read(int.from_bytes(f.read(2), "little"))
            while (c := f.read(1)) not in (b"", b"\0"):
                name += c
    mtime = int.from_bytes(fixed[4:8], "little")
    return (f"gzip header: mtime {mtime}, name {name.decode(errors='replace') or '-'}, "
            f"flags {fixed[3]:#04x}, xfl {fixed[8]}, os {fixed[9]}")


def _list_zip(path: Path) -> tuple[list[str], list[Member]]:
    head = [f"archive: sha256:{sha256_file(path)} {path.stat().st_size} bytes"]
    members: list[Member] = []
    seen: dict[str, int] = {}
    with zipfile.ZipFile(path) as zf:
        head.append(f"zip comment: {zf.comment!r}")
        for info in zf.infolist():
            key = _unique(info.filename, seen)
            sha = None
            if not info.is_dir():
                digest = hashlib.sha256()
                with zf.open(info) as member:
                    while chunk := member.read(CHUNK):
                        digest.update(chunk)
                sha = digest.hexdigest()
            mode = stat.filemode(info.external_attr >> 16) if info.external_attr >> 16 else "-"
            line = (f"{mode} {info.file_size:>10} {info.date_time} crc {info.CRC:08x} "
                    f"method {info.compress_type} system {info.create_system} "
                    f"version {info.create_version} extra {info.extra.hex() or '-'} "
                    f"{info.filename}")
            if info.comment:
                line += f" comment {info.comment!r}"
            members.append(Member(key, line + (f" sha256:{sha[:16]}" if sha else ""), sha))
    return head, members


def _extract_members(kind: str, path: Path, dest: Path, keys: set[str]) -> list[str]:
    """Write the named members' content under dest/members; returns notes on what failed."""
    if not keys:
        return []
    notes: list[str] = []
    seen: dict[str, int] = {}

    def write(key: str, stream: IO[bytes]) -> None:
        target = _member_path(dest, key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("xb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
        except OSError as exc:
            notes.append(f"(member {key} not extracted for comparison: {exc.strerror})")

    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = _unique(info.filename, seen)
                if key in keys and not info.is_dir():
                    with zf.open(info) as member:
                        write(key, member)
        return notes
    with _open_tar_stream(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for entry in tar:
            key = _unique(entry.name, seen)
            if key in keys and entry.isreg():
                extracted = tar.extractfile(entry)
                assert extracted is not None
                write(key, extracted)
    return notes


def _member_path(dest: Path, key: str) -> Path:
    # Never outside dest: no absolute paths, and ".." becomes a plain name.
    parts = [p if p != ".." else "__" for p in key.split("/") if p not in ("", ".")]
    return dest.joinpath("members", *(parts or ["__unnamed__"]))


def _unique(name: str, seen: dict[str, int]) -> str:
    seen[name] = seen.get(name, 0) + 1
    return name if seen[name] == 1 else f"{name}#{seen[name]}"



# What a kept copy may keep of a mode: no setuid, setgid or sticky bit, nothing writable by
# others. rebuild runs as root, so a copy it writes is owned by root: a build's setuid file
# kept as is would give any user who runs it euid 0.
KEEP_MODE_MASK = 0o0775


def keep_outputs(out_dirs: Mapping[str, Path], dest: Path) -> None:
    """Copy each run's /out tree to dest/<run> (`rebuild build --keep DIR`), links as links.

    Modes are kept within `KEEP_MODE_MASK`; what is neither a file, a link nor a directory
    (a FIFO, a socket) is not copied.
    """
    for run in out_dirs:
        if (dest / run).exists():
            raise UsageError(f"--keep: {dest / run} already exists; remove it or keep elsewhere")
    for run, out_dir in out_dirs.items():
        _copy_tree_unprivileged(out_dir, dest / run)


def _copy_tree_unprivileged(src: Path, target: Path) -> None:
    target.mkdir(parents=True, mode=0o700)
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        there = target / here.relative_to(src)
        for name in [*dirnames, *filenames]:
            st = (here / name).lstat()
            if stat.S_ISLNK(st.st_mode):
                (there / name).symlink_to((here / name).readlink())
                os.utime(there / name, ns=(st.st_atime_ns, st.st_mtime_ns),
                         follow_symlinks=False)
            elif stat.S_ISDIR(st.st_mode):
                (there / name).mkdir(mode=0o700)
                (there / name).chmod((stat.S_IMODE(st.st_mode) & KEEP_MODE_MASK) | 0o700)
            elif stat.S_ISREG(st.st_mode):
                # O_NOFOLLOW: never read through a link to a host file, whatever lstat saw.
                fd = os.open(here / name, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as f_in, (there / name).open("xb") as f_out:
                    copy_sparse(f_in, f_out)
                (there / name).chmod(stat.S_IMODE(st.st_mode) & KEEP_MODE_MASK)
                os.utime(there / name, ns=(st.st_atime_ns, st.st_mtime_ns))  # as copy2 did
            elif stat.S_ISFIFO(st.st_mode):  # made anew: reading it would block forever
                os.mkfifo(there / name, stat.S_IMODE(st.st_mode) & KEEP_MODE_MASK)
            # A socket holds no data and is left out, like any other special file.
    target.chmod((stat.S_IMODE(src.lstat().st_mode) & KEEP_MODE_MASK) | 0o700)


def copy_sparse(fin: IO[bytes], fout: IO[bytes]) -> None:
    """Copy a file with its holes kept as holes (a 20 GiB sparse output stays a few blocks
    on disk): only the data extents are read and written."""
    size = os.fstat(fin.fileno()).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
        fin.seek(start)
        fout.seek(start)
        remaining = end - start
        while remaining > 0 and (chunk := fin.read(min(CHUNK, remaining))):
            fout.write(chunk)
            remaining -= len(chunk)
        offset = end
    fout.truncate(size)
