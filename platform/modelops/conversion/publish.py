"""Convert a registered model version and publish the result back to MLflow.

The ONNX artifact directory is logged next to the source model (its run), and the model version
gets tags so the MLflow UI shows the conversion. A per-options tag records each result, which
makes re-publishing idempotent: the same version and options never convert twice.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import errors
from ..registry import TAG_PREFIX, Registry, ResolvedModel
from .options import ConversionOptions

TAG_STATUS = TAG_PREFIX + "conversion.status"
TAG_ERROR = TAG_PREFIX + "conversion.error"
TAG_ONNX_URI = TAG_PREFIX + "onnx.uri"
TAG_SHA256 = TAG_PREFIX + "onnx.sha256"
TAG_PARITY = TAG_PREFIX + "parity"
MAX_RECORD = 5000  # MLflow's limit for a model-version tag value
# What the predictor needs beside model.onnx (a text model's tokenizer and config, external
# weights) travels also as one uncompressed tar: KServe's storage initializer downloads a single
# file over http(s) (MLflow's artifact proxy) and unpacks a `.tar` into the model directory.
BUNDLE = "model.tar"
NOT_SERVED = ("conversion.json", BUNDLE)


def write_bundle(out: Path) -> str | None:
    """`out/model.tar` of the serving files, when there is more than model.onnx; its name or None."""
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name not in NOT_SERVED)
    if [p.name for p in files] == ["model.onnx"]:
        (out / BUNDLE).unlink(missing_ok=True)
        return None
    with tarfile.open(out / BUNDLE, "w", format=tarfile.PAX_FORMAT) as tar:
        for f in files:  # flat, regular files only: nothing for an unpacker to follow
            info = tar.gettarinfo(str(f), arcname=f.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(f, "rb") as fh:
                tar.addfile(info, fh)
    return BUNDLE


def options_tag(options: ConversionOptions) -> str:
    return f"{TAG_PREFIX}conversion.{options.key}"


@dataclass
class ConversionResult:
    onnx_uri: str  # artifact directory holding model.onnx + conversion.json (KServe storageUri)
    sha256: str
    parity: dict
    cached: bool
    report: dict = field(default_factory=dict)
    local_dir: Path | None = None
    bundle: str | None = None  # model.tar beside model.onnx, when the model is more than one file


def provenance(resolved: ResolvedModel) -> dict:
    return {"source_uri": resolved.uri, "model_name": resolved.name,
            "resolved_version": resolved.version, "run_id": resolved.run_id,
            "artifact_uri": resolved.artifact_uri}


def find_published(registry: Registry, resolved: ResolvedModel, options: ConversionOptions,
                   *, fresh: bool = False) -> ConversionResult | None:
    """The published result for this version and options, from the version's tags, or None.

    fresh=True trusts the tags `resolved` came with (just resolved: saves an MLflow round trip);
    otherwise the tags are read again, since a conversion may have published since.
    """
    tags = resolved.tags if fresh else registry.version_tags(resolved)
    raw = tags.get(options_tag(options))
    if not raw:
        return None
    record = json.loads(raw)
    if record.get("status") != "passed":
        return None
    return ConversionResult(onnx_uri=record["uri"], sha256=record["sha256"],
                            parity=record.get("parity", {}), cached=True, report=record,
                            bundle=record.get("bundle"))


def publish_tags(report: dict, uri: str | None, options: ConversionOptions) -> dict:
    """The model-version tags for one conversion report: headline tags plus its per-options record."""
    parity = report.get("parity", {})
    summary = {k: parity.get(k) for k in ("max_abs_err", "max_rel_err", "rtol", "atol", "samples", "passed")}
    record = {"status": report["status"], "precision": report.get("precision"),
              "opset": report.get("opset"), "parity": summary}
    tags = {TAG_STATUS: report["status"], TAG_PARITY: summary}
    if report["status"] == "passed":
        tags.update({TAG_ONNX_URI: uri, TAG_SHA256: report["sha256"], TAG_ERROR: ""})
        record.update(uri=uri, sha256=report["sha256"])
        if report.get("bundle"):
            record["bundle"] = report["bundle"]
        interface = {"inputs": report.get("inputs"), "outputs": report.get("outputs")}
        if all(isinstance(v, list) for v in interface.values()) and \
                len(json.dumps({**record, "interface": interface})) <= MAX_RECORD:
            # What the predictor serves, for the rollout's interface check without a download
            # (a larger one is read from conversion.json).
            record["interface"] = interface
    else:
        tags[TAG_ERROR] = str(report.get("error", ""))[:4000]
        record.update(error=tags[TAG_ERROR], reason=report.get("reason", "ConversionFailed"))
    tags[options_tag(options)] = record
    return tags


def convert_and_publish(registry: Registry, resolved: ResolvedModel,
                        options: ConversionOptions = ConversionOptions(), *,
                        work_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                        out_dir: str | Path | None = None) -> ConversionResult:
    """Convert `resolved` (reusing an earlier published result) and write it back to MLflow.

    A failed conversion is also written back (status, error, report artifact) and then re-raised;
    it never touches the tags of an earlier successful result of other options.
    """
    existing = find_published(registry, resolved, options)
    if existing is not None:
        if out_dir is not None:
            existing.local_dir = registry.download_dir(existing.onnx_uri, out_dir)
        return existing
    work = Path(work_dir or tempfile.mkdtemp(prefix="modelops-"))
    out = Path(out_dir) if out_dir else work / "onnx"
    src = registry.download(resolved, work / "source")
    artifact_path = f"modelops/onnx-{options.precision}-{options.key}"
    from .pipeline import convert_model_dir  # onnx, onnxruntime: only when converting

    try:
        report = convert_model_dir(src, out, options, cache_dir=cache_dir, provenance=provenance(resolved))
    except errors.ConversionError as exc:
        failed = json.loads((out / "conversion.json").read_text()) if (out / "conversion.json").exists() \
            else {"status": "failed", "error": str(exc), "reason": exc.reason}
        tags = publish_tags(failed, None, options)
        if registry.version_tags(resolved).get(TAG_STATUS) == "passed":
            # An earlier good result stays the headline (status, parity, uri, sha256 belong
            # together); this failure is kept in its per-options record and the error tag.
            tags = {k: v for k, v in tags.items() if k not in (TAG_STATUS, TAG_PARITY)}
            tags[TAG_ERROR] = f"{options.precision}/{options.key}: {tags[TAG_ERROR]}"
        if (out / "conversion.json").exists():
            registry.log_artifacts(resolved, out, artifact_path)
        registry.set_tags(resolved, tags)
        raise
    finally:
        shutil.rmtree(work / "source", ignore_errors=True)
    report["bundle"] = write_bundle(out)
    uri = registry.log_artifacts(resolved, out, artifact_path)
    registry.set_tags(resolved, publish_tags(report, uri, options))
    return ConversionResult(onnx_uri=uri, sha256=report["sha256"], parity=report["parity"],
                            cached=report.get("cached", False), report=report, local_dir=out,
                            bundle=report["bundle"])
