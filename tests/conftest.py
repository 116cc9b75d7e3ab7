"""Shared fixtures: a real MLflow tracking server (sqlite + local artifacts) for the session."""

from __future__ import annotations

import os
import warnings

import pytest

# Keep MLflow's REST retries short in tests that stop the server on purpose.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A running `mlflow server`; `.url`, and `.stop()`/`.start()` keep the same port."""
    from modelops.local.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tracking_uri(mlflow_server) -> str:
    return mlflow_server.url
