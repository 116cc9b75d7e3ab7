"""The one rollout driver: observe, decide, persist, apply, record — for the operator and local mode.

The engine (`engine.step`) decides; this module is the only place that feeds it and carries out
what it decided, in an order that makes every pass restart-safe:

1. **observe** through the serving platform: is the canary's predictor ready, what interface does
   each version serve (`wants_interface`: only when a canary may start);
2. **decide**: `engine.drive` with the analysis (a `MetricProvider`) and the gates answering its
   questions (reads only: nothing has changed anywhere yet);
3. **persist** the new state (`Store.save`: `status.canary` for the operator, `status.json` in
   local mode). A failure here changes nothing: the next pass decides again from the old state;
4. **apply** the persisted traffic (`Platform.apply(state.traffic)`, idempotent), then, when the
   spec has a shadow phase (or mirroring was on), the mirroring (`Platform.set_shadow(mirror or
   None)`, idempotent: None stops it once the rollout ends). A failure here leaves the state ahead
   of the platform; the next pass applies it again (level-triggered, like every reconcile), so a
   restart between 3 and 4 converges;
5. **record** the transitions in the history (MLflow tags, `promoteAlias`, the rollout report of a
   canary they end, built from the persisted state) after they were
   persisted: a transition is never recomputed once persisted, so it is recorded at most once; an
   MLflow outage loses those tags (the error is returned for the caller to log), never the rollout.

Webhook notifications need no step of their own: the engine keeps them in the persisted outbox,
and the caller's dispatcher delivers them from there (at least once, in order, deduplicated by
their sequence number).

The performance gate's load tests are the platform's too (`Platform.performance_gate(test)`,
asked while deciding: it starts the tests of `test.key` once and reports them when done); a spec
without `performanceGate` or `shadow` never calls these two methods.

A platform is a few methods (`Platform`): the operator's `KServePlatform` writes the
InferenceService (Standard `spec.canary[]`, Knative `canaryTrafficPercent`); local mode's
`LocalPlatform` sets the router's routes and stops predictors nothing routes to; tests use a
fake. The driver never imports Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Mapping, Protocol

from .. import errors
from ..deployment.spec import DeploymentSpec
from . import analysis as analysis_mod
from . import shadow as shadow_mod
from .engine import (Analyse, CallGate, GateResult, LoadTest, LoadTestResult, Observations, RolloutPolicy, drive,
                     transitions, wants_interface)
from .interface import Interface, InterfaceCheck, check
from .shadow import Mirror
from .state import Phase, RolloutState, Traffic


class Platform(Protocol):
    """Where versions are served; every method may raise (a write refused, a 409, a dead process)."""

    def canary_ready(self, traffic: Traffic) -> bool | None:
        """Whether the canary of `traffic` serves (None: the platform does not say yet)."""

    def interface(self, version: str) -> Interface | None:
        """What `version` serves (None: unknown); raises a retryable ModelOpsError to say "later"."""

    def apply(self, traffic: Traffic) -> None:
        """Make the platform serve `traffic` (idempotent)."""

    def set_shadow(self, mirror: Mirror | None) -> None:
        """Tell the stable predictor to mirror to the candidate as `mirror` says (its
        `to_config(candidate_url, model)` is the file it watches), or to stop (None); idempotent.
        Called only when the spec has `rollout.shadow` or mirroring was on."""

    def performance_gate(self, test: LoadTest) -> LoadTestResult | None:
        """Start the load tests of `test` (the stable's, then the candidate's) unless tests of
        `test.key` exist already, and report them: a LoadTestResult once both are done (or failed),
        None while they run. Raises a ModelOpsError to say the result cannot be had (inconclusive)."""


class Store(Protocol):
    def save(self, state: RolloutState, result: "TickResult") -> None:
        """Persist the new state (and whatever status goes with it); raise to abandon the pass."""


class History(Protocol):
    def record(self, moves: tuple, now: datetime, state: RolloutState) -> None:
        """Write the transitions (MLflow version tags, the promoted alias) and, for a canary they
        end, its rollout report from `state` (the state persisted with them)."""


@dataclass(frozen=True)
class Facts:
    """What the caller knows this pass, besides the persisted state."""

    target: str | None  # newest resolved version that is converted and ready to serve
    preparing: str | None = None  # a newer resolved version still being converted
    generation: int = 0
    annotations: Mapping[str, str] | None = None
    serving: str | None = None  # the version the platform serves when the state names none


def adopt(state: RolloutState, serving: str | None) -> RolloutState:
    """A deployment made before the canary strategy was chosen (or by `replace`) has no rollout
    state, yet a version serves: that version is the stable one. The only edit of the state that
    is not the engine's, and the same for every platform."""
    if state.stable_version is None and serving is not None:
        return state.evolve(phase=Phase.STABLE, stable_version=serving)
    return state


@dataclass(frozen=True)
class AnalysisScope:
    """How the analysis names what it measures: the served model name and extra label matchers."""

    model: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TickResult:
    state: RolloutState
    actions: tuple
    interface: InterfaceCheck | None = None
    apply_error: str | None = None  # the platform did not take the traffic (applied next pass)
    shadow_error: str | None = None  # the platform did not take the mirroring (applied next pass)
    history_error: str | None = None  # MLflow missed these transitions

    @property
    def transitions(self) -> tuple:
        return tuple(transitions(self.actions))


def compare_interfaces(read: Callable[[str], Interface | None], target: str, stable: str) -> InterfaceCheck:
    """`target`'s served interface against the stable version's, each read by `read(version)`;
    one that cannot be read (a ModelOpsError, e.g. MLflow unreachable) is an error: wait."""
    try:
        return check(target, stable, read(stable), read(target))
    except errors.ModelOpsError as exc:
        return check(target, stable, None, None, error=f"cannot read the served interfaces: {exc.reason}: {exc}")


def decide(state: RolloutState, spec: DeploymentSpec, facts: Facts, *, platform: Platform,
           provider: analysis_mod.MetricProvider, scope: AnalysisScope, now: datetime,
           gate: Callable[[CallGate], GateResult] | None = None,
           policy: RolloutPolicy | None = None) -> TickResult:
    """Steps 1 and 2: observe and decide (reads only)."""
    policy = policy or RolloutPolicy.from_spec(spec)
    state = adopt(state, facts.serving)
    ready = None
    if state.phase.active and state.version is not None:
        try:
            ready = platform.canary_ready(state.traffic)
        except errors.ModelOpsError:
            ready = None  # unknown readiness does not hold the canary, nor start its interval
    interface = None
    if wants_interface(state, facts.target):
        interface = compare_interfaces(platform.interface, facts.target, state.stable_version)
    obs = Observations.from_resource(spec, dict(facts.annotations or {}), target=facts.target,
                                     preparing=facts.preparing, generation=facts.generation,
                                     canary_ready=ready, interface=interface)

    def analyse(a: Analyse):
        target = analysis_mod.Target(model=scope.model, version=a.version, stable_version=a.stable_version,
                                     window=a.window_seconds, weight=a.weight, namespace=scope.namespace,
                                     labels=dict(scope.labels))
        if a.shadow and policy.shadow is not None:
            return shadow_mod.analyse(policy.shadow, provider, target, now)
        result = analysis_mod.analyse(spec.rollout.analysis, provider, target, now)
        if policy.shadow is not None:  # the comparison goes on during the steps: judged there too
            result = shadow_mod.step_checks(result, policy.shadow, provider, target)
        return result

    def load_test(t: LoadTest) -> LoadTestResult:
        try:
            got = platform.performance_gate(t)
        except errors.ModelOpsError as exc:  # unreadable, not available: inconclusive, never a pass
            return LoadTestResult(t.version, t.attempt, error=f"{exc.reason}: {exc}")
        return got if got is not None else LoadTestResult(t.version, t.attempt)

    new, actions = drive(state, obs, policy, now, analyse=analyse, gate=gate, load_test=load_test)
    return TickResult(state=new, actions=actions, interface=interface)


def tick(state: RolloutState, spec: DeploymentSpec, facts: Facts, *, platform: Platform, store: Store,
         provider: analysis_mod.MetricProvider, scope: AnalysisScope, now: datetime,
         history: History | None = None, gate: Callable[[CallGate], GateResult] | None = None,
         policy: RolloutPolicy | None = None) -> TickResult:
    """One pass: observe, decide, persist, apply, record (see the module's docstring)."""
    policy = policy or RolloutPolicy.from_spec(spec)
    result = decide(state, spec, facts, platform=platform, provider=provider, scope=scope, now=now,
                    gate=gate, policy=policy)
    store.save(result.state, result)  # raises: nothing happened
    apply_error = shadow_error = None
    try:
        platform.apply(result.state.traffic)
    except Exception as exc:  # the state is persisted: the next pass applies it again
        apply_error = f"{type(exc).__name__}: {exc}"
    if policy.shadow is not None or state.mirroring or result.state.mirroring:
        try:
            platform.set_shadow(shadow_mod.mirror(result.state, policy))
        except Exception as exc:  # persisted: set again on the next pass
            shadow_error = f"{type(exc).__name__}: {exc}"
    history_error = None
    moves = result.transitions
    if history is not None and moves:
        try:
            history.record(moves, now, result.state)
        except Exception as exc:  # MLflow away: these tags are missed (returned, logged), never retried twice
            history_error = f"{type(exc).__name__}: {exc}"
    return TickResult(state=result.state, actions=result.actions, interface=result.interface,
                      apply_error=apply_error, shadow_error=shadow_error, history_error=history_error)


__all__ = ["AnalysisScope", "Facts", "adopt", "History", "Platform", "Store", "TickResult", "compare_interfaces",
           "decide", "tick"]
