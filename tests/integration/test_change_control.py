"""Change control in proportion to risk, on the real engine with examples/risk-score.

The example is built once for the module (1.0.0: every suite passes; 1.1.0: an upgraded test
toolchain, a changed wheel, a failing case and an uncovered requirement REQ-7), rebuilt twice
by two QA keys and approved; the failing variants come from policies and waivers derived from
policies/risk-tiers.toml, each run against the real store and real signatures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rebuild.release.policy import load_policy
from rebuild.release.verify import verify_release
from rebuild.store.layout import Store
from tests.conftest import IMAGE_STORE, ROOT, Result, run_rebuild, seed_store

pytestmark = pytest.mark.docker

GOLDEN = ROOT / "tests" / "golden"
KEYS = ("ci", "qa-1", "qa-2", "peer", "quality", "regulatory", "release-manager", "stranger")
V1, V2 = "risk-score@1.0.0", "risk-score@1.1.0"
FAILING_CASE = "unit/tests.unit.test_new::test_new_rounding"


def ok(result: Result) -> Result:
    assert result.code == 0, result.stderr
    return result


@dataclasses.dataclass(frozen=True)
class Example:
    root: Path
    store: Path
    keys: Path
    policy: Path  # policies/risk-tiers.toml with this module's keys

    def key(self, name: str, private: bool = False) -> Path:
        return self.keys / f"{name}.{'key' if private else 'pub'}"


def policy_text(example_keys: Path, text: str | None = None) -> str:
    text = text or (ROOT / "policies" / "risk-tiers.toml").read_text()
    return text.replace("../.rebuild/dev-key.pub", f"{example_keys}/ci.pub").replace(
        "../.rebuild/demo-keys/", f"{example_keys}/")


@pytest.fixture(scope="module")
def example(c_image: str, tmp_path_factory: pytest.TempPathFactory) -> Example:
    root = tmp_path_factory.mktemp("change-control")
    (root / "recipes").mkdir()
    shutil.copytree(ROOT / "examples" / "risk-score", root / "examples" / "risk-score")
    for name in ("risk-score.toml", "risk-score.in", "risk-score.lock.txt"):
        shutil.copy(ROOT / "recipes" / name, root / "recipes" / name)
    keys = root / "keys"
    for name in KEYS:
        ok(run_rebuild("keygen", "--out", keys / name))
    store = root / "store"
    seed_store(store)
    recipe = root / "recipes" / "risk-score.toml"
    ok(run_rebuild("lock", "--update-image", recipe, store=IMAGE_STORE))
    ok(run_rebuild("build", recipe, "--key", keys / "ci.key", store=store))
    for qa in ("qa-1", "qa-2"):
        ok(run_rebuild("reproduce", V1, "--key", keys / f"{qa}.key", store=store))
    for role in ("quality", "regulatory", "peer"):
        ok(run_rebuild("approve", V1, "--role", role, "--meaning", "released for pilot",
                       "--key", keys / f"{role}.key", "--trust", keys / "ci.pub",
                       "--name", f"A. {role.title()}", store=store))
    # 1.1.0: pytest upgraded (and pygments added with it), the wheel's bytes changed, a new
    # requirement no case carries, and a new case that fails.
    source = root / "examples" / "risk-score-1.1"
    shutil.copytree(root / "examples" / "risk-score", source)
    module = source / "risk_score" / "__init__.py"
    module.write_text(module.read_text().replace('"""A patient risk score',
                                                 '"""A patient risk score, v1.1'))
    (source / "tests" / "unit" / "test_new.py").write_text(
        "def test_new_rounding(record_property):\n"
        "    record_property('requirement', 'REQ-3')\n"
        "    assert round(2.5) == 3\n")
    (root / "recipes" / "risk-score-1.1.in").write_text("flit-core\npytest==8.4.2\n")
    text = recipe.read_text()
    text = text.replace('version = "1.0.0"', 'version = "1.1.0"', 1)
    text = text.replace('path = "../examples/risk-score"', 'path = "../examples/risk-score-1.1"')
    text = re.sub(r'digest = "sha256:[0-9a-f]{64}"\n', "", text)
    text = text.replace('python_lock = "risk-score.lock.txt"',
                        'python_lock = "risk-score-1.1.lock.txt"')
    text = text.replace('"REQ-5", "REQ-6"]', '"REQ-5", "REQ-6", "REQ-7"]')
    recipe_2 = root / "recipes" / "risk-score-1.1.toml"
    recipe_2.write_text(text)
    ok(run_rebuild("lock", recipe_2, store=IMAGE_STORE))
    built = run_rebuild("build", recipe_2, "--key", keys / "ci.key", store=store)
    assert built.code == 4, built.stderr  # a case failed: recorded, and CI sees the failure
    assert "test_new_rounding" in built.stderr
    policy = root / "policy.toml"
    policy.write_text(policy_text(keys))
    return Example(root, store, keys, policy)


def derived(example: Example, name: str, edit: dict[str, str], *,
            without_rules: bool = False) -> Path:
    """The module's policy with text replaced; `without_rules`: tier high's CEL rules cut
    (they are the file's last lines)."""
    text = example.policy.read_text()
    for old, new in edit.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    if without_rules:
        text = text[:text.index("rules = [")]
    path = example.root / f"policy-{name}.toml"
    path.write_text(text)
    return path


def verify(example: Example, release: str, policy: Path, store: Path | None = None) -> Result:
    return run_rebuild("verify", release, "--policy", policy, "--json",
                       store=store or example.store)


def failed_checks(result: Result) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in result.json["checks"] if not c["ok"]}


def test_approve_under_a_tiered_policy_checks_the_evidence_not_the_tier(
        example: Example) -> None:
    store = clone_store(example, "approve")
    # Tier high still fails for 1.1.0 (its gaps, and this approval is one of the pieces).
    ok(run_rebuild("approve", V2, "--role", "quality", "--meaning", "reviewed", "--key",
                   example.key("quality", True), "--policy", example.policy, store=store))
    checks = failed_checks(verify(example, V2, example.policy, store))
    assert "tier high: approval: quality" not in checks and "tier high: trace" in checks


def test_everything_present_passes_tier_high(example: Example) -> None:
    result = verify(example, V1, example.policy)
    assert result.code == 0, failed_checks(result)
    names = {c["name"] for c in result.json["checks"]}
    assert {"tier high: tests: security", "tier high: approval: regulatory",
            "tier high: verdicts", "tier high: trace"} <= names


@pytest.mark.parametrize(("case", "edit", "name", "missing"), [
    ("missing suite", {'tests = ["unit", "integration", "security"]':
                       'tests = ["unit", "integration", "security", "performance"]'},
     "tier high: tests: performance", "suite performance is missing"),
    ("missing approval role", {'approvals = ["quality", "regulatory"]':
                               'approvals = ["quality", "regulatory", "release-manager"]',
                               '[tier.low]': '[[policy.approvals]]\nrole = "release-manager"\n'
                               'keys = ["KEYS/release-manager.pub"]\n\n[tier.low]'},
     "tier high: approval: release-manager", "no release-manager approval"),
    ("too few verdicts", {"verdicts = 2": "verdicts = 3"}, "tier high: verdicts",
     "2 PASSED verdict(s) from trusted QA keys, 3 required: 1 missing"),
])
def test_tier_high_names_what_is_missing(example: Example, case: str, edit: dict[str, str],
                                         name: str, missing: str) -> None:
    edit = {k: v.replace("KEYS", str(example.keys)) for k, v in edit.items()}
    result = verify(example, V1, derived(example, case.replace(" ", "-"), edit))
    assert result.code == 1, result.stdout
    failed = failed_checks(result)
    assert list(failed) == [name], failed
    assert "tier high" in failed[name] and missing in failed[name]


def test_failing_case_and_uncovered_requirement_fail_tier_high(example: Example) -> None:
    result = verify(example, V2, example.policy)
    assert result.code == 1
    failed = failed_checks(result)
    assert "failed cases tests.unit.test_new::test_new_rounding" in failed[
        "tier high: tests: unit"]
    assert "rule trace = \"complete\" of tier high: uncovered requirement(s) REQ-7" in failed[
        "tier high: trace"]
    # The CEL rule that every requirement is carried by some case names its tier too.
    assert any(n.startswith("tier high: rule change.requirements.all") for n in failed)


def test_same_release_at_tier_low_passes_with_less(example: Example) -> None:
    # Tier low's table applied to this release (its change record says high): one suite and
    # a peer's approval, no verdicts, no trace.
    low = derived(example, "as-low", {
        'tests = ["unit", "integration", "security"]\napprovals = ["quality", "regulatory"]\n'
        'verdicts = 2\ntrace = "complete"\nwaivers = ["quality"]':
        'tests = ["unit"]\napprovals = ["peer"]\nwaivers = ["peer", "quality"]\n'},
        without_rules=True)
    result = verify(example, V1, low)
    assert result.code == 0, failed_checks(result)
    names = {c["name"] for c in result.json["checks"]}
    assert "tier high: verdicts" not in names and "tier high: trace" not in names


def test_unknown_tier_is_exit_2(example: Example) -> None:
    text = example.policy.read_text()
    policy = example.root / "policy-no-high.toml"
    policy.write_text(text[:text.index("# A change to a calculation")])
    result = run_rebuild("verify", V1, "--policy", policy, store=example.store)
    assert result.code == 2, result.stderr
    assert "risk = 'high', but the policy has no [tier.high] (its tiers: low)" in result.stderr
    assert "Traceback" not in result.stderr


# -- waivers --------------------------------------------------------------------------------

def clone_store(example: Example, name: str) -> Path:
    """A copy of the module's store (blobs hard-linked: never modified) for one test's
    waivers."""
    target = example.root / f"store-{name}"
    shutil.copytree(example.store, target, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("blobs"))
    (target / "blobs" / "sha256").mkdir(parents=True)
    for blob in (example.store / "blobs" / "sha256").iterdir():
        os.link(blob, target / "blobs" / "sha256" / blob.name)
    return target


def gaps_policy(example: Example) -> Path:
    """Tier high without approvals and verdicts: what remains of 1.1.0 is its two gaps."""
    return derived(example, "gaps", {'approvals = ["quality", "regulatory"]\nverdicts = 2':
                                     "approvals = []\nverdicts = 0"}, without_rules=True)


def waive(example: Example, store: Path, who: str, role: str, what: list[str],
          expires: str = "2099-01-01") -> Result:
    return run_rebuild("waive", V2, *what, "--justification", "rounding is checked in review",
                       "--residual-risk", "a score off by one point near a threshold",
                       "--expires", expires, "--role", role, "--key", example.key(who, True),
                       "--trust", example.key("ci"), "--name", f"W. {who}", "--json",
                       store=store)


def test_waivers_by_the_right_role_before_expiry_let_the_gaps_pass(example: Example) -> None:
    store = clone_store(example, "right")
    policy = gaps_policy(example)
    before = failed_checks(verify(example, V2, policy, store))
    assert set(before) == {"tier high: tests: unit", "tier high: trace"}, before
    ok(waive(example, store, "quality", "quality", ["--requirement", "REQ-7"]))
    ok(waive(example, store, "quality", "quality", ["--test", FAILING_CASE]))
    result = verify(example, V2, policy, store)
    assert result.code == 0, failed_checks(result)
    details = {c["name"]: c["detail"] for c in result.json["checks"]}
    assert "REQ-7 (waived by quality until 2099-01-01T00:00:00Z)" in details["tier high: trace"]
    events = ok(run_rebuild("log", "show", V2, "--json", store=store)).json["entries"]
    assert [e["event"] for e in events].count("waiver") == 2


@pytest.mark.parametrize(("who", "role", "reason"), [
    ("peer", "peer", "waiver of requirement REQ-7 by peer: tier high lets quality waive"),
    ("stranger", "quality", "1 waiver(s) not signed by a key the policy trusts for their role"),
])
def test_waivers_by_a_wrong_role_or_an_untrusted_key_do_not_count(
        example: Example, who: str, role: str, reason: str) -> None:
    store = clone_store(example, who)
    ok(waive(example, store, who, role, ["--requirement", "REQ-7"]))
    result = verify(example, V2, gaps_policy(example), store)
    assert result.code == 1
    failed = failed_checks(result)
    assert "uncovered requirement(s) REQ-7" in failed["tier high: trace"]
    assert reason in failed["tier high: trace"]


def test_an_expired_waiver_does_not_count(example: Example) -> None:
    store = clone_store(example, "expired")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    ok(waive(example, store, "quality", "quality", ["--requirement", "REQ-7"], tomorrow))
    policy = load_policy(gaps_policy(example))
    now = verify_release(Store(store), V2, policy)
    assert [c.name for c in now.checks if not c.ok] == ["tier high: tests: unit"]
    later = verify_release(Store(store), V2, dataclasses.replace(
        policy, now=datetime.now(UTC) + timedelta(days=3)))
    trace = next(c for c in later.checks if c.name == "tier high: trace")
    assert not trace.ok and f"expired {tomorrow}T00:00:00Z" in trace.detail


def test_the_gate_refuses_once_a_waiver_it_relied_on_has_expired(example: Example) -> None:
    """1.1.0 enters production on two waivers (its failing case and REQ-7) that expire
    tomorrow; the deploy gate passes today and refuses the same promotion three days later
    (REBUILD_NOW: the time the policy is evaluated at)."""
    store = clone_store(example, "gate")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    for gap in (["--requirement", "REQ-7"], ["--test", FAILING_CASE]):
        ok(waive(example, store, "quality", "quality", gap, tomorrow))
    production = example.root / "gate-production.toml"
    production.write_text(gaps_policy(example).read_text().replace(
        "[policy]\n", f'[policy]\npromoter_keys = ["{example.key("release-manager")}"]\n', 1))
    environments = example.root / "gate-environments.toml"
    environments.write_text('[[environment]]\nname = "production"\n'
                            'repository = "gate-production-store"\n'
                            f'policy = "{production}"\n')
    ok(run_rebuild("promote", V2, "--to", "production", "--key",
                   example.key("release-manager", True), "--environments", environments,
                   store=store))
    story = ok(run_rebuild("show", V2, "--key", example.key("ci"), "--json", store=store)).json
    image = next(a["sha256"] for a in story["artifacts"] if a["name"] == "oci-image")
    gate = ("gate", f"sha256:{image}", "--env", "production", "--environments", environments,
            "--json")
    today = run_rebuild(*gate)
    assert today.code == 0, today.stderr
    assert today.json["predicate"]["verificationResult"] == "PASSED"
    later = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    refused = run_rebuild(*gate, env={"REBUILD_NOW": later})
    assert refused.code == 1, refused.stderr
    assert refused.json["predicate"]["verificationResult"] == "FAILED"
    assert f"expired {tomorrow}T00:00:00Z" in refused.stderr


def test_a_waiver_that_already_expired_is_refused(example: Example) -> None:
    result = waive(example, clone_store(example, "past"), "quality", "quality",
                   ["--requirement", "REQ-7"], "2020-01-01")
    assert result.code == 2 and "not in the future" in result.stderr


# -- the trace matrix -----------------------------------------------------------------------

def normalized(text: str) -> str:
    return re.sub(r"sha256:[0-9a-f]{64}", "sha256:<manifest>", text)


@pytest.mark.parametrize(("option", "golden"), [("--json", "trace.json"),
                                                ("--csv", "trace.csv")])
def test_trace_matches_golden(example: Example, option: str, golden: str) -> None:
    result = ok(run_rebuild("trace", V1, "--key", example.key("ci"), option,
                            store=example.store))
    data = normalized(result.stdout)
    if option == "--json":
        data = json.dumps(json.loads(data), indent=2) + "\n"
    if os.environ.get("REBUILD_UPDATE_GOLDEN"):
        (GOLDEN / golden).write_text(data)
    assert data == (GOLDEN / golden).read_text()


def test_trace_names_the_uncovered_requirement(example: Example) -> None:
    result = ok(run_rebuild("trace", V2, "--key", example.key("ci"), store=example.store))
    assert "REQ-7        UNCOVERED  none" in result.stdout
    assert "uncovered: REQ-7 (no passing test case)" in result.stdout
    assert f"{FAILING_CASE} failed" in result.stdout


def test_trace_without_a_trusted_key_shows_nothing(example: Example) -> None:
    result = run_rebuild("trace", V1, "--key", example.key("stranger"), store=example.store)
    assert result.code == 1 and "NOT VERIFIED" in result.stderr
    assert result.stdout == ""


def test_show_and_the_exported_report_carry_the_trace_matrix(example: Example) -> None:
    import tarfile

    from lxml import html  # type: ignore[import-untyped]

    from tests.browser_support import dump_dom, require_chromium

    require_chromium()
    story = ok(run_rebuild("show", V2, "--key", example.key("ci"), "--json",
                           store=example.store)).json
    assert story["trace"]["uncovered"] == ["REQ-7"]
    text = ok(run_rebuild("show", V2, "--key", example.key("ci"), store=example.store)).stdout
    assert "Trace matrix" in text and "REQ-7" in text
    bundle = example.root / "v1.tar"
    ok(run_rebuild("export", V1, "-o", bundle, "--key", example.key("ci"), store=example.store))
    with tarfile.open(bundle) as archive:
        names = {m.name.rsplit("/", 1)[-1]: m for m in archive.getmembers()}
        page = archive.extractfile(names["report.html"])
        assert page is not None
        (example.root / "report.html").write_bytes(page.read())
    # The matrix as a browser builds it from the page (headless Chromium, network off).
    document = html.fromstring(dump_dom(example.root / "report.html"))
    rows = {row.get("data-requirement"): row.xpath("./td[2]")[0].text_content()
            for row in document.xpath('//table[@id="trace-matrix"]/tbody/tr')}
    assert rows == {f"REQ-{i}": "covered" for i in range(1, 7)}


def test_notes_since_the_previous_version_list_the_upgrade_and_the_changed_artifact(
        example: Example) -> None:
    notes = ok(run_rebuild("notes", V2, "--since", V1, "--key", example.key("ci"), "--json",
                           store=example.store)).json
    since = notes["since"]
    assert since["release"] == V1
    # The wheel's bytes changed, and so did the image it is laid into.
    assert since["artifacts"] == {"added": [], "removed": [],
                                  "changed": ["oci-image", "risk_score-1.0.0-py3-none-any.whl"]}
    assert {"package": "pypi/pytest", "from": "8.3.5", "to": "8.4.2"} in since[
        "dependencies"]["upgraded"]
    assert "pypi/pygments" in [d["package"] for d in since["dependencies"]["added"]]
    assert notes["change"]["requirements"][-1] == "REQ-7"
    assert "requirement REQ-7 is covered by no passing test case" in notes["limitations"]
    text = ok(run_rebuild("notes", V2, "--since", V1, "--key", example.key("ci"),
                          store=example.store)).stdout
    assert "- Dependency upgraded: pypi/pytest 8.3.5 → 8.4.2" in text
    assert "- Artifacts changed: oci-image, risk_score-1.0.0-py3-none-any.whl" in text
    page = ok(run_rebuild("notes", V2, "--since", V1, "--format", "html", "--key",
                          example.key("ci"), store=example.store)).stdout
    assert page.startswith("<!DOCTYPE html>") and "pypi/pytest 8.3.5 → 8.4.2" in page


def test_notes_show_waivers_with_their_residual_risk(example: Example) -> None:
    store = clone_store(example, "notes")
    ok(waive(example, store, "quality", "quality", ["--requirement", "REQ-7"]))
    notes = ok(run_rebuild("notes", V2, "--policy", example.policy, "--json",
                           store=store)).json
    assert notes["waivers"] == [{
        "waives": "requirement REQ-7", "role": "quality", "name": "W. quality",
        "justification": "rounding is checked in review",
        "residual_risk": "a score off by one point near a threshold",
        "expires": "2099-01-01T00:00:00Z"}]
