"""The shadow phase and the performance gate on KServe (`spec.rollout.shadow`, `performanceGate`).

What the operator creates, all owned by the ModelDeployment (garbage-collected with it):
- on every predictor of a judged deployment (stable and canary alike, both KServe modes): the pod
  label `modelops.dev/predictor-version: <version>` (the InferenceService's own labels name only
  the stable version), and with `shadow` the optional ConfigMap `<name>-shadow` mounted read-only
  at `/etc/modelops/shadow` with `MODELOPS_SHADOW_CONFIG=/etc/modelops/shadow/v<version>.json`:
  the file the predictor polls (`modelops.serving.shadow`). Starting and stopping the mirror
  writes only the ConfigMap (the kubelet updates the mounted file in place): the stable
  predictor's Pods never restart for it. Adding `rollout.shadow` to a spec changes the
  predictors' spec once (the volume), like any spec edit;
- Services `<name>-candidate` and `<name>-stable` (port 8080), selecting the predictor Pods of the
  candidate / stable version by that label: the mirror's and the load test's target, the same in
  Standard and Knative mode (a Knative canary revision at 0% must keep a Pod: minReplicas >= 1);
- for the gate, one Job per attempt (`<name>-gate-v<version>-<attempt>`, Pod Security
  `restricted`, no service-account token, no retries) running `modelops loadtest --baseline
  <stable> <candidate> --json --termination-log /dev/termination-log`; its termination message is
  the result (`{stable, candidate}`: requests, errors, throughput_rps, p50_ms, p99_ms).
The candidate must be reachable from the stable predictor's Pods, and both from the load-test Pod:
with `spec.predictor.networkPolicy`, `access.build_network_policy` admits them; a NetworkPolicy of
your own must admit the deployment's predictor Pods and `modelops.dev/component: loadtest`.
"""

from __future__ import annotations

import json

from modelops import errors
from modelops.errors import InvalidSpec
from modelops.deployment.spec import DeploymentSpec
from modelops.rollout.actions import LoadTest, LoadTestResult

from .builders import LABEL_COMPONENT, LABEL_DEPLOYMENT, MANAGED_BY, _label_value, owner_reference
from .kube import JOBS, PODS, Kube, Resource

CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICES = Resource("", "v1", "services")
LABEL_PREDICTOR_VERSION = "modelops.dev/predictor-version"
SHADOW_VOLUME, SHADOW_DIR = "modelops-shadow", "/etc/modelops/shadow"
PORT = 8080


def judged(spec: DeploymentSpec) -> bool:
    return spec.rollout.shadow is not None or spec.rollout.performance_gate is not None


def _name(md_name: str, suffix: str) -> str:
    return f"{md_name[:63 - len(suffix)].rstrip('-.')}{suffix}"


def shadow_configmap_name(md_name: str) -> str:
    return _name(md_name, "-shadow")


def service_name(md_name: str, role: str) -> str:
    return _name(md_name, f"-{role}")


def shadow_key(version: str) -> str:
    return f"v{_label_value(version)}.json"


def service_url(md: dict, role: str) -> str:
    return f"http://{service_name(md['metadata']['name'], role)}.{md['metadata']['namespace']}.svc:{PORT}"


def check_supported(spec: DeploymentSpec, auth: str) -> None:
    """InvalidSpec naming the field when the spec judges a predictor the mirror and the load test
    cannot call yet: one that wants a bearer token (`auth: kubernetes`) or speaks HTTPS (`tls`).
    Refused up front rather than a rollout that could only end inconclusive."""
    field = "spec.rollout.shadow" if spec.rollout.shadow is not None else "spec.rollout.performanceGate"
    if not judged(spec):
        return
    if auth == "kubernetes":
        raise InvalidSpec(field, "not available yet with spec.predictor.auth: kubernetes (the mirror and the "
                                 "load test send no bearer token to the candidate)")
    if spec.predictor.tls_secret:
        raise InvalidSpec(field, "not available yet with spec.predictor.tls (the mirror and the load test "
                                 "call the predictors over plain HTTP)")


# --- the InferenceService --------------------------------------------------------------------------------
def _version_of(model: dict) -> str | None:
    return next((e["value"] for e in model.get("env") or [] if e.get("name") == "MODELOPS_MODEL_VERSION"), None)


def decorate_inference_service(isvc: dict, spec: DeploymentSpec) -> dict:
    """Label every predictor with its version and, with shadow, mount the mirror ConfigMap."""
    if not judged(spec):
        return isvc
    name = isvc["metadata"]["name"]
    for predictor in [isvc["spec"]["predictor"], *(c["predictor"] for c in isvc["spec"].get("canary") or [])]:
        model = predictor["model"]
        version = _version_of(model)
        predictor.setdefault("labels", {}).update({LABEL_DEPLOYMENT: name,
                                                   LABEL_PREDICTOR_VERSION: _label_value(version or "")})
        if spec.rollout.shadow is not None and version is not None:
            predictor.setdefault("volumes", []).append(
                {"name": SHADOW_VOLUME, "configMap": {"name": shadow_configmap_name(name), "optional": True}})
            model.setdefault("volumeMounts", []).append({"name": SHADOW_VOLUME, "mountPath": SHADOW_DIR,
                                                         "readOnly": True})
            model.setdefault("env", []).append({"name": "MODELOPS_SHADOW_CONFIG",
                                                "value": f"{SHADOW_DIR}/{shadow_key(version)}"})
    return isvc


# --- the objects ---------------------------------------------------------------------------------------------
def _meta(md: dict, name: str, component: str) -> dict:
    return {"name": name, "namespace": md["metadata"]["namespace"],
            "labels": {**MANAGED_BY, LABEL_DEPLOYMENT: md["metadata"]["name"], LABEL_COMPONENT: component},
            "ownerReferences": [owner_reference(md)]}


def build_service(md: dict, role: str, version: str) -> dict:
    """`<name>-<role>`: the predictor Pods of `version` (role: candidate | stable)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(md, service_name(md["metadata"]["name"], role), f"{role}-service"),
            "spec": {"selector": {LABEL_DEPLOYMENT: md["metadata"]["name"],
                                  LABEL_PREDICTOR_VERSION: _label_value(version)},
                     "ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]}}


def build_shadow_configmap(md: dict, files: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(md, shadow_configmap_name(md["metadata"]["name"]), "shadow"), "data": dict(files)}


def gate_job_name(md_name: str, test: LoadTest) -> str:
    """Deterministic per attempt (`LoadTest.key`): a restart finds the Job instead of starting another."""
    return _name(md_name, f"-gate-v{_label_value(test.version).lower()}-{test.attempt}")


def build_gate_job(md: dict, test: LoadTest, *, image: str, deadline_seconds: int | None = None) -> dict:
    """The load tests of one gate attempt: stable first, then the candidate, one termination message."""
    name = gate_job_name(md["metadata"]["name"], test)
    meta = _meta(md, name, "loadtest")
    meta["labels"][LABEL_PREDICTOR_VERSION] = _label_value(test.version)
    duration = f"{test.duration_seconds:g}s"
    container = {
        "name": "loadtest", "image": image, "command": ["modelops"],
        "args": ["loadtest", service_url(md, "candidate"), "--model", md["metadata"]["name"],
                 "--baseline", service_url(md, "stable"), "--concurrency", str(test.concurrency),
                 "--duration", duration, "--json", "--termination-log", "/dev/termination-log"],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {"restartPolicy": "Never", "automountServiceAccountToken": False,
           "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                               "seccompProfile": {"type": "RuntimeDefault"}},
           "containers": [container], "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 86400,
                     "activeDeadlineSeconds": deadline_seconds or int(2 * test.duration_seconds) + 300,
                     "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod}}}


def gate_result(test: LoadTest, job: dict, message: str | None) -> LoadTestResult | None:
    """What a gate Job says (None: still running); pure."""
    from .conversion import job_state

    state = job_state(job)
    if state == "Running":
        return None
    try:
        doc = json.loads(message) if message else None
    except ValueError:
        doc = None
    if state == "Complete" and isinstance(doc, dict) and isinstance(doc.get("stable"), dict) \
            and isinstance(doc.get("candidate"), dict):
        return LoadTestResult(test.version, test.attempt, stable=doc["stable"], candidate=doc["candidate"])
    name = job["metadata"]["name"]
    if isinstance(doc, dict) and doc.get("error"):
        which = "the stable's" if "candidate" not in doc else "the candidate's"
        return LoadTestResult(test.version, test.attempt,
                              error=f"load-test Job {name}: {which} test failed: {doc.get('reason')}: {doc['error']}")
    cond = next((c for c in job.get("status", {}).get("conditions", []) if c.get("type") == state), {})
    what = (message or "").strip()[-300:] or cond.get("message") or cond.get("reason") or "no termination message"
    return LoadTestResult(test.version, test.attempt, error=f"load-test Job {name} {state.lower()}: {what}")


# --- I/O -------------------------------------------------------------------------------------------------------
class Judging:
    """The KServe platform's `set_shadow` and `performance_gate` for one ModelDeployment."""

    def __init__(self, kube: Kube, md: dict, spec: DeploymentSpec, *, image: str):
        self.kube, self.md, self.spec, self.image = kube, md, spec, image
        self.ns, self.name = md["metadata"]["namespace"], md["metadata"]["name"]

    def _service(self, role: str, version: str) -> None:
        desired = build_service(self.md, role, version)
        self.kube.apply_merge(SERVICES.path(self.ns, desired["metadata"]["name"]), SERVICES.path(self.ns), desired,
                              lambda seen: None if seen["spec"].get("selector") == desired["spec"]["selector"]
                              else {"spec": {"selector": desired["spec"]["selector"]}})

    def set_shadow(self, mirror) -> None:
        files = {}
        if mirror is not None:
            self._service("candidate", mirror.candidate)
            config = mirror.to_config(service_url(self.md, "candidate"), self.name)
            files[shadow_key(mirror.stable)] = json.dumps(config, sort_keys=True)
        desired = build_shadow_configmap(self.md, files)
        path = CONFIGMAPS.path(self.ns, desired["metadata"]["name"])
        if not files and self.kube.get(path) is None:
            return  # off, and never on
        self.kube.apply_merge(path, CONFIGMAPS.path(self.ns), desired, lambda seen: _data_patch(seen, files))

    def performance_gate(self, test: LoadTest, candidate_ready: bool | None) -> LoadTestResult | None:
        if test.stable_version is None:
            raise errors.ServingError("no stable version to compare the candidate with")
        name = gate_job_name(self.name, test)
        job = self.kube.get(JOBS.path(self.ns, name))
        if job is None:
            if not candidate_ready:
                return None  # deployed at 0%, not ready yet
            self._service("stable", test.stable_version)
            self._service("candidate", test.version)
            self.kube.create(JOBS.path(self.ns), build_gate_job(self.md, test, image=self.image))
            return None
        return gate_result(test, job, self._message(name))

    def _message(self, job: str) -> str | None:
        for pod in self.kube.list(PODS.path(self.ns), label_selector=f"job-name={job}"):
            for cs in pod.get("status", {}).get("containerStatuses", []):
                msg = (cs.get("state", {}).get("terminated") or {}).get("message")
                if msg:
                    return msg.strip()
        return None


def _data_patch(seen: dict, files: dict[str, str]) -> dict | None:
    """A merge patch making the ConfigMap's data exactly `files` (removed keys set to null)."""
    data = seen.get("data") or {}
    if data == files:
        return None
    return {"data": {**{k: None for k in data if k not in files}, **files}}
