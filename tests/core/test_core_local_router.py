"""The local router on its own: real predictors behind it, real HTTP and gRPC, its control API.

Two `modelops serve` predictors of the same ONNX model (versions "1" and "2") sit behind
`python -m modelops.local.router`. The split follows the weights; weights switched many times
under concurrent load, a predictor removed, drained and stopped: no request is lost. A slow
backend (a test double, not our code) shows that `drain` waits for a request in flight.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import httpx
import numpy as np
import pytest

from modelops.local.ports import free_port
from modelops.local.processes import spawn, stop

from test_core_serving import Predictor, metric_value, v2_input

MODEL = "fraud"


class Router:
    def __init__(self, log_dir):
        self.port, self.admin_port, self.grpc_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.proc = spawn([sys.executable, "-m", "modelops.local.router", "--port", str(self.port),
                           "--admin-port", str(self.admin_port), "--grpc-port", str(self.grpc_port)],
                          log_dir / f"router-{self.port}.log")
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, "router exited"
            try:
                if httpx.get(f"{self.admin}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "router did not start"
            time.sleep(0.1)

    def routes(self, *routes: tuple) -> httpx.Response:
        """(version, Predictor or URL, weight): a Predictor's gRPC port is routed too."""
        table = []
        for v, backend, w in routes:
            route = {"version": v, "url": getattr(backend, "url", backend), "weight": w}
            if hasattr(backend, "grpc_url"):
                route["grpc"] = backend.grpc_url
            table.append(route)
        return httpx.put(f"{self.admin}/routes", json={"routes": table})

    def stop(self):
        stop(self.proc)


@pytest.fixture(scope="module")
def pair(mlp_converted, tmp_path_factory):
    logs = tmp_path_factory.mktemp("router-logs")
    one = Predictor(mlp_converted.out_dir, MODEL, logs, "--model-version", "1")
    two = Predictor(mlp_converted.out_dir, MODEL, logs, "--model-version", "2")
    yield one, two, logs
    one.stop()
    two.stop()


@pytest.fixture
def router(pair):
    r = Router(pair[2])
    yield r
    r.stop()


def body(seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).normal(size=(1, 16)).astype(np.float32)
    return json.dumps({"inputs": [v2_input(x)]}).encode()


def test_split_follows_the_weights_and_answers_carry_the_version(pair, router):
    one, two, _ = pair
    assert httpx.post(f"{router.url}/v2/models/{MODEL}/infer", content=body()).json()["reason"] == "NoBackend"
    assert router.routes(("1", one.url, 90), ("2", two.url, 10)).status_code == 200
    seen = {"1": 0, "2": 0}
    with httpx.Client() as http:
        for i in range(400):
            r = http.post(f"{router.url}/v2/models/{MODEL}/infer", content=body(i))
            assert r.status_code == 200
            version = r.headers["x-modelops-version"]
            assert r.json()["model_version"] == version  # the predictor that answered says so too
            seen[version] += 1
        metrics = httpx.get(f"{router.admin}/metrics").text  # the router counted exactly these
        # Everything else the predictor serves passes through: metadata, readiness, v1.
        meta = http.get(f"{router.url}/v2/models/{MODEL}")
        assert meta.status_code == 200 and meta.json()["name"] == MODEL
        assert http.get(f"{router.url}/v2/health/ready").status_code == 200
        bad = http.post(f"{router.url}/v2/models/{MODEL}/infer", content=b"{not json")
        assert bad.status_code == 400  # the predictor's own answer, unchanged
    assert 16 <= seen["2"] <= 64, seen  # 10% of 400, binomial: 40 +- 6 sigma
    assert metric_value(metrics, "modelops_router_requests_total", version="2", code="200") == seen["2"]
    assert metric_value(metrics, "modelops_router_requests_total", protocol="http", code="200") == 400
    assert metric_value(metrics, "modelops_router_requests_total", code="503", version="") == 1  # NoBackend
    table = httpx.get(f"{router.admin}/routes").json()
    assert [(r["version"], r["weight"]) for r in table["routes"]] == [("1", 90), ("2", 10)]


def test_control_api_refuses_bad_input(pair, router):
    one, two, _ = pair
    r = router.routes(("1", one.url, 101))
    assert r.status_code == 400 and "weight" in r.json()["error"]
    r = httpx.put(f"{router.admin}/routes", json={"routes": [{"version": "1", "url": "ftp://x", "weight": 1}]})
    assert r.status_code == 400 and "url" in r.json()["error"]
    router.routes(("1", one.url, 100))
    r = httpx.post(f"{router.admin}/drain", json={"urls": [one.url]})
    assert r.status_code == 409 and r.json()["reason"] == "StillRouted"


def test_switching_weights_and_removing_a_predictor_under_load_loses_nothing(pair, router, mlp_converted):
    """Concurrency 8 for the whole test; weights flip 60 times between v1 and a v3 started for this
    test; then v3 leaves (drained, then its process stopped): every request gets a 200."""
    one, two, logs = pair
    router.routes(("1", one, 100))
    third = Predictor(mlp_converted.out_dir, MODEL, logs, "--model-version", "3")
    results: list = []
    stop_load = threading.Event()

    async def load():
        async with aiohttp.ClientSession() as session:
            async def worker(i):
                n = 0
                while not stop_load.is_set():
                    n += 1
                    try:
                        async with session.post(f"{router.url}/v2/models/{MODEL}/infer", data=body(i * 100000 + n),
                                                headers={"content-type": "application/json"}) as resp:
                            await resp.read()
                            results.append((resp.status, resp.headers.get("x-modelops-version")))
                    except aiohttp.ClientError as exc:
                        results.append((type(exc).__name__, None))
            await asyncio.gather(*(worker(i) for i in range(8)))

    thread = threading.Thread(target=lambda: asyncio.run(load()))
    thread.start()
    try:
        time.sleep(0.5)
        for i in range(60):
            w = (i * 37) % 101
            assert router.routes(("1", one, 100 - w), ("3", third, w)).status_code == 200
            time.sleep(0.03)
        # v2 joins, v3 leaves: drained, then its process stopped while the load goes on.
        router.routes(("1", one, 50), ("2", two, 50))
        drained = httpx.post(f"{router.admin}/drain", json={"urls": [third.url], "timeout": 10}).json()
        assert drained["drained"] is True
        third.stop()
        time.sleep(1.0)
        router.routes(("2", two, 100))
        assert httpx.post(f"{router.admin}/drain", json={"urls": [one.url]}).json()["drained"] is True
        time.sleep(0.5)
    finally:
        stop_load.set()
        thread.join(30)
        third.stop()
    statuses = {}
    for status, version in results:
        statuses[(status, version)] = statuses.get((status, version), 0) + 1
    assert len(results) > 500, statuses
    assert all(status == 200 for status, _ in results), statuses
    assert {v for _, v in results} == {"1", "2", "3"}


class _Slow(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        time.sleep(1.0)
        payload = b'{"slow": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_drain_waits_for_the_request_in_flight(router, pair):
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    slow_url = f"http://127.0.0.1:{slow.server_address[1]}"
    one = pair[0]
    try:
        router.routes(("9", slow_url, 100))
        answer: list = []
        t = threading.Thread(target=lambda: answer.append(
            httpx.post(f"{router.url}/v2/models/{MODEL}/infer", content=body(), timeout=10)))
        t.start()
        time.sleep(0.3)  # the request is in flight at the slow backend
        router.routes(("1", one.url, 100))  # new requests go elsewhere at once
        assert httpx.post(f"{router.url}/v2/models/{MODEL}/infer", content=body()).headers[
            "x-modelops-version"] == "1"
        t0 = time.monotonic()
        drained = httpx.post(f"{router.admin}/drain", json={"urls": [slow_url], "timeout": 10}, timeout=15).json()
        waited = time.monotonic() - t0
        assert drained["drained"] is True and 0.4 < waited < 1.5, (drained, waited)
        t.join(10)
        assert answer[0].status_code == 200 and answer[0].json() == {"slow": True}
        assert answer[0].headers["x-modelops-version"] == "9"
    finally:
        slow.shutdown()


def grpc_request(x: np.ndarray):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    return pb.ModelInferRequest(model_name=MODEL, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=list(x.shape),
        contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()))])


def test_grpc_through_the_router(pair, router):
    """KServe's gRPC protocol through the router: same split, the version in the metadata, the
    predictor's own error statuses, UNAVAILABLE when nothing is routed; and weight flips plus a
    predictor leaving under gRPC load lose nothing."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    one, two, logs = pair

    async def scenario():
        async with grpc.aio.insecure_channel(router.grpc) as channel:
            stub = GRPCInferenceServiceStub(channel)
            x = np.random.default_rng(3).normal(size=(1, 16)).astype(np.float32)
            with pytest.raises(grpc.aio.AioRpcError) as nothing:
                await stub.ModelInfer(grpc_request(x), timeout=10)
            assert nothing.value.code() == grpc.StatusCode.UNAVAILABLE

            router.routes(("1", one, 50), ("2", two, 50))
            seen = {}
            for i in range(60):
                call = stub.ModelInfer(grpc_request(x), timeout=10)
                response = await call
                version = dict(await call.initial_metadata())["x-modelops-version"]
                seen[version] = seen.get(version, 0) + 1
                assert response.model_name == MODEL and len(response.outputs) == 1
            assert set(seen) == {"1", "2"}, seen
            # Expected output: the same model called directly.
            direct = await GRPCInferenceServiceStub(grpc.aio.insecure_channel(one.grpc_url)).ModelInfer(
                grpc_request(x), timeout=10)
            assert response.raw_output_contents == direct.raw_output_contents
            assert (await stub.ServerReady(pb.ServerReadyRequest(), timeout=10)).ready
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=10)
            assert meta.name == MODEL and meta.inputs[0].name == "input"
            bad = grpc_request(np.zeros((2, 15), np.float32))
            with pytest.raises(grpc.aio.AioRpcError) as malformed:
                await stub.ModelInfer(bad, timeout=10)
            assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the predictor's own answer
            assert "dimension 1 is 15" in malformed.value.details()

            # Load (8 concurrent calls) while the weights flip and version 2 leaves.
            results: list = []
            stop_load = asyncio.Event()

            async def worker():
                while not stop_load.is_set():
                    try:
                        call = stub.ModelInfer(grpc_request(x), timeout=10)
                        await call
                        results.append(("OK", dict(await call.initial_metadata())["x-modelops-version"]))
                    except grpc.aio.AioRpcError as exc:
                        results.append((exc.code().name, None))

            workers = [asyncio.create_task(worker()) for _ in range(8)]
            for i in range(40):
                w = (i * 37) % 101
                await asyncio.to_thread(router.routes, ("1", one, 100 - w), ("2", two, w))
                await asyncio.sleep(0.03)
            await asyncio.to_thread(router.routes, ("1", one, 100))
            drained = await asyncio.to_thread(
                lambda: httpx.post(f"{router.admin}/drain", json={"urls": [two.url], "timeout": 10}).json())
            assert drained["drained"] is True
            await asyncio.sleep(0.5)
            stop_load.set()
            await asyncio.gather(*workers)
            return results

    results = asyncio.run(scenario())
    assert len(results) > 200
    assert all(code == "OK" for code, _ in results), {r for r in results if r[0] != "OK"}
    assert {v for _, v in results} == {"1", "2"}
    metrics = httpx.get(f"{router.admin}/metrics").text
    assert metric_value(metrics, "modelops_router_requests_total", protocol="grpc", code="OK") >= len(results)
    assert metric_value(metrics, "modelops_router_requests_total", protocol="grpc",
                        code="INVALID_ARGUMENT") == 1
