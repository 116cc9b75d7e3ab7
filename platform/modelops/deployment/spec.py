"""Parse a ModelDeployment `spec` dict into typed, validated dataclasses.

The API server already enforces the CRD schema; this re-checks the same rules (see
`modelops.deployment.schema`) so that objects which never met an API server (the kmock emulator,
local files) fail the same way, with `InvalidSpec(field_path, message)`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidSpec
from . import schema

_DURATION = re.compile(schema.DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY = re.compile(schema.QUANTITY_PATTERN)
_ALIAS = re.compile(schema.ALIAS_PATTERN)
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
_NAME = re.compile(schema.NAME_PATTERN)
_SECRET_NAME = re.compile(schema.SECRET_NAME_PATTERN)
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_URL = re.compile(schema.URL_PATTERN)


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
    precision: str = "fp32"
    opset: int = 17
    rtol: float | None = None  # None: the precision's default tolerance (modelops.conversion)
    atol: float | None = None

    @property
    def fingerprint(self) -> str:
        """Stable short id of the options: a different value means a different ONNX artifact."""
        text = json.dumps([self.precision, self.opset, self.rtol, self.atol])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PredictorSpec:
    gpu: int = 0
    min_replicas: int = 1
    max_replicas: int = 1
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    deployment_mode: str = "Standard"  # KServe: Standard (raw) | Knative
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

    success_rate_min: float | None = 0.99
    success_rate_max_drop: float | None = None  # canary >= stable - drop
    p99_latency_ms_max: float | None = None
    p99_latency_max_ratio: float | None = None  # canary p99 <= ratio * stable p99
    min_requests: int = 10
    failure_limit: int = 2
    inconclusive_limit: int = 3
    checks: tuple[CheckSpec, ...] = ()
    prometheus_url: str | None = None


@dataclass(frozen=True)
class RolloutSpec:
    strategy: str = "replace"
    steps: tuple[int, ...] = (10, 50, 100)
    interval: str = "60s"
    paused: bool = False
    promote_alias: str | None = None
    analysis: AnalysisSpec = AnalysisSpec()

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
    events: tuple[str, ...] = tuple(schema.HOOK_EVENTS)
    secret_ref: SecretRef | None = None


@dataclass(frozen=True)
class GateSpec:
    """A gate: a non-2xx answer holds the rollout before it starts or before it promotes."""

    name: str
    url: str
    type: str  # preRollout | confirmPromotion
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


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (`90s`, `1m30s`, `500ms`)."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise InvalidSpec("spec.rollout.interval", f"{text!r} is not a duration such as 60s, 5m or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


# --- helpers that name the field they check --------------------------------------------------
def _obj(value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(path, f"must be an object, got {type(value).__name__}")
    return value


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(path, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidSpec(path, f"must be between {lo} and {hi}, got {value}")
    return value


def _num(value: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpec(path, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidSpec(path, f"must be between {lo} and {hi}, got {value}")
    return float(value)


def _str(value: Any, path: str, *, pattern: re.Pattern | None = None, max_len: int = 253) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidSpec(path, f"must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise InvalidSpec(path, f"must be at most {max_len} characters")
    if pattern is not None and not pattern.match(value):
        raise InvalidSpec(path, f"{value!r} does not match {pattern.pattern}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(path, f"must be true or false, got {value!r}")
    return value


def _list(value: Any, path: str, max_items: int) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidSpec(path, f"must be a list, got {type(value).__name__}")
    if len(value) > max_items:
        raise InvalidSpec(path, f"must have at most {max_items} items")
    return value


def _unique_names(items: list, path: str) -> None:
    names = [i.name for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidSpec(path, f"names must be unique ({', '.join(dupes)} repeated)")


def _alias(value: Any, path: str) -> str:
    alias = _str(value, path, pattern=_ALIAS, max_len=255)
    if alias == "latest" or re.match(r"^[vV][0-9]+$", alias):
        raise InvalidSpec(path, "must not be 'latest' nor look like a version (v3)")
    return alias


def _enum(value: Any, path: str, allowed: list[str]) -> str:
    if value not in allowed:
        raise InvalidSpec(path, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _quantities(value: Any, path: str) -> dict[str, str]:
    out = {}
    for key, qty in _obj(value, path).items():
        text = str(qty) if isinstance(qty, int) and not isinstance(qty, bool) else qty
        if not isinstance(text, str) or not _QUANTITY.match(text):
            raise InvalidSpec(f"{path}.{key}", f"{qty!r} is not a Kubernetes quantity")
        out[key] = text
    return out


# --- sections --------------------------------------------------------------------------------
def _model(raw: Any) -> ModelRef:
    if raw is None:
        raise InvalidSpec("spec.model", "is required")
    raw = _obj(raw, "spec.model")
    name = _str(raw.get("name"), "spec.model.name", max_len=schema.MODEL_NAME_MAX)
    version, alias = raw.get("version"), raw.get("alias")
    if (version is None) == (alias is None):
        raise InvalidSpec("spec.model", "exactly one of model.version or model.alias must be set")
    if version is not None:
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)  # tolerate an unquoted number outside the API server
        version = _str(version, "spec.model.version", pattern=_VERSION, max_len=9)
    if alias is not None:
        alias = _alias(alias, "spec.model.alias")
    return ModelRef(name=name, version=version, alias=alias)


def _registry(raw: Any) -> RegistrySpec:
    raw = _obj(raw, "spec.registry")
    uri = raw.get("trackingUri")
    if uri is not None:
        uri = _str(uri, "spec.registry.trackingUri", pattern=re.compile(r"^https?://.+"), max_len=2048)
    secret = raw.get("credentialsSecret")
    if secret is not None:
        secret = _str(secret, "spec.registry.credentialsSecret", pattern=_SECRET_NAME)
    return RegistrySpec(tracking_uri=uri, credentials_secret=secret)


def _conversion(raw: Any) -> ConversionSpec:
    raw = _obj(raw, "spec.conversion")
    tol = _obj(raw.get("tolerance"), "spec.conversion.tolerance")
    d = ConversionSpec()
    return ConversionSpec(
        precision=_enum(raw.get("precision", d.precision), "spec.conversion.precision", schema.PRECISIONS),
        opset=_int(raw.get("opset", d.opset), "spec.conversion.opset", 7, 23),
        rtol=None if tol.get("rtol") is None else _num(tol["rtol"], "spec.conversion.tolerance.rtol", 0, 1),
        atol=None if tol.get("atol") is None else _num(tol["atol"], "spec.conversion.tolerance.atol", 0, 1),
    )


def _predictor(raw: Any) -> PredictorSpec:
    raw = _obj(raw, "spec.predictor")
    d = PredictorSpec()
    p = "spec.predictor"
    min_r = _int(raw.get("minReplicas", d.min_replicas), f"{p}.minReplicas", 0, 1000)
    max_r = _int(raw.get("maxReplicas", max(d.max_replicas, min_r)), f"{p}.maxReplicas", 1, 1000)
    if min_r > max_r:
        raise InvalidSpec(p, "predictor.minReplicas must not exceed predictor.maxReplicas")
    resources = _obj(raw.get("resources"), f"{p}.resources")
    selector = _obj(raw.get("nodeSelector"), f"{p}.nodeSelector")
    for key, value in selector.items():
        _str(value, f"{p}.nodeSelector.{key}", max_len=63)
    tolerations = raw.get("tolerations") or []
    if not isinstance(tolerations, list):
        raise InvalidSpec(f"{p}.tolerations", "must be a list")
    for i, tol in enumerate(tolerations):
        tol = _obj(tol, f"{p}.tolerations[{i}]")
        if "operator" in tol:
            _enum(tol["operator"], f"{p}.tolerations[{i}].operator", ["Exists", "Equal"])
        if "effect" in tol:
            _enum(tol["effect"], f"{p}.tolerations[{i}].effect",
                  ["NoSchedule", "PreferNoSchedule", "NoExecute"])
    return PredictorSpec(
        gpu=_int(raw.get("gpu", d.gpu), f"{p}.gpu", 0, 16),
        min_replicas=min_r, max_replicas=max_r,
        requests=_quantities(resources.get("requests"), f"{p}.resources.requests"),
        limits=_quantities(resources.get("limits"), f"{p}.resources.limits"),
        node_selector=dict(selector),
        tolerations=tuple(dict(t) for t in tolerations),
        deployment_mode=_enum(raw.get("deploymentMode", d.deployment_mode), f"{p}.deploymentMode",
                              schema.DEPLOYMENT_MODES),
        auth=_enum(raw["auth"], f"{p}.auth", schema.AUTH_MODES) if raw.get("auth") is not None else None,
        tls_secret=_tls_secret(raw.get("tls"), f"{p}.tls"),
        network_policy=_network_policy(raw.get("networkPolicy"), f"{p}.networkPolicy"),
    )


def _tls_secret(raw: Any, path: str) -> str | None:
    if raw is None:
        return None
    return _str(_obj(raw, path).get("secretName"), f"{path}.secretName", pattern=_SECRET_NAME)


def _label_map(raw: Any, path: str) -> dict[str, str]:
    labels = _obj(raw, path)
    if len(labels) > 16:
        raise InvalidSpec(path, "at most 16 labels")
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63:
            raise InvalidSpec(f"{path}.{key}", f"must be a label value (a string of at most 63 characters), "
                                               f"got {value!r}")
    return dict(labels)


def _network_policy(raw: Any, path: str) -> tuple[dict, ...] | None:
    if raw is None:
        return None
    peers = _obj(raw, path).get("from")
    if not isinstance(peers, list) or not 1 <= len(peers) <= 16:
        raise InvalidSpec(f"{path}.from", "must be a list of 1 to 16 peers")
    out = []
    for i, peer in enumerate(peers):
        peer = _obj(peer, f"{path}.from[{i}]")
        if "namespaceSelector" not in peer and "podSelector" not in peer:
            raise InvalidSpec(f"{path}.from[{i}]", "a networkPolicy peer needs namespaceSelector or podSelector")
        out.append({key: {"matchLabels": _label_map(_obj(peer[key], f"{path}.from[{i}].{key}").get("matchLabels"),
                                                    f"{path}.from[{i}].{key}.matchLabels")}
                    for key in ("namespaceSelector", "podSelector") if key in peer})
    return tuple(out)


def _rollout(raw: Any) -> RolloutSpec:
    raw = _obj(raw, "spec.rollout")
    d = RolloutSpec()
    strategy = _enum(raw.get("strategy", d.strategy), "spec.rollout.strategy", schema.STRATEGIES)
    steps = raw.get("steps", list(d.steps))
    if not isinstance(steps, list) or not 1 <= len(steps) <= 10:
        raise InvalidSpec("spec.rollout.steps", "must be a list of 1 to 10 percentages")
    for i, step in enumerate(steps):
        _int(step, f"spec.rollout.steps[{i}]", 1, 100)
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise InvalidSpec("spec.rollout.steps", "rollout.steps must be strictly increasing")
    if steps[-1] != 100:
        raise InvalidSpec("spec.rollout.steps", "rollout.steps must end at 100")
    interval = raw.get("interval", d.interval)
    parse_duration(interval)
    alias = raw.get("promoteAlias")
    return RolloutSpec(
        strategy=strategy, steps=tuple(steps), interval=interval,
        paused=_bool(raw.get("paused", False), "spec.rollout.paused"),
        promote_alias=None if alias is None else _alias(alias, "spec.rollout.promoteAlias"),
        analysis=_analysis(raw.get("analysis")),
    )


def _optional_num(raw: dict, key: str, path: str, lo: float, hi: float) -> float | None:
    return None if raw.get(key) is None else _num(raw[key], f"{path}.{key}", lo, hi)


def _analysis(raw: Any) -> AnalysisSpec:
    p = "spec.rollout.analysis"
    raw = _obj(raw, p)
    d = AnalysisSpec()
    rate = _obj(raw.get("successRate"), f"{p}.successRate")
    p99 = _obj(raw.get("p99LatencyMs"), f"{p}.p99LatencyMs")
    checks = []
    for i, c in enumerate(_list(raw.get("checks"), f"{p}.checks", 16)):
        cp = f"{p}.checks[{i}]"
        c = _obj(c, cp)
        check = CheckSpec(
            name=_str(c.get("name"), f"{cp}.name", pattern=_NAME, max_len=63),
            query=_str(c.get("query"), f"{cp}.query", max_len=4096),
            min=_optional_num(c, "min", cp, float("-inf"), float("inf")),
            max=_optional_num(c, "max", cp, float("-inf"), float("inf")),
        )
        if check.min is None and check.max is None:
            raise InvalidSpec(cp, "a check needs min or max")
        if check.min is not None and check.max is not None and check.min > check.max:
            raise InvalidSpec(cp, "a check's min must not exceed its max")
        checks.append(check)
    _unique_names(checks, f"{p}.checks")
    url = raw.get("prometheusUrl")
    return AnalysisSpec(
        success_rate_min=(d.success_rate_min if rate.get("min") is None
                          else _num(rate["min"], f"{p}.successRate.min", 0, 1)),
        success_rate_max_drop=_optional_num(rate, "maxDrop", f"{p}.successRate", 0, 1),
        p99_latency_ms_max=_optional_num(p99, "max", f"{p}.p99LatencyMs", 0, float("inf")),
        p99_latency_max_ratio=_optional_num(p99, "maxRatio", f"{p}.p99LatencyMs", 1, 100),
        min_requests=_int(raw.get("minRequests", d.min_requests), f"{p}.minRequests", 0, 10**9),
        failure_limit=_int(raw.get("failureLimit", d.failure_limit), f"{p}.failureLimit", 1, 100),
        inconclusive_limit=_int(raw.get("inconclusiveLimit", d.inconclusive_limit),
                                f"{p}.inconclusiveLimit", 1, 100),
        checks=tuple(checks),
        prometheus_url=None if url is None else _str(url, f"{p}.prometheusUrl", pattern=_URL, max_len=2048),
    )


def _secret_ref(raw: Any, path: str) -> SecretRef | None:
    if raw is None:
        return None
    raw = _obj(raw, path)
    return SecretRef(name=_str(raw.get("name"), f"{path}.name", pattern=_SECRET_NAME),
                     key=_str(raw.get("key"), f"{path}.key", pattern=_SECRET_KEY))


def _hooks(raw: Any) -> HooksSpec:
    p = "spec.hooks"
    raw = _obj(raw, p)
    webhooks = []
    for i, w in enumerate(_list(raw.get("webhooks"), f"{p}.webhooks", 16)):
        wp = f"{p}.webhooks[{i}]"
        w = _obj(w, wp)
        events = w.get("events")
        if events is None:
            events = list(schema.HOOK_EVENTS)
        events = _list(events, f"{wp}.events", len(schema.HOOK_EVENTS))
        for j, e in enumerate(events):
            _enum(e, f"{wp}.events[{j}]", schema.HOOK_EVENTS)
        webhooks.append(WebhookSpec(
            name=_str(w.get("name"), f"{wp}.name", pattern=_NAME, max_len=63),
            url=_str(w.get("url"), f"{wp}.url", pattern=_URL, max_len=2048),
            events=tuple(events), secret_ref=_secret_ref(w.get("secretRef"), f"{wp}.secretRef")))
    _unique_names(webhooks, f"{p}.webhooks")
    gates = []
    for i, g in enumerate(_list(raw.get("gates"), f"{p}.gates", 16)):
        gp = f"{p}.gates[{i}]"
        g = _obj(g, gp)
        gates.append(GateSpec(
            name=_str(g.get("name"), f"{gp}.name", pattern=_NAME, max_len=63),
            url=_str(g.get("url"), f"{gp}.url", pattern=_URL, max_len=2048),
            type=_enum(g.get("type"), f"{gp}.type", schema.GATE_TYPES),
            secret_ref=_secret_ref(g.get("secretRef"), f"{gp}.secretRef")))
    _unique_names(gates, f"{p}.gates")
    return HooksSpec(webhooks=tuple(webhooks), gates=tuple(gates))


def parse_spec(raw: Any) -> DeploymentSpec:
    """Typed spec from the resource's `spec` dict; raises `InvalidSpec` naming the field."""
    if raw is None:
        raise InvalidSpec("spec", "is required")
    raw = _obj(raw, "spec")
    return DeploymentSpec(
        model=_model(raw.get("model")),
        registry=_registry(raw.get("registry")),
        conversion=_conversion(raw.get("conversion")),
        predictor=_predictor(raw.get("predictor")),
        rollout=_rollout(raw.get("rollout")),
        hooks=_hooks(raw.get("hooks")),
    )
