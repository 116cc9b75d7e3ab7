"""Dynamic axes from the signature, and a parity gate that samples them.

- a token encoder (ids + mask, both [-1, -1]) converts with dynamic batch and sequence axes,
  in MLflow's pt2 format (dynamo exporter) and pickled (TorchScript exporter), and the ONNX
  graph equals torch at sequence lengths 1, 7, 33 and the model's maximum;
- the gate's samples vary the sequence length and keep integers inside the example's range;
- an mlflow.onnx model is described by its graph: an array or JSON (float64) example converts,
  a signature that disagrees with the graph is refused naming the input.
"""

from __future__ import annotations

import json

import mlflow.onnx
import mlflow.pytorch
import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.models.signature import ModelSignature
from mlflow.types import Schema
from mlflow.types import TensorSpec as MlflowTensorSpec
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from modelops import errors
from modelops.conversion.export_torch import export_torch
from modelops.conversion.options import ConversionOptions
from modelops.conversion.parity import generate_samples
from modelops.conversion.pipeline import convert_model_dir
from modelops.conversion.source import load_source
from modelops.tensors import TensorSpec

VOCAB, MAX_LEN = 50, 64


class TokenEncoder(nn.Module):
    """Token + position embeddings, mean over the unmasked tokens, a linear head."""

    vocab_size = VOCAB
    max_position_embeddings = MAX_LEN

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, 16)
        self.pos = nn.Embedding(MAX_LEN, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.tok(input_ids) + self.pos(positions)[None]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))


def _batch(length: int, rows: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + length)
    ids = rng.integers(3, 40, size=(rows, length)).astype(np.int64)
    mask = np.ones((rows, length), np.int64)
    mask[1, max(1, length // 2):] = 0  # a right-padded row
    return ids, mask


SIGNATURE = ModelSignature(
    inputs=Schema([MlflowTensorSpec(np.dtype(np.int64), (-1, -1), "input_ids"),
                   MlflowTensorSpec(np.dtype(np.int64), (-1, -1), "attention_mask")]),
    outputs=Schema([MlflowTensorSpec(np.dtype(np.float32), (-1, 3))]))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return TokenEncoder().eval()


@pytest.fixture(scope="module", params=["pt2", "pickle"])
def converted(request, encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"encoder-{request.param}")
    ids, mask = _batch(9)
    if request.param == "pt2":  # MLflow's default: a tuple example traced by torch.export
        mlflow.pytorch.save_model(encoder, str(root / "model"), input_example=(ids, mask),
                                  signature=SIGNATURE, pip_requirements=["torch"])
    else:
        mlflow.pytorch.save_model(encoder, str(root / "model"), serialization_format="pickle",
                                  signature=SIGNATURE, input_example={"input_ids": ids, "attention_mask": mask},
                                  pip_requirements=["torch"])
    report = convert_model_dir(root / "model", root / "out")
    return request.param, root / "model", root / "out", report


def test_token_encoder_converts_with_dynamic_batch_and_sequence(converted, encoder):
    fmt, _, out, report = converted
    assert report["status"] == "passed", report
    on_disk = json.loads((out / "conversion.json").read_text())
    for name in ("input_ids", "attention_mask"):
        assert on_disk["dynamic_axes"][name] == {"0": "batch", "1": "sequence"}, (fmt, on_disk["dynamic_axes"])
    assert on_disk["dynamic_axes"]["output"]["0"] == "batch"
    shapes = {i["name"]: i["shape"] for i in report["inputs"]}
    assert shapes == {"input_ids": [-1, -1], "attention_mask": [-1, -1]}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for length in (1, 7, 33, MAX_LEN):
        ids, mask = _batch(length)
        (got,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            want = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{fmt} length {length}")


def test_the_module_tells_the_gate_its_limits(converted, tmp_path):
    """A pickled module says max_position_embeddings and vocab_size; a pt2 program keeps no
    attributes (the gate then samples up to twice the traced length)."""
    fmt, model_dir, _, report = converted
    assert report["parity"]["passed"] and report["parity"]["samples"] >= 64
    exported = export_torch(load_source(model_dir), ConversionOptions(), tmp_path / "m.onnx")
    assert exported.dynamic_axes["input_ids"] == {0: "batch", 1: "sequence"}
    if fmt == "pickle":
        assert exported.max_sizes == {"sequence": MAX_LEN} and exported.vocab_sizes == {"input_ids": VOCAB}
    else:
        assert exported.max_sizes == {} and exported.vocab_sizes == {}


@pytest.mark.parametrize("converted", ["pickle"], indirect=True)  # pt2's tuple example is not stored
def test_gate_samples_the_saved_example_range(converted):
    """What the pipeline feeds the gate for the pickled model: its saved example's range."""
    _, model_dir, _, _ = converted
    source = load_source(model_dir)
    example = source.input_example
    assert set(example) == {"input_ids", "attention_mask"}
    feeds = generate_samples(source.inputs, example, 64, 0, max_sizes={"sequence": MAX_LEN})
    assert {f["input_ids"].shape[1] for f in feeds} == {1, 9, MAX_LEN}
    for feed in feeds:
        ids = feed["input_ids"]
        assert example["input_ids"].min() <= ids.min() and ids.max() <= example["input_ids"].max()
        assert set(np.unique(feed["attention_mask"])) <= {0, 1}


class LengthBakingEncoder(TokenEncoder):
    """Divides by the sequence length as a Python float: the TorchScript tracer bakes the traced
    length into the graph, which is right at that length only."""

    def forward(self, input_ids, attention_mask):
        h = self.tok(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        return self.head(h.sum(1) / float(input_ids.shape[1]))


def test_gate_refuses_a_graph_specialised_to_one_sequence_length(tmp_path):
    torch.manual_seed(0)
    ids, mask = _batch(9)
    mlflow.pytorch.save_model(LengthBakingEncoder().eval(), str(tmp_path / "model"),
                              serialization_format="pickle", signature=SIGNATURE,
                              input_example={"input_ids": ids, "attention_mask": mask},
                              pip_requirements=["torch"])
    with pytest.raises(errors.ParityFailed):
        convert_model_dir(tmp_path / "model", tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


class PerTokenSeven(TokenEncoder):
    """[batch, sequence, 7]: the fixed 7 equals the traced sequence length."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 7)

    def forward(self, input_ids, attention_mask):
        return self.head(self.tok(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32))


def test_output_axes_follow_the_inputs_and_fixed_sizes_stay_fixed(tmp_path):
    torch.manual_seed(0)
    signature = ModelSignature(inputs=SIGNATURE.inputs,
                               outputs=Schema([MlflowTensorSpec(np.dtype(np.float32), (-1, -1, 7))]))
    mlflow.pytorch.save_model(PerTokenSeven().eval(), str(tmp_path / "model"), serialization_format="pickle",
                              signature=signature, pip_requirements=["torch"])
    report = convert_model_dir(tmp_path / "model", tmp_path / "out")
    assert report["dynamic_axes"]["output"] == {"0": "batch", "1": "sequence"}
    assert report["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, -1, 7]}]


def test_samples_vary_sequence_and_stay_inside_the_example():
    specs = [TensorSpec("input_ids", np.dtype(np.int64), (-1, -1)),
             TensorSpec("attention_mask", np.dtype(np.int64), (-1, -1))]
    ids, mask = _batch(9, rows=4)
    feeds = generate_samples(specs, {"input_ids": ids, "attention_mask": mask}, 40, 0,
                             max_sizes={"sequence": 33})
    lengths = set()
    for feed in feeds:
        f_ids, f_mask = feed["input_ids"], feed["attention_mask"]
        assert f_ids.shape == f_mask.shape and f_ids.dtype == f_mask.dtype == np.int64
        lengths.add(f_ids.shape[1])
        assert ids.min() <= f_ids.min() and f_ids.max() <= ids.max()
        assert set(np.unique(f_mask)) <= {0, 1}
        assert (f_mask[:, 0] == 1).all(), "every row keeps at least its first token"
        assert (np.diff(f_mask, axis=1) <= 0).all(), "right padding: ones, then zeros"
    assert lengths == {1, 9, 33}  # 1, the example's length, the maximum
    assert sum(len(f["input_ids"]) for f in feeds) >= 40
    # No example: ids within a known vocabulary, else [0, 10).
    with_vocab = generate_samples(specs, None, 8, 1, vocab_sizes={"input_ids": VOCAB})
    assert all(0 <= f["input_ids"].min() and f["input_ids"].max() < VOCAB for f in with_vocab)
    plain = generate_samples(specs, None, 8, 1)
    assert all(f["input_ids"].max() < 10 for f in plain)


def _linear_onnx():
    """X float32 [N, 4] -> X @ W, the input called X (not MLflow's default `input`)."""
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w


@pytest.mark.parametrize("kind", ["array", "dict"])
def test_onnx_flavor_takes_names_and_types_from_the_graph(tmp_path, kind):
    model, w = _linear_onnx()
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    example = x if kind == "array" else {"X": x}  # the dict comes back float64 (JSON)
    mlflow.onnx.save_model(model, str(tmp_path / "model"), input_example=example,
                           pip_requirements=["onnx"])
    report = convert_model_dir(tmp_path / "model", tmp_path / "out")
    assert report["status"] == "passed" and report["parity"]["samples"] > 5
    assert report["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"X": x})
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-6)


def test_onnx_signature_that_disagrees_with_the_graph_is_refused(tmp_path):
    model, _ = _linear_onnx()
    wrong = ModelSignature(inputs=Schema([MlflowTensorSpec(np.dtype(np.float32), (-1, 4, 1), "X")]))
    mlflow.onnx.save_model(model, str(tmp_path / "model"), signature=wrong, pip_requirements=["onnx"])
    with pytest.raises(errors.ConversionError) as exc:
        convert_model_dir(tmp_path / "model", tmp_path / "out")
    assert "'X'" in str(exc.value) and "rank 3" in str(exc.value) and "rank 2" in str(exc.value)
    assert not (tmp_path / "out" / "model.onnx").exists()
    report = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert report["reason"] == "ConversionFailed" and "'X'" in report["error"]
