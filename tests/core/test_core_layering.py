"""Each image installs one extra: the predictor has no torch/MLflow, the operator no torch."""

import subprocess
import sys

BLOCK = "import sys\nfor m in {mods!r}: sys.modules[m] = None  # importing it now raises ImportError\n"


def run_without(mods: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(mods=mods) + code],
                          capture_output=True, text=True, timeout=120)


def test_predictor_runs_without_torch_mlflow_or_kopf(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "model.onnx")
    r = run_without(("torch", "mlflow", "sklearn", "skl2onnx", "kopf"), f"""
import asyncio, numpy as np
from modelops.cli import build_parser
from modelops.serving.server import build
server, model = build({str(tmp_path)!r}, "relu", http_port=0, grpc_port=0)
assert model.ready, model.not_ready_reason
out = asyncio.run(model.infer({{"x": np.array([[-1, 2, -3, 4]], np.float32)}}))
print(out[0].tolist())
""")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[[0.0, 2.0, 0.0, 4.0]]"
    assert np  # numpy is a base dependency


def test_operator_reads_published_conversions_without_torch():
    r = run_without(("torch", "sklearn", "skl2onnx"), """
from modelops_operator.main import parse_args
from modelops.conversion import ConversionOptions, find_published
from modelops.registry import Registry
print("ok")
""")
    assert r.returncode == 0, r.stderr[-2000:]


def test_rollout_engine_needs_no_kubernetes_kopf_or_mlflow():
    """The engine, analysis, providers and hooks are pure modelops: local mode runs them too."""
    r = run_without(("kopf", "kubernetes", "mlflow", "torch"), """
import modelops.rollout, modelops.rollout.providers, modelops.rollout.hooks, modelops.rollout.history
print("ok")
""")
    assert r.returncode == 0, r.stderr[-2000:]
