"""Fixtures of the real-API-server tier: our CRD on the real kube-apiserver (../shared/k8s), a
namespace per test, the operator as its own process (`modelops operator`, out of cluster with a
KUBECONFIG), and ways to play the parts no process plays here (KServe's controller, a kubelet).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from sharedenv import REPO_ROOT

CRD_FILE = REPO_ROOT / "manifests/crds/modeldeployments.modelops.dev.yaml"
# The shipped RBAC; MODELOPS_TEST_RBAC swaps in a variant (to show each rule is needed).
RBAC_FILE = Path(os.environ.get("MODELOPS_TEST_RBAC") or REPO_ROOT / "manifests/install/rbac.yaml")
MODELOPS = str(Path(sys.executable).with_name("modelops"))
MD_API = "/apis/modelops.dev/v1alpha1"
ISVC_API = "/apis/serving.kserve.io/v1beta1"


def eventually(check, timeout: float = 60, what: str = "condition", interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Cluster:
    """kubectl and JSON helpers over one control plane and kubeconfig."""

    def __init__(self, cp):
        self.cp = cp
        self.kubeconfig = cp.kubeconfig

    def kubectl(self, *args, **kwargs):
        return self.cp.kubectl(*args, **kwargs)

    def get(self, kind: str, ns: str, name: str) -> dict | None:
        proc = self.kubectl("-n", ns, "get", kind, name, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        return json.loads(proc.stdout)

    def list(self, kind: str, ns: str, selector: str | None = None) -> list[dict]:
        args = ["-n", ns, "get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args).stdout)["items"]

    def apply(self, obj: dict | str, *extra: str) -> None:
        text = obj if isinstance(obj, str) else json.dumps(obj)
        self.kubectl("apply", *extra, "-f", "-", input=text)

    def patch(self, kind: str, ns: str, name: str, patch: dict, *, status: bool = False) -> None:
        extra = ["--subresource=status"] if status else []
        self.kubectl("-n", ns, "patch", kind, name, "--type=merge", "-p", json.dumps(patch), *extra)

    def status(self, ns: str, name: str) -> dict:
        return ((self.get("modeldeployment", ns, name) or {}).get("status")) or {}

    def condition(self, ns: str, name: str, type_: str) -> dict:
        return next((c for c in self.status(ns, name).get("conditions", []) if c["type"] == type_), {})

    def events(self, ns: str, name: str) -> list[dict]:
        return [e for e in self.list("events", ns) if e["involvedObject"].get("name") == name]

    def mark_isvc_ready(self, ns: str, name: str, url: str | None = None, **more) -> None:
        """KServe's part: the predictor serves the current generation (`more`: other status fields)."""
        isvc = self.get("inferenceservice", ns, name)
        self.patch("inferenceservice", ns, name, {"status": {
            **more,
            "url": url or f"http://{name}.{ns}.example.com",
            "observedGeneration": isvc["metadata"]["generation"],
            "conditions": [{"type": "Ready", "status": "True",
                            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}},
            status=True)

    def finish_job_pod(self, ns: str, job: str, exit_code: int = 0, message: str = "") -> None:
        """A kubelet's part: the Job's Pod ran and exited; the real Job controller then marks
        the Job Complete or Failed. `message` is the container's termination message."""
        pod = eventually(lambda: self.list("pods", ns, f"job-name={job}"), what=f"the Pod of Job {job}")[0]
        container = pod["spec"]["containers"][0]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "startedAt": now, "finishedAt": now}
        if message:
            terminated["message"] = message
        self.patch("pod", ns, pod["metadata"]["name"], {"status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                   "ready": False, "restartCount": 0, "state": {"terminated": terminated}}]}},
            status=True)

    def token_kubeconfig(self, path: Path, sa: str, ns: str) -> str:
        """A kubeconfig that authenticates as a ServiceAccount (a bound token from TokenRequest)."""
        token = self.kubectl("-n", ns, "create", "token", sa, "--duration=2h").stdout.strip()
        admin = yaml.safe_load(Path(self.kubeconfig).read_text())
        cluster = admin["clusters"][0]
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
            "current-context": sa}))
        return str(path)


@pytest.fixture(scope="session")
def cluster(control_plane) -> Cluster:
    c = Cluster(control_plane)
    # Our CRD, as a user installs it (`kubectl create`); kept for the session.
    if c.kubectl("get", "crd", "modeldeployments.modelops.dev", check=False).returncode != 0:
        c.kubectl("create", "-f", str(CRD_FILE))
    else:
        c.kubectl("replace", "-f", str(CRD_FILE))
    control_plane.wait_established("modeldeployments.modelops.dev")
    return c


@pytest.fixture
def namespace(cluster):
    ns = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


class OperatorProcess:
    """`modelops operator` as its own process; its log is kept for failures."""

    def __init__(self, args: list[str], kubeconfig: str, log: Path):
        self.log = log
        env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONUNBUFFERED": "1"}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([MODELOPS, "operator", *args], stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        from modelops.local.processes import stop

        stop(self.proc)


@pytest.fixture
def start_operator(tmp_path, mlflow_server):
    started: list[OperatorProcess] = []

    def start(ns: str, kubeconfig: str, *extra: str, conversion: str = "inprocess") -> OperatorProcess:
        op = OperatorProcess(["--namespace", ns, "--tracking-uri", mlflow_server.url,
                              "--conversion", conversion, "--resolve-interval", "1",
                              "--liveness", "", "--converter-image", "modelops-converter:test", *extra],
                             kubeconfig, tmp_path / f"operator-{len(started)}.log")
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
        if not op.alive():
            print(f"--- operator log {op.log}:\n{op.output()[-6000:]}")


def md_body(name: str, model: dict, **spec) -> dict:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": {"model": model, **spec}}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="session")
def registered(mlflow_server):
    """One torch MLP with two versions and the alias `champion` on v1 (MLflow proxies artifacts:
    `mlflow-artifacts:/` URIs, the tracking server's default)."""
    from mlflow.tracking import MlflowClient

    from modelops.demo.models import register_torch_mlp

    name = f"cl-{uuid.uuid4().hex[:6]}"
    v1 = register_torch_mlp(mlflow_server.url, name, seed=0)
    v2 = register_torch_mlp(mlflow_server.url, name, seed=1)
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    client.set_registered_model_alias(name, "champion", v1)
    return {"name": name, "v1": v1, "v2": v2, "client": client}
