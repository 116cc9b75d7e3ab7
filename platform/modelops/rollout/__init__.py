"""Progressive canary rollouts, without Kubernetes: the engine, its analysis and its hooks.

- `modelops.rollout.state`: `Phase`, the persisted `RolloutState` (= `status.canary`).
- `modelops.rollout.engine`: `step(state, observations, policy, now) -> (state, actions)`.
- `modelops.rollout.gate`, `modelops.rollout.shadow`: the phases before traffic (a performance gate of
  load tests; mirrored requests compared), each configured by `spec.rollout.performanceGate` / `.shadow`.
- `modelops.rollout.analysis`: checks over a `MetricProvider` (query -> value or Inconclusive).
- `modelops.rollout.providers`: `PrometheusProvider` (HTTP API) and `ScrapeProvider` (predictors'
  own /metrics, for local mode).
- `modelops.rollout.hooks`: signed webhook delivery (ordered, retried) and gate calls.
- `modelops.rollout.history`: the rollout's history as MLflow model-version tags and alias.

The operator (`modelops_operator`) and local mode drive the same engine.
"""

from .analysis import AnalysisResult, CheckResult, Inconclusive, MetricProvider, Outcome, analyse
from .engine import (ABORT_ANNOTATION, PROMOTE_ANNOTATION, Analyse, CallGate, GateResult, Hold, LoadTest,
                     LoadTestResult, Notify, Observations, PhaseResult, Promote, RollBack, RolloutPolicy, SetWeight,
                     WebhookSubscription, acknowledge, drive, pending, step)
from .state import EVENTS, Notification, Phase, RolloutState, Traffic

__all__ = [
    "ABORT_ANNOTATION", "PROMOTE_ANNOTATION", "EVENTS", "Analyse", "AnalysisResult", "CallGate",
    "CheckResult", "GateResult", "Hold", "Inconclusive", "LoadTest", "LoadTestResult", "MetricProvider",
    "Notification", "Notify", "Observations", "Outcome", "PhaseResult", "Phase", "Promote", "RollBack", "RolloutPolicy",
    "RolloutState", "SetWeight", "Traffic", "WebhookSubscription", "acknowledge", "analyse",
    "drive", "pending", "step",
]
