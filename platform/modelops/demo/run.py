"""`modelops demo`: a model version moving into traffic step by step, judged by live metrics,
promoted or rolled back by itself, with MLflow showing what happened. All on this machine.

1. starts an embedded MLflow server (sqlite + local artifacts under the work dir);
2. trains and registers four versions of a PyTorch MLP (seeded, nothing downloaded): v1, a
   good v2, a deliberately bad v3 (`register_guarded_mlp`: it fails at run time on inputs whose first
   feature exceeds 50, which one request in five has), and v4, a good MLP whose ONNX input is
   called `features` instead of `input` (`register_renamed_mlp`); the alias `champion` points at v1;
3. runs `modelops local up` on a ModelDeployment that follows `champion` with a canary rollout,
   and sends client traffic through its router for the rest of the demo;
4. moves `champion` to v2: the canary goes 20% -> 50% -> 100%, analysed every interval, and is
   promoted (the alias `production` follows);
5. moves `champion` to v3: its analysis fails on the success rate and it is rolled back;
6. moves `champion` to v4: its interface is not the serving version's, so it is refused before
   any traffic (`InterfaceChanged`): no client request reaches it;
7. prints what happened, the client's count of lost requests (zero), where to look in MLflow,
   and the wall time. `--keep-running` leaves it all up to explore.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

MODEL = "demo-mlp"
DEPLOYMENT = "demo-mlp"
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


def manifest(interval: str) -> dict:
    """The ModelDeployment the demo runs: what `kubectl apply` would take on a cluster."""
    return {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": DEPLOYMENT, "namespace": "ml-serving"},
        "spec": {
            "model": {"name": MODEL, "alias": "champion"},
            "rollout": {
                "strategy": "canary", "steps": STEPS, "interval": interval, "promoteAlias": "production",
                "analysis": {"successRate": {"min": 0.99, "maxDrop": 0.01}, "p99LatencyMs": {"max": 500},
                             "minRequests": 10, "failureLimit": FAILURE_LIMIT, "inconclusiveLimit": 5},
            },
        },
    }


class Traffic:
    """Clients sending V2 requests through the router; one input in five reaches v3's bug."""

    def __init__(self, url: str, threads: int = 2, pause: float = 0.004):
        from .models import GUARD_LIMIT, MLP_FEATURES

        self.url = f"{url}/v2/models/{DEPLOYMENT}/infer"
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

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


class LocalUp:
    """`modelops local up` as a child process; its output is relayed, indented, as it comes."""

    def __init__(self, file: Path, state: Path, tracking_uri: str, port: int):
        from ..local.ports import free_port
        from ..local.rundir import RunDir

        grpc_port = free_port()
        while grpc_port == port:
            grpc_port = free_port()
        self.rundir = RunDir(state)
        self.lines: list[str] = []
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


def _story(events: list[dict], tags: dict[str, dict], key: str) -> list[tuple[str, ...]]:
    """One row per version: what happened to it, its analyses, the deciding check, its MLflow tag."""
    rows = []
    for v in sorted(tags, key=int):
        mine = [e for e in events if e.get("version") == v]
        analyses = [e for e in mine if e["kind"] == "Analysis"]
        passed = sum(1 for a in analyses if a["outcome"] == "Passed")
        failed = sum(1 for a in analyses if a["outcome"] == "Failed")
        kinds = [e["kind"] for e in mine]
        refused = next((e for e in mine if e["kind"] == "RolledBack" and e.get("reason") == "InterfaceChanged"), None)
        if refused is not None:
            outcome = "refused"
        elif "RolledBack" in kinds:
            outcome = "rolled back"
        elif "Promoted" in kinds:
            outcome = "promoted"
        elif "Serving" in kinds:
            outcome = "served first"
        else:
            outcome = "-"
        decided = next((e for e in reversed(mine) if e["kind"] == "RolledBack"), None)
        check = ""
        if refused is not None:
            check = refused.get("message") or ""
        elif decided is not None:
            last = next((a for a in reversed(analyses) if a["outcome"] == "Failed"), None)
            check = (last or {}).get("message") or decided.get("check") or ""
        counts = ", ".join(x for x in (passed and f"{passed} passed", failed and f"{failed} failed") if x) or "-"
        parity = tags[v].get("modelops.parity")
        err = f"{json.loads(parity)['max_abs_err']:.1e}" if parity else "-"
        rows.append((f"v{v}", err, outcome, counts, check or "-", tags[v].get(key, "-")))
    return rows


def _table(rows: list[tuple[str, ...]]) -> str:
    head = ("version", "parity max|err|", "outcome", "analyses", "deciding check", "MLflow tag (this deployment)")
    limits = [60] * (len(head) - 2) + [80, 60]  # the deciding check in full (an interface's differences)
    widths = [min(limits[i], max(len(str(r[i])) for r in [head, *rows])) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [fmt.format(*(c if len(c) <= n else c[:n - 1] + "~" for c, n in zip(map(str, r), limits)))
              for r in rows]
    return "\n".join(lines)


def run_demo(work_dir: Path, interval: str = "3s", keep_running: bool = False, port: int = 0) -> int:
    _quiet()
    from ..deployment.spec import parse_duration
    from ..local.mlflow_server import MlflowServer
    from ..local.ports import free_port
    from . import models

    import yaml

    seconds = parse_duration(interval)
    work_dir = Path(work_dir).resolve()
    shutil.rmtree(work_dir, ignore_errors=True)  # every run starts from a clean registry
    work_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"[1/6] starting MLflow (sqlite + local artifacts in {work_dir / 'mlflow'})", flush=True)
    server = MlflowServer(work_dir / "mlflow").start()
    up = traffic = None
    try:
        tracking = server.url
        print(f"[2/6] training and registering {MODEL}: v1, v2 (good), v3 (bad on purpose: fails at run time "
              f"on inputs whose first feature > {models.GUARD_LIMIT:g}), v4 (good, but its ONNX input is called "
              "'features', not 'input'); alias champion -> v1", flush=True)
        with open(work_dir / "register.log", "w") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            versions = [models.register_torch_mlp(tracking, MODEL, seed=0),
                        models.register_torch_mlp(tracking, MODEL, seed=1),
                        models.register_guarded_mlp(tracking, MODEL, seed=2),
                        models.register_renamed_mlp(tracking, MODEL, seed=3)]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        client.set_registered_model_alias(MODEL, "champion", versions[0])

        file = work_dir / f"{DEPLOYMENT}.yaml"
        file.write_text(yaml.safe_dump(manifest(interval), sort_keys=False))
        print(f"[3/6] modelops local up -f {file}  (the ModelDeployment kubectl would apply; canary steps "
              f"{STEPS}%, interval {interval}: short on purpose for the demo; analysis from the predictors' "
              "own /metrics)", flush=True)
        up = LocalUp(file, work_dir / "local", tracking, port or free_port())
        status = up.wait("v1 to serve", lambda s: (s.get("stable") or {}).get("version") == versions[0]
                         and s.get("url"))
        router = status["url"]
        traffic = Traffic(router)
        print(f"      client traffic through the router {router} from now on "
              "(2 clients; one input in five has a first feature of 100)", flush=True)
        time.sleep(min(3.0, seconds))

        print(f"[4/6] moving alias champion -> v{versions[1]} in MLflow: the canary is analysed every "
              f"{interval} and moves {' -> '.join(f'{s}%' for s in STEPS)}", flush=True)
        t = time.perf_counter()
        client.set_registered_model_alias(MODEL, "champion", versions[1])
        up.wait(f"v{versions[1]} to be promoted", lambda s: (s.get("stable") or {}).get("version") == versions[1])
        print(f"      v{versions[1]} promoted {time.perf_counter() - t:.0f}s after the alias moved "
              f"(conversion, predictor start, {len(STEPS)} intervals)", flush=True)
        time.sleep(min(2.0, seconds))

        print(f"[5/6] moving alias champion -> v{versions[2]} (the bad one)", flush=True)
        t = time.perf_counter()
        client.set_registered_model_alias(MODEL, "champion", versions[2])
        status = up.wait(f"v{versions[2]} to be rolled back",
                         lambda s: (s["canary"].get("rolledBack") or {}).get("version") == versions[2])
        print(f"      v{versions[2]} rolled back {time.perf_counter() - t:.0f}s after the alias moved", flush=True)
        time.sleep(min(2.0, seconds))
        t_rollback = time.monotonic() - min(2.0, seconds) + 0.5

        print(f"[6/6] moving alias champion -> v{versions[3]} (input renamed 'features': clients send 'input')",
              flush=True)
        t = time.perf_counter()
        client.set_registered_model_alias(MODEL, "champion", versions[3])
        up.wait(f"v{versions[3]} to be refused",
                lambda s: (s["canary"].get("rolledBack") or {}).get("version") == versions[3])
        print(f"      v{versions[3]} refused {time.perf_counter() - t:.0f}s after the alias moved, before any "
              "traffic", flush=True)
        time.sleep(min(1.0, seconds))
        traffic.stop()

        key = f"modelops.deployment.local.{DEPLOYMENT}"
        tags = {v: dict(client.get_model_version(MODEL, v).tags) for v in versions}
        aliases = client.get_registered_model(MODEL).aliases
        rows = _story(up.events(), tags, key)
        records = traffic.records
        lost = [r for r in records if r[1] not in (200, 500)]
        reached_v4 = sum(1 for r in records if r[2] == versions[3])
        by_model = sum(1 for r in records if r[1] == 500)
        bad_after = sum(1 for r in records if r[1] != 200 and r[0] > t_rollback)
        print()
        print(f"What happened (interval {interval}, steps {STEPS}%, failureLimit {FAILURE_LIMIT}):")
        print(_table(rows))
        print()
        print(f"client: {len(records)} requests through the router, {len(lost)} lost; {by_model} answered 500 "
              f"by v{versions[2]} itself (its bug, during its canary), {bad_after} failed after the rollback; "
              f"{reached_v4} reached v{versions[3]}")
        print(f"MLflow UI: {tracking}  -> Models -> {MODEL}: aliases "
              + ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items()))
              + f"; each version's tags {key} (+ .history: every step, with the deciding check) and "
                "modelops.* (ONNX location, sha256, parity)")
        print(f"status document: modelops local status --state-dir {up.rundir.root}")
        ok = (any(r[2] == "promoted" for r in rows) and any(r[2] == "rolled back" for r in rows)
              and any(r[2] == "refused" for r in rows) and reached_v4 == 0
              and not lost and bad_after == 0 and aliases.get("production") == versions[1])
        verdict = "" if ok else "  -- SOMETHING WENT WRONG, see above"
        if keep_running:
            print(f"done in {time.perf_counter() - t0:.0f}s (wall time){verdict}")
            print(f"everything keeps running: router {router}, MLflow {tracking}; move the alias in the MLflow UI "
                  "and watch; Ctrl+C stops it all")
            try:
                while up.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        else:
            print("  (everything stops with the demo: `modelops demo --keep-running` to explore)")
            up.down()
            up = None
            server.stop()
            print(f"done in {time.perf_counter() - t0:.0f}s (wall time); work dir {work_dir}{verdict}")
        return 0 if ok else 1
    finally:
        if traffic is not None:
            traffic.stop()
        if up is not None:
            up.down()
        server.stop()
