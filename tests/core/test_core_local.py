"""`modelops local up|status|down`: the whole flow on one machine, everything real.

A real MLflow server (the session's), real conversions, real `modelops serve` predictors, the real
router, and `modelops local up` as its own process, driven only through MLflow (moving the alias)
and observed through its status file, its events log, the router and MLflow. Client traffic goes
through the router the whole time; one request in five (seeded) carries an input that the bad
version (`register_guarded_mlp`) fails on at run time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from webhook_receiver import Receiver

from modelops.demo.models import GUARD_LIMIT, register_guarded_mlp, register_torch_mlp
from modelops.local.ports import free_port
from modelops.rollout.hooks import verify

PY = sys.executable
INTERVAL = 2.0  # seconds: short on purpose (a real rollout would use minutes)
STEPS = [20, 50, 100]
FAILURE_LIMIT = 2
SLACK = 2.5  # seconds a decision may come after it is due (ticks, scrapes, a loaded 2-core machine)


def manifest(name: str, model: str, interval: str = f"{INTERVAL:g}s", **rollout) -> dict:
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml-serving"},
        "spec": {
            "model": {"name": model, "alias": "champion"},
            "rollout": {"strategy": "canary", "steps": STEPS, "interval": interval,
                        "promoteAlias": "production",
                        "analysis": {"successRate": {"min": 0.99}, "p99LatencyMs": {"max": 1000},
                                     "minRequests": 10, "failureLimit": FAILURE_LIMIT,
                                     "inconclusiveLimit": 5},
                        **rollout},
        },
    }


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "modelops.cli", *args], capture_output=True, text=True, timeout=timeout)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


class LocalUp:
    """`modelops local up` as a child process (its own session); output kept in a file."""

    def __init__(self, file: Path, state: Path, tracking_uri: str, *extra: str):
        self.state = state
        self.log = state.parent / f"{state.name}-up.log"
        cmd = [PY, "-m", "modelops.cli", "local", "up", "-f", str(file), "--tracking-uri", tracking_uri,
               "--port", "0", "--grpc-port", str(free_port()), "--state-dir", str(state), "--progress", "lines",
               "--resolve-interval", "0.5", *extra]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> dict:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def supervisor(self) -> dict:
        return json.loads((self.state / "supervisor.json").read_text())

    def events(self) -> list[dict]:
        path = self.state / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def wait(self, what: str, predicate, timeout: float = 120) -> dict:
        """The status once `predicate(status)` holds (written by this process: its router's URL)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"local up exited with {self.proc.returncode} waiting for {what}:\n"
                                     f"{self.output()[-4000:]}")
            status = self.status()
            try:
                rec = self.supervisor()
            except (OSError, ValueError):
                rec = {}
            ours = rec.get("pid") == self.proc.pid and status.get("url") == rec.get("router", {}).get("url")
            if ours and predicate(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; status {self.status()}\n{self.output()[-4000:]}")

    def groups(self) -> list[int]:
        rec = self.supervisor()
        return [rec["pgid"], *[c["pgid"] for c in rec["children"].values()]]

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        if (self.state / "supervisor.json").exists():
            for pgid in self.groups():
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Client:
    """Closed-loop clients through the router, recording every answer (or failure) with its version."""

    def __init__(self, url: str, model: str, threads: int = 2):
        self.url = f"{url}/v2/models/{model}/infer"
        self.records: list[tuple[float, bool, object, str, str]] = []  # (t, poisoned, status, version, reason)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                x = rng.normal(size=(1, 16)).astype(np.float32)
                poisoned = bool(rng.random() < 0.2)
                if poisoned:
                    x[0, 0] = GUARD_LIMIT * 2
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                                    "data": x.ravel().tolist()}]}
                try:
                    r = http.post(self.url, json=body)
                    reason = r.json().get("reason", "") if r.status_code != 200 else ""
                    rec = (time.monotonic(), poisoned, r.status_code, r.headers.get("x-modelops-version", ""), reason)
                except httpx.HTTPError as exc:
                    rec = (time.monotonic(), poisoned, type(exc).__name__, "", str(exc))
                self.records.append(rec)
                time.sleep(0.005)

    def stop(self) -> list:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.records


class GrpcClient(Client):
    """The same traffic over KServe's gRPC protocol, through the router's gRPC port."""

    def __init__(self, target: str, model: str):
        self.target, self.model = target, model
        self.records = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._grpc, args=(7,), daemon=True)]
        self._threads[0].start()

    def _grpc(self, seed: int) -> None:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(self.target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                x = rng.normal(size=(1, 16)).astype(np.float32)
                poisoned = bool(rng.random() < 0.2)
                if poisoned:
                    x[0, 0] = GUARD_LIMIT * 2
                request = pb.ModelInferRequest(model_name=self.model, inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="input", datatype="FP32", shape=[1, 16],
                    contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()))])
                try:
                    _, call = stub.ModelInfer.with_call(request, timeout=30)
                    rec = (time.monotonic(), poisoned, "OK", dict(call.initial_metadata())["x-modelops-version"], "")
                except grpc.RpcError as exc:
                    meta = dict(exc.trailing_metadata() or ())
                    rec = (time.monotonic(), poisoned, exc.code().name, meta.get("x-modelops-version", ""),
                           exc.details())
                self.records.append(rec)
                time.sleep(0.01)


def since(records, t0):
    return [r for r in records if r[0] >= t0]


def assert_nothing_lost(records, bad: str | None) -> None:
    """Every request was answered by a predictor: 200, or the bad version's own run-time 500.

    (The bad version may also fail an ordinary input that its dynamic batching ran together with
    a poisoned one: a batch fails as a whole. Good versions answer everything.)
    """
    assert records
    wrong = [r for r in records if not (r[2] == 200 or (r[2] == 500 and r[3] == bad and r[4] == "InferenceFailed"))]
    assert wrong == [], f"{len(wrong)} of {len(records)} requests failed outside the bad model: {wrong[:5]}"
    assert all(r[2] == 200 for r in records if r[3] != bad)


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_model(tracking_uri, mlflow_client) -> str:
    """v1, v2: good MLPs (seeds 0, 1); v3: v2's weights plus a bug that some inputs reach."""
    name = f"local-mlp-{uuid.uuid4().hex[:6]}"
    versions = [register_torch_mlp(tracking_uri, name, seed=0), register_torch_mlp(tracking_uri, name, seed=1),
                register_guarded_mlp(tracking_uri, name, seed=1)]
    assert versions == ["1", "2", "3"]
    mlflow_client.set_registered_model_alias(name, "champion", "1")
    return name


def _move(mlflow_client, model: str, version: str) -> float:
    mlflow_client.set_registered_model_alias(model, "champion", version)
    return time.monotonic()


def _at(event: dict) -> datetime:
    return datetime.fromisoformat(event["at"].replace("Z", "+00:00"))


# --- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,edit", [
    ("spec.rollout.steps", lambda d: d["spec"]["rollout"].update(steps=[50, 20])),
    ("spec.rollout.analysis.successRate.min",
     lambda d: d["spec"]["rollout"]["analysis"].update(successRate={"min": 2})),
    ("spec.model", lambda d: d["spec"]["model"].update(version="3")),
    ("metadata.name", lambda d: d["metadata"].update(name="Not_A_Name")),
])
def test_malformed_file_exits_naming_the_field_and_starts_nothing(tmp_path, field, edit):
    doc = manifest("bad", "whatever")
    edit(doc)
    state = tmp_path / "state"
    # No --tracking-uri: a valid file would start an embedded MLflow; this one must start nothing.
    r = cli("local", "up", "-f", str(write(tmp_path / "md.yaml", doc)), "--state-dir", str(state), "--port", "0")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"InvalidSpec: {field}:" in r.stderr
    assert not state.exists()  # no MLflow, no router, no predictor, no state


def test_rollouts_through_the_local_router(tmp_path, tracking_uri, mlflow_client, local_model):
    """v1 first; the alias moves to bad v3, then mid-canary to good v2 (the analysis restarts for
    v2, which is promoted after exactly len(steps) intervals); then to v3 again, rolled back within
    failureLimit intervals. Client traffic through the router loses nothing along the way."""
    doc = manifest("fraud", local_model)
    receiver = Receiver()
    doc["spec"]["hooks"] = {"webhooks": [{"name": "audit", "url": receiver.url,
                                          "secretRef": {"name": "hooks", "key": "hmac"}}]}
    (tmp_path / "secrets" / "hooks").mkdir(parents=True)
    (tmp_path / "secrets" / "hooks" / "hmac").write_bytes(b"s3cret\n")
    file = write(tmp_path / "md.yaml", doc)
    up = LocalUp(file, tmp_path / "state", tracking_uri, "--secrets-dir", str(tmp_path / "secrets"))
    client = grpc_client = None
    try:
        status = up.wait("v1 serving", lambda s: (s.get("stable") or {}).get("version") == "1" and s.get("url"))
        assert status["phase"] == "Ready" and status["canary"]["phase"] == "Stable"
        assert status["resolvedVersion"] == "1"
        client = Client(status["url"], "fraud")
        grpc_client = GrpcClient(f"127.0.0.1:{up.supervisor()['router']['grpcPort']}", "fraud")
        time.sleep(1.0)

        # 1. Bad v3 becomes a canary, and v2 supersedes it before its first analysis is due.
        _move(mlflow_client, local_model, "3")
        up.wait("canary v3", lambda s: s["canary"].get("version") == "3")
        _move(mlflow_client, local_model, "2")
        t_v2 = time.monotonic()
        up.wait("canary v2", lambda s: s["canary"].get("version") == "2")
        status = up.wait("v2 promoted", lambda s: (s.get("stable") or {}).get("version") == "2", timeout=60)
        good = since(client.records, t_v2)
        assert_nothing_lost(good, bad="3")

        # 2. Bad v3 again: rolled back by its analysis, with the deciding check.
        time.sleep(1.0)
        t_v3 = _move(mlflow_client, local_model, "3")
        status = up.wait("v3 rolled back", lambda s: (s["canary"].get("rolledBack") or {}).get("version") == "3"
                         and s["canary"]["phase"] == "RolledBack", timeout=60)
        time.sleep(1.5)  # traffic after the rollback: v2 only
        t_end = time.monotonic()
        records = client.stop()
        client = None
        grpc_records = grpc_client.stop()
        grpc_client = None

        # the operator's status document: RolledBack while the resolved version is the rolled-back one
        assert status["phase"] == "RolledBack" and status["stable"]["version"] == "2"
        assert status["resolvedVersion"] == "3"
        rolled = next(c for c in status["conditions"] if c["type"] == "RolledBack")
        assert rolled["status"] == "True" and rolled["reason"] == "AnalysisFailed"
        rb = status["canary"]["rolledBack"]
        assert rb["reason"] == "AnalysisFailed" and rb["check"] == "successRate"
        assert status["canary"]["analysis"]["outcome"] == "Failed"

        # The engine's story, from the events log.
        ev = up.events()
        starts = [e for e in ev if e["kind"] == "Started"]
        assert [e["version"] for e in starts] == ["3", "2", "3"]
        assert starts[1]["reason"] == "Restarted" and "supersedes canary v3" in starts[1]["message"]
        first_v3 = ev.index(starts[0])
        assert not any(e["kind"] == "Analysis" and e["version"] == "3" for e in ev[first_v3:ev.index(starts[1])]), \
            "v3 was analysed after v2 superseded it"
        v2 = ev[ev.index(starts[1]):]
        promoted = next(e for e in v2 if e["kind"] == "Promoted")
        analyses = [e for e in v2[:v2.index(promoted) + 1] if e["kind"] == "Analysis"]
        assert [a["outcome"] for a in analyses] == ["Passed"] * len(STEPS)  # exactly len(steps) intervals
        took = (_at(promoted) - _at(starts[1])).total_seconds()
        assert len(STEPS) * INTERVAL <= took <= len(STEPS) * INTERVAL + SLACK, took
        v3 = ev[ev.index(starts[2]):]
        rolled = next(e for e in v3 if e["kind"] == "RolledBack")
        failed = [e for e in v3[:v3.index(rolled) + 1] if e["kind"] == "Analysis" and e["outcome"] == "Failed"]
        assert len(failed) == FAILURE_LIMIT and rolled["check"] == "successRate"
        took = (_at(rolled) - _at(starts[2])).total_seconds()
        assert took <= FAILURE_LIMIT * INTERVAL + SLACK, took
        weights = [r["routes"] for r in ev if r["kind"] == "Routes"]
        assert [{"version": "1", "weight": 80}, {"version": "2", "weight": 20}] in weights
        assert [{"version": "2", "weight": 80}, {"version": "3", "weight": 20}] in weights

        # Nothing lost, through three version switches, a promotion and a rollback.
        assert_nothing_lost(records, bad="3")
        versions = {r[3] for r in records}
        assert versions == {"1", "2", "3"}
        assert sum(1 for r in records if r[2] == 500) > 0  # v3's real failures were seen...
        after = [r for r in records if r[0] > t_end - 1.0]
        assert after and all(r[2] == 200 and r[3] == "2" for r in after)  # ...and none after the rollback
        assert t_end - t_v3 > 0

        # The same over gRPC: every call answered by a predictor; v3's failures are its own.
        assert len(grpc_records) > 100
        wrong = [r for r in grpc_records if not (r[2] == "OK" or (r[2] == "INTERNAL" and r[3] == "3"))]
        assert wrong == [], wrong[:5]
        assert {r[3] for r in grpc_records} == {"1", "2", "3"}

        # MLflow: the history tags and the promoted alias, as the operator writes them.
        key = "modelops.deployment.local.fraud"
        tags2 = mlflow_client.get_model_version(local_model, "2").tags
        tags3 = mlflow_client.get_model_version(local_model, "3").tags
        assert tags2[key].startswith("promoted ")
        assert tags3[key].startswith("rolled back ") and "successRate" in tags3[key]
        assert [h["state"] for h in json.loads(tags3[f"{key}.history"])][-1] == "rolled back"
        assert mlflow_client.get_registered_model(local_model).aliases["production"] == "2"

        # The webhook got every transition, in order, signed, each delivery named once.
        deadline = time.monotonic() + 10
        while len(receiver.accepted()) < 8 and time.monotonic() < deadline:
            time.sleep(0.2)
        got = [(b["event"], b["version"]) for b in receiver.bodies()]
        assert got == [("Started", "3"), ("Started", "2"), ("StepAdvanced", "2"), ("StepAdvanced", "2"),
                       ("Promoted", "2"), ("Started", "3"), ("Failed", "3"), ("RolledBack", "3")], got
        assert receiver.signed(b"s3cret")  # HMAC of the body with the file's secret
        assert [r["headers"]["X-ModelOps-Delivery"] for r in receiver.accepted()] == [
            f"local/fraud/{b['seq']}" for b in receiver.bodies()]
        assert receiver.bodies()[-1]["check"] == "successRate"

        # `local status` shows the status document; `local down` leaves no process group behind.
        shown = cli("local", "status", "--state-dir", str(up.state))
        assert shown.returncode == 0, shown.stderr
        assert "RolledBack" in shown.stdout and "successRate" in shown.stdout and "stable v2" in shown.stdout
        as_json = json.loads(cli("local", "status", "--state-dir", str(up.state), "--json").stdout)
        assert as_json["running"] and as_json["status"]["canary"]["rolledBack"]["version"] == "3"
        groups = up.groups()
        assert len(groups) == 3  # supervisor, router, the stable predictor (MLflow is the session's)
        down = cli("local", "down", "--state-dir", str(up.state))
        assert down.returncode == 0, down.stderr
        up.proc.wait(10)
        assert [g for g in groups if group_alive(g)] == []
        assert not (up.state / "supervisor.json").exists()
    finally:
        for c in (client, grpc_client):
            if c is not None:
                c.stop()
        up.kill()
        receiver.close()


def test_restart_resumes_and_ctrl_c_or_down_leave_nothing(tmp_path, tracking_uri, mlflow_client, local_model):
    """Ctrl-C in the middle of a canary stops everything; a second `local up` resumes from the
    status file (the canary at its weight, published conversions reused) and finishes the rollout;
    `local down` stops what is left after the supervisor itself was killed."""
    mlflow_client.set_registered_model_alias(local_model, "champion", "1")
    file = write(tmp_path / "md.yaml", manifest("resume", local_model, steps=[50, 100], interval="3s"))
    state = tmp_path / "state"
    up = LocalUp(file, state, tracking_uri)
    try:
        up.wait("v1 serving", lambda s: (s.get("stable") or {}).get("version") == "1")
        _move(mlflow_client, local_model, "2")
        up.wait("canary v2", lambda s: s["canary"].get("version") == "2" and s["canary"]["weight"] == 50)
        groups = up.groups()
        assert len(groups) == 4  # supervisor, router, two predictors
        os.kill(up.proc.pid, signal.SIGINT)  # what Ctrl-C sends
        assert up.proc.wait(60) == 0
        assert [g for g in groups if group_alive(g)] == []
        assert "stopped" in up.output()
        stopped = up.status()
        assert "url" not in stopped and stopped["stable"]["version"] == "1"
        assert stopped["canary"]["phase"] == "Progressing" and stopped["canary"]["version"] == "2"
        assert next(c for c in stopped["conditions"] if c["type"] == "Ready")["reason"] == "Stopped"
    finally:
        up.kill()

    restarted = len(up.events())
    up = LocalUp(file, state, tracking_uri)
    client = None
    try:
        status = up.wait("the canary again", lambda s: s["canary"].get("version") == "2")
        assert status["canary"]["weight"] == 50 and status["stable"]["version"] == "1"
        assert "resuming: v1 was stable, canary v2 at 50%" in up.output()
        assert up.output().count("published conversion reused") == 2
        client = Client(status["url"], "resume", threads=1)
        up.wait("v2 promoted", lambda s: (s.get("stable") or {}).get("version") == "2", timeout=60)
        ev = up.events()[restarted:]
        assert [e["outcome"] for e in ev if e["kind"] == "Analysis"] == ["Passed", "Passed"]
        assert [e["kind"] for e in ev if e["kind"] in ("Started", "Promoted")] == ["Promoted"]
        assert_nothing_lost(client.stop(), bad=None)
        client = None
        groups = up.groups()
        os.killpg(up.proc.pid, signal.SIGKILL)  # the supervisor dies; its children stay
        up.proc.wait(10)
        assert any(group_alive(g) for g in groups[1:])
        down = cli("local", "down", "--state-dir", str(state))
        assert down.returncode == 0 and "process group" in down.stdout, down.stdout + down.stderr
        assert [g for g in groups if group_alive(g)] == []
    finally:
        if client is not None:
            client.stop()
        up.kill()


def test_replace_strategy_and_a_version_that_fails_its_parity_gate(tmp_path, tracking_uri, mlflow_client):
    """strategy replace (the default): a version whose ONNX diverges is refused by the parity gate
    (phase Failed, reason ParityFailed) while the serving version keeps serving; the next good
    version replaces it at once; client traffic loses nothing."""
    from modelops.demo.models import MLP, ExportDivergentMLP

    name = f"local-replace-{uuid.uuid4().hex[:6]}"
    v1 = register_torch_mlp(tracking_uri, name, seed=0)
    v2 = register_torch_mlp(tracking_uri, name, seed=0, cls=ExportDivergentMLP, serialization_format="pickle")
    v3 = register_torch_mlp(tracking_uri, name, seed=1, cls=MLP)
    mlflow_client.set_registered_model_alias(name, "champion", v1)
    doc = manifest("plain", name)
    del doc["spec"]["rollout"]  # strategy: replace
    up = LocalUp(write(tmp_path / "md.yaml", doc), tmp_path / "state", tracking_uri)
    client = None
    try:
        status = up.wait("v1 serving", lambda s: (s.get("stable") or {}).get("version") == v1)
        client = Client(status["url"], "plain", threads=1)
        _move(mlflow_client, name, v2)
        status = up.wait("v2 refused", lambda s: s["phase"] == "Failed")
        assert status["failed"]["version"] == v2 and status["failed"]["reason"] == "ParityFailed"
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert stalled["status"] == "True" and "still serving v1" in stalled["message"]
        assert status["stable"]["version"] == v1 and status["canary"]["phase"] == "Stable"
        time.sleep(1.0)
        assert {r[3] for r in client.records[-20:]} == {v1}
        assert mlflow_client.get_model_version(name, v2).tags["modelops.conversion.status"] == "failed"
        _move(mlflow_client, name, v3)
        status = up.wait("v3 serving", lambda s: (s.get("stable") or {}).get("version") == v3
                         and s["phase"] == "Ready")
        assert "failed" not in status
        time.sleep(1.0)
        records = client.stop()
        client = None
        assert_nothing_lost(records, bad=None)
        assert {r[3] for r in records} == {v1, v3} and records[-1][3] == v3
        ev = up.events()
        assert [e["reason"] for e in ev if e["kind"] == "Serving"] == ["FirstDeployment", "Replace"]
        assert not any(e["kind"] in ("Started", "Analysis") for e in ev)  # no canary with replace
        tag = mlflow_client.get_model_version(name, v1).tags["modelops.deployment.local.plain"]
        assert tag.startswith(f"replaced by v{v3} ")
    finally:
        if client is not None:
            client.stop()
        up.kill()


def test_local_mode_needs_no_kubernetes_and_the_router_no_mlflow_or_torch():
    block = "import sys\nfor m in {mods!r}: sys.modules[m] = None\n"
    code = "import modelops.local.supervisor, modelops.local.manifest, modelops.local.status; print('ok')"
    r = subprocess.run([PY, "-c", block.format(mods=("kopf", "kubernetes", "modelops_operator")) + code],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    code = "import modelops.local.router; print('ok')"
    r = subprocess.run([PY, "-c", block.format(mods=("torch", "mlflow", "kopf", "kubernetes", "sklearn")) + code],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_missing_hook_secret_or_busy_port_exit_naming_it_and_start_nothing(tmp_path):
    import socket

    doc = manifest("hooks", "whatever")
    doc["spec"]["hooks"] = {"webhooks": [{"name": "audit", "url": "http://127.0.0.1:9/hook",
                                          "secretRef": {"name": "hooks", "key": "hmac"}}]}
    file = write(tmp_path / "md.yaml", doc)
    state = tmp_path / "state"
    r = cli("local", "up", "-f", str(file), "--state-dir", str(state), "--port", "0", "--grpc-port", "0",
            "--secrets-dir", str(tmp_path / "none"))
    assert r.returncode == 2 and "InvalidSpec: spec.hooks.webhooks[0].secretRef:" in r.stderr, r.stderr
    assert not state.exists()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("local", "up", "-f", str(write(tmp_path / "ok.yaml", manifest("ok", "whatever"))),
                "--state-dir", str(state), "--port", str(port), "--grpc-port", "0")
    assert r.returncode == 2 and "InvalidSpec: --port:" in r.stderr and "not free" in r.stderr, r.stderr
    assert not state.exists()
