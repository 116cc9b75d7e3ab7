"""A deliberately bad model version for canary tests, made by our own code from a good one."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def poisoned_copy(model_file: Path, out_dir: Path, limit: float = 50.0) -> Path:
    """The same model plus a guard that fails at run time when any input[:, 0] > `limit`: it asks
    onnxruntime for a 10^15-element Range, which fails to allocate (FAIL, not a refused input),
    so the predictor answers 500 (`InferenceFailed`), as a model broken on some inputs would."""
    m = onnx.load(str(model_file))
    g = m.graph
    x = g.input[0].name
    out = g.output[0].name
    for node in g.node:  # the old output becomes an intermediate value
        node.output[:] = [f"{out}__pre" if o == out else o for o in node.output]
    g.initializer.extend([
        helper.make_tensor("guard_starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("guard_ends", TensorProto.INT64, [1], [1]),
        helper.make_tensor("guard_axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("guard_limit", TensorProto.FLOAT, [], [limit]),
        helper.make_tensor("guard_zero_i", TensorProto.INT64, [], [0]),
        helper.make_tensor("guard_one_i", TensorProto.INT64, [], [1]),
        helper.make_tensor("guard_huge", TensorProto.INT64, [], [10 ** 15]),
    ])
    g.node.extend([
        helper.make_node("Slice", [x, "guard_starts", "guard_ends", "guard_axes"], ["guard_first"]),
        helper.make_node("Greater", ["guard_first", "guard_limit"], ["guard_big"]),
        helper.make_node("Cast", ["guard_big"], ["guard_big_i"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["guard_big_i"], ["guard_any"], keepdims=0),
        helper.make_node("Mul", ["guard_any", "guard_huge"], ["guard_n"]),
        helper.make_node("Range", ["guard_zero_i", "guard_n", "guard_one_i"], ["guard_range"]),  # n=0: empty
        helper.make_node("Cast", ["guard_range"], ["guard_range_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["guard_range_f"], ["guard_zero"], keepdims=0),  # 0.0 when it runs
        helper.make_node("Add", [f"{out}__pre", "guard_zero"], [out]),
    ])
    onnx.checker.check_model(m)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out_dir / "model.onnx"))
    return out_dir
