"""PyTorch (mlflow.pytorch flavor) -> ONNX with a dynamic batch axis."""

from __future__ import annotations

import importlib
import io
import logging
import os
import pickle
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import errors
from ..artifacts import inside
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


_PT2_LOCK = threading.Lock()


def _resolve(name: str):
    """The object a pickle global names, if it is importable from installed code (not __main__)."""
    module, _, attr = name.rpartition(".")
    if not module or module == "__main__":
        return None
    try:
        obj = importlib.import_module(module)
    except Exception:
        return None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    return obj


def _load_pickled(pth: Path):
    """A pickled nn.Module with torch's restricted unpickler: only tensors, containers and
    torch.nn.Module classes installed here. Anything else (a __reduce__ calling os.system, a class
    pickled by value) is refused before a single opcode runs."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(pth))
    except Exception as exc:
        raise errors.UntrustedArtifact(f"{pth.name} is not a torch.save archive that can be checked: {exc}") from None
    trusted, refused = [], []
    for name in names:
        obj = _resolve(name)
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
            trusted.append(obj)
        else:
            refused.append(name)
    if refused:
        raise errors.UntrustedArtifact(
            f"the pickled PyTorch model ({pth.parent.name}/{pth.name}) names {sorted(refused)[:5]}, which "
            "are not torch.nn.Module classes installed here: unpickling it could run arbitrary code. Log "
            "the model with serialization_format='pt2' (MLflow's default)")
    with torch.serialization.safe_globals(trusted):
        try:
            return torch.load(str(pth), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise errors.UntrustedArtifact(f"torch's restricted unpickler refused {pth.name}: {reason}") from None


@contextmanager
def _pickle_free_pt2():
    """MLflow refuses a pt2 archive holding pickle payloads when this is false (torch.export.load
    would unpickle its weights unrestricted); one load at a time changes the variable."""
    with _PT2_LOCK:
        before = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
        os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
            else:
                os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = before


def load_torch_model(source: SourceModel):
    """The MLflow PyTorch model, loaded without running code from the artifact."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    conf = Model.load(str(source.path)).flavors["pytorch"]
    data = inside(source.path, conf.get("model_data", "data"), "the PyTorch flavor's model_data")
    if (data / "model.pth").exists():
        return _load_pickled(data / "model.pth")
    with _pickle_free_pt2():
        try:
            return mlflow.pytorch.load_model(str(source.path), map_location="cpu")
        except MlflowException as exc:
            if "pickle" in str(exc).lower():
                raise errors.UntrustedArtifact(f"refused the pt2 archive: {str(exc).splitlines()[0]}") from None
            raise errors.ConversionError(f"loading the PyTorch model failed: {exc}") from exc


def export_torch(source: SourceModel, options: ConversionOptions, out_path: Path) -> Exported:
    import torch

    if not source.inputs:
        raise errors.ConversionError(
            "PyTorch models need a tensor signature (log_model(..., signature=...) or input_example) "
            "to know input names, dtypes and shapes")
    model = load_torch_model(source)
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
