"""Build the Kubernetes objects the operator owns: InferenceService, conversion Job, runtime.

Pure functions of (ModelDeployment metadata, typed spec, converted model). Every object they
return is validated in tests against KServe's own CRD schemas (`shared/kserve-crds/`) or the
Kubernetes OpenAPI (kubernetes-validate).
"""

from __future__ import annotations

import hashlib
import re

from modelops.deployment import API_VERSION, KIND
from modelops.deployment.facts import Served
from modelops.deployment.spec import DeploymentSpec

from .config import DEFAULT_RUNTIME

MANAGED_BY = {"app.kubernetes.io/managed-by": "modelops"}
LABEL_DEPLOYMENT = "modelops.dev/deployment"
LABEL_VERSION = "modelops.dev/model-version"
LABEL_COMPONENT = "modelops.dev/component"
ANNOTATION_SHA = "modelops.dev/onnx-sha256"
ANNOTATION_MODEL = "modelops.dev/model"
ANNOTATION_GENERATION = "modelops.dev/generation"
ANNOTATION_CANARY = "modelops.dev/canary-model"
ANNOTATION_DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"

PREDICTOR_IMAGE = "ghcr.io/modelops/modelops-predictor:0.1.0"


def owner_reference(md: dict) -> dict:
    """Makes the ModelDeployment the controller of the object: Kubernetes GC deletes it with it."""
    meta = md["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _label_value(text: str) -> str:
    """A valid label value (63 chars, alphanumeric ends) derived from arbitrary text."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")
    return value or "x"


def _predictor_model(spec: DeploymentSpec, served: Served, runtime: str) -> dict:
    p = spec.predictor
    limits = dict(p.limits)
    requests = dict(p.requests)
    if p.gpu > 0:
        # Extended resources: limits are what the scheduler uses; requests must equal them.
        limits["nvidia.com/gpu"] = str(p.gpu)
        requests["nvidia.com/gpu"] = str(p.gpu)
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    model: dict = {
        "modelFormat": {"name": "onnx"},
        "runtime": runtime,
        "storageUri": served.storage_uri,
        # The predictor refuses to fall back to CPU when a GPU was asked for; its metrics carry
        # the MLflow version (`version` label), which canary analysis tells stable and canary by.
        "env": [{"name": "MODELOPS_DEVICE", "value": "cuda" if p.gpu > 0 else "cpu"},
                {"name": "MODELOPS_MODEL_VERSION", "value": served.version},
                {"name": "MODELOPS_MODEL_SHA256", "value": served.sha256}],
    }
    if resources:
        model["resources"] = resources
    return model


def _placement(spec: DeploymentSpec, predictor: dict) -> dict:
    p = spec.predictor
    if p.node_selector:
        predictor["nodeSelector"] = dict(p.node_selector)
    if p.tolerations:
        predictor["tolerations"] = [dict(t) for t in p.tolerations]
    return predictor


def predictor_name(version: str) -> str:
    """The name of a version's predictor in KServe's Standard-mode canary list."""
    return f"v{_label_value(version)}".lower()[:63]


def build_inference_service(md: dict, spec: DeploymentSpec, served: Served, *,
                            runtime: str = DEFAULT_RUNTIME, canary: Served | None = None,
                            weight: int = 0) -> dict:
    """The KServe InferenceService serving `served` (the stable version) for ModelDeployment `md`
    (same name and namespace), plus `canary` at `weight` percent when a canary is in progress.

    Standard (raw) mode: `spec.canary[]` holds the canary predictor with its `trafficPercent`;
    both predictors are named (`v<version>`), as KServe requires for a canary. The canary gets at
    most one replica floor and no autoscaling fields (KServe's rules), so a GPU canary needs one
    GPU, not a copy of the stable fleet. Knative mode (`deploymentMode: Knative`): the predictor
    is the canary's spec with `canaryTrafficPercent`; KServe keeps the previous rolled-out
    revision for the rest.
    """
    meta = md["metadata"]
    p = spec.predictor
    knative = p.deployment_mode == "Knative"
    shown = canary if (canary is not None and knative) else served
    predictor: dict = _placement(spec, {"minReplicas": p.min_replicas, "maxReplicas": p.max_replicas,
                                        "model": _predictor_model(spec, shown, runtime)})
    isvc_spec: dict = {"predictor": predictor}
    annotations = {ANNOTATION_MODEL: f"models:/{spec.model.name}/{served.version}", ANNOTATION_SHA: served.sha256}
    if canary is not None:
        annotations[ANNOTATION_CANARY] = f"models:/{spec.model.name}/{canary.version}"
        if knative:
            predictor["canaryTrafficPercent"] = weight
        else:
            predictor["name"] = predictor_name(served.version)
            isvc_spec["canary"] = [{"trafficPercent": weight, "predictor": _placement(spec, {
                "name": predictor_name(canary.version),
                "minReplicas": min(p.min_replicas, 1),
                # KServe's canary list types `model` as a container: it needs a name
                "model": {"name": "kserve-container", **_predictor_model(spec, canary, runtime)}})}]
    if knative:
        annotations[ANNOTATION_DEPLOYMENT_MODE] = "Knative"
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {**MANAGED_BY, LABEL_DEPLOYMENT: meta["name"],
                       LABEL_VERSION: _label_value(served.version)},
            "annotations": annotations,
            "ownerReferences": [owner_reference(md)],
        },
        "spec": isvc_spec,
    }


def knative_rollback_first_step(observed: dict, desired: dict) -> dict | None:
    """Knative mode, a canary rolled back: first only `canaryTrafficPercent: 0` (KServe sends all
    traffic back to the previous rolled-out revision at once, no new revision), and the stable
    spec is written back on the next pass. None when this is not that moment."""
    if (desired["metadata"].get("annotations") or {}).get(ANNOTATION_DEPLOYMENT_MODE) != "Knative":
        return None
    seen = observed.get("spec", {}).get("predictor", {})
    want = desired["spec"]["predictor"]
    if "canaryTrafficPercent" in want or not seen.get("canaryTrafficPercent"):
        return None
    if seen.get("model", {}).get("storageUri") == want["model"]["storageUri"]:
        return None  # a promotion: the canary's spec stays, the field goes
    return {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


def job_name(md_name: str, version: str, options: str) -> str:
    """Deterministic (so reconciles find it again) and within the 63-char label limit."""
    digest = hashlib.sha256(f"{md_name}/{version}/{options}".encode()).hexdigest()[:8]
    prefix = md_name[: 63 - len(f"-convert-v{version}-{digest}")].rstrip("-.")
    return f"{prefix}-convert-v{version}-{digest}"


def conversion_args(spec: DeploymentSpec, version: str, tracking_uri: str) -> list[str]:
    """`modelops convert` arguments; tolerances only when the spec sets them."""
    c = spec.conversion
    args = ["convert", f"models:/{spec.model.name}/{version}", "--tracking-uri", tracking_uri,
            "--output", "/tmp/out", "--register", "--precision", c.precision, "--opset", str(c.opset)]
    if c.rtol is not None:
        args += ["--rtol", repr(c.rtol)]
    if c.atol is not None:
        args += ["--atol", repr(c.atol)]
    return args


def build_conversion_job(md: dict, spec: DeploymentSpec, version: str, *, tracking_uri: str,
                         image: str, service_account: str | None = None,
                         deadline_seconds: int = 3600, resources: dict | None = None) -> dict:
    """A Job converting one model version: restricted pod security, no API token, no retries.

    Unpickling a model runs its code, so this happens in a throwaway pod that can reach the
    registry (credentials from `spec.registry.credentialsSecret`) and nothing in the cluster API.
    """
    meta = md["metadata"]
    options = spec.conversion.fingerprint
    name = job_name(meta["name"], version, options)
    labels = {**MANAGED_BY, LABEL_DEPLOYMENT: meta["name"], LABEL_VERSION: _label_value(version),
              LABEL_COMPONENT: "converter"}
    container: dict = {
        "name": "convert",
        "image": image,
        "command": ["modelops"],
        "args": conversion_args(spec, version, tracking_uri),
        "env": [{"name": "HOME", "value": "/tmp"},
                {"name": "MLFLOW_TRACKING_URI", "value": tracking_uri}],
        "resources": resources or {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        # The last log lines become the failure message the operator reports.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.registry.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.registry.credentials_secret}}]
    pod_spec: dict = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}}],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {ANNOTATION_MODEL: f"models:/{spec.model.name}/{version}",
                            "modelops.dev/conversion-options": options,
                            ANNOTATION_GENERATION: str(meta.get("generation", 1))},
            "ownerReferences": [owner_reference(md)],
        },
        "spec": {
            # A failed conversion (parity!) fails the same way again: no pod retries.
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds,
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def build_cluster_serving_runtime(image: str = PREDICTOR_IMAGE, name: str = DEFAULT_RUNTIME) -> dict:
    """The ClusterServingRuntime running `modelops serve` for `modelFormat: onnx`."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "modelops",
                                              "app.kubernetes.io/component": "predictor"}},
        "spec": {
            "supportedModelFormats": [{"name": "onnx", "version": "1", "autoSelect": True,
                                       "priority": 2}],
            "protocolVersions": ["v2", "grpc-v2"],
            "containers": [{
                "name": "kserve-container",
                "image": image,
                "command": ["modelops"],
                "args": ["serve", "/mnt/models", "--name", "{{.Name}}",
                         "--http-port", "8080", "--grpc-port", "8081"],
                "ports": [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                              "limits": {"cpu": "4", "memory": "8Gi"}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080},
                                   "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": 8080},
                                  "periodSeconds": 10, "failureThreshold": 6},
            }],
        },
    }
