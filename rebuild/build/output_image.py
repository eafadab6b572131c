"""Output images: a build's outputs as an OCI image, an artifact of the release
(design.md, "Container images as release artifacts"; README, "Image outputs").

A recipe's `[image_output]` lays the outputs under `path` in one layer, on the pinned base
image's layers (or on nothing: `base = "scratch"`). Every byte is a function of the outputs
(names, contents, modes, link targets), the recipe and SOURCE_DATE_EPOCH: the layer is an
uncompressed tar (gzip differs between zlib builds, notes/libraries.md), sorted, owned by
0:0 without names, every mtime SOURCE_DATE_EPOCH, no PAX times; config and manifest are
canonical JSON. So run a and run b give the same manifest digest exactly when their outputs
compare equal, and the image is an artifact like any other: its manifest is the artifact
(named `IMAGE_ARTIFACT`), compared, signed as a provenance subject, listed in the SBOM, and
stored as a release layer of the OCI manifest media type, so that `store gc` keeps and
`store push` carries its config and layers byte-exact.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from rebuild.build.compare import Artifact
from rebuild.build.image import NAME_PATTERN, TAG_PATTERN, StoredImage, host_docker_architecture
from rebuild.build.recipe import ImageOutput, Recipe
from rebuild.errors import StoreError, UsageError
from rebuild.store.layout import (
    CREATED_ANN,
    OCI_MANIFEST,
    REF_NAME,
    TITLE,
    Descriptor,
    Store,
    canonical_json,
)

IMAGE_ARTIFACT = "oci-image"  # the release artifact that is the image's manifest
LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
SOURCE_ANN = "org.opencontainers.image.source"
REVISION_ANN = "org.opencontainers.image.revision"
VERSION_ANN = "org.opencontainers.image.version"
DIR_MODE = 0o755
LINK_MODE = 0o777


@dataclass(frozen=True)
class LayerMember:
    """One entry of the output layer: a directory, a file (read from `source`) or a link."""

    name: str  # relative to the image's root, no "./"
    kind: Literal["dir", "file", "link"]
    mode: int
    source: Path | None = None
    size: int = 0
    link: str | None = None


@dataclass(frozen=True)
class AssembledImage:
    manifest: str  # digest of the image manifest
    size: int
    config: str  # digest of the config (Docker's image id once loaded)
    layers: tuple[str, ...]  # layer digests, base first; the last is the outputs' layer
    artifact: Artifact  # the manifest as a release artifact


def image_root(spec: ImageOutput) -> str:
    """`path` as a layer names it: relative, "" for the root."""
    return str(PurePosixPath("/", spec.path)).strip("/")


def layer_members(artifacts: Sequence[Artifact], root: str) -> list[LayerMember]:
    """The layer's entries, sorted: each output at ROOT/NAME, with its parent directories.

    Pure. An output's mode is its recorded one (compared between the runs); mtimes, owners
    and the host's umask do not enter: `write_layer` gives every entry the same.
    """
    members: dict[str, LayerMember] = {}
    for artifact in artifacts:
        name = str(PurePosixPath(root, artifact.name)) if root else artifact.name
        parts = PurePosixPath(name).parts
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            existing = members.get(parent)
            if existing is not None and existing.kind != "dir":
                raise UsageError(f"[image_output]: {existing.name} is an output and a "
                                 f"directory of {name} in the image; rename one")
            members.setdefault(parent, LayerMember(parent, "dir", DIR_MODE))
        if name in members:
            raise UsageError(f"[image_output]: {name} is both an output and a directory of "
                             "another output in the image; rename one")
        if artifact.link is not None:
            members[name] = LayerMember(name, "link", LINK_MODE, link=artifact.link)
        else:
            mode = 0o644 if artifact.mode is None else artifact.mode
            members[name] = LayerMember(name, "file", mode, artifact.path, artifact.size)
    return [members[n] for n in sorted(members)]


def write_layer(members: Sequence[LayerMember], out: IO[bytes], epoch: int) -> None:
    """The layer tar: `members` in order, uid/gid 0 without names, every mtime `epoch`.

    Every mtime is SOURCE_DATE_EPOCH, not the output's clamped: an output's mtime is not
    compared between the runs (compare.COMPARED), so it may not change the image either.
    PAX is used only for what ustar cannot hold (a long or non-ASCII name), never for times.
    """
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.mode, info.mtime = member.mode, epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if member.kind == "dir":
                info.type = tarfile.DIRTYPE
                layer.addfile(info)
            elif member.kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, member.link or ""
                layer.addfile(info)
            else:
                assert member.source is not None
                info.type, info.size = tarfile.REGTYPE, member.size
                with member.source.open("rb") as data:
                    layer.addfile(info, data)


def created_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(spec: ImageOutput, base: Mapping[str, Any] | None, diff_ids: Sequence[str],
                 epoch: int) -> bytes:
    """The image config (canonical JSON): the base's platform and environment under the
    recipe's entrypoint, cmd, env, workdir, user and labels; created = SOURCE_DATE_EPOCH."""
    created = created_time(epoch)
    if base is None:
        architecture, variant = host_docker_architecture()
        platform: dict[str, Any] = {"architecture": architecture, "os": "linux"}
        if variant is not None:
            platform["variant"] = variant
        env: dict[str, str] = {}
        history: list[dict[str, Any]] = []
    else:
        platform = {k: base[k] for k in ("architecture", "os", "variant") if k in base}
        base_env = (base.get("config") or {}).get("Env") or []
        env = dict(item.split("=", 1) for item in base_env if "=" in item)
        history = list(base.get("history") or [])
    env.update(spec.env)
    settings: dict[str, Any] = {}
    if env:
        settings["Env"] = [f"{k}={v}" for k, v in env.items()]
    if spec.entrypoint:
        settings["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        settings["Cmd"] = list(spec.cmd)
    if spec.workdir:
        settings["WorkingDir"] = spec.workdir
    if spec.user:
        settings["User"] = spec.user
    if spec.labels:
        settings["Labels"] = dict(spec.labels)
    history.append({"created": created, "created_by": "rebuild [image_output]",
                    "comment": f"the release's outputs under /{image_root(spec)}"})
    return canonical_json({**platform, "created": created, "config": settings,
                           "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
                           "history": history})


def image_annotations(recipe: Recipe, epoch: int) -> dict[str, str]:
    """The manifest's annotations, from the recipe alone (a rebuild from the store gives the
    same): the source as the recipe names it, its revision (the git commit, else the pinned
    tree digest), the version and the creation time."""
    source = recipe.source
    where = source.git or source.url or source.path or ""
    revision = source.rev or source.digest or ""
    out = {SOURCE_ANN: where, REVISION_ANN: revision, CREATED_ANN: created_time(epoch),
           VERSION_ANN: recipe.recipe.version, TITLE: recipe.recipe.name}
    return {k: v for k, v in out.items() if v}


def image_manifest(config: Descriptor, layers: Sequence[Descriptor],
                   annotations: Mapping[str, str]) -> bytes:
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "config": config.to_json(),
                                "layers": [layer.to_json() for layer in layers]}
    if annotations:
        manifest["annotations"] = dict(annotations)
    return canonical_json(manifest)


def base_layers(store: Store, image: StoredImage) -> tuple[dict[str, Any], list[Descriptor]]:
    """The base image's config and its layers as OCI blobs, taken from its archive in the
    store (a docker-archive of uncompressed layers, so each layer's digest is its diff id);
    a layer the store lacks as a blob of its own is copied out of the archive once, and the
    config is stored too: Docker's image id is its digest, so a second build reads neither
    the archive nor more than the config."""
    if store.has(image.image_id):
        config = store.read_json(image.image_id)
        diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
        if all(store.has(d) for d in diff_ids):
            return config, [Descriptor(LAYER_MEDIA, d, store.blob_path(d).stat().st_size)
                            for d in diff_ids]
    with store.open_verified(image.archive) as archive, \
            tarfile.open(fileobj=archive, mode="r:") as tar:
        listing = json.loads(_member_bytes(tar, "manifest.json", image))
        entry = listing[0]
        config_bytes = _member_bytes(tar, entry["Config"], image)
        if store.put_bytes(config_bytes)[0] != image.image_id:
            raise StoreError(f"the archive of {image.reference} holds a config that is not "
                             f"{image.image_id}; run `rebuild store fsck` and rebuild the image")
        config = json.loads(config_bytes)
        diff_ids = list(config["rootfs"]["diff_ids"])
        layers = []
        for name, diff_id in zip(entry["Layers"], diff_ids, strict=True):
            if not store.has(diff_id):
                member = tar.getmember(name)
                data = tar.extractfile(member)
                assert data is not None
                with store.temporary_directory() as tmp:
                    with (tmp / "layer.tar").open("wb") as out:
                        while chunk := data.read(1 << 20):
                            out.write(chunk)
                    got, _ = store.put_file(tmp / "layer.tar")
                if got != diff_id:
                    raise StoreError(f"the archive of {image.reference} has a layer {got} "
                                     f"where its config names {diff_id}; run `rebuild store "
                                     "fsck` and rebuild the image")
            size = store.blob_path(diff_id).stat().st_size
            layers.append(Descriptor(LAYER_MEDIA, diff_id, size))
    return config, layers


def _member_bytes(tar: tarfile.TarFile, name: str, image: StoredImage) -> bytes:
    try:
        data = tar.extractfile(name)
    except KeyError:
        data = None
    if data is None:
        raise StoreError(f"the archive of {image.reference} has no {name}; run `rebuild store "
                         "fsck` and rebuild the image")
    return data.read()


def assemble_image(store: Store, recipe: Recipe, epoch: int, artifacts: Sequence[Artifact],
                   base: StoredImage | None) -> AssembledImage:
    """Write the image of one run's outputs into the store (layer, config, manifest) and
    return its manifest as an artifact. `base`: the pinned image, when `base` is not
    "scratch"."""
    spec = recipe.image_output
    assert spec is not None
    taken = next((a.name for a in artifacts if a.name == IMAGE_ARTIFACT), None)
    if taken is not None:
        raise UsageError(f"an output is named {IMAGE_ARTIFACT}, the name of the release's "
                         "image; rename the output or remove [image_output]")
    members = layer_members(artifacts, image_root(spec))
    base_config, layers = base_layers(store, base) if base is not None else (None, [])
    with store.temporary_directory() as tmp:
        path = tmp / "layer.tar"
        with path.open("wb") as out:
            write_layer(members, out, epoch)
        digest, size = store.put_file(path)
    layers.append(Descriptor(LAYER_MEDIA, digest, size))
    config = image_config(spec, base_config, [layer.digest for layer in layers], epoch)
    config_digest, config_size = store.put_bytes(config)
    manifest = image_manifest(Descriptor(CONFIG_MEDIA, config_digest, config_size), layers,
                              image_annotations(recipe, epoch))
    manifest_digest, manifest_size = store.put_bytes(manifest)
    artifact = Artifact(IMAGE_ARTIFACT, manifest_digest.removeprefix("sha256:"), manifest_size,
                        store.blob_path(manifest_digest), media_type=OCI_MANIFEST)
    return AssembledImage(manifest_digest, manifest_size, config_digest,
                          tuple(layer.digest for layer in layers), artifact)


def with_image(store: Store, recipe: Recipe, epoch: int, artifacts: Sequence[Artifact],
               base: StoredImage) -> tuple[Artifact, ...]:
    """The artifacts of one run, with its image when the recipe declares one (sorted by name,
    as a release lists them)."""
    if recipe.image_output is None:
        return tuple(artifacts)
    image = assemble_image(store, recipe, epoch, artifacts,
                           None if recipe.image_output.base == "scratch" else base)
    return tuple(sorted([*artifacts, image.artifact], key=lambda a: a.name))


# -- when two images differ -------------------------------------------------------------------


def describe_difference(store: Store, a: str, b: str, files: Sequence[str],
                        root: str) -> str:
    """A report of two images of the same recipe: which layer differs (by position and
    digest) and which files in it, as the comparison of the outputs found them."""
    ma, mb = store.read_json(a), store.read_json(b)
    la = [layer["digest"] for layer in ma.get("layers", [])]
    lb = [layer["digest"] for layer in mb.get("layers", [])]
    lines = [f"{IMAGE_ARTIFACT}: the image manifests differ", f"  run a: {a}",
             f"  run b: {b}"]
    for i in range(max(len(la), len(lb))):
        da = la[i] if i < len(la) else None
        db = lb[i] if i < len(lb) else None
        what = "the outputs' layer" if i == max(len(la), len(lb)) - 1 else "a base layer"
        if da != db:
            lines.append(f"layer {i + 1} of {len(la)} ({what}) differs: "
                         f"run a {da or 'absent'}, run b {db or 'absent'}")
    if ma.get("config") != mb.get("config"):
        lines.append(f"config differs: run a {ma.get('config', {}).get('digest')}, "
                     f"run b {mb.get('config', {}).get('digest')}")
    if files:
        lines.append("files that differ in that layer (see each output's report):")
        lines += [f"  /{PurePosixPath(root, f)}" if root else f"  /{f}" for f in files]
    return "\n".join(lines) + "\n"


# -- loading into Docker ----------------------------------------------------------------------


def write_loadable(store: Store, manifest: str, tag: str | None, out: Path) -> str:
    """Write the image as a tar Docker 20.10 loads: an OCI image layout plus the
    manifest.json of a docker-archive naming the same blobs (notes/libraries.md). Returns
    the config digest, the image id Docker must report. Deterministic, sorted, mtime 0."""
    parsed = store.read_json(manifest)
    config = str(parsed["config"]["digest"])
    layers = [layer["digest"] for layer in parsed["layers"]]
    blob = "blobs/sha256/{}".format
    docker = [{"Config": blob(config[7:]), "Layers": [blob(d[7:]) for d in layers],
               "RepoTags": [tag] if tag else []}]
    size = store.blob_path(manifest).stat().st_size
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": manifest, "size": size,
         **({"annotations": {REF_NAME: tag}} if tag else {})}]}
    small = {"oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
             "index.json": canonical_json(index), "manifest.json": canonical_json(docker)}
    names = sorted({*small, *(blob(d[7:]) for d in {manifest, config, *layers})})
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
            tar.addfile(info)
        for name in names:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if name in small:
                info.size = len(small[name])
                tar.addfile(info, io.BytesIO(small[name]))
            else:
                digest = "sha256:" + name.rsplit("/", 1)[1]
                with store.open_verified(digest) as data:
                    info.size = os.fstat(data.fileno()).st_size
                    tar.addfile(info, data)
    return config


def release_image(store: Store, release: str) -> str:
    """The digest of a stored release's image manifest (its `IMAGE_ARTIFACT` layer)."""
    entry = store.release(release)
    for layer in store.read_json(entry.digest).get("layers", []):
        if layer.get("mediaType") == OCI_MANIFEST and \
                (layer.get("annotations") or {}).get(TITLE) == IMAGE_ARTIFACT:
            return str(layer["digest"])
    raise UsageError(f"release {release} has no image: its recipe declares no "
                     "[image_output]")


def docker_tag(release: str) -> str | None:
    """`NAME:VERSION` for Docker, when both are valid there (a version with "+" is not)."""
    name, _, version = release.rpartition("@")
    return f"{name}:{version}" if re.match(NAME_PATTERN, name) and \
        re.match(TAG_PATTERN, version) else None
