"""Shared fixtures: a real MLflow tracking server (sqlite + local artifacts) for the session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

# Keep MLflow's REST retries short in tests that stop the server on purpose.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
warnings.filterwarnings("ignore", category=DeprecationWarning)

REPO_TESTS = Path(__file__).resolve().parent


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


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    """A real Prometheus (Debian's package) on a free loopback port, scraping every second.

    `.url`, `.add_target("127.0.0.1:PORT", **labels)`, `.wait_for_target(...)`, `.query(expr)`.
    Skips with the reason where it is not installed (fails under CI=true).
    """
    from prometheus_server import PrometheusServer, prometheus_binary
    from sharedenv import unavailable

    if prometheus_binary() is None:
        unavailable("the real-Prometheus tests need the `prometheus` binary "
                    "(scripts/bootstrap.sh installs Debian's package when run as root)")
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def control_plane():
    """The real Kubernetes control plane (../shared/k8s) with KServe's CRDs installed.

    Started once per session (reused if already running from the same state dir: MODELOPS_K8S_DIR,
    default .work/k8s; port MODELOPS_K8S_PORT, default 6443) and stopped at the end if started here.
    """
    from sharedenv import require_shared, start_control_plane, stop_control_plane

    crds = require_shared("kserve-crds", "the real Kubernetes API server tier")
    cp, started = start_control_plane()
    try:
        # Server-side apply: KServe's CRDs are too large for kubectl's last-applied annotation.
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        cp.wait_established("inferenceservices.serving.kserve.io", "servingruntimes.serving.kserve.io",
                            "clusterservingruntimes.serving.kserve.io")
        yield cp
    finally:
        if started:
            stop_control_plane(cp)


def pytest_addoption(parser):
    parser.addoption("--share", choices=("core", "rest"), default=None,
                     help="run one of the suite's two shares (scripts/test.sh runs both side by side): "
                          "core = tests/core without the control plane; rest = everything else")


def pytest_collection_modifyitems(config, items):
    """`--share`: the suite in two disjoint halves that can run at once (scripts/test.sh). Every
    test on the one real control plane (`control_plane`, directly or through `cluster`) is in
    `rest`, so one process starts it, uses it and stops it."""
    share = config.getoption("--share")
    if share is None:
        return
    core = REPO_TESTS / "core"
    keep, drop = [], []
    for item in items:
        pinned = item.get_closest_marker("share")  # a long core test moved to balance the two
        if pinned is not None:
            in_core = pinned.args[0] == "core"
        else:
            in_core = core in item.path.parents and "control_plane" not in getattr(item, "fixturenames", ())
        (keep if in_core == (share == "core") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
