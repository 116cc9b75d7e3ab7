"""What one mirrored copy costs the stable predictor's process, measured in process.

`scripts/bench_predictor.py --servers shadow-cost` measures mirroring end to end (throughput and
p50 at c=16, off vs on); on a 2-core machine shared by client, stable and candidate its rounds
vary by +-20%, more than the mirror costs at 10%. This measures the mirror alone: the demo's MLP
converted to ONNX, a real candidate `modelops serve` process, and in this process (uvloop, as
the predictor runs) the stable side's `shadow.Mirror`, offered copies at a steady rate through
`Mirror.offer`, the request path's only call. Reported: this process's CPU time per copy (user +
system, less the same pacing loop without a mirror), every copy compared. Run it for two
revisions side by side (PYTHONPATH=<other checkout>/platform) to compare them.

    .venv/bin/python scripts/bench_shadow.py [--rates 300,3000] [--seconds 5] [--perturb]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import uvloop

from modelops.bench.loadgen import wait_ready
from modelops.demo import models
from modelops.local.ports import free_port
from modelops.local.processes import spawn, stop
from modelops.serving import shadow


def export_mlp(out: Path) -> np.ndarray:
    model = models.train_mlp(seed=0, epochs=2).eval()
    x = np.random.default_rng(0).standard_normal((1, models.MLP_FEATURES)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.from_numpy(x),), str(out / "model.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    return x


async def pace(rate: float, seconds: float, each) -> int:
    """Call EACH `rate` times a second for SECONDS, in 1 ms ticks; how many calls."""
    n, start = 0, time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) * rate) - n
        for _ in range(due):
            each()
        n += due
        await asyncio.sleep(0.001)
    return n


async def measure(url: str, x: np.ndarray, stable_out: np.ndarray, rate: float, seconds: float,
                  work: Path) -> dict:
    cfg = work / f"shadow-{rate:g}.json"
    cfg.write_text(json.dumps({"candidate": {"url": url, "model": "m", "version": f"r{rate:g}"},
                               "percent": 100, "queueSize": 64, "timeoutMs": 2000}))
    mirror = shadow.Mirror(cfg, "m", f"stable-{rate:g}")
    mirror.poll()
    gen = mirror._gen
    feeds, names, outputs = {"input": x}, ["logits"], [stable_out]
    t0 = time.process_time()
    copies = await pace(rate, seconds, lambda: mirror.offer(feeds, names, outputs))
    while gen.agree._value.get() + gen.disagree._value.get() + gen.failed._value.get() \
            + gen.dropped._value.get() < copies:
        await asyncio.sleep(0.005)
    cpu = time.process_time() - t0
    counted = {k: getattr(gen, k)._value.get() for k in ("agree", "disagree", "failed", "dropped")}
    await gen.close()
    t1 = time.process_time()  # the same pacing without a mirror
    await pace(rate, seconds, lambda: None)
    idle = time.process_time() - t1
    return {"rate": rate, "copies": copies, "cpu_us_per_copy": round((cpu - idle) * 1e6 / copies, 1),
            "counted": counted}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="300,3000", help="copies per second (10%% and 100%% of ~3,000 req/s)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--perturb", action="store_true",
                   help="the stable's answers 1e-4 off the candidate's (compared, not identical)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelops-bench-shadow-") as tmp:
        work = Path(tmp)
        x = export_mlp(work / "onnx")
        port = free_port()
        proc = spawn([sys.executable, "-m", "modelops.cli", "serve", str(work / "onnx"), "--name", "m",
                      "--http-port", str(port), "--grpc-port", "0"], work / "candidate.log")
        try:
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", timeout=120, proc=proc)
            import onnxruntime as ort

            y = ort.InferenceSession(str(work / "onnx" / "model.onnx")).run(None, {"input": x})[0]
            if args.perturb:
                y = y + np.float32(1e-4)

            async def run_all():
                out = []
                for rate in (float(r) for r in args.rates.split(",")):
                    res = await measure(f"http://127.0.0.1:{port}", x, y, rate, args.seconds, work)
                    print(f"{shadow.__file__}: {rate:g} copies/s: {res['cpu_us_per_copy']} us of CPU per copy "
                          f"({res['copies']} copies: {res['counted']})", flush=True)
                    out.append(res)
                return out

            results = uvloop.run(run_all())
        finally:
            stop(proc)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
