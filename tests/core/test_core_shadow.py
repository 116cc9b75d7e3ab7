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
import subprocess
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
from modelops.serving.shadow import MAX_COPIES_PER_CALL, MIRROR_WORKERS
from test_core_serving import MODELOPS, Predictor, metric_value

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
    # the candidate got every copy's rows, copies queued together stacked into one call
    calls = metric_value(good.metrics(), "modelops_predictor_requests_total", code="200")
    assert 1 <= calls <= total
    rows = sum(1 + i % 3 for i in range(N)) + 6 * 2
    assert metric_value(good.metrics(), "modelops_predictor_batch_rows_sum") == rows


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
    workers' calls (at most MAX_COPIES_PER_CALL copies each) wait for their timeout, one copy
    waits in the queue, every other one is dropped."""
    configure(stable, config_file, mirror_to(good, "slow", queueSize=1, timeoutMs=3000), "mirroring on")
    held = MIRROR_WORKERS * MAX_COPIES_PER_CALL + 1  # in the workers' calls, and the queue
    more = requests(held + 40 - N, seed=9)  # so that at least 40 copies must be dropped
    os.killpg(good.proc.pid, signal.SIGSTOP)
    try:
        assert_answers_unchanged(stable, baseline)
        for body in more:
            assert stable.infer(body).status_code == 200
        c = counts(stable, "slow")
        assert c["dropped"] >= N + len(more) - held - 1 >= 39  # one more may be taken between two requests
        assert c["sent"] == 0
    finally:
        os.killpg(good.proc.pid, signal.SIGCONT)
    total = N + len(more)
    c = wait_for(lambda: (c := counts(stable, "slow"))["dropped"] + c["failed"] + c["sent"] >= total and c,
                 "every copy accounted for", stable)
    assert c["dropped"] + c["failed"] + c["sent"] == total


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


# --- modelops loadtest (the performance gate's measurement) ------------------------------------------------
def loadtest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MODELOPS, "loadtest", *args], capture_output=True, text=True, timeout=120)


def test_loadtest_from_metadata_against_a_real_predictor(good, tmp_path):
    before = metric_value(good.metrics(), "modelops_predictor_requests_total", code="200")
    log = tmp_path / "termination-log"
    r = loadtest(good.url, "--model", "clf", "--concurrency", "2", "--duration", "1s", "--json",
                 "--termination-log", str(log))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"url", "model", "concurrency", "duration_s", "requests", "errors", "throughput_rps",
                        "p50_ms", "p99_ms"}
    assert doc["url"] == good.url and doc["concurrency"] == 2 and doc["duration_s"] == 1.0
    assert doc["requests"] > 0 and doc["errors"] == 0 and doc["throughput_rps"] > 0
    assert 0 < doc["p50_ms"] <= doc["p99_ms"]
    assert json.loads(log.read_text()) == doc and len(log.read_bytes()) < 4096
    served = metric_value(good.metrics(), "modelops_predictor_requests_total", code="200") - before
    assert served >= doc["requests"]  # measured requests (+ the warm-up) reached the predictor, all 200


def test_loadtest_with_a_baseline_tests_it_first_then_the_candidate(good, stable, tmp_path):
    """The performance gate's Job: `--baseline STABLE_URL CANDIDATE_URL`, one termination message."""
    log = tmp_path / "termination-log"
    before = {p.url: metric_value(p.metrics(), "modelops_predictor_requests_total", code="200") for p in (good, stable)}
    r = loadtest(good.url, "--model", "clf", "--baseline", stable.url, "--concurrency", "2", "--duration", "500ms",
                 "--json", "--termination-log", str(log))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"stable", "candidate"} and json.loads(log.read_text()) == doc
    assert doc["stable"]["url"] == stable.url and doc["candidate"]["url"] == good.url
    for part, predictor in (("stable", stable), ("candidate", good)):
        assert doc[part]["requests"] > 0 and doc[part]["errors"] == 0 and doc[part]["p99_ms"] > 0
        served = metric_value(predictor.metrics(), "modelops_predictor_requests_total", code="200")
        assert served - before[predictor.url] >= doc[part]["requests"]  # each test hit its own predictor
    # the stable's test fails to run (unreachable): the failure, and no candidate part, in the message
    down = f"http://127.0.0.1:{free_port()}"
    r = loadtest(good.url, "--model", "clf", "--baseline", down, "--duration", "500ms", "--termination-log", str(log))
    assert r.returncode == 75 and "PredictorUnreachable" in r.stderr
    doc = json.loads(log.read_text())
    assert doc["reason"] == "PredictorUnreachable" and doc["stable"]["url"] == down and "candidate" not in doc


def test_loadtest_with_a_body_file_counts_refused_requests_as_errors(good, tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps(requests(1)[0]))
    r = loadtest(good.url, "--model", "clf", "--duration", "500ms", "--body", str(body), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["errors"] == 0 and json.loads(r.stdout)["requests"] > 0
    body.write_text(json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4],
                                            "data": [0, 0, 0, 0]}]}))
    r = loadtest(good.url, "--model", "clf", "--duration", "500ms", "--body", str(body), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["errors"] == doc["requests"] > 0  # it ran: the gate decides
    assert doc["first_error"].startswith("HTTP 400") and "features" in doc["first_error"]


def test_loadtest_unreachable_target_fails_clearly(tmp_path):
    log = tmp_path / "termination-log"
    url = f"http://127.0.0.1:{free_port()}"
    r = loadtest(url, "--model", "clf", "--duration", "1s", "--json", "--termination-log", str(log))
    assert r.returncode == 75 and r.stdout == ""
    assert r.stderr.startswith("modelops: PredictorUnreachable: ") and url in r.stderr
    doc = json.loads(log.read_text())
    assert doc["reason"] == "PredictorUnreachable" and doc["url"] == url and "requests" not in doc


def test_loadtest_unknown_model(good):
    r = loadtest(good.url, "--model", "nope", "--duration", "1s")
    assert r.returncode == 2 and r.stderr.startswith("modelops: UnknownModel: ")


# --- a text model: BYTES requests mirrored (V2 REST, gRPC, v1), label/scores compared --------------------------
@pytest.fixture(scope="module")
def text_pair(tmp_path_factory, logs):
    import text_artifacts as ta

    root = tmp_path_factory.mktemp("shadow-text")
    cls_dir, _ = ta.classifier_dir(root / "cls")
    config = root / "shadow.json"
    candidate = Predictor(cls_dir, "cls", logs, "--model-version", "2", "--grpc-port", "0")
    stable = Predictor(cls_dir, "cls", logs, "--model-version", "1", "--shadow-config", str(config))
    yield stable, candidate, config
    stable.stop()
    candidate.stop()


@pytest.mark.filterwarnings("ignore")
def test_text_model_bytes_requests_are_mirrored_and_agree(text_pair, tmp_path):
    from modelops.words import seeded_texts

    stable, candidate, config = text_pair
    texts = seeded_texts(6, seed=5)
    bodies = [{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts[i:i + 2]}]}
              for i in range(0, 6, 2)]
    before = [stable.infer(b).content for b in bodies]
    doc = {"candidate": {"url": candidate.url, "model": "cls", "version": "2"}, "percent": 100}
    configure(stable, config, doc, "mirroring on")
    assert [stable.infer(b).content for b in bodies] == before
    with grpc.insecure_channel(stable.grpc_url) as channel:
        req = pb.ModelInferRequest(model_name="cls", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[2],
            contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts[:2]]))])
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    assert [o.name for o in answer.outputs] == ["label", "score", "scores", "logits"]
    assert stable.http.post("/v1/models/cls:predict", json={"instances": texts[:3]}).status_code == 200
    total = len(bodies) + 2
    c = wait_for(lambda: (c := counts(stable, "2"))["agree"] >= total and c, "agreeing comparisons", stable)
    assert c["agree"] == c["sent"] == total and c["disagree"] == c["failed"] == 0
    # the load test builds BYTES requests (seeded words) from the text model's metadata
    r = loadtest(candidate.url, "--model", "cls", "--duration", "500ms", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["errors"] == 0 and json.loads(r.stdout)["requests"] > 0
