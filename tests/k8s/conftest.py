"""Fixtures of the Kubernetes tests: a real MLflow server, the API-server emulator, the operator."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import kmock
import pytest
import pytest_asyncio

from .apiserver import ApiServerEmulator


@pytest.fixture(scope="session")
def mlflow_url_server(mlflow_server):
    """The suite-wide MLflow server (tests/conftest.py): `.url`, `.stop()`, `.start()` (same port)."""
    return mlflow_server


@pytest.fixture(scope="session")
def registered(mlflow_url_server):
    """One torch MLP with two versions and the alias `champion` on v1."""
    from mlflow.tracking import MlflowClient

    from modelops.demo.models import register_torch_mlp

    name = f"fraud-{uuid.uuid4().hex[:6]}"
    v1 = register_torch_mlp(mlflow_url_server.url, name, seed=0)
    v2 = register_torch_mlp(mlflow_url_server.url, name, seed=1)
    client = MlflowClient(tracking_uri=mlflow_url_server.url, registry_uri=mlflow_url_server.url)
    client.set_registered_model_alias(name, "champion", v1)
    return {"name": name, "v1": v1, "v2": v2, "client": client}


@pytest_asyncio.fixture
async def apiserver():
    async with ApiServerEmulator() as emulator, kmock.Server(emulator):
        yield emulator


@contextlib.asynccontextmanager
async def running_operator(config):
    """The real operator (`modelops_operator.main.serve`) as a task in the test's event loop."""
    from modelops_operator.main import serve

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(config, stop_flag=stop, ready_flag=ready))
    done, _ = await asyncio.wait([task, asyncio.ensure_future(ready.wait())], timeout=20,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raise the startup failure
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
