"""Parse a ModelDeployment `spec` dict into typed, validated dataclasses.

The API server enforces the CRD schema; `parse_spec` validates against that same schema
(`modelops.deployment.schema`, through `modelops.deployment.validation`: jsonschema for the
structure, the CEL rules' Python twins) so that objects which never met an API server (the kmock
emulator, local files) fail the same way, with `InvalidSpec(field_path, message)`. Then it builds
the dataclasses from the validated data, defaults filled in. No limit, enum or default is
written here: each dataclass default is read from the schema (`schema.default(path)`).

A new field: add it to the schema, then (to use it) a dataclass field whose default is
`_d("its.path")` and one line in its section's builder below.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidSpec
from . import schema
from .validation import validated

_DURATION = re.compile(schema.DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_d = schema.default


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class RegistrySpec:
    tracking_uri: str | None = None
    credentials_secret: str | None = None


@dataclass(frozen=True)
class ConversionSpec:
    precision: str = _d("conversion.precision")
    opset: int = _d("conversion.opset")
    rtol: float | None = None  # None: the precision's default tolerance (modelops.conversion)
    atol: float | None = None

    @property
    def fingerprint(self) -> str:
        """Stable short id of the options: a different value means a different ONNX artifact."""
        text = json.dumps([self.precision, self.opset, self.rtol, self.atol])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PredictorSpec:
    gpu: int = _d("predictor.gpu")
    min_replicas: int = _d("predictor.minReplicas")
    max_replicas: int = _d("predictor.maxReplicas")
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    deployment_mode: str = _d("predictor.deploymentMode")  # KServe: Standard (raw) | Knative
    auth: str | None = None  # none | kubernetes; None: the operator's default (--predictor-auth)
    tls_secret: str | None = None  # a kubernetes.io/tls Secret: HTTPS and gRPC over TLS
    network_policy: tuple[dict, ...] | None = None  # admitted peers; None: no NetworkPolicy


@dataclass(frozen=True)
class CheckSpec:
    """A user PromQL check: its single value must lie within [min, max]."""

    name: str
    query: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class AnalysisSpec:
    """How a canary step is judged (`spec.rollout.analysis`); None turns a threshold off."""

    success_rate_min: float | None = _d("rollout.analysis.successRate.min")
    success_rate_max_drop: float | None = None  # canary >= stable - drop
    p99_latency_ms_max: float | None = None
    p99_latency_max_ratio: float | None = None  # canary p99 <= ratio * stable p99
    client_errors_max_increase: float | None = _d("rollout.analysis.clientErrors.maxIncrease")  # canary 4xx share <= stable's + this (1: off)
    min_requests: int = _d("rollout.analysis.minRequests")
    failure_limit: int = _d("rollout.analysis.failureLimit")
    inconclusive_limit: int = _d("rollout.analysis.inconclusiveLimit")
    checks: tuple[CheckSpec, ...] = ()
    prometheus_url: str | None = None


@dataclass(frozen=True)
class ShadowSpec:
    """`spec.rollout.shadow`: mirrored requests compared before (and during) the canary steps."""

    percent: int = _d("rollout.shadow.percent")
    min_requests: int = _d("rollout.shadow.minRequests")
    max_duration: str = _d("rollout.shadow.maxDuration")
    agreement_min: float = _d("rollout.shadow.checks.agreement.min")  # 0: off
    max_abs_diff_quantile: float = _d("rollout.shadow.checks.maxAbsDiff.quantile")
    max_abs_diff_max: float | None = None  # None: reported, not judged
    cosine_min: float | None = None  # None: off (`checks.cosine` absent)

    @property
    def max_duration_seconds(self) -> float:
        return parse_duration(self.max_duration, "spec.rollout.shadow.maxDuration")


@dataclass(frozen=True)
class PerformanceGateSpec:
    """`spec.rollout.performanceGate`: a load test of the candidate against the stable's before traffic."""

    concurrency: int = _d("rollout.performanceGate.concurrency")
    duration: str = _d("rollout.performanceGate.duration")
    max_p99_ms: float | None = None
    min_throughput_ratio: float = _d("rollout.performanceGate.minThroughputRatio")  # 0: off

    @property
    def duration_seconds(self) -> float:
        return parse_duration(self.duration, "spec.rollout.performanceGate.duration")


@dataclass(frozen=True)
class RolloutSpec:
    strategy: str = _d("rollout.strategy")
    steps: tuple[int, ...] = tuple(_d("rollout.steps"))
    interval: str = _d("rollout.interval")
    paused: bool = _d("rollout.paused")
    promote_alias: str | None = None
    allow_interface_change: bool = _d("rollout.allowInterfaceChange")  # let an incompatible interface through (clients changed first)
    analysis: AnalysisSpec = AnalysisSpec()
    shadow: ShadowSpec | None = None  # None: no shadow phase
    performance_gate: PerformanceGateSpec | None = None  # None: no performance gate

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class WebhookSpec:
    """A notification webhook: rollout transitions POSTed as JSON, HMAC-signed with the secret."""

    name: str
    url: str
    events: tuple[str, ...] = tuple(_d("hooks.webhooks.events"))
    secret_ref: SecretRef | None = None


@dataclass(frozen=True)
class GateSpec:
    """A gate: a non-2xx answer holds the rollout before it starts or before it promotes."""

    name: str
    url: str
    type: str  # one of schema.GATE_TYPES
    secret_ref: SecretRef | None = None


@dataclass(frozen=True)
class HooksSpec:
    webhooks: tuple[WebhookSpec, ...] = ()
    gates: tuple[GateSpec, ...] = ()


@dataclass(frozen=True)
class DeploymentSpec:
    model: ModelRef
    registry: RegistrySpec = RegistrySpec()
    conversion: ConversionSpec = ConversionSpec()
    predictor: PredictorSpec = PredictorSpec()
    rollout: RolloutSpec = RolloutSpec()
    hooks: HooksSpec = HooksSpec()


def parse_duration(text: str, field: str = "spec.rollout.interval") -> float:
    """Seconds in a Go-style duration (`90s`, `1m30s`, `500ms`); `field` names it in the error."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise InvalidSpec(field, f"{text!r} is not a duration such as 60s, 5m or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


# --- building the dataclasses from validated data (every default present) ---------------------
def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _secret_ref(raw: dict | None) -> SecretRef | None:
    return None if raw is None else SecretRef(name=raw["name"], key=raw["key"])


def _model(raw: dict) -> ModelRef:
    return ModelRef(name=raw["name"], version=raw.get("version"), alias=raw.get("alias"))


def _registry(raw: dict) -> RegistrySpec:
    return RegistrySpec(tracking_uri=raw.get("trackingUri"), credentials_secret=raw.get("credentialsSecret"))


def _conversion(raw: dict) -> ConversionSpec:
    tol = raw.get("tolerance", {})
    return ConversionSpec(precision=raw["precision"], opset=raw["opset"],
                          rtol=_float(tol.get("rtol")), atol=_float(tol.get("atol")))


def _quantities(raw: dict) -> dict[str, str]:
    return {key: str(qty) for key, qty in raw.items()}


def _predictor(raw: dict) -> PredictorSpec:
    resources = raw.get("resources", {})
    return PredictorSpec(
        gpu=raw["gpu"], min_replicas=raw["minReplicas"], max_replicas=raw["maxReplicas"],
        requests=_quantities(resources.get("requests", {})), limits=_quantities(resources.get("limits", {})),
        node_selector=dict(raw.get("nodeSelector", {})),
        tolerations=tuple(dict(t) for t in raw.get("tolerations", [])),
        deployment_mode=raw["deploymentMode"], auth=raw.get("auth"),
        tls_secret=(raw.get("tls") or {}).get("secretName"),
        network_policy=_network_policy(raw.get("networkPolicy")))


def _network_policy(raw: dict | None) -> tuple[dict, ...] | None:
    """Admitted peers, each with the selectors it names (validated by the schema: 1..16 peers)."""
    if raw is None:
        return None
    return tuple({key: {"matchLabels": dict((peer[key] or {}).get("matchLabels") or {})}
                  for key in ("namespaceSelector", "podSelector") if key in peer} for peer in raw["from"])


def _analysis(raw: dict) -> AnalysisSpec:
    rate, p99, client = raw["successRate"], raw.get("p99LatencyMs", {}), raw["clientErrors"]
    return AnalysisSpec(
        success_rate_min=float(rate["min"]), success_rate_max_drop=_float(rate.get("maxDrop")),
        p99_latency_ms_max=_float(p99.get("max")), p99_latency_max_ratio=_float(p99.get("maxRatio")),
        client_errors_max_increase=float(client["maxIncrease"]),
        min_requests=raw["minRequests"], failure_limit=raw["failureLimit"],
        inconclusive_limit=raw["inconclusiveLimit"],
        checks=tuple(CheckSpec(name=c["name"], query=c["query"], min=_float(c.get("min")), max=_float(c.get("max")))
                     for c in raw.get("checks", [])),
        prometheus_url=raw.get("prometheusUrl"))


def _shadow(raw: dict | None) -> ShadowSpec | None:
    if raw is None:
        return None
    checks = raw["checks"]
    diff, cosine = checks["maxAbsDiff"], checks.get("cosine")
    return ShadowSpec(percent=raw["percent"], min_requests=raw["minRequests"], max_duration=raw["maxDuration"],
                      agreement_min=float(checks["agreement"]["min"]),
                      max_abs_diff_quantile=float(diff["quantile"]), max_abs_diff_max=_float(diff.get("max")),
                      cosine_min=None if cosine is None else float(cosine["min"]))


def _performance_gate(raw: dict | None) -> PerformanceGateSpec | None:
    if raw is None:
        return None
    return PerformanceGateSpec(concurrency=raw["concurrency"], duration=raw["duration"],
                               max_p99_ms=_float(raw.get("maxP99Ms")),
                               min_throughput_ratio=float(raw["minThroughputRatio"]))


def _rollout(raw: dict) -> RolloutSpec:
    return RolloutSpec(
        strategy=raw["strategy"], steps=tuple(raw["steps"]), interval=raw["interval"], paused=raw["paused"],
        promote_alias=raw.get("promoteAlias"), allow_interface_change=raw["allowInterfaceChange"],
        analysis=_analysis(raw["analysis"]), shadow=_shadow(raw.get("shadow")),
        performance_gate=_performance_gate(raw.get("performanceGate")))


def _hooks(raw: dict) -> HooksSpec:
    return HooksSpec(
        webhooks=tuple(WebhookSpec(name=w["name"], url=w["url"], events=tuple(w["events"]),
                                   secret_ref=_secret_ref(w.get("secretRef"))) for w in raw.get("webhooks", [])),
        gates=tuple(GateSpec(name=g["name"], url=g["url"], type=g["type"], secret_ref=_secret_ref(g.get("secretRef")))
                    for g in raw.get("gates", [])))


def parse_spec(raw: Any, spec_schema: dict | None = None) -> DeploymentSpec:
    """Typed spec from the resource's `spec` dict; raises `InvalidSpec` naming the field.
    `spec_schema` (default: `schema.SPEC_SCHEMA`, read at each call) is what it validates against."""
    data = validated(raw, spec_schema)
    return DeploymentSpec(
        model=_model(data["model"]),
        registry=_registry(data.get("registry", {})),
        conversion=_conversion(data["conversion"]),
        predictor=_predictor(data["predictor"]),
        rollout=_rollout(data["rollout"]),
        hooks=_hooks(data.get("hooks", {})),
    )
