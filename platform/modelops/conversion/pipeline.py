"""Convert one MLflow model directory to a validated ONNX artifact directory.

out_dir/model.onnx     the model to serve (only written when parity passed)
out_dir/conversion.json the report (always written, also for failures)
out_dir/tokenizer.json, text.json  text models only (modelops.text), written with model.onnx
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .. import __version__, errors
from ..tensors import TensorSpec
from ..text import TEXT_CONFIG_FILE, TOKENIZER_FILE, answer_specs, text_input_spec
from . import fusion, transforms
from .export_onnx import export_onnx
from .export_sklearn import export_sklearn
from .export_torch import export_torch
from .export_transformers import export_sentence_transformers, export_transformers
from .options import ConversionOptions
from .parity import ParityReport, compare, generate_samples
from .source import load_source
from .text_parity import run_text_parity, text_references

EXPORTERS = {"pytorch": export_torch, "sklearn": export_sklearn, "onnx": export_onnx,
             "transformers": export_transformers, "sentence_transformers": export_sentence_transformers}
MODEL_FILE = "model.onnx"
REPORT_FILE = "conversion.json"
DATA_FILE = MODEL_FILE + ".data"  # the weights of a large model (transforms.external_data_bytes)
EXTRA_FILES = (TEXT_CONFIG_FILE, TOKENIZER_FILE, DATA_FILE)  # served beside model.onnx; removed before a conversion


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(source_digest: str, options: ConversionOptions) -> str:
    blob = json.dumps({"source": source_digest, "options": options.identity()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _references(exported, example, options: ConversionOptions) -> list[tuple[dict, list[np.ndarray]]]:
    """The gate's feeds and the original model's outputs on each (needs the original model)."""
    feeds = []
    if example:
        feeds.append({s.name: np.ascontiguousarray(example[s.name]) for s in exported.inputs})
    feeds += generate_samples(exported.inputs, example, options.samples, options.seed,
                              dynamic_axes=exported.dynamic_axes, max_sizes=exported.max_sizes,
                              vocab_sizes=exported.vocab_sizes)
    return [(feed, exported.reference(feed)) for feed in feeds]


def _run_parity(session: ort.InferenceSession, references, options: ConversionOptions) -> ParityReport:
    rtol, atol = options.tolerance
    report = ParityReport(rtol=rtol, atol=atol)
    names = [o.name for o in session.get_outputs()]
    for feed, expected in references:
        actual = session.run(None, feed)
        compare(report, names, expected, actual, rows=len(next(iter(feed.values()))))
    return report


def _write_report(out_dir: Path, report: dict) -> None:
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True, default=str))


def convert_model_dir(
    model_dir: str | Path,
    out_dir: str | Path,
    options: ConversionOptions = ConversionOptions(),
    *,
    cache_dir: str | Path | None = None,
    provenance: dict | None = None,
) -> dict:
    """Convert, check, optimize, reduce precision, prove parity; return the report.

    Idempotent: with `cache_dir`, the same (source digest, options) reuses the earlier result.
    Raises `ParityFailed` (report written, model.onnx not) when the gate refuses the model.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, *EXTRA_FILES):
        (out_dir / name).unlink(missing_ok=True)

    source = load_source(model_dir)
    timings["load_s"] = time.perf_counter() - t0
    key = cache_key(source.digest, options)
    cached = Path(cache_dir) / key if cache_dir else None
    hit = cached and (cached / MODEL_FILE).exists() and (cached / REPORT_FILE).exists()
    report = json.loads((cached / REPORT_FILE).read_text()) if hit else {}
    extra = [name for name in report.get("files", {}) if name in EXTRA_FILES]
    if hit and all((cached / name).is_file() for name in extra):
        for name in (MODEL_FILE, *extra):
            shutil.copyfile(cached / name, out_dir / name)
        report.update(provenance or {}, cached=True)
        _write_report(out_dir, report)
        return report

    rtol, atol = options.tolerance
    report = {
        **(provenance or {}), "flavor": source.flavor, "opset": options.opset,
        "precision": options.precision, "source_digest": source.digest, "cache_key": key,
        "options": options.identity(), "cached": False, "status": "failed",
        "versions": {"modelops": __version__, "onnxruntime": ort.__version__},
    }
    with tempfile.TemporaryDirectory(prefix="modelops-conv-") as tmp:
        tmp = Path(tmp)
        # One directory per stage: each graph's external data file is `model.onnx.data` beside it.
        stages = ("export", "optimized", "fused", "final")
        exported_path, optimized, fused, final = (tmp / stage / MODEL_FILE for stage in stages)
        for path in (exported_path, optimized, fused, final):
            path.parent.mkdir()
        try:
            t = time.perf_counter()
            exported = EXPORTERS[source.flavor](source, options, exported_path)
            timings["export_s"] = time.perf_counter() - t
            report["dynamic_axes"] = {n: {str(a): d for a, d in axes.items()}
                                      for n, axes in exported.dynamic_axes.items()}
            # The original model's answers to the gate's samples first, then the model is freed:
            # it is never resident beside the ONNX graph (normalize, optimizer, parity session).
            t = time.perf_counter()
            if exported.text is not None:
                references = text_references(exported, options)
            else:
                references = _references(exported, exported.example or source.input_example, options)
            exported.release()
            gc.collect()
            timings["reference_s"] = time.perf_counter() - t
            t = time.perf_counter()
            transforms.normalize(exported_path)
            transforms.check(exported_path)
            transforms.optimize(exported_path, optimized)
            timings["optimize_s"] = time.perf_counter() - t
            t = time.perf_counter()
            # BERT-class text models: onnxruntime's transformer fusions; the plain graph otherwise.
            fusion_report = fusion.fuse(optimized, fused, exported.transformer, options.fusion)
            report["transformer_optimization"] = fusion_report
            graph = fused if fusion_report["applied"] else optimized
            timings["fusion_s"] = time.perf_counter() - t
            t = time.perf_counter()
            if options.precision == "fp16":
                transforms.to_fp16(graph, final)
            elif options.precision == "int8":
                transforms.to_int8(graph, final, fusion.INT8_OP_TYPES if fusion_report["applied"] else None)
            else:
                transforms.copy_model(graph, final)
            final_model = transforms.check(final)
            timings["precision_s"] = time.perf_counter() - t
            session = ort.InferenceSession(str(final), providers=["CPUExecutionProvider"])
            # The torch.export-based exporter needs opset >= 18 and may not convert down.
            report["opset"] = transforms.default_opset(final_model)
            report["opset_requested"] = options.opset
            report["inputs"] = [TensorSpec.from_ort(i).to_json() for i in session.get_inputs()]
            report["outputs"] = [TensorSpec.from_ort(o).to_json() for o in session.get_outputs()]
            if exported.text is not None:
                # What clients send and get (the rollout's interface check): text in, the
                # pipeline's answer out; the graph's token tensors are kept beside.
                report["graph"] = {"inputs": report["inputs"], "outputs": report["outputs"]}
                report["inputs"] = [text_input_spec().to_json()]
                report["outputs"] = [s.to_json() for s in answer_specs(
                    exported.text, [TensorSpec.from_ort(o) for o in session.get_outputs()])]
            t = time.perf_counter()
            if exported.text is not None:
                # Token-id tensors are not the model's input: texts through the served path are.
                report["text"] = exported.text.to_json()
                parity, report["text_parity"] = run_text_parity(session, exported, exported_path.parent, options,
                                                                references)
            else:
                parity = _run_parity(session, references, options)
            timings["parity_s"] = time.perf_counter() - t
        except errors.ModelOpsError as exc:
            report.update(error=str(exc), reason=exc.reason, timings=timings)
            _write_report(out_dir, report)
            raise
        except Exception as exc:  # an exporter's unexpected failure is still a conversion failure
            report.update(error=str(exc), reason="ConversionFailed", timings=timings)
            _write_report(out_dir, report)
            raise errors.ConversionError(f"{source.flavor} conversion failed: {exc}") from exc

        report["parity"] = parity.to_json()
        timings["total_s"] = time.perf_counter() - t0
        report["timings"] = timings
        if not parity.passed:
            report.update(reason="ParityFailed",
                          error=f"parity check failed (rtol={rtol}, atol={atol}): "
                                + "; ".join(parity.failures[:3]))
            _write_report(out_dir, report)
            raise errors.ParityFailed(
                f"ONNX output diverges from the original model: max_abs_err={parity.max_abs_err:.3g}, "
                f"max_rel_err={parity.max_rel_err:.3g} (rtol={rtol}, atol={atol}); "
                + "; ".join(parity.failures[:2])
                + ("; the graph was transformer-fused (fusion off: --no-fusion)" if fusion_report["applied"] else ""),
                report=report)
        report["status"] = "passed"
        report["sha256"] = file_sha256(final)
        served = dict(exported.extra_files)
        if transforms.data_file(final).exists():
            served[DATA_FILE] = transforms.data_file(final)
        report["files"] = {name: file_sha256(path) for name, path in served.items()}
        for name, path in served.items():
            shutil.copyfile(path, out_dir / name)
        shutil.copyfile(final, out_dir / MODEL_FILE)
        _write_report(out_dir, report)
    if cached:
        cached.mkdir(parents=True, exist_ok=True)
        for name in (*report["files"], MODEL_FILE):
            shutil.copyfile(out_dir / name, cached / name)
        _write_report(cached, report)
    return report
