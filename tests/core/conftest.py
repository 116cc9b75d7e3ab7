"""Fixtures of the platform-core tests: demo models registered once in the session MLflow server,
and their conversions, shared by the registry, conversion, CLI and serving tests.

Everything is real: `mlflow server` in a child process (tests/conftest.py), models trained and
logged by `modelops.demo.models`, conversions by `modelops.conversion`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# One suffix per session: model names never collide with other suites on the same server.
SUFFIX = uuid.uuid4().hex[:6]


@dataclass
class Registered:
    name: str
    versions: list[str]
    run_ids: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.versions[0]

    def uri(self, version: str | None = None) -> str:
        return f"models:/{self.name}/{version or self.version}"


def _registered(client, name: str, versions: list[str]) -> Registered:
    runs = {v: client.get_model_version(name, v).run_id for v in versions}
    return Registered(name, versions, runs)


@pytest.fixture(scope="session")
def mlflow_client(tracking_uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@pytest.fixture(scope="session")
def registry(tracking_uri):
    from modelops.registry import Registry

    return Registry(tracking_uri)


# --- registered models (each registered once per session) --------------------------------------
@pytest.fixture(scope="session")
def mlp_model(tracking_uri, mlflow_client) -> Registered:
    """PyTorch MLP (pt2, MLflow's default) with two versions; alias `champion` -> v1 (not latest)."""
    from modelops.demo.models import register_torch_mlp

    name = f"core-mlp-{SUFFIX}"
    v1 = register_torch_mlp(tracking_uri, name, seed=0)
    v2 = register_torch_mlp(tracking_uri, name, seed=1)
    mlflow_client.set_registered_model_alias(name, "champion", v1)
    return _registered(mlflow_client, name, [v1, v2])


@pytest.fixture(scope="session")
def cnn_model(tracking_uri, mlflow_client) -> Registered:
    from modelops.demo.models import register_torch_cnn

    name = f"core-cnn-{SUFFIX}"
    return _registered(mlflow_client, name, [register_torch_cnn(tracking_uri, name, seed=0)])


@pytest.fixture(scope="session")
def logreg_model(tracking_uri, mlflow_client) -> Registered:
    from modelops.demo.models import register_sklearn_pipeline

    name = f"core-logreg-{SUFFIX}"
    return _registered(mlflow_client, name, [register_sklearn_pipeline(tracking_uri, name, kind="logreg")])


@pytest.fixture(scope="session")
def forest_model(tracking_uri, mlflow_client) -> Registered:
    from modelops.demo.models import register_sklearn_pipeline

    name = f"core-forest-{SUFFIX}"
    return _registered(mlflow_client, name, [register_sklearn_pipeline(tracking_uri, name, kind="forest")])


@pytest.fixture(scope="session")
def onnx_model(tracking_uri, mlflow_client) -> Registered:
    from modelops.demo.models import register_onnx_model

    name = f"core-onnx-{SUFFIX}"
    return _registered(mlflow_client, name, [register_onnx_model(tracking_uri, name)])


@pytest.fixture(scope="session")
def divergent_model(tracking_uri, mlflow_client) -> Registered:
    """v1: a plain MLP (converts fine); v2: ExportDivergentMLP (its ONNX is wrong by 0.01).

    Both pickled: ExportDivergentMLP only diverges when the module itself is exported.
    """
    from modelops.demo.models import MLP, ExportDivergentMLP, register_torch_mlp

    name = f"core-divergent-{SUFFIX}"
    v1 = register_torch_mlp(tracking_uri, name, seed=0, cls=MLP, serialization_format="pickle")
    v2 = register_torch_mlp(tracking_uri, name, seed=0, cls=ExportDivergentMLP,
                            serialization_format="pickle")
    return _registered(mlflow_client, name, [v1, v2])


# --- conversions shared by several modules --------------------------------------------------------
@dataclass
class Converted:
    model: Registered
    result: object  # modelops.conversion.ConversionResult
    out_dir: Path
    seconds: float
    tags: dict  # the model version's tags right after this conversion
    version: str = ""

    @property
    def model_file(self) -> Path:
        return self.out_dir / "model.onnx"


def _convert(registry, model: Registered, out_dir: Path, **options) -> Converted:
    from modelops.conversion import ConversionOptions, convert_and_publish

    t = time.perf_counter()
    resolved = registry.resolve(model.uri())
    result = convert_and_publish(registry, resolved, ConversionOptions(**options),
                                 out_dir=out_dir, work_dir=out_dir.parent / f"{out_dir.name}-work")
    seconds = time.perf_counter() - t
    return Converted(model, result, out_dir, seconds, registry.version_tags(resolved), model.version)


@pytest.fixture(scope="session")
def mlp_converted(registry, mlp_model, tmp_path_factory) -> Converted:
    return _convert(registry, mlp_model, tmp_path_factory.mktemp("mlp") / "onnx")


@pytest.fixture(scope="session")
def cnn_converted(registry, cnn_model, tmp_path_factory) -> Converted:
    return _convert(registry, cnn_model, tmp_path_factory.mktemp("cnn") / "onnx")


@pytest.fixture(scope="session")
def convert(registry, tmp_path_factory):
    """convert(model, **options) -> Converted, through convert_and_publish (writes back to MLflow)."""

    def run(model: Registered, version: str | None = None, **options) -> Converted:
        if version:
            model = Registered(model.name, [version], model.run_ids)
        return _convert(registry, model, tmp_path_factory.mktemp(model.name) / "onnx", **options)

    return run
