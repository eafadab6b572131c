"""Reproduce: rebuild a stored release from its recorded inputs alone, and judge it.

Everything comes out of the store: the recipe's bytes, the source tar, the wheels and npm
tarballs, the base image (loaded back into Docker from its archive when the engine has
forgotten it). Nothing is fetched, so this works with no network and no registry. The
verdict compares every rebuilt artifact with the recorded digest; with a key it is signed as
a SLSA verification summary and attached to the release, so a release can collect verdicts
from independent rebuilders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rebuild import __version__
from rebuild.attest import attach_statement
from rebuild.build.compare import (
    Artifact,
    Difference,
    collect_outputs,
    compare_artifacts,
    diff_reports,
    differing_properties,
    format_mode,
)
from rebuild.build.explain import Blame, explain_differences
from rebuild.build.image import stored_image
from rebuild.build.output_image import with_image
from rebuild.build.plan import plan_build
from rebuild.build.recipe import LoadedRecipe, parse_recipe, parse_toml
from rebuild.build.sandbox import RunResult, Sandbox, connect, require_success
from rebuild.errors import ClaimFailed, StoreError
from rebuild.evidence.provenance import STATEMENT_TYPE
from rebuild.evidence.sign import StatementSigner
from rebuild.inputs.fetch import export_npm_cache, export_recorded_wheels, recorded_npm
from rebuild.release.verify import VERDICT_URI, resolve_release
from rebuild.store.layout import (
    EPOCH_ANN,
    INPUTS_TYPE,
    KIND,
    REF_NAME,
    RELEASE_ANN,
    STATEMENT_MEDIA,
    TITLE,
    Descriptor,
    Store,
)
from rebuild.twin import ensure_loaded, release_artifacts, remove_leftovers

VSA = "https://slsa.dev/verification_summary/v1"
VERIFIER_ID = "https://rebuild.dev/verifier/reproduce@v1"
POLICY_URI = "https://rebuild.dev/policies/bit-for-bit/v1"

Log = Callable[[str], None]


@dataclass(frozen=True)
class StoredInputs:
    recipe: LoadedRecipe
    source: str  # digest of the canonical source tar
    image_manifest: str
    source_date_epoch: int
    layers: Mapping[str, Descriptor]  # every input by title


@dataclass(frozen=True)
class Rebuilt:
    name: str
    old: Artifact | None  # as the release records it; None if it has no such artifact
    new: Artifact | None  # as rebuilt; None if the rebuild did not produce it
    report: str | None = None  # digest of the text report of a mismatch (diffoscope)

    @property
    def recorded(self) -> str | None:  # sha256 hex
        return self.old.sha256 if self.old else None

    @property
    def rebuilt(self) -> str | None:
        return self.new.sha256 if self.new else None

    @property
    def differs(self) -> tuple[str, ...]:
        """What differs from the record: its presence, or properties of `compare.COMPARED`
        (a mode only where the release records one)."""
        if self.old is None or self.new is None:
            return ("presence",)
        return differing_properties(self.old, self.new)

    @property
    def match(self) -> bool:
        return not self.differs

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "sha256": self.rebuilt,
                               "recorded": self.recorded, "match": self.match,
                               "differs": list(self.differs), "report": self.report}
        if self.new is not None:
            out["type"] = self.new.type
            if self.new.mode is not None:
                out["mode"] = format_mode(self.new.mode)
        if self.old is not None and self.old.mode is not None:
            out["recorded_mode"] = format_mode(self.old.mode)
        return out


@dataclass(frozen=True)
class Verdict:
    release: str
    manifest: str
    artifacts: tuple[Rebuilt, ...]
    runs: tuple[RunResult, ...]
    verdict: str | None  # digest of the stored verification summary
    explanation: Mapping[str, Blame] = field(default_factory=dict)  # twin differences

    @property
    def reproducible(self) -> bool:
        return bool(self.artifacts) and all(a.match for a in self.artifacts)

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "manifest": self.manifest,
            "reproducible": self.reproducible,
            "artifacts": [a.to_json() for a in self.artifacts],
            "runs": [{"name": r.name, "exit_code": r.exit_code,
                      "seconds": round(r.seconds, 3)} for r in self.runs],
            "differences": [a.name for a in self.artifacts if not a.match],
            "explain": {name: {"variations": list(b.variations), "hints": list(b.hints)}
                        for name, b in self.explanation.items()},
            "verdict": self.verdict,
        }


def stored_inputs(store: Store, release: Descriptor) -> StoredInputs:
    """The inputs a release was built from, read back from the store and verified."""
    name = (release.annotations or {}).get(REF_NAME, release.digest)
    for entry in reversed(store.referrers(release.digest)):  # the newest record first
        if (entry.annotations or {}).get(KIND) != "inputs":
            continue
        manifest = store.read_json(entry.digest)
        if manifest.get("artifactType") != INPUTS_TYPE:
            continue
        layers = {layer["annotations"][TITLE]: Descriptor.from_json(layer)
                  for layer in manifest["layers"]}
        recipe_title = next(t for t in layers if t.endswith(".toml"))
        text = store.read_bytes(layers[recipe_title].digest)
        recipe = parse_recipe(parse_toml(text, f"{name}: {recipe_title}"),
                              source=f"{name}: {recipe_title}")
        epoch = int(manifest.get("annotations", {}).get(EPOCH_ANN, -1))
        if epoch < 0:
            raise StoreError(f"the inputs of {name} do not record SOURCE_DATE_EPOCH")
        return StoredInputs(LoadedRecipe(Path(recipe_title), text, recipe),
                            layers["source.tar"].digest, layers["image"].digest, epoch, layers)
    raise StoreError(f"the store {store.root} holds no inputs for {name}: it cannot be "
                     "reproduced from the store alone")


def recorded_name(store: Store, release: Descriptor, target: str, inputs: StoredInputs) -> str:
    """The release's name as the recipe it is rebuilt from records it ([recipe] name@version).

    index.json (and the release manifest's annotation) only find the release: an edited or
    relabelled store could otherwise get a signed verdict naming a version that was never
    built. Every name the store gives must be the recipe's, else nothing is built or signed.
    """
    name = inputs.recipe.recipe.release
    claimed = {"the name asked for": None if target.startswith("sha256:") else target,
               "index.json": (release.annotations or {}).get(REF_NAME),
               "the release manifest": store.read_json(release.digest).get(
                   "annotations", {}).get(RELEASE_ANN)}
    for where, other in claimed.items():
        if other is not None and other != name:
            raise ClaimFailed(f"{target}: {where} names {other}, but the recipe recorded for "
                              f"release {release.digest} builds {name}; refusing to rebuild "
                              "it or sign a verdict under another name (nothing was built); "
                              "check the store with `rebuild verify`")
    return name


def reproduce(store: Store, target: str, *, runs: int = 1, cache_dir: Path,
              signer: StatementSigner | None = None, explain: bool = False,
              log: Log = lambda _: None, debug: Log = lambda _: None) -> Verdict:
    """Rebuild `target` (a release or an artifact digest) from the store alone.

    A rebuilt artifact that differs from the record gets a diffoscope report (stored, and
    attached with a signed verdict). `explain` runs the twin check (`runs` = 2) and, where
    the two runs differ, names the variations responsible as `rebuild build --explain` does.
    Every blob it reads or writes is leased, so `rebuild store gc` keeps it meanwhile.
    """
    with store.lease():
        return _reproduce(store, target, runs=runs, cache_dir=cache_dir, signer=signer,
                          explain=explain, log=log, debug=debug)


def _reproduce(store: Store, target: str, *, runs: int, cache_dir: Path,
               signer: StatementSigner | None, explain: bool, log: Log, debug: Log) -> Verdict:
    runs = 2 if explain else runs
    release = resolve_release(store, target)
    inputs = stored_inputs(store, release)
    name = recorded_name(store, release, target, inputs)
    recorded = {a.name: a for a in release_artifacts(store, release)}
    image = stored_image(store, inputs.image_manifest)
    client = connect()
    remove_leftovers(client, store, log)
    with ThreadPoolExecutor(max_workers=2) as pool, \
            Sandbox(client, cache_dir=cache_dir, debug=debug) as sandbox:
        wheel_files, wheels = export_recorded_wheels(store, inputs.layers,
                                                     sandbox.workspace / "wheels")
        tarballs = recorded_npm(inputs.layers)
        npm = (None if tarballs is None else
               export_npm_cache(store, tarballs, sandbox.workspace / "npm"))
        plan = plan_build(inputs.recipe.recipe, inputs.source_date_epoch, wheels=wheel_files,
                          npm=npm is not None)
        chosen = plan.runs[:runs]
        log(f"{name}: rebuilding from the store alone ({len(chosen)} run(s))")
        ensure_loaded(client, store, image, log)
        source_tar = sandbox.workspace / "source.tar"
        store.copy_out(inputs.source, source_tar)
        results = [f.result() for f in [pool.submit(sandbox.run, run, source_tar,
                                                    wheels=wheels, npm=npm)
                                         for run in chosen]]
        for result in results:
            log(f"run {result.name}: exit {result.exit_code} after {result.seconds:.1f} s")
            require_success(result, "the build command")
        outputs = [collect_outputs(r.out_dir, plan.outputs, r.name, plan.limits) for r in results]
        # The release's image (an [image_output]) is rebuilt from each run's outputs too.
        rebuilt = tuple(_report(store, r, log, plan.limits.diffoscope_memory)
                        for r in _judge(recorded, [
                            with_image(store, inputs.recipe.recipe, inputs.source_date_epoch,
                                       o, image) for o in outputs]))
        blames: Mapping[str, Blame] = {}
        twin = compare_artifacts(*outputs) if len(outputs) == 2 else ()
        if explain and twin:
            blames = explain_differences(inputs.recipe.recipe, plan, sandbox, source_tar,
                                         outputs[0], twin, wheels=wheels, npm=npm,
                                         log=log).blames
    verdict = Verdict(name, release.digest, rebuilt, tuple(results), None, blames)
    if signer is not None:
        statement = verification_summary(store, release, name, verdict)
        reports = [r.report for r in rebuilt if r.report]
        digest = attach_statement(store, release, name, "verdict", statement, signer,
                                  reports=reports)
        verdict = replace(verdict, verdict=digest)
    return verdict


def _report(store: Store, rebuilt: Rebuilt, log: Log, memory: int) -> Rebuilt:
    """A mismatch's diffoscope report: the recorded artifact (its blob) against the rebuilt."""
    if rebuilt.match:
        return rebuilt
    log(f"differs from the record: {rebuilt.name} ({', '.join(rebuilt.differs)}); "
        "running diffoscope")
    report = diff_reports(Difference(rebuilt.name, rebuilt.old, rebuilt.new), memory=memory).text
    return replace(rebuilt, report=store.put_bytes(report)[0])


def _judge(recorded: Mapping[str, Artifact],
           outputs: Sequence[Sequence[Artifact]]) -> tuple[Rebuilt, ...]:
    """Every artifact of every run against the record: all must match."""
    judged: dict[str, Rebuilt] = {}
    for artifacts in outputs:
        by_name = {a.name: a for a in artifacts}
        for name in sorted(recorded.keys() | by_name.keys()):
            entry = Rebuilt(name, recorded.get(name), by_name.get(name))
            if name not in judged or judged[name].match:
                judged[name] = entry
    return tuple(judged[n] for n in sorted(judged))


def verification_summary(store: Store, release: Descriptor, name: str,
                         verdict: Verdict) -> dict[str, Any]:
    provenance = _provenance_digest(store, release)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": a.name, "digest": {"sha256": a.recorded}}
                    for a in verdict.artifacts if a.recorded],
        "predicateType": VSA,
        "predicate": {
            "verifier": {"id": VERIFIER_ID, "version": {"rebuild": __version__}},
            "timeVerified": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "resourceUri": f"{VERDICT_URI}{name}",
            "policy": {"uri": POLICY_URI},
            "inputAttestations": [{"uri": "provenance.json",
                                   "digest": {"sha256": provenance.removeprefix("sha256:")}}]
            if provenance else [],
            "verificationResult": "PASSED" if verdict.reproducible else "FAILED",
            "verifiedLevels": ["REBUILD_BIT_FOR_BIT"] if verdict.reproducible else [],
            "rebuiltArtifacts": [{"name": a.name, "digest": {"sha256": a.rebuilt}}
                                 for a in verdict.artifacts if a.rebuilt],
        },
    }


def _provenance_digest(store: Store, release: Descriptor) -> str | None:
    for entry in store.referrers(release.digest):
        if (entry.annotations or {}).get(KIND) == "evidence":
            for layer in store.read_json(entry.digest)["layers"]:
                if layer["annotations"][TITLE] == "provenance.json" and \
                        layer["mediaType"] == STATEMENT_MEDIA:
                    return str(layer["digest"])
    return None


