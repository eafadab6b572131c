"""Base images: parse image definitions, build a root filesystem with mmdebstrap, and write it
as a deterministic docker-archive whose image id is a content digest.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import IO, Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from rebuild.build.recipe import MAX_EPOCH, parse_toml
from rebuild.errors import BuildFailed, EnvironmentProblem, StoreError, UsageError
from rebuild.evidence.provenance import DebPackage
from rebuild.store.layout import (
    IMAGE_ID_ANN,
    IMAGE_REF_ANN,
    KIND,
    TITLE,
    Descriptor,
    Store,
    canonical_json,
)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Variant = Literal[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
]
VARIANTS: tuple[str, ...] = get_args(Variant)

# Docker's reference grammar (distribution/reference): path components separated by "/".
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_PATTERN = rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$"
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
ImageName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ImageTag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
Suite = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Mirror = Annotated[str, StringConstraints(pattern=r"^(https?|file)://[^\s'\"]+$")]
# A Debian package name, optionally with ":arch" and "=version" as mmdebstrap --include takes.
PackageSpec = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$")
]


class ImageDefinition(BaseModel):
    """The [image] table of images/NAME.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: ImageName
    tag: ImageTag
    suite: Suite
    mirror: Mirror = DEFAULT_MIRROR
    variant: Variant
    # Lax so that a TOML array becomes the tuple; elements stay strict strings.
    packages: tuple[PackageSpec, ...] = Field(default=(), strict=False)
    source_date_epoch: Annotated[int, Field(ge=0, le=MAX_EPOCH)]


class ImageFile(BaseModel):
    """A whole image definition file: exactly one [image] table."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    image: ImageDefinition


_FIELD_HINTS: dict[str, str] = {
    "image": "an [image] table",
    "name": 'a lowercase docker repository name, e.g. name = "rebuild/debian-c"',
    "tag": 'a docker tag, e.g. tag = "bookworm"',
    "suite": 'a Debian suite or codename, e.g. suite = "bookworm"',
    "mirror": f'an http(s) URL, e.g. mirror = "{DEFAULT_MIRROR}"',
    "variant": "one of " + ", ".join(VARIANTS) + ', e.g. variant = "apt"',
    "packages": 'a list of Debian package names, e.g. packages = ["build-essential"]',
    "source_date_epoch": "an integer (seconds since 1970), e.g. source_date_epoch = 1700000000",
}


@dataclass(frozen=True)
class DockerArchive:
    path: Path
    image_id: str  # "sha256:<hex>" of the config JSON: what Docker reports as the image id
    reference: str  # "name:tag@sha256:<hex>" with the image id
    layer_diff_id: str  # "sha256:<hex>" of the uncompressed layer tar
    size: int  # bytes of the docker-archive file


# --- Definitions -------------------------------------------------------------------------------


def load_image_definition(path: Path) -> ImageDefinition:
    """Read and validate an image definition file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"{path}: cannot read image definition ({exc}); check the path passed"
        ) from exc
    return parse_image_definition(parse_toml(text, str(path)), str(path))


def parse_image_definition(data: Mapping[str, Any], source: str) -> ImageDefinition:
    """Validate parsed TOML; `source` names the file in error messages."""
    try:
        return ImageFile.model_validate(dict(data)).image
    except ValidationError as exc:
        problems = [_describe_error(err, source) for err in exc.errors()]
        raise UsageError("\n".join(problems)) from None


def _describe_error(err: Mapping[str, Any], source: str) -> str:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    key = str(loc[-1]) if loc else "image"
    where = _format_loc(loc)
    table = "the top level" if len(loc) <= 1 else f"[{_format_loc(loc[:-1])}]"
    if err["type"] == "extra_forbidden":
        valid = ["image"] if len(loc) <= 1 else list(ImageDefinition.model_fields)
        close = difflib.get_close_matches(key, valid, n=1)
        fix = f"did you mean {close[0]!r}?" if close else "remove it"
        return f"{source}: unknown key {key!r} in {table}; {fix} (valid keys: {', '.join(valid)})"
    field = str(loc[1]) if len(loc) > 1 else "image"
    hint = _FIELD_HINTS.get(field, "")
    if err["type"] == "missing":
        return f"{source}: missing key {key!r} in {table}; add {hint}"
    if err["type"] in ("string_pattern_mismatch", "literal_error"):
        return f"{source}: {where} = {err['input']!r} is not valid; expected {hint}"
    return f"{source}: {where}: {err['msg']}; expected {hint}"


def _format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def definition_digest(defn: ImageDefinition) -> str:
    """sha256 of the canonical JSON of the definition, defaults included."""
    return "sha256:" + hashlib.sha256(canonical_json(defn.model_dump(mode="json"))).hexdigest()


# --- Root filesystem ---------------------------------------------------------------------------


def mmdebstrap_command(
    defn: ImageDefinition, out_tar: Path, executable: str = "mmdebstrap"
) -> list[str]:
    """The mmdebstrap command line that builds `defn` into the tar `out_tar`."""
    # mmdebstrap copies the host's /etc/resolv.conf and /etc/hostname into the rootfs and adds
    # signed-by to sources.list depending on the host's keyrings (mmdebstrap(1),
    # SOURCE_DATE_EPOCH): drop the first two (Docker provides them in every container) and write
    # a sources.list that depends on the definition only.
    sources = f"deb {defn.mirror} {defn.suite} main"
    hook = (
        'rm -f "$1/etc/resolv.conf" "$1/etc/hostname"'
        f' && echo {shlex.quote(sources)} > "$1/etc/apt/sources.list"'
    )
    # The extract variant runs no customize hooks.
    hook_option = "--extract-hook" if defn.variant == "extract" else "--customize-hook"
    cmd = [executable, f"--variant={defn.variant}"]
    if defn.packages:
        cmd.append("--include=" + ",".join(defn.packages))
    cmd += ["--mode=root", "--format=tar", f"{hook_option}={hook}"]
    cmd += [defn.suite, str(out_tar), defn.mirror]
    return cmd


def build_rootfs(defn: ImageDefinition, out_tar: Path, *, log: Callable[[str], None]) -> None:
    """Build the root filesystem tar of `defn` with mmdebstrap (needs root).

    With SOURCE_DATE_EPOCH set, mmdebstrap clamps mtimes, sorts the tar and removes logs,
    apt lists and ldconfig's aux-cache, so two runs against the same mirror state give the
    same bytes. A new package version on the mirror changes the result.
    """
    executable = shutil.which("mmdebstrap")
    if executable is None:
        raise EnvironmentProblem(
            "mmdebstrap is not installed; it builds the base images. "
            "Install it: apt-get install -y mmdebstrap"
        )
    partial = out_tar.with_name(out_tar.name + ".partial")
    cmd = mmdebstrap_command(defn, partial, executable)
    env = {
        "PATH": IMAGE_PATH,
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(defn.source_date_epoch),
        "TMPDIR": tempfile.gettempdir(),
    }
    # A proxy changes how packages are fetched, not what they contain.
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        if name in os.environ:
            env[name] = os.environ[name]
    log(f"SOURCE_DATE_EPOCH={defn.source_date_epoch} {shlex.join(cmd)}")
    tail: deque[str] = deque(maxlen=20)
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            log(line.rstrip())
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    if returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildFailed(
            f"mmdebstrap failed (exit {returncode}) building {defn.name}:{defn.tag}; "
            "check the suite, mirror and package names. Last output:\n" + "\n".join(tail)
        )
    partial.replace(out_tar)


def read_packages(rootfs_tar: Path) -> tuple[DebPackage, ...]:
    """Installed packages from var/lib/dpkg/status in the rootfs tar, sorted by name.

    Empty when the rootfs has no dpkg database (variant "extract").
    """
    with tarfile.open(rootfs_tar) as tar:
        for member in tar:
            if _layer_name(member.name) == "var/lib/dpkg/status" and member.isfile():
                status = tar.extractfile(member)
                assert status is not None
                return _parse_dpkg_status(status.read().decode("utf-8", errors="replace"))
    return ()


def _parse_dpkg_status(text: str) -> tuple[DebPackage, ...]:
    packages = []
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status") == "install ok installed":
            packages.append(
                DebPackage(fields["Package"], fields["Version"], fields.get("Architecture", ""))
            )
    return tuple(sorted(packages, key=lambda p: (p.name, p.architecture, p.version)))


# --- Docker archive ----------------------------------------------------------------------------

# dpkg architecture -> (GOARCH, variant) as Docker and OCI name them.
_DOCKER_ARCHES: dict[str, tuple[str, str | None]] = {
    "amd64": ("amd64", None),
    "arm64": ("arm64", "v8"),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v5"),
    "i386": ("386", None),
    "ppc64el": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64el": ("mips64le", None),
}


@cache
def host_docker_architecture() -> tuple[str, str | None]:
    """The host's Debian architecture (what mmdebstrap builds) as Docker names it."""
    try:
        result = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EnvironmentProblem(
            f"cannot run dpkg --print-architecture ({exc}); base images are built on Debian hosts"
        ) from exc
    arch = result.stdout.strip()
    if arch not in _DOCKER_ARCHES:
        raise EnvironmentProblem(
            f"unsupported host architecture {arch!r}; use one of " + ", ".join(_DOCKER_ARCHES)
        )
    return _DOCKER_ARCHES[arch]


def write_docker_archive(rootfs_tar: Path, defn: ImageDefinition, out: Path) -> DockerArchive:
    """Write `rootfs_tar` as a one-layer docker-archive at `out`, byte for byte deterministic."""
    epoch = defn.source_date_epoch
    out.parent.mkdir(parents=True, exist_ok=True)
    layer_fd, layer_name = tempfile.mkstemp(dir=out.parent, prefix=".layer-", suffix=".tar")
    partial = out.with_name(out.name + ".partial")
    try:
        with os.fdopen(layer_fd, "w+b") as layer:
            _write_layer(rootfs_tar, layer, epoch)
            layer_size = layer.tell()
            layer.seek(0)
            layer_hex = hashlib.file_digest(layer, "sha256").hexdigest()
            layer.seek(0)

            config = _image_config(defn, f"sha256:{layer_hex}")
            config_hex = hashlib.sha256(config).hexdigest()
            manifest = canonical_json(
                [
                    {
                        "Config": f"{config_hex}.json",
                        "RepoTags": [f"{defn.name}:{defn.tag}"],
                        "Layers": [f"{layer_hex}/layer.tar"],
                    }
                ]
            )
            # Sorted by name, as every tar here.
            entries: list[tuple[str, IO[bytes], int]] = sorted(
                [
                    (f"{config_hex}.json", io.BytesIO(config), len(config)),
                    (f"{layer_hex}/layer.tar", layer, layer_size),
                    ("manifest.json", io.BytesIO(manifest), len(manifest)),
                ],
                key=lambda entry: entry[0],
            )
            with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
                for name, fileobj, size in entries:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = size, epoch, 0o644
                    archive.addfile(info, fileobj)
        partial.replace(out)
    finally:
        Path(layer_name).unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return DockerArchive(
        path=out,
        image_id=f"sha256:{config_hex}",
        reference=f"{defn.name}:{defn.tag}@sha256:{config_hex}",
        layer_diff_id=f"sha256:{layer_hex}",
        size=out.stat().st_size,
    )


def _image_config(defn: ImageDefinition, diff_id: str) -> bytes:
    """The image config JSON; Docker 20.10 uses sha256 of exactly these bytes as the image id."""
    architecture, arch_variant = host_docker_architecture()
    created = datetime.fromtimestamp(defn.source_date_epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": {"Env": [f"PATH={IMAGE_PATH}"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {
                "created": created,
                "created_by": "rebuild",
                "comment": f"mmdebstrap --variant={defn.variant} {defn.suite} {defn.mirror}",
            }
        ],
    }
    if arch_variant is not None:
        config["variant"] = arch_variant
    return canonical_json(config)


def _layer_name(name: str) -> str:
    """Tar member name as Docker layers spell it: relative, without "./"."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def _write_layer(rootfs_tar: Path, out: IO[bytes], epoch: int) -> None:
    """Re-pack the rootfs as a layer: sorted names, numeric owners, mtimes clamped to `epoch`."""
    with tarfile.open(rootfs_tar) as src:
        members: dict[str, tarfile.TarInfo] = {}
        for member in src.getmembers():
            name = _layer_name(member.name)
            # Device nodes are useless in a layer (Docker mounts a fresh /dev) and a rootless or
            # user-namespaced engine cannot create them; "." is the layer root itself.
            if name in ("", ".") or member.ischr() or member.isblk():
                continue
            members[name] = member

        # Hard links must follow their target in the tar; after sorting, the first name of
        # each group of links carries the data and the others link to it.
        link_target: dict[str, str] = {}
        for name, member in members.items():
            if member.islnk():
                target = _layer_name(member.linkname)
                while target in members and members[target].islnk():
                    target = _layer_name(members[target].linkname)
                if target not in members or not members[target].isfile():
                    raise BuildFailed(
                        f"{rootfs_tar}: {name} is a hard link to {target}, which is not a file "
                        "in the tar; rebuild the rootfs"
                    )
                link_target[name] = target
        linked = set(link_target) | set(link_target.values())
        group_leader: dict[str, str] = {}
        for name in sorted(linked):
            group_leader.setdefault(link_target.get(name, name), name)

        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as layer:
            for name in sorted(members):
                member = members[name]
                target = link_target.get(name, name)
                leader = group_leader.get(target)
                data_member = members[target]
                info = tarfile.TarInfo(name)
                info.mode = data_member.mode
                info.uid, info.gid = data_member.uid, data_member.gid
                info.uname = info.gname = ""
                info.mtime = min(int(data_member.mtime), epoch)
                # Keep extended attributes such as security.capability; drop atime and ctime.
                info.pax_headers = {
                    key: value
                    for key, value in data_member.pax_headers.items()
                    if key.startswith("SCHILY.xattr.")
                }
                if leader is not None and leader != name:
                    info.type, info.linkname = tarfile.LNKTYPE, leader
                    layer.addfile(info)
                elif member.isfile() or leader is not None:
                    info.type, info.size = tarfile.REGTYPE, data_member.size
                    layer.addfile(info, src.extractfile(data_member))
                else:
                    info.type, info.linkname = member.type, member.linkname
                    layer.addfile(info)


# --- Archiving in the store --------------------------------------------------------------------

IMAGE_TYPE = "application/vnd.rebuild.image.v1+json"
ARCHIVE_MEDIA = "application/vnd.docker.image.archive.v1+tar"
PACKAGES_MEDIA = "application/vnd.rebuild.debian-packages.v1+json"
DEFINITION_ANN = "dev.rebuild.image.definition"
MIRROR_ANN = "dev.rebuild.image.mirror-state"


@dataclass(frozen=True)
class StoredImage:
    reference: str
    image_id: str
    manifest: str  # digest of the image's artifact manifest in the store
    archive: str  # digest of the docker-archive blob
    packages: tuple[DebPackage, ...]
    cached: bool


def find_image(store: Store, image_id: str) -> Descriptor | None:
    """The store's record of an image, by image id."""
    for entry in store.entries("image"):
        if (entry.annotations or {}).get(IMAGE_ID_ANN) == image_id:
            return entry
    return None


def stored_image(store: Store, manifest_digest: str, *, cached: bool = True) -> StoredImage:
    """An archived image, read from its manifest (which carries its id and reference)."""
    manifest = store.read_json(manifest_digest)
    archive, packages = manifest["layers"][0], manifest["layers"][1]
    listed = tuple(DebPackage(**p) for p in store.read_json(packages["digest"]))
    ann = manifest["annotations"]
    return StoredImage(ann[IMAGE_REF_ANN], ann[IMAGE_ID_ANN], manifest_digest,
                       archive["digest"], listed, cached)


def build_image(path: Path, store: Store, *, mirror_state: str | None,
                is_loaded: Callable[[str], bool], load: Callable[[Path], str],
                log: Callable[[str], None], rebuild: bool = False) -> StoredImage:
    """Build, load and archive an image, unless the store has one from the same definition
    and the same state of the mirror (`mirror_state`: a digest of its InRelease file).

    Without a known mirror state nothing is reused: a cached image never hides a change of
    the packages the mirror would give today.
    """
    defn = load_image_definition(path)
    definition = definition_digest(defn)
    if mirror_state is not None and not rebuild:
        for entry in store.entries("image"):
            ann = entry.annotations or {}
            if ann.get(DEFINITION_ANN) == definition and ann.get(MIRROR_ANN) == mirror_state:
                image = stored_image(store, entry.digest)
                if not is_loaded(image.image_id):
                    log(f"loading {image.reference} from the store")
                    load_archived(store, image, load)
                log(f"{defn.name}:{defn.tag}: unchanged definition and mirror; reusing "
                    f"{image.image_id[:19]}")
                return image
    with store.temporary_directory() as tmp:
        rootfs = tmp / "rootfs.tar"
        log(f"{defn.name}:{defn.tag}: mmdebstrap {defn.variant} {defn.suite} "
            f"({len(defn.packages)} extra packages)")
        build_rootfs(defn, rootfs, log=log)
        packages = read_packages(rootfs)
        archive = write_docker_archive(rootfs, defn, tmp / "image.tar")
        rootfs.unlink()
        loaded = load(archive.path)
        if loaded != archive.image_id:
            raise EnvironmentProblem(f"Docker loaded the image as {loaded}, expected "
                                     f"{archive.image_id}; is the engine at least 20.10?")
        archive_digest, archive_size = store.put_file(archive.path)
    listing = canonical_json([vars(p) for p in packages])
    packages_digest, packages_size = store.put_bytes(listing)
    definition_bytes = path.read_bytes()
    definition_blob, definition_size = store.put_bytes(definition_bytes)
    layers = [
        Descriptor(ARCHIVE_MEDIA, archive_digest, archive_size, {TITLE: "image.tar"}),
        Descriptor(PACKAGES_MEDIA, packages_digest, packages_size, {TITLE: "packages.json"}),
        Descriptor("application/toml", definition_blob, definition_size, {TITLE: path.name}),
    ]
    manifest = store.put_artifact(IMAGE_TYPE, layers, annotations={
        IMAGE_ID_ANN: archive.image_id, IMAGE_REF_ANN: archive.reference})
    annotations = {KIND: "image", IMAGE_ID_ANN: archive.image_id,
                   IMAGE_REF_ANN: archive.reference, DEFINITION_ANN: definition}
    if mirror_state is not None:
        annotations[MIRROR_ANN] = mirror_state
    store.add_to_index(manifest, annotations)
    return StoredImage(archive.reference, archive.image_id, manifest.digest, archive_digest,
                       packages, cached=False)


def load_archived(store: Store, image: StoredImage, load: Callable[[Path], str]) -> None:
    """Load an archived image into Docker, checking that it comes back with its id."""
    with store.temporary_directory() as tmp:
        archive = tmp / "image.tar"
        store.copy_out(image.archive, archive)
        loaded = load(archive)
    if loaded != image.image_id:
        raise StoreError(f"the archived image loaded as {loaded}, not {image.image_id}; "
                         "run `rebuild store fsck`")


def mirror_release_url(path: Path) -> str:
    defn = load_image_definition(path)
    return f"{defn.mirror.rstrip('/')}/dists/{defn.suite}/InRelease"
