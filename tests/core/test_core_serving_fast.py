"""What the fast serving path changed, each observable: uvicorn's access log is off unless asked for
(`--access-log on`, MODELOPS_ACCESS_LOG=on); a bug in the layers in front of KServe's app (no
longer inside FastAPI's ServerErrorMiddleware) is still answered 500 with a request id; cheap
model calls run on the event loop, slow ones on the worker thread, failures isolated alike."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import orjson
import pytest

from modelops.cli import build_parser
from modelops.serving.batching import BatchingConfig, DynamicBatcher, runs_inline
from modelops.serving.replies import LastResort
from test_core_serving import Predictor, outputs_of, v2_input

ACCESS_LINE = '"POST /v2/models/mlp/infer HTTP/1.1" 200'


def _answered(server: Predictor, n: int = 3) -> str:
    x = np.zeros((1, 16), np.float32)
    for _ in range(n):
        outputs_of(server.infer({"inputs": [v2_input(x)]}))
    time.sleep(0.3)  # the log line is written after the response
    return server.log()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("fast-logs")


def test_access_log_is_off_by_default(mlp_converted, logs, monkeypatch):
    monkeypatch.delenv("MODELOPS_ACCESS_LOG", raising=False)
    server = Predictor(mlp_converted.out_dir, "mlp", logs, "--grpc-port", "0")
    try:
        log = _answered(server)
    finally:
        server.stop()
    assert ACCESS_LINE not in log
    assert "uvicorn.access" not in log


def test_access_log_on_with_the_flag(mlp_converted, logs, monkeypatch):
    monkeypatch.delenv("MODELOPS_ACCESS_LOG", raising=False)
    server = Predictor(mlp_converted.out_dir, "mlp", logs, "--grpc-port", "0", "--access-log", "on")
    try:
        log = _answered(server)
    finally:
        server.stop()
    assert log.count(ACCESS_LINE) >= 3, log


def test_access_log_default_comes_from_the_environment(monkeypatch):
    base = ["serve", "d", "--name", "m"]
    monkeypatch.delenv("MODELOPS_ACCESS_LOG", raising=False)
    assert build_parser().parse_args(base).access_log == "off"
    monkeypatch.setenv("MODELOPS_ACCESS_LOG", "on")
    assert build_parser().parse_args(base).access_log == "on"
    assert build_parser().parse_args([*base, "--access-log", "off"]).access_log == "off"
    assert "--access-log" in build_parser()._subparsers._group_actions[0].choices["serve"].format_help()


async def _call(app, headers=()) -> tuple[list[dict], BaseException | None]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v2/models/m", "headers": list(headers)}
    try:
        await app(scope, receive, send)
    except Exception as exc:
        return sent, exc
    return sent, None


def test_a_bug_in_front_is_answered_500_with_a_request_id():
    async def broken(scope, receive, send):  # an access layer whose review raised
        raise RuntimeError("boom")

    sent, exc = asyncio.run(_call(LastResort(broken), [(b"x-request-id", b"abc123")]))
    assert exc is None
    assert sent[0]["status"] == 500
    headers = dict(sent[0]["headers"])
    assert headers[b"x-request-id"] == b"abc123" and headers[b"connection"] == b"close"
    body = orjson.loads(sent[1]["body"])
    assert body["reason"] == "InternalError" and body["request_id"] == "abc123"


def test_a_bug_after_the_response_started_still_drops_the_connection():
    async def half(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("half a response")

    sent, exc = asyncio.run(_call(LastResort(half)))
    assert isinstance(exc, RuntimeError)  # uvicorn closes the connection: no second response
    assert [m["type"] for m in sent] == ["http.response.start"]


def test_the_fast_path_answers_json_errors_and_keeps_serving(mlp_converted, logs):
    """The routes now in front of FastAPI still give every error its reason, and v1 and /metrics
    (behind them, in KServe's app) still answer."""
    server = Predictor(mlp_converted.out_dir, "mlp", logs, "--grpc-port", "0")
    try:
        bad = server.infer(b"{not json")
        assert bad.status_code == 400 and bad.json()["reason"] == "InvalidRequest", bad.text
        unknown = server.infer({"inputs": []}, path="/v2/models/nope/infer")
        assert unknown.status_code == 404, unknown.text
        v1 = server.http.post("/v1/models/mlp:predict", content=json.dumps({"instances": [[0.0] * 16]}))
        assert v1.status_code == 200 and len(v1.json()["predictions"]) == 1, v1.text
        assert "modelops_predictor_requests_total" in server.metrics()
        assert server.alive()
    finally:
        server.stop()


class _Run:
    """A model call that records which thread ran it."""

    def __init__(self, delay: float = 0.0, fail_negative: bool = False):
        self.delay, self.fail_negative, self.threads = delay, fail_negative, []

    def __call__(self, feeds):
        x = feeds["x"]
        self.threads.append(threading.current_thread().name)
        if self.fail_negative and (x < 0).any():
            raise RuntimeError("boom")
        time.sleep(self.delay)
        return [x * 2]


def _sequential(batcher: DynamicBatcher, n: int) -> list:
    async def main():
        return [await batcher.submit({"x": np.full((1, 2), i, np.float32)}) for i in range(n)]

    try:
        return asyncio.run(main())
    finally:
        batcher.close()


def test_runs_inline_only_once_calls_were_measured_cheap():
    assert not runs_inline(None, 0.2)
    assert runs_inline(0.00005, 0.2)
    assert not runs_inline(0.0005, 0.2)
    assert not runs_inline(0.00005, 0.0)


def test_cheap_calls_run_on_the_event_loop_after_the_first():
    run = _Run()
    # a generous bound: a loaded test machine can stretch a trivial call past the default 0.2 ms
    results = _sequential(DynamicBatcher(run, BatchingConfig(inline_max_ms=50)), 5)
    assert run.threads[0].startswith("ort-batch")  # nothing measured yet: the worker thread
    assert run.threads[1:] == ["MainThread"] * 4
    for i, (y,) in enumerate(results):
        np.testing.assert_array_equal(y, np.full((1, 2), 2 * i, np.float32))


def test_slow_calls_and_inline_off_stay_on_the_worker_thread():
    slow = _Run(delay=0.002)
    _sequential(DynamicBatcher(slow, BatchingConfig()), 4)
    assert all(t.startswith("ort-batch") for t in slow.threads)
    off = _Run()
    _sequential(DynamicBatcher(off, BatchingConfig(inline_max_ms=0)), 4)
    assert all(t.startswith("ort-batch") for t in off.threads)


def test_an_inline_batch_that_fails_fails_only_its_culprit():
    run = _Run(fail_negative=True)
    batcher = DynamicBatcher(run, BatchingConfig(inline_max_ms=50))

    async def main():
        await batcher.submit({"x": np.ones((1, 2), np.float32)})  # measured cheap: inline from now on
        return await asyncio.gather(batcher.submit({"x": -np.ones((1, 2), np.float32)}),
                                    batcher.submit({"x": np.ones((1, 2), np.float32)}),
                                    return_exceptions=True)

    try:
        bad, good = asyncio.run(main())
    finally:
        batcher.close()
    assert isinstance(bad, RuntimeError)
    np.testing.assert_array_equal(good[0], np.full((1, 2), 2, np.float32))
    assert run.threads[1:] == ["MainThread"] * 3  # the merged call, then each alone


@pytest.mark.parametrize("hops", [0, 1, 2, 32])
def test_the_literal_scan_says_what_a_substring_search_says(hops):
    import random

    from modelops.serving.json_elements import contains

    rng = random.Random(hops)
    for _ in range(3000):
        data = bytes(rng.choice(b"tfrue als1.,\"") for _ in range(rng.randint(0, 40)))
        for word in (b"true", b"false"):
            assert contains(data, word, hops) == (word in data), (data, word)


def test_a_body_full_of_the_first_byte_does_not_make_the_scan_crawl():
    from modelops.serving.json_elements import contains

    body = b'{"inputs": "' + b"t" * 8_000_000 + b'"}'
    t = time.perf_counter()
    assert not contains(body, b"true") and contains(body + b"true", b"true")
    assert time.perf_counter() - t < 1.0  # a Python loop over 8M candidates takes seconds


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT8", "UINT8", "INT16", "UINT16", "INT32",
                                      "UINT32", "INT64", "UINT64"])
def test_the_struct_path_gives_what_the_exact_path_gives(datatype):
    """A body without true/false takes `fast_numbers` (struct); it must accept
    and give bit for bit what the exact element path gives, and refuse what it refuses, with the
    exact path's message: mixed ints and floats, values at and beyond each range, huge integers,
    floats for integer types, strings, null, nested lists, -0.0."""
    import random

    from modelops.errors import InvalidRequest
    from modelops.serving.json_elements import from_json
    from modelops.tensors import V2_TO_NUMPY, TensorSpec

    dtype = np.dtype(V2_TO_NUMPY[datatype])
    spec = TensorSpec("x", dtype, (-1,))
    rng = random.Random(datatype)
    if dtype.kind == "f":
        fi = np.finfo(dtype)
        edges = [float(fi.max), -float(fi.max), float(fi.max) * 1.0000001, float(fi.max) * 1.01, float(fi.tiny),
                 float(fi.tiny) / 3, 1e-320, -0.0, 0.0, 3, -7, 2 ** 70, 10 ** 400, 1e300,
                 # rounding ties (to even), and just under / at the tie that rounds the maximum up to inf
                 1 + float(fi.eps) / 2, 1 + 3 * float(fi.eps) / 2, float(fi.max) * (1 + float(fi.eps) / 4),
                 float(fi.max) * (1 + float(fi.eps) / 2)]
    else:
        ii = np.iinfo(dtype)
        edges = [int(ii.max), int(ii.min), int(ii.max) + 1, int(ii.min) - 1, 0, 2 ** 64, -(2 ** 63) - 1, 1.0, 2.5]
    odd = ["1.5", None, [1], {"a": 1}]

    def element():
        r = rng.random()
        if r < 0.15:
            return rng.choice(edges)
        if r < 0.17:
            return rng.choice(odd)
        if r < 0.6:
            return rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-30, 30)
        return rng.randint(-300, 300)

    def outcome(flat, booleans):
        try:
            arr = from_json(spec, (len(flat),), flat, "input 'x'", booleans)
            return "ok", arr.dtype, arr.tobytes()
        except InvalidRequest as exc:
            return "refused", str(exc)

    numbers = (float, int) if dtype.kind == "f" else (int,)
    accepted = 0
    for _ in range(1500):
        flat = [element() for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.5:  # most bodies are numbers of the datatype's kind only
            flat = [x for x in flat if type(x) in numbers] or [1]
        try:  # as the predictor gets it: JSON text parsed by orjson (no inf, no NaN; huge ints refused)
            flat = orjson.loads(json.dumps(flat, allow_nan=False))
        except (ValueError, orjson.JSONDecodeError):
            continue
        exact, fast = outcome(flat, True), outcome(flat, False)
        assert fast == exact, (flat, fast, exact)
        accepted += exact[0] == "ok"
    assert 100 < accepted < 1500  # both outcomes were exercised
