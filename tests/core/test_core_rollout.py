"""The rollout engine over scripted metric series (the issue's acceptance scenarios).

The engine (`modelops.rollout.step`) and the analysis (`modelops.rollout.analyse`) are the real
ones; only the metric source is scripted: a MetricProvider that answers each interval's queries
from a table, as Prometheus would (numbers, no data, NaN, errors). The state goes through
`to_status()` / `from_status()` at every tick, as it does through the ModelDeployment status.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from modelops.deployment.spec import AnalysisSpec, CheckSpec, parse_spec
from modelops.rollout import (Analyse, CallGate, GateResult, Hold, Inconclusive, Notify, Observations,
                              Phase, Promote, RollBack, RolloutPolicy, RolloutState, SetWeight,
                              WebhookSubscription, acknowledge, analyse, pending, step)
from modelops.rollout.analysis import (ClientErrorRate, LatencyQuantile, PromQL, RequestCount, SuccessRate,
                                      Target)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
INTERVAL = 60
STEPS = (10, 50, 100)


def at(intervals: float) -> datetime:
    return T0 + timedelta(seconds=INTERVAL * intervals)


class Series:
    """Answers queries from a script: one row per analysis, keyed by what is asked.

    A row maps "requests" / "success" / "client" (4xx share) / "p99" (seconds) to a number, NaN or
    Inconclusive, per version ("canary" / "stable"); "client" is 0 unless scripted. Rows past the
    end repeat the last one.
    """

    def __init__(self, rows: list[dict], canary: str):
        self.rows = rows
        self.canary = canary
        self.calls = 0
        self.row = rows[0]

    def advance(self) -> None:
        self.row = self.rows[min(self.calls, len(self.rows) - 1)]
        self.calls += 1

    def query(self, q):
        if isinstance(q, PromQL):
            return self.row.get("promql", Inconclusive("no PromQL value scripted"))
        who = "canary" if dict(q.selector)["version"] == self.canary else "stable"
        kind = {RequestCount: "requests", SuccessRate: "success", ClientErrorRate: "client",
                LatencyQuantile: "p99"}[type(q)]
        value = self.row.get(f"{who}.{kind}", self.row.get(kind, 0.0 if kind == "client" else None))
        return value if value is not None else Inconclusive("no data")


HEALTHY = {"requests": 500.0, "success": 1.0, "p99": 0.004}


class Rollout:
    """Ticks the engine like a reconciler: persist -> reload at every call, answer its asks."""

    def __init__(self, policy: RolloutPolicy, spec: AnalysisSpec = AnalysisSpec(), *, stable: str = "1",
                 rows: list[dict] | None = None, canary: str = "2"):
        self.policy = policy
        self.spec = spec
        self.status = RolloutState(phase=Phase.STABLE, stable_version=stable).to_status()
        self.series = Series(rows or [HEALTHY], canary)
        self.log: list[tuple[datetime, object]] = []
        self.gate_answers: dict[str, bool] = {}
        self.gates_asked: list[tuple[datetime, str, str]] = []

    @property
    def state(self) -> RolloutState:
        return RolloutState.from_status(self.status)

    def tick(self, when: datetime, **obs) -> tuple:
        obs.setdefault("target", "2")
        observations = Observations(**obs)
        all_actions = []
        for _ in range(4):
            state = RolloutState.from_status(self.status)
            new, actions = step(state, observations, self.policy, when)
            # Restart safety: the same persisted state and inputs give the same answer.
            assert step(RolloutState.from_status(self.status), observations, self.policy, when) == (new, actions)
            status = new.to_status()
            assert RolloutState.from_status(status) == new  # the status round-trips exactly
            self.status = status
            all_actions += [a for a in actions if not isinstance(a, (Analyse, CallGate))]
            asks = [a for a in actions if isinstance(a, (Analyse, CallGate))]
            if not asks:
                break
            for a in asks:
                if isinstance(a, Analyse):
                    self.series.advance()
                    target = Target(model="m", version=a.version, stable_version=a.stable_version,
                                    window=a.window_seconds, weight=a.weight)
                    observations = replace(observations, analysis=analyse(self.spec, self.series, target, when))
                else:
                    self.gates_asked.append((when, a.type, a.version))
                    if a.type in self.gate_answers:
                        observations = replace(observations, gates=(
                            GateResult(a.type, a.version, self.gate_answers[a.type],
                                       "ok" if self.gate_answers[a.type] else "HTTP 409 from qa"),))
                    else:
                        all_actions.append(a)
        for a in all_actions:
            self.log.append((when, a))
        return tuple(all_actions)

    def run(self, until: float, every: float = 0.25, **obs) -> None:
        t = 0.0
        while t <= until + 1e-9:
            self.tick(at(t), **obs)
            t += every

    def of(self, kind) -> list[tuple[datetime, object]]:
        return [(t, a) for t, a in self.log if isinstance(a, kind)]

    def events(self) -> list[str]:
        return [a.notification.event for _, a in self.of(Notify)]


def policy(**kw) -> RolloutPolicy:
    kw.setdefault("steps", STEPS)
    kw.setdefault("interval_seconds", INTERVAL)
    kw.setdefault("webhooks", (WebhookSubscription("audit"),))
    return RolloutPolicy(**kw)


def assert_notifications_once_in_order(r: Rollout) -> None:
    seqs = [a.notification.seq for _, a in r.of(Notify)]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


# --- first deployment, replace ----------------------------------------------------------------
def test_first_deployment_goes_straight_to_100_percent():
    new, actions = step(None, Observations(target="1"), policy(), T0)
    assert actions == (Promote("1", None, "FirstDeployment"),)
    assert new.phase == Phase.STABLE and new.traffic.stable == "1" and new.traffic.canary is None
    again, more = step(RolloutState.from_status(new.to_status()), Observations(target="1"), policy(), at(1))
    assert more == () and again == new


def test_replace_strategy_swaps_at_once_without_a_canary():
    r = Rollout(policy(strategy="replace"))
    actions = r.tick(T0)
    assert actions == (Promote("2", "1", "Replace"),)
    assert r.state.traffic.stable == "2" and r.state.traffic.canary is None
    r.run(5)
    assert len(r.of(Promote)) == 1 and r.of(Notify) == [] and r.of(SetWeight) == []


def test_policy_from_spec():
    spec = parse_spec({"model": {"name": "m", "alias": "champion"},
                       "rollout": {"strategy": "canary", "steps": [5, 100], "interval": "2m",
                                   "analysis": {"failureLimit": 4, "inconclusiveLimit": 5}},
                       "hooks": {"webhooks": [{"name": "s", "url": "http://x", "events": ["Promoted"]}],
                                 "gates": [{"name": "g", "url": "http://y", "type": "preRollout"}]}})
    p = RolloutPolicy.from_spec(spec)
    assert (p.strategy, p.steps, p.interval_seconds, p.failure_limit, p.inconclusive_limit) == \
        ("canary", (5, 100), 120.0, 4, 5)
    assert p.webhooks == (WebhookSubscription("s", frozenset({"Promoted"})),)
    assert p.gates == frozenset({"preRollout"})
    obs = Observations.from_resource(spec, {"modelops.dev/promote": "3"}, target="3", generation=2)
    assert (obs.promote, obs.abort, obs.paused, obs.generation) == ("3", None, False, 2)


# --- healthy -> promoted after exactly len(steps) intervals -----------------------------------
@pytest.mark.parametrize("steps", [(10, 50, 100), (100,), (1, 2, 5, 25, 50, 100)])
def test_healthy_canary_is_promoted_after_exactly_len_steps_intervals(steps):
    r = Rollout(policy(steps=steps), rows=[HEALTHY])
    r.run(len(steps) + 3)
    promotions = r.of(Promote)
    assert len(promotions) == 1
    when, promote = promotions[0]
    assert promote == Promote("2", "1", "Analysis")
    assert when == at(len(steps))  # exactly len(steps) intervals after the canary started
    weights = [(t, a.weight) for t, a in r.of(SetWeight)]
    assert weights == [(at(i), w) for i, w in enumerate(steps)]
    assert r.events() == ["Started"] + ["StepAdvanced"] * (len(steps) - 1) + ["Promoted"]
    assert_notifications_once_in_order(r)
    final = r.state
    assert final.phase == Phase.PROMOTED and final.traffic.stable == "2" and final.traffic.canary is None
    assert final.analysis["outcome"] == "Passed"
    # The status says so, in the field names.
    assert {"version", "weight", "step", "failedChecks", "inconclusiveChecks"} <= \
        set(RolloutState(phase=Phase.PROGRESSING, version="2", weight=10, started_at=T0,
                         last_step_at=T0).to_status())


def test_status_fields_during_a_canary():
    r = Rollout(policy(), rows=[HEALTHY])
    r.tick(at(0))
    r.tick(at(1))
    s = r.status
    assert s["phase"] == "Progressing" and s["version"] == "2" and s["stableVersion"] == "1"
    assert (s["weight"], s["step"], s["failedChecks"], s["inconclusiveChecks"]) == (50, 1, 0, 0)
    assert s["startedAt"] == "2025-01-01T12:00:00Z" and s["lastStepAt"] == "2025-01-01T12:01:00Z"
    assert s["nextAnalysisAt"] == "2025-01-01T12:02:00Z"
    assert s["analysis"]["outcome"] == "Passed" and s["reason"] == "StepAdvanced"
    assert [c["name"] for c in s["analysis"]["checks"]] == ["requests", "successRate", "clientErrorsVsStable"]
    assert r.state.traffic.canary == "2" and r.state.traffic.weight == 50


# --- failing -> rolled back within failureLimit intervals -------------------------------------
FAILING = [
    ("errors", AnalysisSpec(), {**HEALTHY, "canary.success": 0.80}, "successRate"),
    ("slow-absolute", AnalysisSpec(p99_latency_ms_max=50), {**HEALTHY, "canary.p99": 0.4}, "p99LatencyMs"),
    ("slow-vs-stable", AnalysisSpec(p99_latency_max_ratio=1.2), {**HEALTHY, "canary.p99": 0.010,
                                                                 "stable.p99": 0.004}, "p99LatencyVsStable"),
    ("errors-vs-stable", AnalysisSpec(success_rate_min=0.5, success_rate_max_drop=0.01),
     {**HEALTHY, "canary.success": 0.95, "stable.success": 0.999}, "successRateVsStable"),
    ("user-check", AnalysisSpec(checks=(CheckSpec("gpu-util", "avg(gpu{version='$version'})", max=0.9),)),
     {**HEALTHY, "promql": 0.97}, "gpu-util"),
]


@pytest.mark.parametrize("limit", [1, 2, 3])
@pytest.mark.parametrize("case,spec,row,check", FAILING, ids=[f[0] for f in FAILING])
def test_failing_canary_is_rolled_back_within_failure_limit(case, spec, row, check, limit):
    r = Rollout(policy(failure_limit=limit), spec, rows=[row])
    r.run(limit + 4)
    assert r.of(Promote) == []
    (when, rollback), = r.of(RollBack)
    assert when == at(limit) and rollback.reason == "AnalysisFailed" and rollback.check == check
    assert r.events() == ["Started", "Failed", "RolledBack"]
    assert_notifications_once_in_order(r)
    final = r.state
    assert final.phase == Phase.ROLLED_BACK and final.traffic.stable == "1" and final.traffic.canary is None
    assert final.failed_checks == limit and final.rolled_back.version == "2"
    assert final.rolled_back.check == check
    # The weight never moved past the first step.
    assert [a.weight for _, a in r.of(SetWeight)] == [10]


def test_a_failure_then_passes_still_promotes_when_under_the_limit():
    r = Rollout(policy(failure_limit=2), rows=[{**HEALTHY, "canary.success": 0.5}, HEALTHY])
    r.run(6)
    (when, _), = r.of(Promote)
    assert when == at(4)  # one failed interval held the first step once
    assert r.state.failed_checks == 1 or r.state.phase == Phase.PROMOTED


# --- inconclusive: never promoted, rolled back after inconclusiveLimit ------------------------
INCONCLUSIVE = [
    ("prometheus-down", {"requests": Inconclusive("Prometheus http://127.0.0.1:1 unreachable: connection refused"),
                         "success": Inconclusive("unreachable"), "p99": Inconclusive("unreachable")}),
    ("empty", {"requests": None, "success": None, "p99": None}),
    ("nan", {"requests": 40.0, "success": math.nan, "p99": math.nan}),
    ("too-few-requests", {"requests": 3.0, "success": 1.0, "p99": 0.004}),
    ("too-few-requests-all-failing", {"requests": 3.0, "success": 0.0, "p99": math.nan}),
]


@pytest.mark.parametrize("limit", [1, 3])
@pytest.mark.parametrize("case,row", INCONCLUSIVE, ids=[c[0] for c in INCONCLUSIVE])
def test_inconclusive_never_promotes_and_rolls_back_after_the_limit(case, row, limit):
    r = Rollout(policy(inconclusive_limit=limit, failure_limit=1), rows=[row])
    r.run(limit + 4)
    assert r.of(Promote) == [] and [a.weight for _, a in r.of(SetWeight)] == [10]
    (when, rollback), = r.of(RollBack)
    assert when == at(limit) and rollback.reason == "Inconclusive"
    assert r.state.inconclusive_checks == limit and r.state.failed_checks == 0
    assert r.events() == ["Started", "Failed", "RolledBack"]
    holds = [a for _, a in r.of(Hold) if a.reason == "Inconclusive"]
    assert len(holds) == limit - 1


def test_inconclusive_count_resets_on_a_pass():
    rows = [{"requests": 2.0}, {"requests": 2.0}, HEALTHY, {"requests": 2.0}, {"requests": 2.0}, HEALTHY, HEALTHY]
    r = Rollout(policy(inconclusive_limit=3), rows=rows)
    r.run(9)
    (when, _), = r.of(Promote)
    assert when == at(7) and r.of(RollBack) == []


# --- a newer version mid-canary restarts the analysis -----------------------------------------
def test_newer_version_mid_canary_restarts_analysis_and_never_promotes_the_old_one():
    r = Rollout(policy(), rows=[HEALTHY])
    r.run(1.5)  # v2 at 50%
    assert r.state.weight == 50 and r.state.version == "2"
    r.series.canary = "3"
    t = 1.75
    while t <= 7:
        r.tick(at(t), target="3")
        t += 0.25
    assert [(a.version, a.weight) for _, a in r.of(SetWeight)] == [("2", 10), ("2", 50), ("3", 10), ("3", 50), ("3", 100)]
    (when, promote), = r.of(Promote)
    assert promote.version == "3" and promote.previous == "1" and when == at(1.75 + 3)
    started = [a.notification for _, a in r.of(Notify) if a.notification.event == "Started"]
    assert [(n.version, n.reason) for n in started] == [("2", "Started"), ("3", "Restarted")]
    assert_notifications_once_in_order(r)


def test_canary_holds_while_a_newer_version_is_being_prepared():
    r = Rollout(policy(), rows=[HEALTHY])
    r.run(0.5)
    for t in (1, 2, 3, 4):
        actions = r.tick(at(t), preparing="3")
        assert any(isinstance(a, Hold) and a.reason == "WaitingForNewerVersion" for a in actions)
    assert r.of(Promote) == [] and r.state.weight == 10


def test_target_back_to_stable_removes_the_canary():
    r = Rollout(policy(), rows=[HEALTHY])
    r.run(1)
    actions = r.tick(at(1.5), target="1")
    assert RollBack("2", "1", "TargetIsStable", actions[0].message) in actions
    assert r.state.traffic.canary is None and r.state.traffic.stable == "1"


# --- paused holds ------------------------------------------------------------------------------
def test_paused_holds_the_weight_and_resuming_restarts_the_interval():
    r = Rollout(policy(), rows=[HEALTHY])
    r.run(1.5)  # at 50%
    for t in (2, 3, 4, 5):
        actions = r.tick(at(t), paused=True)
        assert any(isinstance(a, Hold) and a.reason == "Paused" for a in actions)
        assert r.state.phase == Phase.PAUSED and r.state.weight == 50
    assert [a.weight for _, a in r.of(SetWeight)] == [10, 50]
    r.tick(at(5.5))  # resumed: a fresh interval
    assert r.state.phase == Phase.PROGRESSING and r.state.next_analysis_at == at(6.5)
    t = 5.75
    while t <= 9:
        r.tick(at(t))
        t += 0.25
    assert [(t, a.weight) for t, a in r.of(SetWeight)] == [(at(0), 10), (at(1), 50), (at(6.5), 100)]
    (when, _), = r.of(Promote)
    assert when == at(7.5)


def test_an_unready_canary_holds_and_its_interval_starts_once_it_serves():
    r = Rollout(policy(), rows=[HEALTHY])
    r.tick(T0)  # canary at 10%
    for t in (0.5, 1, 1.5, 2):  # the platform says the canary predictor does not serve yet
        actions = r.tick(at(t), canary_ready=False)
        assert any(isinstance(a, Hold) and a.reason == "CanaryNotReady" for a in actions)
        assert r.state.weight == 10 and r.state.last_analysis_at is None
    assert r.state.next_analysis_at == at(3)  # one interval after the last unready pass
    t = 2.25
    while t <= 5:
        r.tick(at(t), canary_ready=True)
        t += 0.25
    assert [(when, a.weight) for when, a in r.of(SetWeight)] == [(T0, 10), (at(3), 50), (at(4), 100)]
    (when, _), = r.of(Promote)
    assert when == at(5)


def test_paused_new_version_waits_before_any_traffic():
    r = Rollout(policy())
    actions = r.tick(T0, paused=True)
    assert [type(a) for a in actions] == [Hold] and r.state.traffic.canary is None
    r.tick(at(1))
    assert r.state.traffic.canary == "2"


# --- manual promote / abort -------------------------------------------------------------------
def test_manual_promote_names_the_canary_version():
    r = Rollout(policy(), rows=[{**HEALTHY, "canary.success": 0.5}])
    r.run(0.5)
    r.tick(at(0.75), promote="7")  # a leftover annotation for another version does nothing
    assert r.of(Promote) == []
    r.tick(at(0.8), promote="2")
    (when, promote), = r.of(Promote)
    assert promote == Promote("2", "1", "Manual") and r.state.traffic.stable == "2"
    r.run(3, promote="2")  # the annotation still there: nothing more happens
    assert len(r.of(Promote)) == 1
    assert r.events() == ["Started", "Promoted"]


def test_manual_abort_rolls_back_and_is_not_retried_for_the_same_generation():
    r = Rollout(policy(), rows=[HEALTHY])
    r.run(1.5, generation=1)
    r.tick(at(1.55), abort="7", generation=1)  # names another version: a leftover, ignored
    assert r.of(RollBack) == []
    r.tick(at(1.6), abort="2", generation=1)
    (_, rb), = r.of(RollBack)
    assert rb.reason == "Aborted" and r.state.phase == Phase.ROLLED_BACK
    r.run(4, generation=1)  # the alias still resolves to v2: not canaried again
    assert len(r.of(SetWeight)) == 2 and r.of(Promote) == []
    r.tick(at(5), generation=2)  # a spec edit retries it
    assert r.state.phase == Phase.PROGRESSING and r.state.version == "2" and r.state.weight == 10
    assert r.events() == ["Started", "StepAdvanced", "RolledBack", "Started"]


# --- gates -------------------------------------------------------------------------------------
def test_pre_rollout_gate_refusing_holds_at_zero_and_is_asked_again_each_interval():
    r = Rollout(policy(gates=frozenset({"preRollout"})), rows=[HEALTHY])
    r.gate_answers["preRollout"] = False
    r.run(3)
    assert r.of(SetWeight) == [] and r.state.phase == Phase.WAITING_FOR_GATE
    assert r.state.traffic.canary == "2" and r.state.traffic.weight == 0
    assert [t for t, *_ in r.gates_asked] == [at(0), at(1), at(2), at(3)]
    assert r.state.gate.open is False and "409" in r.state.message
    r.gate_answers["preRollout"] = True
    r.tick(at(4))
    assert [(t, a.weight) for t, a in r.of(SetWeight)] == [(at(4), 10)]
    assert r.events() == ["Started"]


def test_confirm_promotion_gate_refusing_holds_at_the_last_step():
    r = Rollout(policy(gates=frozenset({"confirmPromotion"})), rows=[HEALTHY])
    r.gate_answers["confirmPromotion"] = False
    r.run(6)
    assert r.of(Promote) == [] and r.state.phase == Phase.AWAITING_PROMOTION and r.state.weight == 100
    assert [t for t, kind, _ in r.gates_asked] == [at(3), at(4), at(5), at(6)]
    r.gate_answers["confirmPromotion"] = True
    r.tick(at(6.5))
    assert r.of(Promote) == []  # asked again only after an interval
    r.tick(at(7))
    (when, promote), = r.of(Promote)
    assert when == at(7) and promote.reason == "Analysis"


def test_gate_answer_for_another_version_does_not_open_it():
    pol = policy(gates=frozenset({"preRollout"}))
    state = RolloutState(phase=Phase.STABLE, stable_version="1")
    state, actions = step(state, Observations(target="2"), pol, T0)
    assert CallGate("preRollout", "2", "1", 0) in actions
    state, actions = step(state, Observations(target="2", gates=(GateResult("preRollout", "9", True),)), pol, at(0.1))
    assert not any(isinstance(a, SetWeight) for a in actions)
    state, actions = step(state, Observations(target="2", gates=(GateResult("preRollout", "2", True),)), pol, at(0.2))
    assert SetWeight("2", 10, 0, "1") in actions


# --- restart safety ---------------------------------------------------------------------------
def test_restart_at_every_tick_never_repeats_a_promotion_or_a_notification():
    """A reconciler that crashed after acting but before persisting repeats the same step with the
    same numbers (the receiver dedupes on them); once persisted, nothing is produced twice."""
    pol = policy()
    obs = Observations(target="2")
    spec = AnalysisSpec()
    series = Series([HEALTHY], "2")
    status = RolloutState(phase=Phase.STABLE, stable_version="1").to_status()
    seen_seqs: list[int] = []
    promotions = 0
    t = 0.0
    while t <= 6:
        when = at(t)
        o = obs
        for _ in range(3):
            state = RolloutState.from_status(status)
            first = step(state, o, pol, when)
            crashed_and_retried = step(RolloutState.from_status(status), o, pol, when)
            assert first == crashed_and_retried
            status = first[0].to_status()  # persisted
            asks = [a for a in first[1] if isinstance(a, Analyse)]
            promotions += sum(isinstance(a, Promote) for a in first[1])
            seen_seqs += [a.notification.seq for a in first[1] if isinstance(a, Notify)]
            if not asks:
                break
            series.advance()
            a = asks[0]
            o = replace(o, analysis=analyse(spec, series, Target("m", a.version, a.stable_version,
                                                                a.window_seconds, a.weight), when))
        # The persisted state with the same inputs again: no new transition.
        again_state, again = step(RolloutState.from_status(status), o, pol, when)
        assert not any(isinstance(a, (Promote, Notify, SetWeight, RollBack)) for a in again)
        t += 0.5
    assert promotions == 1
    assert seen_seqs == [1, 2, 3, 4]


def test_webhook_outbox_until_acknowledged_in_order():
    pol = policy(webhooks=(WebhookSubscription("all"), WebhookSubscription("ends", frozenset({"Promoted", "RolledBack"}))))
    r = Rollout(pol, rows=[HEALTHY])
    r.run(3)
    state = r.state
    todo = pending(state, pol)
    assert [(h, n.event) for h, n in todo] == [("all", "Started"), ("all", "StepAdvanced"),
                                              ("all", "StepAdvanced"), ("all", "Promoted"),
                                              ("ends", "Promoted")]
    state = acknowledge(state, "all", 2, pol)
    assert [n.seq for n in state.outbox] == [3, 4]
    state = acknowledge(state, "all", 1, pol)  # late, out-of-order ack: no regression
    assert state.delivered["all"] == 2
    state = acknowledge(RolloutState.from_status(state.to_status()), "all", 4, pol)
    assert [n.seq for n in state.outbox] == [4]  # "ends" still owes it
    state = acknowledge(state, "ends", 4, pol)
    assert state.outbox == () and pending(state, pol) == []
    assert state.to_status()["delivered"] == {"all": 4, "ends": 4}


def test_no_webhooks_keep_no_outbox_but_still_notify():
    r = Rollout(policy(webhooks=()), rows=[HEALTHY])
    r.run(3)
    assert r.events() == ["Started", "StepAdvanced", "StepAdvanced", "Promoted"]
    assert r.state.outbox == () and "outbox" not in r.status


def test_state_round_trips_every_field():
    from modelops.rollout.state import GateWait, Notification, RolledBack

    n = Notification(3, "Failed", "2", "1", 10, at(1.000001), "AnalysisFailed", "boom", "successRate")
    full = RolloutState(phase=Phase.AWAITING_PROMOTION, stable_version="1", version="2", weight=100, step=2,
                        failed_checks=1, inconclusive_checks=2, started_at=at(0), last_step_at=at(2),
                        last_analysis_at=at(3), next_analysis_at=at(4), reason="GateClosed", message="m",
                        analysis={"outcome": "Passed"}, gate=GateWait("confirmPromotion", "2", at(3), False, "no"),
                        rolled_back=RolledBack("9", 4, at(0.5), "Aborted", None), hook_seq=3,
                        delivered={"a": 2}, outbox=(n,))
    assert RolloutState.from_status(full.to_status()) == full
    assert RolloutState.from_status(None) == RolloutState() == RolloutState.from_status({})
