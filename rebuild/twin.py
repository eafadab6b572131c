"""The twin build: fetch, plan, run A ‖ run B, compare, and record the result in the store.

This module sequences the stages; each stage lives in its own module. What it writes to the
store is deterministic (no wall-clock times, no host paths), so building the same recipe
again adds nothing new to the layout; the audit log records each attempt (rebuild.auditlog).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rebuild.attest import (
    Evidence,
    attach_evidence,
    build_link,
    build_statements,
    gather_facts,
    prepare_sbom,
)
from rebuild.build.compare import (
    COMPARED,
    Artifact,
    Difference,
    collect_outputs,
    compare_artifacts,
    diff_reports,
    differing_properties,
    format_mode,
    keep_outputs,
    parse_mode,
)
from rebuild.build.explain import Blame, Explanation, explain_differences
from rebuild.build.image import StoredImage, find_image, load_archived, stored_image
from rebuild.build.limits import MAX_RESULTS_SIZE
from rebuild.build.network import network_hint
from rebuild.build.output_image import (
    IMAGE_ARTIFACT,
    describe_difference,
    image_root,
    with_image,
)
from rebuild.build.plan import RESULTS_DIR, BuildPlan, RunPlan, plan_build, plan_run
from rebuild.build.recipe import LoadedRecipe, Recipe, Test, TestSuite
from rebuild.build.sandbox import (
    RunResult,
    Sandbox,
    connect,
    engine_facts,
    has_image,
    load_image,
    reap_orphans,
    require_success,
)
from rebuild.errors import BuildFailed, ClaimFailed, StoreError, UsageError
from rebuild.evidence.provenance import Subject, make_test_result
from rebuild.evidence.testresult import ResultsError, make_suite_result, parse_junit
from rebuild.inputs.fetch import (
    NPM_LOCK_MEDIA,
    NPM_LOCK_NAME,
    NPM_MEDIA,
    TREE_ANN,
    Inputs,
    export_npm_cache,
    export_wheels,
    fetch_inputs,
    parse_lock,
)
from rebuild.store.auditlog import log_build
from rebuild.store.layout import (
    ATTEMPT_TYPE,
    EPOCH_ANN,
    IMAGE_ID_ANN,
    INPUTS_TYPE,
    KIND,
    LINK_ANN,
    MODE_ANN,
    OCI_MANIFEST,
    REF_NAME,
    RELEASE_ANN,
    RELEASE_TYPE,
    SUBJECT,
    TITLE,
    Descriptor,
    Store,
    canonical_json,
    release_annotations,
)

if TYPE_CHECKING:
    from rebuild.evidence.sign import StatementSigner

RECORD_MEDIA = "application/vnd.rebuild.comparison.v1+json"
LOG_MEDIA = "text/plain; charset=utf-8"
HTML_MEDIA = "text/html; charset=utf-8"
JSON_MEDIA = "application/json"

Log = Callable[[str], None]


@dataclass(frozen=True)
class DifferenceReport:
    difference: Difference
    variations: tuple[str, ...]  # the culprits with --explain, else every enabled variation
    report: str  # digest of the stored text report
    html: str | None = None  # digests of the HTML and JSON reports
    json: str | None = None
    blame: Blame | None = None  # with --explain: the verdict, its hints and note

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.difference.name, "variations": list(self.variations),
               "report": self.report,
               "reports": {"text": self.report, "html": self.html, "json": self.json},
               "explained": self.blame is not None,
               "hints": list(self.blame.hints) if self.blame else [],
               "a": self.difference.a.sha256 if self.difference.a else None,
               "b": self.difference.b.sha256 if self.difference.b else None,
               "differs": list(self.differs)}
        if self.blame is not None and self.blame.note:
            out["note"] = self.blame.note
        return out

    @property
    def differs(self) -> tuple[str, ...]:
        """The properties that differ (`compare.COMPARED`); ("presence",) when one run lacks it."""
        a, b = self.difference.a, self.difference.b
        return ("presence",) if a is None or b is None else differing_properties(a, b)


@dataclass(frozen=True)
class BuildOutcome:
    release: str
    reproducible: bool
    artifacts: tuple[Artifact, ...]
    runs: tuple[tuple[RunPlan, RunResult], ...]
    differences: tuple[DifferenceReport, ...]
    attempt: str
    inputs: str
    release_manifest: str | None
    store: Path
    evidence: Evidence
    explanation: Explanation | None = None
    # Wall seconds per stage: fetch, runs (both, concurrently), compare (with explain and
    # test), evidence (statements, SBOM, signatures, storing), total.
    timings: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **({"explain": self.explanation.to_json()} if self.explanation else {}),
            "release": self.release,
            "reproducible": self.reproducible,
            "compared": list(COMPARED),
            "artifacts": [a.to_json() for a in self.artifacts],
            "runs": [{"name": plan.name, "variations": plan.describe(),
                      "exit_code": result.exit_code, "seconds": round(result.seconds, 3)}
                     for plan, result in self.runs],
            "differences": [d.to_json() for d in self.differences],
            "evidence": {"attempt": self.attempt, "inputs": self.inputs,
                         **self.evidence.to_json()},
            "manifest": self.release_manifest,
            "store": str(self.store),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


class Stopwatch:
    """Wall time per stage, for `timings` in the JSON output and for the benchmarks."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = now - self.last
        self.laps["total"] = now - self.start
        self.last = now


def iso_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def twin_build(loaded: LoadedRecipe, store: Store, *, cache_dir: Path,
               signer: StatementSigner | None = None, log: Log = lambda _: None,
               debug: Log = lambda _: None, explain: bool = False,
               keep: Path | None = None, engine_b: str | None = None,
               engine_b_copy: bool = False) -> BuildOutcome:
    """Build a recipe twice, compare, and store the attempt (and the release when it holds).

    `explain`: when the runs differ, find the variations responsible (rebuild.explain).
    `keep`: copy both runs' /out trees to keep/a and keep/b.
    `engine_b`: run b on this Docker engine (a DOCKER_HOST value) instead of run a's; the
    comparison record and the provenance then name each run's engine. `engine_b_copy`: ship
    run b's inputs into that engine (put_archive) and its /out back, mounting nothing of this
    host (chosen for an engine on another machine; detected when the engine refuses a mount).
    Every blob the build finds or writes is leased, so `rebuild store gc` keeps it meanwhile.
    """
    clock = Stopwatch()
    client = connect()  # the environment first: nothing is fetched for an unusable engine
    client_b = connect(engine_b) if engine_b is not None else None
    refuse_release_conflict(store, loaded)
    remove_leftovers(client, store, log)
    if client_b is not None:
        remove_leftovers(client_b, store, log)
    store.init()
    with store.lease():
        return _twin_build(client, loaded, store, cache_dir=cache_dir, signer=signer,
                           log=log, debug=debug, explain=explain, keep=keep, clock=clock,
                           client_b=client_b, copy_b=engine_b_copy)


def remove_leftovers(client: Any, store: Store, log: Log) -> None:
    """Remove what killed rebuild processes left: containers, mounts and workspaces of dead
    owners (rebuild.runtime), and their partial blobs in the store."""
    reaped = reap_orphans(client)
    temporary = store.remove_dead_temporaries()
    if reaped.containers or reaped.mounts or reaped.workspaces or temporary:
        log(f"removed {reaped.describe()} and {temporary} temporary store file(s) left by "
            "killed rebuild processes")


def _twin_build(client: Any, loaded: LoadedRecipe, store: Store, *, cache_dir: Path,
                signer: StatementSigner | None, log: Log, debug: Log, explain: bool,
                keep: Path | None, clock: Stopwatch, client_b: Any = None,
                copy_b: bool = False) -> BuildOutcome:
    fetched = fetch_inputs(loaded, store, log=log)
    plan = plan_build(loaded.recipe, fetched.source_date_epoch, wheels=fetched.wheel_files,
                      npm=fetched.npm_lock is not None)
    image = archived_image(store, plan.image)
    refuse_release_conflict(store, loaded, {
        loaded.digest, fetched.source.archive, image.manifest, *([fetched.python_lock]
                                                                 if fetched.python_lock else []),
        *(w.blob for w in fetched.wheels),
        *([fetched.npm_lock] if fetched.npm_lock else []), *(n.blob for n in fetched.npm)})
    inputs = _store_inputs(store, loaded, fetched, image)
    log(f"{plan.release}: twin build, run b varies {len(plan.variations)} of 12: "
        f"{', '.join(plan.variations) or 'nothing'}")
    # Run b on engine B: another kernel and CPU, when it is another machine.
    engines = ({} if client_b is None else
               {"a": engine_facts(client), "b": engine_facts(client_b)})
    if engines:
        log(f"run a on engine {_engine_text(engines['a'])}; run b on engine "
            f"{_engine_text(engines['b'])}")
    with ThreadPoolExecutor(max_workers=2) as pool, store.staging() as staging:
        if client_b is not None and copy_b:
            log("run b: its inputs are copied into engine B (put_archive) and /out copied "
                "back; nothing of this host is mounted")
        with Sandbox(client, cache_dir=cache_dir, debug=debug, log=log,
                     engines={} if client_b is None else {"b": client_b},
                     copy_runs={"b"} if client_b is not None and copy_b else ()) as sandbox:
            ensure_loaded(client, store, image, log)
            if client_b is not None:
                ensure_loaded(client_b, store, image, log)
            source_tar = sandbox.workspace / "source.tar"
            store.copy_out(fetched.source.archive, source_tar)
            wheels = export_wheels(store, fetched, sandbox.workspace / "wheels")
            npm = (export_npm_cache(store, fetched.npm, sandbox.workspace / "npm")
                   if fetched.npm_lock is not None else None)
            clock.lap("fetch")
            sbom_part = prepare_sbom(image, signer)  # while the runs wait on the engine
            futures = [pool.submit(sandbox.run, run, source_tar, wheels=wheels, npm=npm)
                       for run in plan.runs]
            results = [f.result() for f in futures]
            clock.lap("runs")
            for run, result in zip(plan.runs, results, strict=True):
                log(f"run {run.name}: exit {result.exit_code} after {result.seconds:.1f} s")
            logs = [store.put_bytes(r.log)[0] for r in results]
            if keep is not None:
                keep_outputs({"a": results[0].out_dir, "b": results[1].out_dir}, keep)
            try:
                for result in results:
                    require_success(result, "the build command")
                # Both runs at once; run a's outputs are copied into the store as they are
                # hashed (named there only if they become the release).
                collected = [pool.submit(collect_outputs, r.out_dir, plan.outputs, r.name,
                                         plan.limits, stage=None if i else staging)
                             for i, r in enumerate(results)]
                a, b = (future.result() for future in collected)
            except BuildFailed as exc:
                attempt, _ = _store_attempt(store, plan, inputs, results, logs, (), (), None,
                                            "failed", engines=engines)
                log_build(store, release=plan.release, attempt=attempt.digest, manifest=None,
                          evidence=None, bundles={}, statements={}, signer=None,
                          status="failed", test_result=None)
                raise BuildFailed(f"{exc}\nlogs kept in the store: attempt "
                                  f"{attempt.digest}", hint=exc.hint) from None
            # An [image_output] image of each run's outputs joins them as an artifact.
            files = a
            a, b = (with_image(store, loaded.recipe, plan.source_date_epoch, run, image)
                    for run in (a, b))
            differences = compare_artifacts(a, b)
            file_differences = tuple(d for d in differences if d.name != IMAGE_ARTIFACT)
            explanation = (explain_differences(loaded.recipe, plan, sandbox, source_tar, files,
                                               file_differences, wheels=wheels, npm=npm,
                                               log=log)
                           if explain and file_differences else None)
            reports = tuple(_image_report(store, d, file_differences, loaded.recipe,
                                          plan.variations)
                            if d.name == IMAGE_ARTIFACT and loaded.recipe.image_output else
                            _report(store, d, plan.variations, explanation, log,
                                    plan.limits.diffoscope_memory) for d in differences)
            test = None
            if not differences and isinstance(loaded.recipe.test, Test):
                test = _run_test(sandbox, store, loaded, plan, source_tar, wheels, results[0],
                                 a, log, npm=npm)
            suites: list[SuiteRun] = []
            try:
                # One after the other: each is a whole container, and the machine's cores
                # are better spent on one suite than shared by all.
                for suite in (() if differences else loaded.recipe.suites):
                    suites.append(_run_suite(sandbox, store, loaded, plan, source_tar, wheels,
                                             results[0], a, suite, log))
            except BuildFailed as exc:
                attempt, _ = _store_attempt(store, plan, inputs, results, logs, a, (), None,
                                            "test-failed", suite_files=_suite_files(suites),
                                            engines=engines)
                log_build(store, release=plan.release, attempt=attempt.digest, manifest=None,
                          evidence=None, bundles={}, statements={}, signer=None,
                          status="test-failed", test_result=None)
                raise BuildFailed(f"{exc}\nlogs kept in the store: attempt "
                                  f"{attempt.digest}") from None
        # The run directories are gone before the store is synced: a syncfs would otherwise
        # write back both runs' outputs too, and removing thousands of written-back files on
        # a busy disk took longer than the build.
        release = None
        if not differences and (test is None or test.passed):
            staging.commit()
            release = _store_release(store, plan, a)
        status = ("not-reproducible" if differences else "test-failed" if release is None
                  else "reproducible")
        attempt, record = _store_attempt(store, plan, inputs, results, logs, a, reports,
                                         release, status, test.log if test else None,
                                         suite_files=_suite_files(suites), engines=engines)
    clock.lap("compare")
    facts = gather_facts(loaded, fetched, image, plan, a, reproducible=not differences,
                         record=record, logs={run.name: log for run, log in
                                              zip(plan.runs, logs, strict=True)},
                         invocation_id=attempt.digest, engines=engines,
                         requirements=parse_lock(store.read_bytes(fetched.python_lock).decode())
                         if fetched.python_lock else ())
    statements, sbom = build_statements(facts, test.statement if test else None,
                                        sbom_part.result())
    statements.update({suite.kind: suite.statement for suite in suites})
    link = build_link(facts, loaded.recipe.build.command, signer) if signer else None
    evidence = attach_evidence(store, release or attempt, plan.release, statements, sbom,
                               signer, link)
    log_build(store, release=plan.release, attempt=attempt.digest,
              manifest=release.digest if release else None, evidence=evidence.manifest,
              bundles=evidence.bundles, statements=evidence.statements,
              signer=evidence.signer, status=status,
              test_result=test.statement["predicate"]["result"] if test else None,
              suite_results={suite.kind: suite.result for suite in suites})
    clock.lap("evidence")
    if test is not None and not test.passed:
        raise BuildFailed(f"the test command failed; the release is not recorded as good\n"
                          f"{test.tail}\nevidence: attempt {attempt.digest}",
                          hint=network_hint(test.tail))
    failed = [suite for suite in suites if suite.result == "FAILED"]
    if failed:
        # Recorded all the same: a failing case is evidence too (the trace matrix shows it
        # and a policy refuses the release for it); CI still sees the failure (exit 4).
        raise BuildFailed("test suite(s) failed: " + "; ".join(s.summary for s in failed)
                          + f"\nthe release {plan.release} is recorded with its signed test "
                          "results, for `rebuild trace` and `verify --policy` to judge")
    return BuildOutcome(plan.release, not differences, a, tuple(zip(plan.runs, results,
                                                                    strict=True)),
                        reports, attempt.digest, inputs.digest,
                        release.digest if release else None, store.root, evidence,
                        explanation, clock.laps)


def refuse_release_conflict(store: Store, loaded: LoadedRecipe,
                            inputs: set[str] | None = None) -> None:
    """A release is immutable: building an existing `name@version` from another recipe (or,
    once fetched, from other inputs) is refused before anything runs, not after both runs.

    `inputs`: the blob digests of this build's inputs (recipe, source, image, lock, wheels);
    without them only the recipe's bytes are compared. A release whose inputs the store does
    not record is left to the check of its artifacts after the runs.
    """
    existing = store.find(loaded.recipe.release) if store.exists() else None
    if existing is None:
        return
    recorded = [{layer["digest"] for layer in store.read_json(entry.digest)["layers"]}
                for entry in store.referrers(existing.digest)
                if (entry.annotations or {}).get(KIND) == "inputs"]
    if not recorded or any(loaded.digest in r if inputs is None else inputs == r
                           for r in recorded):
        return
    what = "another recipe" if inputs is None else "other inputs (source, image or wheels)"
    raise UsageError(f"{loaded.path}: release {loaded.recipe.release} already exists in the "
                     f"store {store.root}, built from {what}; a release is immutable: bump "
                     "[recipe] version (nothing was built)")


def release_artifacts(store: Store, release: Descriptor) -> list[Artifact]:
    """The artifacts a stored release records (name, digest, size, link or mode), as the store
    has them; `mode` is None in a release stored before modes were recorded."""
    artifacts = []
    for layer in store.read_json(release.digest)["layers"]:
        path = store.blob_path(layer["digest"])
        annotations = layer.get("annotations", {})
        mode = annotations.get(MODE_ANN)
        media = layer["mediaType"] if layer["mediaType"] == OCI_MANIFEST else None
        artifacts.append(Artifact(annotations[TITLE], layer["digest"].removeprefix("sha256:"),
                                  layer["size"], path, annotations.get(LINK_ANN),
                                  None if mode is None else parse_mode(mode), media))
    return artifacts


def archived_image(store: Store, reference: str) -> StoredImage:
    """The store's archive of the pinned image: a build may use only what the store keeps."""
    entry = find_image(store, reference.rsplit("@", 1)[1])
    if entry is None:
        raise StoreError(f"image {reference} is not archived in the store {store.root}, so a "
                         "release built on it could not be reproduced later; build it into "
                         "this store with `rebuild image build images/….toml`")
    return stored_image(store, entry.digest)


def _engine_text(facts: Mapping[str, Any]) -> str:
    return (f"{facts['name']} (Docker {facts['version']}, {facts['os']}, kernel "
            f"{facts['kernel']}, {facts['arch']}, id {facts['id'][:14]})")


def ensure_loaded(client: Any, store: Store, image: StoredImage, log: Log) -> None:
    """Make the pinned image available to Docker, loading it from the store when needed."""
    if not has_image(client, image.image_id):
        log(f"loading image {image.image_id[:19]} from the store")
        load_archived(store, image, lambda path: load_image(client, path))


@dataclass(frozen=True)
class TestRun:
    passed: bool
    statement: dict[str, Any]
    log: str  # digest
    tail: str


def _run_test(sandbox: Sandbox, store: Store, loaded: LoadedRecipe, plan: BuildPlan,
              source_tar: Path, wheels: Path | None, built: RunResult,
              artifacts: Sequence[Artifact], log: Log, *, npm: Path | None = None) -> TestRun:
    """Run the recipe's [test] command in a fresh baseline sandbox, over run a's outputs,
    with the same locked Python packages as the build."""
    assert isinstance(loaded.recipe.test, Test)
    command = loaded.recipe.test.command
    run = plan_run(loaded.recipe, "test", (), plan.source_date_epoch, command=command,
                   wheels=plan.runs[0].wheels, npm=plan.runs[0].npm)
    result = sandbox.run(run, source_tar, outputs=built.out_dir, wheels=wheels, npm=npm)
    passed = result.exit_code == 0 and not result.timed_out
    log(f"test: {'passed' if passed else 'FAILED'} (exit {result.exit_code}, "
        f"{result.seconds:.1f} s)")
    log_digest, _ = store.put_bytes(result.log)
    statement = make_test_result(
        subjects=[Subject(a.name, a.sha256, a.media_type) for a in artifacts], passed=passed,
        command=command, log_digest=log_digest, configuration=[])
    tail = "\n".join(result.log.decode(errors="replace").strip().splitlines()[-15:])
    return TestRun(passed, statement, log_digest, tail)


@dataclass(frozen=True)
class SuiteRun:
    """A `[[test]]` suite that ran: its signed-to-be statement and its files in the store."""

    name: str
    statement: dict[str, Any]
    log: str  # digest
    results: str  # digest of its JUnit XML

    @property
    def kind(self) -> str:
        return f"test-result/{self.name}"

    @property
    def result(self) -> str:
        return str(self.statement["predicate"]["result"])

    @property
    def summary(self) -> str:
        predicate = self.statement["predicate"]
        failed = predicate["failedTests"]
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5
                                         else "")
        return (f"{self.name}: {len(failed)} failed ({shown})" if failed else
                f"{self.name}: the command exited {predicate['exitCode']}")


def _run_suite(sandbox: Sandbox, store: Store, loaded: LoadedRecipe, plan: BuildPlan,
               source_tar: Path, wheels: Path | None, built: RunResult,
               artifacts: Sequence[Artifact], suite: TestSuite, log: Log) -> SuiteRun:
    """Run one `[[test]]` suite as `_run_test` runs `[test]`, with /results writable; its
    JUnit XML becomes a test-result statement listing each case with its ids."""
    run = plan_run(loaded.recipe, f"test-{suite.name}", (), plan.source_date_epoch,
                   command=suite.command, wheels=plan.runs[0].wheels)
    result = sandbox.run(run, source_tar, outputs=built.out_dir, wheels=wheels, results=True)
    log_digest, _ = store.put_bytes(result.log)
    where = f"test suite {suite.name}: {RESULTS_DIR}/{suite.results}"
    if result.timed_out:
        raise BuildFailed(f"test suite {suite.name} timed out after {run.timeout} s "
                          "([build] timeout)")
    assert result.results_dir is not None
    data = read_results(result.results_dir / suite.results, MAX_RESULTS_SIZE, where,
                        result.exit_code)
    cases = parse_junit(data, source=where, limit=MAX_RESULTS_SIZE)
    results_digest, _ = store.put_bytes(data)
    statement = make_suite_result(
        subjects=[Subject(a.name, a.sha256) for a in artifacts], suite=suite.name,
        command=suite.command, exit_code=result.exit_code, cases=cases,
        results_digest=results_digest, log_digest=log_digest)
    ran = SuiteRun(suite.name, statement, log_digest, results_digest)
    counts = {o: sum(c.outcome == o for c in cases)
              for o in ("passed", "failed", "error", "skipped")}
    shown = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no cases"
    log(f"test suite {suite.name}: {ran.result} ({shown}; exit {result.exit_code}, "
        f"{result.seconds:.1f} s)")
    return ran


def read_results(path: Path, limit: int, where: str, exit_code: int) -> bytes:
    """A results file the run's user wrote: a regular file, never followed through a link
    (it could point anywhere on this host), read up to `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ResultsError(f"{where} was not written (the command exited {exit_code}); "
                           "the suite's command must write its JUnit XML there") from None
    except OSError as exc:
        raise ResultsError(f"{where}: cannot be read ({exc.strerror}; a link is never "
                           "followed)") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise ResultsError(f"{where} is not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ResultsError(f"{where}: more than {limit} bytes, the most a suite's results "
                           "may have; write fewer or smaller test cases")
    return data


def _suite_files(suites: Sequence[SuiteRun]) -> list[tuple[str, str, str]]:
    """(media type, digest, title) of each suite's log and results, for the attempt."""
    return [item for suite in suites for item in (
        (LOG_MEDIA, suite.log, f"test-{suite.name}.log"),
        ("application/xml", suite.results, f"results/{suite.name}.xml"))]


def _store_inputs(store: Store, loaded: LoadedRecipe, inputs: Inputs,
                  image: StoredImage) -> Descriptor:
    source = inputs.source
    recipe_digest, recipe_size = store.put_bytes(loaded.text)
    archive_size = store.blob_path(source.archive).stat().st_size
    layers = [
        Descriptor("application/toml", recipe_digest, recipe_size,
                   {TITLE: loaded.path.name}),
        Descriptor("application/x-tar", source.archive, archive_size,
                   {TITLE: "source.tar", TREE_ANN: source.tree_digest}),
        # The image record (archive, package list, definition) belongs to the closure too.
        Descriptor(OCI_MANIFEST, image.manifest, store.blob_path(image.manifest).stat().st_size,
                   {TITLE: "image", IMAGE_ID_ANN: image.image_id}),
    ]
    # The python lock and its wheels: named here, so `rebuild store gc` keeps them.
    if inputs.python_lock is not None:
        layers.append(Descriptor("text/plain; charset=utf-8", inputs.python_lock,
                                 store.blob_path(inputs.python_lock).stat().st_size,
                                 {TITLE: "python.lock.txt"}))
    layers += [Descriptor("application/zip", w.blob, store.blob_path(w.blob).stat().st_size,
                          {TITLE: f"wheels/{w.filename}"}) for w in inputs.wheels]
    # The npm lock and its tarballs, with what reproduce needs to lay out npm's cache again.
    if inputs.npm_lock is not None:
        layers.append(Descriptor(NPM_LOCK_MEDIA, inputs.npm_lock,
                                 store.blob_path(inputs.npm_lock).stat().st_size,
                                 {TITLE: NPM_LOCK_NAME}))
    layers += [Descriptor(NPM_MEDIA, n.blob, store.blob_path(n.blob).stat().st_size,
                          n.layer_annotations()) for n in inputs.npm]
    return store.put_artifact(INPUTS_TYPE, layers,
                              annotations={RELEASE_ANN: loaded.recipe.release,
                                           EPOCH_ANN: str(inputs.source_date_epoch)})


def _store_release(store: Store, plan: BuildPlan, artifacts: Sequence[Artifact]) -> Descriptor:
    """Name the artifacts as a release; their files' blobs are already stored (staged while
    they were collected, then committed)."""
    layers = []
    for artifact in artifacts:
        if artifact.link is None:
            digest, size = f"sha256:{artifact.sha256}", artifact.size
            if not store.has(digest):
                raise StoreError(f"output {artifact.name} ({digest}) was not stored in "
                                 f"{store.root} before its release was recorded")
        else:
            digest, size = store.put_bytes(artifact.link.encode())
        annotations = {TITLE: artifact.name}
        media = artifact.media_type or "application/octet-stream"
        if artifact.link is not None:
            annotations[LINK_ANN] = artifact.link
        if artifact.mode is not None:
            annotations[MODE_ANN] = format_mode(artifact.mode)
        layers.append(Descriptor(media, digest, size, annotations))
    release = store.put_artifact(RELEASE_TYPE, layers, annotations=release_annotations(
        plan.release, plan.source_date_epoch))
    existing = store.find(plan.release)
    if existing is not None and existing.digest != release.digest:
        raise ClaimFailed(f"release {plan.release} already exists with other artifacts: "
                          f"stored {existing.digest}, this build {release.digest}; a release "
                          "is immutable: bump [recipe] version")
    store.add_to_index(release, {REF_NAME: plan.release, KIND: "release"})
    return release


def _report(store: Store, diff: Difference, variations: tuple[str, ...],
            explanation: Explanation | None, log: Log, memory: int) -> DifferenceReport:
    log(f"differs: {diff.name}; running diffoscope")
    reports = diff_reports(diff, memory=memory)
    text, html, json = (store.put_bytes(r)[0] for r in (reports.text, reports.html,
                                                         reports.json))
    blame = explanation.blames.get(diff.name) if explanation else None
    return DifferenceReport(diff, blame.variations if blame else variations, text, html, json,
                            blame)


def _image_report(store: Store, diff: Difference, files: Sequence[Difference],
                  recipe: Recipe, variations: tuple[str, ...]) -> DifferenceReport:
    """The two runs' images differ: a report naming the layer and the files in it that
    differ (each file has its own diffoscope report)."""
    assert diff.a is not None and diff.b is not None and recipe.image_output is not None
    text = describe_difference(store, f"sha256:{diff.a.sha256}", f"sha256:{diff.b.sha256}",
                               [d.name for d in files], image_root(recipe.image_output))
    return DifferenceReport(diff, variations, store.put_bytes(text.encode())[0])


def _store_attempt(store: Store, plan: BuildPlan, inputs: Descriptor,
                   results: Sequence[RunResult], logs: Sequence[str],
                   artifacts: Sequence[Artifact], reports: Sequence[DifferenceReport],
                   release: Descriptor | None, status: str,
                   test_log: str | None = None,
                   engines: Mapping[str, Mapping[str, Any]] | None = None, *,
                   suite_files: Sequence[tuple[str, str, str]] = (),
                   ) -> tuple[Descriptor, str]:
    """Store the comparison record, logs and reports; returns the attempt and the record.
    `engines`: run name -> engine_facts, when the runs ran on two engines."""
    record = {
        "release": plan.release,
        "status": status,
        "image": plan.image,
        "inputs": inputs.digest,
        "source_date_epoch": plan.source_date_epoch,
        "compared": list(COMPARED),
        "runs": [{"name": run.name, "variations": run.describe(), "exit_code": r.exit_code,
                  "timed_out": r.timed_out, "log": log,
                  **({"engine": dict(engines[run.name])} if engines else {})}
                 for run, r, log in zip(plan.runs, results, logs, strict=True)],
        "artifacts": [a.to_json() for a in artifacts],
        "differences": [d.to_json() for d in reports],
    }
    data = canonical_json(record)
    record_digest, record_size = store.put_bytes(data)
    layers = [Descriptor(RECORD_MEDIA, record_digest, record_size, {TITLE: "comparison.json"})]
    layers += [Descriptor(LOG_MEDIA, digest, store.blob_path(digest).stat().st_size,
                          {TITLE: f"run-{run.name}.log"})
               for run, digest in zip(plan.runs, logs, strict=True)]
    layers += [Descriptor(media, digest, store.blob_path(digest).stat().st_size,
                          {TITLE: f"diff/{d.difference.name}.{suffix}"})
               for d in reports
               for media, digest, suffix in ((LOG_MEDIA, d.report, "txt"),
                                             (HTML_MEDIA, d.html, "html"),
                                             (JSON_MEDIA, d.json, "json")) if digest]
    if test_log is not None:
        layers.append(Descriptor(LOG_MEDIA, test_log, store.blob_path(test_log).stat().st_size,
                                 {TITLE: "test.log"}))
    layers += [Descriptor(media, digest, store.blob_path(digest).stat().st_size, {TITLE: title})
               for media, digest, title in suite_files]
    annotations = {RELEASE_ANN: plan.release, "dev.rebuild.status": status}
    attempt = store.put_artifact(ATTEMPT_TYPE, layers, subject=release, annotations=annotations)
    index_ann = {KIND: "attempt", RELEASE_ANN: plan.release, "dev.rebuild.status": status}
    store.add_to_index(inputs, {KIND: "inputs", RELEASE_ANN: plan.release,
                                **({SUBJECT: release.digest} if release else {})})
    if release is not None:
        index_ann[SUBJECT] = release.digest
    store.add_to_index(attempt, index_ann)
    return attempt, record_digest
