"""Shadow mirroring between real predictors (`modelops serve` child processes, real HTTP and gRPC,
real onnxruntime): the stable, told by its watched --shadow-config file, copies answered requests
to a candidate and counts the comparison; clients get the stable's bytes, always.

Models are built here, seeded: a classifier `clf` (input [-1, 4] -> logits [-1, 3]); the same
graph as a second version (agrees); the graph with its first two output columns swapped (answers
200, wrong top class). The stable is one process for the module, reconfigured through its file
between tests (that is the reconfiguration test too).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from onnx import TensorProto, helper

from modelops.local.ports import free_port
from modelops.serving.shadow import MIRROR_WORKERS
from test_core_serving import Predictor, metric_value

N = 24  # requests per scenario


def classifier_dir(out: Path, seed: int = 0, swap: bool = False, output: str = "logits") -> Path:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    if swap:
        w, b = w[:, [1, 0, 2]], b[[1, 0, 2]]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], [output])],
        "clf", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.ravel().tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [3], b.tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    return out


def requests(n: int = N, seed: int = 7) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.normal(size=(1 + i % 3, 4)).astype(np.float32)
        out.append({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                "data": x.ravel().tolist()}]})
    return out


# --- servers ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shadow-logs")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shadow-models")
    return {"v1": classifier_dir(root / "v1"), "v2": classifier_dir(root / "v2"),
            "swapped": classifier_dir(root / "swapped", swap=True)}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shadow-config") / "shadow.json"


@pytest.fixture(scope="module")
def stable(models, logs, config_file):
    server = Predictor(models["v1"], "clf", logs, "--model-version", "1", "--shadow-config", str(config_file))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def good(models, logs):
    server = Predictor(models["v2"], "clf", logs, "--model-version", "2", "--grpc-port", "0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def wrong(models, logs):
    server = Predictor(models["swapped"], "clf", logs, "--model-version", "3", "--grpc-port", "0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def baseline(stable) -> list[tuple[int, dict, bytes]]:
    """The stable's answers before any mirroring: (status, headers, body) per request."""
    out = []
    for body in requests():
        r = stable.infer(body)
        out.append((r.status_code, r.headers.get("content-type"), r.content))
    return out


# --- helpers ------------------------------------------------------------------------------------------
def configure(stable: Predictor, config_file: Path, doc, expect: str) -> None:
    """Write the mirror configuration and wait for the stable's log to say EXPECT (once more)."""
    before = stable.log_path.read_text(errors="replace").count(expect)
    tmp = config_file.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.replace(tmp, config_file)  # as a ConfigMap update: the file is swapped, never half-written
    wait_for(lambda: stable.log_path.read_text(errors="replace").count(expect) > before,
             f"the stable's log to say {expect!r}", stable)


def wait_for(predicate, what: str, server: Predictor, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{server.log()}")


def counts(stable: Predictor, candidate: str) -> dict[str, float]:
    text = stable.metrics()
    out = {r: metric_value(text, "modelops_shadow_mirrored_total", candidate=candidate, result=r)
           for r in ("sent", "dropped", "failed")}
    out |= {o: metric_value(text, "modelops_shadow_comparisons_total", candidate=candidate, outcome=o)
            for o in ("agree", "disagree")}
    out["abs_diff_count"] = metric_value(text, "modelops_shadow_abs_diff_count", candidate=candidate)
    out["abs_diff_sum"] = metric_value(text, "modelops_shadow_abs_diff_sum", candidate=candidate)
    return out


def mirror_to(server: Predictor, version: str, percent: float = 100, **extra) -> dict:
    return {"candidate": {"url": server.url, "model": "clf", "version": version}, "percent": percent,
            "queueSize": 64, "timeoutMs": 2000, "tolerance": {"rtol": 1e-3, "atol": 1e-3}, **extra}


def assert_answers_unchanged(stable: Predictor, baseline) -> None:
    for body, (status, ctype, content) in zip(requests(), baseline):
        r = stable.infer(body)
        assert (r.status_code, r.headers.get("content-type"), r.content) == (status, ctype, content)


def grpc_infer(stable: Predictor, x: np.ndarray):
    with grpc.insecure_channel(stable.grpc_url) as channel:
        req = pb.ModelInferRequest(model_name="clf", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=list(x.shape),
            contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()))])
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)


# --- scenarios (in file order: one stable process, reconfigured) ------------------------------------------
def test_same_model_agrees_over_rest_grpc_and_v1(stable, good, baseline, config_file):
    configure(stable, config_file, mirror_to(good, "2"), "mirroring on")
    assert_answers_unchanged(stable, baseline)  # N REST requests, the same bytes as before
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    for _ in range(3):
        assert list(grpc_infer(stable, x).outputs[0].shape) == [2, 3]
        r = stable.http.post("/v1/models/clf:predict", json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
    total = N + 6
    c = wait_for(lambda: (c := counts(stable, "2"))["agree"] >= total and c, "agreeing comparisons", stable)
    assert c["sent"] == total and c["agree"] == total
    assert c["disagree"] == c["failed"] == c["dropped"] == 0
    assert c["abs_diff_count"] == total and c["abs_diff_sum"] == 0  # same graph, same runtime: exact
    assert metric_value(stable.metrics(), "modelops_shadow_cosine_count", candidate="2") == 0  # no vectors
    assert metric_value(good.metrics(), "modelops_predictor_requests_total", code="200") == total


def test_swapped_outputs_disagree(stable, wrong, baseline, config_file):
    configure(stable, config_file, mirror_to(wrong, "3"), "mirroring on")
    assert_answers_unchanged(stable, baseline)
    # A request disagrees when any of its rows' top class moves with the swap (classes 0 <-> 1).
    expected = 0
    for _, _, content in baseline:
        logits = np.asarray(json.loads(content)["outputs"][0]["data"]).reshape(-1, 3)
        top = logits.argmax(axis=1)
        expected += bool((top != logits[:, [1, 0, 2]].argmax(axis=1)).any())
    assert 0 < expected < N
    c = wait_for(lambda: (c := counts(stable, "3"))["agree"] + c["disagree"] >= N and c, "comparisons", stable)
    assert c["disagree"] == expected and c["agree"] == N - expected and c["sent"] == N
    assert "disagrees: top class differs" in stable.log()


def test_candidate_down_never_touches_the_answers(stable, baseline, config_file):
    nobody = f"http://127.0.0.1:{free_port()}"
    configure(stable, config_file, {"candidate": {"url": nobody, "model": "clf", "version": "down"},
                                    "percent": 100}, "mirroring on")
    assert_answers_unchanged(stable, baseline)
    c = wait_for(lambda: (c := counts(stable, "down"))["failed"] >= N and c, "failed copies", stable)
    assert c["failed"] == N and c["sent"] == c["agree"] == c["disagree"] == 0


def test_slow_candidate_drops_copies_not_answers(stable, good, baseline, config_file):
    """The candidate hangs (SIGSTOP: connections accepted, never answered); a queue of 1: the
    workers' copies wait for their timeout, one waits in the queue, every other one is dropped."""
    configure(stable, config_file, mirror_to(good, "slow", queueSize=1, timeoutMs=3000), "mirroring on")
    os.killpg(good.proc.pid, signal.SIGSTOP)
    try:
        assert_answers_unchanged(stable, baseline)
        c = counts(stable, "slow")
        assert c["dropped"] >= N - MIRROR_WORKERS - 1 - 1  # one more may be taken between two requests
        assert c["sent"] == 0
    finally:
        os.killpg(good.proc.pid, signal.SIGCONT)
    c = wait_for(lambda: (c := counts(stable, "slow"))["dropped"] + c["failed"] + c["sent"] >= N and c,
                 "every copy accounted for", stable)
    assert c["dropped"] + c["failed"] + c["sent"] == N


def test_removed_config_stops_mirroring(stable, good, baseline, config_file):
    configure(stable, config_file, mirror_to(good, "gone"), "mirroring on")
    stable.infer(requests()[0])
    wait_for(lambda: counts(stable, "gone")["agree"] >= 1, "one comparison", stable)
    before = stable.log_path.read_text().count("mirroring off")
    config_file.unlink()
    wait_for(lambda: stable.log_path.read_text().count("mirroring off") > before, "mirroring off", stable)
    served = metric_value(good.metrics(), "modelops_predictor_requests_total", code="200")
    assert_answers_unchanged(stable, baseline)
    time.sleep(1.0)
    assert counts(stable, "gone")["sent"] == 1
    assert metric_value(good.metrics(), "modelops_predictor_requests_total", code="200") == served


@pytest.mark.parametrize("doc", ["{not json", '{"candidate": {"url": "ftp://x", "model": "clf"}}',
                                 '{"candidate": {"url": "http://127.0.0.1:1", "model": "clf"}, "percent": 500}'])
def test_invalid_config_is_off_and_logged_once(stable, good, baseline, config_file, doc):
    configure(stable, config_file, mirror_to(good, "bad"), "mirroring on")
    before = stable.log_path.read_text().count("is invalid")
    configure(stable, config_file, doc, "is invalid")
    served = metric_value(good.metrics(), "modelops_predictor_requests_total", code="200")
    assert_answers_unchanged(stable, baseline)
    time.sleep(2.5)  # two more polls of the unchanged invalid file: no more lines
    assert stable.log_path.read_text().count("is invalid") == before + 1
    assert metric_value(good.metrics(), "modelops_predictor_requests_total", code="200") == served
    assert stable.alive()


def test_empty_config_is_off(stable, good, baseline, config_file):
    configure(stable, config_file, mirror_to(good, "empty"), "mirroring on")
    configure(stable, config_file, "{}", "says off")
    assert_answers_unchanged(stable, baseline)
    time.sleep(0.5)
    assert counts(stable, "empty")["sent"] == 0
