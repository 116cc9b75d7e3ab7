"""The rollout engine's vocabulary: what `engine.step` takes (the policy, the observations, gate
answers) and what it returns (the actions). Values only; the rules are in `engine`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ..deployment.spec import DeploymentSpec, PerformanceGateSpec, ShadowSpec
from .analysis import AnalysisResult
from .interface import InterfaceCheck
from .state import EVENTS, Notification

PROMOTE_ANNOTATION = "modelops.dev/promote"
ABORT_ANNOTATION = "modelops.dev/abort"


# --- inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookSubscription:
    name: str
    events: frozenset[str] = frozenset(EVENTS)


@dataclass(frozen=True)
class RolloutPolicy:
    strategy: str = "canary"  # canary | replace
    steps: tuple[int, ...] = (10, 50, 100)
    interval_seconds: float = 60.0
    failure_limit: int = 2
    inconclusive_limit: int = 3
    webhooks: tuple[WebhookSubscription, ...] = ()
    gates: frozenset[str] = frozenset()  # gate types configured (preRollout, confirmPromotion)
    max_outbox: int = 64
    require_interface: bool = False  # a canary starts only once its interface was compared
    allow_interface_change: bool = False  # an incompatible interface is noted, not refused
    performance_gate: PerformanceGateSpec | None = None  # a load test before shadow or traffic (None: none)
    shadow: ShadowSpec | None = None  # a shadow phase before the first traffic step (None: none)

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.interval_seconds)

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> RolloutPolicy:
        r, a = spec.rollout, spec.rollout.analysis
        return cls(strategy=r.strategy, steps=tuple(r.steps), interval_seconds=r.interval_seconds,
                   failure_limit=a.failure_limit, inconclusive_limit=a.inconclusive_limit,
                   webhooks=tuple(WebhookSubscription(w.name, frozenset(w.events))
                                  for w in spec.hooks.webhooks),
                   gates=frozenset(g.type for g in spec.hooks.gates), require_interface=True,
                   allow_interface_change=r.allow_interface_change,
                   performance_gate=r.performance_gate if r.strategy == "canary" else None,
                   shadow=r.shadow if r.strategy == "canary" else None)


@dataclass(frozen=True)
class GateResult:
    """The combined answer of every gate of one type for one version (open: all answered 2xx)."""

    type: str
    version: str
    open: bool
    message: str = ""


@dataclass(frozen=True)
class LoadTestResult:
    """What the platform knows of the load tests of a `LoadTest` (the same version and attempt):
    both documents once done (`modelops loadtest --json`: requests, errors, throughput_rps,
    p50_ms, p99_ms), `error` when they failed or the result is unreadable, neither while running."""

    version: str
    attempt: int
    stable: dict | None = None
    candidate: dict | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.error is None and (self.stable is None or self.candidate is None)


@dataclass(frozen=True)
class Observations:
    target: str | None = None  # newest resolved version that is converted and ready to serve
    preparing: str | None = None  # a newer resolved version still being converted
    generation: int = 0  # metadata.generation: a spec edit may retry a rolled-back version
    paused: bool = False  # spec.rollout.paused
    promote: str | None = None  # version named by the promote annotation
    abort: str | None = None  # version named by the abort annotation
    canary_ready: bool | None = None  # the serving platform reports the canary's predictor ready (None: unknown)
    analysis: AnalysisResult | None = None  # the answer to an Analyse action
    gates: tuple[GateResult, ...] = ()  # answers to CallGate actions
    interface: InterfaceCheck | None = None  # the target's interface against the stable version's
    load_test: LoadTestResult | None = None  # the answer to a LoadTest action

    @classmethod
    def from_resource(cls, spec: DeploymentSpec, annotations: dict | None, *, target: str | None,
                      preparing: str | None = None, generation: int = 0, **more) -> Observations:
        annotations = annotations or {}
        return cls(target=target, preparing=preparing, generation=generation,
                   paused=spec.rollout.paused,
                   promote=(annotations.get(PROMOTE_ANNOTATION) or "").strip() or None,
                   abort=(annotations.get(ABORT_ANNOTATION) or "").strip() or None, **more)


# --- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetWeight:
    """The canary's traffic moved (a canary starts with its first step)."""

    version: str
    weight: int
    step: int
    stable_version: str | None


@dataclass(frozen=True)
class Promote:
    """`version` now serves 100% as the stable version (previous: the one it replaced)."""

    version: str
    previous: str | None
    reason: str  # FirstDeployment | Replace | Analysis | Manual


@dataclass(frozen=True)
class RollBack:
    """The canary `version` is removed; `stable_version` serves 100%."""

    version: str
    stable_version: str | None
    reason: str  # AnalysisFailed | Inconclusive | Aborted | TargetIsStable
    message: str = ""
    check: str | None = None


@dataclass(frozen=True)
class Hold:
    """Nothing moved, and why."""

    reason: str
    message: str


@dataclass(frozen=True)
class Analyse:
    """Run the analysis of `version` over the last `window_seconds` and pass it back."""

    version: str
    stable_version: str | None
    weight: int
    window_seconds: float
    shadow: bool = False  # the shadow phase's analysis (the shadow checks alone, cumulative since it began)


@dataclass(frozen=True)
class LoadTest:
    """Run (once per `key`: idempotent) the performance gate's load tests: first against the stable
    version, then against the candidate `version`, same settings; pass back a LoadTestResult."""

    version: str
    stable_version: str | None
    attempt: int
    concurrency: int
    duration_seconds: float

    @property
    def key(self) -> str:
        """Names this attempt's tests on the platform (a Job name, a run-dir file): a restart that
        asks again finds them instead of starting new ones."""
        return f"v{self.version}-gate-{self.attempt}"


@dataclass(frozen=True)
class PhaseResult:
    """A performance gate or a shadow phase was decided (for Events, the history and MLflow tags)."""

    phase: str  # performanceGate | shadow
    version: str
    stable_version: str | None
    outcome: str  # Passed | Failed | Inconclusive
    check: str | None
    message: str
    values: dict  # the numbers it was decided on


@dataclass(frozen=True)
class CallGate:
    """Ask every gate of `type` about `version` and pass the combined GateResult back."""

    type: str
    version: str
    stable_version: str | None
    weight: int


@dataclass(frozen=True)
class Notify:
    """A new transition (also queued in the state's outbox for the webhooks subscribed to it)."""

    notification: Notification


Action = SetWeight | Promote | RollBack | Hold | Analyse | CallGate | LoadTest | PhaseResult | Notify
