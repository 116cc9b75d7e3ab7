"""The rollout report (issue 16 point 4): when a canary ends, `report.json` and `report.png` land in
the candidate version's MLflow run, and its version is tagged `<key>.report` with the JSON's URI.

The driver, engine, gate and shadow phases, analysis, journal, report and history are the real
ones, writing to the session's real MLflow server through `modelops.registry.Registry`, read back
with MLflow's own client. Only what is outside our code is faked: the serving platform and the
status store (`fake_world`), and the metric source (`Versions`: per-version numbers as Prometheus
would answer them).
"""

from __future__ import annotations

import json
import random
import struct
import uuid
from datetime import timedelta

import pytest

from fake_world import INTERFACE, FakePlatform, FakeStore, World, at

from modelops.deployment.spec import parse_spec
from modelops.rollout import Inconclusive, Phase, RolloutPolicy, RolloutState
from modelops.rollout.actions import ABORT_ANNOTATION, PROMOTE_ANNOTATION, Promote, RollBack
from modelops.rollout.analysis import AnalysisResult, CheckResult, ClientErrorRate, LatencyQuantile, Outcome, PromQL
from modelops.rollout.analysis import RequestCount, SuccessRate
from modelops.rollout.driver import AnalysisScope, Facts, tick
from modelops.rollout.history import NO_RUN, RegistryHistory, deployment_key
from modelops.rollout.journal import MAX_ENTRIES, analysis_entry, append, rounded
from modelops.rollout.report import HINTS, build_report, is_ending, not_measured, render_png
from modelops.rollout.shadow import ComparisonCount, ShadowQuantile
from modelops.rollout.state import PerformanceGateRecord, RolledBack, Traffic

PASS = 15
NS, NAME = "ns", "md"
KEY = deployment_key(NS, NAME)
PNG = b"\x89PNG\r\n\x1a\n"
FOLDER = "modelops-rollout/ns.md/20260101T120000Z"  # fake_world.T0: every canary here starts at t=0
GOOD = {"url": "http://x", "concurrency": 4, "duration_s": 20, "requests": 800, "errors": 0,
        "throughput_rps": 40.0, "p50_ms": 9.8, "p99_ms": 21.0}
# Checks against the stable version, so that its success rate and p99 are measured too.
ANALYSIS = {"minRequests": 5, "failureLimit": 2, "inconclusiveLimit": 3,
            "successRate": {"min": 0.99, "maxDrop": 0.01}, "p99LatencyMs": {"max": 500, "maxRatio": 3}}


def spec(**rollout):
    base = {"strategy": "canary", "steps": [10, 50, 100], "interval": "60s", "analysis": ANALYSIS}
    return parse_spec({"model": {"name": "m", "alias": "champion"}, "rollout": {**base, **rollout}})


class Versions:
    """Prometheus over a window, with per-version success rates and p99s, and shadow comparisons."""

    def __init__(self, success=None, p99=None, agree=1.0):
        self.success = {"1": 0.998, "2": 0.999, **(success or {})}
        self.p99 = {"1": 0.005, "2": 0.006, **(p99 or {})}  # seconds
        self.agree = agree

    def query(self, q):
        version = dict(getattr(q, "selector", ())).get("version")
        if isinstance(q, RequestCount):
            return 5.0 * q.window
        if isinstance(q, SuccessRate):
            return self.success[version]
        if isinstance(q, ClientErrorRate):
            return 0.0
        if isinstance(q, LatencyQuantile):
            return self.p99[version]
        if isinstance(q, PromQL):
            return Inconclusive("no PromQL scripted")
        if isinstance(q, ComparisonCount):
            n = 2.0 * q.window
            return {None: n, "agree": n * self.agree, "disagree": n * (1 - self.agree)}[q.outcome]
        if isinstance(q, ShadowQuantile):
            return {"abs_diff": 1e-6, "cosine": 0.9999}[q.metric]
        raise TypeError(q)


class Rollout:
    """Stable v1 serves, the target is v2; one driver pass every PASS seconds, recorded in MLflow."""

    def __init__(self, registry, model: str, the_spec, metrics=None, load_docs=None, annotations=None):
        self.spec, self.metrics = the_spec, metrics or Versions()
        self.policy = RolloutPolicy.from_spec(the_spec)
        self.annotations = annotations or {}
        w = self.world = World(rng=random.Random(7), interfaces={v: INTERFACE for v in "123"},
                               load_docs=load_docs or {"1": GOOD, "2": GOOD})
        w.serving, w.running, w.ready = Traffic("1"), {"1"}, {"1"}
        w.status = RolloutState(phase=Phase.STABLE, stable_version="1").to_status()
        self.history = RegistryHistory(registry, model, NS, NAME)
        self.errors: list[str] = []

    @property
    def state(self) -> RolloutState:
        return RolloutState.from_status(self.world.status)

    def run(self, until: int, start: int = 0, target: str = "2") -> None:
        for t in range(start, until + 1, PASS):
            self.world.traffic_pass()
            result = tick(self.state, self.spec, Facts(target=target, generation=1, annotations=self.annotations),
                          platform=FakePlatform(self.world), store=FakeStore(self.world), provider=self.metrics,
                          scope=AnalysisScope("m", NS), now=at(t), history=self.history, policy=self.policy)
            if result.history_error:
                self.errors.append(result.history_error)


@pytest.fixture()
def model(mlflow_client, tmp_path):
    """A registered model: v1 and v2 logged from runs of their own, v3 registered without a run."""
    name = f"report-{uuid.uuid4().hex[:8]}"
    mlflow_client.create_registered_model(name)
    exp = mlflow_client.create_experiment(name)
    for i in (1, 2):
        run = mlflow_client.create_run(exp)
        src = tmp_path / f"v{i}"
        src.mkdir()
        (src / "MLmodel").write_text("flavors: {}\n")
        mlflow_client.log_artifacts(run.info.run_id, str(src), "model")
        mlflow_client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    mlflow_client.create_model_version(name, source="s3://models/elsewhere/model")
    return name


def logged(mlflow_client, model: str, version: str, tmp_path) -> tuple[dict, bytes, str]:
    """The report of `version` read back through MLflow: (report.json, report.png, the tag)."""
    mv = mlflow_client.get_model_version(model, version)
    tag = mv.tags[f"{KEY}.report"]
    listed = sorted(f.path for f in mlflow_client.list_artifacts(mv.run_id, FOLDER))
    assert listed == [f"{FOLDER}/report.json", f"{FOLDER}/report.png"]
    run = mlflow_client.get_run(mv.run_id)
    assert tag == f"{run.info.artifact_uri}/{FOLDER}/report.json"
    local = mlflow_client.download_artifacts(mv.run_id, FOLDER, str(tmp_path))
    with open(f"{local}/report.json") as f:
        doc = json.load(f)
    with open(f"{local}/report.png", "rb") as f:
        png = f.read()
    return doc, png, tag


def assert_png(png: bytes) -> None:
    assert png.startswith(PNG)
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == (1000, 900)
    assert 20_000 < len(png) < 1_000_000


# --- in MLflow: each ending ---------------------------------------------------------------------
def test_a_promoted_rollout_logs_its_report_with_both_versions_per_step(registry, mlflow_client, model, tmp_path):
    r = Rollout(registry, model, spec())
    r.run(240)
    assert r.state.phase == Phase.PROMOTED and r.errors == []
    doc, png, _ = logged(mlflow_client, model, "2", tmp_path)
    assert (doc["version"], doc["stableVersion"], doc["model"], doc["deployment"]) == ("2", "1", model, "ns/md")
    assert doc["ending"] == {"outcome": "Promoted", "reason": "Analysis", "message": "v2 passed every step: promoted"}
    assert (doc["startedAt"], doc["endedAt"]) == ("2026-01-01T12:00:00Z", "2026-01-01T12:03:00Z")
    steps = doc["steps"]
    assert [(s["phase"], s["weight"], s["step"], s["outcome"], s["at"]) for s in steps] == [
        ("step", 10, 0, "Passed", "2026-01-01T12:01:00Z"), ("step", 50, 1, "Passed", "2026-01-01T12:02:00Z"),
        ("step", 100, 2, "Passed", "2026-01-01T12:03:00Z")]
    for s in steps[:2]:  # both versions measured while both take traffic
        assert s["values"] == {"requests": 300.0, "successRate": 0.999, "stableSuccessRate": 0.998,
                               "p99Ms": 6.0, "stableP99Ms": 5.0, "clientErrorsRise": 0.0}
    assert steps[2]["values"] == {"requests": 300.0, "successRate": 0.999, "p99Ms": 6.0}  # 100%: no stable traffic
    assert doc["steps"] == [dict(e) for e in r.state.journal]  # what the status kept, exactly
    last = {c["name"]: c for c in doc["lastAnalysis"]["checks"]}
    assert last["successRate"]["value"] == 0.999 and last["p99LatencyMs"]["value"] == pytest.approx(6.0)
    assert doc["performanceGate"] is None and doc["shadow"] is None
    assert doc["notMeasured"] == [f"agreement: {HINTS['agreement']}"]
    assert_png(png)
    assert f"{KEY}.report" not in mlflow_client.get_model_version(model, "1").tags  # the candidate's run only


def test_a_rollback_by_analysis_logs_the_failed_steps(registry, mlflow_client, model, tmp_path):
    r = Rollout(registry, model, spec(), Versions(success={"2": 0.5}))
    r.run(180)
    assert r.state.phase == Phase.ROLLED_BACK and r.errors == []
    doc, png, _ = logged(mlflow_client, model, "2", tmp_path)
    end = doc["ending"]
    assert (end["outcome"], end["reason"], end["check"]) == ("RolledBack", "AnalysisFailed", "successRate")
    assert end["message"].startswith("analysis failed 2/2: successRate: 0.5 < min 0.99")
    assert doc["endedAt"] == "2026-01-01T12:02:00Z"
    assert [(s["weight"], s["outcome"], s["check"], s["values"]["successRate"], s["values"]["stableSuccessRate"])
            for s in doc["steps"]] == [(10, "Failed", "successRate", 0.5, 0.998)] * 2
    assert_png(png)


def test_a_rollback_by_the_performance_gate_logs_the_load_tests(registry, mlflow_client, model, tmp_path):
    r = Rollout(registry, model, spec(performanceGate={"maxP99Ms": 50}),
                load_docs={"1": GOOD, "2": {**GOOD, "p99_ms": 180.0, "errors": 8}})
    r.run(120)
    assert r.state.phase == Phase.ROLLED_BACK and r.errors == []
    doc, png, _ = logged(mlflow_client, model, "2", tmp_path)
    assert (doc["ending"]["reason"], doc["ending"]["check"]) == ("PerformanceGateFailed", "errors")
    (gate,) = doc["steps"]
    assert (gate["phase"], gate["attempt"], gate["outcome"], gate["weight"]) == ("performanceGate", 1, "Failed", 0)
    assert gate["values"] == {"requests": 800.0, "errors": 8.0, "throughputRps": 40.0, "p50Ms": 9.8, "p99Ms": 180.0,
                              "successRate": 0.99, "stableRequests": 800.0, "stableErrors": 0.0,
                              "stableThroughputRps": 40.0, "stableP50Ms": 9.8, "stableP99Ms": 21.0,
                              "stableSuccessRate": 1.0}
    assert doc["performanceGate"]["outcome"] == "Failed" and doc["performanceGate"]["candidate"]["p99Ms"] == 180.0
    assert doc["notMeasured"] == [f"agreement: {HINTS['agreement']}"]
    assert_png(png)


def test_a_rollback_in_shadow_logs_the_comparisons(registry, mlflow_client, model, tmp_path):
    r = Rollout(registry, model, spec(shadow={"minRequests": 50}), Versions(agree=0.5))
    r.run(120)
    assert r.state.phase == Phase.ROLLED_BACK and r.errors == []
    doc, png, _ = logged(mlflow_client, model, "2", tmp_path)
    assert (doc["ending"]["reason"], doc["ending"]["check"]) == ("ShadowFailed", "agreement")
    (shadow,) = doc["steps"]
    assert (shadow["phase"], shadow["weight"], shadow["outcome"], shadow["check"]) == ("shadow", 0, "Failed",
                                                                                       "agreement")
    assert shadow["values"] == {"comparisons": 120.0, "agreement": 0.5, "maxAbsDiff": 1e-6, "worstAbsDiff": 1e-6}
    assert doc["shadow"]["values"]["agreement"] == 0.5 and doc["shadow"]["outcome"] == "Failed"
    assert doc["notMeasured"] == [f"{k}: {HINTS[k]}" for k in ("successRate", "stableSuccessRate", "p99Ms",
                                                                "stableP99Ms")]
    assert_png(png)


@pytest.mark.parametrize("annotation,outcome,reason", [(ABORT_ANNOTATION, "RolledBack", "Aborted"),
                                                      (PROMOTE_ANNOTATION, "Promoted", "Manual")])
def test_manual_endings_log_a_report_too(registry, mlflow_client, model, tmp_path, annotation, outcome, reason):
    r = Rollout(registry, model, spec())
    r.run(75)  # one step analysed
    r.annotations = {annotation: "2"}
    r.run(90, start=90)
    doc, png, _ = logged(mlflow_client, model, "2", tmp_path)
    assert (doc["ending"]["outcome"], doc["ending"]["reason"]) == (outcome, reason)
    assert [(s["weight"], s["outcome"]) for s in doc["steps"]] == [(10, "Passed")]
    assert_png(png)


def test_a_version_without_a_run_gets_a_tag_saying_so_and_no_run(registry, mlflow_client, model):
    exp = mlflow_client.get_experiment_by_name(model)
    runs = len(mlflow_client.search_runs([exp.experiment_id]))
    r = Rollout(registry, model, spec(), Versions(success={"3": 0.5}, p99={"3": 0.006}))
    r.run(180, target="3")
    assert r.state.rolled_back.version == "3" and r.errors == []
    assert mlflow_client.get_model_version(model, "3").tags[f"{KEY}.report"] == NO_RUN.format(version="3")
    assert len(mlflow_client.search_runs([exp.experiment_id])) == runs


def test_a_report_that_cannot_be_logged_never_fails_the_rollout_nor_its_tags(registry, mlflow_client, model):
    # v4's run stores its artifacts where nothing can be written (an artifact store that refuses).
    exp = mlflow_client.create_experiment(f"{model}-refused", artifact_location="file:///proc/modelops-refused")
    run = mlflow_client.create_run(exp)
    mv = mlflow_client.create_model_version(model, source="s3://models/v4/model", run_id=run.info.run_id)
    assert mv.version == "4"
    r = Rollout(registry, model, spec(), Versions(success={"4": 0.5}, p99={"4": 0.006}))
    r.world.interfaces["4"] = INTERFACE
    r.run(180, target="4")
    assert r.state.rolled_back.version == "4" and r.errors == []
    tags = mlflow_client.get_model_version(model, "4").tags
    assert tags[KEY].startswith("rolled back")
    assert tags[f"{KEY}.report"].startswith("report not logged: ")


# --- the state's journal ------------------------------------------------------------------------
def test_the_journal_round_trips_resets_with_each_canary_and_old_statuses_load():
    r = Rollout(None, "m", spec(), Versions(success={"2": 0.5}))
    r.history = None
    r.run(180)
    st = r.state
    assert len(st.journal) == 2 and RolloutState.from_status(st.to_status()) == st
    assert RolloutState.from_status({k: v for k, v in st.to_status().items() if k != "journal"}).journal == ()
    r.metrics.success["3"], r.metrics.p99["3"] = 0.999, 0.006
    r.run(195, start=195, target="3")  # a new canary: its own journal
    assert r.state.version == "3" and r.state.journal == ()
    r.run(270, start=210, target="3")
    assert [e["weight"] for e in r.state.journal] == [10]


def test_the_journal_is_bounded_and_rounds():
    result = AnalysisResult("2", at(0), Outcome.PASSED, (CheckResult("successRate", Outcome.PASSED, 0.123456789),))
    entry = analysis_entry("step", result, weight=10, step=0)
    assert entry["values"] == {"successRate": 0.123457} and rounded(1234567.0) == 1234570.0
    journal = ()
    for i in range(MAX_ENTRIES + 5):
        journal = append(journal, {**entry, "weight": i})
    assert len(journal) == MAX_ENTRIES and journal[0]["weight"] == 5


# --- build_report / render_png on edge cases ----------------------------------------------------
def test_a_report_without_any_measurement_still_builds_and_draws():
    state = RolloutState(phase=Phase.ROLLED_BACK, stable_version="1", started_at=at(0),
                         rolled_back=RolledBack("2", 1, at(5), "Aborted"))
    ending = RollBack("2", "1", "Aborted", "v2 aborted by hand")
    assert is_ending(ending) and not is_ending(Promote("2", "1", "FirstDeployment"))
    doc = build_report(state, ending, deployment="ns/md", model="m")
    assert doc["steps"] == [] and doc["endedAt"] == "2026-01-01T12:00:05Z"
    assert doc["notMeasured"] == ["no analysis was counted and no performance gate decided: nothing was measured"]
    json.dumps(doc)
    assert render_png(doc).startswith(PNG)


def test_a_gate_only_report_from_an_old_status_draws_the_gate_numbers():
    rec = PerformanceGateRecord("2", 1, at(0), "Failed", "maxP99Ms", "performance gate failed",
                                stable={"requests": 10.0, "errors": 0.0, "throughputRps": 5.0, "p99Ms": 20.0},
                                candidate={"requests": 10.0, "errors": 0.0, "throughputRps": 5.0, "p99Ms": 90.0},
                                decided_at=at(15))
    state = RolloutState(phase=Phase.ROLLED_BACK, stable_version="1", started_at=at(0), performance_gate=rec,
                         rolled_back=RolledBack("2", 1, at(15), "PerformanceGateFailed", "maxP99Ms"))
    doc = build_report(state, RollBack("2", "1", "PerformanceGateFailed", "p99 90 ms > max 50 ms", "maxP99Ms"),
                       deployment="ns/md", model="m", now=at(15))
    assert doc["steps"] == [] and doc["performanceGate"]["candidate"]["p99Ms"] == 90.0
    assert not any(n.startswith(("p99Ms", "stableP99Ms", "successRate")) for n in not_measured(doc))
    assert render_png(doc).startswith(PNG)


def test_missing_stable_values_and_another_canarys_state():
    entry = {"at": "2026-01-01T12:01:00Z", "phase": "step", "weight": 10, "step": 0, "outcome": "Passed",
             "values": {"successRate": 1.0, "p99Ms": 4.0}}
    state = RolloutState(phase=Phase.PROMOTED, stable_version="2", started_at=at(0), journal=(entry,))
    doc = build_report(state, Promote("2", "1", "Analysis"), deployment="ns/md", model="m", now=at(60))
    assert doc["steps"] == [entry]
    assert [n.split(":")[0] for n in doc["notMeasured"]] == ["stableSuccessRate", "stableP99Ms", "agreement"]
    assert render_png(doc).startswith(PNG)
    # A pass that rolled v2 back and then started v3: the state's records are v3's, not v2's.
    newer = state.evolve(stable_version="1", version="3", started_at=at(60) + timedelta(seconds=1),
                         rolled_back=RolledBack("3", 1, at(61), "InterfaceChanged"))
    other = build_report(newer, RollBack("2", "1", "Superseded", "v3 resolved"), deployment="ns/md", model="m",
                         now=at(61))
    assert other["steps"] == [] and other["startedAt"] is None and other["endedAt"] == "2026-01-01T12:01:01Z"
