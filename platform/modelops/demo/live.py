"""What the demos run: `modelops local up` as a child process, clients sending requests through its
router, and the ModelDeployment they apply (shared by `modelops demo` and `modelops demo --text`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

STEPS = [20, 50, 100]
FAILURE_LIMIT = 2


def _quiet() -> None:
    import logging

    warnings.filterwarnings("ignore")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # also for `local up`, a child
    for name in ("mlflow", "alembic", "urllib3", "torch", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)


def manifest(interval: str, name: str = "demo-mlp", model: str = "demo-mlp", **judging) -> dict:
    """The ModelDeployment a demo runs: what `kubectl apply` would take on a cluster. `judging`:
    more `spec.rollout` fields (`shadow`, `performanceGate`)."""
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml-serving"},
        "spec": {
            "model": {"name": model, "alias": "champion"},
            "rollout": {
                "strategy": "canary", "steps": STEPS, "interval": interval, "promoteAlias": "production",
                **judging,
                "analysis": {"successRate": {"min": 0.99, "maxDrop": 0.01}, "p99LatencyMs": {"max": 500},
                             "minRequests": 10, "failureLimit": FAILURE_LIMIT, "inconclusiveLimit": 5},
            },
        },
    }


class Traffic:
    """Clients sending V2 requests through the router; one input in five reaches the erroring
    version's bug. Every answer is recorded with the version that gave it (the router's
    `x-modelops-version` header): `answered()` counts them per version."""

    def __init__(self, url: str, deployment: str, threads: int = 2, pause: float = 0.004):
        from .models import GUARD_LIMIT, MLP_FEATURES

        self.url = f"{url}/v2/models/{deployment}/infer"
        self.features, self.poison = MLP_FEATURES, GUARD_LIMIT * 2
        self.pause = pause
        self.records: list[tuple[float, object, str]] = []  # (monotonic, status or error, version)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, seed: int) -> None:
        import httpx

        rng = np.random.default_rng(1000 + seed)
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                x = rng.normal(size=(1, self.features)).astype(np.float32)
                if rng.random() < 0.2:
                    x[0, 0] = self.poison
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, self.features],
                                    "data": x.ravel().tolist()}]}
                try:
                    r = http.post(self.url, json=body)
                    status: object = r.status_code
                    if status == 500 and r.json().get("reason") != "InferenceFailed":
                        status = "500 (not the model)"
                    self.records.append((time.monotonic(), status, r.headers.get("x-modelops-version", "")))
                except httpx.HTTPError as exc:
                    self.records.append((time.monotonic(), type(exc).__name__, ""))
                time.sleep(self.pause)

    def answered(self, status: object = 200) -> Counter:
        """Per version, the client requests it answered with `status`."""
        return Counter(v for _, s, v in list(self.records) if s == status)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


class LocalUp:
    """`modelops local up` as a child process; its output is relayed, indented, as it comes.
    While `wait` polls the status it keeps the highest weight each canary version was seen at."""

    def __init__(self, file: Path, state: Path, tracking_uri: str, port: int):
        from ..local.ports import free_port
        from ..local.rundir import RunDir

        grpc_port = free_port()
        while grpc_port == port:
            grpc_port = free_port()
        self.rundir = RunDir(state)
        self.lines: list[str] = []
        self.max_weight: dict[str, int] = {}
        cmd = [sys.executable, "-m", "modelops.cli", "local", "up", "-f", str(file), "--tracking-uri", tracking_uri,
               "--port", str(port), "--grpc-port", str(grpc_port), "--state-dir", str(state), "--progress", "lines",
               "--resolve-interval", "1"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, bufsize=1)
        self._relay = threading.Thread(target=self._pump, daemon=True)
        self._relay.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            sys.stdout.write(f"    {line}")
            sys.stdout.flush()

    def wait(self, what: str, predicate, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`modelops local up` exited with {self.proc.returncode} while waiting "
                                   f"for {what}")
            status = self.rundir.status() or {}
            rec = self.rundir.supervisor() or {}
            fresh = rec.get("pid") == self.proc.pid
            canary = status.get("canary") or {}
            if fresh and canary.get("version"):
                v = str(canary["version"])
                self.max_weight[v] = max(self.max_weight.get(v, 0), int(canary.get("weight") or 0))
            if fresh and status and predicate(status):
                return status
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")

    def events(self) -> list[dict]:
        path = self.rundir.root / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def down(self) -> None:
        from ..local.rundir import stop_recorded

        stop_recorded(self.rundir)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._relay.join(5)
