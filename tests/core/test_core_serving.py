"""The predictor as deployed: `modelops serve DIR` in a child process, real HTTP and gRPC requests.

Outputs are checked against onnxruntime in this process on the same file. Malformed requests must
each get a 4xx with a reason, and the server must stay up.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from modelops.local.ports import free_port
from modelops.local.processes import stop as stop_process

MODELOPS = str(Path(sys.executable).parent / "modelops")
BODY_LIMIT_MB = 0.05  # the MLP server's --max-body-mb: ~52 kB, so a 413 is cheap to provoke


class Predictor:
    """`modelops serve` as a child process (its own process group), killed at teardown."""

    def __init__(self, model_dir: Path, name: str, log_dir: Path, *args: str, wait: str = "ready"):
        self.name = name
        self.http_port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_dir / f"serve-{name}-{self.http_port}.log"
        cmd = [MODELOPS, "serve", str(model_dir), "--name", name, "--http-port", str(self.http_port),
               "--grpc-port", str(self.grpc_port), *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.url, timeout=30)
        try:
            self._wait(f"/v2/health/{wait}")
        except BaseException:
            self.stop()
            raise

    def _wait(self, path: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelops serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.http.get(path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"modelops serve: {path} not 200 after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None and self.http.get("/v2/health/live").status_code == 200

    def infer(self, body, path: str | None = None, **kwargs) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.http.post(path or f"/v2/models/{self.name}/infer", content=content, **kwargs)

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def stop(self) -> None:
        self.http.close()
        stop_process(self.proc)


def v2_input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    doc = response.json()
    return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in doc["outputs"]}


def binary_outputs(response: httpx.Response) -> tuple[dict, dict[str, np.ndarray]]:
    assert response.status_code == 200, response.text
    head_len = int(response.headers["inference-header-content-length"])
    head = json.loads(response.content[:head_len])
    raw, offset, out = response.content[head_len:], 0, {}
    for o in head["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(raw[offset:offset + size], dtype=np.float32).reshape(o["shape"])
        offset += size
    assert offset == len(raw)
    return head, out


def binary_request(inputs: dict[str, np.ndarray], **header) -> tuple[bytes, dict]:
    entries = [{"name": n, "datatype": "FP32", "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes}} for n, x in inputs.items()]
    head = json.dumps({"inputs": entries, **header}).encode()
    body = head + b"".join(np.ascontiguousarray(x).tobytes() for x in inputs.values())
    return body, {"Inference-Header-Content-Length": str(len(head)),
                  "Content-Type": "application/octet-stream"}


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


class Reference:
    def __init__(self, model_file: Path):
        self.session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])

    def __call__(self, **feeds) -> np.ndarray:
        return self.session.run(None, feeds)[0]


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# --- servers ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("predictor-logs")


@pytest.fixture(scope="module")
def mlp_server(mlp_converted, logs):
    server = Predictor(mlp_converted.out_dir, "mlp", logs, "--max-body-mb", str(BODY_LIMIT_MB),
                       "--model-version", mlp_converted.version)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cnn_server(cnn_converted, logs):
    server = Predictor(cnn_converted.out_dir, "cnn", logs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlp_ref(mlp_converted) -> Reference:
    return Reference(mlp_converted.model_file)


@pytest.fixture(scope="module")
def cnn_ref(cnn_converted) -> Reference:
    return Reference(cnn_converted.model_file)


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    """A two-input ONNX model (out = a * 2 + b), for multi-input validation."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "two"], ["a2"]), helper.make_node("Add", ["a2", "b"], ["out"])],
        "pair",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    d = tmp_path_factory.mktemp("pair")
    onnx.save(model, str(d / "model.onnx"))
    return d


@pytest.fixture(scope="module")
def pair_server(pair_dir, logs):
    server = Predictor(pair_dir, "pair", logs, "--grpc-port", "0")
    yield server
    server.stop()


# --- health and metadata -------------------------------------------------------------------------------
def test_health(mlp_server):
    assert mlp_server.http.get("/v2/health/live").json() == {"live": True}
    ready = mlp_server.http.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert mlp_server.http.get("/v2").status_code == 200


def test_model_metadata_and_readiness(mlp_server):
    meta = mlp_server.http.get("/v2/models/mlp")
    assert meta.status_code == 200
    doc = meta.json()
    assert doc["name"] == "mlp"
    assert doc["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert doc["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    ready = mlp_server.http.get("/v2/models/mlp/ready")
    assert ready.status_code == 200 and ready.json() == {"name": "mlp", "ready": True}
    missing = mlp_server.http.get("/v2/models/nope/ready")
    assert missing.status_code == 404 and "nope" in missing.text
    assert mlp_server.http.get("/v2/models/nope").status_code == 404


# --- inference -------------------------------------------------------------------------------------------
def test_v2_json_infer_mlp(mlp_server, mlp_ref, mlp_converted):
    x = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    r = mlp_server.infer({"id": "req-1", "inputs": [v2_input(x)]})
    doc = r.json()
    assert doc["model_name"] == "mlp" and doc["id"] == "req-1"
    assert doc["model_version"] == mlp_converted.version  # --model-version
    (out,) = doc["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [5, 3]
    assert_close(outputs_of(r)["output"], mlp_ref(input=x))


def test_v2_json_infer_cnn(cnn_server, cnn_ref):
    x = np.random.default_rng(2).normal(size=(3, 1, 28, 28)).astype(np.float32)
    r = cnn_server.infer({"inputs": [v2_input(x)], "outputs": [{"name": "output"}]})
    assert_close(outputs_of(r)["output"], cnn_ref(input=x))


def test_v2_binary_tensor_extension(cnn_server, cnn_ref):
    x = np.random.default_rng(3).normal(size=(2, 1, 28, 28)).astype(np.float32)
    expected = cnn_ref(input=x)

    # Binary in, binary out.
    body, headers = binary_request({"input": x}, parameters={"binary_data_output": True}, id="b1")
    r = cnn_server.infer(body, headers=headers)
    assert r.headers["content-type"].startswith("application/octet-stream")
    head, out = binary_outputs(r)
    assert head["id"] == "b1" and head["outputs"][0]["shape"] == [2, 10]
    assert_close(out["output"], expected)

    # Binary in, JSON out.
    body, headers = binary_request({"input": x})
    r = cnn_server.infer(body, headers=headers)
    assert "inference-header-content-length" not in r.headers
    assert_close(outputs_of(r)["output"], expected)

    # JSON in, binary out for one requested output.
    r = cnn_server.infer({"inputs": [v2_input(x)],
                          "outputs": [{"name": "output", "parameters": {"binary_data": True}}]})
    assert_close(binary_outputs(r)[1]["output"], expected)


def test_binary_request_with_odd_header_length(mlp_server, mlp_ref):
    """The tensor bytes start right after the JSON header, at any (unaligned) offset."""
    x = np.random.default_rng(4).normal(size=(3, 16)).astype(np.float32)
    for pad in range(4):
        body, headers = binary_request({"input": x}, id="x" * pad)
        assert_close(outputs_of(mlp_server.infer(body, headers=headers))["output"], mlp_ref(input=x))


def test_v1_predict(mlp_server, mlp_ref):
    x = np.random.default_rng(5).normal(size=(4, 16)).astype(np.float32)
    r = mlp_server.http.post("/v1/models/mlp:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    assert_close(np.asarray(r.json()["predictions"], np.float32), mlp_ref(input=x))


def test_grpc_infer(mlp_server, cnn_server, mlp_ref, cnn_ref):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def call(server, x):
        client = InferenceGRPCClient(server.grpc_url, timeout=30, retries=0)
        try:
            assert await client.is_server_ready()
            assert await client.is_model_ready(server.name)
            inp = InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            response = await client.infer(InferRequest(model_name=server.name, infer_inputs=[inp]))
            return response.outputs[0].name, response.outputs[0].as_numpy()
        finally:
            await client.close()

    x = np.random.default_rng(6).normal(size=(3, 16)).astype(np.float32)
    name, y = asyncio.run(call(mlp_server, x))
    assert name == "output"
    assert_close(y, mlp_ref(input=x))
    img = np.random.default_rng(7).normal(size=(2, 1, 28, 28)).astype(np.float32)
    assert_close(asyncio.run(call(cnn_server, img))[1], cnn_ref(input=img))


def test_grpc_rejects_a_malformed_request(mlp_server):
    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def call():
        client = InferenceGRPCClient(mlp_server.grpc_url, timeout=30, retries=0)
        try:
            inp = InferInput("input", [2, 15], "FP32")
            inp.set_data_from_numpy(np.zeros((2, 15), np.float32))
            await client.infer(InferRequest(model_name="mlp", infer_inputs=[inp]))
        finally:
            await client.close()

    with pytest.raises(grpc.aio.AioRpcError) as exc:
        asyncio.run(call())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dimension 1 is 15" in exc.value.details()
    assert mlp_server.alive()


def test_metrics(mlp_server, mlp_ref, mlp_converted):
    version = mlp_converted.version  # the `version` label tells canary and stable apart
    before = metric_value(mlp_server.metrics(), "modelops_predictor_requests_total",
                          model="mlp", version=version, protocol="rest", code="200")
    x = np.zeros((1, 16), np.float32)
    for _ in range(3):
        outputs_of(mlp_server.infer({"inputs": [v2_input(x)]}))
    text = mlp_server.metrics()
    assert "modelops_predictor_requests_total" in text
    after = metric_value(text, "modelops_predictor_requests_total", model="mlp", version=version,
                         protocol="rest", code="200")
    assert after == before + 3
    assert metric_value(text, "modelops_predictor_request_seconds_count", model="mlp", version=version,
                        protocol="rest") >= 3
    assert "modelops_predictor_batch_rows" in text


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_concurrent_requests_are_all_answered_correctly(which, request):
    server = request.getfixturevalue(f"{which}_server")
    ref = request.getfixturevalue(f"{which}_ref")
    shape = (16,) if which == "mlp" else (1, 28, 28)
    rng = np.random.default_rng(8)
    xs = [rng.normal(size=(int(rng.integers(1, 4)), *shape)).astype(np.float32) for _ in range(32)]

    async def burst():
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(
                client.post(f"/v2/models/{which}/infer", content=json.dumps({"id": str(i), "inputs": [v2_input(x)]}))
                for i, x in enumerate(xs)))

    for _ in range(3):
        responses = asyncio.run(burst())
        for i, (x, r) in enumerate(zip(xs, responses)):
            assert r.json()["id"] == str(i)
            assert_close(outputs_of(r)["output"], ref(input=x))


def test_dynamic_batching_merges_concurrent_requests(cnn_server, cnn_ref):
    """Batch-1 requests sent at once share onnxruntime calls (modelops_predictor_batch_rows > 1)."""

    def merged() -> float:
        text = cnn_server.metrics()
        count = metric_value(text, "modelops_predictor_batch_rows_count", model="cnn")
        single = metric_value(text, "modelops_predictor_batch_rows_bucket", model="cnn", le="1.0")
        return count - single

    start = merged()
    x = np.random.default_rng(9).normal(size=(64, 1, 1, 28, 28)).astype(np.float32)

    async def burst():
        async with httpx.AsyncClient(base_url=cnn_server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(
                client.post("/v2/models/cnn/infer", content=json.dumps({"inputs": [v2_input(xi)]})) for xi in x))

    for _ in range(5):
        for xi, r in zip(x, asyncio.run(burst())):
            assert_close(outputs_of(r)["output"], cnn_ref(input=xi))
        if merged() > start:
            break
    assert merged() > start, "64 concurrent batch-1 requests never shared an onnxruntime call"


# --- malformed requests ---------------------------------------------------------------------------------
def _good(**overrides) -> dict:
    item = {"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}
    item.update(overrides)
    return item


def _without(key: str) -> dict:
    item = _good()
    del item[key]
    return item


def _binary(size: int, payload: int) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                                   "parameters": {"binary_data_size": size}}]}).encode()
    return head + b"\0" * payload, {"headers": {"Inference-Header-Content-Length": str(len(head))}}


OVERSIZED = json.dumps({"inputs": [_good(shape=[2000, 16], data=[0.5] * 32000)]})

MALFORMED = {
    # case: (body, extra request kwargs, path or None, status, fragment of the reason)
    "wrong-input-name": ({"inputs": [_good(name="features")]}, {}, None, 400, "unknown input name 'features'"),
    "wrong-datatype": ({"inputs": [_good(datatype="INT64")]}, {}, None, 400, "datatype INT64"),
    "unknown-datatype": ({"inputs": [_good(datatype="FLOAT32")]}, {}, None, 400, "unknown datatype"),
    "wrong-rank": ({"inputs": [_good(shape=[16])]}, {}, None, 400, "rank"),
    "wrong-fixed-dim": ({"inputs": [_good(shape=[1, 8], data=[0.0] * 8)]}, {}, None, 400, "dimension 1 is 8"),
    "negative-dim": ({"inputs": [_good(shape=[-1, 16])]}, {}, None, 400, "non-negative"),
    "element-count": ({"inputs": [_good(shape=[2, 16])]}, {}, None, 400, "needs 32 elements, data has 16"),
    "non-numeric-data": ({"inputs": [_good(data=["x"] * 16)]}, {}, None, 400, "FP32 takes JSON numbers"),
    "ragged-data": ({"inputs": [_good(data=[[0.0] * 10, [0.0] * 6])]}, {}, None, 400, "ragged nested list"),
    "non-json": (b"{'inputs': nope", {}, None, 400, "not valid JSON"),
    "json-not-object": (b'[{"name": "input"}]', {}, None, 400, "JSON object"),
    "missing-inputs": ({"id": "1"}, {}, None, 400, "'inputs' list"),
    "empty-inputs": ({"inputs": []}, {}, None, 400, "'inputs' list"),
    "missing-data": ({"inputs": [_without("data")]}, {}, None, 400, "no 'data'"),
    "missing-shape": ({"inputs": [_without("shape")]}, {}, None, 400, "shape"),
    "duplicate-input": ({"inputs": [_good(), _good()]}, {}, None, 400, "given twice"),
    "oversized-body": (OVERSIZED, {}, None, 413, "byte limit"),
    "binary-size-short": (*_binary(64, 60), None, 400, "exceeds the binary payload"),
    "binary-size-wrong-for-shape": (*_binary(60, 60), None, 400, "needs 64 bytes"),
    "binary-trailing-bytes": (*_binary(64, 70), None, 400, "unused bytes"),
    "binary-header-not-integer": (b"{}", {"headers": {"Inference-Header-Content-Length": "x"}}, None, 400,
                                  "must be an integer"),
    "binary-header-too-long": (b"{}", {"headers": {"Inference-Header-Content-Length": "999"}}, None, 400,
                               "inference-header-content-length"),
    "unknown-model": ({"inputs": [_good()]}, {}, "/v2/models/nope/infer", 404, "nope"),
    "unknown-requested-output": ({"inputs": [_good()], "outputs": [{"name": "probs"}]}, {}, None, 400,
                                 "unknown requested outputs ['probs']"),
    "v1-wrong-shape": ({"instances": [[0.0] * 3]}, {}, "/v1/models/mlp:predict", 400, "dimension 1 is 3"),
    "v1-not-instances": ({"inputs": [1]}, {}, "/v1/models/mlp:predict", 400, "instances"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_answered_4xx_with_a_reason(case, mlp_server):
    body, kwargs, path, status, fragment = MALFORMED[case]
    r = mlp_server.infer(body, path, **kwargs)
    assert r.status_code == status, r.text
    reason = r.json()["error"]
    assert fragment in reason, reason
    assert mlp_server.alive()


def test_oversized_streamed_body_is_refused(mlp_server):
    """No Content-Length (chunked upload): the limit still holds while the body streams in."""

    def chunks():
        for _ in range(20):
            yield b" " * 8192

    r = mlp_server.http.post("/v2/models/mlp/infer", content=chunks())
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert mlp_server.alive()


def test_multi_input_model(pair_server):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), np.float32)
    out = outputs_of(pair_server.infer({"inputs": [v2_input(b, "b"), v2_input(a, "a")]}))["out"]
    np.testing.assert_array_equal(out, a * 2 + b)
    body, headers = binary_request({"a": a, "b": b})
    np.testing.assert_array_equal(outputs_of(pair_server.infer(body, headers=headers))["out"], a * 2 + b)


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [([v2_input(np.zeros((2, 4), np.float32), "a"), v2_input(np.zeros((3, 4), np.float32), "b")],
      "disagree on the batch size"),
     ([v2_input(np.zeros((2, 4), np.float32), "a")], "missing model inputs: ['b']")],
    ids=["inconsistent-batch", "missing-input"],
)
def test_multi_input_malformed(inputs, fragment, pair_server):
    r = pair_server.infer({"inputs": inputs})
    assert r.status_code == 400 and fragment in r.json()["error"]
    r = pair_server.http.post("/v1/models/pair:predict", json={"instances": [[0.0] * 4]})
    assert r.status_code == 400 and "single-input" in r.text
    assert pair_server.alive()


def test_server_is_healthy_after_all_the_bad_requests(mlp_server, mlp_ref):
    x = np.ones((2, 16), np.float32)
    assert_close(outputs_of(mlp_server.infer({"inputs": [v2_input(x)]}))["output"], mlp_ref(input=x))
    text = mlp_server.metrics()
    assert metric_value(text, "modelops_predictor_requests_total", model="mlp", code="400") >= 10
    assert mlp_server.http.get("/v2/health/ready").status_code == 200


# --- a GPU that is not there -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_server(mlp_converted, logs):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the not-ready path cannot be shown here")
    server = Predictor(mlp_converted.out_dir, "mlp", logs, "--device", "cuda", wait="live")
    yield server
    server.stop()


def test_cuda_without_gpu_is_not_ready_with_the_reason(cuda_server):
    r = cuda_server.http.get("/v2/health/ready")
    assert r.status_code == 503
    assert re.search(r"CUDA|GPU", r.text), r.text
    r = cuda_server.http.get("/v2/models/mlp/ready")
    assert r.status_code == 503 and re.search(r"CUDA|GPU", r.text)


def test_cuda_without_gpu_never_runs_on_cpu(cuda_server):
    r = cuda_server.infer({"inputs": [_good()]})
    assert r.status_code == 503, r.text
    assert re.search(r"CUDA|GPU", r.json()["error"])
    r = cuda_server.http.post("/v1/models/mlp:predict", json={"instances": [[0.0] * 16]})
    assert r.status_code == 503, r.text
    assert cuda_server.alive()
