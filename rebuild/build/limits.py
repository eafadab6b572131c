"""Limits: what one build, download or bundle may cost, as data (README, "Limits").

A build that writes a million files, a log of gigabytes, a url that never stops sending or
a bundle that inflates a thousandfold would otherwise run until the disk or the memory is
gone. Each limit has a default here; a recipe's `[limits]` table overrides the build's
and the downloads', and `rebuild verify FILE` takes options for a bundle's. Hitting one is
an error that names the limit and how to raise it, never a silent cut (except the log, which
is kept as its head and tail, with a line that says so).
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

from rebuild.errors import UsageError

SIZE_RE = re.compile(r"^([1-9][0-9]*)([kmgt]?)$")
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Limits:
    """A build's limits (recipe `[limits]`); sizes in bytes, times in seconds."""

    max_outputs: int = 50_000  # files (and links) declared outputs match, in each run
    max_output_size: int = 16 << 30  # their total size, in each run
    max_log_size: int = 64 << 20  # each run's log kept in the store: head and tail
    max_download_size: int = 8 << 30  # each url source or wheel download
    download_timeout: int = 3600  # seconds for a whole download (not per read)
    diffoscope_memory: int = 384 << 20  # diffoscope's address space (RLIMIT_AS)


# A [[test]] suite's JUnit XML file: read whole and parsed in memory, so bounded; a suite
# that writes more is a failed suite (exit 4), never a silent cut.
MAX_RESULTS_SIZE = 16 << 20


@dataclass(frozen=True)
class BundleLimits:
    """What extracting an untrusted bundle (`rebuild verify FILE`) may write."""

    max_size: int = 32 << 30  # bytes extracted, in all (the tar inside a gzip, its members)
    max_ratio: int = 200  # extracted bytes per byte of the bundle file


DEFAULT = Limits()


def parse_size(value: object, *, what: str) -> int:
    """Bytes from an integer or a string such as "512m", "8g" (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = SIZE_RE.match(value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise UsageError(f"{what}: {value!r} is not a size; write a positive number of bytes "
                         "or a number with k, m, g or t (e.g. \"512m\", \"8g\")")
    return int(match[1]) * UNITS[match[2]]


def show_size(size: int) -> str:
    """A size the way a user writes it back into a recipe (exact when it can be)."""
    for unit in ("t", "g", "m", "k"):
        if size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]}{unit}"
    return str(size)


class HeadTail:
    """The first and last `limit // 2` bytes of a stream, in memory bounded by `limit`.

    A log is read chunk by chunk; what falls between head and tail is counted, not kept, and
    `value()` marks the cut with a line that says how much is missing and which limit cut it.
    """

    def __init__(self, limit: int, what: str = "[limits] max_log_size") -> None:
        self.limit, self.what = limit, what
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit // 2 - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        keep = self.limit - self.limit // 2
        # Whole chunks only leave from the left; `value` trims the first one that remains.
        while self.tail and self.tail_size - len(self.tail[0]) >= keep:
            self.tail_size -= len(self.tail.popleft())

    def value(self) -> bytes:
        tail = b"".join(self.tail)
        tail = tail[max(0, len(tail) - (self.limit - self.limit // 2)):]
        cut = self.total - len(self.head) - len(tail)
        if cut <= 0:
            return bytes(self.head) + tail
        note = (f"\n[rebuild: {cut} bytes of {self.total} left out here: {self.what} is "
                f"{show_size(self.limit)}]\n").encode()
        return bytes(self.head) + note + tail
