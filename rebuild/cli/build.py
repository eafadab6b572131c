"""Commands that make things: `build`, `lock`, `fetch`, `image build`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rebuild.errors import EnvironmentProblem, ExitCode, StoreError, UsageError
from rebuild.store.layout import Store

if TYPE_CHECKING:
    from rebuild.build.recipe import LoadedRecipe
    from rebuild.evidence.sign import StatementSigner
    from rebuild.twin import BuildOutcome, DifferenceReport

from rebuild.cli.common import (
    JsonOpt,
    KeylessOpt,
    KeyOpt,
    Location,
    Options,
    StoreOpt,
    TrustConfigOpt,
    command_options,
    emit,
    make_signer,
    push_back,
    remote_location,
    report_transfer,
    say,
    shown,
    store_for,
)

image_app = typer.Typer(no_args_is_help=True, help="Base images built from Debian packages: "
                        "archived, moved between stores, loaded.")


def build(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files (recipes/NAME.toml).")],
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="When the runs differ, find the variation(s) responsible for each "
        "differing artifact (extra runs, one per core at a time: a rerun of A, then a "
        "search that tests first the variations whose values run b wrote).")] = False,
    keep: Annotated[Path | None, typer.Option(
        "--keep", help="Copy both runs' /out trees to DIR/a and DIR/b (one recipe only).",
        metavar="DIR", show_default=False)] = None,
    keyless: KeylessOpt = False,
    trust_config: TrustConfigOpt = None,
    engine_b: Annotated[str | None, typer.Option(
        "--engine-b", metavar="DOCKER_HOST", help="Run B on this second Docker engine "
        "(unix:///path/docker.sock, tcp://host:port); the record and the provenance name "
        "both engines. An engine that does not see this host's files gets run B's inputs "
        "copied in.", show_default=False)] = None,
    engine_b_copy: Annotated[bool, typer.Option(
        "--engine-b-copy", help="Copy run B's inputs into engine B and its /out back "
        "(put_archive/get_archive) instead of bind mounts: for an engine on another "
        "machine.")] = False,
) -> None:
    """Fetch, build twice with variations, compare, and store the release."""
    from rebuild.build.recipe import load_recipe
    from rebuild.twin import refuse_release_conflict, twin_build


    opts = command_options(store, json_out, key)
    if engine_b_copy and engine_b is None:
        raise UsageError("--engine-b-copy copies run B's inputs into engine B: name it with "
                         "--engine-b DOCKER_HOST")
    if keep is not None and len(recipes) != 1:
        raise UsageError("--keep takes one recipe: both runs' outputs go to DIR/a and DIR/b")
    if keep is not None and any((keep / run).exists() for run in ("a", "b")):
        raise UsageError(f"--keep {keep}: {keep}/a or {keep}/b already exists; remove them "
                         "or name another directory")
    loaded = [load_recipe(path) for path in recipes]  # every recipe is checked before any runs
    location = remote_location(opts.store)
    directory = opts.store if location is None else _remote_build_cache(location, loaded, opts)
    for recipe in loaded:
        refuse_release_conflict(Store(directory), recipe)
    signer = make_signer(opts, keyless=keyless, trust_config=trust_config)
    outcomes = [twin_build(recipe, Store(directory), cache_dir=opts.cache, signer=signer,
                           log=say,
                           debug=say if opts.debug else lambda _: None,
                           explain=explain, keep=keep, engine_b=engine_b,
                           engine_b_copy=engine_b_copy)
                for recipe in loaded]
    for outcome in outcomes:
        _print_outcome(outcome, signer)
    if location is not None:
        for outcome in outcomes:
            if Store(directory).find(outcome.release) is not None:
                push_back(opts, directory, outcome.release)
    if opts.json:
        emit(outcomes[0].to_json() if len(outcomes) == 1
             else {"builds": [o.to_json() for o in outcomes]})
    if not all(o.reproducible for o in outcomes):
        raise typer.Exit(ExitCode.CLAIM_FAILED)


def _remote_build_cache(location: str, loaded: list[LoadedRecipe], opts: Options) -> Path:
    """`build --store oci://…` builds in the registry's local cache store: first the releases
    the registry already holds (so that a conflicting version is refused before anything
    runs) and the pinned base images it holds come down, verified."""
    from rebuild.build.image import find_image
    from rebuild.store.registry import parse_remote
    from rebuild.store.transfer import (
        cache_location,
        image_closure_name,
        remote_has,
        transfer,
        transfer_image,
    )

    cache = cache_location(parse_remote(location), opts.cache)
    for recipe in loaded:
        release, image = recipe.recipe.release, recipe.recipe.environment.image
        if remote_has(location, release):
            transfer(location, str(cache), release, log=say)
        has_image = Store(cache).exists() and \
            find_image(Store(cache), image.rpartition("@")[2]) is not None
        if not has_image and "@sha256:" in image and ":" in image.rpartition("@")[0] \
                and remote_has(location, image_closure_name(image)):
            transfer_image(location, str(cache), image, log=say)
    return cache


def _difference_line(diff: DifferenceReport) -> str:
    """`share/stamp.txt: caused by time, hostname — hint: …` (with --explain)."""
    name, blame = f"{shown(diff.difference.name)} ({', '.join(diff.differs)})", diff.blame
    if diff.difference.a is not None and diff.difference.a.media_type is not None:
        return (f"{name}: the image differs where its outputs do (its report names the layer "
                "and the files)")
    if blame is None:
        return f"{name}: differs (run with --explain to find the variations responsible)"
    cause = ("differs between identical runs (randomness or a race)" if blame.inherent
             else f"caused by {', '.join(blame.variations)}")
    note = f" ({blame.note})" if blame.note and not blame.inherent else ""
    if len(blame.hints) == 1:
        return f"{name}: {cause}{note} — hint: {blame.hints[0]}"
    hints = "".join(f"\n    {variation}: {hint}"
                    for variation, hint in zip(blame.variations, blame.hints, strict=True))
    return f"{name}: {cause}{note} — hints:{hints}"


def _print_outcome(outcome: BuildOutcome, signer: StatementSigner | None) -> None:
    from rebuild.build.compare import format_mode

    if outcome.reproducible:
        say(f"{outcome.release}: reproducible: {len(outcome.artifacts)} artifact(s) "
            "identical in both runs")
        for artifact in outcome.artifacts:
            what = (f"-> {artifact.link}" if artifact.link is not None
                    else f"OCI image manifest, {artifact.size} bytes"
                    if artifact.media_type is not None
                    else f"{artifact.size} bytes, mode {format_mode(artifact.mode or 0)}")
            say(f"  {shown(artifact.name)}  sha256:{artifact.sha256}  {what}")
    else:
        names = {a.name for a in outcome.artifacts} | {
            d.difference.name for d in outcome.differences}
        say(f"{outcome.release}: NOT reproducible: {len(outcome.differences)} of "
            f"{len(names)} artifact(s) differ")
        for diff in outcome.differences:
            say(f"  {_difference_line(diff)}")
            more = f" (HTML {diff.html}, JSON {diff.json})" if diff.html else ""
            say(f"    report: rebuild store cat {diff.report}{more}")
    evidence = outcome.evidence
    signed = (f"signed by {signer.description}" if evidence.signer and signer is not None
              else "NOT signed")
    say(f"evidence: provenance {evidence.statements['provenance'][:19]}…, SBOM "
        f"{evidence.sbom[:19]}…, {signed}; attempt {outcome.attempt} in {outcome.store}")


def lock(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files to pin.")],
    update_image: Annotated[bool, typer.Option(
        "--update-image", help="Re-pin the image to the newest one the store has for its "
        "name:tag.")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the pins (source digest, image digest) into each recipe."""
    from rebuild.inputs.lock import lock_recipe


    opts = command_options(store, json_out)
    results = [lock_recipe(path, Store(opts.store), update_image=update_image, log=say)
               for path in recipes]
    for result in results:
        if not result.changed:
            say(f"{result.path}: already locked")
    if opts.json:
        emit({"recipes": [{"recipe": str(r.path),
                           "changed": {k: {"old": old, "new": new}
                                       for k, (old, new) in r.changed.items()}}
                          for r in results]})


def fetch(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files (recipes/NAME.toml).")],
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Fetch every input (source, wheels, npm packages) into the store, verifying hashes."""
    from rebuild.build.recipe import load_recipe
    from rebuild.inputs.fetch import fetch_inputs


    opts = command_options(store, json_out)
    loaded = [load_recipe(path) for path in recipes]
    reports = []
    st = Store(opts.store)
    for recipe in loaded:
        with st.lease():  # what is found in the store is kept until it is named
            inputs = fetch_inputs(recipe, st, log=say)
        new = inputs.downloaded
        source = inputs.source
        where = ("local" if source.fetched is None else
                 "downloaded" if source.fetched in new else "found in the store")
        say(f"{recipe.recipe.release}: source {source.uri} {source.tree_digest} ({where})")
        if inputs.python_lock is not None:
            fetched = sum(w.blob in new for w in inputs.wheels)
            say(f"{recipe.recipe.release}: {len(inputs.wheels)} wheel(s): {fetched} downloaded, "
                f"{len(inputs.wheels) - fetched} already in the store")
        if inputs.npm_lock is not None:
            fetched = sum(n.blob in new for n in inputs.npm)
            say(f"{recipe.recipe.release}: {len(inputs.npm)} npm package(s): {fetched} "
                f"downloaded, {len(inputs.npm) - fetched} already in the store")
        reports.append({
            "recipe": str(recipe.path), "release": recipe.recipe.release,
            "source": {"kind": recipe.recipe.source.kind, "uri": source.uri,
                       "tree": source.tree_digest, "archive": source.archive,
                       "fetched": source.fetched, "downloaded": source.fetched in new},
            "source_date_epoch": inputs.source_date_epoch,
            "python_lock": inputs.python_lock,
            "wheels": [{**w.to_json(), "downloaded": w.blob in new} for w in inputs.wheels],
            "npm_lock": inputs.npm_lock,
            "npm": [{**n.to_json(), "downloaded": n.blob in new} for n in inputs.npm],
            "downloaded": sorted(new)})
    if opts.json:
        emit({"recipes": reports, "store": str(opts.store)})


@image_app.command("build")
def image_build(
    definition: Annotated[Path, typer.Argument(help="Image definition (images/NAME.toml).")],
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even when cached.")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Build a base image with mmdebstrap, load it, archive it; print its pinned reference."""
    from rebuild.build.image import build_image, mirror_release_url
    from rebuild.build.sandbox import connect, has_image, load_image
    from rebuild.inputs.fetch import fetch_bytes


    opts = command_options(store, json_out)
    try:
        mirror_state: str | None = "sha256:" + hashlib.sha256(
            fetch_bytes(mirror_release_url(definition))).hexdigest()
    except EnvironmentProblem as exc:
        say(f"warning: {exc}; the image will be built afresh")
        mirror_state = None
    st = Store(opts.store)
    client = connect()
    image = build_image(definition, st, mirror_state=mirror_state,
                        is_loaded=lambda image_id: has_image(client, image_id),
                        load=lambda archive: load_image(client, archive), log=say,
                        rebuild=rebuild)
    if opts.json:
        emit({"image": image.reference, "id": image.image_id, "manifest": image.manifest,
              "archive": image.archive, "packages": len(image.packages),
              "cached": image.cached, "store": str(opts.store)})
    else:
        print(image.reference)
    say(f"{len(image.packages)} Debian packages; archived in {opts.store} as {image.manifest}")


ImageRef = Annotated[str, typer.Argument(
    metavar="IMAGE_REF", help="NAME:TAG@sha256:ID, as a recipe pins it.")]



@image_app.command("push")
def image_push(reference: ImageRef, destination: Location, store: StoreOpt = None,
               json_out: JsonOpt = False) -> None:
    """Copy an archived image (archive, package list, definition) to another store."""
    opts = command_options(store, json_out)
    from rebuild.store.transfer import transfer_image

    result = transfer_image(str(opts.store), destination, reference, log=say)
    report_transfer(result, reference, destination, opts.json)


@image_app.command("pull")
def image_pull(source: Location, reference: ImageRef, store: StoreOpt = None,
               json_out: JsonOpt = False) -> None:
    """Copy an archived image from another store (a registry) into the store."""
    opts = command_options(store, json_out)
    from rebuild.store.transfer import transfer_image

    result = transfer_image(source, str(opts.store), reference, log=say)
    report_transfer(result, reference, str(opts.store), opts.json)


@image_app.command("load")
def image_load(reference: Annotated[str, typer.Argument(
        metavar="IMAGE_REF|RELEASE", help="NAME:TAG@sha256:ID, as a recipe pins it, or "
        "NAME@VERSION, a release whose recipe declares [image_output].")],
        store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Load an archived base image, or a release's image, into Docker; it must come back
    with its recorded id."""
    from rebuild.build.image import find_image, load_archived, stored_image
    from rebuild.build.sandbox import connect, load_image
    from rebuild.store.transfer import image_closure_name

    opts = command_options(store, json_out)
    named = reference.rpartition("@")[0]
    if named and ":" not in named:
        _load_release_image(reference, opts)
        return
    image_closure_name(reference)  # exit 2 for what is not NAME:TAG@sha256:ID
    st = Store(opts.store)
    st.require()
    entry = find_image(st, reference.rpartition("@")[2])
    if entry is None:
        raise StoreError(f"no image {reference} in the store {opts.store}; `rebuild image pull "
                         "STORE IMAGE_REF` brings one")
    image = stored_image(st, entry.digest)
    client = connect()
    load_archived(st, image, lambda archive: load_image(client, archive))
    if opts.json:
        emit({"image": image.reference, "id": image.image_id, "manifest": image.manifest})
    say(f"loaded {image.reference}: id {image.image_id}, as recorded")


def _load_release_image(release: str, opts: Options) -> None:
    """`image load NAME@VERSION`: the release's image, as an OCI layout Docker loads; with
    `--store oci://…`, from the registry through the local cache."""
    from rebuild.build.output_image import docker_tag, release_image, write_loadable
    from rebuild.build.sandbox import connect, load_image

    st = Store(store_for(opts, release))  # from a registry: its closure, verified, cached
    manifest = release_image(st, release)
    client = connect()
    tag = docker_tag(release)
    with st.temporary_directory() as tmp:
        config = write_loadable(st, manifest, tag, tmp / "image.tar")
        loaded = load_image(client, tmp / "image.tar")
    if loaded != config:
        raise StoreError(f"Docker loaded the image of {release} as {loaded}, not {config} (the "
                         "digest of its config); run `rebuild store fsck`")
    if opts.json:
        emit({"release": release, "image": tag, "id": config, "manifest": manifest})
    say(f"loaded the image of {release}{f' as {tag}' if tag else ''}: id {config}, manifest "
        f"{manifest}")


recipe_app = typer.Typer(no_args_is_help=True, help="Write recipes for software published "
                         "elsewhere.")


@recipe_app.command("pypi")
def recipe_pypi(
    spec: Annotated[str, typer.Argument(metavar="NAME==VERSION",
                                        help="A release on PyPI, e.g. idna==3.10.")],
    out_dir: Annotated[Path, typer.Option("-o", "--output", metavar="DIR",
                                          help="Where NAME.toml, NAME.in and NAME.lock.txt "
                                          "go.")] = Path("recipes"),
    image: Annotated[str, typer.Option("--image", metavar="NAME:TAG", help="The base image "
                                       "(with python3-venv), pinned to the newest the store "
                                       "has.")] = "rebuild/debian-c:bookworm",
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a recipe that rebuilds a PyPI release's wheel from its sdist, as published."""
    from rebuild.inputs.pypi import recipe_for_release

    opts = command_options(store, json_out)
    written = recipe_for_release(spec, out_dir, Store(opts.store), image=image, log=say)
    inference = written.inference
    say(f"{written.recipe}: {inference.backend_pin}, SOURCE_DATE_EPOCH "
        f"{inference.source_date_epoch}" + (", unset for the backend" if inference.unset_epoch
                                             else ""))
    for reason in inference.reasons:
        say(f"  {reason}")
    say(f"next: rebuild build {written.recipe} && rebuild compare-upstream "
        f"{inference.recipe_name}@{written.published.version}")
    if opts.json:
        emit({"recipe": str(written.recipe), "requirements": str(written.requirements),
              "release": f"{inference.recipe_name}@{written.published.version}",
              "backend": inference.backend, "backend_pin": inference.backend_pin,
              "source_date_epoch": inference.source_date_epoch,
              "unset_source_date_epoch": inference.unset_epoch, "env": dict(inference.env),
              "vary": list(inference.vary), "reasons": list(inference.reasons),
              "sdist": {"url": written.published.sdist.url,
                        "sha256": written.published.sdist.sha256},
              "upstream": {"wheel": written.published.wheel.url,
                           "sha256": written.published.wheel.sha256}})
