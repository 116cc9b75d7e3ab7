"""What `plan()` takes and returns (`modelops.deployment.plan`): the facts a reconcile pass
gathered (the served model, a failure, the observed InferenceService) and the decisions (actions,
Events, the status). Plain frozen dataclasses, shared by the operator and local mode."""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import DeploymentSpec


# --- facts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """A converted model ready to serve: the ONNX location and how it was produced."""

    version: str
    onnx_uri: str
    storage_uri: str
    sha256: str
    options: str  # ConversionSpec.fingerprint
    cached: bool = False
    storage_note: str = ""  # how storage_uri was derived, when that needs saying (not persisted)
    # {"inputs", "outputs"} it serves, when known (not persisted; not part of its identity)
    interface: dict | None = field(default=None, compare=False)

    def to_status(self) -> dict:
        return {"version": self.version, "onnxUri": self.onnx_uri, "storageUri": self.storage_uri,
                "sha256": self.sha256, "options": self.options}

    @classmethod
    def from_status(cls, raw: dict | None) -> Served | None:
        if not raw or not raw.get("version") or not raw.get("storageUri"):
            return None
        return cls(version=str(raw["version"]), onnx_uri=raw.get("onnxUri", ""),
                   storage_uri=raw["storageUri"], sha256=raw.get("sha256", ""),
                   options=raw.get("options", ""))


@dataclass(frozen=True)
class Failure:
    reason: str  # CamelCase, from ModelOpsError.reason
    message: str
    retryable: bool

    @classmethod
    def from_error(cls, err) -> Failure:
        return cls(reason=getattr(err, "reason", type(err).__name__), message=str(err),
                   retryable=bool(getattr(err, "retryable", False)))


@dataclass(frozen=True)
class ServiceObservation:
    """The InferenceService after the operator made it match the desired spec."""

    storage_uri: str | None
    ready: bool
    url: str | None = None
    message: str = ""


@dataclass(frozen=True)
class Inputs:
    generation: int
    spec: DeploymentSpec
    status: dict
    now: str  # RFC 3339, for condition transition times
    resolved_version: str | None = None  # None: not resolved in this pass (status refresh only)
    conversion: Served | None = None  # the ONNX for (resolved_version, spec.conversion)
    converting: bool = False  # a conversion Job is running
    error: Failure | None = None
    service: ServiceObservation | None = None


# --- decisions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Convert:
    version: str
    options: str


@dataclass(frozen=True)
class ApplyService:
    served: Served


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    actions: tuple = ()
    status: dict = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    retry: Failure | None = None  # set: the operator should retry with backoff
