"""Shadow traffic and the performance gate before any canary traffic (issue 16), through the driver.

The driver, engine, gate and shadow phases, analysis, history and spec parsing are the real ones;
only what is outside our code is faked: the serving platform (`fake_world.FakePlatform`: the
traffic it serves, the mirroring it was told, the load tests it runs), the status store, MLflow's
tag API, and the metric source — a `Rates` provider answering as Prometheus would over a window
from per-second rates (and, in the last test, the real `ScrapeProvider` reading simulated
predictors' /metrics, shadow comparisons included).
"""

from __future__ import annotations

import json
import random

import httpx
import pytest

from fake_world import INTERFACE, Crash, FakeMlflow, FakePlatform, FakeStore, World, at

from modelops.deployment.spec import parse_spec
from modelops.errors import InvalidSpec
from modelops.rollout import Inconclusive, Notify, Phase, RolloutPolicy, RolloutState, SetWeight
from modelops.rollout.actions import LoadTest, PhaseResult, RollBack
from modelops.rollout.analysis import ClientErrorRate, LatencyQuantile, PromQL, RequestCount, SuccessRate
from modelops.rollout.driver import AnalysisScope, Facts, tick
from modelops.rollout.gate import judge
from modelops.rollout.history import record_actions
from modelops.rollout.providers import ScrapeProvider, to_promql
from modelops.rollout.shadow import ComparisonCount, Mirror, ShadowQuantile
from modelops.rollout.state import Traffic

PASS = 15  # seconds between driver passes; the interval is 60 s
KEY = "modelops.deployment.ns.md"
GOOD = {"url": "http://x", "concurrency": 4, "duration_s": 20, "requests": 800, "errors": 0,
        "throughput_rps": 40.0, "p50_ms": 9.8, "p99_ms": 21.0}


def spec(**rollout):
    base = {"strategy": "canary", "steps": [10, 50, 100], "interval": "60s",
            "analysis": {"minRequests": 5, "failureLimit": 2, "inconclusiveLimit": 3}}
    return parse_spec({"model": {"name": "m", "alias": "champion"}, "rollout": {**base, **rollout}})


class Rates:
    """Prometheus over a window, from per-second rates; records the shadow queries' selectors."""

    def __init__(self, **kw):
        self.requests, self.success, self.p99 = 5.0, 1.0, 0.004
        self.comparisons, self.agree, self.abs_diff, self.cosine = 2.0, 1.0, 1e-6, 0.9999
        self.down = False
        self.shadow_selectors: list[dict] = []
        self.__dict__.update(kw)

    def query(self, q):
        if self.down:
            return Inconclusive("Prometheus http://127.0.0.1:1 unreachable: connection refused")
        if isinstance(q, RequestCount):
            return self.requests * q.window
        if isinstance(q, SuccessRate):
            return self.success
        if isinstance(q, ClientErrorRate):
            return 0.0
        if isinstance(q, LatencyQuantile):
            return self.p99
        if isinstance(q, PromQL):
            return Inconclusive("no PromQL scripted")
        self.shadow_selectors.append(dict(q.selector))
        if isinstance(q, ComparisonCount):
            n = self.comparisons * q.window
            if n <= 0:
                return Inconclusive("no data")
            return {None: n, "agree": n * self.agree, "disagree": n * (1 - self.agree)}[q.outcome]
        if isinstance(q, ShadowQuantile):
            return {"abs_diff": self.abs_diff, "cosine": self.cosine}[q.metric]
        raise TypeError(q)


class History:
    def __init__(self, world: World):
        self.mlflow = FakeMlflow(world)

    def record(self, moves, now, state=None) -> None:
        record_actions(self.mlflow, "m", "ns", "md", moves, now)


class Story:
    """Stable v1 serves; the target is v2. One driver pass every PASS seconds, each a fresh process
    (platform, store and history objects are new: only the world and its status survive)."""

    def __init__(self, the_spec, rates: Rates | None = None, load_docs: dict | None = None, target: str = "2"):
        self.spec = the_spec
        self.policy = RolloutPolicy.from_spec(the_spec)
        self.rates = rates or Rates()
        self.target = target
        w = self.world = World(rng=random.Random(7), interfaces={v: INTERFACE for v in "123"},
                               load_docs=load_docs if load_docs is not None else {"1": GOOD, "2": GOOD})
        w.serving, w.running, w.ready = Traffic("1"), {"1"}, {"1"}
        w.status = RolloutState(phase=Phase.STABLE, stable_version="1").to_status()
        self.log: list[tuple[int, object]] = []
        self.served: list[tuple[int, Traffic]] = []  # what the platform served after each pass

    @property
    def state(self) -> RolloutState:
        return RolloutState.from_status(self.world.status)

    def tick(self, t: int, faults: set[str] = frozenset(), provider=None):
        w = self.world
        w.faults = set(faults)
        w.traffic_pass()
        try:
            result = tick(self.state, self.spec, Facts(target=self.target, generation=1), platform=FakePlatform(w),
                          store=FakeStore(w), provider=provider or self.rates, scope=AnalysisScope("m", "ns"),
                          now=at(t), history=History(w), policy=self.policy)
        except Crash:
            return None
        finally:
            w.faults = set()
        self.log += [(t, a) for a in result.actions]
        self.served.append((t, w.serving))
        return result

    def run(self, until: int, start: int = 0, **kw) -> None:
        for t in range(start, until + 1, PASS):
            self.tick(t, **kw)

    def of(self, kind) -> list[tuple[int, object]]:
        return [(t, a) for t, a in self.log if isinstance(a, kind)]

    def events(self) -> list[str]:
        return [a.notification.event for _, a in self.of(Notify)]

    def tag(self, suffix: str, version: str = "2") -> dict:
        return json.loads(self.world.tags[("m", version)][KEY + suffix])


SHADOW = {"minRequests": 50}
MIRROR = Mirror(candidate="2", stable="1", percent=10)


# --- shadow ------------------------------------------------------------------------------------
def test_shadow_passes_then_the_canary_starts():
    s = Story(spec(shadow=SHADOW))
    s.run(360)
    assert s.events() == ["ShadowStarted", "ShadowPassed", "Started", "StepAdvanced", "StepAdvanced", "Promoted"]
    assert [(t, a.weight) for t, a in s.of(SetWeight)] == [(60, 10), (120, 50), (180, 100)]
    # Weight 0 all through the shadow phase, the candidate deployed beside the stable.
    assert all(tr == Traffic("1", "2", 0) for t, tr in s.served if t < 60)
    # Mirroring: on from the shadow phase to the promotion, then stopped.
    calls = s.world.mirror_calls
    assert calls[0] == MIRROR and s.world.mirror is None
    first_none = calls.index(None)
    assert all(c == MIRROR for c in calls[:first_none]) and all(c is None for c in calls[first_none:])
    assert s.state.phase == Phase.PROMOTED and s.state.stable_version == "2"
    sh = s.state.shadow
    assert (sh.outcome, sh.version, sh.started_at, sh.decided_at) == ("Passed", "2", at(0), at(60))
    assert sh.values["comparisons"] == 120 and sh.values["agreement"] == 1.0
    # The comparison series asked for: the stable predictor's, naming the candidate.
    assert {(d["version"], d["candidate"], d["model"]) for d in s.rates.shadow_selectors} == {("1", "2", "m")}
    tag = s.tag(".shadow")
    assert tag["outcome"] == "Passed" and tag["agreement"] == 1.0 and tag["maxAbsDiff"] == 1e-6
    assert tag["worstAbsDiff"] == 1e-6 and tag["comparisons"] == 120
    history = [h["state"] for h in FakeMlflow(s.world).history("2")]
    assert history[:2] == ["shadow passed", "canary 10%"] and history[-1] == "promoted"


@pytest.mark.parametrize("change,checks,deciding", [
    ({"agree": 0.5}, {}, "agreement"),
    ({"abs_diff": 0.5}, {"maxAbsDiff": {"max": 0.01}}, "maxAbsDiff"),
    ({"cosine": 0.2}, {"cosine": {"min": 0.99}}, "cosine"),
])
def test_shadow_disagreement_rolls_back_before_any_weight_moves(change, checks, deciding):
    s = Story(spec(shadow={**SHADOW, "checks": checks}), Rates(**change))
    s.run(300)
    assert s.of(SetWeight) == [] and all(tr.weight == 0 for _, tr in s.served)
    assert s.world.answered.get("2", 0) == 0  # no client request was answered by the candidate
    (t, rb), = s.of(RollBack)
    assert (t, rb.reason, rb.check) == (60, "ShadowFailed", deciding)
    assert s.events() == ["ShadowStarted", "ShadowFailed", "RolledBack"]
    assert s.state.phase == Phase.ROLLED_BACK and s.state.rolled_back.check == deciding
    assert s.state.shadow.outcome == "Failed" and s.world.mirror is None and s.world.serving == Traffic("1")
    assert s.tag(".shadow")["check"] == deciding
    assert s.world.tags[("m", "2")][KEY].startswith("rolled back")


def test_too_few_comparisons_is_inconclusive_never_a_pass_and_rolls_back_at_max_duration():
    s = Story(spec(shadow={**SHADOW, "maxDuration": "5m"}), Rates(comparisons=0.1))  # 6 a minute
    s.run(600)
    assert s.of(SetWeight) == [] and all(tr.weight == 0 for _, tr in s.served)
    (t, rb), = s.of(RollBack)
    assert (t, rb.reason, rb.check) == (300, "ShadowInconclusive", "comparisons")
    assert "30 comparisons < minRequests 50" in rb.message
    failed = [a.notification for _, a in s.of(Notify) if a.notification.event == "ShadowFailed"]
    assert [n.reason for n in failed] == ["ShadowInconclusive"]
    assert s.state.shadow.outcome == "Inconclusive"


def test_unreachable_metrics_are_inconclusive_in_shadow_too():
    s = Story(spec(shadow={**SHADOW, "maxDuration": "3m"}), Rates(down=True))
    s.run(400)
    assert s.of(SetWeight) == []
    (t, rb), = s.of(RollBack)
    assert (t, rb.reason) == (180, "ShadowInconclusive") and "unreachable" in rb.message


def test_shadow_passes_once_enough_comparisons_arrived():
    s = Story(spec(shadow=SHADOW), Rates(comparisons=0.5))  # 30 a minute: 30 < 50, then 60
    s.run(150)
    holds = [a.reason for t, a in s.log if t == 60 and hasattr(a, "reason") and not isinstance(a, RollBack)]
    assert "ShadowInconclusive" in holds
    assert [(t, a.weight) for t, a in s.of(SetWeight)] == [(120, 10)]


def test_steps_fail_on_disagreement_after_the_shadow_passed():
    s = Story(spec(shadow=SHADOW))
    s.run(60)
    assert s.state.phase == Phase.PROGRESSING and s.state.weight == 10
    s.rates.agree = 0.8  # the candidate starts to disagree under real traffic
    s.run(400, start=75)
    assert [a.weight for _, a in s.of(SetWeight)] == [10]
    (t, rb), = s.of(RollBack)
    assert (t, rb.reason, rb.check) == (180, "AnalysisFailed", "agreement")
    assert s.world.mirror is None


def test_steps_leave_the_shadow_checks_out_when_too_few_and_at_100_percent():
    s = Story(spec(shadow=SHADOW))
    s.run(60)
    s.rates.comparisons = 0.1  # 6 per interval: not judged in a step
    s.rates.agree = 0.0
    s.run(300, start=75)
    assert [a.weight for _, a in s.of(SetWeight)] == [10, 50, 100] and s.state.phase == Phase.PROMOTED
    last = {c["name"]: c for c in s.state.analysis["checks"]}
    assert last["comparisons"]["outcome"] == "Skipped" and "100%" in last["comparisons"]["message"]
    assert last["agreement"]["outcome"] == "Skipped"


def test_paused_in_shadow_resumes_in_shadow():
    s = Story(spec(shadow=SHADOW))
    s.run(30)
    s.spec = spec(shadow=SHADOW, paused=True)
    s.run(90, start=45)
    assert s.state.phase == Phase.PAUSED and s.state.weight == 0 and s.world.mirror == MIRROR
    s.spec = spec(shadow=SHADOW)
    s.run(105, start=105)
    assert s.state.phase == Phase.SHADOW and s.state.next_analysis_at == at(165)
    s.run(180, start=120)
    assert [(t, a.weight) for t, a in s.of(SetWeight)] == [(165, 10)]


def test_a_restart_during_shadow_resumes_it_without_repeating_it():
    s = Story(spec(shadow=SHADOW))
    s.run(45)
    s.tick(60, faults={"crash-before-save"})  # dies while deciding the shadow's analysis
    s.tick(75, faults={"crash-after-save"})  # dies after persisting, before applying
    s.run(120, start=90)
    st = s.state
    assert st.shadow.started_at == at(0) and st.shadow.decided_at == at(75)  # not started again
    assert (st.phase, st.weight, st.last_step_at) == (Phase.PROGRESSING, 10, at(75))
    # ShadowStarted, ShadowPassed, Started: each issued once (the last two in the pass that died
    # after persisting them); the passes after it issued nothing.
    assert st.hook_seq == 3 and s.events() == ["ShadowStarted"]
    assert s.world.serving == Traffic("1", "2", 10) and s.world.mirror == MIRROR  # applied by the next pass


# --- the performance gate --------------------------------------------------------------------
GATE = {"maxP99Ms": 50}


@pytest.mark.parametrize("candidate,deciding", [
    ({**GOOD, "errors": 3}, "errors"),
    ({**GOOD, "p99_ms": 180.0}, "maxP99Ms"),
    ({**GOOD, "throughput_rps": 12.0}, "minThroughputRatio"),
    ({**GOOD, "requests": 0, "throughput_rps": 0.0, "p50_ms": None, "p99_ms": None}, "requests"),
])
def test_performance_gate_fails_and_rolls_back_with_weight_0_throughout(candidate, deciding):
    s = Story(spec(performanceGate=GATE, shadow=SHADOW), load_docs={"1": GOOD, "2": candidate})
    s.run(300)
    assert s.of(SetWeight) == [] and all(tr.weight == 0 for _, tr in s.served)
    assert s.world.answered.get("2", 0) == 0
    (t, rb), = s.of(RollBack)
    assert (t, rb.reason, rb.check) == (15, "PerformanceGateFailed", deciding)
    assert s.events() == ["PerformanceGateFailed", "RolledBack"]
    assert all(m is None for m in s.world.mirror_calls)  # never mirrored
    g = s.state.performance_gate
    assert (g.outcome, g.check, g.stable["throughputRps"], g.attempt) == ("Failed", deciding, 40.0, 1)
    tag = s.tag(".performanceGate")
    assert tag["outcome"] == "Failed" and tag["check"] == deciding and tag["stableP99Ms"] == 21.0


def test_gate_passes_then_shadow_then_steps():
    s = Story(spec(performanceGate=GATE, shadow=SHADOW), load_docs={"1": GOOD, "2": {**GOOD, "p99_ms": 24.0}})
    s.run(400)
    assert s.events() == ["PerformanceGatePassed", "ShadowStarted", "ShadowPassed", "Started", "StepAdvanced",
                          "StepAdvanced", "Promoted"]
    passed = {a.phase: t for t, a in s.of(PhaseResult)}
    assert passed == {"performanceGate": 15, "shadow": 75}  # the tests reported on the second pass
    assert [(t, a.weight) for t, a in s.of(SetWeight)] == [(75, 10), (135, 50), (195, 100)]
    assert list(s.world.load_tests) == ["v2-gate-1"]
    tag = s.tag(".performanceGate")
    assert (tag["p99Ms"], tag["stableP99Ms"], tag["throughputRatio"]) == (24.0, 21.0, 1.0)
    assert s.state.performance_gate.candidate == {"requests": 800.0, "errors": 0.0, "throughputRps": 40.0,
                                                  "p50Ms": 9.8, "p99Ms": 24.0}


@pytest.mark.parametrize("how", ["document", "platform"])
def test_an_unreadable_gate_result_is_retried_and_never_passes(how):
    docs = {"1": GOOD, "2": {**GOOD, "p99_ms": "fast"}} if how == "document" else {"1": GOOD, "2": GOOD}
    s = Story(spec(performanceGate=GATE), load_docs=docs)
    s.run(400, faults={"gate-unreadable"} if how == "platform" else set())
    assert s.of(SetWeight) == [] and all(tr.weight == 0 for _, tr in s.served)
    (t, rb), = s.of(RollBack)
    assert rb.reason == "PerformanceGateInconclusive" and "attempt 3/3" in rb.message
    assert s.state.performance_gate.outcome == "Inconclusive"
    if how == "document":
        assert list(s.world.load_tests) == ["v2-gate-1", "v2-gate-2", "v2-gate-3"]
        assert "p99_ms is 'fast'" in rb.message
    else:
        assert "termination message is not JSON" in rb.message


def test_a_gate_without_a_result_times_out_as_inconclusive():
    s = Story(spec(performanceGate={"duration": "10s"}))
    s.world.load_test_passes = 10 ** 6  # never reports
    s.run(300)
    holds = [a for t, a in s.log if t == 300 and getattr(a, "reason", "") == "PerformanceGateRunning"]
    assert holds  # still waiting 300 s in
    s.run(330, start=315)  # 2 x 10 s + 300 s after it was asked
    assert s.state.performance_gate.attempt == 2 and "no result 320 s after" in s.state.performance_gate.message


def test_a_restart_during_the_gate_resumes_it_without_repeating_it():
    s = Story(spec(performanceGate=GATE))
    s.world.load_test_passes = 4
    s.tick(0)
    s.tick(15, faults={"crash-before-save"})
    s.tick(30, faults={"crash-after-save"})
    s.run(90, start=45)  # reported at the 4th call (45 s), then passed
    assert list(s.world.load_tests) == ["v2-gate-1"]  # one test, asked again, never started anew
    assert s.world.load_tests["v2-gate-1"] == 4
    s.run(400, start=105)
    assert s.world.load_tests["v2-gate-1"] == 4  # once decided, never run again
    assert s.events().count("PerformanceGatePassed") == 1
    assert [(t, a.weight) for t, a in s.of(SetWeight)] == [(45, 10), (105, 50), (165, 100)]


def test_judge_is_pure_and_names_what_it_read():
    from modelops.deployment.spec import PerformanceGateSpec

    g = PerformanceGateSpec(max_p99_ms=30.0, min_throughput_ratio=0.8)
    outcome, checks, found = judge(g, GOOD, GOOD)
    assert outcome.value == "Passed" and [c.name for c in checks] == ["requests", "errors", "maxP99Ms",
                                                                       "minThroughputRatio"]
    assert judge(g, {**GOOD, "throughput_rps": 0.0}, GOOD)[0].value == "Inconclusive"  # no baseline
    assert judge(g, GOOD, "not json")[0].value == "Inconclusive"
    assert judge(g, GOOD, {**GOOD, "errors": float("nan")})[0].value == "Inconclusive"


# --- unchanged without shadow or gate ---------------------------------------------------------
class ThreeMethodPlatform:
    """A platform as it was before issue 16: no set_shadow, no performance_gate."""

    def __init__(self, world):
        self._p = FakePlatform(world)
        self.canary_ready, self.interface, self.apply = self._p.canary_ready, self._p.interface, self._p.apply


def test_a_spec_without_shadow_or_gate_behaves_as_before():
    s = Story(spec())
    w = s.world
    for t in range(0, 300, PASS):
        w.traffic_pass()
        result = tick(s.state, s.spec, Facts(target="2", generation=1), platform=ThreeMethodPlatform(w),
                      store=FakeStore(w), provider=s.rates, scope=AnalysisScope("m", "ns"), now=at(t),
                      history=History(w), policy=s.policy)
        assert result.shadow_error is None and result.apply_error is None
        s.log += [(t, a) for a in result.actions]
    assert s.events() == ["Started", "StepAdvanced", "StepAdvanced", "Promoted"]
    assert [(t, a.weight) for t, a in s.of(SetWeight)] == [(0, 10), (60, 50), (120, 100)]
    assert not s.of(LoadTest) and not s.of(PhaseResult) and w.mirror_calls == [] and w.load_tests == {}
    assert "shadow" not in w.status and "performanceGate" not in w.status
    assert [c["name"] for c in w.status["analysis"]["checks"]] == ["requests", "successRate", "clientErrorsVsStable"]
    assert not any(k.endswith((".shadow", ".performanceGate")) for k in w.tags[("m", "2")])


# --- the spec ----------------------------------------------------------------------------------
def test_spec_defaults_and_absent_means_off():
    plain = spec()
    assert plain.rollout.shadow is None and plain.rollout.performance_gate is None
    on = spec(shadow={}, performanceGate={})
    sh, g = on.rollout.shadow, on.rollout.performance_gate
    assert (sh.percent, sh.min_requests, sh.max_duration_seconds, sh.agreement_min, sh.max_abs_diff_quantile,
            sh.max_abs_diff_max, sh.cosine_min) == (10, 50, 600.0, 0.99, 0.99, None, None)
    assert (g.concurrency, g.duration_seconds, g.max_p99_ms, g.min_throughput_ratio) == (4, 20.0, None, 0.8)
    assert spec(shadow={"checks": {"cosine": {}}}).rollout.shadow.cosine_min == 0.99
    replace = parse_spec({"model": {"name": "m", "version": "1"}, "rollout": {"shadow": {}}})
    assert RolloutPolicy.from_spec(replace).shadow is None  # strategy replace has no canary to shadow


@pytest.mark.parametrize("rollout,field", [
    ({"shadow": {"percent": 0}}, "spec.rollout.shadow.percent"),
    ({"shadow": {"percent": 101}}, "spec.rollout.shadow.percent"),
    ({"shadow": {"minRequests": 0}}, "spec.rollout.shadow.minRequests"),
    ({"shadow": {"maxDuration": "ten minutes"}}, "spec.rollout.shadow.maxDuration"),
    ({"shadow": {"checks": {"agreement": {"min": 1.5}}}}, "spec.rollout.shadow.checks.agreement.min"),
    ({"shadow": {"checks": {"maxAbsDiff": {"max": -1}}}}, "spec.rollout.shadow.checks.maxAbsDiff.max"),
    ({"shadow": {"checks": {"maxAbsDiff": {"quantile": 0.1}}}}, "spec.rollout.shadow.checks.maxAbsDiff.quantile"),
    ({"shadow": {"checks": {"cosine": {"min": "high"}}}}, "spec.rollout.shadow.checks.cosine.min"),
    ({"shadow": "on"}, "spec.rollout.shadow"),
    ({"performanceGate": {"concurrency": 0}}, "spec.rollout.performanceGate.concurrency"),
    ({"performanceGate": {"duration": "20"}}, "spec.rollout.performanceGate.duration"),
    ({"performanceGate": {"maxP99Ms": -5}}, "spec.rollout.performanceGate.maxP99Ms"),
    ({"performanceGate": {"minThroughputRatio": 1.2}}, "spec.rollout.performanceGate.minThroughputRatio"),
])
def test_schema_validation_errors_name_the_field(rollout, field):
    with pytest.raises(InvalidSpec) as err:
        spec(**rollout)
    assert err.value.field == field and str(err.value).startswith(field + ": ")


def test_state_records_round_trip():
    s = Story(spec(performanceGate=GATE, shadow=SHADOW))
    s.run(90)
    state = s.state
    assert state.performance_gate is not None and state.shadow is not None
    assert RolloutState.from_status(state.to_status()) == state


# --- the queries -------------------------------------------------------------------------------
def test_promql_of_the_shadow_queries():
    sel = (("candidate", "2"), ("model", "m"), ("version", "1"))
    assert to_promql(ComparisonCount(sel, 60)) == \
        'sum(increase(modelops_shadow_comparisons_total{candidate="2",model="m",version="1"}[60s]))'
    assert to_promql(ComparisonCount(sel, 60, "agree")) == (
        'sum(increase(modelops_shadow_comparisons_total{candidate="2",model="m",version="1",outcome="agree"}[60s]))'
        ' or vector(0)')
    assert to_promql(ShadowQuantile(sel, 120, "abs_diff", 0.99)) == (
        'histogram_quantile(0.99, sum by (le) '
        '(rate(modelops_shadow_abs_diff_bucket{candidate="2",model="m",version="1"}[120s])))')


def test_mirrored_requests_judged_from_the_predictors_metrics():
    """The real ScrapeProvider over the simulated predictors' /metrics: a good v2 passes its
    shadow phase and is promoted; a silently wrong v3 is rolled back in shadow, and no client
    request is ever answered by it."""
    s = Story(spec(shadow={"minRequests": 20, "percent": 50}))
    s.world.wrong = {"3"}
    clock = [0.0]
    provider = ScrapeProvider([], client=httpx.Client(transport=s.world.transport()), max_age=0,
                              clock=lambda: clock[0])
    for t in range(0, 900, PASS):
        if s.state.stable_version == "2":
            s.target = "3"
        clock[0] = float(t)
        provider.set_targets(FakePlatform(s.world).metrics_urls())
        provider.scrape()
        s.tick(t, provider=provider)
        if s.state.rolled_back is not None:
            break
    assert s.state.stable_version == "2" and s.state.rolled_back.version == "3"
    assert s.state.rolled_back.reason == "ShadowFailed" and s.state.rolled_back.check == "agreement"
    assert s.world.answered.get("3", 0) == 0 and s.world.answered["2"] > 0
    found = s.state.shadow.values
    assert found["agreement"] == 0.0 and found["comparisons"] >= 20
    assert found["worstAbsDiff"] == 1.0  # the bucket bound of the fake's differences
    assert s.world.mirror is None and s.world.serving == Traffic("2")


# --- the operator's platform, until it implements it (local mode does: test_core_local_shadow.py) ---
def _real_platforms():
    from modelops_operator.kserve_platform import KServePlatform, Versions

    kserve = KServePlatform(Versions(None, None, None), read_service=lambda: None,
                            write_service=lambda *a: (None, False), interface_of=lambda served: None)
    return {"kserve": kserve}


@pytest.mark.parametrize("which", ["kserve"])
def test_real_platforms_say_not_available_only_when_configured(which):
    from modelops.errors import NotAvailableYet

    real = _real_platforms()[which]
    real.set_shadow(None)  # stopping a mirror that was never set: nothing to do, no error
    with pytest.raises(NotAvailableYet, match="spec.rollout.shadow"):
        real.set_shadow(MIRROR)
    with pytest.raises(NotAvailableYet, match="spec.rollout.performanceGate"):
        real.performance_gate(LoadTest("2", "1", 1, 4, 20.0))

    class Partly(FakePlatform):  # the fake's traffic, the real platform's shadow and gate
        set_shadow = staticmethod(real.set_shadow)
        performance_gate = staticmethod(real.performance_gate)

    s = Story(spec(performanceGate=GATE, shadow=SHADOW))
    for t in range(0, 400, PASS):
        s.world.traffic_pass()
        result = tick(s.state, s.spec, Facts(target="2", generation=1), platform=Partly(s.world),
                      store=FakeStore(s.world), provider=s.rates, scope=AnalysisScope("m", "ns"), now=at(t),
                      history=History(s.world), policy=s.policy)
        s.log += [(t, a) for a in result.actions]
    (t, rb), = s.of(RollBack)  # never promoted blind: inconclusive until rolled back, at 0%
    assert rb.reason == "PerformanceGateInconclusive" and "NotAvailableYet" in rb.message
    assert s.of(SetWeight) == [] and s.world.serving == Traffic("1")
    getattr(real, "close", lambda: None)()


def test_every_notification_has_its_kubernetes_event():
    from modelops.deployment import schema
    from modelops.deployment.plan import NOTIFY_EVENTS

    assert set(NOTIFY_EVENTS) == set(schema.HOOK_EVENTS)
    assert {k: v[0] for k, v in NOTIFY_EVENTS.items() if k.startswith(("Shadow", "Performance"))} == {
        "ShadowStarted": "Normal", "ShadowPassed": "Normal", "ShadowFailed": "Warning",
        "PerformanceGatePassed": "Normal", "PerformanceGateFailed": "Warning"}
