"""The operator on a real kube-apiserver never canaries a version that refuses what the stable one
accepts: a renamed input is refused before any traffic (`InterfaceChanged`), and with
`allowInterfaceChange: true` (clients still sending the old name) `clientErrorsVsStable` rolls it
back within failureLimit intervals, judged by a real Prometheus scraping real predictors.

The harness (KServe's part, the predictors, the traffic) is `test_cluster_canary`'s.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from webhook_receiver import Receiver

from .conftest import eventually, md_body
from .test_cluster_canary import INTERVAL, STEPS, Fleet, KServe, events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXPECTED = "InterfaceChanged: input 'input' renamed or removed; new input 'features'"
FAILURE_LIMIT = 2


@pytest.fixture(scope="module")
def renamed(mlflow_server):
    """v1: a torch MLP whose ONNX input is `input`; v2: a good MLP whose ONNX input is `features`."""
    from mlflow.tracking import MlflowClient

    from modelops.demo.models import register_renamed_mlp, register_torch_mlp

    name = f"cl-renamed-{uuid.uuid4().hex[:6]}"
    v1 = register_torch_mlp(mlflow_server.url, name, seed=0)
    v2 = register_renamed_mlp(mlflow_server.url, name, seed=1)
    return {"name": name, "v1": v1, "v2": v2,
            "client": MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)}


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_a_renamed_input_is_refused_before_traffic_and_judged_by_client_errors_when_allowed(
        mode, cluster, namespace, start_operator, renamed, prometheus, tmp_path):
    ns, name = namespace, "scorer"
    client, model, v1, v2 = renamed["client"], renamed["name"], renamed["v1"], renamed["v2"]
    alias = f"champion-{mode.lower()}"
    client.set_registered_model_alias(model, alias, v1)
    fleet = Fleet(tmp_path, prometheus, name, ns)
    start_operator(ns, cluster.kubeconfig, "--prometheus-url", prometheus.url, "--rollout-tick", "1")
    receiver = Receiver()
    rollout = {"strategy": "canary", "steps": list(STEPS), "interval": f"{INTERVAL}s",
               "analysis": {"minRequests": 5, "failureLimit": FAILURE_LIMIT, "inconclusiveLimit": 4,
                            "successRate": {"min": 0.95}}}
    cluster.apply(md_body(name, {"name": model, "alias": alias}, predictor={"deploymentMode": mode},
                          hooks={"webhooks": [{"name": "audit", "url": receiver.url}]}, rollout=rollout), "-n", ns)
    kserve = KServe(cluster, fleet, ns, name, mode)

    def status():
        kserve.reconcile()
        return cluster.status(ns, name)

    try:
        eventually(lambda: cluster.get("inferenceservice", ns, name), timeout=120, what="InferenceService")
        kserve.reconcile()
        kserve.start()
        eventually(lambda: status().get("phase") == "Ready", what="v1 Ready")

        # 1. v2 renamed its input: refused before any weight moves.
        client.set_registered_model_alias(model, alias, v2)
        eventually(lambda: (status().get("canary", {}).get("rolledBack") or {}).get("version") == v2,
                   timeout=120, what="v2 refused")
        st = status()
        assert st["phase"] == "RolledBack" and st["stable"]["version"] == v1
        rb = st["canary"]["rolledBack"]
        assert rb["reason"] == "InterfaceChanged" and rb["check"] == "interface"
        cond = cluster.condition(ns, name, "RolledBack")
        assert cond["status"] == "True" and cond["reason"] == "InterfaceChanged" and EXPECTED in cond["message"]
        isvc = cluster.get("inferenceservice", ns, name)
        assert "canary" not in isvc["spec"] and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
        assert v2 not in fleet.servers and kserve.by_version[v2] == 0  # no client request reached it
        assert all(version == v1 for version, _ in kserve.written)
        reasons = events(cluster, ns, name)
        assert "CanaryStarted" not in reasons and {"CanaryFailed", "RolledBack"} <= set(reasons)
        texts = [e["message"] for e in cluster.events(ns, name) if e["reason"] in ("CanaryFailed", "RolledBack")]
        assert texts and all(EXPECTED in t for t in texts), texts
        eventually(lambda: len(receiver.accepted()) >= 2, timeout=30, what="webhook deliveries")
        bodies = receiver.bodies()
        assert [b["event"] for b in bodies] == ["Failed", "RolledBack"]
        assert all(b["reason"] == "InterfaceChanged" and b["message"] == EXPECTED and b["weight"] == 0
                   for b in bodies), bodies
        tag = client.get_model_version(model, v2).tags[f"modelops.deployment.{ns}.{name}"]
        assert tag.startswith("rolled back") and f"({EXPECTED})" in tag

        # 2. allowInterfaceChange (a new generation): a canary, rolled back by clientErrorsVsStable.
        cluster.patch("modeldeployment", ns, name, {"spec": {"rollout": {"allowInterfaceChange": True}}})
        eventually(lambda: (status().get("canary") or {}).get("weight") == STEPS[0], timeout=60,
                   what="canary v2 allowed")
        started = time.monotonic()
        eventually(lambda: (status()["canary"].get("rolledBack") or {}).get("reason") == "AnalysisFailed",
                   timeout=60, what="v2 rolled back by its analysis")
        # failureLimit failed intervals, not inconclusiveLimit ones (the reason and check below say
        # which), and no hang: +6 intervals of slack for Prometheus' scrape and the operator's tick on
        # a 2-core machine that also runs the suite's other share
        assert time.monotonic() - started <= (FAILURE_LIMIT + 6) * INTERVAL
        st = status()
        assert st["phase"] == "RolledBack" and st["stable"]["version"] == v1
        assert st["canary"]["rolledBack"]["check"] == "clientErrorsVsStable", st["canary"]
        assert kserve.codes[400] > 0 and kserve.by_version[v2] > 0  # v2 refused the clients for real
        history = json.loads(client.get_model_version(model, v2).tags[f"modelops.deployment.{ns}.{name}.history"])
        assert [h["reason"] for h in history if h["state"] == "rolled back"] == ["InterfaceChanged", "AnalysisFailed"]
    finally:
        receiver.close()
        kserve.stop()
        fleet.close()
