"""Property-based fuzzing of `modelops serve` (hypothesis): generated V2 requests over REST and
gRPC against the two-input `mixed` model (FP32 `x`, INT64 `ids`).

Each generated case is a valid request (inputs in any order, flat or nested data, JSON or the
binary extension, an id, a subset of outputs, binary outputs, unknown extra keys) with, most of
the time, one mutation that makes it invalid (a wrong JSON type anywhere, an unknown name or
datatype, a bad shape, an element outside the datatype's policy, a broken binary framing, an
unknown version...). Properties: no 5xx ever; a mutated request gets a 4xx; a valid one gets a
200 whose outputs equal onnxruntime's in this process; every request goes over one keep-alive
connection that is only ever closed with `Connection: close`; the server survives.

Bounded for CI (FUZZ_EXAMPLES=2000 REST, FUZZ_GRPC_EXAMPLES=400 gRPC, well under a minute); the
seed is random unless FUZZ_SEED is set, and printed on failure. The larger documented run is
`scripts/fuzz_predictor.py` (the same test with more examples, counts by status).

Text models (`text_server`, a tiny SentenceTransformer exported by `text_artifacts`): generated
BYTES requests (JSON and length-prefixed binary, any Unicode) and OpenAI embeddings bodies, with
one mutation most of the time (a non-string element, a wrong datatype, a count or rank mismatch,
a broken length prefix, invalid UTF-8; a bad model, input or encoding_format). Valid ones equal
onnxruntime on `TextFrontend`'s tokens in this process; invalid ones get a 4xx (OpenAI's error
shape on its route); never a 5xx (FUZZ_TEXT_EXAMPLES=150 each).
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections import Counter

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

import predictor_models as pm
from predictor_models import RawHTTP
from test_core_serving import Predictor, metric_value

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
REST_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
GRPC_EXAMPLES = int(os.environ.get("FUZZ_GRPC_EXAMPLES", "400"))
VERSION = "3"
OUTPUTS = ["y", "total", "next_ids"]
SETTINGS = dict(deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return pm.mixed_model(tmp_path_factory.mktemp("fuzz-mixed"))


@pytest.fixture(scope="module", params=["open", "auth"])
def server(request, model_dir, tmp_path_factory):
    """The predictor as is, then with `--auth kubernetes` (the real API server reviews the token;
    fewer examples: the decoder behind it is the same, the access layer in front is what is new)."""
    args, auth = [], None
    if request.param == "auth":
        from predictor_access import AUDIENCE, KubeAuth

        auth = KubeAuth(request.getfixturevalue("control_plane"), tmp_path_factory.mktemp("fuzz-auth"), "mixed")
        args = auth.serve_args(ttl=30)
    srv = Predictor(model_dir, "mixed", tmp_path_factory.mktemp("fuzz-logs"), "--model-version", VERSION,
                    "--max-body-mb", "1", *args)
    token = auth.token("caller", AUDIENCE) if auth else None
    srv.auth_headers = {"Authorization": f"Bearer {token}"} if token else {}
    srv.grpc_metadata = [("authorization", f"Bearer {token}")] if token else None
    srv.rest_examples = REST_EXAMPLES if auth is None else max(1, REST_EXAMPLES // 4)
    srv.grpc_examples = GRPC_EXAMPLES if auth is None else max(1, GRPC_EXAMPLES // 4)
    yield srv
    srv.stop()
    if auth is not None:
        auth.close()


@pytest.fixture(scope="module")
def reference(model_dir):
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda feeds: dict(zip(OUTPUTS, session.run(None, feeds)))


@pytest.fixture(scope="module")
def report():
    counts = {"seed": SEED, "rest": Counter(), "grpc": Counter()}
    yield counts
    path = os.environ.get("FUZZ_REPORT")
    if path:
        with open(path, "w") as fh:
            json.dump({"seed": SEED, "rest": dict(counts["rest"]), "grpc": dict(counts["grpc"])}, fh, indent=2)


# --- generated values ----------------------------------------------------------------------------------
junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2, allow_nan=False),
                 st.text(max_size=4), st.lists(st.integers(0, 2), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=1))
not_object = junk.filter(lambda v: v is not None and not isinstance(v, dict))
not_list = junk.filter(lambda v: v is not None and not isinstance(v, list))
not_string = junk.filter(lambda v: not isinstance(v, str))
not_bool = junk.filter(lambda v: v is not None and not isinstance(v, bool))
fp32 = st.one_of(st.floats(-1e6, 1e6, width=32), st.integers(-10**6, 10**6),
                 st.floats(width=32, allow_nan=False, allow_infinity=False))
int64 = st.integers(-(2**63), 2**63 - 1)
BAD_FP32 = [None, "1.5", True, False, 1e39, -1e39, [1.0], {"v": 1}]
BAD_INT64 = [None, "1", True, 1.5, 2.0, 2**63, -(2**63) - 1, 2**64, [1], {"v": 1}]


@st.composite
def valid_request(draw):
    """(request dict, feeds, requested outputs or None, binary outputs, binary inputs)."""
    rows = draw(st.integers(1, 4))
    x = np.asarray(draw(st.lists(fp32, min_size=rows * 4, max_size=rows * 4)), np.float32).reshape(rows, 4)
    ids = np.asarray(draw(st.lists(int64, min_size=rows * 3, max_size=rows * 3)), np.int64).reshape(rows, 3)
    nested = draw(st.booleans())
    inputs = [{"name": "x", "datatype": "FP32", "shape": [rows, 4],
               "data": x.tolist() if nested else x.ravel().tolist()},
              {"name": "ids", "datatype": "INT64", "shape": [rows, 3],
               "data": ids.tolist() if nested else ids.ravel().tolist()}]
    if draw(st.booleans()):
        inputs.reverse()
    req = {"inputs": inputs}
    if draw(st.booleans()):
        req["id"] = draw(st.text(max_size=8))
    binary_all = draw(st.sampled_from([None, False, True]))
    if binary_all is not None:
        req["parameters"] = {"binary_data_output": binary_all, "other": 1}
    wanted = None
    if draw(st.booleans()):
        wanted = draw(st.lists(st.sampled_from(OUTPUTS), min_size=1, max_size=3, unique=True))
        req["outputs"] = []
        for name in wanted:
            out = {"name": name}
            flag = draw(st.sampled_from([None, False, True]))
            if flag is not None:
                out["parameters"] = {"binary_data": flag}
            req["outputs"].append(out)
    if draw(st.booleans()):
        req["extra"] = draw(junk)  # unknown keys are ignored
        inputs[0]["extra"] = 1
    binary_in = draw(st.booleans())
    return req, {"x": x, "ids": ids}, wanted, binary_in


def binary_outputs_of(req: dict, wanted) -> set:
    all_binary = bool((req.get("parameters") or {}).get("binary_data_output"))
    if wanted is None:
        return set(OUTPUTS) if all_binary else set()
    out = set()
    for o in req["outputs"]:
        flag = (o.get("parameters") or {}).get("binary_data")
        if flag or (flag is None and all_binary):
            out.add(o["name"])
    return out


def to_binary(req: dict, feeds: dict) -> tuple[bytes, dict]:
    req = copy.deepcopy(req)
    blobs = []
    for item in req["inputs"]:
        blob = feeds[item["name"]].tobytes()
        item.pop("data")
        item["parameters"] = {"binary_data_size": len(blob)}
        blobs.append(blob)
    head = json.dumps(req).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def _set_element(data, value):
    """Put VALUE at a random-ish first position of flat or nested data."""
    if isinstance(data[0], list):
        data[0][0] = value
    else:
        data[0] = value


MUTATIONS = [
    "name", "datatype", "shape", "element", "data-type", "data-missing", "data-count", "parameters",
    "binary-flag", "input-parameters", "binary-size-without-header", "outputs", "output-item",
    "output-name", "output-unknown", "output-duplicate", "output-parameters", "output-binary-flag",
    "id", "inputs", "input-dropped", "input-duplicated", "input-unknown", "body", "batch",
    "binary-header", "binary-size", "binary-trailing", "version", "model",
]


@st.composite
def rest_case(draw):
    """(method, path, body, headers, expected: 'ok' | 'bad', feeds, wanted, binary outputs, label)."""
    req, feeds, wanted, binary_in = draw(valid_request())
    path = "/v2/models/mixed/infer"
    mutation = draw(st.sampled_from(MUTATIONS)) if draw(st.integers(0, 9)) < 8 else None
    if mutation is None:
        if binary_in:
            body, headers = to_binary(req, feeds)
        else:
            body, headers = json.dumps(req).encode(), {}
        if draw(st.booleans()):
            path = f"/v2/models/mixed/versions/{VERSION}/infer"
        return "POST", path, body, headers, "ok", feeds, wanted, binary_outputs_of(req, wanted), "valid"

    item = draw(st.sampled_from(req["inputs"]))
    bad_elements = BAD_FP32 if item["name"] == "x" else BAD_INT64
    headers, body = {}, None
    if mutation == "name":
        item["name"] = draw(junk.filter(lambda v: v not in ("x", "ids")))
    elif mutation == "datatype":
        item["datatype"] = draw(st.one_of(not_string, st.sampled_from(["FP64", "INT32", "FLOAT", "fp32", "", "BYTES"]),
                                          st.sampled_from(["FP32", "INT64"])).filter(lambda v: v != item["datatype"]))
    elif mutation == "shape":
        rows, cols = item["shape"]
        item["shape"] = draw(st.one_of(
            not_list, st.just([rows, cols, 1]), st.just([rows * cols]), st.just([rows, cols + 1]),
            st.just([rows + 1, cols]), st.just([0, cols]), st.just([-rows, cols]), st.just([True, cols]),
            st.just([float(rows), cols]), st.just([str(rows), cols])))
    elif mutation == "element":
        _set_element(item["data"], draw(st.sampled_from(bad_elements)))
    elif mutation == "data-type":
        item["data"] = draw(st.one_of(not_list, st.just([[1, 2], [3]]), st.just([[1, [2]]])))
    elif mutation == "data-missing":
        del item["data"]
    elif mutation == "data-count":
        flat = np.asarray(item["data"]).ravel().tolist()
        item["data"] = flat[:-1] if draw(st.booleans()) else flat + flat[:1]
    elif mutation == "parameters":
        req["parameters"] = draw(not_object)
    elif mutation == "binary-flag":
        req["parameters"] = {"binary_data_output": draw(not_bool)}
    elif mutation == "input-parameters":
        item["parameters"] = draw(not_object)
    elif mutation == "binary-size-without-header":
        item["parameters"] = {"binary_data_size": 16}
    elif mutation == "outputs":
        req["outputs"] = draw(not_list)
    elif mutation == "output-item":
        req["outputs"] = [draw(junk.filter(lambda v: not isinstance(v, dict)))]
    elif mutation == "output-name":
        req["outputs"] = [{"name": draw(not_string)}]
    elif mutation == "output-unknown":
        req["outputs"] = [{"name": "y"}, {"name": draw(st.text(max_size=6).filter(lambda v: v not in OUTPUTS))}]
    elif mutation == "output-duplicate":
        req["outputs"] = [{"name": "total"}, {"name": "total"}]
    elif mutation == "output-parameters":
        req["outputs"] = [{"name": "y", "parameters": draw(not_object)}]
    elif mutation == "output-binary-flag":
        req["outputs"] = [{"name": "y", "parameters": {"binary_data": draw(not_bool)}}]
    elif mutation == "id":
        req["id"] = draw(junk.filter(lambda v: v is not None and not isinstance(v, str)))
    elif mutation == "inputs":
        req["inputs"] = draw(st.one_of(not_list, st.just([]), st.lists(not_object, min_size=1, max_size=2)))
    elif mutation == "input-dropped":
        req["inputs"].remove(item)
    elif mutation == "input-duplicated":
        req["inputs"].append(copy.deepcopy(item))
    elif mutation == "input-unknown":
        req["inputs"].append({"name": "z", "datatype": "FP32", "shape": [1, 1], "data": [1.0]})
    elif mutation == "body":
        body = draw(st.one_of(st.binary(max_size=40), st.just(json.dumps(req).encode()[:-1]),
                              st.sampled_from([b"[]", b"1", b'"x"', b"null", b"{", b"[" * 2000 + b"]" * 2000])))
    elif mutation == "batch":
        other = next(i for i in req["inputs"] if i is not item)
        rows, cols = item["shape"]
        item["shape"] = [rows + 1, cols]
        item["data"] = np.asarray(item["data"]).ravel().tolist() + np.asarray(item["data"]).ravel().tolist()[:cols]
        assert other["shape"][0] == rows
    elif mutation in ("binary-header", "binary-size", "binary-trailing"):
        body, headers = to_binary(req, feeds)
        length = int(headers["Inference-Header-Content-Length"])
        if mutation == "binary-header":
            headers["Inference-Header-Content-Length"] = draw(st.sampled_from(
                ["x", "-1", "0", str(length - 1), str(len(body) + 1), "1e3"]))
        elif mutation == "binary-size":
            head = json.loads(body[:length])
            head["inputs"][0]["parameters"]["binary_data_size"] += draw(st.sampled_from([-1, 1, 4, -4]))
            new_head = json.dumps(head).encode()
            body, headers = new_head + body[length:], {"Inference-Header-Content-Length": str(len(new_head))}
        else:
            body += b"\0" * draw(st.integers(1, 9))
    elif mutation == "version":
        path = f"/v2/models/mixed/versions/{draw(st.text('0123456789abc', min_size=1, max_size=3).filter(lambda v: v != VERSION))}/infer"
    elif mutation == "model":
        path = "/v2/models/other/infer"
    if body is None:
        body = json.dumps(req).encode()
    return "POST", path, body, headers, "bad", None, None, set(), mutation


def _decode_outputs(status_headers, payload: bytes) -> dict:
    headers = status_headers
    if "inference-header-content-length" in headers:
        n = int(headers["inference-header-content-length"])
        head, raw = json.loads(payload[:n]), payload[n:]
    else:
        head, raw = json.loads(payload), b""
    out, offset = {}, 0
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    for o in head["outputs"]:
        dtype = dtypes[o["datatype"]]
        if "parameters" in o and "binary_data_size" in o["parameters"]:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = ("binary", np.frombuffer(raw[offset:offset + size], dtype=dtype).reshape(o["shape"]))
            offset += size
        else:
            out[o["name"]] = ("json", o["data"], o["shape"])
    assert offset == len(raw)
    return head, out


def _check_equal(name, got, expected: np.ndarray):
    if got[0] == "binary":
        np.testing.assert_array_equal(got[1], expected, err_msg=name)
        return
    _, data, shape = got
    assert shape == list(expected.shape), name
    for value, want in zip(data, expected.ravel().tolist()):
        if isinstance(want, float) and not np.isfinite(want):
            assert value is None, (name, value, want)  # JSON has no inf/NaN: null
        else:
            assert value == want or np.float32(value) == np.float32(want), (name, value, want)


# --- the properties ---------------------------------------------------------------------------------------
def test_rest_fuzz(server, reference, report):
    counts = report["rest"]
    conn = [RawHTTP(server.http_port)]

    @seed(SEED)
    @settings(max_examples=server.rest_examples, **SETTINGS)
    @given(rest_case())
    def check(case):
        method, path, body, headers, expected, feeds, wanted, binary_out, label = case
        note(f"{label}: {path} {body[:300]!r} {headers}")
        status, resp_headers, payload = conn[0].request(method, path, body, {**headers, **server.auth_headers})
        counts[str(status)] += 1
        note(f"-> {status} {payload[:300]!r}")
        assert status < 500, f"{label}: {status} {payload[:300]!r}"
        if resp_headers.get("connection", "").lower() == "close":
            conn[0].close()
            conn[0] = RawHTTP(server.http_port)
        if expected == "bad":
            assert 400 <= status < 500, f"{label} answered {status}: {payload[:300]!r}"
            error = json.loads(payload)["error"]
            assert error and "\n" not in error
            return
        assert status == 200, payload[:300]
        head, outputs = _decode_outputs(resp_headers, payload)
        assert head["model_name"] == "mixed" and head["model_version"] == VERSION
        names = wanted or OUTPUTS
        assert list(outputs) == names
        assert {n for n, o in outputs.items() if o[0] == "binary"} == binary_out
        ref = reference(feeds)
        for name in names:
            _check_equal(name, outputs[name], ref[name])

    try:
        check()
    except BaseException as exc:
        raise AssertionError(f"REST fuzz failed: reproduce with FUZZ_SEED={SEED} ({exc})") from exc
    finally:
        conn[0].close()
    assert server.alive() and sum(counts.values()) >= server.rest_examples


GRPC_MUTATIONS = ["name", "datatype", "shape-rank", "shape-dim", "shape-zero", "shape-negative", "count",
                  "wrong-field", "raw-and-contents", "raw-length", "raw-count", "duplicate", "dropped",
                  "output-unknown", "output-duplicate", "version", "model", "batch", "empty"]


@st.composite
def grpc_case(draw):
    rows = draw(st.integers(1, 4))
    x = np.asarray(draw(st.lists(fp32, min_size=rows * 4, max_size=rows * 4)), np.float32).reshape(rows, 4)
    ids = np.asarray(draw(st.lists(int64, min_size=rows * 3, max_size=rows * 3)), np.int64).reshape(rows, 3)
    raw = draw(st.booleans())
    request = pb.ModelInferRequest(model_name="mixed", id=draw(st.text(max_size=6)))
    if draw(st.booleans()):
        request.model_version = VERSION
    for name, arr, datatype, field in [("x", x, "FP32", "fp32_contents"), ("ids", ids, "INT64", "int64_contents")]:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if raw:
            request.raw_input_contents.append(arr.tobytes())
        else:
            getattr(tensor.contents, field).extend(arr.ravel().tolist())
    wanted = None
    if draw(st.booleans()):
        wanted = draw(st.lists(st.sampled_from(OUTPUTS), min_size=1, max_size=3, unique=True))
        for name in wanted:
            request.outputs.add(name=name)
    mutation = draw(st.sampled_from(GRPC_MUTATIONS)) if draw(st.integers(0, 9)) < 8 else None
    if mutation is None:
        return request, "ok", {"x": x, "ids": ids}, wanted, raw, "valid"
    i = draw(st.integers(0, 1))
    tensor = request.inputs[i]
    if mutation == "name":
        tensor.name = draw(st.text(max_size=4).filter(lambda v: v not in ("x", "ids")))
    elif mutation == "datatype":
        tensor.datatype = draw(st.sampled_from(["FP64", "INT32", "", "fp32", "BYTES", "FP16"]))
    elif mutation == "shape-rank":
        tensor.shape.append(1)
    elif mutation == "shape-dim":
        tensor.shape[1] += 1
    elif mutation == "shape-zero":
        tensor.shape[0] = 0
    elif mutation == "shape-negative":
        tensor.shape[0] = -1
    elif mutation == "count":
        tensor.shape[0] += 1
    elif mutation == "wrong-field":
        if raw:
            del request.raw_input_contents[:]
        tensor.contents.Clear()
        tensor.contents.int_contents.extend([1] * (rows * len(tensor.shape)))
        other = request.inputs[1 - i]
        if raw:
            other.contents.Clear()
            field = "fp32_contents" if other.name == "x" else "int64_contents"
            getattr(other.contents, field).extend((x if other.name == "x" else ids).ravel().tolist())
    elif mutation == "raw-and-contents":
        if not raw:
            request.raw_input_contents.extend([x.tobytes(), ids.tobytes()])
        else:
            tensor.contents.fp32_contents.append(1.0)
    elif mutation == "raw-length":
        raw_list = list(request.raw_input_contents) or [x.tobytes(), ids.tobytes()]
        raw_list[i] = raw_list[i][:-1]
        for t in request.inputs:
            t.ClearField("contents")
        del request.raw_input_contents[:]
        request.raw_input_contents.extend(raw_list)
    elif mutation == "raw-count":
        for t in request.inputs:
            t.ClearField("contents")
        del request.raw_input_contents[:]
        request.raw_input_contents.append(x.tobytes())
    elif mutation == "duplicate":
        request.inputs.append(tensor)
        if raw:
            request.raw_input_contents.append(request.raw_input_contents[i])
    elif mutation == "dropped":
        del request.inputs[i]
        if raw:
            del request.raw_input_contents[i]
    elif mutation == "output-unknown":
        request.outputs.add(name=draw(st.text(max_size=4).filter(lambda v: v not in OUTPUTS)))
    elif mutation == "output-duplicate":
        request.outputs.add(name="y")
        request.outputs.add(name="y")
    elif mutation == "version":
        request.model_version = draw(st.text("0123456789", min_size=1, max_size=2).filter(lambda v: v != VERSION))
    elif mutation == "model":
        request.model_name = "other"
    elif mutation == "batch":
        arr = x if tensor.name == "x" else ids
        bigger = np.concatenate([arr, arr[:1]])
        tensor.shape[0] = len(bigger)
        if raw:
            request.raw_input_contents[i] = bigger.tobytes()
        else:
            field = "fp32_contents" if tensor.name == "x" else "int64_contents"
            getattr(tensor.contents, field).extend(arr[:1].ravel().tolist())
    elif mutation == "empty":
        del request.inputs[:]
        del request.raw_input_contents[:]
    return request, "bad", None, None, raw, mutation


def test_grpc_fuzz(server, reference, report):
    counts = report["grpc"]
    channel = grpc.insecure_channel(server.grpc_url)
    client = pb_grpc.GRPCInferenceServiceStub(channel)

    @seed(SEED)
    @settings(max_examples=server.grpc_examples, **SETTINGS)
    @given(grpc_case())
    def check(case):
        request, expected, feeds, wanted, raw, label = case
        note(f"{label}: {request}")
        try:
            response = client.ModelInfer(request, timeout=30, metadata=server.grpc_metadata)
        except grpc.RpcError as exc:
            counts[exc.code().name] += 1
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), \
                f"{label}: {exc.code()} {exc.details()}"
            assert expected == "bad", f"valid request refused: {exc.code()} {exc.details()}"
            assert exc.details() and "\n" not in exc.details()
            return
        counts["OK"] += 1
        assert expected == "ok", f"{label} answered OK"
        names = wanted or OUTPUTS
        assert [o.name for o in response.outputs] == names and response.model_version == VERSION
        ref = reference(feeds)
        for k, (out, name) in enumerate(zip(response.outputs, names)):
            dtype = np.float32 if out.datatype == "FP32" else np.int64
            if raw:
                got = np.frombuffer(response.raw_output_contents[k], dtype=dtype)
            else:
                got = np.asarray(out.contents.fp32_contents if dtype == np.float32 else out.contents.int64_contents,
                                 dtype=dtype)
            np.testing.assert_array_equal(got.reshape(list(out.shape)), ref[name], err_msg=name)

    try:
        check()
    except BaseException as exc:
        raise AssertionError(f"gRPC fuzz failed: reproduce with FUZZ_SEED={SEED} ({exc})") from exc
    finally:
        channel.close()
    assert server.alive()


def test_server_survived_without_a_single_500(server):
    text = server.metrics()
    assert metric_value(text, "modelops_predictor_requests_total", code="500") == 0
    assert metric_value(text, "modelops_predictor_requests_total", model="mixed", version=VERSION,
                        protocol="rest", code="200") > 0
    assert metric_value(text, "modelops_predictor_requests_total", protocol="grpc", code="400") > 0
    assert "internal error" not in server.log_path.read_text(errors="replace")
    assert server.http.get("/v2/health/ready").status_code == 200


# --- text models: BYTES over REST (JSON and binary) and OpenAI embeddings --------------------------------------
TEXT_EXAMPLES = int(os.environ.get("FUZZ_TEXT_EXAMPLES", "150"))
plain_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)  # JSON has no lone surrogates
words_text = st.lists(st.sampled_from(["good", "bad", "the", "movie", "w1", "[SEP]", "é", "😀"]),
                      max_size=80).map(" ".join)
texts_strategy = st.lists(st.one_of(plain_text, words_text), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    import text_artifacts as ta
    from modelops.text import TextFrontend

    model_dir, _ = ta.sentence_embedding_dir(tmp_path_factory.mktemp("fuzz-text") / "st")
    srv = Predictor(model_dir, "st", tmp_path_factory.mktemp("fuzz-text-logs"))
    frontend = TextFrontend(model_dir)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    srv.reference = lambda texts: session.run(None, frontend.encode(texts))[0]
    yield srv
    srv.stop()


def _lp(items: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


@st.composite
def text_case(draw):
    """(body, headers, texts or None when the case is invalid, label)."""
    texts = draw(texts_strategy)
    binary = draw(st.booleans())
    mutation = draw(st.sampled_from(["none"] * 4 + ["element", "datatype", "count", "rank", "prefix", "utf8"]))
    entry = {"name": "text", "datatype": "BYTES", "shape": [len(texts)]}
    items = [t.encode() for t in texts]
    data = list(texts)
    if mutation == "element":
        data[draw(st.integers(0, len(data) - 1))] = draw(not_string)
        binary = False
    elif mutation == "datatype":
        entry["datatype"] = draw(st.sampled_from(["FP32", "INT64", "bytes", "STRING"]))
    elif mutation == "count":
        entry["shape"] = [len(texts) + draw(st.sampled_from([-len(texts), 1, 2]))]
    elif mutation == "rank":
        entry["shape"] = [len(texts), 1]
    elif mutation in ("prefix", "utf8"):
        binary = True
    if binary:
        blob = _lp(items)
        if mutation == "prefix":
            blob = blob[:-1] if draw(st.booleans()) and blob else blob + b"\x01\x00"
        elif mutation == "utf8":
            blob = _lp(items + [b"\xff\xfe"])
            entry["shape"] = [len(items) + 1]
        entry["parameters"] = {"binary_data_size": len(blob)}
        head = json.dumps({"inputs": [entry]}).encode()
        return head + blob, {"Inference-Header-Content-Length": str(len(head))}, \
            texts if mutation == "none" else None, f"binary/{mutation}"
    entry["data"] = data
    return json.dumps({"inputs": [entry]}).encode(), {}, texts if mutation == "none" else None, f"json/{mutation}"


@st.composite
def openai_case(draw):
    """(body, texts or None when the case is invalid, encoding_format)."""
    body = {"model": "st", "input": draw(st.one_of(plain_text, texts_strategy))}
    fmt = draw(st.sampled_from(["float", "base64", None]))
    if fmt:
        body["encoding_format"] = fmt
    if draw(st.booleans()):
        body["user"] = "fuzz"
    mutation = draw(st.sampled_from(["none"] * 3 + ["model", "input", "element", "format", "drop"]))
    if mutation == "model":
        body["model"] = draw(st.one_of(not_string, st.sampled_from(["", "other", "st "])))
    elif mutation == "input":
        body["input"] = draw(st.one_of(st.just([]), not_string.filter(lambda v: not isinstance(v, list))))
    elif mutation == "element":
        items = list(body["input"]) if isinstance(body["input"], list) else [body["input"]]
        items.insert(draw(st.integers(0, len(items))), draw(not_string))
        body["input"] = items
    elif mutation == "format":
        body["encoding_format"] = draw(st.one_of(not_string, st.sampled_from(["int8", "FLOAT", ""])))
    elif mutation == "drop":
        del body[draw(st.sampled_from(["model", "input"]))]
    texts = None
    if mutation == "none":
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
    return json.dumps(body).encode(), texts, body.get("encoding_format", "float")


def test_text_bytes_fuzz(text_server):
    conn = [RawHTTP(text_server.http_port)]

    @seed(SEED)
    @settings(max_examples=TEXT_EXAMPLES, **SETTINGS)
    @given(text_case())
    def check(case):
        body, headers, texts, label = case
        note(f"{label}: {body[:300]!r}")
        status, resp_headers, payload = conn[0].request("POST", "/v2/models/st/infer", body, headers)
        note(f"-> {status} {payload[:300]!r}")
        assert status < 500
        if resp_headers.get("connection", "").lower() == "close":
            conn[0].close()
            conn[0] = RawHTTP(text_server.http_port)
        if texts is None:
            assert 400 <= status < 500 and "\n" not in json.loads(payload)["error"]
            return
        assert status == 200, payload[:300]
        (out,) = json.loads(payload)["outputs"]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, text_server.reference(texts), rtol=1e-4, atol=1e-4)

    try:
        check()
    except BaseException as exc:
        raise AssertionError(f"text fuzz failed: reproduce with FUZZ_SEED={SEED} ({exc})") from exc
    finally:
        conn[0].close()


def test_openai_fuzz(text_server):
    import base64

    conn = [RawHTTP(text_server.http_port)]

    @seed(SEED)
    @settings(max_examples=TEXT_EXAMPLES, **SETTINGS)
    @given(openai_case())
    def check(case):
        body, texts, fmt = case
        note(f"{body[:300]!r}")
        status, resp_headers, payload = conn[0].request("POST", "/openai/v1/embeddings", body,
                                                        {"Content-Type": "application/json"})
        note(f"-> {status} {payload[:300]!r}")
        assert status < 500
        doc = json.loads(payload)
        if texts is None:
            assert 400 <= status < 500
            assert set(doc["error"]) == {"message", "type", "param", "code"}
            return
        assert status == 200, payload[:300]
        vectors = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") if fmt == "base64" else d["embedding"]
                   for d in doc["data"]]
        np.testing.assert_allclose(vectors, text_server.reference(texts), rtol=1e-4, atol=1e-4)
        assert doc["usage"]["prompt_tokens"] >= 2 * len(texts)

    try:
        check()
    except BaseException as exc:
        raise AssertionError(f"OpenAI fuzz failed: reproduce with FUZZ_SEED={SEED} ({exc})") from exc
    finally:
        conn[0].close()
    text = text_server.metrics()
    assert metric_value(text, "modelops_predictor_requests_total", code="500") == 0
    assert "internal error" not in text_server.log_path.read_text(errors="replace")
