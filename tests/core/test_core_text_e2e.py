"""End to end through the real parts: a Hugging Face text classifier logged to MLflow as users log
it, converted and published, fetched the way KServe fetches it over MLflow's artifact proxy (the
`storageUri` the operator writes: one `model.tar`, unpacked into the model directory), served by
`modelops serve`, text in; and a model forced to external data the same way."""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from modelops.conversion import ConversionOptions, convert_and_publish
from modelops.deployment.storage import storage_location
from test_core_serving import Predictor

pytestmark = pytest.mark.slow


def fetch_like_kserve(url: str, dest: Path) -> Path:
    """What KServe's storage initializer does with an http(s) storageUri ending in `.tar`:
    download the one file, unpack it into the model directory, remove the archive."""
    dest.mkdir(parents=True)
    archive = dest / Path(url).name
    with httpx.stream("GET", url, timeout=60) as r:
        assert r.status_code == 200, url
        with open(archive, "wb") as fh:
            for chunk in r.iter_bytes():
                fh.write(chunk)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def test_a_registered_text_classifier_is_published_fetched_and_served_text_in(tracking_uri, registry, tmp_path):
    import mlflow.transformers

    from modelops.demo.text_models import register_text_classifier
    from modelops.words import seeded_texts

    name = f"text-clf-{uuid.uuid4().hex[:6]}"
    version = register_text_classifier(tracking_uri, name, seed=3)
    resolved = registry.resolve(f"models:/{name}/{version}")
    result = convert_and_publish(registry, resolved, ConversionOptions(), out_dir=tmp_path / "out",
                                 work_dir=tmp_path / "work")
    # What clients send and get is what the rollout's interface check compares.
    assert result.report["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in result.report["outputs"]] == ["label", "score", "scores", "logits"]
    assert {i["name"] for i in result.report["graph"]["inputs"]} >= {"input_ids", "attention_mask"}
    assert result.bundle == "model.tar"
    url = storage_location(result.onnx_uri, (), tracking_uri, file=result.bundle).uri
    assert url.startswith(tracking_uri) and url.endswith("/model.tar")
    served_dir = fetch_like_kserve(url, tmp_path / "mnt-models")
    assert sorted(p.name for p in served_dir.iterdir()) == ["model.onnx", "text.json", "tokenizer.json"]

    pipe = mlflow.transformers.load_model(str(registry.download(resolved, tmp_path / "src")))
    texts = ["", *seeded_texts(6, seed=11), " ".join(["good"] * 300)]
    expected = pipe(texts, truncation=True)
    server = Predictor(served_dir, "clf", tmp_path)
    try:
        r = server.http.post("/v2/models/clf/infer", json={"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]})
        assert r.status_code == 200, r.text
        out = {o["name"]: o["data"] for o in r.json()["outputs"]}
        assert out["label"] == [e["label"] for e in expected]
        assert np.allclose(out["score"], [e["score"] for e in expected], atol=1e-4)
    finally:
        server.stop()


def test_a_model_forced_to_external_data_converts_publishes_and_serves(tracking_uri, registry, tmp_path,
                                                                       monkeypatch):
    """The >2 GB path, with a threshold low enough for a small MLP: weights in model.onnx.data."""
    import onnxruntime as ort

    from modelops.demo.models import MLP_FEATURES, register_torch_mlp

    monkeypatch.setenv("MODELOPS_EXTERNAL_DATA_BYTES", "4096")
    name = f"ext-mlp-{uuid.uuid4().hex[:6]}"
    version = register_torch_mlp(tracking_uri, name, seed=5)
    resolved = registry.resolve(f"models:/{name}/{version}")
    for precision in ("fp16", "fp32"):  # fp16 (converted in memory, written again) keeps it too
        result = convert_and_publish(registry, resolved, ConversionOptions(precision=precision),
                                     out_dir=tmp_path / f"out-{precision}", work_dir=tmp_path / f"work-{precision}")
        out = tmp_path / f"out-{precision}"
        assert (out / "model.onnx.data").stat().st_size > 4096
        assert "model.onnx.data" in result.report["files"]
        graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
        assert result.report["parity"]["passed"]
    assert result.bundle == "model.tar"
    served_dir = fetch_like_kserve(storage_location(result.onnx_uri, (), tracking_uri, file=result.bundle).uri,
                                   tmp_path / "mnt-models")
    assert sorted(p.name for p in served_dir.iterdir()) == ["model.onnx", "model.onnx.data"]
    x = np.random.default_rng(0).normal(size=(3, MLP_FEATURES)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "out-fp32" / "model.onnx")).run(None, {"input": x})[0]
    server = Predictor(served_dir, "mlp", tmp_path)
    try:
        r = server.http.post("/v2/models/mlp/infer", json={"inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
        assert r.status_code == 200, r.text
        assert np.allclose(np.array(r.json()["outputs"][0]["data"]).reshape(want.shape), want, atol=1e-6)
    finally:
        server.stop()
