"""Canary analysis against a real Prometheus scraping real `modelops serve` predictors.

Three predictors serve the same model name, one per version, as KServe's stable and canary
predictors would: v1 and v2 are the demo MLP's two MLflow versions converted by the real pipeline;
v3 is v2's ONNX with one extra guard that fails at run time (an out-of-range Gather) whenever the
first feature exceeds 50, a model bug some inputs reach. The same request mix (1 in 5 has that
feature at 100) goes to every predictor; v3 answers those with a real 500. The checks then run
through `PrometheusProvider` (and `ScrapeProvider` for local mode), and the engine is driven in real
time by Prometheus's answers: v2 is promoted after exactly len(steps) intervals, v3 rolled back.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import onnx
import pytest
from bad_model import poisoned_copy, renamed_copy


from onnx import TensorProto, helper

from modelops.deployment.spec import AnalysisSpec, CheckSpec
from modelops.local.ports import free_port
from modelops.rollout import (Observations, Outcome, Phase, Promote, RollBack, RolloutPolicy, RolloutState,
                              SetWeight, analyse, drive)
from modelops.rollout.analysis import Target
from modelops.rollout.providers import PrometheusProvider, ScrapeProvider

from test_core_serving import Predictor, v2_input

MODEL = "fraud"  # the served name: the InferenceService's, shared by every version
POISON = 100.0
ERRORS_500 = ('sum(increase(modelops_predictor_requests_total{model="$model",version="$version",code="500"}'
              '[$window])) or vector(0)')


@pytest.fixture(scope="module")
def fleet(prometheus, mlp_model, mlp_converted, convert, tmp_path_factory):
    """v1 (stable), v2 (good canary), v3 (canary failing on some inputs), v4 (v2 with its input
    renamed `features`: it refuses every request that names `input`), scraped by Prometheus."""
    v2 = convert(mlp_model, mlp_model.versions[1])
    bad_dir = poisoned_copy(v2.model_file, tmp_path_factory.mktemp("poisoned") / "onnx")
    renamed = renamed_copy(v2.model_file, tmp_path_factory.mktemp("renamed") / "onnx")
    logs = tmp_path_factory.mktemp("rollout-logs")
    dirs = {"1": mlp_converted.out_dir, "2": v2.out_dir, "3": bad_dir, "4": renamed}
    servers = {}
    try:
        for version, d in dirs.items():
            servers[version] = Predictor(d, MODEL, logs, "--model-version", version, "--max-batch-size", "1")
            host = f"127.0.0.1:{servers[version].http_port}"
            prometheus.add_target(host, role=f"v{version}")
        for p in servers.values():
            prometheus.wait_for_target(f"127.0.0.1:{p.http_port}")
            # Every series (200s, and v3's 500s) exists before the measured traffic: increase()
            # takes a series' first sample as its baseline.
            send(p, 5, start=100_000)
        time.sleep(2.5)
        yield servers
    finally:
        for p in servers.values():
            p.stop()


def features(i: int) -> np.ndarray:
    x = np.random.default_rng(i).normal(size=(1, 16)).astype(np.float32)
    if i % 5 == 0:
        x[0, 0] = POISON
    return x


def send(predictor: Predictor, n: int, start: int = 0) -> dict[int, int]:
    codes: dict[int, int] = {}
    for i in range(start, start + n):
        r = predictor.infer({"inputs": [v2_input(features(i))]})
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    return codes


def scraped_requests(prometheus, version: str) -> float:
    result = prometheus.query(f'sum(modelops_predictor_requests_total{{model="{MODEL}",version="{version}"}})')
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def traffic(fleet, prometheus):
    """100 requests to each version, then wait until Prometheus has them all."""
    sent = {v: send(p, 100) for v, p in fleet.items()}
    assert sent["1"] == {200: 100} and sent["2"] == {200: 100}
    assert sent["3"] == {200: 80, 500: 20}  # real 500s from the poisoned model
    assert sent["4"] == {400: 100}  # the renamed input: every request refused
    deadline = time.monotonic() + 30
    while any(scraped_requests(prometheus, v) < 105 for v in fleet):
        assert time.monotonic() < deadline, "Prometheus did not scrape the requests"
        time.sleep(0.5)
    time.sleep(1.5)  # one more scrape after the last counts, so increase() sees the whole burst
    return sent


SPEC = AnalysisSpec(success_rate_min=0.99, success_rate_max_drop=0.01, p99_latency_ms_max=2000,
                    p99_latency_max_ratio=20, min_requests=20,
                    checks=(CheckSpec("no-500s", ERRORS_500, max=0.0),))


def target(version: str, window: float = 120, weight: int = 50) -> Target:
    return Target(model=MODEL, version=version, stable_version="1", window=window, weight=weight)


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_a_healthy_canary_passes_against_prometheus(prometheus, traffic):
    provider = PrometheusProvider(prometheus.url)
    result = analyse(SPEC, provider, target("2"), now())
    assert result.outcome == Outcome.PASSED, result.to_status()
    by = {c.name: c for c in result.checks}
    assert set(by) == {"requests", "successRate", "successRateVsStable", "p99LatencyMs",
                       "p99LatencyVsStable", "clientErrorsVsStable", "no-500s"}
    assert by["clientErrorsVsStable"].outcome == Outcome.PASSED and by["clientErrorsVsStable"].value == 0
    assert by["requests"].value >= 90  # increase() extrapolates; ~100 requests
    assert by["successRate"].value == pytest.approx(1.0)
    assert 0 < by["p99LatencyMs"].value < 2000


def test_a_canary_that_errors_fails_its_checks(prometheus, traffic):
    provider = PrometheusProvider(prometheus.url)
    result = analyse(SPEC, provider, target("3"), now())
    assert result.outcome == Outcome.FAILED, result.to_status()
    assert result.deciding.name == "successRate"
    by = {c.name: c for c in result.checks}
    assert by["successRate"].value == pytest.approx(0.8, abs=0.02)
    assert by["successRateVsStable"].outcome == Outcome.FAILED
    assert by["no-500s"].outcome == Outcome.FAILED and by["no-500s"].value > 0


def test_inconclusive_against_prometheus(prometheus, traffic):
    provider = PrometheusProvider(prometheus.url)
    few = analyse(AnalysisSpec(min_requests=10**6), provider, target("2"), now())
    assert few.outcome == Outcome.INCONCLUSIVE and few.deciding.name == "requests"
    assert "minRequests" in few.deciding.message
    empty = analyse(SPEC, provider, target("99"), now())  # a version nothing serves: no data
    assert empty.outcome == Outcome.INCONCLUSIVE and "no data" in empty.deciding.message
    bad_query = analyse(AnalysisSpec(min_requests=1, checks=(CheckSpec("broken", "sum(rate(", max=1),)),
                        provider, target("2"), now())
    assert bad_query.outcome == Outcome.INCONCLUSIVE and bad_query.deciding.name == "broken"
    assert "Prometheus error 400" in bad_query.deciding.message
    nan = analyse(AnalysisSpec(min_requests=1, checks=(CheckSpec("nan", "0/0", max=1),)), provider, target("2"), now())
    assert nan.outcome == Outcome.INCONCLUSIVE and "nan" in nan.deciding.message.lower()
    down = analyse(SPEC, PrometheusProvider(f"http://127.0.0.1:{free_port()}"), target("2"), now())
    assert down.outcome == Outcome.INCONCLUSIVE and "unreachable" in down.deciding.message
    # At 100% the stable takes no traffic: relative checks are skipped, the absolute ones decide.
    full = analyse(SPEC, provider, target("2", weight=100), now())
    assert full.outcome == Outcome.PASSED
    assert {c.name for c in full.checks if c.outcome == Outcome.SKIPPED} == {
        "successRateVsStable", "p99LatencyVsStable", "clientErrorsVsStable"}


def test_a_canary_that_refuses_what_the_stable_accepts_fails_client_errors_vs_stable(prometheus, traffic):
    """v4 answers 400 to every request v1 answers 200: the healthiest canary by successRate and
    latency, and the one clientErrorsVsStable exists for."""
    provider = PrometheusProvider(prometheus.url)
    result = analyse(SPEC, provider, target("4"), now())
    by = {c.name: c for c in result.checks}
    assert by["successRate"].outcome == Outcome.PASSED  # 4xx are not failures of the server
    assert result.outcome == Outcome.FAILED and result.deciding.name == "clientErrorsVsStable", result.to_status()
    assert by["clientErrorsVsStable"].value == pytest.approx(1.0, abs=0.01)
    assert "4xx share 1 vs stable v1 0" in by["clientErrorsVsStable"].message
    # A bound of 1 turns it off; too few stable requests is inconclusive, never a pass.
    off = analyse(replace(SPEC, client_errors_max_increase=1.0), provider, target("4"), now())
    assert "clientErrorsVsStable" not in {c.name for c in off.checks}
    few = analyse(replace(SPEC, min_requests=10**6), provider, target("4"), now())
    assert {c.name: c.outcome for c in few.checks}["clientErrorsVsStable"] == Outcome.INCONCLUSIVE


def test_scrape_provider_reads_the_predictors_own_metrics(fleet, traffic):
    urls = [f"{p.url}/metrics" for p in fleet.values()]
    provider = ScrapeProvider(urls)
    provider.scrape()
    assert analyse(SPEC, provider, target("2"), now()).outcome == Outcome.INCONCLUSIVE  # one scrape: no increase
    for v, p in fleet.items():
        send(p, 50, start=1000)
    provider.scrape()
    spec = AnalysisSpec(success_rate_min=0.99, success_rate_max_drop=0.01, p99_latency_ms_max=2000,
                        p99_latency_max_ratio=20, min_requests=20)
    good = analyse(spec, provider, target("2"), now())
    assert good.outcome == Outcome.PASSED, good.to_status()
    assert {c.name: c.value for c in good.checks}["requests"] == 50
    bad = analyse(spec, provider, target("3"), now())
    assert bad.outcome == Outcome.FAILED and bad.deciding.name == "successRate"
    assert bad.deciding.value == pytest.approx(0.8)
    refused = analyse(spec, provider, target("4"), now())
    assert refused.outcome == Outcome.FAILED and refused.deciding.name == "clientErrorsVsStable"
    assert refused.deciding.value == pytest.approx(1.0)
    promql = analyse(SPEC, provider, target("2"), now())
    assert promql.outcome == Outcome.INCONCLUSIVE and promql.deciding.name == "no-500s"
    assert "PromQL checks need Prometheus" in promql.deciding.message
    down = ScrapeProvider([f"http://127.0.0.1:{free_port()}/metrics"])
    assert analyse(spec, down, target("2"), now()).outcome == Outcome.INCONCLUSIVE


class Load:
    """Background traffic to the stable and the canary predictors (bounded: stops by itself)."""

    def __init__(self, *predictors: Predictor, seconds: float = 60):
        self.stop_at = time.monotonic() + seconds
        self.predictors = predictors
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        i = 10_000
        while not self.stopped.is_set() and time.monotonic() < self.stop_at:
            for p in self.predictors:
                p.infer({"inputs": [v2_input(features(i))]})
            i += 1
            time.sleep(0.01)

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=10)


@pytest.mark.parametrize("canary,expect", [("2", "promoted"), ("3", "rolled back")])
def test_the_engine_driven_by_prometheus_in_real_time(prometheus, fleet, traffic, canary, expect):
    """Steps 50 -> 100 every 4 s, judged on the last 4 s of Prometheus data."""
    interval = 4.0
    policy = RolloutPolicy(steps=(50, 100), interval_seconds=interval, failure_limit=2, inconclusive_limit=3)
    spec = AnalysisSpec(success_rate_min=0.99, min_requests=5, checks=(CheckSpec("no-500s", ERRORS_500, max=0.0),))
    provider = PrometheusProvider(prometheus.url)
    load = Load(fleet["1"], fleet[canary], seconds=60)
    status = RolloutState(phase=Phase.STABLE, stable_version="1").to_status()
    log = []
    try:
        time.sleep(2)  # the canary's traffic is in Prometheus before the first step
        start = now()
        while (now() - start).total_seconds() < interval * 4:
            state, actions = drive(
                RolloutState.from_status(status), Observations(target=canary), policy, now(),
                analyse=lambda a: analyse(spec, provider, Target(MODEL, a.version, a.stable_version,
                                                                 max(a.window_seconds, 3), a.weight), now()))
            status = state.to_status()
            log += [(now(), a) for a in actions if isinstance(a, (SetWeight, Promote, RollBack))]
            if state.phase in (Phase.PROMOTED, Phase.ROLLED_BACK):
                break
            time.sleep(0.25)
    finally:
        load.close()
    state = RolloutState.from_status(status)
    kinds = [type(a).__name__ for _, a in log]
    if expect == "promoted":
        assert kinds == ["SetWeight", "SetWeight", "Promote"], (kinds, status)
        elapsed = (log[-1][0] - log[0][0]).total_seconds()
        assert 2 * interval <= elapsed < 2 * interval + 2, elapsed  # len(steps) intervals
        assert state.phase == Phase.PROMOTED and state.stable_version == "2"
    else:
        assert kinds == ["SetWeight", "RollBack"], (kinds, status)
        assert log[-1][1].check in ("successRate", "no-500s") and log[-1][1].reason == "AnalysisFailed"
        elapsed = (log[-1][0] - log[0][0]).total_seconds()
        assert elapsed < policy.failure_limit * interval + 2, elapsed
        assert state.phase == Phase.ROLLED_BACK and state.stable_version == "1" and state.failed_checks == 2


def test_runtime_failures_are_counted_500s_and_read_by_scrape_provider(tmp_path):
    """No Prometheus needed: a tiny model of ours, its poisoned copy, two real predictors."""
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 16])])
    good = tmp_path / "good"
    good.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(good / "model.onnx"))
    bad = poisoned_copy(good / "model.onnx", tmp_path / "bad")
    stable = Predictor(good, MODEL, tmp_path, "--model-version", "1", "--max-batch-size", "1")
    canary = Predictor(bad, MODEL, tmp_path, "--model-version", "2", "--max-batch-size", "1")
    try:
        r = canary.infer({"inputs": [v2_input(features(0))]})
        assert r.status_code == 500 and r.json()["reason"] == "InferenceFailed", r.text
        assert canary.alive()  # the server stays up
        provider = ScrapeProvider([f"{stable.url}/metrics", f"{canary.url}/metrics"])
        provider.scrape()
        assert send(stable, 40) == {200: 40} and send(canary, 40) == {200: 32, 500: 8}
        provider.scrape()
        spec = AnalysisSpec(success_rate_min=0.95, success_rate_max_drop=0.01, min_requests=20)
        result = analyse(spec, provider, Target(MODEL, "2", "1", 60, 50), now())
        assert result.outcome == Outcome.FAILED and result.deciding.name == "successRate"
        assert {c.name: c.value for c in result.checks}["successRate"] == pytest.approx(0.8)
        assert analyse(spec, provider, Target(MODEL, "1", None, 60, 50), now()).outcome == Outcome.PASSED
    finally:
        stable.stop()
        canary.stop()
