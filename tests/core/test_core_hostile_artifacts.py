"""Model artifacts are untrusted input: a corpus of hostile models, each refused by name.

- a PyTorch model pickled with a `__reduce__` that writes a marker file (and the same payload
  in a scikit-learn cloudpickle and in a file called model.onnx);
- a scikit-learn skops model holding `posix.system`, once even listing it in its own
  `skops_trusted_types`;
- an ONNX model whose external data escapes its directory (`../`);
- an ONNX file that is not a model;
- a model directory with a symlink out of it.

The converter refuses each with `UntrustedArtifact`/`InvalidOnnxModel` (CLI exit 4, the reason on
its last line, and the refusal in the MLflow tags); `modelops serve` loads only ONNX and stays up
not ready, with the reason. The marker never appears. A control test shows the payload does
write the marker when unpickled the usual way, so the corpus is really hostile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import predictor_models as pm
from modelops import errors
from test_core_serving import Predictor

MODELOPS = str(Path(sys.executable).parent / "modelops")


class Payload:
    """Unpickling this runs `open(marker, "w")`: the classic pickle exploit."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class Trojan(torch.nn.Module):
    """A working module that smuggles the payload in its state."""

    def __init__(self, marker: Path):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 3))
        self.extra = Payload(marker)

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / f"pwned-{uuid.uuid4().hex[:6]}"
    yield path
    assert not path.exists(), "the hostile payload ran"


def _mlp_pickle_dir(root: Path) -> Path:
    """A genuine pickled MLflow PyTorch model (the shape the hostile one imitates)."""
    import mlflow.pytorch

    from modelops.demo.models import MLP, train_mlp

    example = np.zeros((2, 16), np.float32)
    out = root / "torch-model"
    mlflow.pytorch.save_model(train_mlp(0, cls=MLP), str(out), serialization_format="pickle",
                              input_example=example, pip_requirements=["torch"])
    return out


@pytest.fixture(scope="module")
def hostile_torch_template(tmp_path_factory) -> Path:
    return _mlp_pickle_dir(tmp_path_factory.mktemp("torch"))


def hostile_torch_dir(template: Path, dest: Path, marker: Path) -> Path:
    import shutil

    shutil.copytree(template, dest)
    torch.save(Trojan(marker), str(dest / "data" / "model.pth"))
    return dest


def _convert(model_dir: Path, out: Path) -> errors.ModelOpsError:
    from modelops.conversion import convert_model_dir

    with pytest.raises(errors.ModelOpsError) as exc:
        convert_model_dir(model_dir, out)
    assert not (out / "model.onnx").exists()
    report = json.loads((out / "conversion.json").read_text()) if (out / "conversion.json").exists() else {}
    if report:
        assert report["status"] == "failed" and report["reason"] == exc.value.reason
    return exc.value


# --- the corpus is hostile ---------------------------------------------------------------------------------
def test_control_the_payload_runs_when_unpickled_the_usual_way(hostile_torch_template, tmp_path):
    marker = tmp_path / "control-marker"
    d = hostile_torch_dir(hostile_torch_template, tmp_path / "m", marker)
    code = (f"import sys, torch; sys.path[:0] = {sys.path!r}; "
            f"torch.load({str(d / 'data' / 'model.pth')!r}, weights_only=False)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert marker.read_text() == "pwned"


# --- the converter ---------------------------------------------------------------------------------------
def test_converter_refuses_a_pickled_torch_payload(hostile_torch_template, tmp_path, marker):
    d = hostile_torch_dir(hostile_torch_template, tmp_path / "m", marker)
    exc = _convert(d, tmp_path / "out")
    assert isinstance(exc, errors.UntrustedArtifact)
    assert "builtins.exec" in str(exc) and "pt2" in str(exc)


def test_converter_still_loads_a_genuine_pickled_module(hostile_torch_template, tmp_path):
    """Pickled modules of installed torch.nn.Module classes still convert (restricted unpickler)."""
    from modelops.conversion import convert_model_dir

    report = convert_model_dir(hostile_torch_template, tmp_path / "out")
    assert report["status"] == "passed" and (tmp_path / "out" / "model.onnx").exists()


def test_converter_refuses_a_class_pickled_by_value(hostile_torch_template, tmp_path, marker):
    """cloudpickle stores a class defined in __main__ by value, i.e. as code: refused (torch's
    checker cannot even read such a pickle)."""
    import shutil

    import cloudpickle

    d = tmp_path / "m"
    shutil.copytree(hostile_torch_template, d)
    ns: dict = {}
    exec("import torch\nclass Local(torch.nn.Module):\n    def forward(self, x):\n        return x\n", ns)
    ns["Local"].__module__ = "__main__"
    torch.save(ns["Local"](), str(d / "data" / "model.pth"), pickle_module=cloudpickle)
    exc = _convert(d, tmp_path / "out")
    assert isinstance(exc, errors.UntrustedArtifact) and "model.pth" in str(exc)


def _sklearn_dir(root: Path, model, **kwargs) -> Path:
    import mlflow.sklearn

    out = root / f"sk-{uuid.uuid4().hex[:6]}"
    mlflow.sklearn.save_model(model, str(out), pip_requirements=["scikit-learn"], **kwargs)
    return out


def test_converter_refuses_untrusted_skops_types(tmp_path):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    evil = make_pipeline(FunctionTransformer(func=os.system), StandardScaler())  # never fitted: never run
    # MLflow refuses to save it unless the model's own MLmodel trusts the type: it does, we do not
    d = _sklearn_dir(tmp_path, evil, serialization_format="skops", skops_trusted_types=["posix.system"])
    exc = _convert(d, tmp_path / "out")
    assert isinstance(exc, errors.UntrustedArtifact) and "posix.system" in str(exc), str(exc)


def test_converter_refuses_a_pickled_sklearn_model(tmp_path, marker):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.zeros((4, 2)))
    scaler.payload = Payload(marker)
    d = _sklearn_dir(tmp_path, scaler, serialization_format="cloudpickle")
    exc = _convert(d, tmp_path / "out")
    assert isinstance(exc, errors.UntrustedArtifact) and "cloudpickle" in str(exc)


def _escaping_onnx(d: Path, location: str = "../secret.bin") -> Path:
    """A valid graph whose initializer's bytes are external data at LOCATION."""
    d.mkdir(parents=True, exist_ok=True)
    (d.parent / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": "16"}.items():
        weight.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "leak",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (d / "model.onnx").write_bytes(model.SerializeToString())
    return d


def _onnx_flavor_dir(tmp_path: Path) -> Path:
    import mlflow.onnx

    out = tmp_path / "onnx-model"
    model = onnx.load(str(pm.mixed_model(tmp_path / "plain") / "model.onnx"))
    mlflow.onnx.save_model(model, str(out), pip_requirements=["onnx"])
    return out


def test_converter_refuses_onnx_external_data_outside_its_directory(tmp_path):
    d = _onnx_flavor_dir(tmp_path)
    _escaping_onnx(tmp_path / "scratch")
    (d / "model.onnx").write_bytes((tmp_path / "scratch" / "model.onnx").read_bytes())
    (d.parent / "secret.bin").write_bytes(b"\0" * 16)
    exc = _convert(d, tmp_path / "out")
    assert isinstance(exc, errors.UntrustedArtifact) and "outside the model directory" in str(exc)


def test_converter_refuses_an_onnx_file_that_is_not_a_model(tmp_path, marker):
    d = _onnx_flavor_dir(tmp_path)
    import pickle

    (d / "model.onnx").write_bytes(pickle.dumps(Payload(marker)))
    exc = _convert(d, tmp_path / "out")
    assert isinstance(exc, errors.InvalidOnnxModel) and "not an ONNX model" in str(exc)


def test_converter_refuses_a_symlink_out_of_the_model_directory(tmp_path):
    d = _onnx_flavor_dir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    os.symlink(secret, d / "extra.txt")
    exc = _convert(d, tmp_path / "out")
    assert isinstance(exc, errors.UntrustedArtifact) and "symlink extra.txt" in str(exc)


def test_refusal_is_written_to_mlflow_and_the_cli_says_why(tracking_uri, mlflow_client, hostile_torch_template,
                                                           tmp_path, marker):
    """Registered in MLflow, converted by the CLI as a conversion Job would: exit 4, the reason on
    the last line, and status/error/reason in the version's tags."""
    import mlflow
    from mlflow.models import Model

    d = hostile_torch_dir(hostile_torch_template, tmp_path / "m", marker)
    name = f"hostile-{uuid.uuid4().hex[:6]}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("hostile")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(d), "model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    assert Model.load(str(d)).flavors["pytorch"]
    r = subprocess.run([MODELOPS, "convert", f"models:/{name}/{version.version}", "--tracking-uri", tracking_uri,
                        "--output", str(tmp_path / "out"), "--register"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 4, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("modelops: UntrustedArtifact: the pickled PyTorch model")
    tags = mlflow_client.get_model_version(name, version.version).tags
    assert tags["modelops.conversion.status"] == "failed"
    assert "builtins.exec" in tags["modelops.conversion.error"]
    record = next(json.loads(v) for k, v in tags.items() if k.startswith("modelops.conversion.") and v.startswith("{"))
    assert record["reason"] == "UntrustedArtifact"


# --- the predictor -----------------------------------------------------------------------------------------
def _not_ready_reason(model_dir: Path) -> str:
    from modelops.serving.onnx_model import OnnxModel

    model = OnnxModel("m", model_dir, device="cpu")
    assert model.load() is False and not model.ready
    return model.not_ready_reason


def test_predictor_refuses_external_data_outside_its_directory(tmp_path):
    reason = _not_ready_reason(_escaping_onnx(tmp_path / "models"))
    assert "outside the model directory" in reason and "tensor 'w'" in reason
    # an absolute path is refused the same way
    reason = _not_ready_reason(_escaping_onnx(tmp_path / "abs", str(tmp_path / "secret.bin")))
    assert "not a relative path" in reason


def test_predictor_refuses_a_symlink_out(tmp_path):
    d = pm.mixed_model(tmp_path / "models")
    os.symlink("/etc", d / "config")
    assert "symlink config -> /etc" in _not_ready_reason(d)
    os.unlink(d / "config")
    os.symlink("model.onnx", d / "alias.onnx")  # a symlink that stays inside is fine
    from modelops.serving.onnx_model import OnnxModel

    assert OnnxModel("m", d, device="cpu").load()


def test_predictor_loads_only_onnx(hostile_torch_template, tmp_path, marker):
    """An MLflow PyTorch directory is not something to serve: not ready, nothing unpickled."""
    d = hostile_torch_dir(hostile_torch_template, tmp_path / "m", marker)
    assert "no model.onnx" in _not_ready_reason(d)


def test_served_hostile_files_leave_the_predictor_up_and_not_ready(tmp_path, marker):
    """`modelops serve` on a pickle named model.onnx: the process stays up, 503 with the reason."""
    import pickle

    d = tmp_path / "models"
    d.mkdir()
    (d / "model.onnx").write_bytes(pickle.dumps(Payload(marker)))
    server = Predictor(d, "m", tmp_path, "--grpc-port", "0", wait="live")
    try:
        r = server.http.get("/v2/health/ready")
        assert r.status_code == 503 and "not an ONNX model" in r.json()["error"], r.text
        r = server.infer({"inputs": []})
        assert r.status_code == 503 and "not an ONNX model" in r.json()["error"]
        assert server.alive()
    finally:
        server.stop()
