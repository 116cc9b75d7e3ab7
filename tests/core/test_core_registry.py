"""The registry against a real MLflow server: URI resolution, downloads, errors that name what is
missing, and a fast retryable error when MLflow does not answer."""

from __future__ import annotations

import time

import pytest

from modelops import errors
from modelops.local.ports import free_port
from modelops.registry import Registry


def test_resolve_name_and_version(registry, mlp_model):
    resolved = registry.resolve(mlp_model.uri("1"))
    assert (resolved.name, resolved.version, resolved.alias) == (mlp_model.name, "1", None)
    assert resolved.run_id == mlp_model.run_ids["1"]
    assert resolved.pinned_uri == f"models:/{mlp_model.name}/1"
    assert resolved.artifact_uri
    other = registry.resolve(mlp_model.uri("2"))
    assert other.version == "2" and other.run_id != resolved.run_id


def test_resolve_alias_pins_the_aliased_version_not_the_latest(registry, mlp_model, mlflow_client):
    resolved = registry.resolve(f"models:/{mlp_model.name}@champion")
    assert resolved.version == "1" and resolved.alias == "champion"
    assert resolved.pinned_uri == f"models:/{mlp_model.name}/1"
    # Moving the alias moves the resolution.
    mlflow_client.set_registered_model_alias(mlp_model.name, "challenger", "2")
    try:
        assert registry.resolve(f"models:/{mlp_model.name}@challenger").version == "2"
    finally:
        mlflow_client.delete_registered_model_alias(mlp_model.name, "challenger")


def test_resolve_and_download_a_version(registry, mlp_model, tmp_path):
    from modelops.conversion.source import load_source

    local = registry.download(registry.resolve(mlp_model.uri("1")), tmp_path)
    assert (local / "MLmodel").exists()
    source = load_source(local)
    assert source.flavor == "pytorch"
    assert [(s.name, s.shape) for s in source.inputs] == [("input", (-1, 16))]
    assert source.input_example["input"].shape == (4, 16)


def test_resolve_and_download_a_run_uri(registry, onnx_model, tmp_path):
    """runs:/<run_id>/model: MLflow 3 keeps logged models outside the run's artifact dir."""
    from modelops.conversion.source import load_source

    run_id = onnx_model.run_ids[onnx_model.version]
    resolved = registry.resolve(f"runs:/{run_id}/model")
    assert resolved.run_id == run_id and resolved.name is None
    local = registry.download(resolved, tmp_path)
    source = load_source(local)
    assert source.flavor == "onnx" and source.inputs[0].name == "input"


@pytest.mark.parametrize(
    ("uri", "error", "named"),
    [
        ("models:/core-no-such-model/1", errors.ModelNotFound, ["core-no-such-model"]),
        ("models:/core-no-such-model@champion", errors.ModelNotFound, ["core-no-such-model"]),
        ("runs:/0123456789abcdef0123456789abcdef/model", errors.ModelNotFound,
         ["0123456789abcdef0123456789abcdef"]),
    ],
)
def test_unknown_model(registry, uri, error, named):
    with pytest.raises(error) as exc:
        registry.resolve(uri)
    for word in named:
        assert word in str(exc.value)
    assert exc.value.http_status == 404 and not exc.value.retryable


def test_unknown_version(registry, mlp_model):
    with pytest.raises(errors.VersionNotFound) as exc:
        registry.resolve(mlp_model.uri("99"))
    assert "99" in str(exc.value) and mlp_model.name in str(exc.value)
    assert exc.value.reason == "VersionNotFound" and not exc.value.retryable


def test_unknown_alias(registry, mlp_model):
    with pytest.raises(errors.AliasNotFound) as exc:
        registry.resolve(f"models:/{mlp_model.name}@no-such-alias")
    assert "no-such-alias" in str(exc.value) and mlp_model.name in str(exc.value)
    assert exc.value.reason == "AliasNotFound" and not exc.value.retryable


@pytest.mark.parametrize("uri", ["fraud", "models:/fraud", "models:/fraud/latest-ish", "s3://bucket/model"])
def test_invalid_uri(registry, uri):
    with pytest.raises(errors.InvalidModelURI) as exc:
        registry.resolve(uri)
    assert uri in str(exc.value)


@pytest.mark.parametrize("uri", ["models:/fraud/1", "models:/fraud@champion", "runs:/abc123/model"])
def test_unreachable_mlflow_is_retryable_and_fast(uri):
    registry = Registry(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    t = time.perf_counter()
    with pytest.raises(errors.RegistryUnavailable) as exc:
        registry.resolve(uri)
    assert time.perf_counter() - t < 10, "no minute-long retries"
    assert exc.value.retryable and exc.value.http_status == 503
    assert registry.tracking_uri in str(exc.value)


def test_unreachable_mlflow_while_writing_back(registry, mlp_model):
    """Write-back to a server that went away is retryable too (not a generic crash)."""
    resolved = registry.resolve(mlp_model.uri("1"))
    dead = Registry(f"http://127.0.0.1:{free_port()}")
    t = time.perf_counter()
    with pytest.raises(errors.RegistryUnavailable) as exc:
        dead.set_tags(resolved, {"modelops.test": "x"})
    assert exc.value.retryable and time.perf_counter() - t < 30


def test_registry_needs_a_tracking_uri():
    with pytest.raises(errors.InvalidSpec):
        Registry("")
