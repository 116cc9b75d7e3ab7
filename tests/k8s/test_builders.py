"""The objects the operator generates, validated against KServe's and Kubernetes' own schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest

from modelops.deployment.facts import Served
from modelops.deployment.spec import parse_spec
from modelops.deployment.storage import (StorageLocation, UnsupportedArtifactStore, parse_rewrites,
                                        storage_location, storage_uri)
from modelops_operator import builders, diffing

from .schemas import kserve_schema, schema_errors

MD = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
      "metadata": {"name": "fraud", "namespace": "ml", "uid": "1234-abcd", "generation": 4}}
SERVED = Served(version="3", onnx_uri="s3://mlflow/1/abc/artifacts/modelops/onnx",
                storage_uri="s3://mlflow/1/abc/artifacts/modelops/onnx", sha256="f" * 64, options="x")
GPU_SPEC = parse_spec({
    "model": {"name": "fraud-detector", "alias": "champion"},
    "conversion": {"precision": "fp16", "tolerance": {"rtol": 0.01, "atol": 0.001}},
    "predictor": {"gpu": 2, "minReplicas": 1, "maxReplicas": 3,
                  "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
                  "nodeSelector": {"accelerator": "a100"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
})
CPU_SPEC = parse_spec({"model": {"name": "churn", "version": "3"}})


@pytest.fixture(scope="module")
def isvc_schema():
    return kserve_schema("serving.kserve.io_inferenceservices.yaml", "v1beta1")


def test_gpu_inference_service(isvc_schema):
    isvc = builders.build_inference_service(MD, GPU_SPEC, SERVED)
    assert schema_errors(isvc, isvc_schema) == []
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert (isvc["metadata"]["name"], isvc["metadata"]["namespace"]) == ("fraud", "ml")
    owner = isvc["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment", "name": "fraud",
                     "uid": "1234-abcd", "controller": True, "blockOwnerDeletion": True}
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"]) == (1, 3)
    assert pred["nodeSelector"] == {"accelerator": "a100"}
    assert pred["tolerations"][0]["key"] == "nvidia.com/gpu"
    model = pred["model"]
    assert model["modelFormat"] == {"name": "onnx"}
    assert model["runtime"] == "modelops-onnxruntime"
    assert model["storageUri"] == SERVED.storage_uri
    assert model["resources"]["limits"] == {"memory": "4Gi", "nvidia.com/gpu": "2"}
    assert model["resources"]["requests"]["cpu"] == "1"
    assert {"name": "MODELOPS_DEVICE", "value": "cuda"} in model["env"]


def test_cpu_inference_service_has_no_gpu(isvc_schema):
    isvc = builders.build_inference_service(MD, CPU_SPEC, SERVED)
    assert schema_errors(isvc, isvc_schema) == []
    model = isvc["spec"]["predictor"]["model"]
    assert "nvidia.com/gpu" not in str(model.get("resources", {}))
    assert {"name": "MODELOPS_DEVICE", "value": "cpu"} in model["env"]
    assert "nodeSelector" not in isvc["spec"]["predictor"]


def test_cluster_serving_runtime_validates_and_runs_modelops_serve():
    runtime = builders.build_cluster_serving_runtime()
    schema = kserve_schema("serving.kserve.io_clusterservingruntimes.yaml", "v1alpha1")
    assert schema_errors(runtime, schema) == []
    # A namespaced ServingRuntime has the same spec: it validates against that CRD as well.
    ns_runtime = dict(runtime, kind="ServingRuntime", metadata={**runtime["metadata"], "namespace": "ml"})
    assert schema_errors(ns_runtime, kserve_schema("serving.kserve.io_servingruntimes.yaml", "v1alpha1")) == []
    assert runtime["metadata"]["name"] == "modelops-onnxruntime"
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == ["onnx"]
    (container,) = runtime["spec"]["containers"]
    assert container["command"] + container["args"] == [
        "modelops", "serve", "/mnt/models", "--name", "{{.Name}}", "--http-port", "8080", "--grpc-port", "8081"]


def test_conversion_job_is_restricted_and_runs_modelops_convert():
    spec = parse_spec({"model": {"name": "fraud-detector", "alias": "champion"},
                       "registry": {"credentialsSecret": "mlflow-creds"},
                       "conversion": {"precision": "fp16", "opset": 18, "tolerance": {"rtol": 0.01, "atol": 0.001}}})
    job = builders.build_conversion_job(MD, spec, "3", tracking_uri="http://mlflow:5000",
                                        image="converter:1")
    kubernetes_validate.validate(job, "1.30", strict=True)
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] + c["args"] == [
        "modelops", "convert", "models:/fraud-detector/3", "--tracking-uri", "http://mlflow:5000",
        "--output", "/tmp/out", "--register", "--precision", "fp16", "--opset", "18",
        "--rtol", "0.01", "--atol", "0.001"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    # Pod Security Standard "restricted".
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow-creds"}}]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"
    assert len(job["metadata"]["name"]) <= 63


def test_conversion_job_without_tolerances_passes_none():
    job = builders.build_conversion_job(MD, CPU_SPEC, "3", tracking_uri="http://m", image="c")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--rtol" not in args and "--atol" not in args and "envFrom" not in job["spec"]["template"]["spec"]["containers"][0]


def test_job_name_is_deterministic_and_short():
    long = "a" * 80
    assert builders.job_name(long, "12", "opt") == builders.job_name(long, "12", "opt")
    assert len(builders.job_name(long, "123456789", "opt")) <= 63
    assert builders.job_name("m", "1", "a") != builders.job_name("m", "1", "b")


def test_merge_patch_is_empty_when_observed_has_extra_defaults():
    desired = builders.build_inference_service(MD, GPU_SPEC, SERVED)
    observed = {**desired, "status": {"url": "http://x"},
                "metadata": {**desired["metadata"], "resourceVersion": "7", "generation": 2}}
    observed["spec"] = {"predictor": {**desired["spec"]["predictor"], "timeout": 60}}  # a webhook default
    body = {k: desired[k] for k in ("metadata", "spec")}
    assert diffing.merge_patch(observed, body, diffing.IS_OWNED_MAPS) is None


def test_merge_patch_changes_and_deletes_owned_keys():
    old = builders.build_inference_service(MD, GPU_SPEC, SERVED)
    new_spec = parse_spec({"model": {"name": "fraud-detector", "alias": "champion"},
                           "predictor": {"gpu": 0, "nodeSelector": {"zone": "b"}}})
    new = builders.build_inference_service(MD, new_spec, SERVED)
    body = {k: new[k] for k in ("metadata", "spec")}
    patch = diffing.merge_patch(old, body, diffing.IS_OWNED_MAPS)
    patch = diffing.deep_merge(patch, diffing.drop_owned_absent(body, old, diffing.IS_OWNED_MAPS))
    pred = patch["spec"]["predictor"]
    assert pred["nodeSelector"] == {"zone": "b", "accelerator": None}
    assert pred["model"]["resources"] == {"requests": None, "limits": None}  # none wanted any more


def test_storage_uri_passthrough_and_rewrites():
    assert storage_uri("s3://b/x") == "s3://b/x"
    rewrites = parse_rewrites(["mlflow-artifacts:/=s3://mlflow/artifacts/", "file:///mlruns/=pvc://mlruns/"])
    assert storage_uri("mlflow-artifacts:/1/abc/artifacts/onnx", rewrites) == "s3://mlflow/artifacts/1/abc/artifacts/onnx"
    assert storage_uri("file:///mlruns/1/x", rewrites) == "pvc://mlruns/1/x"
    with pytest.raises(UnsupportedArtifactStore, match="storage-uri-rewrite"):
        storage_uri("mlflow-artifacts:/1/abc")


def test_storage_location_uses_the_mlflow_artifact_proxy_without_a_rewrite():
    proxied = storage_location("mlflow-artifacts:/1/abc/artifacts/modelops/onnx-fp32-k", (),
                               "http://mlflow.mlflow:5000/")
    assert proxied.uri == ("http://mlflow.mlflow:5000/api/2.0/mlflow-artifacts/artifacts/"
                           "1/abc/artifacts/modelops/onnx-fp32-k/model.onnx")
    assert "artifact proxy" in proxied.note and "storage-uri-rewrite" in proxied.note
    # the host form MLflow also writes; the operator's tracking URI is what it knows to work
    assert storage_location("mlflow-artifacts://other:5000/1/x", (), "https://ml.example").uri == \
        "https://ml.example/api/2.0/mlflow-artifacts/artifacts/1/x/model.onnx"
    # a rewrite wins (direct store access), and says nothing
    rewrites = parse_rewrites(["mlflow-artifacts:/=s3://mlflow/artifacts/"])
    assert storage_location("mlflow-artifacts:/1/x", rewrites, "http://m") == \
        StorageLocation("s3://mlflow/artifacts/1/x")
    # file:// is not served by the tracking server: still a clear error
    with pytest.raises(UnsupportedArtifactStore, match="storage-uri-rewrite"):
        storage_location("file:///mlruns/1/x", (), "http://m")
    with pytest.raises(ValueError):
        parse_rewrites(["nonsense"])
    # a model of several files (a text model's tokenizer, external weights): its model.tar
    assert storage_location("mlflow-artifacts:/1/x", (), "http://m", file="model.tar").uri == \
        "http://m/api/2.0/mlflow-artifacts/artifacts/1/x/model.tar"


def test_a_model_of_several_files_is_also_bundled_as_one_flat_tar(tmp_path):
    import tarfile

    from modelops.conversion.publish import write_bundle

    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "conversion.json").write_text("{}")
    assert write_bundle(tmp_path) is None and not (tmp_path / "model.tar").exists()
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "text.json").write_text("{}")
    assert write_bundle(tmp_path) == "model.tar"
    with tarfile.open(tmp_path / "model.tar") as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == ["model.onnx", "text.json", "tokenizer.json"]
        assert all(m.isfile() and "/" not in m.name for m in members)
        assert tar.extractfile("model.onnx").read() == b"onnx"
    assert write_bundle(tmp_path) == "model.tar"  # rewritten, never bundles itself
    with tarfile.open(tmp_path / "model.tar") as tar:
        assert "model.tar" not in tar.getnames()


CANARY = Served(version="4", onnx_uri="s3://mlflow/1/def/artifacts/modelops/onnx",
                storage_uri="s3://mlflow/1/def/artifacts/modelops/onnx", sha256="e" * 64, options="x")


def test_standard_mode_canary(isvc_schema):
    isvc = builders.build_inference_service(MD, GPU_SPEC, SERVED, canary=CANARY, weight=10)
    assert schema_errors(isvc, isvc_schema) == []
    pred, (canary,) = isvc["spec"]["predictor"], isvc["spec"]["canary"]
    assert pred["name"] == "v3" and canary["predictor"]["name"] == "v4" and canary["trafficPercent"] == 10
    assert canary["predictor"]["model"]["storageUri"] == CANARY.storage_uri
    # KServe's rules: the canary's floor is not above the stable's, no autoscaling fields; one GPU
    # replica floor, not a copy of the stable fleet
    assert canary["predictor"]["minReplicas"] <= pred["minReplicas"] and "maxReplicas" not in canary["predictor"]
    assert canary["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    envs = {e["name"]: e["value"] for e in canary["predictor"]["model"]["env"]}
    assert envs["MODELOPS_MODEL_VERSION"] == "4"
    # the canary ends (promotion or rollback): the patch removes every canary field
    plain = builders.build_inference_service(MD, GPU_SPEC, CANARY)
    body = {k: plain[k] for k in ("metadata", "spec")}
    patch = diffing.deep_merge(diffing.merge_patch(isvc, body, diffing.IS_OWNED_MAPS) or {},
                               diffing.drop_owned_absent(body, isvc, diffing.IS_OWNED_MAPS))
    assert patch["spec"]["canary"] is None and patch["spec"]["predictor"]["name"] is None
    assert patch["metadata"]["annotations"]["modelops.dev/canary-model"] is None


def test_knative_mode_canary(isvc_schema):
    spec = parse_spec({"model": {"name": "churn", "version": "4"}, "predictor": {"deploymentMode": "Knative"}})
    isvc = builders.build_inference_service(MD, spec, SERVED, canary=CANARY, weight=50)
    assert schema_errors(isvc, isvc_schema) == []
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    pred = isvc["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 50 and pred["model"]["storageUri"] == CANARY.storage_uri
    assert "canary" not in isvc["spec"]
    done = builders.build_inference_service(MD, spec, CANARY)
    assert "canaryTrafficPercent" not in done["spec"]["predictor"]


def test_canary_readiness_as_kserve_reports_it():
    from modelops_operator.kserve_platform import canary_readiness

    standard = builders.build_inference_service(MD, GPU_SPEC, SERVED, canary=CANARY, weight=10)
    assert canary_readiness(standard) is None  # KServe said nothing yet: no hold
    standard["status"] = {"canaryStatuses": [{"name": "v4", "ready": False, "trafficPercent": 10}]}
    assert canary_readiness(standard) is False
    standard["status"]["canaryStatuses"][0]["ready"] = True
    assert canary_readiness(standard) is True
    standard["status"] = {"conditions": [{"type": "CanaryPredictorReady", "status": "False"}]}
    assert canary_readiness(standard) is False
    spec = parse_spec({"model": {"name": "churn", "version": "4"}, "predictor": {"deploymentMode": "Knative"}})
    knative = builders.build_inference_service(MD, spec, SERVED, canary=CANARY, weight=50)
    knative["status"] = {"components": {"predictor": {"latestCreatedRevision": "r2", "latestReadyRevision": "r1"}}}
    assert canary_readiness(knative) is False
    knative["status"]["components"]["predictor"]["latestReadyRevision"] = "r2"
    assert canary_readiness(knative) is True
    assert canary_readiness(builders.build_inference_service(MD, spec, SERVED)) is None  # no canary


def test_knative_rollback_first_moves_traffic_then_restores_the_stable_spec():
    spec = parse_spec({"model": {"name": "churn", "version": "4"}, "predictor": {"deploymentMode": "Knative"}})
    during = builders.build_inference_service(MD, spec, SERVED, canary=CANARY, weight=50)
    back = builders.build_inference_service(MD, spec, SERVED)  # rolled back: v3 again
    assert builders.knative_rollback_first_step(during, back) == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
    during["spec"]["predictor"]["canaryTrafficPercent"] = 0  # after the first write
    assert builders.knative_rollback_first_step(during, back) is None  # now the stable spec goes back
    promoted = builders.build_inference_service(MD, spec, CANARY)
    during["spec"]["predictor"]["canaryTrafficPercent"] = 50
    assert builders.knative_rollback_first_step(during, promoted) is None  # a promotion: one write
    standard = builders.build_inference_service(MD, GPU_SPEC, SERVED)
    assert builders.knative_rollback_first_step(standard, standard) is None


def test_an_owned_field_at_zero_is_still_removed():
    observed = {"spec": {"predictor": {"canaryTrafficPercent": 0, "model": {}}}}
    desired = {"spec": {"predictor": {"model": {}}}}
    patch = diffing.drop_owned_absent(desired, observed, diffing.IS_OWNED_MAPS)
    assert patch == {"spec": {"predictor": {"canaryTrafficPercent": None}}}


def test_a_status_patch_removes_what_the_new_rollout_state_lacks():
    from modelops_operator.diffing import status_patch

    old = {"phase": "Progressing", "version": "2", "weight": 10, "rolledBack": {"version": "1", "reason": "x"}}
    new = {"phase": "Promoted", "weight": 0, "rolledBack": {"version": "1"}}
    assert status_patch(old, {**old}) is None
    assert status_patch(old, new) == {"phase": "Promoted", "version": None, "weight": 0,
                                   "rolledBack": {"reason": None}}
