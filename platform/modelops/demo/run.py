"""`modelops demo`: MLflow -> ONNX (parity-gated) -> served predictions, on this machine.

1. starts an embedded MLflow server (sqlite + local artifacts under the work dir),
2. trains and registers two versions each of a PyTorch MLP and a scikit-learn pipeline,
   and points the `champion` alias at version 2,
3. converts every version with the parity gate and writes results back to MLflow,
4. serves each version with `modelops serve`, checks its answers against onnxruntime in
   process, and measures latency and throughput over real HTTP,
5. prints a table and the MLflow UI address.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..local.processes import spawn, stop

DEMO_MODELS = ("demo-mlp", "demo-pipeline")  # a PyTorch MLP, a scikit-learn pipeline


@dataclass
class Row:
    model: str
    version: str
    flavor: str
    max_abs_err: float
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rps: float = 0.0
    correct: bool = False


def _quiet() -> None:
    import logging

    warnings.filterwarnings("ignore")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    for name in ("mlflow", "alembic", "urllib3", "torch", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)


def _register_all(tracking: str) -> list[tuple[str, str]]:
    from mlflow import MlflowClient

    from . import models

    out = []
    for version_seed in (0, 1):
        out.append(("demo-mlp", models.register_torch_mlp(tracking, "demo-mlp", seed=version_seed)))
        kind = "logreg" if version_seed == 0 else "forest"
        out.append(("demo-pipeline", models.register_sklearn_pipeline(tracking, "demo-pipeline",
                                                                      seed=version_seed, kind=kind)))
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    for name in DEMO_MODELS:
        client.set_registered_model_alias(name, "champion", "2")
    return out


def _serve(onnx_dir: Path, name: str, version: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "modelops.cli", "serve", str(onnx_dir), "--name", name,
           "--model-version", version, "--http-port", str(port), "--grpc-port", "0"]
    return spawn(cmd, log)


def _check_answers(url: str, name: str, onnx_dir: Path, x: np.ndarray) -> bool:
    """The served answer equals onnxruntime in process on the same input."""
    import httpx
    import onnxruntime as ort

    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=10)
    r.raise_for_status()
    served = r.json()["outputs"]
    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    local = sess.run(None, {"input": x})
    return all(np.allclose(np.asarray(o["data"]).reshape(o["shape"]), l, rtol=1e-6, atol=1e-6)
               for o, l in zip(served, local))


def _table(rows: list[Row]) -> str:
    head = f"{'model':<15}{'version':>8}{'flavor':>10}{'parity max|err|':>17}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}  answers"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.model:<15}{r.version:>8}{r.flavor:>10}{r.max_abs_err:>17.2e}{r.p50_ms:>9.2f}"
                     f"{r.p99_ms:>9.2f}{r.rps:>9.0f}  {'match' if r.correct else 'MISMATCH'}")
    return "\n".join(lines)


def run_demo(work_dir: Path, requests: int = 2000, keep_running: bool = False) -> int:
    _quiet()
    from ..bench.loadgen import run_load, wait_ready
    from ..conversion import ConversionOptions, convert_and_publish
    from ..local.mlflow_server import MlflowServer
    from ..local.ports import free_port
    from ..registry import Registry
    from . import models

    work_dir = Path(work_dir).resolve()
    shutil.rmtree(work_dir, ignore_errors=True)  # every run starts from a clean registry
    work_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"[1/4] starting MLflow (sqlite + local artifacts in {work_dir / 'mlflow'})", flush=True)
    server = MlflowServer(work_dir / "mlflow").start()
    procs: list[subprocess.Popen] = []
    try:
        tracking = server.url
        print("[2/4] training and registering demo models (2 versions each, alias champion -> v2)", flush=True)
        # MLflow prints run links and registrations for every logged model: keep them in a log file.
        with open(work_dir / "register.log", "w") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            versions = _register_all(tracking)
        registry = Registry(tracking)

        print("[3/4] converting to ONNX with the parity gate, writing results back to MLflow", flush=True)
        rows, served = [], []
        for name, version in versions:
            resolved = registry.resolve_version(name, version=version)
            out = work_dir / "onnx" / f"{name}-v{version}"
            result = convert_and_publish(registry, resolved, ConversionOptions(), out_dir=out)
            report = json.loads((out / "conversion.json").read_text())
            rows.append(Row(name, version, report["flavor"], result.parity["max_abs_err"]))
            served.append((name, version, out))
            print(f"      {name} v{version}: {report['flavor']} parity max_abs_err="
                  f"{result.parity['max_abs_err']:.2e} ({result.parity['samples']} samples) -> {result.onnx_uri}",
                  flush=True)
        champion = registry.resolve("models:/demo-mlp@champion")
        print(f"      models:/demo-mlp@champion resolves to version {champion.version}", flush=True)

        print(f"[4/4] serving every version and sending {requests} requests each (concurrency 8)", flush=True)
        rng = np.random.default_rng(0)
        for row, (name, version, out) in zip(rows, served):
            port = free_port()
            proc = _serve(out, name, version, port, work_dir / f"serve-{name}-v{version}.log")
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/v2/health/ready", timeout=120, proc=proc)
            x = rng.normal(size=(4, models.MLP_FEATURES)).astype(np.float32)
            row.correct = _check_answers(url, name, out, x)
            one = x[:1]
            body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, one.shape[1]],
                                           "data": one.ravel().tolist()}]}).encode()
            load = run_load(f"{url}/v2/models/{name}/infer", body, concurrency=8, requests=requests)
            row.p50_ms, row.p99_ms, row.rps = load.p50_ms, load.p99_ms, load.rps
            if load.errors:
                row.correct = False
            if not keep_running:
                stop(proc)
                procs.remove(proc)

        print()
        print(_table(rows))
        print()
        print(f"MLflow UI: {tracking}  (Models -> demo-mlp / demo-pipeline: tags modelops.*; "
              "the runs' artifacts hold modelops/onnx-*/model.onnx and conversion.json)")
        if not keep_running:
            print("  (MLflow stops with the demo: run `modelops demo --keep-running` to browse it)")
        print(f"done in {time.perf_counter() - t0:.0f}s; work dir {work_dir}")
        ok = all(r.correct and r.max_abs_err <= 1e-5 for r in rows)
        if keep_running:
            print("servers keep running; Ctrl+C stops them")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        for proc in procs:
            stop(proc)
        server.stop()
