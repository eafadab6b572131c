"""The command line: the only place that prints, and that turns errors into exit codes.

`--json` prints one JSON document on stdout; everything for people goes to stderr.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

# typer (0.2x) vendors click: its usage errors derive from this class, not click's.
from typer._click.exceptions import ClickException

from rebuild import __version__, runtime
from rebuild.build.limits import BundleLimits, parse_size, show_size
from rebuild.errors import EnvironmentProblem, ExitCode, RebuildError, StoreError, UsageError
from rebuild.store.layout import KIND, REF_NAME, RELEASE_ANN, Store

if TYPE_CHECKING:
    from rebuild.build.sandbox import Reaped
    from rebuild.evidence.sign import StatementSigner
    from rebuild.twin import BuildOutcome, DifferenceReport

# The stages are imported by the commands that use them: `rebuild show` or `--version` need
# neither Docker's SDK nor the recipe models, and start-up time is most of a small command.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproducible, hermetic builds: twin runs in sandboxed containers, "
                       "compared bit for bit, with the evidence kept in a store.")
image_app = typer.Typer(no_args_is_help=True, help="Base images built from Debian packages.")
store_app = typer.Typer(no_args_is_help=True, help="Store upkeep.")
app.add_typer(image_app, name="image")
app.add_typer(store_app, name="store")
log_app = typer.Typer(no_args_is_help=True, help="The audit log: an append-only, tamper-evident "
                      "record of builds, releases, verdicts and approvals.")
app.add_typer(log_app, name="log")
LogKeyOpt = Annotated[Path | None, typer.Option(
    "--log-key", help="The log's public key (PREFIX.pub of `rebuild log keygen`), pinned: "
    "checkpoint signatures are checked against it.", metavar="PUB", show_default=False)]

StoreOpt = Annotated[Path | None, typer.Option(
    "--store", help="Store directory (env REBUILD_STORE; default .rebuild/store).",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
KeyOpt = Annotated[Path | None, typer.Option(
    "--key", help="Key file: PREFIX.key signs, PREFIX.pub verifies (passphrase: env "
    "REBUILD_KEY_PASSPHRASE).", show_default=False)]
KeylessOpt = Annotated[bool, typer.Option(
    "--keyless", help="Sign keyless with Sigstore (Fulcio certificate, Rekor entry) as the "
    "OIDC identity of env SIGSTORE_ID_TOKEN or of the CI's ambient credential.")]
TrustConfigOpt = Annotated[Path | None, typer.Option(
    "--trust-config", help="Sigstore client trust config (JSON) naming Fulcio, Rekor and "
    "their roots (default: Sigstore's public-good instance).", metavar="FILE",
    show_default=False)]


@dataclass
class Options:
    store: Path
    json: bool
    debug: bool
    key: Path | None = None

    @property
    def cache(self) -> Path:
        default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rebuild"
        return Path(os.environ.get("REBUILD_CACHE", default))


OPTIONS = Options(Path(".rebuild/store"), json=False, debug=False)


def _opts(store: Path | None, json_out: bool, key: Path | None = None) -> Options:
    if store is not None:
        OPTIONS.store = store
    if key is not None:
        OPTIONS.key = key
    OPTIONS.json = OPTIONS.json or json_out
    return OPTIONS


def say(message: str) -> None:
    print(terminal_safe(message), file=sys.stderr, flush=True)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Control characters (terminal escapes) from names a build chose, shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def shown(name: str) -> str:
    """An output name for a line of text: as it is, or quoted and escaped (repr) when it
    holds a newline or another character that is not printable."""
    return name if name.isprintable() else repr(name)


def emit(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _print_version(value: bool) -> None:
    if value:
        print(f"rebuild {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version,
                                          is_eager=True, help="Print the version.")] = False,
) -> None:
    OPTIONS.store = store or Path(os.environ.get("REBUILD_STORE", ".rebuild/store"))
    OPTIONS.json = json_out
    OPTIONS.debug = debug
    OPTIONS.key = key
    # Every temporary file and directory of this process (and of the tools it runs) goes in
    # its runtime directory: removed at exit, and by the next build if this process is killed.
    tempfile.tempdir = os.environ["TMPDIR"] = str(runtime.process_dir())


@app.command()
def build(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files (recipes/NAME.toml).")],
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="When the runs differ, find the variation(s) responsible for each "
        "differing artifact (extra runs: one per variation).")] = False,
    keep: Annotated[Path | None, typer.Option(
        "--keep", help="Copy both runs' /out trees to DIR/a and DIR/b (one recipe only).",
        metavar="DIR", show_default=False)] = None,
    keyless: KeylessOpt = False,
    trust_config: TrustConfigOpt = None,
) -> None:
    """Fetch, build twice with variations, compare, and store the release."""
    from rebuild.build.recipe import load_recipe
    from rebuild.twin import refuse_release_conflict, twin_build


    opts = _opts(store, json_out, key)
    if keep is not None and len(recipes) != 1:
        raise UsageError("--keep takes one recipe: both runs' outputs go to DIR/a and DIR/b")
    if keep is not None and any((keep / run).exists() for run in ("a", "b")):
        raise UsageError(f"--keep {keep}: {keep}/a or {keep}/b already exists; remove them "
                         "or name another directory")
    loaded = [load_recipe(path) for path in recipes]  # every recipe is checked before any runs
    for recipe in loaded:
        refuse_release_conflict(Store(opts.store), recipe)
    signer = _signer(opts, keyless=keyless, trust_config=trust_config)
    outcomes = [twin_build(recipe, Store(opts.store), cache_dir=opts.cache, signer=signer,
                           log=say,
                           debug=say if opts.debug else lambda _: None,
                           explain=explain, keep=keep)
                for recipe in loaded]
    for outcome in outcomes:
        _print_outcome(outcome, signer)
    if opts.json:
        emit(outcomes[0].to_json() if len(outcomes) == 1
             else {"builds": [o.to_json() for o in outcomes]})
    if not all(o.reproducible for o in outcomes):
        raise typer.Exit(ExitCode.CLAIM_FAILED)


def _signer(opts: Options, what: str = "evidence", *, keyless: bool = False,
            trust_config: Path | None = None) -> StatementSigner | None:
    from rebuild.evidence.sign import KeylessSigner, KeySigner, load_signer, passphrase_from_env

    if keyless and opts.key is not None:
        raise UsageError("--key and --keyless: choose one way to sign")
    if trust_config is not None and not keyless:
        raise UsageError("--trust-config is for keyless signing: add --keyless")
    if keyless:
        if trust_config is None:
            say("signing keyless with Sigstore's public-good instance (Fulcio, Rekor); pass "
                "--trust-config FILE for another")
        # Fails now (exit 6) without a token or with a bad trust config, before any build.
        return KeylessSigner(trust_config)
    if opts.key is None:
        say(f"warning: the {what} will not be signed; pass --key PREFIX.key "
            "(`rebuild keygen --out PREFIX` makes one) or --keyless")
        return None
    return KeySigner(load_signer(opts.key, passphrase_from_env()))


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Writes OUT.key (0600) and OUT.pub.")],
    algorithm: Annotated[str, typer.Option(
        "--algorithm", help="ecdsa-p256 (default) or ed25519.")] = "ecdsa-p256",
    json_out: JsonOpt = False,
) -> None:
    """Make a signing key pair; a passphrase is taken from REBUILD_KEY_PASSPHRASE if set."""
    from rebuild.evidence.sign import generate_keypair, passphrase_from_env

    opts = _opts(None, json_out)
    if algorithm not in ("ecdsa-p256", "ed25519"):
        raise UsageError(f"--algorithm {algorithm!r}: choose ecdsa-p256 or ed25519")
    pair = generate_keypair(out, algorithm=algorithm,  # type: ignore[arg-type]
                            passphrase=passphrase_from_env())
    if opts.json:
        emit({"private": str(pair.private_path), "public": str(pair.public_path),
              "keyid": pair.keyid, "algorithm": algorithm})
    say(f"wrote {pair.private_path} (private, 0600) and {pair.public_path}; key id "
        f"{pair.keyid}")


def _difference_line(diff: DifferenceReport) -> str:
    """`share/stamp.txt: caused by time, hostname — hint: …` (with --explain)."""
    name, blame = f"{shown(diff.difference.name)} ({', '.join(diff.differs)})", diff.blame
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
                    else f"{artifact.size} bytes, mode {format_mode(artifact.mode or 0)}")
            say(f"  {shown(artifact.name)}  sha256:{artifact.sha256}  {what}")
    else:
        names = {a.name for a in outcome.artifacts} | {
            d.difference.name for d in outcome.differences}
        say(f"{outcome.release}: NOT reproducible: {len(outcome.differences)} of "
            f"{len(names)} artifact(s) differ")
        for diff in outcome.differences:
            say(f"  {_difference_line(diff)}")
            say(f"    report: rebuild store cat {diff.report} (HTML {diff.html}, "
                f"JSON {diff.json})")
    evidence = outcome.evidence
    signed = (f"signed by {signer.description}" if evidence.signer and signer is not None
              else "NOT signed")
    say(f"evidence: provenance {evidence.statements['provenance'][:19]}…, SBOM "
        f"{evidence.sbom[:19]}…, {signed}; attempt {outcome.attempt} in {outcome.store}")


@app.command()
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


    opts = _opts(store, json_out)
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


@app.command()
def fetch(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe files (recipes/NAME.toml).")],
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Fetch every input (source, wheels) into the store, verifying hashes."""
    from rebuild.build.recipe import load_recipe
    from rebuild.inputs.fetch import fetch_inputs


    opts = _opts(store, json_out)
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
        reports.append({
            "recipe": str(recipe.path), "release": recipe.recipe.release,
            "source": {"kind": recipe.recipe.source.kind, "uri": source.uri,
                       "tree": source.tree_digest, "archive": source.archive,
                       "fetched": source.fetched, "downloaded": source.fetched in new},
            "source_date_epoch": inputs.source_date_epoch,
            "python_lock": inputs.python_lock,
            "wheels": [{**w.to_json(), "downloaded": w.blob in new} for w in inputs.wheels],
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


    opts = _opts(store, json_out)
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


@app.command("reproduce")
def reproduce_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version) or an artifact "
                                                "digest (sha256:<hex>).")],
    runs: Annotated[int, typer.Option("--runs", min=1, max=2, help="1: rebuild once; 2: also "
                                      "repeat the twin check with every variation.")] = 1,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Repeat the twin check and name the variation(s) behind each "
        "difference between the two runs.")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
    keyless: KeylessOpt = False,
    trust_config: TrustConfigOpt = None,
) -> None:
    """Rebuild a stored release from its recorded inputs only; sign the verdict with --key
    or --keyless."""
    from rebuild.release.reproduce import reproduce

    opts = _opts(store, json_out, key)
    signer = _signer(opts, what="verdict", keyless=keyless, trust_config=trust_config)
    verdict = reproduce(Store(opts.store), target, runs=runs, cache_dir=opts.cache,
                        signer=signer, explain=explain, log=say,
                        debug=say if opts.debug else lambda _: None)
    for artifact in verdict.artifacts:
        state = "same" if artifact.match else "DIFFERS"
        differs = "" if artifact.match else f" ({', '.join(artifact.differs)})"
        say(f"  {state:<8} {shown(artifact.name)}{differs}  recorded sha256:{artifact.recorded}  "
            f"rebuilt sha256:{artifact.rebuilt}")
        if artifact.report:
            say(f"           report: rebuild store cat {artifact.report}")
    for name, blame in verdict.explanation.items():
        culprits = ", ".join(blame.variations) or "no variation (inherent)"
        say(f"  twin runs differ on {shown(name)}: caused by {culprits}")
    outcome = "REPRODUCED bit for bit" if verdict.reproducible else "NOT reproduced"
    signed = f"; signed verdict {verdict.verdict}" if verdict.verdict else ""
    say(f"{verdict.release}: {outcome}{signed}")
    if opts.json:
        emit(verdict.to_json())
    if not verdict.reproducible:
        raise typer.Exit(ExitCode.CLAIM_FAILED)


@app.command("approve")
def approve_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version).")],
    role: Annotated[str, typer.Option("--role", help="e.g. quality, release-manager.")],
    meaning: Annotated[str, typer.Option("--meaning", help='What the signature means, e.g. '
                                         '"released for clinical pilot".')],
    comment: Annotated[str | None, typer.Option("--comment")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="The signer's printed name (default: env REBUILD_SIGNER_NAME, or the "
        "login name).")] = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Policy the evidence must meet first.")] = None,
    trust: Annotated[list[Path] | None, typer.Option(
        "--trust", help="Trusted builder key (PREFIX.pub), instead of a policy.")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
) -> None:
    """Sign an approval (name, role, meaning, time) of a release whose evidence verifies."""
    import getpass
    from datetime import UTC, datetime

    from rebuild.release.approve import approve
    from rebuild.release.policy import keys_policy, load_policy

    opts = _opts(store, json_out, key)
    if opts.key is None:
        raise UsageError("an approval must be signed: pass --key PREFIX.key")
    signer = _signer(opts, what="approval")
    from rebuild.evidence.sign import KeySigner

    assert isinstance(signer, KeySigner)
    rules = load_policy(policy) if policy else keys_policy(trust or [])
    signer_name = name or os.environ.get("REBUILD_SIGNER_NAME") or getpass.getuser()
    digest = approve(Store(opts.store), target, role=role, meaning=meaning, name=signer_name,
                     comment=comment, signer=signer.key, policy=rules, time=datetime.now(UTC))
    say(f"{target}: approved by {signer_name} as {role} ({meaning}); approval {digest}")
    if opts.json:
        emit({"release": target, "approval": digest, "role": role, "name": signer_name,
              "keyid": signer.identity})


@app.command()
def show(
    target: Annotated[str, typer.Argument(help="A release (name@version) or an artifact "
                                                "digest (sha256:<hex>).")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy file (TOML).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="Trusted public key (PREFIX.pub); repeatable. Without keys nothing is "
        "shown as verified.")] = None,
) -> None:
    """The release's story: what, from what, by whom, how checked, who approved."""
    from rebuild.evidence.sign import load_public_key
    from rebuild.release.report import release_story, render_text
    from rebuild.release.verify import Policy

    opts = _opts(store, json_out)
    keys = key or ([OPTIONS.key] if OPTIONS.key else [])
    if policy is not None:
        from rebuild.release.policy import load_policy  # pydantic: only when a policy file is read

        rules = load_policy(policy)
    else:
        rules = Policy(tuple(load_public_key(k) for k in keys))
    story = release_story(Store(opts.store), target, rules)
    if opts.json:
        emit(story)
    else:
        print(terminal_safe(render_text(story)), end="")


@app.command()
def verify(
    target: Annotated[str, typer.Argument(help="A release (name@version), an artifact "
                                                "digest (sha256:<hex>), or an exported bundle "
                                                "FILE (`rebuild export`).")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy file (TOML).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="Trusted public key (PREFIX.pub); repeatable.")] = None,
    identity: Annotated[str | None, typer.Option(
        "--certificate-identity", help="Trusted keyless signer: the certificate's identity "
        "(e-mail address or URI), exactly.", metavar="ID", show_default=False)] = None,
    issuer: Annotated[str | None, typer.Option(
        "--certificate-oidc-issuer", help="The OIDC issuer of --certificate-identity.",
        metavar="URL", show_default=False)] = None,
    trust_config: TrustConfigOpt = None,
    log_key: Annotated[Path | None, typer.Option(
        "--log-key", help="Require the release's records in the audit log, under checkpoints "
        "signed by this log key (PREFIX.pub of `rebuild log keygen`).", metavar="PUB",
        show_default=False)] = None,
    max_extract_size: Annotated[str, typer.Option(
        "--max-extract-size", help="A bundle FILE: the most its extraction may write "
        "(bytes, or k/m/g/t).")] = show_size(BundleLimits.max_size),
    max_extract_ratio: Annotated[int, typer.Option(
        "--max-extract-ratio", min=1, help="A bundle FILE: the most bytes its extraction "
        "may write per byte of the file.")] = BundleLimits.max_ratio,
) -> None:
    """Check a release's artifacts, signatures, subjects and provenance, offline; or every
    byte of an exported bundle FILE, then the release inside it (no store needed)."""
    from dataclasses import replace

    from rebuild.evidence.sign import load_keyless_identity
    from rebuild.release.policy import keys_policy, load_policy
    from rebuild.release.verify import verify_bundle_file, verify_release

    opts = _opts(store, json_out)
    keys = key or ([OPTIONS.key] if OPTIONS.key else [])
    if (identity is None) != (issuer is None) or (trust_config and identity is None):
        raise UsageError("keyless verification takes --certificate-identity ID and "
                         "--certificate-oidc-issuer URL together (and --trust-config FILE "
                         "unless the signer used Sigstore's public-good instance)")
    keyless = ([load_keyless_identity(identity, issuer, trust_config)]
               if identity is not None and issuer is not None else [])
    rules = (replace(load_policy(policy), keyless=tuple(keyless)) if policy
             else keys_policy(keys, keyless))
    if log_key is not None:
        rules = replace(rules, log_key=_log_verifier(log_key))
    if Path(target).is_file():
        limits = BundleLimits(parse_size(max_extract_size, what="--max-extract-size"),
                              max_extract_ratio)
        report = verify_bundle_file(Path(target), rules, limits)
    elif target.endswith((".tar", ".gz", ".tgz")) or "/" in target:
        raise UsageError(f"{target}: no such bundle file")
    else:
        report = verify_release(Store(opts.store), target, rules)
    for check in report.checks:
        say(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    say(f"{report.release or target}: {'VERIFIED' if report.ok else 'NOT VERIFIED'}")
    if opts.json:
        emit(report.to_json())
    if not report.ok:
        raise typer.Exit(ExitCode.CLAIM_FAILED)


@app.command("export")
def export_cmd(
    target: Annotated[str, typer.Argument(help="A release (name@version) or an artifact "
                                                "digest (sha256:<hex>).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle: a tar, "
                                         "compressed when the name ends in .gz or .tgz.",
                                         metavar="FILE")],
    with_inputs: Annotated[bool, typer.Option(
        "--with-inputs", help="Include the inputs (source, base image, wheels), so that the "
        "release can be reproduced from the bundle alone.")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="A signer's public key (PREFIX.pub), copied into the bundle and used "
        "to check the evidence for the report; repeatable.")] = None,
) -> None:
    """Write one self-contained, byte-reproducible evidence bundle of a release."""
    from rebuild.release.export import export_release

    opts = _opts(store, json_out)
    keys = key or ([OPTIONS.key] if OPTIONS.key else [])
    if not keys:
        say("warning: no --key: the bundle's report will not say whether the signatures "
            "verify; pass the signers' public keys (PREFIX.pub)")
    exported = export_release(Store(opts.store), target, output, keys=keys,
                              with_inputs=with_inputs)
    state = {True: "evidence verified", False: "evidence NOT verified",
             None: "signatures not checked"}[exported.verified]
    say(f"{exported.release}: wrote {output} ({exported.files} files, "
        f"{'with' if with_inputs else 'without'} inputs; {state}); sha256 {exported.sha256}")
    if opts.json:
        emit(exported.to_json())


@store_app.command("ls")
def store_ls(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """List what the store holds: releases, images, attempts."""
    opts = _opts(store, json_out)
    st = Store(opts.store)
    st.require()
    rows = [{"kind": (e.annotations or {}).get(KIND, "?"),
             "name": (e.annotations or {}).get(REF_NAME)
             or (e.annotations or {}).get(RELEASE_ANN)
             or (e.annotations or {}).get("dev.rebuild.build.image.ref", ""),
             "status": (e.annotations or {}).get("dev.rebuild.status", ""),
             "digest": e.digest} for e in st.index()]
    if opts.json:
        emit({"store": str(opts.store), "entries": rows})
        return
    for row in rows:
        print(f"{row['kind']:<8} {row['name']:<40} {row['status']:<17} {row['digest']}")


@store_app.command("fsck")
def store_fsck(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Verify every blob's hash and every reference; exit 5 naming what is wrong."""
    opts = _opts(store, json_out)
    st = Store(opts.store)
    problems = st.fsck()
    if opts.json:
        emit({"store": str(opts.store), "ok": not problems,
              "problems": [{"digest": p.digest, "problem": p.what} for p in problems]})
    for problem in problems:
        say(f"{problem.digest}: {problem.what}")
    if problems:
        raise StoreError(f"{len(problems)} problem(s) in the store {opts.store}")
    say(f"store {opts.store}: all blobs verified")


@store_app.command("gc")
def store_gc(
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would be removed; remove nothing.")] = False,
    grace: Annotated[int, typer.Option(
        "--grace", min=0, metavar="SECONDS",
        help="Keep unreferenced blobs younger than this.")] = 3600,
) -> None:
    """Remove blobs that nothing in index.json references (except those a running build
    uses, and recent ones), and what killed rebuild processes left behind."""
    opts = _opts(store, json_out)
    st = Store(opts.store)
    collected = st.gc(grace, dry_run=dry_run)
    reaped = None if dry_run else _reap_orphans()
    verb = "would remove" if dry_run else "removed"
    for digest, size in collected.removed if dry_run else ():
        say(f"would remove {digest} ({size} bytes)")
    if opts.json:
        emit({"store": str(opts.store), "dry_run": dry_run,
              "removed": [{"digest": d, "size": n} for d, n in collected.removed],
              "bytes": collected.size, "kept": {"leased": collected.leased,
                                               "young": collected.young},
              "temporary": collected.temporary,
              **({"reaped": vars(reaped)} if reaped is not None else {})})
    say(f"{verb} {len(collected.removed)} unreferenced blob(s), {collected.size} bytes; kept "
        f"{collected.leased} in use by running builds and {collected.young} younger than "
        f"{grace} s; {verb} {collected.temporary} temporary file(s) of finished writers")
    if reaped is not None:
        say(f"removed {reaped.describe()} left by killed rebuild processes")


def _reap_orphans() -> Reaped:
    """Remove what killed rebuild processes left on this machine (their containers when the
    engine answers)."""
    from rebuild.build.sandbox import connect, reap_orphans

    try:
        client = connect()
    except EnvironmentProblem as exc:
        say(f"warning: {exc}; containers of killed builds are left for later")
        client = None
    return reap_orphans(client)


@store_app.command("cat")
def store_cat(digest: Annotated[str, typer.Argument(help="sha256:<hex>")],
              store: StoreOpt = None) -> None:
    """Print a blob (a report, a log, a manifest), verified."""
    opts = _opts(store, False)
    sys.stdout.buffer.write(Store(opts.store).read_bytes(digest))


@app.command("withdraw")
def withdraw_cmd(
    entry: Annotated[int, typer.Argument(help="The audit-log entry of the approval "
                                              "(`rebuild log show`).")],
    reason: Annotated[str, typer.Option("--reason", help="Why the approval is withdrawn.")],
    name: Annotated[str | None, typer.Option(
        "--name", help="The signer's printed name (default: env REBUILD_SIGNER_NAME, or the "
        "login name).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    key: KeyOpt = None,
) -> None:
    """Withdraw an approval: a signed correction naming its log entry; nothing is removed."""
    import getpass
    from datetime import UTC, datetime

    from rebuild.evidence.sign import KeySigner, load_signer, passphrase_from_env
    from rebuild.release.approve import withdraw_approval

    opts = _opts(store, json_out, key)
    if opts.key is None:
        raise UsageError("a withdrawal must be signed by the approval's key: pass --key "
                         "PREFIX.key")
    signer = KeySigner(load_signer(opts.key, passphrase_from_env()))
    signer_name = name or os.environ.get("REBUILD_SIGNER_NAME") or getpass.getuser()
    digest = withdraw_approval(Store(opts.store), entry, reason=reason, name=signer_name,
                               signer=signer.key, time=datetime.now(UTC))
    say(f"approval of entry {entry} withdrawn by {signer_name}; withdrawal {digest}")
    if opts.json:
        emit({"withdrawn": entry, "withdrawal": digest, "name": signer_name,
              "keyid": signer.identity})


@log_app.command("keygen")
def log_keygen(
    out: Annotated[Path, typer.Option("--out", help="Writes OUT.key (0600) and OUT.pub.")],
    name: Annotated[str, typer.Option("--name", help="The log's name (its checkpoints' "
                                      "origin), e.g. example.com/rebuild-log.")]
    = "rebuild.local/audit-log",
    json_out: JsonOpt = False,
) -> None:
    """Make the log key (Ed25519, signed-note format); sign with env REBUILD_LOG_KEY=OUT.key,
    pin OUT.pub when verifying. Keep it apart from the store."""
    from rebuild.store.auditlog import generate_log_key

    opts = _opts(None, json_out)
    private, public, verifier = generate_log_key(out, name)
    if opts.json:
        emit({"private": str(private), "public": str(public), "verifier": verifier.to_text()})
    say(f"wrote {private} (private, 0600) and {public}: {verifier.to_text()}")


def _log_verifier(path: Path | None) -> Any:
    from rebuild.store.auditlog import load_log_verifier

    return load_log_verifier(path) if path is not None else None


@log_app.command("show")
def log_show(
    release: Annotated[str | None, typer.Argument(help="A release (name@version); default: "
                                                       "every entry.")] = None,
    log_key: LogKeyOpt = None,
    key: Annotated[list[Path] | None, typer.Option(
        "--key", help="Trusted public key (PREFIX.pub) of the statements' signers; "
        "repeatable.")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The timeline: when, who (name and key), role, what and its meaning, each entry marked
    verified only when its inclusion and its statements' signatures checked out."""
    from rebuild.evidence.sign import load_public_key
    from rebuild.store.auditlog import timeline

    opts = _opts(store, json_out)
    keys = [load_public_key(k) for k in (key or [])]
    shown = timeline(Store(opts.store), release, _log_verifier(log_key), keys)
    if opts.json:
        emit(shown)
        return
    print(f"audit log {shown['origin']}: {shown['size']} entries; checkpoint signature "
          f"{shown['checkpoint_signature']}; times: {shown['time_source']}")
    for row in shown["entries"]:
        actor = row["actor"]
        mark = "verified" if row["verified"] else "NOT VERIFIED"
        extra = ""
        if "corrects" in row:
            extra += f" (corrects entry {row['corrects']})"
        if "withdrawn_by" in row:
            extra += f" (WITHDRAWN by entry {row['withdrawn_by']})"
        sigs = "; ".join(f"{k}: {v}" for k, v in row["signatures"].items())
        print(f"#{row['entry']:<5} {row['time']}  {row['event']:<18} {row['release']}  "
              f"{actor['name']} ({actor['role']}, key {str(actor['keyid'])[:16]}): "
              f"{row['meaning']}{extra}  [{mark}; in log: {row['in_log']}"
              f"{'; ' + sigs if sigs else ''}]")


@log_app.command("verify")
def log_verify(
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="A checkpoint kept earlier (`rebuild log checkpoint -o FILE`): "
        "the log must extend it.", metavar="FILE", show_default=False)] = None,
    log_key: LogKeyOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Recompute the tree from the entries, check every tile and checkpoint, prove the log
    consistent with a kept checkpoint, and check the store against it; exit 1 naming the
    first entry that differs."""
    from rebuild.store.auditlog import verify_log

    opts = _opts(store, json_out)
    verifier = _log_verifier(log_key)
    kept = None
    if checkpoint is not None:
        try:
            kept = checkpoint.read_bytes()
        except OSError as exc:
            raise UsageError(f"--checkpoint {checkpoint}: {exc.strerror}") from None
    st = Store(opts.store)
    st.require()
    report = verify_log(st, verifier, kept)
    for check in report.checks:
        say(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if report.signed is None:
        say("  checkpoint signatures NOT VERIFIED: pass --log-key PUB to check them")
    state = "consistent" if report.ok else "NOT consistent: rewritten or damaged"
    say(f"audit log of {report.size} entries: {state}")
    if opts.json:
        emit(report.to_json())
    if not report.ok:
        raise typer.Exit(ExitCode.CLAIM_FAILED)


@log_app.command("checkpoint")
def log_checkpoint(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to keep it.",
                                         metavar="FILE")],
    store: StoreOpt = None,
) -> None:
    """Save the current checkpoint, to prove later (`log verify --checkpoint`) that the log
    was only appended to since."""
    from rebuild.store.auditlog import AuditLog

    opts = _opts(store, False)
    current = AuditLog.of(Store(opts.store)).read_checkpoint()
    if current is None:
        raise StoreError(f"no audit log in {opts.store}: nothing was recorded yet")
    output.write_bytes(current[0])
    say(f"wrote {output}: {current[2].size} entries, root {current[2].root.hex()[:16]}…")


@log_app.command("prove")
def log_prove(
    entry: Annotated[int | None, typer.Option(
        "--entry", help="An inclusion proof of this entry (C2SP tlog-proof).")] = None,
    since: Annotated[Path | None, typer.Option(
        "--since", help="A consistency proof from this kept checkpoint to the current one "
        "(base64 hashes, one a line).", metavar="FILE", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", metavar="FILE")] = None,
    store: StoreOpt = None,
) -> None:
    """Print a proof made from the tiles, for checkers other than rebuild."""
    from rebuild.store import tlog
    from rebuild.store.auditlog import AuditLog

    opts = _opts(store, False)
    if (entry is None) == (since is None):
        raise UsageError("choose one: --entry N (inclusion) or --since FILE (consistency)")
    log = AuditLog.of(Store(opts.store))
    current = log.read_checkpoint()
    if current is None:
        raise StoreError(f"no audit log in {opts.store}: nothing was recorded yet")
    data, _, checkpoint = current
    if entry is not None:
        if not 0 <= entry < checkpoint.size:
            raise UsageError(f"--entry {entry}: the log has {checkpoint.size} entries")
        proof = tlog.InclusionProof(entry, tuple(log.inclusion_proof(entry, checkpoint.size)),
                                    data).to_bytes()
    else:
        assert since is not None
        try:
            old = tlog.parse_checkpoint(tlog.parse_note(since.read_bytes()).text)
        except OSError as exc:
            raise UsageError(f"--since {since}: {exc.strerror}") from None
        if old.size > checkpoint.size:
            raise UsageError(f"--since {since}: {old.size} entries, more than the log's "
                             f"{checkpoint.size}")
        proof = "".join(tlog.b64(h) + "\n" for h in
                        log.consistency_proof(old.size, checkpoint.size)).encode()
    if output is None:
        sys.stdout.buffer.write(proof)
    else:
        output.write_bytes(proof)


def main() -> None:
    """Run the CLI: every failure is one message and an exit code from design.md's table;
    a traceback only with --debug."""
    runtime.install_interrupt_handlers()
    try:
        code = app(standalone_mode=False)
        if runtime.interrupting_signal():  # typer turns KeyboardInterrupt into 130
            _exit_interrupted()
        sys.exit(code if isinstance(code, int) else 0)
    except RebuildError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _exit_interrupted()
    except ClickException as exc:
        # Unknown command or option, missing or bad argument: click's usage message (exit 2).
        exc.show()
        sys.exit(ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code)
    except OSError as exc:
        _fail(_os_error_message(exc), ExitCode.ENVIRONMENT)
    except Exception as exc:  # noqa: BLE001 (the last resort: never a bare traceback)
        # Not "the claim failed" (1): nothing was checked. The check could not be carried out
        # here, which is what exit 3 means; the message says it is a fault of rebuild's.
        _fail(f"unexpected {type(exc).__name__}: {_one_line(str(exc))}; this is a bug in "
              "rebuild: rerun with --debug for the traceback and report it", ExitCode.ENVIRONMENT)


def _fail(message: str, code: int) -> NoReturn:
    if OPTIONS.debug:
        traceback.print_exc()
    say(f"error: {message}")
    sys.exit(code)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"


def _os_error_message(exc: OSError) -> str:
    """What the operating system refused, where, and what to do (exit 3: the environment)."""
    where = f" ({exc.filename})" if exc.filename is not None else ""
    what = exc.strerror or _one_line(str(exc))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{what}{where}: the disk is full; free space (or point TMPDIR, --store or "
                "REBUILD_CACHE elsewhere) and run again; the store keeps only complete blobs")
    return f"{what}{where}; rerun with --debug for the traceback"


def _exit_interrupted() -> None:
    # SIGTERM and SIGHUP unwind like Ctrl-C (runtime.install_interrupt_handlers): every
    # container, mount and workspace was removed on the way out.
    signum = runtime.interrupting_signal() or signal.SIGINT
    say(f"interrupted ({signal.Signals(signum).name})")
    sys.exit(128 + signum)
