"""What an MLflow model directory holds: flavor, input specs from the signature, input example."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import errors
from ..artifacts import check_tree, inside
from ..tensors import TensorSpec

# In preference order: a transformers / sentence_transformers directory may also list pytorch or
# python_function, and its own flavor is the one that knows the tokenizer.
SUPPORTED_FLAVORS = ("onnx", "transformers", "sentence_transformers", "pytorch", "sklearn")


@dataclass
class SourceModel:
    path: Path
    flavor: str
    flavors: tuple[str, ...]
    inputs: list[TensorSpec] | None  # None when the model has no tensor signature
    input_example: dict[str, np.ndarray] | None
    digest: str


def directory_digest(path: Path) -> str:
    """sha256 over every file's relative path and bytes: the identity of the source artifacts."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def pick_flavor(flavors: dict) -> str:
    for flavor in SUPPORTED_FLAVORS:
        if flavor in flavors:
            return flavor
    found = sorted(f for f in flavors if f != "python_function") or ["python_function only"]
    raise errors.UnsupportedFlavor(
        f"unsupported MLflow flavor {', '.join(found)}; supported flavors: {', '.join(SUPPORTED_FLAVORS)}",
        flavors=found,
    )


def _signature_inputs(mlmodel) -> list[TensorSpec] | None:
    sig = mlmodel.signature
    if sig is None or sig.inputs is None:
        return None
    schema = sig.inputs
    if schema.is_tensor_spec():
        specs = []
        for i, spec in enumerate(schema.inputs):
            name = spec.name or ("input" if len(schema.inputs) == 1 else f"input_{i}")
            specs.append(TensorSpec(name, np.dtype(spec.type), tuple(spec.shape)))
        return specs
    # Column signature (DataFrame): one 2-D tensor, columns in signature order.
    dtypes = {np.dtype(t) for t in schema.numpy_types()}
    if len(dtypes) != 1:
        raise errors.ConversionError(
            f"column signature mixes types {sorted(map(str, dtypes))}; ONNX conversion needs one "
            "numeric type for all columns (log the model with a tensor signature)")
    return [TensorSpec("input", dtypes.pop(), (-1, len(schema.inputs)))]


def _example_arrays(example, inputs: list[TensorSpec] | None) -> dict[str, np.ndarray] | None:
    if example is None:
        return None
    if isinstance(example, dict):
        arrays = {k: np.asarray(v) for k, v in example.items()}
    else:
        try:
            import pandas as pd

            if isinstance(example, pd.DataFrame):
                example = example.to_numpy()
        except ImportError:  # pragma: no cover - pandas ships with mlflow
            pass
        arrays = {inputs[0].name if inputs else "input": np.asarray(example)}
    if inputs:
        by_name = {s.name: s for s in inputs}
        if len(arrays) == 1 and len(inputs) == 1:
            arrays = {inputs[0].name: next(iter(arrays.values()))}
        arrays = {k: v.astype(by_name[k].dtype) if k in by_name else v for k, v in arrays.items()}
    return arrays


def load_source(path: str | Path) -> SourceModel:
    from mlflow.models import Model

    path = Path(path)
    check_tree(path)  # a symlink out of the directory is refused before any file is read
    try:
        mlmodel = Model.load(str(path))
    except Exception as exc:
        raise errors.ConversionError(f"{path} is not an MLflow model directory: {exc}") from exc
    flavor = pick_flavor(mlmodel.flavors)
    inputs = _signature_inputs(mlmodel)
    example_info = mlmodel.saved_input_example_info or {}
    if example_info.get("artifact_path"):
        inside(path, example_info["artifact_path"], "the input example")
    try:
        example = mlmodel.load_input_example(str(path))
    except Exception:  # an unreadable example is not fatal: samples come from the signature
        example = None
    return SourceModel(
        path=path, flavor=flavor, flavors=tuple(mlmodel.flavors), inputs=inputs,
        input_example=_example_arrays(example, inputs), digest=directory_digest(path),
    )
