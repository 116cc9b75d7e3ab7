"""The rollout engine: one pure function, `step(state, observations, policy, now)`.

It returns the new `RolloutState` (persist it in `status.canary`) and the actions that lead
there. No I/O happens here: when the engine needs a measurement or a gate's answer it returns
`Analyse` / `CallGate`, the caller does the I/O and calls `step` again with the result in the
observations (`drive()` does that loop with two callables). Its inputs and actions are values of
`modelops.rollout.actions`. The traffic to apply is always
`state.traffic` (idempotent: apply it on every reconcile); `SetWeight`, `Promote` and `RollBack`
describe the transitions (for Events, metrics and MLflow history).

Rules:
- The first deployment goes straight to 100% (`Promote`, reason FirstDeployment); so does every
  new version with `strategy: replace` (reason Replace).
- A new target version while another serves starts a canary at `steps[0]` (after the preRollout
  gates open). A newer target during a canary restarts the analysis for it: an unanalysed
  version is never promoted. While a newer version is still being prepared (converted), the
  current canary holds.
- Every `interval` the canary is analysed. Passed: next step; passing at the last step promotes
  (after the confirmPromotion gates open), so a healthy canary is promoted after exactly
  len(steps) intervals. Failed: `failedChecks` + 1, rolled back at `failureLimit`. Inconclusive:
  held, `inconclusiveChecks` + 1 (reset by a pass), rolled back at `inconclusiveLimit`.
- `paused` holds the weight (no analysis); resuming restarts the current interval.
- A canary whose predictor is reported not ready (`canary_ready=False`) holds too: the step's
  interval starts once it serves (unknown readiness does not hold).
- Manual promote / abort name the canary's version (annotations `modelops.dev/promote: "3"`,
  `modelops.dev/abort: "3"`), so a leftover annotation never acts on a later canary.
- A rolled-back version is not canaried again until the resolved version or the generation changes.
- Before a canary starts, its served interface is compared with the stable version's
  (`Observations.interface`, `modelops.rollout.interface`): an incompatible change (an input
  renamed, added or removed; a datatype, rank or fixed dimension changed; an output removed) rolls
  it back at 0% with reason `InterfaceChanged` and every difference named, unless
  `allowInterfaceChange`; compatible changes are noted in its Started message. Interfaces that
  cannot be read yet hold it (`InterfaceUnknown`): a canary never starts unchecked when the policy
  requires the check (every policy built from a spec does).
- Before the first traffic step, when configured (`RolloutPolicy.performance_gate`, `.shadow`;
  after the preRollout gates): the performance gate (`modelops.rollout.gate`: `LoadTest` asked,
  `Observations.load_test` answered; failing it rolls the candidate back at 0%), then the shadow
  phase (`modelops.rollout.shadow`: the stable mirrors requests to the candidate, `Analyse(shadow=
  True)` judges the comparisons; failing rolls it back at 0%). Both at weight 0, both in the state.
- Restart safety: everything is in the state. Notifications carry a sequence number from the
  state and wait in its outbox until every subscribed webhook acknowledged them
  (`acknowledge()`); the same state and inputs give the same actions with the same numbers, and
  a persisted transition is never produced again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Iterable

from . import gate as perf_gate
from . import shadow as shadow_phase
from .actions import (ABORT_ANNOTATION, PROMOTE_ANNOTATION, Action, Analyse, CallGate, GateResult, Hold, LoadTest,
                      LoadTestResult, Notify, Observations, PhaseResult, Promote, RollBack, RolloutPolicy, SetWeight,
                      WebhookSubscription)
from .analysis import AnalysisResult, Outcome
from .interface import CHECK_NAME as INTERFACE_CHECK
from .interface import InterfaceCheck
from .state import GateWait, Notification, Phase, RolloutState, format_time, utc
from .stepping import Step, begin_traffic, fail, finish_promotion, prune, roll_back

__all__ = ["ABORT_ANNOTATION", "PROMOTE_ANNOTATION", "Action", "Analyse", "CallGate", "GateResult", "Hold",
           "LoadTest", "LoadTestResult", "Notify", "Observations", "PhaseResult", "Promote", "RollBack",
           "RolloutPolicy", "SetWeight", "WebhookSubscription", "acknowledge", "drive", "pending", "step",
           "transitions", "wants_interface"]


# --- the engine ------------------------------------------------------------------------------
def step(state: RolloutState | None, obs: Observations, policy: RolloutPolicy,
         now: datetime) -> tuple[RolloutState, tuple]:
    """The next rollout state and the actions that lead there (pure)."""
    now = utc(now)
    s = Step(state or RolloutState(), policy, now, obs.generation)
    s.interface_note = _interface_note(obs.interface, policy)
    _decide(s, obs)
    s.set(outbox=prune(s.state.outbox, s.state.delivered, policy))
    return s.state, tuple(s.actions)


def _decide(s: Step, obs: Observations) -> None:
    st = s.state
    target = obs.target
    if target is None:  # nothing resolved and ready: keep doing what we do
        target = st.version if st.phase.active else st.stable_version
        if target is None:
            return

    # First deployment: nothing to compare with, straight to 100%.
    if st.stable_version is None:
        s.set(phase=Phase.STABLE, stable_version=target, version=None, weight=0, step=0,
              reason="FirstDeployment", message=f"v{target} serves 100% (first deployment)")
        s.actions.append(Promote(target, None, "FirstDeployment"))
        return

    if s.policy.strategy == "replace":  # today's behaviour: the target serves 100% at once
        if st.phase.active and st.version != target:
            roll_back(s, "Replace", f"strategy replace: v{target} replaces the canary", notify=False)
        if target != s.state.stable_version or s.state.phase.active:
            finish_promotion(s, target, "Replace",
                             f"v{target} serves 100% (strategy replace, was v{s.state.stable_version})",
                             notify=False, phase=Phase.STABLE)
        return

    # Manual controls act on the canary they name.
    if st.phase.active and obs.abort is not None and obs.abort == st.version:
        roll_back(s, "Aborted", f"v{st.version} aborted by hand ({ABORT_ANNOTATION})")
        return
    if st.phase.active and obs.promote is not None and obs.promote == st.version:
        finish_promotion(s, st.version, "Manual", f"v{st.version} promoted by hand ({PROMOTE_ANNOTATION})")
        return

    # The target moved.
    if target == st.stable_version:
        if st.phase.active:
            roll_back(s, "TargetIsStable",
                      f"the resolved version is v{target} again: canary v{st.version} removed")
        return
    if target != st.version or not st.phase.active:
        if st.refuses(target, obs.generation):  # rolled back already: not tried again for this generation
            if st.phase.active:
                roll_back(s, "Superseded", f"the resolved version is v{target}, rolled back before")
            return
        if obs.paused:
            s.hold("Paused", f"v{target} waits: the rollout is paused")
            return
        if not _interface_allows(s, target, obs):
            return
        _start_canary(s, target, obs)
        return

    # An active canary of the target.
    if obs.preparing is not None and obs.preparing != st.version:
        s.hold("WaitingForNewerVersion",
               f"v{obs.preparing} is being prepared: canary v{st.version} holds at {st.weight}%")
        return
    if obs.paused:
        if st.phase != Phase.PAUSED:
            s.set(phase=Phase.PAUSED)
        s.hold("Paused", f"canary v{st.version} paused at {st.weight}%")
        return
    if st.phase == Phase.PAUSED:
        _resume(s)
    if s.state.phase == Phase.WAITING_FOR_GATE:
        _await_gate(s, obs, "preRollout", lambda: _pre_traffic(s, obs))
    elif s.state.phase == Phase.PERFORMANCE_GATE:
        perf_gate.progress(s, obs, lambda: _after_gate(s))
    elif s.state.phase == Phase.SHADOW:
        shadow_phase.progress(s, obs)
    elif s.state.phase == Phase.AWAITING_PROMOTION:
        _await_gate(s, obs, "confirmPromotion",
                    lambda: finish_promotion(s, s.state.version, "Analysis",
                                             f"v{s.state.version} passed every step: promoted"))
    elif s.state.phase == Phase.PROGRESSING and obs.canary_ready is False:
        # Not serving yet: nothing to judge. The step's interval starts once it serves.
        s.set(next_analysis_at=s.now + s.policy.interval)
        s.hold("CanaryNotReady", f"canary v{st.version} at {st.weight}% is not ready yet: analysis waits")
    elif s.state.phase == Phase.PROGRESSING:
        _progress(s, obs)


def wants_interface(state: RolloutState | None, target: str | None) -> bool:
    """Whether a step with this target may start a canary, so the caller should pass
    `Observations.interface` (comparing `target` with `state.stable_version`)."""
    st = state or RolloutState()
    return (target is not None and st.stable_version is not None and target != st.stable_version
            and (not st.phase.active or st.version != target))


def _interface_note(ic: InterfaceCheck | None, policy: RolloutPolicy) -> str:
    if ic is None or ic.error is not None:
        return ""
    allowed = (f"changed, allowed by spec.rollout.allowInterfaceChange: {ic.message}"
               if ic.incompatible and policy.allow_interface_change else "")
    return "; ".join(x for x in (allowed, ic.note) if x)


def _interface_allows(s: Step, target: str, obs: Observations) -> bool:
    """The interface check before any weight moves; False: held or refused (done here)."""
    ic = obs.interface if obs.interface is not None and obs.interface.version == target else None
    if ic is None and not s.policy.require_interface:
        return True
    stable = s.state.stable_version
    if ic is None or ic.error is not None or ic.stable_version != stable:
        why = ic.error if ic is not None and ic.error else f"v{target}'s interface was not compared with v{stable}'s yet"
        s.hold("InterfaceUnknown", f"v{target} waits before any traffic: {why}")
        return False
    if not ic.incompatible or s.policy.allow_interface_change:
        return True
    st = s.state
    if st.phase.active:  # the canary it supersedes goes too: the alias moved away from it
        roll_back(s, "Superseded", f"the resolved version is v{target}: canary v{st.version} removed")
    s.set(version=target, weight=0, step=0, failed_checks=0, inconclusive_checks=0, started_at=s.now,
          last_step_at=None, last_analysis_at=None, next_analysis_at=None, analysis=None, gate=None,
          performance_gate=None, shadow=None, journal=())
    fail(s, "InterfaceChanged", f"InterfaceChanged: {ic.message}", INTERFACE_CHECK)
    return False


def _start_canary(s: Step, target: str, obs: Observations) -> None:
    st = s.state
    previous = st.version if st.phase.active else None
    s.set(phase=Phase.WAITING_FOR_GATE, version=target, weight=0, step=0, failed_checks=0,
          inconclusive_checks=0, started_at=s.now, last_step_at=None, last_analysis_at=None,
          next_analysis_at=None, analysis=None, gate=None, performance_gate=None, shadow=None, journal=(),
          reason="Restarted" if previous else "Started",
          message=(f"v{target} supersedes canary v{previous}: analysis restarts" if previous
                   else f"canary v{target} against stable v{st.stable_version}"))
    if "preRollout" in s.policy.gates:
        _await_gate(s, obs, "preRollout", lambda: _pre_traffic(s, obs, previous))
    else:
        _pre_traffic(s, obs, previous)


def _pre_traffic(s: Step, obs: Observations, superseded: str | None = None) -> None:
    """What comes before the first step: the performance gate, then the shadow phase (each when configured)."""
    if s.policy.performance_gate is not None:
        perf_gate.enter(s, obs, lambda: _after_gate(s, superseded))
    else:
        _after_gate(s, superseded)


def _after_gate(s: Step, superseded: str | None = None) -> None:
    if s.policy.shadow is not None:
        shadow_phase.enter(s)
    else:
        begin_traffic(s, superseded)



def _resume(s: Step) -> None:
    st = s.state
    gate = st.gate
    if gate is not None and gate.type == "preRollout":
        phase = Phase.WAITING_FOR_GATE
    elif gate is not None and gate.type == "confirmPromotion":
        phase = Phase.AWAITING_PROMOTION
    elif st.weight == 0 and st.performance_gate is not None and st.performance_gate.version == st.version \
            and st.performance_gate.outcome != "Passed":
        phase = Phase.PERFORMANCE_GATE
    elif st.weight == 0 and st.shadow is not None and st.shadow.version == st.version:
        phase = Phase.SHADOW
    else:
        phase = Phase.PROGRESSING
    # A fresh interval (the paused time is not analysed); a gate is asked again at once.
    s.set(phase=phase,
          next_analysis_at=s.now + s.policy.interval if phase in (Phase.PROGRESSING, Phase.SHADOW)
          else st.next_analysis_at,
          gate=None if gate is None else GateWait(gate.type, gate.version, None, None, gate.message))


def _await_gate(s: Step, obs: Observations, type_: str, on_open: Callable[[], None]) -> None:
    st = s.state
    version = st.version
    answer = next((g for g in obs.gates if g.type == type_ and g.version == version), None)
    gate = st.gate if st.gate is not None and st.gate.type == type_ and st.gate.version == version \
        else GateWait(type_, version)
    phase = Phase.WAITING_FOR_GATE if type_ == "preRollout" else Phase.AWAITING_PROMOTION
    if answer is not None and answer.open:
        s.set(gate=None)
        on_open()
        return
    if answer is not None:  # closed: hold, ask again after an interval
        gate = GateWait(type_, version, gate.asked_at or s.now, False, answer.message)
        s.set(phase=phase, gate=gate)
        s.hold("GateClosed", f"{type_} gate holds v{version}: {answer.message}")
        return
    due = gate.asked_at is None or s.now >= gate.asked_at + s.policy.interval
    if due:
        gate = GateWait(type_, version, s.now, gate.open, gate.message)
        s.set(phase=phase, gate=gate)
        s.actions.append(CallGate(type_, version, st.stable_version, st.weight))
        s.hold("WaitingForGate", f"asking the {type_} gates about v{version}")
    else:
        s.set(phase=phase, gate=gate)
        what = f": {gate.message}" if gate.message else ""
        s.hold("GateClosed" if gate.open is False else "WaitingForGate",
               f"{type_} gate holds v{version}{what}; asking again at {format_time(gate.asked_at + s.policy.interval)}")


def _progress(s: Step, obs: Observations) -> None:
    st = s.state
    due = st.next_analysis_at or (st.last_step_at or s.now) + s.policy.interval
    if s.now < due:
        s.hold("Analysing", f"canary v{st.version} at {st.weight}%; next analysis at {format_time(due)}")
        return
    result = obs.analysis
    if result is None or result.version != st.version or utc(result.at) < due:
        since = st.last_step_at or due - s.policy.interval
        window = min(s.policy.interval_seconds, max(1.0, (s.now - since).total_seconds()))
        s.actions.append(Analyse(st.version, st.stable_version, st.weight, window))
        s.hold("AnalysisDue", f"analysing canary v{st.version} at {st.weight}%")
        return

    record = result.to_status()
    deciding = result.deciding
    check = deciding.name if deciding else None
    s.set(analysis=record, last_analysis_at=s.now, next_analysis_at=s.now + s.policy.interval)
    s.log_analysis("step", result)
    steps = s.policy.steps
    if result.outcome == Outcome.PASSED:
        s.set(inconclusive_checks=0)
        if st.step + 1 < len(steps):
            nxt, weight = st.step + 1, steps[st.step + 1]
            s.set(step=nxt, weight=weight, last_step_at=s.now, reason="StepAdvanced",
                  message=f"canary v{st.version} at {weight}% (step {nxt + 1}/{len(steps)}): {result.message}")
            s.actions.append(SetWeight(st.version, weight, nxt, st.stable_version))
            s.notify("StepAdvanced", reason="AnalysisPassed", message=s.state.message)
        elif "confirmPromotion" in s.policy.gates:
            s.set(phase=Phase.AWAITING_PROMOTION)
            _await_gate(s, obs, "confirmPromotion",
                        lambda: finish_promotion(s, st.version, "Analysis",
                                                 f"v{st.version} passed every step: promoted"))
        else:
            finish_promotion(s, st.version, "Analysis", f"v{st.version} passed every step: promoted")
        return
    if result.outcome == Outcome.FAILED:
        failed = st.failed_checks + 1
        s.set(failed_checks=failed)
        if failed >= s.policy.failure_limit:
            fail(s, "AnalysisFailed", f"analysis failed {failed}/{s.policy.failure_limit}: {result.message}",
                 check)
        else:
            s.hold("AnalysisFailed", f"analysis failed {failed}/{s.policy.failure_limit}: {result.message}")
        return
    inconclusive = st.inconclusive_checks + 1
    s.set(inconclusive_checks=inconclusive)
    text = f"analysis inconclusive {inconclusive}/{s.policy.inconclusive_limit}: {result.message}"
    if inconclusive >= s.policy.inconclusive_limit:
        fail(s, "Inconclusive", text, check)
    else:
        s.hold("Inconclusive", text)


# --- webhooks' outbox ------------------------------------------------------------------------
def pending(state: RolloutState, policy: RolloutPolicy) -> list[tuple[str, Notification]]:
    """(webhook name, notification) still to deliver, in order, per webhook."""
    out = []
    for w in policy.webhooks:
        done = state.delivered.get(w.name, 0)
        out += [(w.name, n) for n in state.outbox if n.event in w.events and n.seq > done]
    return out


def acknowledge(state: RolloutState, webhook: str, seq: int, policy: RolloutPolicy) -> RolloutState:
    """Record that `webhook` got every notification up to `seq` (in-order delivery)."""
    if state.delivered.get(webhook, 0) >= seq:
        return state
    delivered = {**state.delivered, webhook: seq}
    known = {w.name for w in policy.webhooks}
    delivered = {k: v for k, v in delivered.items() if k in known}
    return state.evolve(delivered=delivered, outbox=prune(state.outbox, delivered, policy))


# --- the caller's loop -----------------------------------------------------------------------
def drive(state: RolloutState | None, obs: Observations, policy: RolloutPolicy, now: datetime, *,
          analyse: Callable[[Analyse], AnalysisResult] | None = None,
          gate: Callable[[CallGate], GateResult] | None = None,
          load_test: Callable[[LoadTest], LoadTestResult] | None = None,
          max_rounds: int = 5) -> tuple[RolloutState, tuple]:
    """`step` until no Analyse/CallGate/LoadTest is left unanswered; returns the state and every action.

    `analyse`, `gate` and `load_test` do the I/O (metric queries, gate requests, the performance
    gate's load tests on the platform). Without one, its actions are returned for the caller to
    handle later.
    """
    from dataclasses import replace as _replace

    actions: list = []
    current = state
    for _ in range(max_rounds):
        current, acts = step(current, obs, policy, now)
        asks = [a for a in acts if isinstance(a, (Analyse, CallGate, LoadTest))]
        answered = []
        for a in asks:
            if isinstance(a, Analyse) and analyse is not None:
                obs = _replace(obs, analysis=analyse(a))
                answered.append(a)
            elif isinstance(a, CallGate) and gate is not None:
                obs = _replace(obs, gates=tuple(g for g in obs.gates if g.type != a.type) + (gate(a),))
                answered.append(a)
            elif isinstance(a, LoadTest) and load_test is not None:
                obs = _replace(obs, load_test=load_test(a))
                answered.append(a)
        keep = [a for a in acts if a not in answered and not (answered and isinstance(a, Hold))]
        actions += keep
        if not answered:
            break
    return current, tuple(actions)


def transitions(actions: Iterable) -> list:
    """The transition actions among `actions` (what Events, metrics and history record)."""
    return [a for a in actions if isinstance(a, (SetWeight, Promote, RollBack, PhaseResult, Notify))]
