#!/usr/bin/env python
"""Benchmark the operator against kmock's Kubernetes emulator and a real MLflow server.

1. Latency: ModelDeployment created -> InferenceService created, with the conversion already
   published (cache hit), one object at a time; p50/p99 over N objects (default 100).
2. Memory: the operator's RSS once it manages M ModelDeployments (default 1000), all reconciled.

The operator runs as its own process (`python -m modelops_operator.main --api-url ...`, default
`job` conversion mode) so its RSS is measured alone; the emulator and MLflow run beside it.

    python scripts/bench_operator.py [--latency-objects 100] [--memory-objects 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import kmock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.k8s.apiserver import ISVC, MD, ApiServerEmulator  # noqa: E402  (the emulator the tests use)


class TimedEmulator(ApiServerEmulator):
    """Records when each InferenceService create request arrives.

    kmock matches every request against the history of all earlier requests (its DSL filters
    are views over that history), which makes a long run quadratic. The benchmark needs no
    history, so it is dropped: the emulator then costs the same per request at any scale.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.isvc_created: dict[str, float] = {}
        self.md_watched = False

    async def _handle(self, request):
        self._requests[:] = [request]
        if request.action == kmock.action.CREATE and request.resource == kmock.resource(ISVC):
            self.isvc_created.setdefault(request.data["metadata"]["name"], time.perf_counter())
        if request.action == kmock.action.WATCH and request.resource == kmock.resource(MD):
            self.md_watched = True
        return await super()._handle(request)


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kib = lambda key: int(fields[key].strip().split()[0])  # noqa: E731
    return kib("VmRSS") / 1024, kib("VmHWM") / 1024


def prepare_model(tracking_uri: str) -> tuple[str, str]:
    from modelops.conversion import ConversionOptions, convert_and_publish
    from modelops.demo.models import register_torch_mlp
    from modelops.registry import Registry

    version = register_torch_mlp(tracking_uri, "bench-model", seed=0)
    registry = Registry(tracking_uri)
    convert_and_publish(registry, registry.resolve_version("bench-model", version=version), ConversionOptions())
    return "bench-model", version


def md(name: str, model: str, version: str) -> dict:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"model": {"name": model, "version": version}}}


async def wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.002)


async def bench(args) -> dict:
    from modelops.local.mlflow_server import MlflowServer

    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    mlflow = MlflowServer(work / "mlflow").start()
    try:
        model, version = prepare_model(mlflow.url)
        async with TimedEmulator() as api, kmock.Server(api):
            url = str(api.url).rstrip("/")
            env = {**os.environ, "MODELOPS_MLFLOW_TRACKING_URI": mlflow.url,
                   "MODELOPS_STORAGE_URI_REWRITES": "mlflow-artifacts:/=s3://mlflow/,file://=pvc://mlflow"}
            op = subprocess.Popen(
                [sys.executable, "-m", "modelops_operator.main", "--all-namespaces", "--conversion", "job",
                 "--api-url", url, "--liveness", "", "--resolve-interval", "3600"],
                env=env, stdout=open(work / "operator.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True)
            try:
                # Operator startup (imports, discovery): wait until it watches ModelDeployments.
                await wait_for(lambda: api.md_watched, timeout=120)
                await asyncio.sleep(1)
                idle_rss, _ = rss_mib(op.pid)
                async with httpx.AsyncClient(base_url=url) as client:
                    path = "/apis/modelops.dev/v1alpha1/namespaces/bench/modeldeployments"
                    latencies = []
                    for i in range(args.latency_objects):
                        name = f"lat-{i:04d}"
                        start = time.perf_counter()
                        r = await client.post(path, json=md(name, model, version))
                        r.raise_for_status()
                        await wait_for(lambda: name in api.isvc_created, timeout=60)
                        latencies.append((api.isvc_created[name] - start) * 1000)

                    started = time.monotonic()
                    total = args.memory_objects
                    for i in range(total - args.latency_objects):
                        r = await client.post(path, json=md(f"mem-{i:04d}", model, version))
                        r.raise_for_status()
                    await wait_for(lambda: len(api.isvc_created) >= total, timeout=1800)
                    converge_s = time.monotonic() - started
                    await asyncio.sleep(2)
                    rss, hwm = rss_mib(op.pid)
            finally:
                # Keep serving the API while the operator shuts down (it still talks to it).
                os.killpg(op.pid, signal.SIGTERM)
                try:
                    await asyncio.to_thread(op.wait, 60)
                except subprocess.TimeoutExpired:
                    os.killpg(op.pid, signal.SIGKILL)
                    op.wait()
    finally:
        mlflow.stop()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "latency_ms": {"objects": len(latencies), "p50": round(statistics.median(latencies), 1),
                       "p99": round(q[98], 1), "min": round(min(latencies), 1), "max": round(max(latencies), 1)},
        "memory_mib": {"objects": total, "idle_rss": round(idle_rss, 1), "rss": round(rss, 1),
                       "peak_rss": round(hwm, 1),
                       "burst_converge_s": round(converge_s, 1),
                       "burst_objects": total - args.latency_objects},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-objects", type=int, default=100)
    ap.add_argument("--memory-objects", type=int, default=1000)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(bench(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
