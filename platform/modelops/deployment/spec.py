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


@dataclass(frozen=True)
class RolloutSpec:
    strategy: str = "replace"
    steps: tuple[int, ...] = (10, 50, 100)
    interval: str = "60s"

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)


@dataclass(frozen=True)
class DeploymentSpec:
    model: ModelRef
    registry: RegistrySpec = RegistrySpec()
    conversion: ConversionSpec = ConversionSpec()
    predictor: PredictorSpec = PredictorSpec()
    rollout: RolloutSpec = RolloutSpec()


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
        alias = _str(alias, "spec.model.alias", pattern=_ALIAS, max_len=255)
        if alias == "latest" or re.match(r"^[vV][0-9]+$", alias):
            raise InvalidSpec("spec.model.alias", "must not be 'latest' nor look like a version (v3)")
    return ModelRef(name=name, version=version, alias=alias)


def _registry(raw: Any) -> RegistrySpec:
    raw = _obj(raw, "spec.registry")
    uri = raw.get("trackingUri")
    if uri is not None:
        uri = _str(uri, "spec.registry.trackingUri", pattern=re.compile(r"^https?://.+"), max_len=2048)
    secret = raw.get("credentialsSecret")
    if secret is not None:
        secret = _str(secret, "spec.registry.credentialsSecret",
                      pattern=re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))
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
    )


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
    return RolloutSpec(strategy=strategy, steps=tuple(steps), interval=interval)


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
    )
