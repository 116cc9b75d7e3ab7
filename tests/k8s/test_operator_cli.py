"""`modelops operator` arguments, and the layering rule (modelops never imports kopf/kubernetes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelops_operator.main import parse_args


def test_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MODELOPS_MLFLOW_TRACKING_URI", "http://mlflow.mlflow:5000")
    monkeypatch.setenv("MODELOPS_STORAGE_URI_REWRITES", "mlflow-artifacts:/=s3://b/")
    config = parse_args([])
    assert config.tracking_uri == "http://mlflow.mlflow:5000"
    assert config.namespaces == () and config.conversion == "job" and config.resolve_interval == 60
    assert config.storage_rewrites == (("mlflow-artifacts:/", "s3://b/"),)


def test_flags():
    config = parse_args(["--namespace", "a", "--namespace", "b", "--conversion", "inprocess",
                         "--resolve-interval", "5", "--tracking-uri", "http://m:5000"])
    assert config.namespaces == ("a", "b") and config.conversion == "inprocess"
    assert config.resolve_interval == 5 and config.tracking_uri == "http://m:5000"
    assert parse_args(["--all-namespaces"]).namespaces == ()


def test_kopf_batching_from_flags_and_environment(monkeypatch):
    import kopf

    from modelops_operator.handlers import configure_settings

    settings = kopf.OperatorSettings()
    configure_settings(settings, parse_args([]))  # Kopf's own defaults: 0.1 s, no limit
    assert settings.batching.batch_window == 0.1 and settings.batching.worker_limit is None
    monkeypatch.setenv("MODELOPS_OPERATOR_BATCH_WINDOW", "0.02")
    configure_settings(settings, parse_args(["--worker-limit", "64"]))
    assert settings.batching.batch_window == 0.02 and settings.batching.worker_limit == 64


@pytest.mark.parametrize("argv", [["--namespace", "a", "--all-namespaces"], ["--conversion", "magic"],
                                  ["--resolve-interval", "0"], ["--storage-uri-rewrite", "nonsense"],
                                  ["--batch-window", "-1"], ["--worker-limit", "-2"]])
def test_bad_flags_exit_with_usage(argv):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2


def test_modelops_deployment_imports_neither_kopf_nor_kubernetes():
    code = ("import sys, modelops.deployment.plan, modelops.deployment.spec, modelops.deployment.schema, "
            "modelops.deployment.storage; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes', 'modelops_operator')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
