"""The real-world corpus: projects nobody here wrote, as the tests and bench/realworld.py
(which writes RESULTS.md) both build them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HELLO_URL = "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10.orig.tar.gz"
HELLO_SHA256 = "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b"
HELLO_EPOCH = 1416300000  # 2014-11-18, hello 2.10's release
# Upstream's plain build; the binary's mode is set (the umask varies).
HELLO_BUILD = ("./configure --prefix=/usr {flags}>/dev/null && make >/dev/null && "
               "mkdir -p /out && cp hello /out/hello && chmod 755 /out/hello")
# The usual fix for an embedded build directory (DWARF comp_dir, __FILE__): map it away.
# Double quotes: the shell expands $PWD for configure; single ones would leave "$PWD" to
# make, which reads it as $(P) followed by "WD", and the map would match nothing.
PREFIX_MAP = 'CFLAGS="-g -O2 -ffile-prefix-map=$PWD=." '


def hello_recipe(directory: Path, image: str, *, prefix_map: bool) -> Path:
    """GNU hello 2.10 from Debian's copy of the upstream tarball, with or without the map."""
    name = "gnu-hello-mapped" if prefix_map else "gnu-hello"
    build = HELLO_BUILD.format(flags=PREFIX_MAP if prefix_map else "")
    recipe = directory / f"{name}.toml"
    recipe.write_text(
        f'[recipe]\nname = "{name}"\nversion = "2.10"\n\n'
        f'[source]\nurl = "{HELLO_URL}"\nsha256 = "{HELLO_SHA256}"\n\n'
        f'[environment]\nimage = "{image}"\nsource_date_epoch = {HELLO_EPOCH}\n\n'
        f'[build]\ncommand = ["sh", "-c", {json.dumps(build)}]\n'
        'outputs = ["hello"]\ntimeout = 1200\nmemory = "2g"\n\n[check]\nvary = ["all"]\n')
    return recipe


@dataclass(frozen=True)
class PypiEntry:
    spec: str  # NAME==VERSION
    release: str  # name@version
    backend_pin: str  # what `rebuild recipe pypi` must pin
    unset_epoch: bool  # flit without SOURCE_DATE_EPOCH
    wheel_sha256: str  # the published wheel


PYPI = (
    PypiEntry("idna==3.10", "idna@3.10", "flit-core==3.9.0", True,
              "946d195a0d259cbba61165e88e65941f16e9b36ea6ddb97f00452bae8b1287d3"),
    PypiEntry("attrs==24.2.0", "attrs@24.2.0", "hatchling==1.25.0", False,
              "81921eb96de3191c8258c199618104dd27ac608d9366f5e35d011eae1867ede2"),
)
