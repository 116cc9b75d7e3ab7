"""The operator judges the model, not only the server, on a real kube-apiserver (issue 16): the
performance gate's load-test Job and the shadow phase's mirror, with real `modelops serve`
predictors, a real Prometheus scraping them and a real MLflow, in both KServe modes.

v1 serves; v2 (v1's weights, registered again) passes the gate, the shadow phase and the steps
and is promoted; v3 (outputs swapped: answers 200 with wrong numbers) is rolled back during shadow
and **no client request is answered by it** (counted at the client, by the answers'
`model_version`); v4 (the same answers, far slower) fails the gate with weight 0 throughout.

The test plays KServe (test_cluster_canary.KServe: one predictor per version the
InferenceService names, the traffic split it says), the kubelet and the cluster DNS for what the
operator creates: it projects the mirror ConfigMap into the file each predictor's
`MODELOPS_SHADOW_CONFIG` names (a Service's DNS name resolved to the predictor its selector
picks), and runs each gate Job's own command line (`modelops loadtest ...`), reporting its Pod as
exited with the termination message; the real Job controller completes the Job. The operator runs
as the ServiceAccount of the shipped RBAC (manifests/install/rbac.yaml).
"""

from __future__ import annotations

import collections
import json
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from modelops.demo.models import register_slow_mlp, register_swapped_mlp, register_torch_mlp
from modelops.local.ports import free_port

from .conftest import MODELOPS, eventually, md_body
from .test_cluster_canary import Fleet, KServe, _env
from .test_cluster_operator import install_rbac

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GATE = {"concurrency": 2, "duration": "2s", "minThroughputRatio": 0.3}
SHADOW = {"percent": 100, "minRequests": 15, "maxDuration": "90s"}
STEPS = [50, 100]


@pytest.fixture(scope="module")
def versions(mlflow_server):
    """v1, v2 (v1's weights again), v3 (swapped outputs), v4 (slow); the same for both modes (the
    second mode finds the conversions published)."""
    from mlflow.tracking import MlflowClient

    name = f"judged-{uuid.uuid4().hex[:6]}"
    out = {"name": name, "client": MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)}
    out["v1"] = register_torch_mlp(mlflow_server.url, name, seed=0)
    out["v2"] = register_torch_mlp(mlflow_server.url, name, seed=0)
    # ONNX graphs edited (the demo's): converted in seconds, not the ~25 s of exporting SlowMLP
    out["v3"] = register_swapped_mlp(mlflow_server.url, name, seed=0)
    out["v4"] = register_slow_mlp(mlflow_server.url, name, seed=0)
    return out


class Kubelet:
    """The kubelet's and the cluster DNS's part for the judging objects, run in the background."""

    def __init__(self, cluster, kserve: KServe, ns: str, name: str, work: Path):
        self.cluster, self.kserve, self.ns, self.name = cluster, kserve, ns, name
        self.shadow_dir = work / "shadow"
        self.shadow_dir.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.jobs: dict[str, dict] = {}  # gate Job name -> its result document
        self.mirror_seen: list[dict] = []  # every mirror config projected (resolved)
        self.done = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.closed_port = free_port()

    def resolve(self, url: str) -> str:
        """`http://<service>.<ns>.svc:8080` -> the predictor its selector picks."""
        host = urlsplit(url).hostname or ""
        service, ns, *_ = host.split(".")
        svc = self.cluster.get("service", ns, service)
        assert svc is not None, f"no Service {ns}/{service} behind {url}"
        version = svc["spec"]["selector"]["modelops.dev/predictor-version"]
        assert svc["spec"]["selector"]["modelops.dev/deployment"] == self.name
        if version not in self.kserve.fleet.servers:  # a Service without endpoints (yet): refused
            return f"http://127.0.0.1:{self.closed_port}"
        return self.kserve.fleet.servers[version][0]

    def _project(self) -> None:
        cm = self.cluster.get("configmap", self.ns, f"{self.name}-shadow")
        data = (cm or {}).get("data") or {}
        for key, text in data.items():
            doc = json.loads(text)
            doc["candidate"]["url"] = self.resolve(doc["candidate"]["url"])
            path = self.shadow_dir / key
            resolved = json.dumps(doc, sort_keys=True)
            if not path.exists() or path.read_text() != resolved:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(resolved)
                tmp.replace(path)
                self.mirror_seen.append(doc)
        for path in self.shadow_dir.glob("*.json"):
            if path.name not in data:
                path.unlink()

    def _gate_jobs(self) -> None:
        for job in self.cluster.list("jobs", self.ns, "modelops.dev/component=loadtest"):
            job_name = job["metadata"]["name"]
            if job_name in self.jobs:
                continue
            pod = job["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            args = list(pod["containers"][0]["args"])
            assert args[0] == "loadtest" and args[-2:] == ["--termination-log", "/dev/termination-log"]
            log = self.work / f"{job_name}.termination-log"
            args = [self.resolve(a) if a.startswith("http://") else a for a in args[:-1]] + [str(log)]
            run = subprocess.run([MODELOPS, *args], capture_output=True, text=True, timeout=120)
            message = log.read_text() if log.exists() else run.stderr[-2000:]
            self.jobs[job_name] = json.loads(message) if log.exists() else {"stderr": message}
            self.cluster.finish_job_pod(self.ns, job_name, run.returncode, message)

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                self.kserve.reconcile()
                self._project()
                self._gate_jobs()
            except Exception as exc:  # reported by the test, never swallowed
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.3)

    def start(self) -> "Kubelet":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


class Clients:
    """Client traffic on the routes KServe serves; answers counted by the version that gave them."""

    def __init__(self, kserve: KServe, name: str):
        self.kserve, self.name = kserve, name
        self.answered: collections.Counter = collections.Counter()  # model_version of 200 answers
        self.codes: collections.Counter = collections.Counter()
        self.max_weight: collections.Counter = collections.Counter()  # the most traffic a version got
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.rng = np.random.default_rng(5)

    def _run(self) -> None:
        import random

        pick = random.Random(11)
        with httpx.Client(timeout=10) as http:
            while not self.done.is_set():
                routes = [r for r in self.kserve.routes if r[2] > 0]
                for version, _, weight in routes:
                    self.max_weight[version] = max(self.max_weight[version], weight)
                if not routes:
                    time.sleep(0.05)
                    continue
                _, url, _ = pick.choices(routes, weights=[r[2] for r in routes])[0]
                x = self.rng.normal(size=(1, 16)).astype(np.float32)
                body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
                try:
                    r = http.post(f"{url}/v2/models/{self.name}/infer", json=body)
                    self.codes[r.status_code] += 1
                    if r.status_code == 200:
                        self.answered[r.json()["model_version"]] += 1
                except httpx.HTTPError:
                    self.codes[0] += 1
                time.sleep(0.01)

    def start(self) -> "Clients":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def report(client, name: str, version: str, key: str, tmp_path: Path) -> dict:
    """The rollout report the operator logged into `version`'s run, read back through MLflow."""
    uri = eventually(lambda: client.get_model_version(name, version).tags.get(f"{key}.report"), timeout=30,
                     what=f"the report tag of v{version}")
    run_id = client.get_model_version(name, version).run_id
    assert uri.startswith(client.get_run(run_id).info.artifact_uri) and uri.endswith("/report.json"), uri
    folder = uri[len(client.get_run(run_id).info.artifact_uri) + 1:].rsplit("/", 1)[0]
    assert sorted(f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, folder)) == \
        ["report.json", "report.png"]
    local = Path(client.download_artifacts(run_id, folder, str(tmp_path / f"report-v{version}")))
    assert (local / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    return json.loads((local / "report.json").read_text())


def history(client, name: str, version: str, key: str) -> list[dict]:
    return json.loads(client.get_model_version(name, version).tags.get(f"{key}.history") or "[]")


def tag(client, name: str, version: str, key: str) -> dict:
    return eventually(lambda: json.loads(client.get_model_version(name, version).tags.get(key) or "null"),
                      timeout=30, what=f"the tag {key} of v{version}")


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_gate_and_shadow_on_kserve(mode, cluster, namespace, start_operator, versions, prometheus, tmp_path):
    ns, name = namespace, "judged"
    client, model = versions["client"], versions["name"]
    alias = f"champion-{mode.lower()}"
    key = f"modelops.deployment.{ns}.{name}"
    client.set_registered_model_alias(model, alias, versions["v1"])
    install_rbac(cluster)
    sa_kubeconfig = cluster.token_kubeconfig(tmp_path / "sa.kubeconfig", "modelops-operator", "modelops-system")
    shadow_dir = tmp_path / "shadow"
    fleet = Fleet(tmp_path, prometheus, name, ns,
                  extra=lambda version: ("--shadow-config", str(shadow_dir / f"v{version}.json")))
    op = start_operator(ns, sa_kubeconfig, "--prometheus-url", prometheus.url, "--rollout-tick", "1",
                        "--metrics-address", f"127.0.0.1:{free_port()}")
    cluster.apply(md_body(name, {"name": model, "alias": alias}, predictor={"deploymentMode": mode},
                          rollout={"strategy": "canary", "steps": STEPS, "interval": "3s",
                                   "performanceGate": GATE, "shadow": SHADOW,
                                   "analysis": {"minRequests": 5, "failureLimit": 1, "inconclusiveLimit": 6,
                                                "successRate": {"min": 0.95}}}), "-n", ns)
    kserve = KServe(cluster, fleet, ns, name, mode)
    kubelet = Kubelet(cluster, kserve, ns, name, tmp_path).start()
    clients = Clients(kserve, name).start()

    def status() -> dict:
        return cluster.status(ns, name)

    try:
        eventually(lambda: status().get("phase") == "Ready", timeout=180, what="v1 Ready")
        isvc = cluster.get("inferenceservice", ns, name)
        pred = isvc["spec"]["predictor"]
        assert pred["labels"]["modelops.dev/predictor-version"] == versions["v1"]
        assert _env(pred["model"], "MODELOPS_SHADOW_CONFIG") == f"/etc/modelops/shadow/v{versions['v1']}.json"
        assert pred["volumes"] == [{"name": "modelops-shadow", "configMap": {"name": f"{name}-shadow",
                                                                             "optional": True}}]

        # v2: gate passed, shadow passed (the stable mirrored to it), steps, promoted
        client.set_registered_model_alias(model, alias, versions["v2"])
        generations = set()

        def in_shadow():
            # the InferenceService first: the status is written before it, so a generation read
            # before a status that says Shadow is one the shadow phase saw (or the gate's, the same)
            generation = cluster.get("inferenceservice", ns, name)["metadata"]["generation"]
            st = status()
            if (st.get("canary") or {}).get("phase") == "Shadow":
                generations.add(generation)
            return st

        eventually(lambda: (in_shadow().get("stable") or {}).get("version") == versions["v2"]
                   and status().get("phase") == "Ready", timeout=300, what="v2 promoted")
        gate = tag(client, model, versions["v2"], f"{key}.performanceGate")
        assert gate["outcome"] == "Passed" and gate["errors"] == 0 and gate["requests"] > 0, gate
        shadow = tag(client, model, versions["v2"], f"{key}.shadow")
        assert shadow["outcome"] == "Passed" and shadow["comparisons"] >= SHADOW["minRequests"], shadow
        assert shadow["agreement"] == 1.0
        # the gate Job of the attempt that passed measured the stable v1 and then the candidate v2
        # (their Services' selectors); an earlier attempt (a Job run before v2's predictor answered,
        # on a loaded machine) may have been inconclusive, and then the report says so
        doc = report(client, model, versions["v2"], key, tmp_path)
        attempts = {j["attempt"]: j["outcome"] for j in doc["steps"] if j["phase"] == "performanceGate"}
        passed = max(attempts)
        assert attempts[passed] == "Passed" and all(attempts[a] == "Inconclusive" for a in attempts
                                                    if a != passed), (attempts, kubelet.jobs)
        jobs = {int(j.rsplit("-", 1)[1]): d for j, d in kubelet.jobs.items() if f"-gate-v{versions['v2']}-" in j}
        assert sorted(jobs) == sorted(attempts), (attempts, kubelet.jobs)
        job_doc = jobs[passed]
        assert job_doc["stable"]["url"] == fleet.servers[versions["v1"]][0]
        assert job_doc["candidate"]["url"] == fleet.servers[versions["v2"]][0]
        # the mirror went from v1 to v2's Service; starting and stopping it wrote only the ConfigMap
        assert any(m["candidate"]["version"] == versions["v2"] for m in kubelet.mirror_seen)
        assert len(generations) == 1, generations  # the InferenceService did not change during shadow
        eventually(lambda: not (cluster.get("configmap", ns, f"{name}-shadow").get("data") or {}),
                   what="the mirror off after the promotion")
        events = [e["reason"] for e in cluster.events(ns, name)]
        assert {"PerformanceGatePassed", "ShadowStarted", "ShadowPassed", "Promoted"} <= set(events), events
        assert doc["ending"]["outcome"] == "Promoted" and doc["version"] == versions["v2"], doc["ending"]
        assert {"performanceGate", "shadow", "step"} <= {j["phase"] for j in doc["steps"]}

        # v3: answers 200 with swapped outputs: rolled back in shadow, never answered a client
        client.set_registered_model_alias(model, alias, versions["v3"])
        st = eventually(lambda: ((status().get("canary") or {}).get("rolledBack") or {}).get("version")
                        == versions["v3"] and status(), timeout=300, what="v3 rolled back")
        rb = st["canary"]["rolledBack"]
        assert rb["reason"] == "ShadowFailed" and rb["check"] == "agreement", rb
        assert st["stable"]["version"] == versions["v2"]
        shadow = tag(client, model, versions["v3"], f"{key}.shadow")
        assert shadow["outcome"] == "Failed" and shadow["agreement"] < 0.99, shadow
        assert "ShadowFailed" in [e["reason"] for e in cluster.events(ns, name)]
        doc = report(client, model, versions["v3"], key, tmp_path)
        assert doc["ending"]["outcome"] == "RolledBack" and doc["ending"]["check"] == "agreement", doc["ending"]

        # v4: far slower: stopped by the gate, weight 0 throughout
        client.set_registered_model_alias(model, alias, versions["v4"])
        st = eventually(lambda: ((status().get("canary") or {}).get("rolledBack") or {}).get("version")
                        == versions["v4"] and status(), timeout=300, what="v4 rolled back")
        rb = st["canary"]["rolledBack"]
        assert rb["reason"] == "PerformanceGateFailed", rb
        gate = tag(client, model, versions["v4"], f"{key}.performanceGate")
        assert gate["outcome"] == "Failed" and gate["throughputRatio"] < GATE["minThroughputRatio"], gate
        assert "PerformanceGateFailed" in [e["reason"] for e in cluster.events(ns, name)]
        doc = report(client, model, versions["v4"], key, tmp_path)
        assert doc["ending"]["outcome"] == "RolledBack" and doc["ending"]["reason"] == "PerformanceGateFailed"
        assert not [h for h in history(client, model, versions["v4"], key) if h["state"].startswith("canary")
                    and h.get("weight")]
        time.sleep(1)

        # counted at the client: v3 and v4 answered nobody, v1 and v2 answered
        assert clients.answered[versions["v3"]] == 0 and clients.answered[versions["v4"]] == 0, clients.answered
        assert clients.max_weight[versions["v3"]] == 0 and clients.max_weight[versions["v4"]] == 0
        assert clients.answered[versions["v1"]] > 0 and clients.answered[versions["v2"]] > 0
        assert set(clients.codes) == {200}, clients.codes
        assert not kubelet.errors, kubelet.errors[:5]
        assert op.alive() and "Forbidden" not in op.output(), op.output()[-3000:]
    finally:
        clients.stop()
        kubelet.stop()
        fleet.close()
