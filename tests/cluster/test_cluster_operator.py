"""The operator as its own process on a real kube-apiserver, with a real MLflow server.

Authenticated with the admin kubeconfig of ../shared/k8s (a client certificate, embedded as
`-data`), or with a ServiceAccount token of the shipped RBAC. Nothing is emulated except the
processes that are absent here: KServe's controller (the test marks an InferenceService ready)
and a kubelet (the test runs a conversion Job's command and records the Job's completion).
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import httpx
import pytest
import yaml

from .conftest import MODELOPS, RBAC_FILE, eventually, md_body

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def isvc_of(cluster, ns, name):
    return cluster.get("inferenceservice", ns, name)


def storage_uri(cluster, ns, name):
    isvc = isvc_of(cluster, ns, name)
    return isvc and isvc["spec"]["predictor"]["model"]["storageUri"]


def validate_against_kserve(cluster, obj: dict) -> None:
    """The real server validates the InferenceService against KServe's CRD schema (dry-run)."""
    clean = {k: obj[k] for k in ("apiVersion", "kind", "spec")}
    clean["metadata"] = {"name": obj["metadata"]["name"] + "-check", "namespace": obj["metadata"]["namespace"]}
    proc = cluster.kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-",
                           input=json.dumps(clean), check=False)
    assert proc.returncode == 0, proc.stderr


def test_operator_with_client_certificate_end_to_end(cluster, namespace, start_operator, registered):
    """create -> conversion -> InferenceService -> Ready; Events; no writes at rest; alias move;
    MLflow's artifact proxy without a rewrite; deletion garbage-collected by the controller-manager."""
    ns, name = namespace, "fraud"
    admin = yaml.safe_load(open(cluster.kubeconfig))
    assert "client-certificate-data" in admin["users"][0]["user"]  # the case that was broken
    op = start_operator(ns, cluster.kubeconfig)
    cluster.apply(md_body(name, {"name": registered["name"], "alias": "champion"},
                          predictor={"gpu": 1, "maxReplicas": 2}), "-n", ns)

    uri = eventually(lambda: storage_uri(cluster, ns, name), timeout=120, what="the InferenceService")
    isvc = isvc_of(cluster, ns, name)
    md = cluster.get("modeldeployment", ns, name)
    validate_against_kserve(cluster, isvc)
    assert isvc["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "modelops-onnxruntime" and model["resources"]["limits"]["nvidia.com/gpu"] == "1"

    # mlflow-artifacts:/ and no rewrite: KServe downloads model.onnx from the tracking server
    assert uri.startswith(registered["client"]._tracking_client.tracking_uri + "/api/2.0/mlflow-artifacts/")
    assert uri.endswith("/model.onnx")
    st = eventually(lambda: cluster.status(ns, name).get("stable"), what="status.stable")
    body = httpx.get(uri, timeout=30)
    assert body.status_code == 200
    assert hashlib.sha256(body.content).hexdigest() == st["sha256"]
    assert st["version"] == registered["v1"]

    cluster.mark_isvc_ready(ns, name)
    eventually(lambda: cluster.status(ns, name).get("phase") == "Ready", what="phase Ready")
    status = cluster.status(ns, name)
    assert status["observedGeneration"] == md["metadata"]["generation"]
    ready = cluster.condition(ns, name, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Serving"
    assert cluster.condition(ns, name, "Stalled")["status"] == "False"
    reasons = eventually(lambda: {e["reason"] for e in cluster.events(ns, name)} >= {
        "Converted", "Deployed", "ArtifactProxy", "Ready"} and {e["reason"] for e in cluster.events(ns, name)},
        what="Events")
    assert "ArtifactProxy" in reasons

    # at rest: several alias re-resolves (every 1 s) write nothing
    rv_isvc = isvc_of(cluster, ns, name)["metadata"]["resourceVersion"]
    rv_md = cluster.get("modeldeployment", ns, name)["metadata"]["resourceVersion"]
    import time
    time.sleep(5)
    assert isvc_of(cluster, ns, name)["metadata"]["resourceVersion"] == rv_isvc
    assert cluster.get("modeldeployment", ns, name)["metadata"]["resourceVersion"] == rv_md

    # the alias moves in MLflow: the new version is converted and deployed
    registered["client"].set_registered_model_alias(registered["name"], "champion", registered["v2"])
    try:
        eventually(lambda: storage_uri(cluster, ns, name) not in (None, uri), timeout=120, what="v2 deployed")
        eventually(lambda: cluster.status(ns, name).get("stable", {}).get("version") == registered["v2"],
                   what="status.stable v2")
        assert isvc_of(cluster, ns, name)["metadata"]["labels"]["modelops.dev/model-version"] == registered["v2"]
    finally:
        registered["client"].set_registered_model_alias(registered["name"], "champion", registered["v1"])

    # deletion: the finalizer goes, the real garbage collector removes the InferenceService
    cluster.kubectl("-n", ns, "delete", "modeldeployment", name, "--wait=false")
    eventually(lambda: cluster.get("modeldeployment", ns, name) is None, what="ModelDeployment gone")
    eventually(lambda: isvc_of(cluster, ns, name) is None, timeout=60, what="InferenceService garbage-collected")
    assert op.alive()


def test_missing_model_is_reported_and_nothing_deployed(cluster, namespace, start_operator):
    ns = namespace
    start_operator(ns, cluster.kubeconfig)
    cluster.apply(md_body("ghost", {"name": "no-such-model-anywhere", "version": "1"}), "-n", ns)
    stalled = eventually(lambda: cluster.condition(ns, "ghost", "Stalled").get("status") == "True"
                         and cluster.condition(ns, "ghost", "Stalled"), what="Stalled")
    assert stalled["reason"] == "ModelNotFound" and "no-such-model-anywhere" in stalled["message"]
    assert cluster.status(ns, "ghost")["phase"] == "Failed"
    assert isvc_of(cluster, ns, "ghost") is None
    assert any(e["reason"] == "ModelNotFound" and e["type"] == "Warning" for e in cluster.events(ns, "ghost"))


def install_rbac(cluster) -> None:
    """The shipped RBAC, as `kubectl apply -k manifests/` would install it."""
    if cluster.kubectl("get", "namespace", "modelops-system", check=False).returncode != 0:
        cluster.kubectl("create", "namespace", "modelops-system")
    cluster.kubectl("apply", "-f", str(RBAC_FILE))


def test_least_privilege_job_mode_with_the_shipped_rbac(cluster, namespace, start_operator, registered,
                                                        tmp_path, mlflow_server):
    """The operator authenticated as the ServiceAccount of manifests/install/rbac.yaml, converting
    in a Job: the Job passes the real server and its Pod is created (Pending: no kubelet); the test
    runs the Job's own command and reports the Pod as exited, the real Job controller completes the
    Job; the flow ends Ready. A second version's converter fails: its termination message (read from
    the Pod) becomes the status reason, and the serving version stays."""
    ns, name = namespace, "lp"
    install_rbac(cluster)
    sa_kubeconfig = cluster.token_kubeconfig(tmp_path / "sa.kubeconfig", "modelops-operator", "modelops-system")
    who = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=sa_kubeconfig, check=False)
    if who.returncode == 0:
        assert json.loads(who.stdout)["status"]["userInfo"]["username"] == \
            "system:serviceaccount:modelops-system:modelops-operator"
    # least privilege: no Secrets, no Deployments
    for verb, what in (("get", "secrets"), ("list", "secrets"), ("create", "deployments"), ("delete", "pods")):
        can = cluster.kubectl("auth", "can-i", verb, what, "-n", ns, kubeconfig=sa_kubeconfig, check=False)
        assert can.stdout.strip() == "no", (verb, what, can.stdout)

    op = start_operator(ns, sa_kubeconfig, conversion="job")
    cluster.apply(md_body(name, {"name": registered["name"], "version": registered["v2"]},
                          conversion={"precision": "fp32", "opset": 17, "tolerance": {"rtol": 0.002}}), "-n", ns)
    job = eventually(lambda: (cluster.list("jobs", ns, "modelops.dev/component=converter") or [None])[0],
                     timeout=60, what="the conversion Job")
    pods = eventually(lambda: cluster.list("pods", ns, f"job-name={job['metadata']['name']}"),
                      what="the Job's Pod (created by the real Job controller)")
    assert pods[0]["status"]["phase"] == "Pending"
    assert pods[0]["spec"]["automountServiceAccountToken"] is False
    assert cluster.status(ns, name)["phase"] == "Converting"

    # the kubelet's part: run the converter's own command, then report its Pod as exited
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = [a if a != "/tmp/out" else str(tmp_path / "out") for a in container["args"]]
    assert args[:2] == ["convert", f"models:/{registered['name']}/{registered['v2']}"]
    run = subprocess.run([MODELOPS, *args], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    cluster.finish_job_pod(ns, job["metadata"]["name"], 0)

    eventually(lambda: storage_uri(cluster, ns, name), timeout=90, what="the InferenceService after the Job")
    cluster.mark_isvc_ready(ns, name)
    eventually(lambda: cluster.status(ns, name).get("phase") == "Ready", what="Ready")
    assert cluster.status(ns, name)["stable"]["version"] == registered["v2"]
    assert {"Converted", "Deployed", "Ready"} <= {e["reason"] for e in cluster.events(ns, name)}

    # the next version's converter fails its parity check: reason from the Pod, v2 keeps serving
    cluster.patch("modeldeployment", ns, name, {"spec": {"model": {"version": registered["v1"]}}})
    failing = eventually(lambda: [j for j in cluster.list("jobs", ns, "modelops.dev/component=converter")
                                  if j["metadata"]["name"] != job["metadata"]["name"]], what="second Job")[0]
    cluster.finish_job_pod(ns, failing["metadata"]["name"], 4,
                           "modelops: ParityFailed: output 'output' diverged at [0, 1]: |err| 0.5 > 0.001")
    stalled = eventually(lambda: cluster.condition(ns, name, "Stalled").get("status") == "True"
                         and cluster.condition(ns, name, "Stalled"), what="Stalled ParityFailed")
    assert stalled["reason"] == "ParityFailed" and "diverged" in stalled["message"]
    assert cluster.status(ns, name)["stable"]["version"] == registered["v2"]
    assert isvc_of(cluster, ns, name)["metadata"]["labels"]["modelops.dev/model-version"] == registered["v2"]

    cluster.kubectl("-n", ns, "delete", "modeldeployment", name, "--wait=false")
    eventually(lambda: cluster.get("modeldeployment", ns, name) is None, what="finalizer removed")
    eventually(lambda: isvc_of(cluster, ns, name) is None, what="InferenceService garbage-collected")
    assert op.alive()
    assert "Unauthorized" not in op.output() and "Forbidden" not in op.output(), op.output()[-3000:]
