"""PyTorch (mlflow.pytorch flavor) -> ONNX; every -1 dimension of the signature is dynamic."""

from __future__ import annotations

import importlib
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
from .parity import axis_name
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


# Trace sizes: distinct per axis name so that no dimension is specialised to another's size.
TRACE_SIZES = {"batch": 2, "sequence": 7}
OTHER_TRACE_SIZES = (5, 6, 9, 10, 11, 12, 13)


def _config_value(model, *names: str) -> int | None:
    """An int attribute of the module's config (Hugging Face style) or of the module itself."""
    for holder in (getattr(model, "config", None), model):
        for name in names:
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _model_limits(model, source: SourceModel) -> tuple[dict[str, int], dict[str, int]]:
    """(largest size per axis name, vocabulary size per integer input), where the module says."""
    max_sizes = {}
    longest = _config_value(model, "max_position_embeddings", "max_seq_len", "max_sequence_length")
    if longest:
        max_sizes["sequence"] = longest
    vocab, types = _config_value(model, "vocab_size"), _config_value(model, "type_vocab_size")
    vocab_sizes = {}
    for spec in source.inputs:
        name = spec.name.lower()
        if np.dtype(spec.dtype).kind not in "iu" or "mask" in name:
            continue
        if "type" in name:
            if types:
                vocab_sizes[spec.name] = types
        elif vocab and "position" not in name:
            vocab_sizes[spec.name] = vocab
    return max_sizes, vocab_sizes


def _trace_shapes(source: SourceModel) -> tuple[list[list[int]], dict[str, dict[int, str]]]:
    """Per input: the shape to trace with, and its dynamic axes (every -1 of the signature)."""
    sizes = dict(TRACE_SIZES)
    others = iter(OTHER_TRACE_SIZES)
    shapes, axes = [], {}
    for spec in source.inputs:
        ex = (source.input_example or {}).get(spec.name)
        shape, dyn = [], {}
        for i, d in enumerate(spec.shape):
            if d > 0:
                shape.append(d)
                continue
            name = axis_name(spec.dtype, i)
            if name not in sizes:
                size = ex.shape[i] if ex is not None and ex.ndim > i else None
                sizes[name] = size if size and size > 1 and size not in sizes.values() else next(others)
            dyn[i] = name
            shape.append(sizes[name])
        shapes.append(shape)
        axes[spec.name] = dyn
    return shapes, axes


def _output_axes(first: list, second: list, sizes: dict[str, int]) -> list[dict[int, str]]:
    """Output axes named after the input axis they follow: the output's size is that axis's size
    in two runs whose sizes all differ (each axis name +1 in the second run), so a fixed output
    dimension that happens to equal a trace size (7 classes) stays fixed."""
    by_sizes = {(v, v + 1): k for k, v in sizes.items()}
    return [{i: by_sizes[(a, b)] for i, (a, b) in enumerate(zip(o1.shape, o2.shape)) if (a, b) in by_sizes}
            for o1, o2 in zip(first, second)]


def _graph_axes(path: Path) -> dict[str, dict[int, str]]:
    """The named (symbolic) dimensions of the written graph's inputs and outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: {i: d.dim_param for i, d in enumerate(v.type.tensor_type.shape.dim) if d.dim_param}
            for v in list(graph.input) + list(graph.output)}


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

    shapes, in_axes = _trace_shapes(source)
    sizes = {name: shape[i] for (spec, shape) in zip(source.inputs, shapes)
             for i, name in in_axes[spec.name].items()}
    example = []
    for spec, shape in zip(source.inputs, shapes):
        dtype = torch.from_numpy(np.zeros(0, spec.dtype)).dtype
        # Ones, not zeros: a mask of zeros divides by zero; ids of 1 are valid in any vocabulary.
        example.append(torch.ones(shape, dtype=dtype))
    with torch.no_grad():
        outputs = _as_list(model(*example))
    input_names = [s.name for s in source.inputs]
    output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    dynamic_axes = dict(in_axes)
    if not exported_program:  # the dynamo exporter names output axes itself
        grown = [torch.ones([d + 1 if i in in_axes[s.name] else d for i, d in enumerate(t.shape)],
                            dtype=t.dtype) for s, t in zip(source.inputs, example)]
        with torch.no_grad():
            second = _as_list(model(*grown))
        dynamic_axes.update(zip(output_names, _output_axes(outputs, second, sizes)))
    try:
        with _quiet_exporter():
            if exported_program:
                # One Dim per axis name: inputs whose axes share a name (ids and mask) must agree.
                dims = {name: torch.export.Dim(name) for name in sizes}
                program = torch.onnx.export(
                    model, tuple(example), input_names=input_names, output_names=output_names,
                    dynamic_shapes=tuple({i: dims[n] for i, n in in_axes[s.name].items()} or None
                                         for s in source.inputs),
                    opset_version=options.opset, dynamo=True, optimize=True, verbose=False,
                )
                program.save(str(out_path))  # external data when over 2 GB (pipeline normalizes it)
            else:
                # Pickled nn.Module: the TorchScript exporter takes ~0.2 s where dynamo takes ~2 s.
                torch.onnx.export(
                    model, tuple(example), str(out_path), input_names=input_names, output_names=output_names,
                    dynamic_axes={n: a for n, a in dynamic_axes.items() if a},
                    opset_version=options.opset, dynamo=False, do_constant_folding=True,
                )
    except Exception as exc:
        raise errors.ConversionError(f"torch.onnx.export failed: {exc}") from exc
    max_sizes, vocab_sizes = _model_limits(model, source)
    return Exported(reference=reference, inputs=list(source.inputs), dynamic_axes=_graph_axes(out_path),
                    max_sizes=max_sizes, vocab_sizes=vocab_sizes)
