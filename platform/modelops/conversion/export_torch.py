"""PyTorch (mlflow.pytorch flavor) -> ONNX with a dynamic batch axis."""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import errors
from .exported import Exported
from .options import ConversionOptions
from .source import SourceModel


@contextmanager
def _quiet_exporter():
    """The exporter warns about torchvision ops and opset upgrades on every call: keep errors only."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _as_list(out) -> list:
    if isinstance(out, (tuple, list)):
        return list(out)
    if isinstance(out, dict):
        return list(out.values())
    return [out]


def export_torch(source: SourceModel, options: ConversionOptions, out_path: Path) -> Exported:
    import mlflow.pytorch
    import torch

    if not source.inputs:
        raise errors.ConversionError(
            "PyTorch models need a tensor signature (log_model(..., signature=...) or input_example) "
            "to know input names, dtypes and shapes")
    model = mlflow.pytorch.load_model(str(source.path), map_location="cpu")
    try:
        model.eval()
        exported_program = False
    except NotImplementedError:
        # MLflow 3's default "pt2" format loads as a torch.export GraphModule: already in
        # inference mode, and only the torch.export-based ONNX exporter can take it.
        exported_program = True

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = model(*[torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in source.inputs])
        return [o.detach().cpu().numpy() for o in _as_list(out)]

    # Trace with batch 2 so no dimension is specialised to 1; the batch axis is then made dynamic.
    example = []
    for spec in source.inputs:
        shape = [2 if i == 0 else (d if d > 0 else 8) for i, d in enumerate(spec.shape)]
        if source.input_example and spec.name in source.input_example:
            shape = [2] + list(source.input_example[spec.name].shape[1:])
        example.append(torch.zeros(shape, dtype=torch.from_numpy(np.zeros(0, spec.dtype)).dtype))
    with torch.no_grad():
        n_out = len(_as_list(model(*example)))
    input_names = [s.name for s in source.inputs]
    output_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    dynamic_axes = {n: {0: "batch"} for n in input_names + output_names}
    buf = io.BytesIO()
    try:
        with _quiet_exporter():
            if exported_program:
                batch = torch.export.Dim("batch")
                program = torch.onnx.export(
                    model, tuple(example), input_names=input_names, output_names=output_names,
                    dynamic_shapes=tuple({0: batch} for _ in example), opset_version=options.opset,
                    dynamo=True, optimize=True, verbose=False,
                )
                program.save(str(out_path), external_data=False)
            else:
                # Pickled nn.Module: the TorchScript exporter takes ~0.2 s where dynamo takes ~2 s.
                torch.onnx.export(
                    model, tuple(example), buf, input_names=input_names, output_names=output_names,
                    dynamic_axes=dynamic_axes, opset_version=options.opset, dynamo=False,
                    do_constant_folding=True,
                )
                out_path.write_bytes(buf.getvalue())
    except Exception as exc:
        raise errors.ConversionError(f"torch.onnx.export failed: {exc}") from exc
    return Exported(reference=reference, inputs=list(source.inputs))
