"""scikit-learn (mlflow.sklearn flavor, pipelines included) -> ONNX with skl2onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import errors
from ..artifacts import inside
from ..tensors import TensorSpec
from .exported import Exported
from .options import ConversionOptions
from .source import SourceModel


def _final_estimator(model):
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def _scikit_learn_class(name: str) -> bool:
    import importlib

    module, _, attr = name.rpartition(".")
    if not (module == "sklearn" or module.startswith("sklearn.")):
        return False
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except Exception:
        return False
    return isinstance(obj, type)


def load_sklearn_model(source: SourceModel):
    """The MLflow scikit-learn model through skops, never pickle.

    The model's own `skops_trusted_types` are not enough (a crafted MLmodel could list
    `posix.system`): a type skops does not trust by default is accepted only when it is listed
    there AND is a scikit-learn class (e.g. sklearn.tree._tree.Tree for tree ensembles).
    """
    import skops.io
    from mlflow.models import Model

    conf = Model.load(str(source.path)).flavors["sklearn"]
    fmt = conf.get("serialization_format", "pickle")
    if fmt != "skops":
        raise errors.UntrustedArtifact(
            f"the scikit-learn model is saved as {fmt}: unpickling it could run arbitrary code; log it "
            "with serialization_format='skops' (MLflow's default) and skops_trusted_types")
    path = inside(source.path, conf.get("pickled_model", "model.skops"), "the scikit-learn flavor's model file")
    try:
        untrusted = skops.io.get_untrusted_types(file=str(path))
    except Exception as exc:
        raise errors.UntrustedArtifact(f"{path.name} is not a skops file that can be checked: {exc}") from None
    declared = set(conf.get("skops_trusted_types") or [])
    refused = sorted(t for t in untrusted if t not in declared or not _scikit_learn_class(t))
    if refused:
        raise errors.UntrustedArtifact(
            f"the scikit-learn model holds types skops does not trust: {refused[:5]}; only scikit-learn "
            "classes listed in skops_trusted_types at log time are loaded")
    try:
        return skops.io.load(str(path), trusted=sorted(untrusted))
    except Exception as exc:
        raise errors.ConversionError(f"loading the scikit-learn model failed: {exc}") from exc


def export_sklearn(source: SourceModel, options: ConversionOptions, out_path: Path) -> Exported:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

    model = load_sklearn_model(source)

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
