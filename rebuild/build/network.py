"""Network hints: recognising, in a failed run's log, a build that reached for the network.

Builds run with no network (`network_mode: none`), so a build that downloads what it needs
fails, often after minutes of retries, with only a resolver error in its log. `network_hint`
finds that error and says which inputs rebuild can fetch ahead and give the build offline.
Pure: a log in, a hint (or None) out.
"""

from __future__ import annotations

import re

# What resolvers and the tools on top of them print when a host name cannot be resolved
# (glibc's gai_strerror, Node's getaddrinfo codes, curl, wget, git, pip/urllib3, Go, Rust).
DNS_ERRORS = re.compile(
    r"EAI_AGAIN|ENOTFOUND|EAI_NONAME|EAI_NODATA"
    r"|Temporary failure in name resolution"
    r"|Name or service not known"
    r"|No address associated with hostname"
    r"|Could not resolve host"
    r"|Could not resolve proxy"
    r"|unable to resolve host address"
    r"|Failed to resolve '[^']*'|NameResolutionError"
    r"|getaddrinfo failed"
    r"|no such host"
    r"|failed to lookup address information",
    re.IGNORECASE)

# The input kinds rebuild fetches before the build and gives it offline (docs/formats.md).
OFFLINE_INPUTS = (
    "[source] url/git (the sources, fetched and pinned)",
    "[environment] python_lock (Python wheels, installed into a venv)",
    "[environment] npm_lock (npm packages as an offline cache: run `npm ci --offline`)",
)


def network_hint(log: bytes | str) -> str | None:
    """A hint for a failed run whose log shows it tried to resolve a host name, else None."""
    text = log.decode(errors="replace") if isinstance(log, bytes) else log
    match = DNS_ERRORS.search(text)
    if match is None:
        return None
    return (f"the build tried to reach the network ({match.group(0)!r} in its log), but "
            "builds run with no network; rebuild fetches these inputs ahead and gives them "
            "to the build offline: " + "; ".join(OFFLINE_INPUTS)
            + "; anything else must be in the source")
