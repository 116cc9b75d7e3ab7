"""Turn the MLflow artifact URI of a converted model into a KServe `storageUri`.

KServe's storage initializer downloads `s3://`, `gs://`, `pvc://`, `https://` (Azure Blob too),
`hdfs://`/`webhdfs://` and `oci://` URIs; it does not know MLflow's own schemes. So:

- MLflow with a direct artifact store (`--default-artifact-root s3://...`, or
  `--artifacts-destination s3://...` with `--no-serve-artifacts`): artifact URIs are already
  `s3://...` and pass through.
- MLflow proxying artifacts (`mlflow-artifacts:/...`) or on a local/NFS path (`file:///...`): the
  operator needs a rewrite rule mapping that prefix to where KServe can read the same bytes, e.g.
  `mlflow-artifacts:/=s3://mlflow/artifacts/` or `file:///mlruns/=pvc://mlflow-artifacts/`.

Anything else is a permanent error that names the URI and the fix.
"""

from __future__ import annotations

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


def storage_uri(artifact_uri: str, rewrites: tuple[tuple[str, str], ...] = ()) -> str:
    """The URI KServe should download the ONNX model directory from."""
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
