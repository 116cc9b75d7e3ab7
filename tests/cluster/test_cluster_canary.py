"""Canary rollouts by the operator on a real kube-apiserver, judged by a real Prometheus scraping
real `modelops serve` predictors (one per version), with a real MLflow as registry and history.

The test plays KServe's part: it serves each version the InferenceService names (downloading the
model from its storageUri, here MLflow's artifact proxy), splits the traffic by the weights the
InferenceService says, and marks it ready. A good version is promoted after exactly len(steps)
intervals; a version that fails at run time on some inputs is rolled back, in both KServe modes.
The operator is killed and restarted in the middle of a canary: it resumes at the same step.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bad_model import poisoned_copy
from webhook_receiver import Receiver
from modelops.local.ports import free_port
from modelops.local.processes import spawn, stop

from .conftest import MODELOPS, eventually, md_body

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

INTERVAL = 4  # seconds per canary step (short on purpose)
STEPS = (10, 50, 100)
# Share of requests the bad version fails on. With MIN_REQUESTS per analysis, the chance that the
# bad version passes one analysis by luck (every sampled request clean) is at most
# (1 - POISONED) ** MIN_REQUESTS = 0.4%; with 30% and 5 it was 17%, and a loaded machine (fewer
# requests per window) met it.
POISONED = 0.5
MIN_REQUESTS = 8


class Fleet:
    """One `modelops serve` per version, named like KServe would (the InferenceService's name)."""

    def __init__(self, work: Path, prometheus, name: str, namespace: str, extra=lambda version: ()):
        self.work, self.prometheus, self.name, self.namespace = work, prometheus, name, namespace
        self.extra = extra  # more `modelops serve` arguments for a version (what its Pod would mount)
        self.servers: dict[str, tuple[str, object]] = {}  # version -> (url, process)

    def serve(self, version: str, storage_uri: str) -> str:
        if version in self.servers:
            return self.servers[version][0]
        d = self.work / f"v{version}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.onnx").write_bytes(httpx.get(storage_uri, timeout=60).content)  # the storage initializer
        port = free_port()
        proc = spawn([MODELOPS, "serve", str(d), "--name", self.name, "--model-version", version,
                      "--http-port", str(port), "--grpc-port", "0", "--max-batch-size", "1", *self.extra(version)],
                     self.work / f"serve-{version}.log")
        url = f"http://127.0.0.1:{port}"
        try:  # a predictor's start (imports, session) took over 60 s once on a loaded 2-core machine
            eventually(lambda: _ok(f"{url}/v2/health/ready"), timeout=180, what=f"predictor v{version}")
        except AssertionError:
            stop(proc)  # not left running beside the next try's process
            raise
        self.prometheus.add_target(f"127.0.0.1:{port}", namespace=self.namespace)
        self.prometheus.wait_for_target(f"127.0.0.1:{port}")
        self.servers[version] = (url, proc)
        return url

    def close(self) -> None:
        for _, proc in self.servers.values():
            stop(proc)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class KServe:
    """KServe's part: serve what the InferenceService names, split traffic by its weights."""

    def __init__(self, cluster, fleet: Fleet, ns: str, name: str, mode: str):
        self.cluster, self.fleet, self.ns, self.name, self.mode = cluster, fleet, ns, name, mode
        self.codes: collections.Counter = collections.Counter()
        self.by_version: collections.Counter = collections.Counter()
        self.routes: list[tuple[str, str, int]] = []  # (version, url, percent)
        self.done = threading.Event()
        self.rng = random.Random(7)
        self.thread = threading.Thread(target=self._traffic, daemon=True)
        self.seen_generation = None
        self.rolled_out: tuple[str, str] | None = None
        self.written: list[tuple[str, int | None]] = []
        self.watcher = None

    def reconcile(self) -> None:
        """Read the InferenceService, serve its versions, set the routes, report it ready."""
        isvc = self.cluster.get("inferenceservice", self.ns, self.name)
        if isvc is None:
            return
        pred = isvc["spec"]["predictor"]
        model = pred["model"]
        version = _env(model, "MODELOPS_MODEL_VERSION")
        routes = []
        more: dict = {}
        if self.mode == "Standard":
            canary = (isvc["spec"].get("canary") or [None])[0]
            weight = canary["trafficPercent"] if canary else 0
            routes.append((version, self.fleet.serve(version, model["storageUri"]), 100 - weight))
            if canary:
                cm = canary["predictor"]["model"]
                cv = _env(cm, "MODELOPS_MODEL_VERSION")
                routes.append((cv, self.fleet.serve(cv, cm["storageUri"]), weight))
                more["canaryStatuses"] = [{"name": canary["predictor"]["name"], "ready": True,
                                           "trafficPercent": weight}]
        else:  # Knative: the predictor is the newest revision; the last rolled-out one keeps the rest
            weight = pred.get("canaryTrafficPercent")
            url = self.fleet.serve(version, model["storageUri"])
            if weight is None or self.rolled_out is None or self.rolled_out[0] == version:
                routes = [(version, url, 100)]
                self.rolled_out = (version, url)
            else:
                routes = [(version, url, weight), (*self.rolled_out, 100 - weight)]
            revision = f"{self.name}-predictor-v{version}"
            more["components"] = {"predictor": {"latestCreatedRevision": revision,
                                                "latestReadyRevision": revision}}
        self.routes = routes
        gen = isvc["metadata"]["generation"]
        if gen != self.seen_generation:
            self.cluster.mark_isvc_ready(self.ns, self.name, **more)
            self.seen_generation = gen

    def _traffic(self) -> None:
        client = httpx.Client(timeout=10)
        while not self.done.is_set():
            routes = [r for r in self.routes if r[2] > 0]
            if not routes:
                time.sleep(0.05)
                continue
            version, url, _ = self.rng.choices(routes, weights=[r[2] for r in routes])[0]
            x = np.full((1, 16), 0.1, np.float32)
            if self.rng.random() < POISONED:
                x[0, 0] = 60.0  # the bad version breaks on these
            body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                "data": x.ravel().tolist()}]}
            try:
                code = client.post(f"{url}/v2/models/{self.fleet.name}/infer", json=body).status_code
            except httpx.HTTPError:
                code = 0
            self.codes[code] += 1
            self.by_version[version] += 1
            time.sleep(0.01)

    def start(self):
        self.thread.start()
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self) -> None:
        """Every version of the InferenceService's predictor as written: (version, canaryTrafficPercent)."""
        from kubernetes import client, config, watch

        cfg = client.Configuration()
        config.load_kube_config(config_file=self.cluster.kubeconfig, client_configuration=cfg, persist_config=False)
        api = client.CustomObjectsApi(client.ApiClient(cfg))
        self.watcher = watch.Watch()
        try:
            for ev in self.watcher.stream(api.list_namespaced_custom_object, "serving.kserve.io", "v1beta1",
                                          self.ns, "inferenceservices", timeout_seconds=600):
                pred = ev["object"]["spec"]["predictor"]
                seen = (_env(pred["model"], "MODELOPS_MODEL_VERSION"), pred.get("canaryTrafficPercent"))
                if not self.written or self.written[-1] != seen:
                    self.written.append(seen)
        except Exception:  # stopped
            pass

    def stop(self):
        if self.watcher is not None:
            self.watcher.stop()
        self.done.set()
        self.thread.join(5)


def _env(model: dict, key: str) -> str:
    return next(e["value"] for e in model.get("env", []) if e["name"] == key)


def register_bad_version(registered, work: Path) -> str:
    """v3: the good v2's ONNX plus a guard that fails at run time when input[:, 0] > 50, logged to
    MLflow as an `onnx` model (it passes the parity gate: the guard is silent on the samples)."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    client = registered["client"]
    tags = client.get_model_version(registered["name"], registered["v2"]).tags
    uri = tags["modelops.onnx.uri"]
    src = work / "v2-onnx"
    src.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(src))
    model_file = next(src.rglob("model.onnx"))
    bad = poisoned_copy(model_file, work / "v3-onnx")
    x = np.zeros((2, 16), np.float32)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onnx.load(str(bad / "model.onnx")), name="model",
                                     registered_model_name=registered["name"],
                                     signature=infer_signature(x, np.zeros((2, 3), np.float32)))
    return str(info.registered_model_version)


def events(cluster, ns, name) -> list[str]:
    return [e["reason"] for e in sorted(cluster.events(ns, name), key=lambda e: e.get("firstTimestamp") or "")]


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_canary_promotes_a_good_version_and_rolls_back_a_bad_one(
        mode, cluster, namespace, start_operator, registered, prometheus, tmp_path, mlflow_server):
    ns, name = namespace, "canary"
    client = registered["client"]
    alias = f"champion-{mode.lower()}"
    client.set_registered_model_alias(registered["name"], alias, registered["v1"])
    fleet = Fleet(tmp_path, prometheus, name, ns)
    metrics_port = free_port()
    args = ["--prometheus-url", prometheus.url, "--rollout-tick", "1",
            "--metrics-address", f"127.0.0.1:{metrics_port}"]
    op = start_operator(ns, cluster.kubeconfig, *args)
    receiver = Receiver(fail_first=2)  # refuses the first two attempts of every delivery
    cluster.kubectl("-n", ns, "create", "secret", "generic", "hooks", f"--from-literal=hmac=s3cret-{mode}")
    cluster.apply(md_body(name, {"name": registered["name"], "alias": alias},
                          predictor={"deploymentMode": mode},
                          hooks={"webhooks": [{"name": "audit", "url": receiver.url,
                                               "secretRef": {"name": "hooks", "key": "hmac"}}]},
                          rollout={"strategy": "canary", "steps": list(STEPS), "interval": f"{INTERVAL}s",
                                   "promoteAlias": f"production-{mode.lower()}",
                                   "analysis": {"minRequests": MIN_REQUESTS, "failureLimit": 1, "inconclusiveLimit": 4,
                                                "successRate": {"min": 0.95}}}), "-n", ns)
    kserve = KServe(cluster, fleet, ns, name, mode)
    try:
        # first deployment: straight to 100%
        eventually(lambda: cluster.get("inferenceservice", ns, name), timeout=120, what="InferenceService")
        kserve.reconcile()
        kserve.start()
        eventually(lambda: cluster.status(ns, name).get("phase") == "Ready", what="v1 Ready")

        # a good v2: canary 50% -> 100% -> promoted, after exactly len(steps) intervals
        client.set_registered_model_alias(registered["name"], alias, registered["v2"])
        started = None

        def canary_weight():
            kserve.reconcile()
            return (cluster.status(ns, name).get("canary") or {}).get("weight")

        eventually(lambda: canary_weight() == STEPS[0], timeout=120, what=f"canary v2 at {STEPS[0]}%")
        started = time.monotonic()
        state = cluster.status(ns, name)
        assert state["phase"] == "Progressing" and state["canary"]["version"] == registered["v2"]
        assert cluster.condition(ns, name, "Progressing")["status"] == "True"

        restarts = 0
        if mode == "Standard":
            # kill the operator at each step of the canary and restart it: it resumes at that step
            for weight in STEPS[:-1]:
                eventually(lambda: canary_weight() == weight, timeout=60, what=f"canary at {weight}%")
                before = cluster.status(ns, name)["canary"]
                op.stop()
                after = cluster.status(ns, name)["canary"]
                # A pass in flight may finish while the operator stops (a step that was due): the
                # status moves forward or not at all, never back; the new process resumes there.
                assert (after["step"], after["weight"]) >= (before["step"], before["weight"])
                assert after["step"] <= before["step"] + 1
                op = start_operator(ns, cluster.kubeconfig, *args)
                resumed = eventually(lambda: cluster.status(ns, name)["canary"], what="status after restart")
                assert (resumed.get("step", len(STEPS)), resumed.get("weight", 100)) >= \
                    (after["step"], after["weight"]) or resumed["phase"] == "Promoted"
                restarts += 1

        def promoted():
            kserve.reconcile()
            return cluster.status(ns, name).get("stable", {}).get("version") == registered["v2"] and \
                not cluster.status(ns, name).get("canaryModel")

        eventually(promoted, timeout=60, what="v2 promoted")
        took = time.monotonic() - started
        if not restarts:  # no step skips its interval; the upper bound leaves room for a loaded CI machine
            assert (len(STEPS) - 0.5) * INTERVAL <= took <= (len(STEPS) + 6) * INTERVAL, took
        st = cluster.status(ns, name)["canary"]
        assert st["phase"] == "Promoted" and st["analysis"]["outcome"] == "Passed"
        isvc = cluster.get("inferenceservice", ns, name)
        assert "canary" not in isvc["spec"] and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
        assert _env(isvc["spec"]["predictor"]["model"], "MODELOPS_MODEL_VERSION") == registered["v2"]
        assert events(cluster, ns, name).count("Promoted") == 1
        assert {"CanaryStarted", "CanaryStepAdvanced", "Promoted"} <= set(events(cluster, ns, name))
        mv = client.get_model_version(registered["name"], registered["v2"])
        assert mv.tags[f"modelops.deployment.{ns}.{name}"].startswith("promoted")
        assert client.get_model_version_by_alias(registered["name"], f"production-{mode.lower()}").version == \
            registered["v2"]

        # a bad v3 (500 on inputs > 50): rolled back within failureLimit intervals, v2 keeps serving
        v3 = register_bad_version(registered, tmp_path)
        client.set_registered_model_alias(registered["name"], alias, v3)
        eventually(lambda: (canary_weight() or 0) > 0, timeout=120, what="canary v3")
        started = time.monotonic()

        def rolled_back():
            kserve.reconcile()
            return cluster.status(ns, name).get("phase") == "RolledBack"

        eventually(rolled_back, timeout=60, what="v3 rolled back")
        # one failed analysis (failureLimit 1), not the inconclusive limit (the check below says
        # which); +5 intervals of slack for Prometheus' scrape and the operator's tick on a loaded
        # 2-core machine
        assert time.monotonic() - started <= (1 + 5) * INTERVAL
        st = cluster.status(ns, name)
        assert st["stable"]["version"] == registered["v2"] and st["canary"]["rolledBack"]["version"] == v3
        assert st["canary"]["rolledBack"]["check"] == "successRate"
        rb = cluster.condition(ns, name, "RolledBack")
        assert rb["status"] == "True" and "successRate" in rb["message"]
        def stable_spec_back():
            isvc = cluster.get("inferenceservice", ns, name)
            pred = isvc["spec"]["predictor"]
            return "canary" not in isvc["spec"] and "canaryTrafficPercent" not in pred and \
                _env(pred["model"], "MODELOPS_MODEL_VERSION") == registered["v2"]

        eventually(stable_spec_back, timeout=30, what="the stable spec back")
        if mode == "Knative":  # rollback: traffic to 0 first, then the stable spec back
            i = kserve.written.index((v3, 0))
            assert kserve.written[i + 1:] == [(registered["v2"], None)], kserve.written
        assert "RolledBack" in events(cluster, ns, name)
        assert client.get_model_version(registered["name"], v3).tags[
            f"modelops.deployment.{ns}.{name}"].startswith("rolled back")
        assert client.get_model_version_by_alias(registered["name"], f"production-{mode.lower()}").version == \
            registered["v2"]
        assert kserve.codes[500] > 0 and kserve.by_version[v3] > 0  # the bad version did fail for real

        # the webhook got every transition once, in order, signed, after two refused attempts each
        want = ["Started"] + ["StepAdvanced"] * (len(STEPS) - 1) + ["Promoted", "Started", "Failed", "RolledBack"]
        eventually(lambda: len(receiver.accepted()) >= len(want), timeout=60, what="webhook deliveries")
        time.sleep(2)
        assert [b["event"] for b in receiver.bodies()] == want, receiver.bodies()
        seqs = [b["seq"] for b in receiver.bodies()]
        assert seqs == sorted(set(seqs))
        assert receiver.signed(f"s3cret-{mode}".encode())
        assert all(n == 3 for n in receiver.tries.values()), receiver.tries
        assert not (cluster.status(ns, name)["canary"].get("outbox"))  # all acknowledged

        # the operator's own metrics (this process took over mid-canary in Standard mode)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'modelops_operator_rollouts_total{result="promoted"} 1.0' in text
        assert 'modelops_operator_rollouts_total{result="rolled_back"} 1.0' in text
        assert f'modelops_operator_canary_weight{{name="{name}",namespace="{ns}"}} 0.0' in text
        assert 'modelops_operator_analysis_checks_total{check="successRate",outcome="Failed"}' in text
        assert 'modelops_operator_rollout_seconds_count{result="promoted"} 1.0' in text
        assert op.alive()
    finally:
        receiver.close()
        kserve.stop()
        fleet.close()
        client.set_registered_model_alias(registered["name"], "champion", registered["v1"])
