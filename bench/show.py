"""`rebuild show` on a store of 10,000 releases; build and show at 0, 10,000 and 100,000."""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import os
import shlex
import shutil
import tarfile
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    EPOCH,
    SCRIPT,
    SHOW_GOAL_S,
    SYNTHETIC_RELEASES,
    BenchError,
    Contender,
    Context,
    Section,
    base_image,
    goal,
    keygen,
    measure,
    rebuild_argv,
    run_command,
    say,
    seed_store,
    startup_contender,
    timed,
    timings,
    write_recipe,
)

from rebuild import __version__
from rebuild.attest import attach_evidence, build_link, build_statements
from rebuild.build.image import StoredImage, find_image, stored_image
from rebuild.build.plan import plan_build
from rebuild.build.recipe import Recipe, load_recipe, parse_image_reference, parse_recipe
from rebuild.evidence.provenance import BuildFacts, Dependency, Subject, digest_set
from rebuild.evidence.sign import KeySigner, load_public_key, load_signer, passphrase_from_env
from rebuild.inputs.fetch import TreeEntry, hash_tree
from rebuild.release.report import release_story
from rebuild.release.verify import Policy
from rebuild.store.layout import (
    ATTEMPT_TYPE,
    EMPTY_DIGEST,
    EPOCH_ANN,
    IMAGE_ID_ANN,
    INPUTS_TYPE,
    KIND,
    OCI_EMPTY,
    OCI_MANIFEST,
    REF_NAME,
    RELEASE_ANN,
    RELEASE_TYPE,
    SUBJECT,
    TITLE,
    Descriptor,
    Store,
    canonical_json,
)
from rebuild.twin import LOG_MEDIA, RECORD_MEDIA, iso_time


class BulkStore(Store):
    """The store, for seeding thousands of releases at once: blobs are written without an
    fsync each, and index entries are collected and named in index.json in one write
    (`add_to_index` would rewrite a growing index.json 40,000 times). Everything else is
    the store's own code, so the manifests are what a build writes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pending: list[Descriptor] = []

    def _write_atomic(self, final: Path, data: bytes, mode: int = 0o444) -> None:
        if final.parent != self.blobs:  # index.json: atomically, as always
            super()._write_atomic(final, data, mode)
            return
        final.write_bytes(data)
        final.chmod(mode)

    def add_to_index(self, desc: Descriptor, annotations: Mapping[str, str]) -> Descriptor:
        entry = Descriptor(desc.media_type, desc.digest, desc.size, dict(annotations),
                           desc.artifact_type)
        self.pending.append(entry)
        return entry

    def referrers(self, subject_digest: str) -> list[Descriptor]:
        return []  # every synthetic release is new: nothing refers to it yet

    def write_index(self) -> int:
        with self._locked():
            self._recover()
            entries = [*self._index_file(), *self.pending]
            self._write_index(entries)
        self.pending = []
        return len(entries)


@dataclass(frozen=True)
class SyntheticReleases:
    """Releases as a build would store them (release, inputs, attempt, evidence, with the
    same manifests and index annotations), from tiny made-up outputs and sources."""

    store: BulkStore
    image: StoredImage
    runs: Mapping[str, Mapping[str, str]]  # run name -> variations, as the real plan has
    signer: KeySigner

    def write(self, number: int) -> None:
        name = f"synthetic-{number:05d}"
        release = f"{name}@1.0.0"
        st = self.store
        output = f"synthetic release {number}\n".encode()
        output_digest, output_size = st.put_bytes(output)
        manifest = st.put_artifact(RELEASE_TYPE, [Descriptor(
            "application/octet-stream", output_digest, output_size, {TITLE: "r"})],
            annotations={RELEASE_ANN: release,
                         "org.opencontainers.image.created": iso_time(EPOCH)})
        st.add_to_index(manifest, {REF_NAME: release, KIND: "release"})
        inputs, recipe, text, tree, archive = self._inputs(name, release)
        st.add_to_index(inputs, {KIND: "inputs", RELEASE_ANN: release,
                                 SUBJECT: manifest.digest})
        logs = {run: st.put_bytes(f"run {run} of {name}: exit 0\n".encode())
                for run in self.runs}
        record = {"release": release, "status": "reproducible", "image": self.image.reference,
                  "inputs": inputs.digest, "source_date_epoch": EPOCH,
                  "runs": [{"name": run, "variations": dict(variations), "exit_code": 0,
                            "timed_out": False, "log": logs[run][0]}
                           for run, variations in self.runs.items()],
                  "artifacts": [{"name": "r", "sha256": output_digest.removeprefix("sha256:"),
                                 "size": output_size}],
                  "differences": []}
        record_digest, record_size = st.put_bytes(canonical_json(record))
        attempt = st.put_artifact(ATTEMPT_TYPE, [
            Descriptor(RECORD_MEDIA, record_digest, record_size, {TITLE: "comparison.json"}),
            *(Descriptor(LOG_MEDIA, digest, size, {TITLE: f"run-{run}.log"})
              for run, (digest, size) in logs.items())],
            subject=manifest, annotations={RELEASE_ANN: release,
                                           "dev.rebuild.status": "reproducible"})
        st.add_to_index(attempt, {KIND: "attempt", RELEASE_ANN: release,
                                  "dev.rebuild.status": "reproducible",
                                  SUBJECT: manifest.digest})
        facts = self._facts(name, recipe, text, (tree, archive), output_digest,
                            record_digest, {run: d for run, (d, _) in logs.items()},
                            attempt.digest)
        statements, sbom = build_statements(facts, None)
        link = build_link(facts, ["sh", "-c", SCRIPT.format(out="/out")], self.signer)
        attach_evidence(st, manifest, release, statements, sbom, self.signer, link)

    def _inputs(self, name: str, release: str) -> tuple[Descriptor, Recipe, bytes, str, str]:
        """The inputs record: recipe, a one-file source tree as a canonical tar, the image."""
        st = self.store
        readme = f"source of {name}\n".encode()
        tree = hash_tree([TreeEntry("README", "file", hashlib.sha256(readme).hexdigest())])
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("README")
            info.size, info.mtime, info.mode = len(readme), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(readme))
        archive, archive_size = st.put_bytes(buffer.getvalue())
        text = (f'[recipe]\nname = "{name}"\nversion = "1.0.0"\n\n'
                f'[source]\npath = "src"\ndigest = "{tree}"\n\n'
                f'[environment]\nimage = "{self.image.reference}"\n'
                f"source_date_epoch = {EPOCH}\n\n"
                f'[build]\ncommand = ["sh", "-c", {json.dumps(SCRIPT.format(out="/out"))}]\n'
                'outputs = ["r"]\ntimeout = 120\nmemory = "512m"\n\n'
                '[check]\nvary = ["all"]\n').encode()
        recipe = parse_recipe(tomllib.loads(text.decode()), source=f"{name}.toml")
        recipe_digest, recipe_size = st.put_bytes(text)
        image_size = st.blob_path(self.image.manifest).stat().st_size
        inputs = st.put_artifact(INPUTS_TYPE, [
            Descriptor("application/toml", recipe_digest, recipe_size,
                       {TITLE: f"{name}.toml"}),
            Descriptor("application/x-tar", archive, archive_size,
                       {TITLE: "source.tar", "dev.rebuild.tree": tree}),
            Descriptor(OCI_MANIFEST, self.image.manifest, image_size,
                       {TITLE: "image", IMAGE_ID_ANN: self.image.image_id})],
            annotations={RELEASE_ANN: release, EPOCH_ANN: str(EPOCH)})
        return inputs, recipe, text, tree, archive

    def _facts(self, name: str, recipe: Recipe, text: bytes, source: tuple[str, str],
               output: str, record: str, logs: Mapping[str, str], attempt: str) -> BuildFacts:
        """What gather_facts would gather; `source` is (tree digest, archive digest)."""
        image_name, tag, image_id = parse_image_reference(self.image.reference)
        return BuildFacts(
            release=recipe.release, name=name, version="1.0.0",
            recipe=recipe.model_dump(mode="json"),
            recipe_digest="sha256:" + hashlib.sha256(text).hexdigest(), requirements=(),
            change=None,
            source=Dependency("source", "file:src", digest_set(source[0]),
                              {"archive": source[1]}),
            image=Dependency(f"{image_name}:{tag}" if tag else image_name,
                             f"docker-image:{self.image.reference}", digest_set(image_id),
                             {"archive": self.image.archive}),
            # No Debian packages: the SBOM stays small (the real release lists them all).
            wheels=(), deb_packages=(), py_packages=(), source_date_epoch=EPOCH,
            variations={run: dict(v) for run, v in self.runs.items()},
            subjects=(Subject("r", output.removeprefix("sha256:")),),
            comparison={"reproducible": True, "record": record}, logs=dict(logs),
            builder_version=__version__, invocation_id=attempt)


def show_10k(ctx: Context) -> Section:
    """Issue 6: `rebuild show` of one release in a store of 10,000."""
    image = base_image()
    directory = ctx.work / "show"
    directory.mkdir()
    store_path = seed_store(directory / "store")
    recipe = write_recipe(directory, image, name="bench-show")
    release = "bench-show@1.0.0"
    ci_key, ci_pub = keygen(directory / "ci")
    qa_key, _ = keygen(directory / "qa")
    quality_key, _ = keygen(directory / "quality")
    setup = [
        rebuild_argv(store_path, "build", recipe, "--key", ci_key, "--json"),
        rebuild_argv(store_path, "reproduce", release, "--key", qa_key, "--json"),
        rebuild_argv(store_path, "approve", release, "--role", "quality", "--meaning",
                     "released for the show benchmark", "--name", "Bench Quality",
                     "--key", quality_key, "--trust", ci_pub, "--json"),
    ]
    for argv in setup:
        run_command(argv, cwd=directory, what=f"rebuild {argv[3]}")
    store = Store(store_path)
    policy = Policy((load_public_key(ci_pub),))
    show_cmd = rebuild_argv(store_path, "show", release, "--key", ci_pub, "--json")
    query_index = store_path / ".cache" / "query.sqlite"

    def check(story: Mapping[str, Any]) -> None:
        if (story["release"] != release or len(story["verdicts"]) != 1
                or len(story["approvals"]) != 1 or story["verification"]["verified"] is not True
                or story["provenance"]["signature"]["status"] != "verified"):
            raise BenchError(f"rebuild show {release} told the wrong story: "
                             f"{json.dumps(story)[:2000]}")

    def show_cli() -> float:
        seconds, proc = timed(show_cmd, cwd=directory, what="rebuild show")
        check(json.loads(proc.stdout))
        return seconds

    verify_cmd = rebuild_argv(store_path, "verify", release, "--key", ci_pub, "--json")

    def verify_cli() -> float:
        seconds, proc = timed(verify_cmd, cwd=directory, what="rebuild verify")
        report = json.loads(proc.stdout)
        if report.get("verified") is not True or report.get("release") != release:
            raise BenchError(f"rebuild verify {release} did not verify: {proc.stdout[:2000]}")
        return seconds

    def show_cold_index() -> float:
        query_index.unlink()
        return show_cli()

    def story_in_process() -> float:
        started = time.perf_counter()
        story = release_story(store, release, policy)
        seconds = time.perf_counter() - started
        check(story)
        return seconds

    say("  one release: the store before seeding")
    base = measure([Contender("one_cli", "show", show_cli),
                    Contender("one_story", "release_story", story_in_process)],
                   ctx.reps, say, ctx.loads)
    say(f"  seeding {SYNTHETIC_RELEASES} synthetic releases")
    started = time.perf_counter()
    bulk = BulkStore(store_path)
    plan = plan_build(load_recipe(recipe).recipe, EPOCH)
    entry = find_image(store, image.rsplit("@", 1)[1])
    if entry is None:
        raise BenchError(f"{image} is not archived in {store_path}")
    synthetic = SyntheticReleases(bulk, stored_image(store, entry.digest),
                                  {run.name: run.describe() for run in plan.runs},
                                  KeySigner(load_signer(ci_key, passphrase_from_env())))
    for number in range(1, SYNTHETIC_RELEASES + 1):
        synthetic.write(number)
    entries = bulk.write_index()
    seeding = time.perf_counter() - started
    # From index.json itself: a lookup would build the query index the first show pays for.
    releases = sum((e.annotations or {}).get(KIND) == "release" for e in store.index())
    if releases != SYNTHETIC_RELEASES + 1:
        raise BenchError(f"the seeded store lists {releases} releases, not "
                         f"{SYNTHETIC_RELEASES + 1}")
    first = show_cli()
    say(f"  seeded {entries} index entries in {seeding:.1f} s; first show {first:.3f} s")
    contenders = [
        Contender("cli", "rebuild show --key ci.pub --json (query index up to date)",
                  show_cli),
        Contender("verify", "rebuild verify --key ci.pub --json (query index up to date)",
                  verify_cli),
        Contender("cli_cold", "rebuild show, query index deleted first (rebuilt from "
                  "index.json)", show_cold_index),
        Contender("story", "release_story() alone, in-process (query index up to date)",
                  story_in_process),
        startup_contender(),
    ]
    samples = measure(contenders, ctx.reps, say, ctx.loads)
    samples |= {"first": [first], "one_cli": base["one_cli"], "one_story": base["one_story"]}
    labels = {
        "cli": contenders[0].label,
        "verify": contenders[1].label,
        "first": "rebuild show, first run after seeding (builds the query index; once)",
        "cli_cold": contenders[2].label,
        "story": contenders[3].label,
        "startup": contenders[4].label,
        "one_cli": "  before seeding (1 release): rebuild show",
        "one_story": "  before seeding (1 release): release_story() in-process",
    }
    rows = timings(samples, labels, informational=("startup", "one_cli", "one_story"))
    by_key = {t.key: t for t in rows}
    meets = [key for key in ("cli", "verify", "first", "cli_cold", "story")
             if by_key[key].median < SHOW_GOAL_S]
    index_mb = (store_path / "index.json").stat().st_size / 1e6
    verdicts = (
        *(f"{by_key[key].label.strip()}: {by_key[key].median * 1000:.0f} ms median, "
          f"{by_key[key].min * 1000:.0f} ms min; goal under 200 ms: "
          f"{goal(by_key[key].median < SHOW_GOAL_S)}"
          for key in ("cli", "verify", "first", "cli_cold", "story")),
        "the goal is met by: " + (", ".join(by_key[k].label.split(" (")[0] for k in meets)
                                  if meets else "no measure")
        + f"; the CLI's start alone (`rebuild --version`) takes "
        f"{by_key['startup'].median * 1000:.0f} ms, show with the query index up to date "
        f"{(by_key['cli'].median - by_key['startup'].median) * 1000:.0f} ms more (medians)",
        f"1-minute load during the rounds: {min(ctx.loads):.2f}–{max(ctx.loads):.2f} (2 "
        "cores, shared)",
    )
    return Section(
        name="show_10k",
        title="rebuild show and verify in a store of 10,000 releases (issue 6)",
        method=(f"N={ctx.reps} timed repetitions of each after one untimed warm-up, "
                "interleaved; the first run after seeding once. CLI wall seconds, and the "
                "call of rebuild.release.report.release_story alone in the bench's process."),
        timings=rows,
        verdicts=verdicts,
        commands=(("show", shlex.join(show_cmd)), ("verify", shlex.join(verify_cmd)),
                  ("in-process", "rebuild.release.report.release_story("
                   f"Store({str(store_path)!r}), {release!r}, Policy((load_public_key(ci.pub),)))"),
                  *((f"seed: {argv[3]}", shlex.join(argv)) for argv in setup)),
        notes=(
            f"The store: one real release ({release}: a tiny recipe on debian-minimal built "
            "with --key ci.key, one `reproduce --key qa.key` verdict, one `approve` by a "
            f"third key) and {SYNTHETIC_RELEASES:,} synthetic releases, each a release, "
            "inputs, attempt and evidence manifest as a build writes them (the store's own "
            "put_artifact, build_statements and attach_evidence; provenance, SBOM and link "
            "signed by ci.key; SBOMs without Debian packages), their index entries carrying "
            f"the same annotations; index.json written once: {entries:,} entries, "
            f"{index_mb:.1f} MB. Seeding took {seeding:.0f} s.",
            "show verifies with ci.pub only: the release's provenance, SBOM and link "
            "signatures are checked, the QA verdict and the approval are listed as signed "
            "by keys not given. Each story is checked (1 verdict, 1 approval, verified).",
            "The query index (.cache/query.sqlite) is a cache of index.json, rebuilt when "
            "index.json changes: the first show after seeding pays for it, as does the "
            "`query index deleted` row.",
        ),
        data={"entries": entries, "releases": releases, "index_json_bytes":
              (store_path / "index.json").stat().st_size, "seeding_s": round(seeding, 1),
              "goal_met_by": meets},
    )


SCALE_LEVELS = (0, 10_000, 100_000)  # synthetic releases beside the real one
# Past this many, synthetic releases are renamed copies of the index entries of the first
# ones (signing 98,000 more SBOMs and provenances takes the better part of an hour here;
# what a build or show meets of the store's size is index.json and the query cache).
SIGNED_RELEASES = 2_000
BUILD_GOAL = 0.10  # issue 8: a build into 100,000 releases within 10 % of one into none


def renamed_copies(index: list[Descriptor], numbers: range,
                   signed: int) -> list[Descriptor]:
    """Index entries of synthetic releases `numbers`: those of synthetic release
    ((n - 1) % signed) + 1 under the name of release n (same manifests, so the store stays
    consistent: fsck finds everything it names)."""
    by_release: dict[str, list[Descriptor]] = {}
    for entry in index:
        ann = entry.annotations or {}
        name = ann.get(RELEASE_ANN) or ann.get(REF_NAME) or ""
        if name.startswith("synthetic-"):
            by_release.setdefault(name, []).append(entry)
    copies = []
    for number in numbers:
        template = f"synthetic-{(number - 1) % signed + 1:05d}@1.0.0"
        name = f"synthetic-{number:06d}@1.0.0"
        for entry in by_release[template]:
            ann = dict(entry.annotations or {})
            for key in (REF_NAME, RELEASE_ANN):
                if key in ann:
                    ann[key] = name
            copies.append(Descriptor(entry.media_type, entry.digest, entry.size, ann,
                                     entry.artifact_type))
    return copies


def store_scale(ctx: Context) -> Section:
    """Issue 8: the cost of a tiny build, and of the `rebuild show` right after it, in stores
    of 0, 10,000 and 100,000 releases, measured in the same rounds (the load changes)."""
    image = base_image()
    directory = ctx.work / "scale"
    directory.mkdir()
    recipe = write_recipe(directory, image, name="bench-scale")
    # Reproducible under the umask variation too: the release must be stored each time.
    recipe.write_text(recipe.read_text().replace("printf hello > /out/r",
                                                 "printf hello > /out/r && chmod 644 /out/r"))
    release = "bench-scale@1.0.0"
    ci_key, ci_pub = keygen(directory / "ci")
    stores = {level: directory / f"store-{level}" for level in SCALE_LEVELS}

    def build(level: int) -> float:
        argv = rebuild_argv(stores[level], "build", recipe, "--key", ci_key, "--json")
        seconds, proc = timed(argv, cwd=directory, what="rebuild build")
        if json.loads(proc.stdout).get("release") != release:
            raise BenchError(f"rebuild build printed {proc.stdout[:2000]}")
        return seconds

    def verify(level: int) -> float:
        argv = rebuild_argv(stores[level], "verify", release, "--key", ci_pub, "--json")
        seconds, proc = timed(argv, cwd=directory, what="rebuild verify")
        report = json.loads(proc.stdout)
        if report.get("verified") is not True or report.get("release") != release:
            raise BenchError(f"rebuild verify {release} did not verify: {proc.stdout[:2000]}")
        return seconds

    def show(level: int) -> float:
        argv = rebuild_argv(stores[level], "show", release, "--key", ci_pub, "--json")
        seconds, proc = timed(argv, cwd=directory, what="rebuild show")
        story = json.loads(proc.stdout)
        if story["release"] != release or story["verification"]["verified"] is not True:
            raise BenchError(f"rebuild show {release} told the wrong story: {proc.stdout[:2000]}")
        return seconds

    samples: dict[str, list[float]] = {}
    seeding: dict[int, float] = {}
    previous: Path | None = None
    for level in SCALE_LEVELS:
        target = stores[level]
        started = time.perf_counter()
        if previous is None:
            seed_store(target)
        else:  # the previous store, blobs hard-linked (never modified), then more releases
            shutil.copytree(previous, target, copy_function=os.link,
                            ignore=shutil.ignore_patterns(".cache", ".leases", ".tmp"))
        store, bulk = Store(target), BulkStore(target)
        entry = find_image(store, image.rsplit("@", 1)[1])
        if entry is None:
            raise BenchError(f"{image} is not archived in {target}")
        plan = plan_build(load_recipe(recipe).recipe, EPOCH)
        synthetic = SyntheticReleases(bulk, stored_image(store, entry.digest),
                                      {run.name: run.describe() for run in plan.runs},
                                      KeySigner(load_signer(ci_key, passphrase_from_env())))
        have = len({(e.annotations or {}).get(REF_NAME) for e in store.entries("release")}
                   - {release, None}) if previous is not None else 0
        say(f"  store of {level:,}: seeding synthetic releases {have + 1:,} to {level:,}")
        for number in range(have + 1, min(level, SIGNED_RELEASES) + 1):
            synthetic.write(number)
        if level > SIGNED_RELEASES:
            bulk.pending += renamed_copies([*store.index(), *bulk.pending], range(
                max(have, SIGNED_RELEASES) + 1, level + 1), SIGNED_RELEASES)
        entries = bulk.write_index() if bulk.pending or previous is None else len(store.index())
        seeding[level] = time.perf_counter() - started
        # Once after seeding: the query cache is rebuilt from the new index.json (what a
        # store migrated from an older rebuild costs once, not each write).
        samples[f"first_{level}"] = [build(level)]
        say(f"  seeded to {entries:,} index entries in {seeding[level]:.0f} s; first build "
            f"{samples[f'first_{level}'][0]:.2f} s")
        previous = target
    policy = Policy((load_public_key(ci_pub),))

    def story(level: int) -> float:
        started = time.perf_counter()
        told = release_story(Store(stores[level]), release, policy)
        seconds = time.perf_counter() - started
        if told["verification"]["verified"] is not True:
            raise BenchError(f"release_story told the wrong story: {json.dumps(told)[:2000]}")
        return seconds

    contenders = [c for level in SCALE_LEVELS for c in (
        Contender(f"build_{level}", f"build, {level:,}", functools.partial(build, level)),
        Contender(f"show_{level}", f"show, {level:,}", functools.partial(show, level)),
        Contender(f"verify_{level}", f"verify, {level:,}", functools.partial(verify, level)),
        Contender(f"story_{level}", f"story, {level:,}", functools.partial(story, level)))]
    samples |= measure([*contenders, startup_contender()], ctx.reps, say, ctx.loads)
    labels: dict[str, str] = {}
    for level in SCALE_LEVELS:
        labels |= {
            f"build_{level}": f"{level + 1:,} releases: rebuild build --key (CLI wall)",
            f"show_{level}": f"{level + 1:,} releases: rebuild show --key --json, the first "
                             "call after that build",
            f"verify_{level}": f"{level + 1:,} releases: rebuild verify --key --json",
            f"story_{level}": f"  {level + 1:,} releases: release_story() in-process (what "
                              "show does, without the CLI's start)",
        }
    labels["startup"] = "  floor: `rebuild --version` (interpreter start, imports)"
    for level in SCALE_LEVELS:
        labels[f"first_{level}"] = (f"  {level + 1:,} releases: the first build after "
                                    "seeding (rebuilds the query cache; once)")
    sizes: dict[int, dict[str, Any]] = {}
    for level, target in stores.items():
        index = json.loads((target / "index.json").read_bytes())["manifests"]
        named = sum((e.get("annotations") or {}).get(REF_NAME) == release for e in index)
        if named != 1:  # index.json alone names the built release: no compact, no journal
            raise BenchError(f"{target}/index.json names {release} {named} times, not once")
        sizes[level] = {"index_json_bytes": (target / "index.json").stat().st_size,
                        "entries": len(index), "seeding_s": round(seeding[level], 1)}
    rows = timings(samples, labels, informational=(
        "startup", *(f"{kind}_{level}" for level in SCALE_LEVELS for kind in ("first", "story"))))
    by_key = {t.key: t for t in rows}
    empty, largest = by_key["build_0"].median, by_key[f"build_{SCALE_LEVELS[-1]}"].median
    growth = largest / empty - 1
    verdicts = (
        *(f"build into {level + 1:,} releases: {by_key[f'build_{level}'].median:.2f} s median "
          f"({by_key[f'build_{level}'].median / empty - 1:+.1%} against a store of "
          f"{SCALE_LEVELS[0] + 1})"
          for level in SCALE_LEVELS),
        f"build into {SCALE_LEVELS[-1] + 1:,} releases within 10 % of one into a store of "
        f"{SCALE_LEVELS[0] + 1}: {growth:+.1%}: {goal(growth <= BUILD_GOAL)}",
        *(f"release_story() in-process, {level + 1:,} releases: "
          f"{by_key[f'story_{level}'].median * 1000:.0f} ms median" for level in SCALE_LEVELS),
        f"the CLI's start alone (`rebuild --version`): {by_key['startup'].median * 1000:.0f} "
        "ms median",
        *(f"show right after a build, {level + 1:,} releases: "
          f"{by_key[f'show_{level}'].median * 1000:.0f} ms median, "
          f"{max(by_key[f'show_{level}'].samples) * 1000:.0f} ms max; goal under 200 ms: "
          f"{goal(max(by_key[f'show_{level}'].samples) < SHOW_GOAL_S)}"
          for level in SCALE_LEVELS),
        *(f"verify, {level + 1:,} releases: {by_key[f'verify_{level}'].median * 1000:.0f} ms "
          f"median, {by_key[f'verify_{level}'].min * 1000:.0f} ms min; goal under 200 ms: "
          f"{goal(by_key[f'verify_{level}'].median < SHOW_GOAL_S)}" for level in SCALE_LEVELS),
        f"1-minute load during the rounds: {min(ctx.loads):.2f}–{max(ctx.loads):.2f} (2 "
        "cores, shared)",
    )
    return Section(
        name="store_scale",
        title="A build, and show and verify after it, in stores of 1, 10,001 and 100,001 "
              "releases (issue 12)",
        method=(f"Three stores, seeded in turn, each with one first build after seeding; then "
                f"N={ctx.reps} rounds (after one untimed warm-up), each round a build, a show "
                "and a verify of the built release in each store in turn, so that all sizes "
                "meet the same load; the show is the first call after the build changed the "
                "store. CLI wall seconds."),
        timings=rows,
        verdicts=verdicts,
        commands=(("build", shlex.join(rebuild_argv(stores[SCALE_LEVELS[-1]], "build", recipe,
                                                   "--key", ci_key, "--json"))),
                  ("show", shlex.join(rebuild_argv(stores[SCALE_LEVELS[-1]], "show", release,
                                                   "--key", ci_pub, "--json")))),
        notes=(
            "The synthetic releases are those of show_10k (release, inputs, attempt and "
            "evidence manifests as a build writes them, signed by ci.key), written in bulk, "
            f"index.json written once per level. Past {SIGNED_RELEASES:,}, a synthetic "
            "release is index entries only: those of an earlier synthetic release (same "
            "manifests, same annotations) under a new name, so index.json, the query cache "
            "and the index lookups are those of a store of 100,000 releases while blobs/ holds "
            f"those of {SIGNED_RELEASES:,}. The built release is the same each time "
            "(its index entries are identical; each build still runs both runs, compares, "
            "signs and appends its entries).",
            "index.json is appended in place (a write-ahead record first), never rewritten "
            "by a build, and names every entry at every moment: after the rounds, each "
            "store's index.json (read with json.loads alone) is checked to name the built "
            "release; the query cache reads only the appended bytes (docs/formats.md, "
            "\"`index.json`, appended in place\").",
        ),
        data={"sizes": {str(k): v for k, v in sizes.items()}, "build_growth": round(growth, 4)},
    )


INDEX_LEVELS = (0, 40_000, 400_000)  # index entries: a release is about four
INDEX_WRITES = 20  # index writes per timed sample


def index_writes(ctx: Context) -> Section:
    """Issue 8, the store's share of a build: naming entries in index.json (in place, after
    a write-ahead record; the query cache updated) and looking them up, in stores whose
    index.json holds 0, 40,000 and 400,000 entries. Wall and CPU seconds of the calling
    process, which unlike a whole build's wall time hardly move with other people's load."""
    directory = ctx.work / "index"
    stores: dict[int, Path] = {}
    first: dict[str, list[float]] = {}
    for level in INDEX_LEVELS:
        st = Store(directory / f"store-{level}")
        st.init()
        st.put_bytes(b"{}")
        with st._locked():  # one write of the whole index, as a store grows to it
            st._write_index([Descriptor(OCI_EMPTY, EMPTY_DIGEST, 2, {
                REF_NAME: f"filler-{i}@1", KIND: "release"} if i % 4 == 0 else {
                KIND: "evidence", SUBJECT: f"sha256:{i // 4:064x}"}) for i in range(level)])
        started = time.perf_counter()
        if Store(st.root).find("filler-0@1") is None and level:
            raise BenchError(f"{st.root}: the query cache does not find filler-0@1")
        first[f"first_{level}"] = [time.perf_counter() - started]
        stores[level] = st.root
    names = itertools.count()

    def writes(level: int, clock: Callable[[], float]) -> float:
        st = Store(stores[level])
        started = clock()
        for _ in range(INDEX_WRITES):
            st.add_to_index(Descriptor(OCI_EMPTY, EMPTY_DIGEST, 2),
                            {REF_NAME: f"new-{next(names)}@1", KIND: "release"})
        return (clock() - started) / INDEX_WRITES

    def lookups(level: int) -> float:
        st = Store(stores[level])
        started = time.perf_counter()
        for _ in range(INDEX_WRITES):
            if st.find("filler-0@1" if level else "new-0@1") is None:
                raise BenchError("a lookup found nothing")
            st.referrers(f"sha256:{0:064x}")
        return (time.perf_counter() - started) / INDEX_WRITES

    contenders = [c for level in INDEX_LEVELS for c in (
        Contender(f"write_{level}", f"write, {level:,}",
                  functools.partial(writes, level, time.perf_counter)),
        Contender(f"cpu_{level}", f"write cpu, {level:,}",
                  functools.partial(writes, level, time.process_time)),
        Contender(f"lookup_{level}", f"lookup, {level:,}", functools.partial(lookups, level)))]
    samples = measure(contenders, ctx.reps, say, ctx.loads) | first
    labels: dict[str, str] = {}
    for level in INDEX_LEVELS:
        labels |= {f"write_{level}": f"{level:,} entries: one add_to_index, wall",
                   f"cpu_{level}": f"{level:,} entries: one add_to_index, CPU of the process",
                   f"lookup_{level}": f"{level:,} entries: find + referrers, wall"}
    for level in INDEX_LEVELS:
        labels[f"first_{level}"] = (f"  {level:,} entries: the first lookup after index.json "
                                    "was written whole (builds the query cache; once)")
    rows = timings(samples, labels, informational=tuple(f"first_{n}" for n in INDEX_LEVELS))
    by_key = {t.key: t for t in rows}
    base_wall, base_cpu = by_key["write_0"].median, by_key["cpu_0"].median
    verdicts = (
        *(f"one index write, {level:,} entries: {by_key[f'write_{level}'].median * 1000:.2f} ms "
          f"wall ({by_key[f'write_{level}'].median / base_wall - 1:+.0%}), "
          f"{by_key[f'cpu_{level}'].median * 1000:.2f} ms CPU "
          f"({by_key[f'cpu_{level}'].median / base_cpu - 1:+.0%}) against an empty index"
          for level in INDEX_LEVELS),
        f"1-minute load during the rounds: {min(ctx.loads):.2f}–{max(ctx.loads):.2f} (2 "
        "cores, shared)",
    )
    return Section(
        name="index_writes",
        title="Naming entries in index.json at 0, 40,000 and 400,000 entries (issue 12)",
        method=(f"N={ctx.reps} interleaved rounds after one warm-up; each sample is the mean "
                f"of {INDEX_WRITES} calls of Store.add_to_index (a new entry each: the "
                "write-ahead record and index.json fsynced, the query cache updated) or of "
                "find + referrers, in this process."),
        timings=rows,
        verdicts=verdicts,
        commands=(("write", "rebuild.store.layout.Store(STORE).add_to_index(...)"),),
        notes=("index.json of each store written once, whole, with release and evidence "
               "entries (as a store of 10,000 and 100,000 releases has about 40,000 and "
               "400,000); the first lookup then builds the query cache once.",),
        data={"sizes": {str(n): (stores[n] / "index.json").stat().st_size
                        for n in INDEX_LEVELS}},
    )
