"""Reproduce against build, with the image loaded and cold."""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    C_DEFINITION,
    COLD_TRIES,
    DEMO_RELEASE,
    TIMEOUT,
    BenchError,
    Contender,
    Context,
    Section,
    base_image,
    copy_demo,
    measure,
    rebuild_argv,
    run_command,
    say,
    seed_store,
    startup_contender,
    timed,
    timings,
)

from rebuild.build.image import find_image, stored_image
from rebuild.build.recipe import load_recipe
from rebuild.store.layout import (
    Store,
)


def docker_lines(*args: str) -> list[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                          timeout=TIMEOUT)
    return proc.stdout.split() if proc.returncode == 0 else []


def image_loaded(image_id: str) -> bool:
    return docker_lines("image", "inspect", "--format", "{{.Id}}", image_id) == [image_id]


def archive_blob(store: Path, image_id: str) -> Path:
    """The docker-archive of `image_id` in `store` (what `rebuild reproduce` loads)."""
    entry = find_image(Store(store), image_id)
    if entry is None:
        raise BenchError(f"image {image_id} is not archived in {store}")
    return Store(store).blob_path(stored_image(Store(store), entry.digest).archive)


def restore_image(image_id: str, archive: Path) -> None:
    """Load the image back if it is still missing: other sessions use it."""
    if image_loaded(image_id):
        return
    say(f"  loading {image_id[:19]} back into Docker from {archive}")
    run_command(["docker", "load", "-i", archive], what="docker load")
    if not image_loaded(image_id):
        raise BenchError(f"docker load of {archive} did not bring back {image_id}: load it "
                         f"by hand (docker load -i {archive}); other sessions need it")


@dataclass
class ColdReproduce:
    """`rebuild reproduce` with the image removed from Docker, so that it loads the image
    back from the store's archive; the image comes back with the same id (it is a content
    digest), and is loaded back by us if the run did not.

    Removing a shared image is not free for others: we try only when no container of
    anyone's uses it, never force `docker rmi`, and count a run only if its log says that
    it loaded the image itself (another session may have loaded it first)."""

    argv: list[str]
    cwd: Path
    image_id: str
    archive: Path
    samples: list[float] = field(default_factory=list)
    containers: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def run(self, tries: int) -> None:
        for attempt in range(1, tries + 1):
            users = docker_lines("ps", "-a", "--filter", f"ancestor={self.image_id}",
                                 "--format", "{{.ID}}")
            if users:
                self.notes.append(f"cold try {attempt}: skipped, {len(users)} container(s) "
                                  "of other sessions use the image")
                continue
            removed = subprocess.run(["docker", "rmi", self.image_id], capture_output=True,
                                     text=True, check=False, timeout=TIMEOUT)
            if removed.returncode != 0:
                self.notes.append(f"cold try {attempt}: skipped, docker rmi refused: "
                                  f"{removed.stderr.strip()[:200]}")
                continue
            try:
                say(f"  cold {attempt}/{tries}: {self.image_id[:19]} removed from Docker")
                seconds, proc = timed(self.argv, cwd=self.cwd, what="rebuild reproduce (cold)")
                if "loading image" not in proc.stderr:
                    self.notes.append(f"cold try {attempt}: not counted, the image was back "
                                      "before the run needed it (another session loaded it)")
                    continue
                self.samples.append(seconds)
                self.containers.append(max(r["seconds"] for r in
                                           json.loads(proc.stdout)["runs"]))
                say(f"  cold {attempt}/{tries}: {seconds:.3f} s")
            finally:
                restore_image(self.image_id, self.archive)


def reproduce_vs_build(ctx: Context) -> Section:
    """Issue 3: rebuilding a stored release from the store alone, against building it."""
    base_image(C_DEFINITION)
    directory = ctx.work / "reproduce"
    directory.mkdir()
    store = seed_store(directory / "store")
    hello, _ = copy_demo(directory, store)
    image = load_recipe(hello).recipe.environment.image
    image_id = image.rsplit("@", 1)[1]
    build_cmd = rebuild_argv(store, "build", hello, "--json")
    once_cmd = rebuild_argv(store, "reproduce", DEMO_RELEASE, "--json")
    twice_cmd = [*once_cmd, "--runs", "2"]
    containers: dict[str, list[float]] = {"build": [], "once": [], "twice": []}

    def contender(key: str, label: str, argv: list[str]) -> Contender:
        def run() -> float:
            seconds, proc = timed(argv, cwd=directory, what=f"rebuild {argv[3]}")
            outcome = json.loads(proc.stdout)
            if not outcome["reproducible"]:
                raise BenchError(f"{shlex.join(argv)} did not reproduce: {proc.stdout}")
            containers[key].append(max(r["seconds"] for r in outcome["runs"]))
            return seconds

        return Contender(key, label, run)

    contenders = [  # the build first: its warm-up stores the release the others rebuild
        contender("build", "rebuild build (twin, 12 variations; release already stored)",
                  build_cmd),
        contender("once", "rebuild reproduce (1 run)", once_cmd),
        contender("twice", "rebuild reproduce --runs 2 (twin check again)", twice_cmd),
        startup_contender(),
    ]
    samples = measure(contenders, ctx.reps, say, ctx.loads)
    cold = ColdReproduce(once_cmd, directory, image_id, archive_blob(store, image_id))
    cold.run(min(COLD_TRIES, ctx.reps))
    for key in ("build", "once", "twice"):
        samples[f"{key}_containers"] = containers[key][-ctx.reps:]
    samples["cold"], samples["cold_containers"] = cold.samples, cold.containers
    labels = {
        "build": contenders[0].label,
        "build_containers": "  of which: containers (max of runs[].seconds)",
        "once": contenders[1].label,
        "once_containers": "  of which: the container (runs[].seconds)",
        "twice": contenders[2].label,
        "twice_containers": "  of which: containers (max of runs[].seconds)",
        "cold": "rebuild reproduce (1 run), image NOT loaded in Docker: loads the archive",
        "cold_containers": "  of which: the container (runs[].seconds)",
        "startup": contenders[3].label,
    }
    rows = timings(samples, labels, informational=[k for k in labels
                                                   if k.endswith("_containers")
                                                   or k == "startup"])
    by_key = {t.key: t for t in rows}
    build = by_key["build"]
    verdicts = [f"{by_key[key].label}: {by_key[key].median / build.median:.2f}× the build "
                f"(median; {by_key[key].min / build.min:.2f}× by min)"
                for key in ("once", "twice", "cold") if key in by_key]
    if "cold" not in by_key:
        verdicts.append("cold case not measured: " + "; ".join(cold.notes))
    archive_mb = cold.archive.stat().st_size / 1e6
    notes = [
        f"Demo release {DEMO_RELEASE} (recipes/hello-c.toml on {image}), from a copy of the "
        "recipe and examples/hello-c re-pinned with `rebuild lock --update-image` to the "
        "image archived in the bench's store; one store for every run. No --key: nothing "
        "is signed (signing is measured in evidence_share), so the build finds its release, "
        "attempt and evidence already stored and the reproductions store nothing.",
        "reproduce reads everything from the store: recipe, source tar, image archive; with "
        "the image loaded it skips the archive. --runs 2 repeats the twin check (run b "
        "varies all 12 variations).",
        f"Cold case: measured {len(cold.samples)} time(s) (at most {COLD_TRIES}), after the "
        f"warm rounds: `docker rmi {image_id[:19]}…` (never forced, only when no container "
        f"uses it), then the reproduce, which loads the {archive_mb:.0f} MB docker-archive "
        "back (it comes back with the same id and tag); loaded back by the bench if not. "
        "Samples: " + (", ".join(f"{x:.2f} s" for x in cold.samples) or "none") + ".",
        *cold.notes,
    ]
    return Section(
        name="reproduce_vs_build",
        title="reproduce against build (issue 3)",
        method=(f"N={ctx.reps} timed repetitions of each after one untimed warm-up, "
                "interleaved, same store, image loaded; the cold case separately. Wall "
                "seconds of the CLI; ratios are reproduce / build."),
        timings=rows,
        verdicts=tuple(verdicts),
        commands=(("build", shlex.join(build_cmd)), ("reproduce", shlex.join(once_cmd)),
                  ("reproduce, twin", shlex.join(twice_cmd)),
                  ("cold", f"docker rmi {image_id} && {shlex.join(once_cmd)}")),
        notes=tuple(notes),
        data={"ratios": {key: round(by_key[key].median / build.median, 3)
                         for key in ("once", "twice", "cold") if key in by_key},
              "ratios_min": {key: round(by_key[key].min / build.min, 3)
                             for key in ("once", "twice", "cold") if key in by_key},
              "image": image, "image_archive_bytes": cold.archive.stat().st_size},
    )
