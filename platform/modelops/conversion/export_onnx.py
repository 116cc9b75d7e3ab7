"""ONNX passthrough (mlflow.onnx flavor): the original graph is the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .. import errors
from ..artifacts import check_onnx, inside
from ..tensors import TensorSpec
from . import transforms
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
    # MLflow may store weights as external data beside model.onnx, in any layout: written again
    # as one graph file, plus one external data file when the weights are large (transforms.save).
    try:
        transforms.save(onnx.load(str(src)), out_path)
    except Exception as exc:
        raise errors.InvalidOnnxModel(f"cannot read the ONNX model {src.name}: {exc}") from exc
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise errors.InvalidOnnxModel(f"onnxruntime cannot load the ONNX model: {exc}") from exc
    graph = [TensorSpec.from_ort(i) for i in session.get_inputs()]
    inputs = reconcile_inputs(graph, source.inputs)
    example = reconcile_example(inputs, source.input_example, source.inputs)
    axes = {}
    for node in list(session.get_inputs()) + list(session.get_outputs()):
        axes[node.name] = {i: d for i, d in enumerate(node.shape) if isinstance(d, str) and d}

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, feeds)

    return Exported(reference=reference, inputs=inputs, dynamic_axes=axes, example=example)


def _renamed(graph: list[TensorSpec], declared: list[TensorSpec], what: str) -> dict[str, str]:
    """declared name -> graph name: the same names, or the only input under another name (MLflow
    calls an unnamed tensor `input`). Anything else is a disagreement, named."""
    names = [g.name for g in graph]
    if len(graph) == 1 and len(declared) == 1:
        return {declared[0].name: names[0]}
    unknown = sorted(d.name for d in declared if d.name not in names)
    if unknown or len(declared) != len(graph):
        missing = sorted(set(names) - {d.name for d in declared})
        raise errors.ConversionError(
            f"the {what} does not match the ONNX graph's inputs {names}: "
            + (f"unknown input(s) {unknown}" if unknown else "")
            + ("; " if unknown and missing else "") + (f"missing input(s) {missing}" if missing else ""))
    return {d.name: d.name for d in declared}


def _check_shape(name: str, graph_shape: tuple, shape: tuple, what: str, dynamic_ok: bool) -> None:
    if len(shape) != len(graph_shape):
        raise errors.ConversionError(
            f"input {name!r}: the {what} has rank {len(shape)} {list(shape)}, the ONNX graph takes "
            f"rank {len(graph_shape)} {list(graph_shape)}")
    for axis, (g, d) in enumerate(zip(graph_shape, shape)):
        if g > 0 and d != g and not (dynamic_ok and d < 0):
            raise errors.ConversionError(
                f"input {name!r}: the {what} gives size {d} on axis {axis}, the ONNX graph fixes it "
                f"to {g}")


def reconcile_inputs(graph: list[TensorSpec], signature: list[TensorSpec] | None) -> list[TensorSpec]:
    """The graph's input names and element types; a dimension the graph leaves dynamic keeps the
    signature's fixed size when it gives one."""
    if not signature:
        return graph
    rename = _renamed(graph, signature, "MLflow signature")
    declared = {rename[s.name]: s for s in signature}
    out = []
    for g in graph:
        sig = declared[g.name]
        _check_shape(g.name, g.shape, sig.shape, "MLflow signature", dynamic_ok=True)
        shape = tuple(d if d > 0 and gd < 0 and axis > 0 else gd
                      for axis, (gd, d) in enumerate(zip(g.shape, sig.shape)))
        out.append(TensorSpec(g.name, g.dtype, shape))
    return out


def reconcile_example(inputs: list[TensorSpec], example: dict[str, np.ndarray] | None,
                      signature: list[TensorSpec] | None = None) -> dict[str, np.ndarray] | None:
    """The input example keyed by graph names and cast to the graph's element types (MLflow keeps
    examples as JSON: float32 comes back float64)."""
    if not example:
        return None
    declared = [TensorSpec(k, np.asarray(v).dtype, np.shape(v)) for k, v in example.items()]
    rename = _renamed(inputs, declared, "input example")
    by_name = {s.name: s for s in inputs}
    out = {}
    for key, value in example.items():
        spec = by_name[rename[key]]
        arr = np.asarray(value)
        _check_shape(spec.name, spec.shape, arr.shape, "input example", dynamic_ok=False)
        if arr.dtype.kind in "fiub" and np.dtype(spec.dtype).kind in "fiub":
            arr = arr.astype(spec.dtype)
        elif arr.dtype != np.dtype(spec.dtype):
            raise errors.ConversionError(
                f"input {spec.name!r}: the input example holds {arr.dtype}, the ONNX graph takes "
                f"{np.dtype(spec.dtype)}")
        out[spec.name] = np.ascontiguousarray(arr)
    return out
