"""reprotest, the peer to beat, on one corpus entry: detected?, which culprits, how long.

    python tests/corpus/run_reprotest.py tests/corpus/NAME [...]

`run_reprotest(entry_dir)` runs `reprotest --variations=+all --auto-build` on the host (the
null virtual server: builds in /tmp, one after another) with the entry's build.sh writing to
`out/` and SOURCE_DATE_EPOCH set as the corpus recipes set it, and returns `(detected,
culprits, seconds)`, culprits in rebuild's variation names.
This file imports nothing from rebuild, so a benchmark can call it on its own.

What reprotest cannot vary here (root, Debian 12, no sudo, no extra users, no locales-all),
checked with reprotest 0.7.23:
- user_group: needs sudo and `user_group.available` users; reprotest prints "IGNORING
  user_group variation" and builds as root every time.
- locales: the experiment runs with LANG/LC_ALL=et_EE.UTF-8 (its default), a locale this host
  does not have, so glibc falls back to C: a locale-dependent sort still sorts as in C.
- domain_host: without sudo it runs `unshare --uts` itself, which works as root.
- kernel (uname -r via setarch) and aslr have no rebuild counterpart; they are reported
  under their own names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# reprotest's variation names -> rebuild's (design.md, "Variations").
NAMES = {"environment": "env", "build_path": "build_path", "kernel": "kernel", "aslr": "aslr",
         "num_cpus": "cpus", "time": "time", "user_group": "user",
         "fileordering": "file_order", "domain_host": "hostname", "home": "home",
         "locales": "locale", "exec_path": "exec_path", "timezone": "timezone",
         "umask": "umask"}
CANNOT_VARY_HERE = {
    "user_group": "needs sudo and extra users: reprotest ignores it (builds as root)",
    "locales": "et_EE.UTF-8 is not installed on this host: glibc falls back to C",
}
# The host's Debian tools (not a pyenv or venv python): what the corpus images hold.
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_COMMAND = 'OUT="$PWD/out" sh build.sh'
# What the corpus recipes pin (corpus.write_recipe): reprotest sets none of its own.
SOURCE_DATE_EPOCH = "1700000000"


def reprotest_verdict(entry_dir: Path, timeout: float = 900) -> tuple[bool, list[str], float,
                                                                      str]:
    """Run reprotest on one entry; (detected, culprits, seconds, its output)."""
    with tempfile.TemporaryDirectory(prefix="reprotest-home-") as home:
        started = time.monotonic()
        proc = subprocess.run(
            ["reprotest", "--variations=+all", "--auto-build", "--min-cpus=1",
             "-c", BUILD_COMMAND, str(entry_dir), "out"],
            capture_output=True, text=True, timeout=timeout, check=False,
            env={"PATH": HOST_PATH, "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
                 "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})
        seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    if "Reproducible, even when varying as much as reprotest knows how to" in output:
        return False, [], seconds, output
    if "Not reproducible, even when fixing as much as reprotest knows how to" in output:
        return True, [], seconds, output
    found = re.search(r"Observed unreproducibility when varying each of the following:\n(.*)\n",
                      output)
    if found is None:
        raise RuntimeError(f"reprotest on {entry_dir} said nothing conclusive "
                           f"(exit {proc.returncode}):\n{output[-3000:]}")
    culprits = sorted(NAMES.get(v, v) for v in found.group(1).split())
    return True, culprits, seconds, output


def run_reprotest(entry_dir: Path, timeout: float = 900) -> tuple[bool, list[str], float]:
    """(detected, culprits in rebuild's names, wall seconds) for one corpus entry."""
    detected, culprits, seconds, _ = reprotest_verdict(entry_dir, timeout)
    return detected, culprits, seconds


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        result = run_reprotest(Path(arg).resolve())
        print(f"{os.path.basename(arg)}: detected={result[0]} culprits={result[1]} "
              f"{result[2]:.1f} s", flush=True)
