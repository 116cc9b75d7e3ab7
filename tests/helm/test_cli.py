"""`modelops render` (offline, and --resolve against a real MLflow) and `modelops status` (real
API server), run as the installed command."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

import pytest
import yaml

from modelops.deployment.facts import Served
from modelops.deployment.spec import parse_spec
from modelops_operator import builders
from modelops_operator.status_view import Snapshot, format_status

from .conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "manifests/examples"
REWRITE = "mlflow-artifacts:/=s3://mlflow-artifacts/"


def modelops(*args: str, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELOPS_")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "platform"), str(REPO_ROOT / "operators")])
    return subprocess.run([sys.executable, "-m", "modelops.cli", *args], input=input, capture_output=True,
                          text=True, timeout=180, env={**base, **(env or {})})


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


# --- render ----------------------------------------------------------------------------------------
def test_render_pinned_version_equals_the_builders():
    proc = modelops("render", "-f", str(EXAMPLES / "churn-model-cpu.yaml"), "--storage-uri", "s3://models/churn/3/")
    assert proc.returncode == 0, proc.stderr
    (isvc,) = docs(proc.stdout)  # a converted model: no Job
    md = yaml.safe_load((EXAMPLES / "churn-model-cpu.yaml").read_text())
    md["metadata"].update(uid="00000000-0000-0000-0000-000000000000", generation=1)
    expected = builders.build_inference_service(
        md, parse_spec(md["spec"]), Served("3", "s3://models/churn/3/", "s3://models/churn/3/",
                                           "<sha256 of the converted ONNX>", "x"))
    assert isvc == expected
    assert "owner uid" in proc.stdout.splitlines()[0]


def test_render_alias_without_mlflow_prints_the_service_and_the_job():
    proc = modelops("render", "-f", str(EXAMPLES / "fraud-detector-gpu.yaml"),
                    env={"MODELOPS_CONVERTER_IMAGE": "r.example/conv:1", "MODELOPS_RUNTIME": "rt"})
    assert proc.returncode == 0, proc.stderr
    isvc, job = docs(proc.stdout)
    assert isvc["kind"] == "InferenceService" and job["kind"] == "Job"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "rt" and model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "MODELOPS_DEVICE", "value": "cuda"} in model["env"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "r.example/conv:1"
    assert c["args"][:2] == ["convert", "models:/fraud-detector/0"] and "--precision" in c["args"]
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    assert "follows models:/fraud-detector@champion" in proc.stdout  # the placeholder is said
    assert "&id" not in proc.stdout and "*id" not in proc.stdout  # plain YAML, no anchors
    # --version fills the alias's version in.
    named = docs(modelops("render", "-f", str(EXAMPLES / "fraud-detector-gpu.yaml"), "--version", "7").stdout)
    assert named[1]["metadata"]["name"].startswith("fraud-detector-convert-v7-")
    as_json = json.loads(modelops("render", "-f", str(EXAMPLES / "fraud-detector-gpu.yaml"), "-o", "json").stdout)
    assert [o["kind"] for o in as_json["items"]] == ["InferenceService", "Job"]


@pytest.mark.parametrize("body,field", [
    ({"model": {"name": "m", "version": "1", "alias": "a"}}, "spec.model"),
    ({"model": {"name": "m", "version": "1"}, "conversion": {"precision": "fp8"}}, "spec.conversion.precision"),
    ({"model": {"name": "m", "version": "1"}, "predictor": {"gpu": -1}}, "spec.predictor.gpu"),
])
def test_render_rejects_a_bad_spec_naming_the_field(body, field):
    md = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": body}
    proc = modelops("render", "-f", "-", input=yaml.safe_dump(md))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"modelops: InvalidSpec: {field}"), proc.stderr
    assert proc.stdout == ""


def test_render_rejects_a_file_without_a_modeldeployment(tmp_path):
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    proc = modelops("render", "-f", str(path))
    assert proc.returncode == 2 and "no ModelDeployment" in proc.stderr


@pytest.mark.slow
def test_render_resolve_asks_mlflow(published_model):
    m = published_model
    md = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "mlp", "namespace": "ml"},
          "spec": {"model": {"name": m["name"], "alias": "champion"}}}
    env = {"MODELOPS_MLFLOW_TRACKING_URI": m["tracking_uri"], "MODELOPS_STORAGE_URI_REWRITES": REWRITE}
    proc = modelops("render", "-f", "-", "--resolve", input=yaml.safe_dump(md), env=env)
    assert proc.returncode == 0, proc.stderr
    (isvc,) = docs(proc.stdout)  # published for these options: the operator reuses it, no Job
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == m["onnx_uri"].replace("mlflow-artifacts:/", "s3://mlflow-artifacts/", 1)
    assert {"name": "MODELOPS_MODEL_SHA256", "value": m["sha256"]} in model["env"]
    assert isvc["metadata"]["labels"][builders.LABEL_VERSION] == m["v1"]
    # Other options were never converted: the Job that would convert them.
    md["spec"]["conversion"] = {"precision": "fp16"}
    isvc, job = docs(modelops("render", "-f", "-", "--resolve", input=yaml.safe_dump(md), env=env).stdout)
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][1] == f"models:/{m['name']}/{m['v1']}"
    # A missing alias is MLflow's answer, with its exit code.
    md["spec"]["model"]["alias"] = "nobody"
    proc = modelops("render", "-f", "-", "--resolve", input=yaml.safe_dump(md), env=env)
    assert proc.returncode == 3 and "AliasNotFound" in proc.stderr


# --- status ----------------------------------------------------------------------------------------
NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)


def _snapshot() -> Snapshot:
    md = {"metadata": {"name": "fraud", "namespace": "ml", "generation": 4, "creationTimestamp": "2026-01-01T10:00:00Z"},
          "spec": {"model": {"name": "fraud-detector", "alias": "champion"},
                   "registry": {"trackingUri": "http://mlflow.example.com:5000"},
                   "conversion": {"precision": "fp16"}, "rollout": {"strategy": "canary", "steps": [10, 50, 100]}},
          "status": {"phase": "Progressing", "observedGeneration": 4, "resolvedVersion": "7",
                     "stable": {"version": "6", "storageUri": "s3://m/6/", "sha256": "ab" * 32},
                     "canary": {"version": "7", "weight": 50},
                     "failed": {"version": "5", "reason": "ParityFailed", "message": "max_abs_err 0.3"},
                     "url": "http://fraud.ml.example.com",
                     "conditions": [
                         {"type": "Ready", "status": "True", "reason": "Serving", "message": "serving v6",
                          "lastTransitionTime": "2026-01-01T11:00:00Z"},
                         {"type": "Reconciling", "status": "True", "reason": "Progressing",
                          "message": "canary v7 at 50%", "lastTransitionTime": "2026-01-01T11:55:00Z"},
                         {"type": "Stalled", "status": "False", "reason": "NoError", "message": ""}]}}
    isvc = {"metadata": {"name": "fraud", "labels": {builders.LABEL_VERSION: "6"}},
            "spec": {"predictor": {"model": {"storageUri": "s3://m/6/"}}},
            "status": {"url": "http://fraud.ml.example.com",
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    jobs = [{"metadata": {"name": "fraud-convert-v7-1a2b3c4d", "labels": {builders.LABEL_VERSION: "7"},
                          "creationTimestamp": "2026-01-01T11:50:00Z"},
             "status": {"conditions": [{"type": "Complete", "status": "True"}]}}]
    events = [{"type": "Normal", "reason": "Converted", "message": "fraud-detector v7 converted",
               "involvedObject": {"kind": "ModelDeployment"}, "lastTimestamp": "2026-01-01T11:52:00Z"},
              {"type": "Warning", "reason": "ParityFailed", "message": "v5 too far", "count": 2,
               "involvedObject": {"kind": "ModelDeployment"}, "lastTimestamp": "2026-01-01T09:00:00Z"}]
    return Snapshot(md=md, isvc=isvc, jobs=jobs, events=events)


def test_status_view_says_everything_in_one_screen():
    text = format_status(_snapshot(), now=NOW)
    lines = text.splitlines()
    assert lines[0].startswith("ModelDeployment ml/fraud  (generation 4, observed 4; age 2h)")
    assert "Model:      fraud-detector @champion -> v7" in text
    assert "Phase:      Progressing" in text
    assert "Serving:    v6  (fp16, opset 17; sha256 abababababab)" in text
    assert "Canary:     v7 at 50%, step 2 of 3 (10, 50, 100)" in text
    assert "Failed:     v5: ParityFailed: max_abs_err 0.3" in text
    assert "serving: http://mlflow.example.com:5000/#/models/fraud-detector/versions/6" in text
    assert "canary: http://mlflow.example.com:5000/#/models/fraud-detector/versions/7" in text
    assert any(l.split()[:4] == ["Reconciling", "True", "Progressing", "5m"] for l in lines)
    assert "fraud: v6, Ready=True, http://fraud.ml.example.com" in text
    assert any(l.split()[:3] == ["fraud-convert-v7-1a2b3c4d", "7", "Complete"] for l in lines)
    events = lines[lines.index("Events:") + 2:]
    assert events[0].split()[:3] == ["3h", "Warning", "ParityFailed"] and events[0].endswith("(x2)")
    assert events[1].split()[:3] == ["8m", "Normal", "Converted"]


def test_status_view_of_a_new_deployment():
    text = format_status(Snapshot(md={"metadata": {"name": "m", "namespace": "ml", "generation": 1},
                                      "spec": {"model": {"name": "m", "version": "3"}}}), now=NOW)
    assert "Phase:      Pending" in text and "Model:      m version 3" in text
    assert "InferenceService:\n  none yet" in text and "Events:\n  none" in text


@pytest.mark.slow
def test_status_reads_a_real_cluster(cluster):
    ns = cluster.restricted_namespace(f"ml-status-{cluster.suffix}")
    from .conftest import CRD_NAME

    if cluster.get("crd", CRD_NAME) is None:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "manifests/crds/modeldeployments.modelops.dev.yaml"))
    cluster.cp.wait_established(CRD_NAME)
    md = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "fraud", "namespace": ns},
          "spec": {"model": {"name": "fraud-detector", "version": "3"},
                   "registry": {"trackingUri": "http://mlflow.example.com"}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(md))
    created = cluster.get("modeldeployment", "fraud", "-n", ns)
    status = {"status": {"phase": "Deploying", "observedGeneration": 1, "resolvedVersion": "3",
                         "stable": {"version": "3", "storageUri": "s3://m/3/", "sha256": "cd" * 32},
                         "conditions": [{"type": "Ready", "status": "False", "reason": "Deploying",
                                         "message": "deploying fraud-detector v3: waiting for KServe",
                                         "lastTransitionTime": "2026-01-01T11:00:00Z", "observedGeneration": 1}]}}
    cluster.kubectl("patch", "modeldeployment", "fraud", "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "fraud.deployed", "namespace": ns},
             "involvedObject": {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "name": "fraud",
                                "namespace": ns, "uid": created["metadata"]["uid"]},
             "reason": "Deployed", "message": "InferenceService now serves fraud-detector v3", "type": "Normal",
             "firstTimestamp": "2026-01-01T11:00:00Z", "lastTimestamp": "2026-01-01T11:00:00Z",
             "source": {"component": "modelops"}}
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(event))
    isvc = builders.build_inference_service({"metadata": {**created["metadata"]}}, parse_spec(md["spec"]),
                                            Served("3", "s3://m/3/", "s3://m/3/", "cd" * 32, "x"))
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(isvc))

    proc = modelops("status", "fraud", "-n", ns, "--kubeconfig", cluster.cp.kubeconfig)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"ModelDeployment {ns}/fraud  (generation 1, observed 1;" in out
    assert "Phase:      Deploying" in out and "Serving:    v3" in out
    assert any(line.split()[:3] == ["Ready", "False", "Deploying"] for line in out.splitlines()), out
    assert "fraud: v3, Ready=Unknown" in out and "storageUri s3://m/3/" in out
    assert "Deployed" in out and "InferenceService now serves fraud-detector v3" in out
    assert "http://mlflow.example.com/#/models/fraud-detector/versions/3" in out
    as_yaml = yaml.safe_load(modelops("status", "fraud", "-n", ns, "--kubeconfig", cluster.cp.kubeconfig,
                                      "-o", "yaml").stdout)
    assert as_yaml["modelDeployment"]["status"]["phase"] == "Deploying"

    missing = modelops("status", "nope", "-n", ns, "--kubeconfig", cluster.cp.kubeconfig)
    assert missing.returncode == 3 and f"ModelDeployment {ns}/nope not found" in missing.stderr
