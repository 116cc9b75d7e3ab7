"""The conformance story (tests/rollout_conformance.py) on the operator's `KServePlatform` and
status store against the real API server (our CRD, KServe's CRDs, their schemas and status
subresources): the same transcript as the fake platform's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from rollout_conformance import FakeAdapter, KServeAdapter, check_story, run_story  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def test_kserve_platform_on_the_real_api_server_gives_the_same_story(cluster, namespace, monkeypatch):
    from modelops_operator.kube import Kube, load_configuration

    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    reference = run_story(FakeAdapter)
    t = run_story(lambda world: KServeAdapter(world, Kube(load_configuration()), namespace))
    check_story(t)
    assert t.states == reference.states
    assert t.notifications == reference.notifications
    assert t.history == reference.history and t.aliases == reference.aliases
    md = cluster.get("modeldeployment", namespace, "m")
    assert md["status"]["canary"]["phase"] == "RolledBack" and "version" not in md["status"]["canary"]
    assert md["status"]["stable"]["version"] == "5" and "canaryModel" not in md["status"]
