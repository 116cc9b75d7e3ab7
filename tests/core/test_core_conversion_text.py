"""Text models end to end (no MLflow server needed): MLflow `transformers` (text-classification,
feature-extraction) and `sentence_transformers` directories, seeded and tiny, converted to
model.onnx + tokenizer.json + text.json; the served path (TextFrontend over onnxruntime) answers
what the original pipeline / SentenceTransformer.encode answers, alone and in padded batches,
for the empty text and texts over the model's limit; int8 is really quantized and still gated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from modelops import errors
from modelops.conversion import ConversionOptions, convert_model_dir
from modelops.demo import text_models
from modelops.words import seeded_texts
from modelops.text import TextConfig, TextFrontend, is_text_model

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

MAX_ERR = 1e-4
LONG = seeded_texts(1, seed=7, min_words=300, max_words=300)[0]
TEXTS = ["", LONG, "good great best", "awful worst bad movie", "Hello, World! THE movie was GOOD?? 😀",
         *seeded_texts(9, seed=3, max_words=30)]


def report_of(out: Path) -> dict:
    return json.loads((out / "conversion.json").read_text())


def served(out: Path, texts: list[str]) -> tuple[TextFrontend, list[dict], dict]:
    """Each text alone and all of them in one padded batch, through the served path."""
    frontend = TextFrontend(out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    alone = []
    for text in texts:
        names, arrays = frontend.answer(session.run(None, frontend.encode_one(text)))
        alone.append(dict(zip(names, arrays)))
    names, arrays = frontend.answer(session.run(None, frontend.encode(texts)))
    return frontend, alone, dict(zip(names, arrays))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("text")


@pytest.fixture(scope="module")
def classifier(work):
    src = text_models.save_text_classifier(work / "clf", shape="tiny")
    out = work / "clf-onnx"
    report = convert_model_dir(src, out, cache_dir=work / "cache")
    return src, out, report


@pytest.fixture(scope="module")
def sentence(work):
    src = text_models.save_sentence_transformer(work / "st", shape="tiny")
    out = work / "st-onnx"
    return src, out, convert_model_dir(src, out)


def test_classifier_converts_to_the_text_artifact(classifier, work):
    src, out, report = classifier
    assert {"model.onnx", "tokenizer.json", "text.json", "conversion.json"} <= {p.name for p in out.iterdir()}
    assert is_text_model(out)
    cfg = TextConfig.load(out)
    assert cfg.task == "text-classification" and cfg.source_flavor == "transformers"
    assert cfg.id2label == dict(enumerate(text_models.LABELS)) and cfg.function_to_apply == "softmax"
    assert cfg.max_length == 64 and cfg.vocab_size == len(text_models.vocabulary())
    assert cfg.model_inputs == ("input_ids", "attention_mask", "token_type_ids") and cfg.outputs == ("logits",)
    assert report == report_of(out) and report["flavor"] == "transformers" and report["status"] == "passed"
    assert report["text"] == cfg.to_json()
    assert report["parity"]["passed"] is True and report["parity"]["samples"] >= 64
    assert report["parity"]["max_abs_err"] <= MAX_ERR
    tp = report["text_parity"]
    assert tp["texts"] == report["parity"]["samples"] and tp["empty_text"] is True
    assert tp["over_limit"] >= 1 and tp["max_tokens"] == 64 and max(tp["batch_sizes"]) > 1
    assert tp["label_agreement"] == 1.0
    assert report["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "sequence"}
    assert report["dynamic_axes"]["logits"] == {"0": "batch"}
    assert set(report["files"]) == {"tokenizer.json", "text.json"}
    # The cache gives back the whole artifact, not only model.onnx.
    again = convert_model_dir(src, work / "clf-again", cache_dir=work / "cache")
    assert again["cached"] is True
    for name in ("model.onnx", "tokenizer.json", "text.json"):
        assert (work / "clf-again" / name).read_bytes() == (out / name).read_bytes()


def test_served_classifier_answers_what_the_pipeline_answers(classifier):
    import mlflow.transformers

    src, out, _ = classifier
    pipe = mlflow.transformers.load_model(str(src))
    expected = pipe(TEXTS, top_k=None, truncation=True)
    label2id = {v: k for k, v in enumerate(text_models.LABELS)}
    frontend, alone, batch = served(out, TEXTS)
    assert len(frontend.encode_one(LONG)["input_ids"][0]) == 64  # truncated to the model's limit
    labels = set()
    for i, answer in enumerate(expected):
        scores = np.zeros(len(label2id), dtype=np.float32)
        for item in answer:
            scores[label2id[item["label"]]] = item["score"]
        for got in (alone[i]["scores"][0], batch["scores"][i]):
            assert np.abs(got - scores).max() <= MAX_ERR, (TEXTS[i], got, scores)
        assert alone[i]["label"][0] == batch["label"][i] == answer[0]["label"]
        assert abs(float(batch["score"][i]) - answer[0]["score"]) <= MAX_ERR
        labels.add(answer[0]["label"])
    assert len(labels) > 1  # the seeded classifier's answers vary: the check is not vacuous


def test_sentence_transformer_embeddings_equal_encode(sentence):
    import mlflow.sentence_transformers

    src, out, report = sentence
    assert report["flavor"] == "sentence_transformers" and report["parity"]["passed"] is True
    assert report["text_parity"]["empty_text"] is True and report["text_parity"]["over_limit"] >= 1
    cfg = TextConfig.load(out)
    assert cfg.task == "sentence-embedding" and cfg.outputs == ("sentence_embedding",)
    assert [o.name for o in onnx.load(str(out / "model.onnx")).graph.output] == ["sentence_embedding"]
    expected = mlflow.sentence_transformers.load_model(str(src)).encode(TEXTS)
    _, alone, batch = served(out, TEXTS)
    got = np.stack([a["sentence_embedding"][0] for a in alone])
    assert np.abs(got - expected).max() <= MAX_ERR
    assert np.abs(batch["sentence_embedding"] - expected).max() <= MAX_ERR
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # Normalize is inside the graph
    # fp16 runs on the same graph and passes its own (looser) gate.
    half = convert_model_dir(src, out.with_name("st-fp16"), ConversionOptions(precision="fp16"))
    assert half["precision"] == "fp16" and half["parity"]["passed"] is True
    assert half["parity"]["max_abs_err"] <= ConversionOptions(precision="fp16").tolerance[1]


def test_feature_extraction_model_converts(work):
    import mlflow.transformers
    import torch
    from transformers import BertModel

    torch.manual_seed(1)
    model = BertModel(text_models._config("tiny"))
    src = work / "fe"
    mlflow.transformers.save_model({"model": model, "tokenizer": text_models.build_tokenizer(64)}, str(src),
                                   task="feature-extraction", pip_requirements=text_models.PIP_REQUIREMENTS)
    out = work / "fe-onnx"
    report = convert_model_dir(src, out)
    assert report["status"] == "passed" and report["text"]["task"] == "feature-extraction"
    assert report["dynamic_axes"]["last_hidden_state"] == {"0": "batch", "1": "sequence"}
    pipe = mlflow.transformers.load_model(str(src))
    frontend, alone, batch = served(out, TEXTS[:4])
    for i, text in enumerate(TEXTS[:4]):
        expected = np.asarray(pipe(text, truncation=True, return_tensors=True)[0])
        n = expected.shape[0]
        assert alone[i]["last_hidden_state"].shape == (1, n, 32)
        assert np.abs(alone[i]["last_hidden_state"][0] - expected).max() <= MAX_ERR
        assert np.abs(batch["last_hidden_state"][i, :n] - expected).max() <= MAX_ERR


def test_int8_classifier_is_quantized_and_gated(classifier, work):
    src, _, _ = classifier
    out = work / "clf-int8"
    report = convert_model_dir(src, out, ConversionOptions(precision="int8"))
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert report["precision"] == "int8" and report["parity"]["passed"] is True
    assert (report["parity"]["rtol"], report["parity"]["atol"]) == ConversionOptions(precision="int8").tolerance
    assert (out / "tokenizer.json").is_file() and (out / "text.json").is_file()
    # The gate is real: the same int8 graph against fp32-tight tolerances is refused, nothing served.
    with pytest.raises(errors.ParityFailed):
        convert_model_dir(src, out, ConversionOptions(precision="int8", rtol=0.0, atol=1e-7))
    assert not (out / "model.onnx").exists() and not is_text_model(out)
    failed = report_of(out)
    assert failed["status"] == "failed" and failed["reason"] == "ParityFailed"
    assert failed["text_parity"]["texts"] >= 64 and failed["parity"]["passed"] is False


def test_refused_and_unsupported_flavors(classifier, work):
    src, _, _ = classifier
    # A model class transformers does not ship would need trust_remote_code: refused, not run.
    hostile = work / "clf-custom"
    shutil.copytree(src, hostile)
    mlmodel = yaml.safe_load((hostile / "MLmodel").read_text())
    mlmodel["flavors"]["transformers"]["pipeline_model_type"] = "EvilForSequenceClassification"
    (hostile / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(errors.UntrustedArtifact):
        convert_model_dir(hostile, work / "clf-custom-onnx")
    # A task without a text artifact (generation) is an unsupported flavor, not a failed conversion.
    mlmodel["flavors"]["transformers"].update(pipeline_model_type="BertForSequenceClassification",
                                              task="text-generation")
    (hostile / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(errors.UnsupportedFlavor, match="text-generation"):
        convert_model_dir(hostile, work / "clf-custom-onnx")
    # An unknown flavor is still UnsupportedFlavor, also beside python_function.
    unknown = work / "keras"
    unknown.mkdir()
    mlmodel["flavors"] = {"keras": {"keras_version": "3"}, "python_function": {"loader_module": "mlflow.keras"}}
    (unknown / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(errors.UnsupportedFlavor):
        convert_model_dir(unknown, work / "keras-onnx")
