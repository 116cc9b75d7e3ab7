"""ONNX passthrough (mlflow.onnx flavor): the original graph is the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .. import errors
from ..artifacts import check_onnx, inside
from ..tensors import TensorSpec
from .exported import Exported
from .options import ConversionOptions
from .source import SourceModel


def export_onnx(source: SourceModel, options: ConversionOptions, out_path: Path) -> Exported:
    from mlflow.models import Model

    conf = Model.load(str(source.path)).flavors["onnx"]
    src = inside(source.path, conf.get("data", "model.onnx"), "the ONNX flavor's data")
    if not src.exists():
        raise errors.ConversionError(f"ONNX flavor points at {src.name}, which is missing")
    check_onnx(src)  # not a model, or external data outside the directory: refused before loading
    # MLflow may store weights as external data beside model.onnx: inline them into one file.
    try:
        onnx.save_model(onnx.load(str(src)), str(out_path), save_as_external_data=False)
    except Exception as exc:
        raise errors.InvalidOnnxModel(f"cannot read the ONNX model {src.name}: {exc}") from exc
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise errors.InvalidOnnxModel(f"onnxruntime cannot load the ONNX model: {exc}") from exc
    inputs = source.inputs or [TensorSpec.from_ort(i) for i in session.get_inputs()]

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, feeds)

    return Exported(reference=reference, inputs=inputs)
