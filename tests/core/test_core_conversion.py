"""Conversion end to end against a real MLflow server: PyTorch (MLP, CNN), scikit-learn pipelines,
ONNX passthrough; the report, the write-back to MLflow, idempotency, reduced precision, the parity
gate refusing a divergent model, and unsupported flavors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelops import errors
from modelops.conversion import ConversionOptions, convert_and_publish, convert_model_dir, find_published
from modelops.conversion.publish import TAG_ONNX_URI, TAG_PARITY, TAG_SHA256, TAG_STATUS, options_tag

REPORT_KEYS = {"source_uri", "resolved_version", "flavor", "opset", "inputs", "outputs", "parity",
               "sha256", "timings"}
PARITY_KEYS = {"samples", "max_abs_err", "max_rel_err", "rtol", "atol", "passed"}
FP32_MAX_ABS_ERR = 1e-5


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def report_of(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "conversion.json").read_text())


def local_artifact(mlflow_server, uri: str) -> Path:
    """Where the embedded server keeps an mlflow-artifacts:/ URI (to check files are not rewritten)."""
    assert uri.startswith("mlflow-artifacts:/"), uri
    return mlflow_server.root / "artifacts" / uri[len("mlflow-artifacts:/"):]


def check_report(converted, flavor: str, inputs: list[dict], max_abs_err: float = FP32_MAX_ABS_ERR) -> dict:
    report = report_of(converted.out_dir)
    assert REPORT_KEYS <= set(report), REPORT_KEYS - set(report)
    assert report["source_uri"] == converted.model.uri()
    assert report["resolved_version"] == converted.version
    assert report["flavor"] == flavor and report["status"] == "passed"
    parity = report["parity"]
    assert PARITY_KEYS <= set(parity)
    assert parity["passed"] is True and parity["samples"] >= 64
    assert parity["max_abs_err"] <= max_abs_err, parity
    assert (parity["rtol"], parity["atol"]) == ConversionOptions(precision=report["precision"]).tolerance
    assert report["inputs"] == inputs
    assert report["outputs"] and all(o["shape"][0] == -1 for o in report["outputs"])
    assert {"load_s", "export_s", "reference_s", "optimize_s", "parity_s", "total_s"} <= set(report["timings"])
    # The file is what the report says it is: its digest, a valid graph, the requested opset.
    model_file = converted.out_dir / "model.onnx"
    assert report["sha256"] == sha256(model_file) == converted.result.sha256
    proto = onnx.load(str(model_file))
    onnx.checker.check_model(proto, full_check=True)
    default_opset = {o.domain: o.version for o in proto.opset_import}.get("", None)
    assert default_opset == report["opset"]
    return report


def check_written_back(converted, registry, tmp_path: Path) -> None:
    """Tags on the model version, and the ONNX artifact in MLflow with the tagged digest."""
    tags = converted.tags
    result = converted.result
    assert tags[TAG_STATUS] == "passed"
    assert tags[TAG_ONNX_URI] == result.onnx_uri
    assert tags[TAG_SHA256] == result.sha256
    parity = json.loads(tags[TAG_PARITY])
    assert parity["passed"] is True and parity["max_abs_err"] == result.parity["max_abs_err"]
    record = json.loads(tags[options_tag(ConversionOptions(precision=result.report["precision"]))])
    assert record["status"] == "passed" and record["uri"] == result.onnx_uri
    downloaded = registry.download_dir(result.onnx_uri, tmp_path / "from-mlflow")
    assert sha256(downloaded / "model.onnx") == result.sha256
    assert report_of(downloaded)["sha256"] == result.sha256


def test_pytorch_mlp(mlp_converted, registry, tmp_path):
    assert mlp_converted.result.cached is False
    report = check_report(mlp_converted, "pytorch", [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}])
    assert report["precision"] == "fp32"
    check_written_back(mlp_converted, registry, tmp_path)


def test_pytorch_mlp_has_a_dynamic_batch_axis(mlp_converted, mlp_model, registry, tmp_path):
    import mlflow.pytorch
    import torch

    session = ort.InferenceSession(str(mlp_converted.model_file), providers=["CPUExecutionProvider"])
    local = registry.download(registry.resolve(mlp_model.uri()), tmp_path)
    assert (local / "data" / "model.pt2").exists(), "expected MLflow's default pt2 serialization"
    model = mlflow.pytorch.load_model(str(local))
    for batch in (1, 5, 64):
        x = np.random.default_rng(batch).normal(size=(batch, 16)).astype(np.float32)
        (y,) = session.run(None, {"input": x})
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=FP32_MAX_ABS_ERR)


def test_pytorch_cnn(cnn_converted, registry, tmp_path):
    check_report(cnn_converted, "pytorch",
                 [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}])
    assert cnn_converted.result.report["outputs"][0]["shape"] == [-1, 10]
    check_written_back(cnn_converted, registry, tmp_path)


@pytest.mark.parametrize("kind", ["logreg", "forest"])
def test_sklearn_pipeline(kind, request, convert, registry, tmp_path):
    model = request.getfixturevalue(f"{kind}_model")
    converted = convert(model)
    report = check_report(converted, "sklearn", [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}])
    # Label and probabilities, both compared by the gate.
    assert [o["shape"] for o in report["outputs"]] == [[-1], [-1, 3]]
    check_written_back(converted, registry, tmp_path)


def test_onnx_passthrough(onnx_model, convert, registry, tmp_path):
    converted = convert(onnx_model)
    report = check_report(converted, "onnx", [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}])
    assert report["parity"]["max_abs_err"] <= 1e-6
    check_written_back(converted, registry, tmp_path)


def test_conversion_of_a_run_uri(onnx_model, registry, tmp_path):
    """runs:/ URIs convert too; the results are tagged on the run."""
    run_id = onnx_model.run_ids[onnx_model.version]
    resolved = registry.resolve(f"runs:/{run_id}/model")
    result = convert_and_publish(registry, resolved, out_dir=tmp_path / "out", work_dir=tmp_path / "work")
    assert result.parity["passed"] and report_of(tmp_path / "out")["source_uri"] == f"runs:/{run_id}/model"
    assert registry.version_tags(resolved)[TAG_ONNX_URI] == result.onnx_uri


# --- idempotency ------------------------------------------------------------------------------------
def test_second_publish_reuses_the_result_without_relogging(mlp_converted, mlp_model, registry,
                                                             mlflow_client, mlflow_server, tmp_path):
    first = mlp_converted.result
    run_id = mlp_model.run_ids[mlp_converted.version]
    files = local_artifact(mlflow_server, first.onnx_uri)
    assert (files / "model.onnx").exists()
    before = {p.name: p.stat().st_mtime_ns for p in files.iterdir()}
    listed = sorted(f.path for f in mlflow_client.list_artifacts(run_id, "modelops"))

    again = convert_and_publish(registry, registry.resolve(mlp_model.uri()), out_dir=tmp_path / "again")
    assert again.cached is True
    assert (again.onnx_uri, again.sha256) == (first.onnx_uri, first.sha256)
    assert sha256(tmp_path / "again" / "model.onnx") == first.sha256  # fetched, not rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in files.iterdir()} == before
    assert sorted(f.path for f in mlflow_client.list_artifacts(run_id, "modelops")) == listed
    found = find_published(registry, registry.resolve(mlp_model.uri()), ConversionOptions())
    assert found is not None and found.onnx_uri == first.onnx_uri


def test_local_cache_dir(logreg_model, registry, tmp_path):
    src = registry.download(registry.resolve(logreg_model.uri()), tmp_path / "src")
    cache = tmp_path / "cache"
    first = convert_model_dir(src, tmp_path / "a", cache_dir=cache)
    second = convert_model_dir(src, tmp_path / "b", cache_dir=cache)
    assert first["cached"] is False and second["cached"] is True
    assert second["sha256"] == first["sha256"] == sha256(tmp_path / "b" / "model.onnx")
    assert report_of(tmp_path / "b")["cached"] is True
    # Other options: a new conversion under a new key.
    third = convert_model_dir(src, tmp_path / "c", ConversionOptions(samples=16), cache_dir=cache)
    assert third["cached"] is False and third["cache_key"] != first["cache_key"]
    assert third["parity"]["samples"] < first["parity"]["samples"]
    assert sorted(p.name for p in cache.iterdir()) == sorted([first["cache_key"], third["cache_key"]])


def test_conversion_is_deterministic(mlp_model, registry, tmp_path):
    src = registry.download(registry.resolve(mlp_model.uri()), tmp_path / "src")
    a = convert_model_dir(src, tmp_path / "a")
    b = convert_model_dir(src, tmp_path / "b")
    assert a["sha256"] == b["sha256"] and a["cache_key"] == b["cache_key"]


# --- reduced precision ------------------------------------------------------------------------------
def test_fp16_passes_with_its_own_tolerance(mlp_model, mlp_converted, convert, registry):
    converted = convert(mlp_model, precision="fp16")
    report = report_of(converted.out_dir)
    assert report["precision"] == "fp16" and report["parity"]["passed"] is True
    assert (report["parity"]["rtol"], report["parity"]["atol"]) == ConversionOptions(precision="fp16").tolerance
    proto = onnx.load(str(converted.model_file))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert report["inputs"][0]["datatype"] == "FP32"  # clients keep sending FP32
    assert converted.result.onnx_uri != mlp_converted.result.onnx_uri
    # Both results are recorded on the version, each under its options.
    tags = registry.version_tags(registry.resolve(mlp_model.uri()))
    for precision, result in (("fp32", mlp_converted.result), ("fp16", converted.result)):
        record = json.loads(tags[options_tag(ConversionOptions(precision=precision))])
        assert record["status"] == "passed" and record["sha256"] == result.sha256


def test_int8_passes_with_its_own_tolerance(cnn_model, convert):
    converted = convert(cnn_model, precision="int8")
    report = report_of(converted.out_dir)
    assert report["precision"] == "int8" and report["parity"]["passed"] is True
    assert (report["parity"]["rtol"], report["parity"]["atol"]) == ConversionOptions(precision="int8").tolerance
    ops = {n.op_type for n in onnx.load(str(converted.model_file)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}, ops


def test_int8_mlp_error_is_quantization_noise(mlp_model, convert):
    # A generous explicit tolerance: only a broken kernel (saturation), not int8 rounding, fails it.
    converted = convert(mlp_model, precision="int8", rtol=0.1, atol=1.0)
    assert report_of(converted.out_dir)["parity"]["max_abs_err"] < 1.0


# --- the parity gate --------------------------------------------------------------------------------
def test_divergent_model_is_refused(divergent_model, registry, mlflow_client, tmp_path):
    name = divergent_model.name
    good = convert_and_publish(registry, registry.resolve(f"models:/{name}/1"), out_dir=tmp_path / "v1")
    assert good.parity["passed"] and good.parity["max_abs_err"] <= FP32_MAX_ABS_ERR
    v1_tags = registry.version_tags(registry.resolve(f"models:/{name}/1"))

    bad = registry.resolve(f"models:/{name}/2")
    out = tmp_path / "v2"
    with pytest.raises(errors.ParityFailed) as exc:
        convert_and_publish(registry, bad, out_dir=out, work_dir=tmp_path / "work")
    assert "max_abs_err" in str(exc.value) and exc.value.reason == "ParityFailed"

    # Nothing to serve: no model.onnx, a report saying why.
    assert not (out / "model.onnx").exists()
    report = report_of(out)
    assert report["status"] == "failed" and report["reason"] == "ParityFailed"
    assert report["parity"]["passed"] is False
    assert report["parity"]["max_abs_err"] == pytest.approx(0.01, rel=0.05)

    # Written back: failed status and figures, no ONNX location, the report artifact only.
    tags = registry.version_tags(bad)
    assert tags[TAG_STATUS] == "failed"
    parity = json.loads(tags[TAG_PARITY])
    assert parity["passed"] is False and parity["max_abs_err"] == pytest.approx(0.01, rel=0.05)
    assert TAG_ONNX_URI not in tags and TAG_SHA256 not in tags
    assert json.loads(tags[options_tag(ConversionOptions())])["status"] == "failed"
    logged = [f.path for f in mlflow_client.list_artifacts(divergent_model.run_ids["2"], "modelops")]
    assert len(logged) == 1
    files = [f.path for f in mlflow_client.list_artifacts(divergent_model.run_ids["2"], logged[0])]
    assert any(f.endswith("conversion.json") for f in files)
    assert not any(f.endswith("model.onnx") for f in files)
    assert find_published(registry, bad, ConversionOptions()) is None

    # The earlier, successful version is untouched.
    assert registry.version_tags(registry.resolve(f"models:/{name}/1")) == v1_tags


def test_failed_options_do_not_clobber_a_published_result(forest_model, convert, registry):
    converted = convert(forest_model)
    resolved = registry.resolve(forest_model.uri())
    strict = ConversionOptions(rtol=0.0, atol=1e-12)
    if converted.result.parity["max_abs_err"] <= 1e-12:
        pytest.skip("the forest converted bit-exactly: no tolerance to violate")
    with pytest.raises(errors.ParityFailed):
        convert_and_publish(registry, resolved, strict)
    tags = registry.version_tags(resolved)
    assert json.loads(tags[options_tag(strict)])["status"] == "failed"
    # The default options' result is still the published one, location and digest unchanged.
    assert tags[options_tag(ConversionOptions())] == converted.tags[options_tag(ConversionOptions())]
    assert tags[TAG_ONNX_URI] == converted.result.onnx_uri and tags[TAG_SHA256] == converted.result.sha256
    again = convert_and_publish(registry, resolved)
    assert again.cached and again.sha256 == converted.result.sha256


def test_custom_tolerance_is_recorded(logreg_model, registry, tmp_path):
    src = registry.download(registry.resolve(logreg_model.uri()), tmp_path / "src")
    report = convert_model_dir(src, tmp_path / "out", ConversionOptions(rtol=1e-2, atol=1e-4, samples=8))
    assert (report["parity"]["rtol"], report["parity"]["atol"]) == (1e-2, 1e-4)
    assert report["options"]["samples"] == 8


# --- unsupported flavors ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pyfunc_model(tracking_uri, mlflow_client):
    import uuid

    import mlflow
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    name = f"core-pyfunc-{uuid.uuid4().hex[:6]}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("modelops-core-tests")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name=name,
                                       pip_requirements=["mlflow"])
    return name, str(info.registered_model_version)


def test_unsupported_flavor_names_the_flavor_and_the_supported_ones(pyfunc_model, registry, tmp_path):
    name, version = pyfunc_model
    resolved = registry.resolve(f"models:/{name}/{version}")
    with pytest.raises(errors.UnsupportedFlavor) as exc:
        convert_and_publish(registry, resolved, out_dir=tmp_path / "out", work_dir=tmp_path / "work")
    message = str(exc.value)
    assert "python_function" in message
    for flavor in ("onnx", "pytorch", "sklearn"):
        assert flavor in message
    assert not (tmp_path / "out" / "model.onnx").exists()
    tags = registry.version_tags(resolved)
    assert tags[TAG_STATUS] == "failed" and "python_function" in tags["modelops.conversion.error"]


def test_a_directory_that_is_not_an_mlflow_model(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(errors.ConversionError, match="not an MLflow model"):
        convert_model_dir(tmp_path / "src", tmp_path / "out")


def test_cached_conversion_is_faster(mlp_converted, mlp_model, registry):
    """The cache is worth having: a cached publish costs tag reads, not an export."""
    import time

    t = time.perf_counter()
    convert_and_publish(registry, registry.resolve(mlp_model.uri()))
    assert time.perf_counter() - t < max(1.0, mlp_converted.seconds / 2)


def test_find_published_fresh_trusts_the_resolved_tags_only_when_asked(cnn_model, registry):
    """fresh=True saves a round trip using the tags the version was resolved with; a resolution
    from before a publish does not see it, a re-read does."""
    options = ConversionOptions(opset=17, samples=8)  # options no other test publishes
    before = registry.resolve(cnn_model.uri())
    assert find_published(registry, before, options, fresh=True) is None
    published = convert_and_publish(registry, before, options)
    assert find_published(registry, before, options, fresh=True) is None  # stale tags, by design
    assert find_published(registry, before, options).sha256 == published.sha256
    now = registry.resolve(cnn_model.uri())
    assert find_published(registry, now, options, fresh=True).sha256 == published.sha256


def test_a_graph_with_a_file_per_tensor_is_normalized_to_one_data_file(tmp_path, monkeypatch):
    """What the exporter writes over 2 GB (one file per weight) becomes model.onnx + model.onnx.data;
    the per-tensor files are gone and the graph computes the same."""
    from onnx import TensorProto, helper, numpy_helper

    from modelops.conversion import transforms

    rng = np.random.default_rng(0)
    w1, w2 = (rng.normal(size=(16, 16)).astype(np.float32) for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "w1", "w2"]
    monkeypatch.setenv("MODELOPS_EXTERNAL_DATA_BYTES", "1024")
    transforms.normalize(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    x = rng.normal(size=(3, 16)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(y, x @ w1 @ w2, atol=1e-5)
