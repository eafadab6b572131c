"""Remote stores: `rebuild store push` and `pull` of a release beside `skopeo copy`."""

from __future__ import annotations

import importlib
import itertools
import json
import shlex
import shutil
import statistics
import sys
from typing import Any

from harness import (
    C_DEFINITION,
    DEMO_RELEASE,
    ROOT,
    BenchError,
    Contender,
    Context,
    Section,
    Table,
    base_image,
    copy_demo,
    keygen,
    measure,
    rebuild_argv,
    run_command,
    say,
    seed_store,
    timed,
    timings,
)
from reproduce import archive_blob

from rebuild.build.recipe import parse_image_reference


def registry_support() -> Any:
    """The tests' registry: a real Debian docker-registry on loopback, stopped by its pid."""
    sys.path.insert(0, str(ROOT))
    return importlib.import_module("tests.registry_support")


def registry_transfer(ctx: Context) -> Section:
    """Issue "Remote stores": push and pull throughput beside skopeo, on the same registry."""
    if shutil.which("skopeo") is None or shutil.which("docker-registry") is None:
        raise BenchError("skopeo and docker-registry are needed (make setup installs them)")
    image = base_image(C_DEFINITION)
    directory = ctx.work / "registry"
    directory.mkdir()
    store = seed_store(directory / "store")
    hello, _ = copy_demo(directory, store)
    key, _ = keygen(directory / "ci")
    run_command(rebuild_argv(store, "build", hello, "--key", key), cwd=directory,
                what="rebuild build (untimed: the release to move)")
    # skopeo moves the largest part of the closure, the base image, as an image.
    archive = archive_blob(store, parse_image_reference(image)[2])
    counter = itertools.count(1)
    start_registry = registry_support().start_registry
    registries: list[Any] = []
    sent: dict[str, int] = {}

    def fresh_registry() -> Any:
        registry = start_registry(directory / f"registry-{next(counter)}")
        registries.append(registry)
        return registry

    def push() -> float:
        registry = fresh_registry()
        seconds, proc = timed(rebuild_argv(store, "--json", "store", "push", DEMO_RELEASE,
                                           registry.url("bench")), what="rebuild store push")
        sent["push"] = int(json.loads(proc.stdout)["bytes_sent"])
        pulled = directory / f"pulled-{next(counter)}"
        seconds_pull, proc = timed(rebuild_argv(pulled, "--json", "store", "pull",
                                                registry.url("bench"), DEMO_RELEASE),
                                   what="rebuild store pull")
        pull_times.append(seconds_pull)
        shutil.rmtree(pulled)
        registry.stop()
        return seconds

    def skopeo() -> float:
        registry = fresh_registry()
        target = f"docker://{registry.host}/skopeo/debian-c:bench"
        seconds, _ = timed(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                            f"docker-archive:{archive}", target], what="skopeo copy (push)")
        layout = directory / f"skopeo-{next(counter)}"
        seconds_pull, _ = timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                 target, f"oci:{layout}:bench"], what="skopeo copy (pull)")
        skopeo_pull_times.append(seconds_pull)
        shutil.rmtree(layout)
        registry.stop()
        return seconds

    pull_times: list[float] = []
    skopeo_pull_times: list[float] = []
    try:
        samples = measure([Contender("push", "rebuild store push (the whole closure)", push),
                           Contender("skopeo", "skopeo copy docker-archive -> registry "
                                     "(the base image alone)", skopeo)],
                          ctx.reps, say, ctx.loads)
    finally:
        for registry in registries:
            registry.stop()
    samples["pull"] = pull_times[-ctx.reps:]
    samples["skopeo_pull"] = skopeo_pull_times[-ctx.reps:]
    labels = {"push": "rebuild store push (the release's whole closure)",
              "pull": "rebuild store pull into an empty store",
              "skopeo": "skopeo copy docker-archive: -> docker:// (the base image alone)",
              "skopeo_pull": "skopeo copy docker:// -> oci: (the base image alone)"}
    rows = timings(samples, labels)
    closure = sent["push"]
    image_bytes = archive.stat().st_size
    rates = {k: (closure if k in ("push", "pull") else image_bytes)
             / statistics.median(samples[k]) / 2**20 for k in labels}
    push_ratio, pull_ratio = rates["push"] / rates["skopeo"], rates["pull"] / rates["skopeo_pull"]
    return Section(
        name="registry_transfer",
        title="remote stores: push and pull beside skopeo",
        method=(f"The demo release (its closure: release, inputs, attempt, evidence and the "
                f"base image's archive, {closure / 2**20:.0f} MiB) pushed by `rebuild store "
                "push` to a fresh Debian docker-registry on 127.0.0.1 and pulled back into an "
                "empty store, beside skopeo copying the base image archive (the closure's "
                f"largest part, {image_bytes / 2**20:.0f} MiB) to a fresh registry and back "
                f"into an OCI layout. N={ctx.reps} interleaved rounds after a warm-up; "
                "throughput = bytes moved / median wall seconds."),
        timings=rows,
        tables=(Table("Throughput (MiB/s, medians)", ("move", "rebuild", "skopeo", "ratio"),
                      (("push", f"{rates['push']:.1f}", f"{rates['skopeo']:.1f}",
                        f"{push_ratio:.2f}"),
                       ("pull", f"{rates['pull']:.1f}", f"{rates['skopeo_pull']:.1f}",
                        f"{pull_ratio:.2f}"))),),
        verdicts=(f"push: rebuild {rates['push']:.1f} MiB/s, {push_ratio:.2f}x skopeo's",
                  f"pull: rebuild {rates['pull']:.1f} MiB/s, {pull_ratio:.2f}x skopeo's"),
        commands=(("push", shlex.join(rebuild_argv(store, "store", "push", DEMO_RELEASE,
                                                   "oci+http://127.0.0.1:PORT/bench"))),
                  ("skopeo", f"skopeo copy --dest-tls-verify=false docker-archive:{archive} "
                             "docker://127.0.0.1:PORT/skopeo/debian-c:bench")),
        notes=("skopeo copies one image and no referrers (it cannot move a release's "
               "closure); rebuild moves every manifest and blob of the closure byte-exact, "
               "HEAD first. The comparison is of throughput over the same loopback registry.",
               "skopeo re-packs a docker-archive into registry layers (compressing nothing: "
               "the archive's layer is uncompressed), so its bytes moved are the image's."),
        data={"closure_bytes": closure, "image_bytes": image_bytes,
              "ratios": {"push": round(push_ratio, 3), "pull": round(pull_ratio, 3)}},
    )
