"""The operator with what the chart installs, against the real API server (../shared/k8s).

The operator runs out of cluster as the chart's Deployment would run it: the same command, args
and environment (read from the installed release's manifest), authenticated with a token of the
chart's ServiceAccount (`kubectl create token`), so every call it makes goes through the RBAC the
chart grants. MLflow is the suite's real server; KServe's and the kubelet's parts are played by
the test (marking an InferenceService ready).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from modelops_operator import builders

from .conftest import CHART, CRD_NAME, REPO_ROOT, example_values

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REWRITE = "mlflow-artifacts:/=s3://mlflow-artifacts/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`modelops operator` as its own process, as the chart's container would start it."""

    def __init__(self, argv: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.metrics_port = int(env["MODELOPS_METRICS_ADDRESS"].rsplit(":", 1)[1])
        self.identity = env.get("MODELOPS_LEADER_ELECT_IDENTITY", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "modelops.cli", *argv], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def metric(self, name: str) -> float | None:
        """A sample's value from /metrics (labels included in `name`), None when absent."""
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{") and name.endswith("}"):
                return float(line.rsplit(" ", 1)[1])
        total = [float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith(name + "{")]
        return sum(total) if total else None

    def probe(self, path: str) -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def chart_command(manifest: str, pod_name: str, namespace: str, kubeconfig: Path) -> tuple[list[str], dict]:
    """The operator container's args and environment from a release manifest, as that Pod would get them."""
    (dep,) = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["modelops"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELOPS_", "KUBERNETES_"))}
    field_values = {"metadata.name": pod_name, "metadata.namespace": namespace}
    for e in c["env"]:
        env[e["name"]] = e["value"] if "value" in e else field_values[e["valueFrom"]["fieldRef"]["fieldPath"]]
    env.update(KUBECONFIG=str(kubeconfig),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "platform"), str(REPO_ROOT / "operators")]),
               # Pods have their own network; processes on one machine need their own ports.
               MODELOPS_METRICS_ADDRESS=f"127.0.0.1:{free_port()}")
    return list(c["args"]), env


@pytest.fixture(scope="module")
def release(cluster, published_model):
    """The chart (namespaced mode, chart-default HA settings, the suite's MLflow) in restricted namespaces."""
    import helm_python as helm

    watched = cluster.restricted_namespace(f"ml-op-{cluster.suffix}")
    ns = cluster.restricted_namespace(f"modelops-op-{cluster.suffix}")
    name = f"mo-op-{cluster.suffix}"
    values = example_values("namespaced")
    values["operator"]["namespaces"] = [watched]
    values["operator"]["conversion"] = "job"
    values["converter"]["createServiceAccount"] = True
    values.update(runtime={"create": False},
                  mlflow={"trackingUri": published_model["tracking_uri"], "storageUriRewrites": [REWRITE]})
    cluster.adopt("crd", CRD_NAME, name, ns)
    rel = cluster.helm(ns).install(helm.Chart.load(str(CHART)), name, values, namespace=ns, timeout=120)
    cluster.cp.wait_established(CRD_NAME, "inferenceservices.serving.kserve.io")
    return {"name": name, "namespace": ns, "watched": watched, "manifest": rel["manifest"],
            "sa": f"{name}-operator", "lease": f"{name}-operator"}


@pytest.fixture(scope="module")
def sa_kubeconfig(cluster, release, tmp_path_factory) -> Path:
    return cluster.token_kubeconfig(release["namespace"], release["sa"], tmp_path_factory.mktemp("sa") / "kubeconfig")


def start_operator(release, kubeconfig, pod_name: str, log_dir: Path) -> OperatorProcess:
    argv, env = chart_command(release["manifest"], pod_name, release["namespace"], kubeconfig)
    return OperatorProcess(argv, env, log_dir / f"{pod_name}.log")


def md_body(name: str, namespace: str, model: dict, **spec) -> dict:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"model": model, **spec}}


def mark_ready(cluster, namespace: str, name: str) -> None:
    """KServe's part: the predictor serves."""
    isvc = cluster.get("inferenceservice", name, "-n", namespace)
    status = {"status": {"url": f"http://{name}.{namespace}.example.com",
                         "observedGeneration": isvc["metadata"]["generation"],
                         "conditions": [{"type": "Ready", "status": "True"}]}}
    cluster.kubectl("patch", "inferenceservice", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))


def phase(cluster, namespace: str, name: str) -> str | None:
    return ((cluster.get("modeldeployment", name, "-n", namespace) or {}).get("status") or {}).get("phase")


def lease_holder(cluster, release) -> str:
    lease = cluster.get("lease", release["lease"], "-n", release["namespace"]) or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def rv(cluster, kind: str, namespace: str, name: str) -> str:
    return cluster.get(kind, name, "-n", namespace)["metadata"]["resourceVersion"]


def test_least_privilege_operator_reconciles_with_the_charts_token(cluster, release, sa_kubeconfig,
                                                                  published_model, tmp_path):
    ns, m = release["watched"], published_model
    op = start_operator(release, sa_kubeconfig, "modelops-operator-lp", tmp_path)
    try:
        cluster.wait_for(lambda: lease_holder(cluster, release).startswith("modelops-operator-lp_"),
                         timeout=60, what="the operator to take the Lease")
        # A published conversion: straight to the InferenceService.
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            md_body("mlp", ns, {"name": m["name"], "version": m["v1"]})))
        isvc = cluster.wait_for(lambda: cluster.get("inferenceservice", "mlp", "-n", ns), timeout=90,
                                what="the InferenceService")
        md = cluster.get("modeldeployment", "mlp", "-n", ns)
        model = isvc["spec"]["predictor"]["model"]
        assert model["storageUri"] == m["onnx_uri"].replace("mlflow-artifacts:/", "s3://mlflow-artifacts/", 1)
        assert isvc["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
        cluster.wait_for(lambda: phase(cluster, ns, "mlp") == "Deploying", what="Deploying")
        mark_ready(cluster, ns, "mlp")
        cluster.wait_for(lambda: phase(cluster, ns, "mlp") == "Ready", what="Ready")
        events = [e["reason"] for e in cluster.events(ns, "mlp")]
        assert "Deployed" in events and "Ready" in events
        # Not converted yet: a conversion Job in the converter account, admitted under `restricted`.
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            md_body("mlp2", ns, {"name": m["name"], "version": m["v2"]})))
        job = cluster.wait_for(lambda: (cluster.items("jobs", "-n", ns, "-l", f"{builders.LABEL_DEPLOYMENT}=mlp2")
                                        or [None])[0], timeout=90, what="the conversion Job")
        pod_spec = job["spec"]["template"]["spec"]
        assert pod_spec["serviceAccountName"] == "modelops-converter"
        assert job["spec"]["activeDeadlineSeconds"] == 3600
        assert pod_spec["containers"][0]["resources"] == example_values("namespaced").get(
            "converter", {}).get("resources", {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}})
        cluster.wait_for(lambda: cluster.items("pods", "-n", ns, "-l", f"job-name={job['metadata']['name']}"),
                         what="the converter Pod")
        assert phase(cluster, ns, "mlp2") == "Converting"
        # The operator never met a refusal: the chart grants all it needs.
        log = op.text()
        # A 403 as a status code, not the milliseconds of a log line's timestamp ("15,403").
        refused = re.search(r"(?<![\d,.:])403(?!\d)|forbidden", log, re.IGNORECASE)
        assert refused is None, log[max(0, refused.start() - 1500):refused.end() + 500]
        assert op.metric("modelops_operator_leader") == 1.0
        assert op.metric("modelops_operator_writes_total") >= 3  # ISVC, statuses
        assert op.probe("/healthz") == 200 and op.probe("/readyz") == 200
    finally:
        op.stop()
    assert op.proc.returncode == 0, op.text()[-3000:]


def test_two_operators_one_writes_and_the_other_takes_over(cluster, release, sa_kubeconfig, published_model,
                                                          tmp_path):
    """The chart's HA settings (Lease 15/10/2 s): only the leader writes; SIGKILL it and the standby
    takes over within leaseDuration + 2 x retryPeriod, without writing anything twice."""
    ns, m = release["watched"], published_model
    (dep,) = [d for d in yaml.safe_load_all(release["manifest"]) if d and d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    lease_duration = int(env["MODELOPS_LEADER_ELECT_LEASE_DURATION"])
    retry = int(env["MODELOPS_LEADER_ELECT_RETRY_PERIOD"])
    assert env["MODELOPS_LEADER_ELECT"] == "true"
    cluster.kubectl("delete", "modeldeployment", "--all", "-n", ns, "--wait=true")
    # Whoever held the Lease last (the previous test's operator released it on SIGTERM).
    a = start_operator(release, sa_kubeconfig, "modelops-operator-a", tmp_path)
    b = None
    try:
        cluster.wait_for(lambda: lease_holder(cluster, release).startswith("modelops-operator-a_"), timeout=60,
                         what="operator A to lead")
        b = start_operator(release, sa_kubeconfig, "modelops-operator-b", tmp_path)
        cluster.wait_for(lambda: b.metric("modelops_operator_leader") == 0.0, timeout=60, what="B up as a standby")
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            md_body("ha", ns, {"name": m["name"], "version": m["v1"]})))
        cluster.wait_for(lambda: phase(cluster, ns, "ha") == "Deploying", timeout=90, what="A to deploy")
        mark_ready(cluster, ns, "ha")
        cluster.wait_for(lambda: phase(cluster, ns, "ha") == "Ready", what="Ready")
        time.sleep(3)  # settled: an idle operator writes nothing
        before = (rv(cluster, "modeldeployment", ns, "ha"), rv(cluster, "inferenceservice", ns, "ha"))
        a_writes = a.metric("modelops_operator_writes_total")
        assert a_writes >= 2  # the InferenceService and the status
        # Only the leader wrote: the standby never started Kopf, and counted no write.
        assert b.metric("modelops_operator_writes_total") in (None, 0.0)
        assert b.metric("modelops_operator_reconciles_total") in (None, 0.0)
        assert "wrote" not in b.text() and lease_holder(cluster, release).startswith("modelops-operator-a_")
        assert b.probe("/healthz") == 200 and b.probe("/readyz") == 200  # a standby passes its probes

        a.proc.send_signal(signal.SIGKILL)  # a crash: no hand-over
        killed = time.monotonic()
        a.proc.wait(10)
        cluster.wait_for(lambda: lease_holder(cluster, release).startswith("modelops-operator-b_"),
                         timeout=lease_duration + 4 * retry + 10, what="B to take the Lease")
        took_lease = time.monotonic() - killed
        cluster.wait_for(lambda: b.metric("modelops_operator_leader") == 1.0, what="B to lead")
        # B resumes every ModelDeployment: the facts did not change, so it writes nothing.
        cluster.wait_for(lambda: b.metric("modelops_operator_reconciles_total"), timeout=60, what="B's resume pass")
        time.sleep(3)
        after = (rv(cluster, "modeldeployment", ns, "ha"), rv(cluster, "inferenceservice", ns, "ha"))
        assert after == before, "the new leader rewrote what the old one had written"
        assert b.metric("modelops_operator_writes_total") in (None, 0.0)
        # And it acts: a spec change reaches the InferenceService through B, once.
        changed = time.monotonic()
        cluster.kubectl("patch", "modeldeployment", "ha", "-n", ns, "--type=merge",
                        "-p", json.dumps({"spec": {"predictor": {"maxReplicas": 3}}}))
        cluster.wait_for(lambda: cluster.get("inferenceservice", "ha", "-n", ns)["spec"]["predictor"]["maxReplicas"] == 3,
                         timeout=60, what="B to apply the change")
        acted = time.monotonic() - changed
        time.sleep(2)
        assert b.metric('modelops_operator_writes_total{resource="inferenceservice"}') == 1.0
        isvc_generation = cluster.get("inferenceservice", "ha", "-n", ns)["metadata"]["generation"]
        assert isvc_generation == 2  # created once by A, changed once by B
        print(f"\nfailover: SIGKILL of the leader -> standby holds the Lease after {took_lease:.1f} s "
              f"(bound {lease_duration + 2 * retry} s); a spec change then applied in {acted:.1f} s")
        assert took_lease <= lease_duration + 2 * retry + 2  # the documented bound (+ polling here)

        # A clean stop hands over at once (the Lease is released).
        c = start_operator(release, sa_kubeconfig, "modelops-operator-c", tmp_path)
        cluster.wait_for(lambda: c.metric("modelops_operator_leader") == 0.0, timeout=60, what="C up as a standby")
        stopped = time.monotonic()
        b.stop(signal.SIGTERM)
        assert b.proc.returncode == 0, b.text()[-2000:]
        cluster.wait_for(lambda: lease_holder(cluster, release).startswith("modelops-operator-c_"),
                         timeout=lease_duration, what="C to take the released Lease")
        handed_over = time.monotonic() - stopped
        print(f"clean stop of the leader -> standby holds the Lease after {handed_over:.1f} s")
        assert handed_over <= retry + 2  # Kopf stops at once, the Lease is released, C takes it next try
        c.stop()
    finally:
        for op in (a, b):
            if op is not None:
                op.stop(signal.SIGKILL)
