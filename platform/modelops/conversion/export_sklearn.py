"""scikit-learn (mlflow.sklearn flavor, pipelines included) -> ONNX with skl2onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import errors
from ..tensors import TensorSpec
from .exported import Exported
from .options import ConversionOptions
from .source import SourceModel


def _final_estimator(model):
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def export_sklearn(source: SourceModel, options: ConversionOptions, out_path: Path) -> Exported:
    import mlflow.sklearn
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

    # Loading honours the skops_trusted_types recorded at log time; untrusted types fail here.
    try:
        model = mlflow.sklearn.load_model(str(source.path))
    except Exception as exc:
        raise errors.ConversionError(f"loading the scikit-learn model failed: {exc}") from exc

    inputs = source.inputs
    if not inputs:
        n = getattr(model, "n_features_in_", None)
        if n is None:
            raise errors.ConversionError("scikit-learn model has no signature and no n_features_in_")
        inputs = [TensorSpec("input", np.dtype(np.float32), (-1, int(n)))]
    if len(inputs) != 1:
        raise errors.ConversionError("scikit-learn conversion supports exactly one input tensor")
    spec = inputs[0]
    onnx_type = {np.dtype(np.float32): FloatTensorType, np.dtype(np.float64): DoubleTensorType,
                 np.dtype(np.int64): Int64TensorType}.get(np.dtype(spec.dtype))
    if onnx_type is None:
        raise errors.ConversionError(f"unsupported scikit-learn input dtype {spec.dtype}")

    final = _final_estimator(model)
    is_classifier = hasattr(final, "predict_proba")
    conv_options = {type(final): {"zipmap": False}} if is_classifier else None
    try:
        onx = to_onnx(
            model, initial_types=[(spec.name, onnx_type([None, *spec.shape[1:]]))],
            target_opset={"": options.opset, "ai.onnx.ml": 3}, options=conv_options,
        )
    except Exception as exc:
        raise errors.ConversionError(f"skl2onnx could not convert {type(model).__name__}: {exc}") from exc
    out_path.write_bytes(onx.SerializeToString())

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[spec.name]
        if is_classifier:
            return [np.asarray(model.predict(x)), np.asarray(model.predict_proba(x))]
        return [np.asarray(model.predict(x)).reshape(len(x), -1)]

    return Exported(reference=reference, inputs=[spec])
