"""A Hugging Face text classifier through the operator on the real API server: an MLflow
`transformers` model version is converted with its tokenizer, the InferenceService's storageUri
is the `model.tar` KServe fetches over MLflow's artifact proxy, and what it fetches serves text."""

from __future__ import annotations

import tarfile
import uuid

import httpx
import pytest

from modelops.bench.loadgen import wait_ready
from modelops.local.ports import free_port
from modelops.local.processes import spawn, stop

from .conftest import MODELOPS, eventually, md_body

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_transformers_model_is_deployed_with_its_tokenizer(cluster, namespace, start_operator, mlflow_server,
                                                             tmp_path):
    from modelops.demo.text_models import register_text_classifier

    name = f"cl-text-{uuid.uuid4().hex[:6]}"
    version = register_text_classifier(mlflow_server.url, name, seed=2)
    ns = namespace
    start_operator(ns, cluster.kubeconfig)
    cluster.apply(md_body("sentiment", {"name": name, "version": version}), "-n", ns)

    def uri():
        isvc = cluster.get("inferenceservice", ns, "sentiment")
        return isvc and isvc["spec"]["predictor"]["model"]["storageUri"]

    url = eventually(uri, timeout=180, what="the InferenceService")
    assert url.startswith(mlflow_server.url) and url.endswith("/model.tar")
    st = eventually(lambda: cluster.status(ns, "sentiment").get("stable"), what="status.stable")
    assert st["version"] == version
    # What KServe's storage initializer does with it: one file, unpacked into /mnt/models.
    archive = tmp_path / "model.tar"
    archive.write_bytes(httpx.get(url, timeout=60).content)
    models = tmp_path / "mnt-models"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["model.onnx", "text.json", "tokenizer.json"]
        tar.extractall(models, filter="data")
    port = free_port()
    proc = spawn([MODELOPS, "serve", str(models), "--name", "sentiment", "--http-port", str(port),
                  "--grpc-port", "0", "--host", "127.0.0.1"], tmp_path / "serve.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", timeout=120, proc=proc)
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/sentiment/infer", timeout=30, json={"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a good movie", ""]}]})
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["label"]["datatype"] == "BYTES" and len(out["label"]["data"]) == 2
    finally:
        stop(proc)
