#!/usr/bin/env python
"""Benchmark the operator against a Kubernetes API (kmock's emulator, or the real control plane
of ../shared/k8s) and a real MLflow server.

1. Latency: ModelDeployment created -> InferenceService created, with the conversion already
   published (cache hit), one object at a time; p50/p99 over N objects (default 100).
2. Memory: the operator's RSS once it manages M ModelDeployments (default 1000), all reconciled.
3. Burst (`--burst N`, first, before 1 and 2): N ModelDeployments of the same registered model
   version created as fast as the client can (32 concurrent creates; `--burst-rate R`: paced at R
   per second, the i-th create at i/R s); done when every one has
   its InferenceService and a status the operator wrote for its generation (`observedGeneration`;
   with `--kserve-ready` the benchmark also plays KServe, marking each InferenceService Ready, and
   waits for phase Ready). Reports the rate (N / first create to last done) and create ->
   InferenceService / -> observed (/ -> Ready) p50/p99, each from the moment the create returned,
   and (real API server) the requests it served per object, by verb and resource.
   Its objects count towards M.

The operator runs as its own process (`python -m modelops_operator.main`, default `job`
conversion mode) so its RSS is measured alone; the API server and MLflow run beside it. With
`--api real` the operator authenticates with the control plane's admin client certificate, and
"InferenceService created" is when a watch on InferenceServices reports it (the emulator records
the create request itself). `--api both` runs the two one after the other, in one invocation.

    python scripts/bench_operator.py [--api emulator|real|both] [--latency-objects 100] [--memory-objects 1000]
                                     [--burst 900 [--burst-rate 50] [--kserve-ready]]

`--api real` starts the control plane in $MODELOPS_K8S_DIR (default: a fresh temp dir) on port
$MODELOPS_K8S_PORT (default 6543), and stops it afterwards if it started it.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_operator_apis import EmulatorBackend, RealBackend, md, wait_for  # noqa: E402


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


async def bench(args, backend_cls, mlflow, model: str, version: str, work: Path) -> dict:
    async with backend_cls() as api:
        api.model = (model, version)
        extra, extra_env = api.operator_args()
        env = {**os.environ, **extra_env, "MODELOPS_MLFLOW_TRACKING_URI": mlflow.url,
               "MODELOPS_STORAGE_URI_REWRITES": "mlflow-artifacts:/=s3://mlflow/,file://=pvc://mlflow"}
        op = subprocess.Popen(
            [sys.executable, "-m", "modelops_operator.main", "--all-namespaces", "--conversion", "job",
             *extra, "--liveness", "", "--resolve-interval", "3600"],
            env=env, stdout=open(work / f"operator-{api.name}.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        spy = None
        try:
            # Operator startup (imports, discovery): wait until it serves.
            await api.ready()
            idle_rss, _ = rss_mib(op.pid)
            if args.operator_profile:
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o",
                                        args.operator_profile, "--pid", str(op.pid), "--rate", "50", "--threads",
                                        "--format", "raw"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            burst = await run_burst(args, api, model, version) if args.burst else None
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                await asyncio.to_thread(spy.wait, 60)
                spy = None
            base = len(api.isvc_created)
            latencies = []
            for i in range(args.latency_objects):
                name = f"lat-{i:04d}"
                start = time.perf_counter()
                await api.create(md(name, model, version))
                await wait_for(lambda: name in api.isvc_created, timeout=60)
                latencies.append((api.isvc_created[name] - start) * 1000)

            started = time.monotonic()
            total = args.memory_objects
            more = max(0, total - args.latency_objects - args.burst)
            for i in range(more):
                await api.create(md(f"mem-{i:04d}", model, version))
            await wait_for(lambda: len(api.isvc_created) >= more + args.latency_objects + base, timeout=1800)
            converge_s = time.monotonic() - started
            await asyncio.sleep(2)
            rss, hwm = rss_mib(op.pid)
        finally:
            if spy is not None:
                spy.kill()
            # Keep serving the API while the operator shuts down (it still talks to it).
            os.killpg(op.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(op.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(op.pid, signal.SIGKILL)
                op.wait()
    out = {}
    if burst is not None:
        out["burst"] = burst
    if latencies:
        out["latency_ms"] = {"objects": len(latencies), **quantiles(latencies)}
    out["memory_mib"] = {"objects": max(total, args.burst + args.latency_objects), "idle_rss": round(idle_rss, 1),
                         "rss": round(rss, 1), "peak_rss": round(hwm, 1),
                         "burst_converge_s": round(converge_s, 1), "burst_objects": more}
    return out


def quantiles(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"p50": round(statistics.median(values), 1), "p99": round(q[98], 1),
            "min": round(min(values), 1), "max": round(max(values), 1)}


async def run_burst(args, api, model: str, version: str) -> dict:
    """Create `args.burst` ModelDeployments at once (`--burst-rate R`: the i-th at i/R seconds);
    wait until each is fully reconciled."""
    n = args.burst
    names = [f"burst-{i:04d}" for i in range(n)]
    created: dict[str, float] = {}
    api.play_kserve(args.kserve_ready)
    done_map = api.md_ready if args.kserve_ready else api.md_observed
    sem = asyncio.Semaphore(32)

    async def create(i: int, name: str) -> None:
        if args.burst_rate:
            await asyncio.sleep(max(0.0, started + i / args.burst_rate - time.perf_counter()))
        async with sem:
            await api.create(md(name, model, version))
            created[name] = time.perf_counter()
            if args.kserve_ready and api.name == "emulator":
                asyncio.ensure_future(mark_when_created(name))

    async def mark_when_created(name: str) -> None:
        await wait_for(lambda: name in api.isvc_created, timeout=600)
        await api.mark_ready(name)

    before = api.request_counts()
    started = time.perf_counter()
    await asyncio.gather(*(create(i, name) for i, name in enumerate(names)))
    created_s = time.perf_counter() - started
    try:
        await wait_for(lambda: all(x in api.isvc_created and x in done_map for x in names), timeout=600)
    except TimeoutError:
        missing = [x for x in names if x not in api.isvc_created or x not in done_map]
        raise TimeoutError(f"burst: {len(missing)} of {n} not reconciled after 600 s, e.g. {missing[:3]}")
    last = max(max(api.isvc_created[x], done_map[x]) for x in names)
    out = {"objects": n, "burst_rate": args.burst_rate or None, "create_s": round(created_s, 2),
           "reconciled_s": round(last - started, 2),
           "per_second": round(n / (last - started), 1),
           "create_to_isvc_ms": quantiles([(api.isvc_created[x] - created[x]) * 1000 for x in names]),
           "create_to_observed_ms": quantiles([(api.md_observed[x] - created[x]) * 1000 for x in names])}
    if args.kserve_ready:
        out["create_to_ready_ms"] = quantiles([(api.md_ready[x] - created[x]) * 1000 for x in names])
    if before is not None:  # every client's requests, the benchmark's creates and watches included
        await asyncio.sleep(1)
        after = api.request_counts()
        diff = {k: round((v - before.get(k, 0.0)) / n, 2) for k, v in after.items()}
        out["api_requests_per_object"] = dict(sorted(((k, v) for k, v in diff.items() if v >= 0.01),
                                                     key=lambda kv: -kv[1]))
    if getattr(api, "watch_restarts", 0):
        out["watch_restarts"] = api.watch_restarts  # times after a restart are when the re-list saw them
    api.play_kserve(False)
    return out


async def run_all(args) -> dict:
    from modelops.local.mlflow_server import MlflowServer

    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    mlflow = MlflowServer(work / "mlflow").start()
    try:
        model, version = prepare_model(mlflow.url)
        backends = {"emulator": [EmulatorBackend], "real": [RealBackend],
                    "both": [EmulatorBackend, RealBackend]}[args.api]
        return {b.name: await bench(args, b, mlflow, model, version, work) for b in backends}
    finally:
        mlflow.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", choices=["emulator", "real", "both"], default="both")
    ap.add_argument("--latency-objects", type=int, default=100)
    ap.add_argument("--memory-objects", type=int, default=1000)
    ap.add_argument("--burst", type=int, default=0, metavar="N",
                    help="first create N ModelDeployments at once and time their reconciliation")
    ap.add_argument("--burst-rate", type=float, default=0, metavar="R",
                    help="create the burst's objects at R per second (default 0: as fast as the client can)")
    ap.add_argument("--kserve-ready", action="store_true",
                    help="with --burst: play KServe (mark each InferenceService Ready), wait for phase Ready")
    ap.add_argument("--operator-profile", metavar="FILE",
                    help="record the operator during the burst with py-spy (next to this Python): collapsed stacks")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run_all(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
