"""Unit tests of the pure parts: V2 codec, provider selection, parity comparison, conversion
options, model URI parsing and the dynamic batcher. No servers here."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import orjson
import pytest

from modelops import errors
from modelops.conversion.options import ConversionOptions
from modelops.conversion.parity import ParityReport, compare, generate_samples
from modelops.conversion.pipeline import cache_key
from modelops.registry import parse_model_uri
from modelops.serving import codec
from modelops.serving.batching import BatchingConfig, DynamicBatcher
from modelops.serving.providers import select_providers
from modelops.tensors import TensorSpec

X = TensorSpec("input", np.dtype(np.float32), (-1, 4))
IMG = TensorSpec("image", np.dtype(np.float32), (-1, 1, 2, 2))
IDS = TensorSpec("ids", np.dtype(np.int64), (-1, 3))


def _body(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _inp(name="input", datatype="FP32", shape=(1, 4), data=None, **extra):
    d = {"name": name, "datatype": datatype, "shape": list(shape)}
    if data is not None:
        d["data"] = data
    d.update(extra)
    return d


# --- codec.decode_request -----------------------------------------------------------------------
class TestDecodeRequest:
    def test_json_request_decodes_to_typed_arrays(self):
        request = codec.decode_request(
            _body(_inp(shape=[2, 4], data=list(range(8))), id="r1"), [X], ["y"])
        assert request.id == "r1" and request.outputs is None and not request.binary
        arr = request.feeds["input"]
        assert arr.dtype == np.float32 and arr.shape == (2, 4)
        np.testing.assert_array_equal(arr, np.arange(8, dtype=np.float32).reshape(2, 4))

    def test_nested_data_is_accepted_in_row_major_order(self):
        feeds = codec.decode_request(_body(_inp(shape=[2, 4], data=[[0, 1, 2, 3], [4, 5, 6, 7]])), [X], ["y"]).feeds
        np.testing.assert_array_equal(feeds["input"].ravel(), np.arange(8))

    def test_binary_extension(self):
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
        head = _body(_inp(shape=[2, 4], parameters={"binary_data_size": x.nbytes}),
                     _inp("ids", "INT64", [2, 3], parameters={"binary_data_size": ids.nbytes}))
        feeds = codec.decode_request(head + x.tobytes() + ids.tobytes(), [X, IDS], ["y"], json_length=len(head)).feeds
        np.testing.assert_array_equal(feeds["input"], x)
        np.testing.assert_array_equal(feeds["ids"], ids)

    def test_binary_and_json_inputs_mix(self):
        x = np.ones((1, 4), np.float32)
        head = _body(_inp(parameters={"binary_data_size": 16}), _inp("ids", "INT64", [1, 3], data=[7, 8, 9]))
        feeds = codec.decode_request(head + x.tobytes(), [X, IDS], ["y"], json_length=len(head)).feeds
        assert feeds["ids"].tolist() == [[7, 8, 9]]

    @pytest.mark.parametrize(
        ("body", "specs", "fragment"),
        [
            (_body(_inp("x", data=[0] * 4)), [X], "unknown input name 'x'"),
            (_body(_inp(datatype="INT64", data=[0] * 4)), [X], "datatype INT64 does not match the model's FP32"),
            (_body(_inp(datatype="FLOAT", data=[0] * 4)), [X], "unknown datatype 'FLOAT'"),
            (_body(_inp(shape=[4], data=[0] * 4)), [X], "rank 1"),
            (_body(_inp(shape=[1, 3], data=[0] * 3)), [X], "dimension 1 is 3, model expects 4"),
            (_body(_inp(shape=[-1, 4], data=[0] * 4)), [X], "non-negative integers"),
            (_body(_inp(shape="1,4", data=[0] * 4)), [X], "shape must be a list"),
            (_body(_inp(shape=[2, 4], data=[0] * 4)), [X], "needs 8 elements, data has 4"),
            (_body(_inp(data=["a", "b", "c", "d"])), [X], "element 0 is a string (\"a\"); FP32 takes JSON numbers"),
            (_body(_inp(data=[[0, 1], [2]])), [X], "ragged nested list"),
            (b"not json", [X], "not valid JSON"),
            (b"[1, 2, 3]", [X], "must be a JSON object"),
            (b'{"id": "x"}', [X], "'inputs' list"),
            (b'{"inputs": []}', [X], "'inputs' list"),
            (b'{"inputs": {"name": "input"}}', [X], "'inputs' list"),
            (b'{"inputs": [42]}', [X], "inputs[0] must be an object"),
            (_body(_inp()), [X], "no 'data'"),
            (_body(_inp(data=[0] * 4), _inp(data=[0] * 4)), [X], "given twice"),
            (_body(_inp(data=[0] * 4)), [X, IDS], "missing model inputs: ['ids']"),
            (_body(_inp(shape=[1, 4], data=[0] * 4), _inp("ids", "INT64", [2, 3], data=[0] * 6)), [X, IDS],
             "disagree on the batch size"),
            (_body(_inp(data=[0] * 4, parameters={"binary_data_size": 16})), [X], "no inference-header"),
        ],
        ids=["name", "datatype", "unknown-datatype", "rank", "fixed-dim", "negative-dim", "shape-type",
             "element-count", "strings", "ragged", "non-json", "json-array", "no-inputs", "empty-inputs",
             "inputs-not-list", "input-not-object", "no-data", "duplicate", "missing-input",
             "batch-mismatch", "binary-size-without-header"],
    )
    def test_malformed_requests_name_the_problem(self, body, specs, fragment):
        with pytest.raises(errors.InvalidRequest) as exc:
            codec.decode_request(body, specs, ["y"])
        assert fragment in str(exc.value)
        assert exc.value.http_status == 400

    @pytest.mark.parametrize(
        ("size", "payload", "fragment"),
        [
            (16, 12, "exceeds the binary payload"),  # payload shorter than declared
            (12, 12, "needs 16 bytes, binary data has 12"),  # declared size wrong for the shape
            (16, 20, "4 unused bytes"),  # trailing garbage
        ],
    )
    def test_binary_size_mismatches(self, size, payload, fragment):
        head = _body(_inp(parameters={"binary_data_size": size}))
        with pytest.raises(errors.InvalidRequest, match=fragment):
            codec.decode_request(head + b"\0" * payload, [X], ["y"], json_length=len(head))

    @pytest.mark.parametrize("json_length", [0, -1, 10_000])
    def test_header_length_out_of_range(self, json_length):
        with pytest.raises(errors.InvalidRequest, match="inference-header-content-length"):
            codec.decode_request(_body(_inp(data=[0] * 4)), [X], ["y"], json_length=json_length)


class TestEncodeResponse:
    def test_json_roundtrip_keeps_float32_values_exact(self):
        out = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
        body, head_len = codec.encode_response("m", ["y"], [out], request_id="7", model_version="2")
        assert head_len is None
        doc = orjson.loads(body)
        assert doc["model_name"] == "m" and doc["id"] == "7" and doc["model_version"] == "2"
        (entry,) = doc["outputs"]
        assert entry["name"] == "y" and entry["datatype"] == "FP32" and entry["shape"] == [3, 2]
        np.testing.assert_array_equal(np.asarray(entry["data"], np.float32).reshape(3, 2), out)

    def test_binary_response(self):
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = np.array([1, 0], dtype=np.int64)
        body, head_len = codec.encode_response("m", ["a", "b"], [a, b], binary=frozenset({"a", "b"}))
        head = orjson.loads(body[:head_len])
        sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
        assert sizes == [a.nbytes, b.nbytes] and len(body) == head_len + sum(sizes)
        raw = body[head_len:]
        np.testing.assert_array_equal(np.frombuffer(raw[:24], np.float32).reshape(2, 3), a)
        np.testing.assert_array_equal(np.frombuffer(raw[24:], np.int64), b)
        assert head["outputs"][1]["datatype"] == "INT64"

    @pytest.mark.parametrize(
        ("header", "wanted"),
        [({}, set()), ({"parameters": {"binary_data_output": True}}, {"y", "z"}),
         ({"outputs": [{"name": "y", "parameters": {"binary_data": True}}]}, {"y"}),
         ({"parameters": {"binary_data_output": True}, "outputs": [{"name": "y", "parameters": {"binary_data": False}},
                                                                  {"name": "z"}]}, {"z"}),
         ({"outputs": [{"name": "y"}]}, set())],
    )
    def test_binary_outputs(self, header, wanted):
        body = _body(_inp(data=[0] * 4), **header)
        assert codec.decode_request(body, [X], ["y", "z"]).binary == wanted


class TestDecodeV1:
    def test_instances(self):
        feeds = codec.decode_v1({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}, [X])
        assert feeds["input"].shape == (2, 4) and feeds["input"].dtype == np.float32

    def test_raw_bytes_are_parsed(self):
        assert codec.decode_v1(b'{"instances": [[1, 2, 3, 4]]}', [X])["input"].shape == (1, 4)

    @pytest.mark.parametrize(
        ("body", "specs", "fragment"),
        [({"inputs": []}, [X], "'instances' list"), (b"{nope", [X], "not valid JSON"),
         ({"instances": [[1, 2, 3]]}, [X], "dimension 1 is 3"),
         ({"instances": [[1, 2, 3, 4]]}, [X, IDS], "single-input"),
         ({"instances": [["a", 1, 2, 3]]}, [X], "FP32 takes JSON numbers"),
         ({"instances": [[None, 1, 2, 3]]}, [X], "element 0 is null")],
    )
    def test_invalid(self, body, specs, fragment):
        with pytest.raises(errors.InvalidRequest, match=fragment):
            codec.decode_v1(body, specs)


# --- providers ----------------------------------------------------------------------------------
class TestSelectProviders:
    CPU = ["CPUExecutionProvider"]

    def test_cpu_is_always_cpu_only(self):
        assert select_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == self.CPU

    def test_auto_prefers_tensorrt_then_cuda(self):
        available = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
        assert select_providers("auto", available) == [
            "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def test_auto_without_gpu_is_cpu(self):
        assert select_providers("auto", ["AzureExecutionProvider", "CPUExecutionProvider"]) == self.CPU

    def test_cuda_with_cuda(self):
        assert select_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
            "CUDAExecutionProvider", "CPUExecutionProvider"]

    def test_cuda_without_gpu_never_falls_back_to_cpu(self):
        with pytest.raises(errors.DeviceUnavailable) as exc:
            select_providers("cuda", ["AzureExecutionProvider", "CPUExecutionProvider"])
        assert "CUDA" in str(exc.value) and exc.value.http_status == 503

    def test_cuda_on_this_machine(self):
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("this machine has a CUDA-enabled onnxruntime")
        with pytest.raises(errors.DeviceUnavailable):
            select_providers("cuda")

    def test_unknown_device(self):
        with pytest.raises(errors.InvalidSpec, match="unknown device 'tpu'"):
            select_providers("tpu", self.CPU)


# --- parity ---------------------------------------------------------------------------------------
class TestParityCompare:
    def _report(self, expected, actual, rtol=1e-3, atol=1e-5, rows=None):
        report = ParityReport(rtol=rtol, atol=atol)
        expected = [np.asarray(e) for e in expected]
        compare(report, [f"out{i}" for i in range(len(actual))], expected, [np.asarray(a) for a in actual],
                rows=rows if rows is not None else len(expected[0]))
        return report

    def test_identical_outputs_pass_with_zero_error(self):
        e = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
        r = self._report([e], [e.copy()])
        assert r.passed and r.max_abs_err == 0 and r.max_rel_err == 0 and r.samples == 5 and not r.failures

    def test_within_atol_passes_and_reports_errors(self):
        e = np.array([[1.0, 2.0]], np.float64)
        r = self._report([e], [e + [5e-6, 0.0]])
        assert r.passed
        assert r.max_abs_err == pytest.approx(5e-6, rel=1e-6)
        assert r.max_rel_err == pytest.approx(5e-6, rel=1e-6)

    def test_relative_error_is_meaningful_when_the_original_output_is_zero(self):
        e = np.array([[1.0, 0.0]], np.float32)
        r = self._report([e], [e + np.float32(5e-6)])
        assert r.passed
        assert r.max_rel_err <= 1.0

    def test_allclose_semantics_rtol_scales_with_magnitude(self):
        e = np.array([1000.0, 0.001])
        # 0.5 off at 1000 is within rtol=1e-3 (allowed 1.00001); the same 0.5 at 0.001 is not.
        assert self._report([e], [e + [0.5, 0.0]], rows=1).passed
        r = self._report([e], [e + [0.0, 0.5]], rows=1)
        assert not r.passed and "out0: 1 of 2 values out of tolerance" in r.failures[0]

    def test_divergence_fails_and_names_the_worst_value(self):
        e = np.zeros((4, 3), np.float32)
        a = e.copy()
        a[2, 1] = 0.01
        r = self._report([e], [a])
        assert not r.passed and r.max_abs_err == pytest.approx(0.01)
        assert "worst at [2, 1]" in r.failures[0]

    def test_errors_accumulate_over_batches(self):
        report = ParityReport(rtol=0.0, atol=1.0)
        compare(report, ["y"], [np.zeros(3)], [np.full(3, 0.1)], rows=3)
        compare(report, ["y"], [np.zeros(2)], [np.full(2, 0.5)], rows=2)
        assert report.samples == 5 and report.max_abs_err == pytest.approx(0.5) and report.passed

    def test_output_count_mismatch(self):
        r = self._report([np.zeros(2), np.zeros(2)], [np.zeros(2)])
        assert not r.passed and "2 outputs, ONNX 1" in r.failures[0]

    def test_shape_mismatch(self):
        r = self._report([np.zeros((2, 3))], [np.zeros((2, 2))])
        assert not r.passed and "shape" in r.failures[0]

    def test_same_size_different_layout_is_compared_elementwise(self):
        # sklearn's predict gives (n,), ONNX (n, 1): same values, same size -> comparable.
        assert self._report([np.arange(3.0)], [np.arange(3.0).reshape(3, 1)]).passed

    def test_non_finite_values(self):
        assert self._report([np.array([np.nan, 1.0])], [np.array([np.nan, 1.0])], rows=1).passed
        r = self._report([np.array([np.inf, 1.0])], [np.array([1.0, 1.0])], rows=1)
        assert not r.passed and "non-finite" in r.failures[0]

    def test_to_json_has_the_report_fields(self):
        r = self._report([np.zeros(2)], [np.ones(2)])
        assert set(r.to_json()) >= {"samples", "max_abs_err", "max_rel_err", "rtol", "atol", "passed"}


class TestGenerateSamples:
    def test_seeded_shapes_and_dtypes(self):
        specs = [TensorSpec("x", np.dtype(np.float32), (-1, 4)), IDS]
        a = generate_samples(specs, None, 40, seed=3)
        b = generate_samples(specs, None, 40, seed=3)
        assert sum(len(f["x"]) for f in a) == 40
        assert {len(f["x"]) for f in a} > {1}  # several batch sizes, not just 1
        for fa, fb in zip(a, b):
            np.testing.assert_array_equal(fa["x"], fb["x"])
            assert fa["x"].dtype == np.float32 and fa["ids"].dtype == np.int64
            assert fa["x"].shape[1:] == (4,) and fa["ids"].shape == (len(fa["x"]), 3)
        c = generate_samples(specs, None, 40, seed=4)
        assert not np.array_equal(a[0]["x"], c[0]["x"])

    def test_dynamic_dims_are_sampled_at_one_the_example_and_twice_it(self):
        spec = TensorSpec("x", np.dtype(np.float32), (-1, -1))
        example = {"x": np.full((2, 5), 10.0, np.float32)}
        feeds = generate_samples([spec], example, 8, seed=0)
        # 1, the example's size, and (no maximum known) twice the example's
        assert {f["x"].shape[1] for f in feeds} == {1, 5, 10}


# --- conversion options -----------------------------------------------------------------------------
class TestConversionOptions:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [({"precision": "bf16"}, "conversion.precision"), ({"opset": 3}, "conversion.opset"),
         ({"opset": 99}, "conversion.opset"), ({"rtol": -1.0}, "conversion.tolerance.rtol"),
         ({"atol": float("nan")}, "conversion.tolerance.atol"), ({"samples": -1}, "conversion.samples")],
    )
    def test_invalid_options(self, kwargs, field):
        with pytest.raises(errors.InvalidSpec) as exc:
            ConversionOptions(**kwargs)
        assert exc.value.field == field

    def test_each_precision_has_its_own_default_tolerance(self):
        tolerances = {p: ConversionOptions(precision=p).tolerance for p in ("fp32", "fp16", "int8")}
        assert tolerances["fp32"] == (1e-3, 1e-5)
        assert tolerances["fp32"] < tolerances["fp16"] < tolerances["int8"]
        assert ConversionOptions(rtol=0.5).tolerance == (0.5, 1e-5)

    def test_key_is_stable_and_canonical(self):
        a, b = ConversionOptions(), ConversionOptions()
        assert a.key == b.key and len(a.key) == 12 and int(a.key, 16) >= 0
        # Spelling out the default tolerance is the same conversion.
        assert ConversionOptions(rtol=1e-3, atol=1e-5).key == a.key
        # A golden value: the key must not depend on the process (hash seeds, dict order).
        # Update it only together with CONVERTER_REVISION.
        assert a.key == "551f0c87aed3"

    def test_every_option_changes_the_key(self):
        keys = {ConversionOptions(**kw).key for kw in (
            {}, {"precision": "fp16"}, {"precision": "int8"}, {"opset": 18}, {"rtol": 1e-2},
            {"atol": 1e-4}, {"samples": 8}, {"seed": 1}, {"fusion": False})}
        assert len(keys) == 9

    def test_cache_key_covers_source_and_options(self):
        o = ConversionOptions()
        assert cache_key("abc", o) == cache_key("abc", ConversionOptions())
        assert cache_key("abc", o) != cache_key("abd", o)
        assert cache_key("abc", o) != cache_key("abc", ConversionOptions(precision="fp16"))


# --- model URIs -------------------------------------------------------------------------------------
class TestParseModelUri:
    def test_forms(self):
        assert parse_model_uri("models:/fraud/3").version == "3"
        ref = parse_model_uri("models:/fraud@champion")
        assert (ref.name, ref.alias, ref.version) == ("fraud", "champion", None)
        ref = parse_model_uri("runs:/0123abcd/model")
        assert (ref.run_id, ref.path) == ("0123abcd", "model")
        assert parse_model_uri(" models:/fraud/3/ ").uri == "models:/fraud/3"

    @pytest.mark.parametrize("uri", ["", "fraud", "models:/", "models:/fraud", "models:/fraud/v3",
                                     "models:/fraud@", "models:/a/b/c", "runs:/abc", "s3://bucket/model",
                                     "models:/fraud@bad alias"])
    def test_invalid(self, uri):
        with pytest.raises(errors.InvalidModelURI) as exc:
            parse_model_uri(uri)
        assert repr(uri) in str(exc.value) and exc.value.http_status == 400


# --- dynamic batching -----------------------------------------------------------------------------
class _Recorder:
    """A fake model: y = 2x + row index within the call (catches split errors), per-row sum."""

    def __init__(self, delay: float = 0.0, fail_when=None):
        self.calls: list[int] = []
        self.delay = delay
        self.fail_when = fail_when

    def __call__(self, feeds):
        x = feeds["x"]
        if self.fail_when and self.fail_when(x):
            raise RuntimeError("boom")
        self.calls.append(len(x))
        time.sleep(self.delay)
        return [x * 2, x.sum(axis=1, keepdims=True)]


class TestDynamicBatcher:
    def _run(self, coro):
        return asyncio.run(coro)

    def test_concurrent_requests_get_their_own_rows(self):
        rec = _Recorder(delay=0.005)
        observed = []
        batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=16), on_batch=observed.append)
        rng = np.random.default_rng(0)
        inputs = [rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in range(60)]

        async def main():
            return await asyncio.gather(*(batcher.submit({"x": x}) for x in inputs))

        try:
            results = self._run(main())
        finally:
            batcher.close()
        for x, (y, s) in zip(inputs, results):
            np.testing.assert_array_equal(y, x * 2)
            np.testing.assert_allclose(s, x.sum(axis=1, keepdims=True), rtol=1e-6)
        assert sum(rec.calls) == sum(len(x) for x in inputs)
        assert max(rec.calls) > 3, "concurrent requests were never batched"
        assert max(rec.calls) <= 16, "a batch exceeded max_batch_size"
        assert observed == rec.calls

    def test_oversized_request_runs_alone(self):
        rec = _Recorder()
        batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=4))
        x = np.ones((10, 2), np.float32)
        try:
            y, _ = self._run(batcher.submit({"x": x}))
        finally:
            batcher.close()
        assert y.shape == (10, 2) and rec.calls == [10]

    def test_different_trailing_shapes_are_not_mixed(self):
        rec = _Recorder(delay=0.002)
        batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=64))
        inputs = [np.full((1, 2 + i % 2), i, np.float32) for i in range(10)]

        async def main():
            return await asyncio.gather(*(batcher.submit({"x": x}) for x in inputs))

        try:
            results = self._run(main())
        finally:
            batcher.close()
        for x, (y, _) in zip(inputs, results):
            np.testing.assert_array_equal(y, x * 2)

    def test_a_failing_batch_fails_only_the_request_that_caused_it(self):
        rec = _Recorder(fail_when=lambda x: bool((x < 0).any()))
        batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=64))

        async def main():
            bad = await asyncio.gather(batcher.submit({"x": -np.ones((1, 2), np.float32)}),
                                       batcher.submit({"x": np.ones((1, 2), np.float32)}),
                                       return_exceptions=True)
            good = await batcher.submit({"x": np.ones((2, 2), np.float32)})
            return bad, good

        try:
            bad, good = self._run(main())
        finally:
            batcher.close()
        # batched together; the call failed, each was rerun alone: only the culprit fails
        assert isinstance(bad[0], RuntimeError)
        np.testing.assert_array_equal(bad[1][0], np.full((1, 2), 2, np.float32))
        np.testing.assert_array_equal(good[0], np.full((2, 2), 2, np.float32))
        assert rec.calls == [1, 2]  # the good one alone, then the next batch

    def test_max_wait_collects_a_batch(self):
        rec = _Recorder()
        batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=64, max_wait_ms=30))

        async def main():
            first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
            await asyncio.sleep(0.005)  # arrives while the batcher waits for more
            second = await batcher.submit({"x": np.zeros((1, 2), np.float32)})
            return await first, second

        try:
            first, second = self._run(main())
        finally:
            batcher.close()
        assert rec.calls == [2]
        np.testing.assert_array_equal(first[0], [[2, 2]])
        np.testing.assert_array_equal(second[0], [[0, 0]])


def test_grpc_path_checks_what_the_rest_path_checks():
    """decode_grpc shares the REST checks: duplicates and batch disagreement included."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from modelops.errors import InvalidRequest
    from modelops.serving.codec_grpc import decode_grpc
    from modelops.tensors import TensorSpec

    specs = [TensorSpec("a", np.dtype(np.float32), (-1, 2)), TensorSpec("b", np.dtype(np.float32), (-1, 2))]

    def request(*tensors):
        req = pb.ModelInferRequest(model_name="m")
        for name, rows in tensors:
            t = req.inputs.add(name=name, datatype="FP32", shape=[rows, 2])
            t.contents.fp32_contents.extend([0.0] * rows * 2)
        return req

    ok = decode_grpc(request(("a", 3), ("b", 3)), specs, ["y"]).feeds
    assert ok["a"].shape == (3, 2) and ok["b"].dtype == np.float32
    with pytest.raises(InvalidRequest, match="disagree on the batch size"):
        decode_grpc(request(("a", 3), ("b", 2)), specs, ["y"])
    with pytest.raises(InvalidRequest, match="given twice"):
        decode_grpc(request(("a", 3), ("a", 3)), specs, ["y"])
