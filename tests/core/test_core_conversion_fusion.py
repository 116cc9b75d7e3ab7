"""Transformer fusion of BERT-class text models (conversion.fusion): seeded tiny models, nothing
downloaded. The fused graph (com.microsoft Attention, SkipLayerNormalization...) passes the same
parity gate, is served by the predictor's model with the unfused graph's answers, in fp32, fp16
and int8; a graph the optimizer cannot fuse falls back to the plain graph with the reason; the
option turns it off."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelops.conversion import ConversionOptions, convert_model_dir, fusion, transforms
from modelops.demo import text_models
from modelops.serving.onnx_model import OnnxModel
from modelops.words import seeded_texts

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

TINY_LAYERS = text_models.SHAPES["tiny"][0]
TEXTS = ["", "good great best", "awful worst bad movie", "Hello, World! THE movie was GOOD?? 😀",
         *seeded_texts(12, seed=5, max_words=40)]


def ops(out: Path) -> list[tuple[str, str]]:
    return [(n.domain, n.op_type) for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node]


def ms_ops(out: Path) -> set[str]:
    return {op for domain, op in ops(out) if domain == "com.microsoft"}


def served(out: Path) -> OnnxModel:
    model = OnnxModel("m", out, device="cpu", batching=None)
    assert model.load(), model.not_ready_reason
    return model


def predictions(out: Path, texts: list[str]) -> list:
    """What `:predict` answers (v1, text in), each text alone and all in one padded batch."""
    model = served(out)
    alone = [asyncio.run(model.predict({"instances": [t]}))["predictions"][0] for t in texts]
    return alone + asyncio.run(model.predict({"instances": texts}))["predictions"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fusion")


@pytest.fixture(scope="module")
def classifier(work) -> Path:
    return text_models.save_text_classifier(work / "clf", shape="tiny")


@pytest.fixture(scope="module")
def plain(classifier, work):
    out = work / "clf-plain"
    return out, convert_model_dir(classifier, out, ConversionOptions(fusion=False))


@pytest.fixture(scope="module")
def fused(classifier, work):
    out = work / "clf-fused"
    return out, convert_model_dir(classifier, out)


def test_fused_classifier_passes_parity_and_serves_the_unfused_answers(plain, fused):
    (plain_dir, plain_report), (fused_dir, report) = plain, fused
    opt = report["transformer_optimization"]
    assert opt["applied"] is True and "reason" not in opt
    assert opt["fused"]["Attention"] == TINY_LAYERS and opt["fused"]["SkipLayerNormalization"] == 2 * TINY_LAYERS
    assert all(n > 0 for n in opt["fused"].values())
    assert opt["transformer"] == {"model_type": "bert", "hf_model_type": "bert", "num_heads": 2, "hidden_size": 32}
    # What the report counts is what the served file holds.
    assert [op for _, op in ops(fused_dir)].count("Attention") == TINY_LAYERS
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= ms_ops(fused_dir)
    assert report["status"] == "passed" and report["parity"]["passed"] is True
    assert report["parity"]["max_abs_err"] <= 1e-4 and report["text_parity"]["label_agreement"] == 1.0
    assert report["text_parity"]["texts"] >= 64 and max(report["text_parity"]["batch_sizes"]) > 1
    assert report["options"]["fusion"] is True and "fusion_s" in report["timings"]
    # fusion=False: the plain graph, said so.
    assert plain_report["transformer_optimization"]["applied"] is False
    assert plain_report["transformer_optimization"]["reason"] == fusion.DISABLED
    assert plain_report["options"]["fusion"] is False and plain_report["cache_key"] != report["cache_key"]
    assert not ms_ops(plain_dir)
    # The predictor's model on both: the same labels, the same scores.
    want, got = predictions(plain_dir, TEXTS), predictions(fused_dir, TEXTS)
    assert [p["label"] for p in got] == [p["label"] for p in want]
    assert np.allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-4)
    assert len({p["label"] for p in want}) > 1  # the labels vary: the comparison is not vacuous


def test_fused_sentence_transformer_embeds_what_the_plain_one_does(work):
    src = text_models.save_sentence_transformer(work / "st", shape="tiny")
    fused_dir, plain_dir = work / "st-fused", work / "st-plain"
    report = convert_model_dir(src, fused_dir)
    convert_model_dir(src, plain_dir, ConversionOptions(fusion=False, samples=8))
    opt = report["transformer_optimization"]
    assert opt["applied"] is True and opt["fused"]["Attention"] == TINY_LAYERS
    assert report["parity"]["passed"] is True and report["text_parity"]["over_limit"] >= 1
    assert "Attention" in ms_ops(fused_dir) and not ms_ops(plain_dir)
    vectors = {}
    for name, out in (("fused", fused_dir), ("plain", plain_dir)):
        vectors[name], tokens = asyncio.run(served(out).embed(TEXTS))
        assert tokens > len(TEXTS)
    assert np.abs(vectors["fused"] - vectors["plain"]).max() <= 1e-4
    assert np.allclose(np.linalg.norm(vectors["fused"], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_of_the_fused_graph_passes_parity(classifier, plain, work, precision):
    out = work / f"clf-fused-{precision}"
    report = convert_model_dir(classifier, out, ConversionOptions(precision=precision))
    assert report["transformer_optimization"]["applied"] is True
    assert report["precision"] == precision and report["parity"]["passed"] is True
    assert (report["parity"]["rtol"], report["parity"]["atol"]) == ConversionOptions(precision=precision).tolerance
    graph = onnx.load(str(out / "model.onnx"))
    kinds = {op for _, op in ops(out)}
    if precision == "fp16":
        assert {"Attention", "SkipLayerNormalization"} <= kinds
        floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        weights = [t for t in graph.graph.initializer if t.data_type in floats]
        assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in weights) > len(weights) / 2
        # Clients keep sending and getting what the fp32 graph takes.
        assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [onnx.TensorProto.INT64] * 3
        assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    else:
        assert {"MatMulInteger", "DynamicQuantizeLinear"} <= kinds
        assert kinds & {"Attention", "QAttention"}
    want, got = predictions(plain[0], TEXTS), predictions(out, TEXTS)
    agree = np.mean([g["label"] == w["label"] for g, w in zip(got, want)])
    assert agree >= 0.9, agree


def test_graphs_the_optimizer_cannot_fuse_keep_the_plain_graph(plain, fused, work):
    """Wrong head counts and a graph with no attention: the reason is said, nothing is written."""
    _, report = fused
    plain_dir = plain[0]  # the same classifier converted with fusion off: fused here by hand
    right = report["transformer_optimization"]["transformer"]
    dst = work / "by-hand" / "model.onnx"
    dst.parent.mkdir()
    assert fusion.fuse(plain_dir / "model.onnx", dst, right)["applied"] is True and dst.is_file()
    dst.unlink()
    wrong = fusion.fuse(plain_dir / "model.onnx", dst, {**right, "num_heads": 4})
    assert wrong["applied"] is False and wrong["reason"].startswith("no Attention fused") and wrong["fused"]
    raised = fusion.fuse(plain_dir / "model.onnx", dst, {**right, "num_heads": 3})  # 32 % 3 != 0
    assert raised["applied"] is False and raised["reason"].startswith("the optimizer raised")
    # A graph with no attention at all.
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    mlp = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("Relu", ["h"], ["y"])],
        "mlp", [x], [y], [w]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(mlp, str(work / "mlp.onnx"))
    none = fusion.fuse(work / "mlp.onnx", dst, right)
    assert none == {"applied": False, "fused": {}, "reason": "no Attention fused", "transformer": right}
    assert not dst.exists()
    assert fusion.fuse(work / "mlp.onnx", dst, None)["reason"] == "not a BERT-class transformer"
    assert fusion.fuse(work / "mlp.onnx", dst, right, enabled=False)["reason"] == fusion.DISABLED


def test_a_model_whose_attention_does_not_fuse_still_converts(work):
    """MPNet (relative position bias): the optimizer fuses its LayerNorms, no Attention; the
    conversion keeps the plain graph and says why."""
    import mlflow.transformers
    import torch
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    layers, hidden, heads, inter, max_pos = text_models.SHAPES["tiny"]
    config = MPNetConfig(vocab_size=len(text_models.vocabulary()), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=max_pos + 2,
                         pad_token_id=0, num_labels=3, id2label=dict(enumerate(text_models.LABELS)),
                         label2id={v: k for k, v in enumerate(text_models.LABELS)})
    src = work / "mpnet"
    mlflow.transformers.save_model({"model": MPNetForSequenceClassification(config).eval(),
                                    "tokenizer": text_models.build_tokenizer(max_pos)}, str(src),
                                   task="text-classification", pip_requirements=text_models.PIP_REQUIREMENTS)
    out = work / "mpnet-onnx"
    report = convert_model_dir(src, out, ConversionOptions(samples=16))
    opt = report["transformer_optimization"]
    assert opt["applied"] is False and opt["transformer"]["hf_model_type"] == "mpnet"
    assert opt["reason"].startswith("no Attention fused") and "Attention" not in opt["fused"]
    assert report["status"] == "passed" and report["parity"]["passed"] is True
    assert not ms_ops(out)  # the plain graph was kept
    assert json.loads((out / "conversion.json").read_text())["transformer_optimization"] == opt


def test_fused_graph_keeps_external_data(classifier, work, monkeypatch):
    monkeypatch.setenv("MODELOPS_EXTERNAL_DATA_BYTES", "4096")
    out = work / "clf-external"
    report = convert_model_dir(classifier, out, ConversionOptions(samples=8))
    assert report["transformer_optimization"]["applied"] is True and "Attention" in ms_ops(out)
    assert "model.onnx.data" in report["files"] and (out / "model.onnx.data").stat().st_size > 4096
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    assert transforms.data_file(out / "model.onnx").exists() and report["parity"]["passed"] is True


def test_only_bert_class_configs_are_fused():
    from transformers import BertConfig, DistilBertConfig, GPT2Config

    assert fusion.transformer_config(BertConfig(num_attention_heads=12, hidden_size=384)) == {
        "model_type": "bert", "hf_model_type": "bert", "num_heads": 12, "hidden_size": 384}
    assert fusion.transformer_config(DistilBertConfig(n_heads=4, dim=64))["num_heads"] == 4
    assert fusion.transformer_config(GPT2Config()) is None
    assert fusion.decide({"Attention": 2, "Gelu": 0, "SkipLayerNormalization": 4}) == (
        True, {"Attention": 2, "SkipLayerNormalization": 4}, "")
    assert fusion.decide({"Attention": 0, "BiasGelu": 2}) == (
        False, {"BiasGelu": 2}, "no Attention fused (fused only BiasGelu x2)")
