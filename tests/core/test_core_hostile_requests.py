"""Hostile and careless clients against `modelops serve` (real processes, real HTTP and gRPC).

Every malformed request gets a 4xx with a one-line reason naming the field (gRPC: the matching
status with the same reason), the connection it came on stays usable, REST and gRPC apply the
same element policy, the V2 version routes answer consistently, and a handler bug answers 500
with a request id instead of dropping the connection.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

import predictor_models as pm
from predictor_models import RawHTTP
from test_core_serving import Predictor, metric_value

VERSION = "7"


# --- servers ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile-logs")


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> Path:
    return pm.mixed_model(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def mixed(mixed_dir, logs):
    server = Predictor(mixed_dir, "mixed", logs, "--model-version", VERSION)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def types(tmp_path_factory, logs):
    server = Predictor(pm.types_model(tmp_path_factory.mktemp("types")), "types", logs)  # no version
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gather(tmp_path_factory, logs):
    server = Predictor(pm.gather_model(tmp_path_factory.mktemp("gather")), "gather", logs,
                       "--batch-wait-ms", "20")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mixed_ref(mixed_dir):
    return ort.InferenceSession(str(mixed_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def stub(server) -> pb_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(server.grpc_url)
    return pb_grpc.GRPCInferenceServiceStub(channel)


def good() -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                       {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]}


def changed(edit) -> dict:
    body = copy.deepcopy(good())
    edit(body)
    return body


# --- the reproductions: each a 4xx with a reason, on a connection that stays usable --------------
INFER = "/v2/models/mixed/infer"
REPRODUCTIONS = {
    # case: (method, path, body, status, fragment of the reason)
    "1-name-not-a-string": ("POST", INFER, changed(lambda b: b["inputs"][0].update(name=["x"])), 400,
                            "inputs[0].name must be a string"),
    "2-datatype-not-a-string": ("POST", INFER, changed(lambda b: b["inputs"][0].update(datatype=["FP32"])), 400,
                                "datatype must be a string"),
    "3-parameters-int": ("POST", INFER, changed(lambda b: b.update(parameters=5)), 400,
                         "parameters must be an object"),
    "3-parameters-true": ("POST", INFER, changed(lambda b: b.update(parameters=True)), 400,
                          "parameters must be an object"),
    "3-parameters-string": ("POST", INFER, changed(lambda b: b.update(parameters="x")), 400,
                            "parameters must be an object"),
    "3-parameters-list": ("POST", INFER, changed(lambda b: b.update(parameters=[1])), 400,
                          "parameters must be an object"),
    "4-input-parameters": ("POST", INFER, changed(lambda b: b["inputs"][0].update(parameters=[1])), 400,
                           "inputs[0].parameters must be an object"),
    "5-output-parameters": ("POST", INFER, changed(lambda b: b.update(outputs=[{"name": "y", "parameters": 5}])),
                            400, "outputs[0].parameters must be an object"),
    "6-outputs-not-a-list": ("POST", INFER, changed(lambda b: b.update(outputs=True)), 400,
                             "outputs must be a list"),
    "7-other-version-metadata": ("GET", "/v2/models/mixed/versions/1", None, 404, "version '1' not found"),
    "7-other-version-infer": ("POST", "/v2/models/mixed/versions/zzz/infer", good(), 404,
                              "version 'zzz' not found"),
    "7-other-version-ready": ("GET", "/v2/models/mixed/versions/1/ready", None, 404, "version '1' not found"),
    "8-int64-below-range": ("POST", INFER, changed(lambda b: b["inputs"][1].update(data=[-9223372036854775809, 0, 0])),
                            400, "INT64 takes JSON integers"),
    "8-int64-above-range": ("POST", INFER, changed(lambda b: b["inputs"][1].update(data=[9223372036854775808, 0, 0])),
                            400, "out of the INT64 range"),
    # the lenient behaviours the issue asked to decide on: refused
    "null-in-fp32": ("POST", INFER, changed(lambda b: b["inputs"][0].update(data=[None, 1, 2, 3])), 400,
                     "element 0 is null"),
    "fraction-as-int64": ("POST", INFER, changed(lambda b: b["inputs"][1].update(data=[1.5, 0, 0])), 400,
                          "element 0 is a number with a fraction or exponent"),
    "integral-float-as-int64": ("POST", INFER, changed(lambda b: b["inputs"][1].update(data=[2.0, 0, 0])), 400,
                                "INT64 takes JSON integers"),
    "numeric-string": ("POST", INFER, changed(lambda b: b["inputs"][0].update(data=["1.5", 1, 2, 3])), 400,
                       "element 0 is a string"),
    "bool-as-number": ("POST", INFER, changed(lambda b: b["inputs"][1].update(data=[True, 0, 0])), 400,
                       "element 0 is a boolean"),
    "fp32-overflow": ("POST", INFER, changed(lambda b: b["inputs"][0].update(data=[1e39, 1, 2, 3])), 400,
                      "out of the FP32 range"),
    "unknown-output": ("POST", INFER, changed(lambda b: b.update(outputs=[{"name": "nope"}])), 400,
                       "unknown requested outputs ['nope']"),
    "duplicate-output": ("POST", INFER, changed(lambda b: b.update(outputs=[{"name": "y"}, {"name": "y"}])), 400,
                         "output 'y' requested twice"),
    "id-not-a-string": ("POST", INFER, changed(lambda b: b.update(id=5)), 400, "id must be a string"),
    "binary-flag-not-bool": ("POST", INFER, changed(lambda b: b.update(parameters={"binary_data_output": 1})), 400,
                             "parameters.binary_data_output must be true or false"),
    "empty-tensor": ("POST", INFER, changed(lambda b: [i.update(shape=[0, i["shape"][1]], data=[])
                                                       for i in b["inputs"]]), 400, "has no elements"),
    "data-not-a-list": ("POST", INFER, changed(lambda b: b["inputs"][0].update(data={"a": 1})), 400,
                        "data must be a list"),
    "nested-mixed-depth": ("POST", INFER, changed(lambda b: b["inputs"][0].update(data=[[1, 2], [3, [4]]])), 400,
                           "a nested list"),
    "shape-with-bool": ("POST", INFER, changed(lambda b: b["inputs"][0].update(shape=[True, 4])), 400,
                        "shape must be a list of non-negative integers"),
    "deep-json": ("POST", INFER, b"[" * 5000 + b"]" * 5000, 400, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(REPRODUCTIONS))
def test_reproduction_is_a_4xx_and_the_connection_stays_usable(case, mixed):
    method, path, body, status, fragment = REPRODUCTIONS[case]
    conn = RawHTTP(mixed.http_port)
    try:
        for _ in range(2):  # twice on the same connection, a valid request after each
            got, headers, payload = conn.request(method, path, body)
            assert got == status, payload
            doc = json.loads(payload)
            assert fragment in doc["error"], doc["error"]
            assert "\n" not in doc["error"] and len(doc["error"]) < 400
            assert headers.get("connection", "").lower() != "close"
            ok, _, answer = conn.request("POST", INFER, good())
            assert ok == 200, answer
            assert json.loads(answer)["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    finally:
        conn.close()


def test_an_early_refusal_closes_the_connection_explicitly(mixed):
    """Refused before the body was read (declared too large): `Connection: close`."""
    conn = RawHTTP(mixed.http_port)
    try:
        conn.sock.sendall(b"POST /v2/models/mixed/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        status, headers, payload = conn.response()
        assert status == 413 and "limit" in json.loads(payload)["error"]
        assert headers["connection"].lower() == "close" and conn.peer_closed()
    finally:
        conn.close()
    conn = RawHTTP(mixed.http_port)
    try:  # an unknown model after the body was read: the connection stays
        status, headers, _ = conn.request("POST", "/v2/models/nope/infer", good())
        assert status == 404 and headers.get("connection", "").lower() != "close"
        assert conn.request("POST", INFER, good())[0] == 200
    finally:
        conn.close()


# --- element policy: the same on REST and gRPC, for every datatype -------------------------------------
REFUSED = {
    # datatype: [(JSON value, fragment)]
    "INT8": [(128, "out of the INT8 range"), (-129, "out of the INT8 range"), (1.5, "fraction"), (True, "boolean")],
    "INT16": [(32768, "out of the INT16 range"), ("1", "a string")],
    "INT32": [(2**31, "out of the INT32 range"), (None, "null")],
    "INT64": [(2**63, "out of the INT64 range"), (-(2**63) - 1, "INT64 takes JSON integers"), (1e3, "fraction")],
    "UINT8": [(256, "out of the UINT8 range"), (-1, "out of the UINT8 range")],
    "UINT16": [(65536, "out of the UINT16 range")],
    "UINT32": [(2**32, "out of the UINT32 range")],
    "UINT64": [(2**64, "UINT64 takes JSON integers"), (-1, "out of the UINT64 range")],
    "FP16": [(65520.0, "out of the FP16 range"), (None, "null")],
    "FP32": [(1e39, "out of the FP32 range"), (-1e39, "out of the FP32 range"), ("nan", "a string")],
    "FP64": [(10**400, "infinity"), (False, "boolean")],  # orjson refuses a number beyond double
    "BOOL": [(1, "BOOL takes true/false"), ("true", "a string"), (None, "null")],
    "BYTES": [(1, "BYTES takes strings"), (None, "null"), (["a"], "nested list")],
}
REFUSED_CASES = [(dt, value, fragment) for dt, cases in REFUSED.items() for value, fragment in cases]


@pytest.mark.parametrize(("datatype", "value", "fragment"), REFUSED_CASES,
                         ids=[f"{dt}-{json.dumps(v)[:24]}" for dt, v, _ in REFUSED_CASES])
def test_element_policy_rest(datatype, value, fragment, types):
    other = pm.EXAMPLE[datatype][1]
    r = types.infer(pm.types_request(**{datatype: [value, other]}))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert fragment in error, error
    assert f"t_{datatype.lower()}" in error or error.startswith("request body is not valid JSON")


def test_every_datatype_round_trips_exactly(types):
    """The limits of each datatype are accepted and come back unchanged (REST JSON)."""
    r = types.infer(pm.types_request())
    assert r.status_code == 200, r.text
    for out in r.json()["outputs"]:
        datatype = out["datatype"]
        assert out["name"] == f"o_{datatype.lower()}" and out["shape"] == [1, 2]
        assert out["data"] == pm.EXAMPLE[datatype], datatype


def _typed_input(datatype: str, values, shape=(1, 2)) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(name=f"t_{datatype.lower()}", datatype=datatype, shape=list(shape))
    if datatype == "FP16":
        return tensor
    field = {"INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
             "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
             "BOOL": "bool_contents", "BYTES": "bytes_contents"}[datatype]
    getattr(tensor.contents, field).extend([v.encode() if isinstance(v, str) else v for v in values])
    return tensor


def types_grpc_request(**overrides) -> pb.ModelInferRequest:
    """All typed contents except FP16, which has no typed field: then every input goes raw."""
    request = pb.ModelInferRequest(model_name="types")
    for datatype in pm.TYPES:
        if datatype == "FP16":
            continue
        request.inputs.append(overrides.get(datatype) or _typed_input(datatype, pm.EXAMPLE[datatype]))
    return request


def test_grpc_typed_contents_and_the_same_range_policy(types):
    """gRPC carries INT8/16 in int32 and UINT8/16 in uint32: the same range checks apply."""
    client = stub(types)
    # FP16 has no typed field: a typed request for a model with an FP16 input is refused, with why.
    with pytest.raises(grpc.RpcError) as exc:
        client.ModelInfer(types_grpc_request())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing model inputs: ['t_fp16']" in exc.value.details()
    request = types_grpc_request()
    request.inputs.append(_typed_input("FP16", []))
    with pytest.raises(grpc.RpcError) as exc:
        client.ModelInfer(request)
    assert "FP16 data must be sent in raw_input_contents" in exc.value.details()
    for datatype, value in [("INT8", 128), ("INT16", -32769), ("UINT8", 256), ("UINT16", 65536)]:
        request = types_grpc_request(**{datatype: _typed_input(datatype, [value, 0])})
        with pytest.raises(grpc.RpcError) as exc:
            client.ModelInfer(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"out of the {datatype} range" in exc.value.details(), exc.value.details()
        # REST says the same
        r = types.infer(pm.types_request(**{datatype: [value, 0]}))
        assert r.status_code == 400 and f"out of the {datatype} range" in r.json()["error"]
    # contents in the wrong field
    wrong = pb.ModelInferRequest.InferInputTensor(name="t_int64", datatype="INT64", shape=[1, 2])
    wrong.contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(grpc.RpcError) as exc:
        client.ModelInfer(types_grpc_request(INT64=wrong))
    assert "INT64 data goes in contents.int64_contents, got fp32_contents" in exc.value.details()
    # BYTES that is not UTF-8
    bad = pb.ModelInferRequest.InferInputTensor(name="t_bytes", datatype="BYTES", shape=[1, 2])
    bad.contents.bytes_contents.extend([b"\xff\xfe", b"ok"])
    with pytest.raises(grpc.RpcError) as exc:
        client.ModelInfer(types_grpc_request(BYTES=bad))
    assert "not UTF-8" in exc.value.details()


def test_grpc_raw_contents_round_trip_every_datatype(types):
    import struct

    request = pb.ModelInferRequest(model_name="types")
    for datatype in pm.TYPES:
        request.inputs.append(pb.ModelInferRequest.InferInputTensor(
            name=f"t_{datatype.lower()}", datatype=datatype, shape=[1, 2]))
        values = pm.EXAMPLE[datatype]
        if datatype == "BYTES":
            blob = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
        else:
            blob = np.asarray(values, dtype=pm_dtype(datatype)).tobytes()
        request.raw_input_contents.append(blob)
    response = stub(types).ModelInfer(request)
    assert len(response.raw_output_contents) == len(pm.TYPES)
    for out, raw in zip(response.outputs, response.raw_output_contents):
        if out.datatype == "BYTES":
            assert raw == request.raw_input_contents[-1]
        else:
            got = np.frombuffer(raw, dtype=pm_dtype(out.datatype)).tolist()
            assert got == np.asarray(pm.EXAMPLE[out.datatype], pm_dtype(out.datatype)).tolist(), out.datatype
    # BOOL bytes other than 0/1 are not booleans
    request.raw_input_contents[list(pm.TYPES).index("BOOL")] = b"\x02\x00"
    with pytest.raises(grpc.RpcError) as exc:
        stub(types).ModelInfer(request)
    assert "BOOL bytes must be 0 or 1" in exc.value.details()


def pm_dtype(datatype: str):
    from modelops.tensors import V2_TO_NUMPY

    return V2_TO_NUMPY[datatype]


def test_grpc_and_rest_agree_on_requested_outputs(mixed):
    client = stub(mixed)
    request = pb.ModelInferRequest(model_name="mixed")
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    x.contents.fp32_contents.extend([1, 2, 3, 4])
    ids = request.inputs.add(name="ids", datatype="INT64", shape=[1, 3])
    ids.contents.int64_contents.extend([1, 2, 3])
    request.outputs.add(name="nope")
    with pytest.raises(grpc.RpcError) as exc:
        client.ModelInfer(request)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rest = mixed.infer(changed(lambda b: b.update(outputs=[{"name": "nope"}])))
    assert rest.status_code == 400 and rest.json()["error"] == exc.value.details()

    del request.outputs[:]
    request.outputs.add(name="next_ids")
    request.outputs.add(name="y")
    response = client.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["next_ids", "y"]
    assert list(response.outputs[0].contents.int64_contents) == [2, 3, 4]
    assert list(response.outputs[1].contents.fp32_contents) == [2, 4, 6, 8]
    assert response.model_version == VERSION
    rest = mixed.infer(changed(lambda b: b.update(outputs=[{"name": "next_ids"}, {"name": "y"}])))
    assert [o["name"] for o in rest.json()["outputs"]] == ["next_ids", "y"]

    request.inputs.append(request.inputs[0])  # the same input twice
    with pytest.raises(grpc.RpcError) as exc:
        client.ModelInfer(request)
    assert "input 'x' given twice" in exc.value.details()


# --- versions ---------------------------------------------------------------------------------------------
def test_versions_are_consistent_over_rest_and_grpc(mixed, types):
    meta = mixed.http.get("/v2/models/mixed").json()
    assert meta["versions"] == [VERSION] and meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    assert mixed.http.get(f"/v2/models/mixed/versions/{VERSION}").json() == meta
    assert mixed.http.get(f"/v2/models/mixed/versions/{VERSION}/ready").json() == {"name": "mixed", "ready": True}
    r = mixed.infer(good(), f"/v2/models/mixed/versions/{VERSION}/infer")
    assert r.status_code == 200 and r.json()["model_version"] == VERSION
    # served without --model-version: no versions, and no version route matches
    assert types.http.get("/v2/models/types").json()["versions"] == []
    r = types.http.get("/v2/models/types/versions/1")
    assert r.status_code == 404 and "--model-version not given" in r.json()["error"]

    client = stub(mixed)
    md = client.ModelMetadata(pb.ModelMetadataRequest(name="mixed"))
    assert list(md.versions) == [VERSION] and md.inputs[1].datatype == "INT64" and list(md.inputs[1].shape) == [-1, 3]
    assert client.ModelMetadata(pb.ModelMetadataRequest(name="mixed", version=VERSION)).name == "mixed"
    assert client.ModelReady(pb.ModelReadyRequest(name="mixed", version=VERSION)).ready
    for call, request in [(client.ModelMetadata, pb.ModelMetadataRequest(name="mixed", version="1")),
                          (client.ModelReady, pb.ModelReadyRequest(name="mixed", version="1")),
                          (client.ModelInfer, pb.ModelInferRequest(model_name="mixed", model_version="1")),
                          (client.ModelInfer, pb.ModelInferRequest(model_name="nope"))]:
        with pytest.raises(grpc.RpcError) as exc:
            call(request)
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND, exc.value.details()


# --- one request's values never cost another's answer -------------------------------------------------------
def test_a_request_the_graph_refuses_fails_alone_in_its_batch(gather):
    """Batched with good requests, an index out of range gets its 400; the others their 200."""
    def one(i):
        idx = 99 if i % 8 == 3 else i % 10
        return i, idx, gather.infer({"inputs": [{"name": "idx", "datatype": "INT64", "shape": [1, 1], "data": [idx]}]})

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    for i, idx, r in results:
        if idx == 99:
            assert r.status_code == 400 and "the model refused the input" in r.json()["error"], r.text
        else:
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == [float(idx)]
    text = gather.metrics()
    assert metric_value(text, "modelops_predictor_batch_rows_count", model="gather") < 64  # batches did form


def test_no_request_was_answered_500(mixed, types, gather):
    for server in (mixed, types, gather):
        assert server.alive()
        text = server.metrics()
        assert metric_value(text, "modelops_predictor_requests_total", code="500") == 0
        assert "internal error" not in server.log_path.read_text(errors="replace")


# --- a handler bug: 500 with a request id, never a dropped connection -----------------------------------------
class BrokenModel:
    """A model whose inference raises what no code path expects (a stand-in for a bug)."""

    name, version, ready, not_ready_reason = "broken", "1", True, None
    output_names = ["y"]

    def __init__(self):
        from modelops.tensors import TensorSpec

        self.inputs = [TensorSpec("x", np.dtype(np.float32), (-1, 4))]

    def metadata(self):
        raise KeyError("metadata bug")

    async def answer(self, request):
        raise RuntimeError("a bug in the handler")


async def _fallback_app(scope, receive, send):
    """Stands in for KServe's app behind the layer: /crash raises before responding."""
    if scope["path"] == "/crash":
        raise ValueError("kserve route bug")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def broken_server():
    import uvicorn

    from modelops.local.ports import free_port
    from modelops.serving.routes import PredictorASGI

    port = free_port()
    app = PredictorASGI(_fallback_app, {"broken": BrokenModel()})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                           http="httptools"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def test_a_handler_exception_answers_500_with_a_request_id(broken_server):
    conn = RawHTTP(broken_server)
    try:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        status, headers, payload = conn.request("POST", "/v2/models/broken/infer", body,
                                                {"X-Request-Id": "req-42"})
        assert status == 500
        doc = json.loads(payload)
        assert doc["request_id"] == "req-42" and headers["x-request-id"] == "req-42"
        assert doc["reason"] == "InternalError" and "a bug" not in doc["error"]  # no internals leak
        # the body had been read: the connection stays usable
        assert headers.get("connection", "").lower() != "close"
        assert conn.request("GET", "/other")[0] == 200
        # a bug in a body-less route: 500 with a generated id
        status, headers, payload = conn.request("GET", "/v2/models/broken")
        assert status == 500 and len(json.loads(payload)["request_id"]) == 32
    finally:
        conn.close()
    conn = RawHTTP(broken_server)
    try:  # a bug behind the layer (KServe's routes): 500 with an id and an explicit close
        status, headers, payload = conn.request("GET", "/crash")
        assert status == 500 and json.loads(payload)["request_id"]
        assert headers["connection"].lower() == "close" and conn.peer_closed()
    finally:
        conn.close()
    with httpx.Client(base_url=f"http://127.0.0.1:{broken_server}") as client:
        assert client.get("/other").status_code == 200  # the server itself is fine
