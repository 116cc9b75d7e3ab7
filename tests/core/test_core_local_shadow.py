"""Local mode judges the model, not only the server: the performance gate and the shadow phase on
real predictors, a real router and a real MLflow (issue 16).

v1 serves; v2 (the same weights, re-registered) passes the gate and the shadow phase and is
promoted; v3 (outputs swapped: answers 200, wrong numbers) is rolled back in shadow and no client
request is ever answered by it; v4 (the same answers, ~100x slower) is stopped by the gate before
any client request reaches it. Client traffic goes through the router the whole time.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from test_core_local import Client, LocalUp, _move, manifest, write

from modelops.demo.models import SlowMLP, SwappedMLP, register_torch_mlp

GATE = {"concurrency": 2, "duration": "2s", "minThroughputRatio": 0.3}
SHADOW = {"percent": 100, "minRequests": 20, "maxDuration": "90s"}


def tag(mlflow_client, name: str, version: str, key: str, timeout: float = 30) -> dict:
    """The JSON tag KEY of a version (written to MLflow right after the status: polled)."""
    deadline = time.monotonic() + timeout
    while True:
        tags = mlflow_client.get_model_version(name, version).tags
        if key in tags or time.monotonic() > deadline:
            return json.loads(tags[key])
        time.sleep(0.5)


def report(mlflow_client, name: str, version: str, key: str, dst, timeout: float = 60) -> dict:
    """The rollout report logged into the version's run (its URI in the tag KEY.report), read back."""
    deadline = time.monotonic() + timeout
    while f"{key}.report" not in (tags := mlflow_client.get_model_version(name, version).tags):
        assert time.monotonic() < deadline, f"no {key}.report tag on v{version}"
        time.sleep(0.5)
    mv = mlflow_client.get_model_version(name, version)
    base = mlflow_client.get_run(mv.run_id).info.artifact_uri.rstrip("/") + "/"
    assert tags[f"{key}.report"].startswith(base), tags[f"{key}.report"]
    local = mlflow_client.download_artifacts(mv.run_id, tags[f"{key}.report"][len(base):], str(dst))
    with open(local) as f:
        return json.load(f)


def rolled_back(status: dict) -> str | None:
    return ((status.get("canary") or {}).get("rolledBack") or {}).get("version")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gate_and_shadow_in_local_mode(tmp_path, tracking_uri, mlflow_client):
    name = f"local-shadow-{uuid.uuid4().hex[:6]}"
    v1 = register_torch_mlp(tracking_uri, name, seed=0)
    v2 = register_torch_mlp(tracking_uri, name, seed=0)
    v3 = register_torch_mlp(tracking_uri, name, seed=0, serve_cls=SwappedMLP)
    v4 = register_torch_mlp(tracking_uri, name, seed=0, serve_cls=SlowMLP)
    mlflow_client.set_registered_model_alias(name, "champion", v1)
    doc = manifest("judged", name, performanceGate=GATE, shadow=SHADOW)
    up = LocalUp(write(tmp_path / "md.yaml", doc), tmp_path / "state", tracking_uri)
    client = None
    key = "modelops.deployment.local.judged"
    try:
        status = up.wait("v1 serving", lambda s: (s.get("stable") or {}).get("version") == v1)
        client = Client(status["url"], "judged", threads=2)

        _move(mlflow_client, name, v2)
        status = up.wait("v2 promoted", lambda s: (s.get("stable") or {}).get("version") == v2
                         and s["phase"] == "Ready", timeout=240)
        gate = tag(mlflow_client, name, v2, f"{key}.performanceGate")
        shadow = tag(mlflow_client, name, v2, f"{key}.shadow")
        assert gate["outcome"] == "Passed" and gate["requests"] > 0 and gate["errors"] == 0
        assert shadow["outcome"] == "Passed" and shadow["comparisons"] >= SHADOW["minRequests"]
        assert shadow["agreement"] == 1.0
        doc = report(mlflow_client, name, v2, key, tmp_path)
        assert (doc["ending"]["outcome"], doc["ending"]["reason"], doc["stableVersion"]) == ("Promoted", "Analysis", v1)
        assert [e["phase"] for e in doc["steps"]][:2] == ["performanceGate", "shadow"]
        assert doc["steps"][-1]["phase"] == "step" and doc["steps"][-1]["weight"] == 100

        _move(mlflow_client, name, v3)
        status = up.wait("v3 rolled back in shadow", lambda s: rolled_back(s) == v3, timeout=240)
        assert status["canary"]["rolledBack"]["reason"] == "ShadowFailed", status["canary"]
        assert status["canary"]["rolledBack"]["check"] == "agreement"
        assert status["stable"]["version"] == v2
        shadow = tag(mlflow_client, name, v3, f"{key}.shadow")
        assert shadow["outcome"] == "Failed" and shadow["agreement"] < 0.99
        doc = report(mlflow_client, name, v3, key, tmp_path)
        assert (doc["ending"]["reason"], doc["steps"][-1]["phase"]) == ("ShadowFailed", "shadow")
        assert doc["steps"][-1]["values"]["agreement"] == pytest.approx(shadow["agreement"], rel=1e-5)

        _move(mlflow_client, name, v4)
        status = up.wait("v4 stopped by the gate", lambda s: rolled_back(s) == v4, timeout=240)
        assert status["canary"]["rolledBack"]["reason"] == "PerformanceGateFailed", status["canary"]
        assert status["canary"]["weight"] == 0
        assert status["stable"]["version"] == v2
        gate = tag(mlflow_client, name, v4, f"{key}.performanceGate")
        assert gate["outcome"] == "Failed" and gate["throughputRatio"] < GATE["minThroughputRatio"]
        doc = report(mlflow_client, name, v4, key, tmp_path)
        (g,) = [e for e in doc["steps"] if e["phase"] == "performanceGate"]
        assert (doc["ending"]["reason"], g["outcome"]) == ("PerformanceGateFailed", "Failed")
        assert g["values"]["throughputRps"] == pytest.approx(gate["throughputRps"], rel=1e-5)
        assert g["values"]["stableThroughputRps"] == pytest.approx(gate["stableThroughputRps"], rel=1e-5)

        time.sleep(1.0)
        records = client.stop()
        client = None
        answered = {r[3] for r in records if r[2] == 200}
        assert v3 not in answered and v4 not in answered, "a client got an answer from a rejected version"
        assert all(r[2] == 200 for r in records if not r[1]), [r for r in records if r[2] != 200][:5]
        kinds = [e.get("reason") for e in up.events()]
        for reason in ("PerformanceGatePassed", "ShadowStarted", "ShadowPassed", "ShadowFailed",
                       "PerformanceGateFailed"):
            assert reason in kinds, (reason, kinds)
    finally:
        if client is not None:
            client.stop()
        up.kill()
