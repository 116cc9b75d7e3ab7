"""Turn the MLflow artifact URI of a converted model into a KServe `storageUri`.

KServe's storage initializer downloads `s3://`, `gs://`, `pvc://`, `https://` (Azure Blob too),
`hdfs://`/`webhdfs://` and `oci://` URIs; it does not know MLflow's own schemes. So:

- MLflow with a direct artifact store (`--default-artifact-root s3://...`, or
  `--artifacts-destination s3://...` with `--no-serve-artifacts`): artifact URIs are already
  `s3://...` and pass through.
- A rewrite rule maps a prefix to where KServe can read the same bytes directly, e.g.
  `mlflow-artifacts:/=s3://mlflow/artifacts/` or `file:///mlruns/=pvc://mlflow-artifacts/`.
- MLflow proxying artifacts (`mlflow-artifacts:/...`, `mlflow server`'s default) with no rewrite:
  the tracking server itself serves each file at `/api/2.0/mlflow-artifacts/artifacts/<path>`,
  and KServe downloads `http(s)://` URLs of single files: `storageUri` is the URL of
  `model.onnx` on the tracking server when the converted model is that one file, else of
  `model.tar` (a text model's tokenizer and config, external weights), which KServe's storage
  initializer unpacks into the model directory.

Anything else (`file:///...` with no rewrite, say) is a permanent error that names the URI and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..errors import ModelOpsError

KSERVE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://", "oci://")


class UnsupportedArtifactStore(ModelOpsError):
    reason = "UnsupportedArtifactStore"


def parse_rewrites(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`FROM=TO` strings (CLI flags / env) into prefix pairs, longest prefix first."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"storage URI rewrite {item!r} must look like FROM=TO")
        src, dst = item.split("=", 1)
        pairs.append((src.strip(), dst.strip()))
    return tuple(sorted(pairs, key=lambda p: -len(p[0])))


MODEL_FILE = "model.onnx"
PROXY_PATH = "/api/2.0/mlflow-artifacts/artifacts/"


@dataclass(frozen=True)
class StorageLocation:
    uri: str  # the KServe storageUri
    note: str = ""  # how it was derived, when that needs saying (an Event)


def proxied_artifact_url(artifact_uri: str, tracking_uri: str, file: str = MODEL_FILE) -> str:
    """The tracking server's URL of `file` inside a `mlflow-artifacts:` directory."""
    path = urlsplit(artifact_uri).path.strip("/")  # mlflow-artifacts:/p or mlflow-artifacts://host:port/p
    return f"{tracking_uri.rstrip('/')}{PROXY_PATH}{quote(path)}/{quote(file)}"


def storage_location(artifact_uri: str, rewrites: tuple[tuple[str, str], ...] = (),
                     tracking_uri: str | None = None, file: str = MODEL_FILE) -> StorageLocation:
    """Where KServe should download the converted model from (see the module's docstring)."""
    for src, dst in rewrites:
        if artifact_uri.startswith(src):
            return StorageLocation(dst + artifact_uri[len(src):])
    if artifact_uri.startswith(KSERVE_SCHEMES):
        return StorageLocation(artifact_uri)
    if artifact_uri.startswith("mlflow-artifacts:") and tracking_uri and \
            tracking_uri.startswith(("http://", "https://")):
        url = proxied_artifact_url(artifact_uri, tracking_uri, file)
        return StorageLocation(url, note=(
            f"KServe downloads {file} from the MLflow tracking server's artifact proxy ({url}): "
            "no --storage-uri-rewrite matched the artifact URI; the tracking server must be "
            "reachable from the predictor's namespace without credentials"))
    return StorageLocation(storage_uri(artifact_uri, ()))


def storage_uri(artifact_uri: str, rewrites: tuple[tuple[str, str], ...] = ()) -> str:
    """The URI KServe should download the ONNX model directory from (rewrites and direct stores)."""
    for src, dst in rewrites:
        if artifact_uri.startswith(src):
            return dst + artifact_uri[len(src):]
    if artifact_uri.startswith(KSERVE_SCHEMES):
        return artifact_uri
    raise UnsupportedArtifactStore(
        f"KServe cannot download {artifact_uri!r}: configure MLflow with an s3/gs/azure artifact "
        "store, or give the operator --storage-uri-rewrite PREFIX=s3://... (or pvc://...)",
        artifact_uri=artifact_uri,
    )
