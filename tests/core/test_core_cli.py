"""`modelops convert` as a user runs it: the installed console script in a child process.

Exit 0 with model.onnx + conversion.json; otherwise non-zero with a one-line reason on stderr
(3: not found, 4: conversion refused, 75: try again later, 2: bad input).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from modelops.local.ports import free_port

MODELOPS = str(Path(sys.executable).parent / "modelops")


def modelops(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([MODELOPS, *args], capture_output=True, text=True, timeout=timeout)


def one_line_reason(proc: subprocess.CompletedProcess, reason: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr should be one line, got:\n{proc.stderr}"
    assert lines[0].startswith(f"modelops: {reason}: "), lines[0]
    return lines[0]


def test_convert_success(logreg_model, tracking_uri, tmp_path):
    out = tmp_path / "out"
    proc = modelops("convert", logreg_model.uri(), "--tracking-uri", tracking_uri, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.onnx").exists()
    report = json.loads((out / "conversion.json").read_text())
    assert report["status"] == "passed" and report["flavor"] == "sklearn"
    assert report["source_uri"] == logreg_model.uri() and report["resolved_version"] == logreg_model.version
    assert report["parity"]["max_abs_err"] <= 1e-5
    assert "converted" in proc.stdout and report["sha256"][:12] in proc.stdout


def test_convert_alias_with_register(tracking_uri, mlflow_client, tmp_path):
    from modelops.demo.models import register_onnx_model

    name = f"core-cli-onnx-{uuid.uuid4().hex[:6]}"  # its own model: --register writes its tags
    version = register_onnx_model(tracking_uri, name)
    mlflow_client.set_registered_model_alias(name, "cli", version)
    out = tmp_path / "out"
    proc = modelops("convert", f"models:/{name}@cli", "--tracking-uri", tracking_uri,
                    "--output", str(out), "--register", "--opset", "17")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "conversion.json").read_text())
    assert report["resolved_version"] == version and report["source_uri"] == f"models:/{name}@cli"
    tags = mlflow_client.get_model_version(name, version).tags
    assert tags["modelops.conversion.status"] == "passed"
    assert tags["modelops.onnx.sha256"] == report["sha256"]
    assert tags["modelops.onnx.uri"] in proc.stdout


def test_convert_with_tracking_uri_from_the_environment(onnx_model, tracking_uri, tmp_path):
    import os

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = subprocess.run([MODELOPS, "convert", onnx_model.uri(), "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize(
    ("uri", "reason", "named"),
    [("models:/core-cli-no-such-model/1", "ModelNotFound", "core-cli-no-such-model"),
     ("{model}/99", "VersionNotFound", "99"),
     ("{model}@no-such-alias", "AliasNotFound", "no-such-alias")],
)
def test_convert_not_found(uri, reason, named, mlp_model, tracking_uri, tmp_path):
    uri = uri.format(model=f"models:/{mlp_model.name}")
    proc = modelops("convert", uri, "--tracking-uri", tracking_uri, "--output", str(tmp_path / "out"))
    assert proc.returncode == 3
    assert named in one_line_reason(proc, reason)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_convert_unreachable_server(tmp_path):
    t = time.perf_counter()
    proc = modelops("convert", "models:/fraud/1", "--tracking-uri", f"http://127.0.0.1:{free_port()}",
                    "--output", str(tmp_path / "out"))
    assert proc.returncode == 75  # EX_TEMPFAIL: try again later
    assert "unreachable" in one_line_reason(proc, "RegistryUnavailable")
    assert time.perf_counter() - t < 30


def test_convert_parity_failure(divergent_model, tracking_uri, tmp_path):
    out = tmp_path / "out"
    proc = modelops("convert", f"models:/{divergent_model.name}/2", "--tracking-uri", tracking_uri,
                    "--output", str(out))
    assert proc.returncode == 4
    assert "max_abs_err" in one_line_reason(proc, "ParityFailed")
    assert not (out / "model.onnx").exists()
    assert json.loads((out / "conversion.json").read_text())["status"] == "failed"


def test_convert_invalid_uri(tracking_uri, tmp_path):
    proc = modelops("convert", "fraud-v1", "--tracking-uri", tracking_uri, "--output", str(tmp_path))
    assert proc.returncode == 2
    assert "fraud-v1" in one_line_reason(proc, "InvalidModelURI")


def test_convert_without_tracking_uri(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MODELOPS_MLFLOW_TRACKING_URI")}
    proc = subprocess.run([MODELOPS, "convert", "models:/fraud/1", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2
    assert "tracking" in one_line_reason(proc, "InvalidSpec").lower()
