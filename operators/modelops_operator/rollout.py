"""The operator's side of a canary rollout: the one driver (`modelops.rollout.driver.tick`)
run on KServe (`kserve_platform`), with Prometheus for the analysis, the gate hooks, MLflow as
the history, and the webhook outbox's deliveries. Decisions stay in the engine; the order of
observe, decide, persist, apply and record is the driver's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

from modelops.deployment.facts import Served, ServiceObservation
from modelops.deployment.spec import DeploymentSpec
from modelops.rollout import analysis as analysis_mod
from modelops.rollout.driver import AnalysisScope, Facts, tick
from modelops.rollout.engine import CallGate, GateResult, Notify, Promote, RolloutPolicy
from modelops.rollout.hooks import call_gates, gates_from_spec
from modelops.rollout.providers import PrometheusProvider
from modelops.rollout.state import RolloutState, parse_time

from .config import OperatorConfig
from .kserve_platform import KServePlatform, StatusStore

log = logging.getLogger("modelops.operator")


@dataclass(frozen=True)
class StepResult:
    stable: Served  # what serves (100% minus the canary's weight)
    canary: Served | None
    weight: int
    state: dict  # RolloutState.to_status(): the new status.canary
    notifications: tuple  # the engine's new Notifications (Events, webhooks)
    transitions: tuple  # SetWeight / Promote / RollBack / Notify (MLflow history)
    promoted: bool  # the stable version changed in this pass
    analysed: dict | None = None  # the analysis counted in this pass (AnalysisResult.to_status())
    observation: ServiceObservation | None = None  # what KServe reports after the write
    changed: bool = False  # the InferenceService was written


class NoPrometheus:
    """Analysis without a configured Prometheus: every query is inconclusive, never a pass."""

    def query(self, q):
        return analysis_mod.Inconclusive(
            "no Prometheus configured: give the operator --prometheus-url (MODELOPS_PROMETHEUS_URL) "
            "or set spec.rollout.analysis.prometheusUrl")

    def close(self) -> None:
        pass


def _provider(spec: DeploymentSpec, config: OperatorConfig):
    url = spec.rollout.analysis.prometheus_url or config.prometheus_url
    return PrometheusProvider(url) if url else NoPrometheus()


def gate_caller(spec: DeploymentSpec, deployment: str, secret_reader=None):
    """The engine's gate questions, asked of `spec.hooks.gates` (signed HTTP calls)."""
    def gate(g: CallGate) -> GateResult:
        try:
            gates = gates_from_spec(spec.hooks, secret_reader or _no_secrets)
        except Exception as exc:  # a Secret we cannot read holds the rollout, loudly
            return GateResult(g.type, g.version, False, f"cannot sign the gate request: {exc}")

        async def ask() -> GateResult:
            async with httpx.AsyncClient() as client:
                return await call_gates(client, gates, g.type, deployment=deployment, model=spec.model.name,
                                        version=g.version, stable_version=g.stable_version, weight=g.weight)

        return asyncio.run(ask())  # a worker thread: its own event loop

    return gate


def step_deployment(md: dict, spec: DeploymentSpec, status: dict, target: Served | None,
                    config: OperatorConfig, *, now: str, platform: KServePlatform, store: StatusStore,
                    history=None, secret_reader=None, provider=None) -> StepResult:
    """One pass of the rollout driver (`modelops.rollout.driver.tick`) on this InferenceService.
    Raises what the InferenceService write raised (after the decision was persisted: the next
    pass applies it again)."""
    meta = md["metadata"]
    ns, name = meta["namespace"], meta["name"]
    versions = platform.versions
    state = RolloutState.from_status(status.get("canary"))
    facts = Facts(target=target and target.version, generation=int(meta.get("generation") or 0),
                  annotations=meta.get("annotations"), serving=versions.stable and versions.stable.version)
    owned = provider is None  # one we make we close; one we are given is the caller's
    provider = provider or _provider(spec, config)
    try:
        result = tick(state, spec, facts, platform=platform, store=store, provider=provider,
                      scope=AnalysisScope(model=name, namespace=ns, labels={"namespace": ns}), now=parse_time(now),
                      history=history, gate=gate_caller(spec, f"{ns}/{name}", secret_reader))
    finally:
        if owned:
            provider.close()
    if result.history_error:
        log.warning("%s/%s: could not record the rollout in MLflow: %s", ns, name, result.history_error)
    if result.shadow_error:
        log.warning("%s/%s: mirroring not applied (tried again next pass): %s", ns, name, result.shadow_error)
    if platform.error is not None:
        raise platform.error
    new = result.state
    stable_now, canary_now, weight = versions.split(new.traffic)
    counted = new.last_analysis_at is not None and new.last_analysis_at != state.last_analysis_at
    return StepResult(
        analysed=new.analysis if counted else None,
        stable=stable_now, canary=canary_now, weight=weight, state=new.to_status(),
        notifications=notifications_of(result), transitions=result.transitions,
        promoted=promoted_in(result, versions.stable, stable_now),
        observation=platform.observation, changed=platform.changed,
    )


def notifications_of(result) -> tuple:
    """The engine's new Notifications in a driver pass (a `TickResult`)."""
    return tuple(a.notification for a in result.actions if isinstance(a, Notify))


def promoted_in(result, before: Served | None, stable: Served) -> bool:
    """The stable version changed in this pass."""
    return any(isinstance(a, Promote) for a in result.actions) or before is None or before.version != stable.version


def secret_reader(kube, namespace: str):
    """Reads `SecretRef(name, key)` from `namespace` (webhook and gate signing keys). Needs `get`
    on that Secret for the operator's ServiceAccount: grant it per Secret (a Role with
    resourceNames), the shipped RBAC reads no Secrets."""
    import base64

    from .kube import Resource

    secrets = Resource("", "v1", "secrets")

    def read(ref) -> bytes:
        obj = kube.get(secrets.path(namespace, ref.name))
        if obj is None:
            raise LookupError(f"Secret {namespace}/{ref.name} not found")
        value = (obj.get("data") or {}).get(ref.key)
        if value is None:
            raise LookupError(f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
        return base64.b64decode(value)

    return read


@dataclass(frozen=True)
class Deliveries:
    """What the webhook dispatcher should hold for one ModelDeployment after a pass."""

    deployment: str  # namespace/name
    model: str
    webhooks: tuple
    pending: tuple  # (webhook name, Notification)
    delivered: dict


def deliveries(md: dict, spec: DeploymentSpec, canary_status: dict | None, read_secret) -> Deliveries | None:
    """The notifications still owed to `spec.hooks.webhooks` (from the persisted outbox)."""
    from modelops.rollout.engine import pending
    from modelops.rollout.hooks import webhooks_from_spec

    if not spec.hooks.webhooks or not canary_status:
        return None
    state = RolloutState.from_status(canary_status)
    owed = pending(state, RolloutPolicy.from_spec(spec))
    if not owed:
        return None
    meta = md["metadata"]
    hooks = webhooks_from_spec(spec.hooks, read_secret)  # raises when a signing Secret is unreadable
    return Deliveries(f"{meta['namespace']}/{meta['name']}", spec.model.name, tuple(hooks), tuple(owed),
                      dict(state.delivered))


def acknowledged(spec: DeploymentSpec, canary_status: dict | None, webhook: str, seq: int) -> dict | None:
    """The new status.canary once `webhook` got every notification up to `seq`; None: unchanged."""
    from modelops.rollout.engine import acknowledge

    state = RolloutState.from_status(canary_status)
    new = acknowledge(state, webhook, seq, RolloutPolicy.from_spec(spec))
    return None if new == state else new.to_status()


def _no_secrets(ref) -> bytes:
    raise PermissionError(f"Secret {getattr(ref, 'name', ref)!r} given but the operator reads no Secrets here")
