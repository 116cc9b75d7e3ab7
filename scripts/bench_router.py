#!/usr/bin/env python
"""Local router overhead: the same predictor called directly and through `modelops.local.router`.

One run, same machine, same model (the demo MLP, registered in a local MLflow server and converted
by the real pipeline), same closed-loop client (batch-1 JSON V2 requests, `modelops.bench.loadgen`),
at concurrency 1 and 16:
  direct        the predictor (`modelops serve`) on its own port
  router        the router in front of it, 100% to that predictor
  router-split  the router splitting 90/10 between it and a second predictor of the same model
                (a canary at 10%)
Measurements alternate (direct, router, router-split, direct, ...) for `--rounds` rounds, so slow
and fast moments of a shared machine hit every target alike; the table gives the median round.

    .venv/bin/python scripts/bench_router.py [--duration 5] [--rounds 3] [--out bench-router.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np

warnings.filterwarnings("ignore")

from modelops.bench.loadgen import run_load, wait_ready  # noqa: E402
from modelops.conversion import ConversionOptions, convert_and_publish  # noqa: E402
from modelops.demo import models  # noqa: E402
from modelops.local.mlflow_server import MlflowServer  # noqa: E402
from modelops.local.ports import free_port  # noqa: E402
from modelops.local.processes import spawn, stop  # noqa: E402
from modelops.registry import Registry  # noqa: E402

PY = sys.executable
NAME = "bench-mlp"
CONCURRENCY = (1, 16)


def start_predictor(onnx_dir: Path, version: str, work: Path):
    port = free_port()
    proc = spawn([PY, "-m", "modelops.cli", "serve", str(onnx_dir), "--name", NAME, "--model-version", version,
                  "--http-port", str(port), "--grpc-port", "0"], work / f"predictor-{version}.log")
    wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", timeout=180, proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    procs = []
    with tempfile.TemporaryDirectory(prefix="modelops-bench-router-") as tmp:
        work = Path(tmp)
        with MlflowServer(work / "mlflow") as server:
            reg = Registry(server.url)
            version = models.register_torch_mlp(server.url, NAME)
            onnx_dir = work / "onnx"
            convert_and_publish(reg, reg.resolve_version(NAME, version=version), ConversionOptions(),
                                out_dir=onnx_dir)
        try:
            one, direct = start_predictor(onnx_dir, "1", work)
            two, canary = start_predictor(onnx_dir, "2", work)
            procs += [one, two]
            port, admin = free_port(), free_port()
            procs.append(spawn([PY, "-m", "modelops.local.router", "--port", str(port), "--admin-port", str(admin)],
                               work / "router.log"))
            wait_ready(f"http://127.0.0.1:{admin}/healthz", timeout=60, proc=procs[-1])
            router = f"http://127.0.0.1:{port}"

            def routes(*r):
                httpx.put(f"http://127.0.0.1:{admin}/routes", json={"routes": [
                    {"version": v, "url": u, "weight": w} for v, u, w in r]}).raise_for_status()

            x = np.random.default_rng(0).normal(size=(1, models.MLP_FEATURES)).astype(np.float32)
            body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                           "data": x.ravel().tolist()}]}).encode()
            targets = {
                "direct": (direct, lambda: None),
                "router": (router, lambda: routes(("1", direct, 100))),
                "router-split": (router, lambda: routes(("1", direct, 90), ("2", canary, 10))),
            }
            runs: dict = {t: {c: [] for c in CONCURRENCY} for t in targets}
            for rnd in range(args.rounds):
                for c in CONCURRENCY:
                    for name, (url, setup) in targets.items():
                        setup()
                        r = run_load(f"{url}/v2/models/{NAME}/infer", body, concurrency=c, requests=10**9,
                                     duration=args.duration, warmup=100)
                        if r.errors:
                            raise RuntimeError(f"{name}: {r.errors} failed requests at concurrency {c}")
                        runs[name][c].append(r.to_json())
                        print(f"  round {rnd + 1} {name:13s} c={c:<3d} {r.rps:8.0f} req/s  p50 {r.p50_ms:6.2f} ms"
                              f"  p99 {r.p99_ms:6.2f} ms", flush=True)
                        time.sleep(0.3)
        finally:
            for proc in procs:
                stop(proc)

    def median(name, c, key):
        return statistics.median(r[key] for r in runs[name][c])

    lines = ["| path | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=16 req/s | c=16 p50 ms | c=16 p99 ms "
             "| c=1 p50 added | c=16 req/s vs direct |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in targets:
        added = median(name, 1, "p50_ms") - median("direct", 1, "p50_ms")
        ratio = median(name, 16, "rps") / median("direct", 16, "rps")
        lines.append(f"| {name} | {median(name, 1, 'rps'):.0f} | {median(name, 1, 'p50_ms'):.2f} | "
                     f"{median(name, 1, 'p99_ms'):.2f} | {median(name, 16, 'rps'):.0f} | "
                     f"{median(name, 16, 'p50_ms'):.2f} | {median(name, 16, 'p99_ms'):.2f} | "
                     f"{'' if name == 'direct' else f'+{added:.2f} ms'} | "
                     f"{'' if name == 'direct' else f'{ratio:.2f}x'} |")
    print()
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
