"""One error taxonomy for ModelOps.

Every failure the platform knows about is a `ModelOpsError`. Two attributes drive how the
boundaries map it:

- `retryable`: a passing condition (MLflow down, a network blip). Kopf handlers turn it into
  `kopf.TemporaryError` (retry with backoff); everything else becomes `kopf.PermanentError`.
- `http_status`: what the predictor answers when the error reaches an HTTP/gRPC edge.

Errors carry a short `reason` (a CamelCase token, used for Kubernetes condition reasons and
Events) and a human message that names the offending thing (model, version, alias, field).
"""

from __future__ import annotations


class ModelOpsError(Exception):
    reason = "Error"
    retryable = False
    http_status = 500

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


# --- registry -------------------------------------------------------------------------------
class RegistryError(ModelOpsError):
    reason = "RegistryError"


class RegistryUnavailable(RegistryError):
    """The tracking server did not answer (connection refused, timeout, 5xx)."""

    reason = "RegistryUnavailable"
    retryable = True
    http_status = 503


class ModelNotFound(RegistryError):
    reason = "ModelNotFound"
    http_status = 404


class VersionNotFound(RegistryError):
    reason = "VersionNotFound"
    http_status = 404


class AliasNotFound(RegistryError):
    reason = "AliasNotFound"
    http_status = 404


class InvalidModelURI(RegistryError):
    reason = "InvalidModelURI"
    http_status = 400


# --- conversion -----------------------------------------------------------------------------
class ConversionError(ModelOpsError):
    reason = "ConversionFailed"


class UnsupportedFlavor(ConversionError):
    reason = "UnsupportedFlavor"


class InvalidOnnxModel(ConversionError):
    reason = "InvalidOnnxModel"


class UntrustedArtifact(ConversionError):
    """A model artifact that could run code or read outside its directory when loaded: a pickle
    naming an untrusted global, a skops type not trusted at log time, ONNX external data or a
    symlink that escapes the model directory. Refused before anything is deserialized."""

    reason = "UntrustedArtifact"


class ParityFailed(ConversionError):
    """The ONNX model does not reproduce the original model's outputs within tolerance."""

    reason = "ParityFailed"


# --- serving --------------------------------------------------------------------------------
class ServingError(ModelOpsError):
    reason = "ServingError"


class InvalidRequest(ServingError):
    reason = "InvalidRequest"
    http_status = 400


class PayloadTooLarge(ServingError):
    reason = "PayloadTooLarge"
    http_status = 413


class UnknownModel(ServingError):
    reason = "UnknownModel"
    http_status = 404


class DeviceUnavailable(ServingError):
    """A GPU was asked for and no usable CUDA/TensorRT provider exists: never fall back to CPU."""

    reason = "DeviceUnavailable"
    http_status = 503


class InferenceFailed(ServingError):
    """onnxruntime failed while running a valid request (a model that breaks on some inputs)."""

    reason = "InferenceFailed"
    http_status = 500


class ModelNotReady(ServingError):
    reason = "ModelNotReady"
    http_status = 503


class PredictorUnreachable(ServingError):
    """A predictor a client of ours (`modelops loadtest`) must reach did not answer: refused,
    timed out, not a V2 server."""

    reason = "PredictorUnreachable"
    retryable = True
    http_status = 503


# --- access control (the predictor's `--auth kubernetes`) ------------------------------------
class Unauthenticated(ServingError):
    """No bearer token, or one the API server's TokenReview does not accept (gRPC UNAUTHENTICATED)."""

    reason = "Unauthenticated"
    http_status = 401


class Forbidden(ServingError):
    """An authenticated caller whom RBAC (a SubjectAccessReview) does not allow (gRPC PERMISSION_DENIED)."""

    reason = "Forbidden"
    http_status = 403


class AuthUnavailable(ServingError):
    """The API server could not review a token (unreachable, 5xx, refused us): fail closed."""

    reason = "AuthUnavailable"
    retryable = True
    http_status = 503


# --- rollouts -------------------------------------------------------------------------------
class NotAvailableYet(ModelOpsError):
    """A configured feature this platform does not implement yet (e.g. shadow mirroring or the
    performance gate on one serving platform): the rollout treats it as inconclusive, never a pass."""

    reason = "NotAvailableYet"


# --- specs ----------------------------------------------------------------------------------
class InvalidSpec(ModelOpsError):
    """A ModelDeployment (or other user input) is invalid; `field` is its JSON path."""

    reason = "InvalidSpec"
    http_status = 400

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", field=field)
        self.field = field


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def from_reason(reason: str, message: str) -> ModelOpsError:
    """Rebuild an error reported across a process boundary by its reason.

    A conversion Job's last line is `modelops: <Reason>: <message>` (the CLI's format); the
    operator turns it back into the same error so its condition says ParityFailed, not a
    generic Job failure, and a retryable one is retried.
    """
    for cls in _subclasses(ModelOpsError):
        if cls.reason == reason:
            return InvalidSpec("spec", message) if cls is InvalidSpec else cls(message)
    return ConversionError(message)
