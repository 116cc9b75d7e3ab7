"""Model artifacts are untrusted input: checks that run before anything is deserialized.

Shared by the converter (the MLflow model directory it downloaded) and the predictor (the ONNX
directory KServe's storage initializer left in /mnt/models). Each refusal is an
`UntrustedArtifact` (or `InvalidOnnxModel`) whose message names the file and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidOnnxModel, UntrustedArtifact


def inside(root: Path, relative: str, what: str) -> Path:
    """ROOT/RELATIVE, refused when it leaves ROOT (absolute, `..`, or through a symlink)."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative) or "\0" in relative:
        raise UntrustedArtifact(f"{what} {relative!r} is not a relative path inside {root}")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UntrustedArtifact(f"{what} {relative!r} points outside the model directory {root}")
    return target


def check_tree(root: str | Path) -> None:
    """Refuse a model directory holding a symlink that leads out of it (or a dangling one)."""
    root = Path(root)
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            target = p.resolve()
            if (target != base and base not in target.parents) or not target.exists():
                raise UntrustedArtifact(
                    f"model directory {root} contains a symlink {p.relative_to(base)} -> {os.readlink(p)} "
                    f"that leads outside it")


def _graph_tensors(graph):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def check_onnx(path: str | Path):
    """Parse an ONNX file without its external data; refuse it when it is not a model or names
    external data outside its directory. Returns the ModelProto (external data not loaded)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidOnnxModel(f"{path.name} is not an ONNX model: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise InvalidOnnxModel(f"{path.name} is not an ONNX model (no IR version or graph)")
    tensors = list(_graph_tensors(model.graph))
    for function in model.functions:
        tensors += list(_node_tensors(function.node))
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        inside(path.parent, location, f"external data of tensor '{tensor.name}' in {path.name}")
    return model
