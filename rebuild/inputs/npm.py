"""npm: reading a `package-lock.json` (lockfile v2 and v3) and laying out an offline cache.

Pure, no network (fetch.py downloads what `parse_npm_lock` names). Every package the lock
installs must come from a registry tarball pinned by sha512 `integrity`: git, file and link
dependencies, entries without integrity, sha1-only integrity and entries without a
`resolved` address are refused, each naming the package, because the build has no network
to reach for them.

The offline cache is npm's own content-addressed store (cacache): a tarball lives at
`_cacache/content-v2/sha512/<2 hex>/<2 hex>/<126 hex>`. pacote reads a tarball by the lock's
integrity from there before it asks the network (`cacache.get.stream.byDigest`), so
`npm ci --offline` installs from it without any index entry; nothing in it depends on time.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from pathlib import PurePosixPath
from typing import Any

from rebuild.errors import UsageError
from rebuild.evidence.provenance import NpmPackage

NODE_MODULES = "node_modules/"
CACACHE_DIR = "_cacache"


def parse_npm_lock(data: bytes, *, source: str = "<npm lock>") -> tuple[NpmPackage, ...]:
    """The registry tarballs a `package-lock.json` (v2 or v3) installs, sorted and unique.

    Bundled packages (`inBundle`) come inside their parent's tarball and are skipped.
    """
    try:
        lock: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{source}: not a package-lock.json ({exc}); point npm_lock at the "
                         "file `npm install --package-lock-only` writes") from None
    if not isinstance(lock, dict):
        raise UsageError(f"{source}: not a package-lock.json (a JSON object is expected)")
    version = lock.get("lockfileVersion")
    packages = lock.get("packages")
    if version not in (2, 3) or not isinstance(packages, dict):
        raise UsageError(f"{source}: lockfileVersion {version!r} is not supported (2 and 3 "
                         "are, with a `packages` section); regenerate it with npm 7 or "
                         "later: `npm install --package-lock-only`")
    found: dict[str, NpmPackage] = {}
    versions: dict[tuple[str, str], NpmPackage] = {}
    for path, entry in sorted(packages.items()):
        if path == "":
            continue  # the project itself
        if not isinstance(entry, dict):
            raise UsageError(f"{source}: packages[{path!r}] is not an object")
        if entry.get("inBundle") or entry.get("extraneous"):
            continue  # inside a parent's tarball; or not installed by `npm ci`
        package = _locked_package(path, entry, source)
        other = versions.setdefault((package.name, package.version), package)
        if other.sha512 != package.sha512:
            raise UsageError(f"{source}: {package.name}@{package.version} is locked with two "
                             "different integrity values; regenerate the lock")
        known = found.get(package.sha512)
        if known is None or (package.name, package.version) < (known.name, known.version):
            found[package.sha512] = package
    return tuple(sorted(found.values(), key=lambda p: (p.name, p.version, p.sha512)))


def _locked_package(path: str, entry: dict[str, Any], source: str) -> NpmPackage:
    name = package_name(path, entry)
    version = str(entry.get("version", ""))
    where = f"{source}: {name}@{version or '?'} ({path})"
    resolved = entry.get("resolved")
    resolved = resolved if isinstance(resolved, str) else None
    if resolved is not None and _is_git(resolved, version):
        raise UsageError(f"{where}: a git dependency ({resolved}); rebuild gives the build "
                         "registry tarballs only: depend on a published version instead")
    if (resolved or "").startswith("file:") or version.startswith("file:"):
        raise UsageError(f"{where}: a file dependency ({resolved or version}); rebuild gives "
                         "the build registry tarballs only: depend on a published version "
                         "instead")
    if entry.get("link") or not path.startswith(NODE_MODULES):
        raise UsageError(f"{where}: a link to a local directory ({resolved or path}: a "
                         "workspace or file: dependency); rebuild gives the build registry "
                         "tarballs only: depend on a published version instead")
    integrity = entry.get("integrity")
    if not isinstance(integrity, str) or not integrity.strip():
        raise UsageError(f"{where}: no integrity in the lock; every package must be pinned by "
                         "its sha512: regenerate the lock (`npm install --package-lock-only`) "
                         "against a registry that publishes integrity")
    sha512 = _sha512(integrity, where)
    if resolved is None:
        raise UsageError(f"{where}: no `resolved` address in the lock (written with "
                         "omit-lockfile-registry-resolved?); without it npm asks the registry "
                         "during the build: regenerate the lock with `npm install "
                         "--package-lock-only --omit-lockfile-registry-resolved=false`")
    if urllib.parse.urlsplit(resolved).scheme not in ("http", "https"):
        raise UsageError(f"{where}: resolved {resolved!r} is not an http(s) address of a "
                         "registry tarball")
    if not version:
        raise UsageError(f"{where}: no version in the lock")
    return NpmPackage(name, version, resolved, sha512)


def package_name(path: str, entry: dict[str, Any]) -> str:
    """The installed package's name: the lock's `name` (an alias names its real package),
    else the path after the last `node_modules/`."""
    name = entry.get("name")
    if isinstance(name, str) and name:
        return name
    return path.rsplit(NODE_MODULES, 1)[-1]


def _is_git(resolved: str, version: str) -> bool:
    return resolved.startswith(("git+", "git:", "github:", "gitlab:", "bitbucket:")) or \
        version.startswith(("git+", "git:", "github:"))


def _sha512(integrity: str, where: str) -> str:
    """The sha512 of an SRI string (`sha512-<base64>`, maybe among other algorithms)."""
    hashes = integrity.split()
    for token in hashes:
        algorithm, _, value = token.partition("-")
        if algorithm != "sha512":
            continue
        try:
            raw = base64.b64decode(value.split("?", 1)[0], validate=True)
        except (binascii.Error, ValueError):
            raise UsageError(f"{where}: integrity {token!r} is not valid base64") from None
        if len(raw) != 64:
            raise UsageError(f"{where}: integrity {token!r} is not a sha512 digest")
        return raw.hex()
    raise UsageError(f"{where}: integrity {integrity!r} has no sha512 (sha1 alone is too weak "
                     "to pin a package); regenerate the lock with npm 7 or later so that it "
                     "records sha512")


def cache_path(sha512: str) -> PurePosixPath:
    """Where npm's cache (cacache) keeps the content with this sha512, below the cache dir."""
    return PurePosixPath(CACACHE_DIR, "content-v2", "sha512", sha512[:2], sha512[2:4],
                         sha512[4:])
