"""The operator's side of a canary rollout: the I/O around `modelops.rollout`'s pure engine.

One pass: read the engine's state from `status.canary`, step it (answering its questions: the
analysis against Prometheus, the gate hooks), and hand back what the InferenceService must serve
and what happened. Decisions stay in the engine; this module only fetches and records.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

from modelops.deployment.plan import Served
from modelops.deployment.spec import DeploymentSpec
from modelops.rollout import analysis as analysis_mod
from modelops.rollout.driver import compare_interfaces
from modelops.rollout.engine import (Analyse, CallGate, GateResult, Notify, Observations, Promote,
                                     RolloutPolicy, drive, transitions, wants_interface)
from modelops.rollout.hooks import call_gates, gates_from_spec
from modelops.rollout.providers import PrometheusProvider
from modelops.rollout.state import Phase, RolloutState, parse_time

from .config import OperatorConfig

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


class NoPrometheus:
    """Analysis without a configured Prometheus: every query is inconclusive, never a pass."""

    def query(self, q):
        return analysis_mod.Inconclusive(
            "no Prometheus configured: give the operator --prometheus-url (MODELOPS_PROMETHEUS_URL) "
            "or set spec.rollout.analysis.prometheusUrl")


def _provider(spec: DeploymentSpec, config: OperatorConfig):
    url = spec.rollout.analysis.prometheus_url or config.prometheus_url
    return PrometheusProvider(url) if url else NoPrometheus()


def step_deployment(md: dict, spec: DeploymentSpec, status: dict, target: Served | None,
                    config: OperatorConfig, *, now: str, secret_reader=None,
                    canary_ready: bool | None = None, interface_of=None) -> StepResult:
    meta = md["metadata"]
    ns, name = meta["namespace"], meta["name"]
    stable = Served.from_status(status.get("stable"))
    canary_model = Served.from_status(status.get("canaryModel"))
    state = RolloutState.from_status(status.get("canary"))
    if state.stable_version is None and stable is not None:
        # Deployed before the canary strategy was chosen (or by `replace`): that version serves.
        state = state.evolve(phase=Phase.STABLE, stable_version=stable.version)
    served = {s.version: s for s in (stable, canary_model, target) if s is not None}
    policy = RolloutPolicy.from_spec(spec)
    checked = None
    if target is not None and interface_of is not None and wants_interface(state, target.version):
        def read(version: str):
            return interface_of(served[version]) if version in served else None

        checked = compare_interfaces(read, target.version, state.stable_version)
    obs = Observations.from_resource(spec, meta.get("annotations"), target=target and target.version,
                                     generation=int(meta.get("generation") or 0), canary_ready=canary_ready,
                                     interface=checked)
    when = parse_time(now)
    provider = _provider(spec, config)

    def analyse(a: Analyse):
        t = analysis_mod.Target(model=name, version=a.version, stable_version=a.stable_version,
                                window=a.window_seconds, weight=a.weight, namespace=ns,
                                labels={"namespace": ns})
        return analysis_mod.analyse(spec.rollout.analysis, provider, t, when)

    def gate(g: CallGate) -> GateResult:
        try:
            gates = gates_from_spec(spec.hooks, secret_reader or _no_secrets)
        except Exception as exc:  # a Secret we cannot read holds the rollout, loudly
            return GateResult(g.type, g.version, False, f"cannot sign the gate request: {exc}")

        async def ask() -> GateResult:
            async with httpx.AsyncClient() as client:
                return await call_gates(client, gates, g.type, deployment=f"{ns}/{name}", model=spec.model.name,
                                        version=g.version, stable_version=g.stable_version, weight=g.weight)

        return asyncio.run(ask())  # a worker thread: its own event loop

    try:
        new, actions = drive(state, obs, policy, when, analyse=analyse, gate=gate)
    finally:
        if isinstance(provider, PrometheusProvider):
            provider.close()
    traffic = new.traffic
    stable_now = served.get(traffic.stable) if traffic.stable else None
    if stable_now is None:  # nothing the engine knows serves: keep what the status says
        stable_now = stable or target
    canary_now = served.get(traffic.canary) if traffic.canary else None
    counted = new.last_analysis_at is not None and new.last_analysis_at != state.last_analysis_at
    return StepResult(
        analysed=new.analysis if counted else None,
        stable=stable_now, canary=canary_now, weight=traffic.weight if canary_now else 0,
        state=new.to_status(),
        notifications=tuple(a.notification for a in actions if isinstance(a, Notify)),
        transitions=tuple(transitions(actions)),
        promoted=any(isinstance(a, Promote) for a in actions) or (stable is None or stable.version != stable_now.version),
    )


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


def record_history(registry, md: dict, spec: DeploymentSpec, actions: tuple, now: str) -> None:
    """MLflow as the history (version tags, the promoted alias); never fails the pass."""
    if not actions:
        return
    from modelops.rollout.history import record_actions

    meta = md["metadata"]
    try:
        record_actions(registry, spec.model.name, meta["namespace"], meta["name"], actions, parse_time(now),
                       promote_alias=spec.rollout.promote_alias)
    except Exception as exc:  # MLflow down: the rollout goes on; this transition's tags are missed (logged)
        log.warning("%s/%s: could not record the rollout in MLflow: %s", meta["namespace"], meta["name"], exc)
