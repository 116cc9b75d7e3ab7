#!/usr/bin/env python
"""Side-by-side predictor benchmark, one run, same machine, same models, same client.

For a PyTorch MLP (64 -> 256 -> 256 -> 10) and a CNN (five conv-BN-ReLU blocks on 3x64x64;
scripts/bench_models.py) registered in a local MLflow server, compares:
  modelops     our predictor (`modelops serve` on the converted ONNX)
  modelops-binary  the same, the input sent in the V2 binary tensor extension (a JSON header,
               then the tensor's raw bytes: what a client of image-sized tensors sends)
  kserve-onnx-binary  kserve-onnx, the same binary requests
  kserve-onnx  a plain kserve.ModelServer wrapping the same onnxruntime session
  kserve-torch a plain kserve.ModelServer running the original PyTorch model
  mlflow       `mlflow models serve` for the same MLflow model version
  ort-inproc   onnxruntime called in process, batch 1 (no serving path at all)
With --auth-kubeconfig (an admin kubeconfig of a real API server, e.g. `$(../shared/k8s/start)`),
also `modelops+auth` (`--auth kubernetes`, audit lines on, as deployed) and `modelops+auth-noaudit`,
right after `modelops` in the same run: a ServiceAccount token bound by RBAC on every request.
With `--servers shadow-cost` (alone or with others): the cost of shadow mirroring to the stable
predictor: one stable `modelops serve --shadow-config FILE` and a second predictor (the candidate,
same model), FILE rewritten between alternating c=16 rounds: off, 10%, 100% (both predictors and
the client share this machine's cores: the candidate's work is counted against the stable here,
which a separate candidate Pod would not be). `--shadow-pin`: the candidate on the last core
(`taskset`), the stable and the client on the others, in every round alike: what mirroring costs
the stable itself, as with a candidate in its own Pod.
Each server runs alone (one process, started and stopped in turn) and gets batch-1 JSON
requests from a closed-loop client at concurrency 1 and 16. Ratios are against `mlflow`.

    .venv/bin/python scripts/bench_predictor.py [--duration 5] [--out bench.json] [--auth-kubeconfig K]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

warnings.filterwarnings("ignore")

from modelops.bench.loadgen import run_load, wait_ready  # noqa: E402
from modelops.conversion import ConversionOptions, convert_and_publish  # noqa: E402
from modelops.demo import models  # noqa: E402
from modelops.local.mlflow_server import MlflowServer  # noqa: E402
from modelops.local.ports import free_port  # noqa: E402
from modelops.local.processes import spawn, stop  # noqa: E402
from modelops.registry import Registry  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models  # noqa: E402

PY = sys.executable
CONCURRENCY = (1, 16)


def start(cmd: list[str], ready_url: str, log: Path, env=None) -> subprocess.Popen:
    proc = spawn(cmd, log, env)
    try:
        wait_ready(ready_url, timeout=180, proc=proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"{cmd[:4]} did not start; see {log}")
    return proc


def v2_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()


def v2_binary(x: np.ndarray) -> tuple[bytes, dict]:
    """A V2 request in the binary tensor extension: (body, headers)."""
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes(), {"inference-header-content-length": str(len(header)),
                                  "content-type": "application/octet-stream"}


def measure(name: str, url: str, body: bytes, duration: float, headers: dict | None = None) -> dict:
    out = {}
    for c in CONCURRENCY:
        r = run_load(url, body, headers, concurrency=c, requests=10**9, duration=duration, warmup=50)
        if r.errors:
            raise RuntimeError(f"{name}: {r.errors} failed requests at concurrency {c}")
        out[c] = r.to_json()
        print(f"  {name:13s} c={c:<3d} {r.rps:8.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms",
              flush=True)
    return out


def inproc(onnx_dir: Path, x: np.ndarray, duration: float) -> dict:
    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input": x}
    for _ in range(100):
        sess.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    lat = []
    while time.perf_counter() - t0 < duration:
        t = time.perf_counter()
        sess.run(None, feeds)
        lat.append(time.perf_counter() - t)
        n += 1
    el = time.perf_counter() - t0
    lat = np.array(lat) * 1000
    r = {"rps": round(n / el, 1), "p50_ms": round(float(np.percentile(lat, 50)), 4),
         "p99_ms": round(float(np.percentile(lat, 99)), 4)}
    print(f"  {'ort-inproc':13s} c=1   {r['rps']:8.0f} calls/s p50 {r['p50_ms']:7.3f} ms", flush=True)
    return {1: r}


def kube_auth(kubeconfig: str, work: Path, deployment: str) -> tuple[list[str], dict]:
    """ServiceAccounts and RBAC on a real API server: (the predictor's auth flags, a caller's header)."""
    import base64
    import uuid

    import yaml

    def kubectl(*args, stdin=None):
        return subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True,
                              text=True, check=True).stdout.strip()

    ns = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    for sa in ("predictor", "caller"):
        kubectl("-n", ns, "create", "serviceaccount", sa)
    kubectl("create", "clusterrolebinding", f"{ns}-auth", "--clusterrole=system:auth-delegator",
            f"--serviceaccount={ns}:predictor")
    rbac = [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "p", "namespace": ns},
             "rules": [{"apiGroups": ["modelops.dev"], "resources": ["modeldeployments/predict"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "p", "namespace": ns},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "p"},
             "subjects": [{"kind": "ServiceAccount", "name": "caller", "namespace": ns}]}]
    for obj in rbac:
        kubectl("apply", "-f", "-", stdin=json.dumps(obj))
    cluster = yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]
    (work / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    (work / "token").write_text(kubectl("-n", ns, "create", "token", "predictor", "--duration=2h"))
    caller = kubectl("-n", ns, "create", "token", "caller", "--duration=2h", "--audience=modelops.dev/predict")
    flags = ["--auth", "kubernetes", "--auth-namespace", ns, "--auth-deployment", deployment,
             "--kube-api-url", cluster["server"], "--kube-token-file", str(work / "token"),
             "--kube-ca-file", str(work / "ca.crt")]
    return flags, {"authorization": f"Bearer {caller}"}


def bench_model(label: str, register, shape, tracking: str, work: Path, duration: float,
                auth_kubeconfig: str | None = None, only: list[str] | None = None) -> dict:
    reg = Registry(tracking)
    version = register(tracking, label)
    resolved = reg.resolve_version(label, version=version)
    onnx_dir = work / f"{label}-onnx"
    convert_and_publish(reg, resolved, ConversionOptions(), out_dir=onnx_dir)
    src_dir = reg.download(resolved, work / f"{label}-src")
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    body = v2_body(x)
    results = {}
    print(f"{label}: input {list(x.shape)}", flush=True)

    port = free_port()  # each server gets a fresh port below; this one is a placeholder
    ours = [PY, "-m", "modelops.cli", "serve", str(onnx_dir), "--name", label, "--http-port", str(port),
            "--grpc-port", "0"]
    binary, binary_headers = v2_binary(x)
    servers = {"modelops": (ours, f"/v2/models/{label}/infer", body, {}),
               "modelops-binary": (ours, f"/v2/models/{label}/infer", binary, {})}
    headers: dict[str, dict] = {"modelops-binary": binary_headers, "kserve-onnx-binary": binary_headers}
    if auth_kubeconfig:
        flags, headers["modelops+auth"] = kube_auth(auth_kubeconfig, work, label)
        headers["modelops+auth-noaudit"] = headers["modelops+auth"]
        servers["modelops+auth"] = ([*ours, *flags], f"/v2/models/{label}/infer", body, {})
        servers["modelops+auth-noaudit"] = ([*ours, *flags, "--audit", "off"], f"/v2/models/{label}/infer", body, {})
    plain = [PY, "-m", "modelops.bench.baselines", "kserve-onnx", str(onnx_dir), "--name", label, "--port", str(port)]
    servers |= {
        "kserve-onnx": (plain, f"/v2/models/{label}/infer", body, {}),
        "kserve-onnx-binary": (plain, f"/v2/models/{label}/infer", binary, {}),
        "kserve-torch": ([PY, "-m", "modelops.bench.baselines", "kserve-torch", str(src_dir),
                          "--name", label, "--port", str(port)], f"/v2/models/{label}/infer", body, {}),
        "mlflow": ([PY, "-m", "mlflow", "models", "serve", "-m", f"models:/{label}/{version}",
                    "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"],
                   "/invocations", json.dumps({"inputs": x.tolist()}).encode(),
                   # mlflow execs `uvicorn` by name: the venv's bin must be on PATH.
                   {"MLFLOW_TRACKING_URI": tracking,
                    "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"}),
    }
    for name, (cmd, path, req, env) in servers.items():
        if only and name not in only:
            continue
        fresh = free_port()
        cmd = [str(fresh) if a == str(port) else a for a in cmd]
        ready = f"http://127.0.0.1:{fresh}" + ("/ping" if name == "mlflow" else "/v2/health/ready")
        proc = start(cmd, ready, work / f"{label}-{name}.log", env)
        try:
            results[name] = measure(name, f"http://127.0.0.1:{fresh}{path}", req, duration, headers.get(name))
        finally:
            stop(proc)
        time.sleep(0.5)
    if auth_kubeconfig:
        results["auth-cost"] = auth_cost(label, ours, servers, headers, body, work, duration)
    if only and "shadow-cost" in only:
        results["shadow-cost"] = shadow_cost(label, onnx_dir, body, work, duration, SHADOW_ROUNDS)
    if not only or "ort-inproc" in only:
        results["ort-inproc"] = inproc(onnx_dir, x, duration)
    return results


def auth_cost(label: str, ours: list[str], servers: dict, headers: dict, body: bytes, work: Path,
              duration: float, rounds: int = 6) -> dict:
    """The three modelops variants up at once, measured in alternation (`rounds` short rounds at
    c=16, the order rotating): on a shared, loaded machine, drift hits all of them alike. The
    median of the per-round throughput ratios against plain `modelops`."""
    names = ["modelops", "modelops+auth", "modelops+auth-noaudit"]
    procs, urls = [], {}
    try:
        for name in names:
            port = free_port()
            cmd = [str(port) if a == ours[ours.index("--http-port") + 1] else a for a in servers[name][0]]
            procs.append(start(cmd, f"http://127.0.0.1:{port}/v2/health/ready", work / f"{label}-alt-{name}.log"))
            urls[name] = f"http://127.0.0.1:{port}/v2/models/{label}/infer"
        per_round: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % 3:] + names[:r % 3]
            for name in order:
                res = run_load(urls[name], body, headers.get(name), concurrency=16, requests=10**9,
                               duration=max(1.0, duration / 3), warmup=50)
                if res.errors:
                    raise RuntimeError(f"{name}: {res.errors} failed requests")
                per_round[name].append(res.rps)
    finally:
        for proc in procs:
            stop(proc)
    out = {"rounds": rounds, "rps": per_round}
    for name in names[1:]:
        out[name] = round(statistics.median_high(a / b for a, b in zip(per_round[name], per_round["modelops"])), 3)
        print(f"  {name} / modelops at c=16 (median of {rounds} alternating rounds): {out[name]:.1%}", flush=True)
    return out


SHADOW_MODES = {"off": None, "10%": 10, "100%": 100}


SHADOW_PIN = False  # --shadow-pin
SHADOW_ROUNDS = 6  # --shadow-rounds


def shadow_cost(label: str, onnx_dir: Path, body: bytes, work: Path, duration: float, rounds: int = 6) -> dict:
    """Mirroring off vs on (10%, 100% of requests to a second predictor), one stable process
    reconfigured through its watched file between alternating c=16 rounds (the order rotating):
    the median per-round throughput ratio and p50 difference against `off`, and what the stable
    counted (modelops_shadow_mirrored_total by result, comparisons by outcome)."""
    config = work / f"{label}-shadow.json"
    config.write_text("{}")
    procs, urls = [], {}
    cpus = sorted(os.sched_getaffinity(0))
    pinned = SHADOW_PIN and len(cpus) >= 2
    cores = {"candidate": cpus[-1:], "stable": cpus[:-1]} if pinned else {}
    before = set(cpus)
    try:
        if pinned:
            os.sched_setaffinity(0, cores["stable"])  # the client (this process) shares the stable's cores
            print(f"  shadow-cost pinned: candidate on cpu {cores['candidate']}, stable and client on "
                  f"{cores['stable']}", flush=True)
        for role, extra in (("candidate", []), ("stable", ["--shadow-config", str(config)])):
            port = free_port()
            pin = ["taskset", "-c", ",".join(map(str, cores[role]))] if pinned else []
            procs.append(start([*pin, PY, "-m", "modelops.cli", "serve", str(onnx_dir), "--name", label,
                                "--http-port", str(port), "--grpc-port", "0", *extra],
                               f"http://127.0.0.1:{port}/v2/health/ready", work / f"{label}-shadow-{role}.log"))
            urls[role] = f"http://127.0.0.1:{port}"
        modes = list(SHADOW_MODES)
        rps: dict[str, list[float]] = {m: [] for m in modes}
        p50: dict[str, list[float]] = {m: [] for m in modes}
        cpu_us: dict[str, list[float]] = {m: [] for m in modes}  # the stable's CPU time per answered request
        import psutil  # a test dependency, like httpx below

        stable = psutil.Process(procs[-1].pid)
        for r in range(rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:
                percent = SHADOW_MODES[mode]
                doc = {} if percent is None else {
                    "candidate": {"url": urls["candidate"], "model": label, "version": f"{percent}pct"},
                    "percent": percent, "queueSize": 64, "timeoutMs": 2000}
                config.write_text(json.dumps(doc))
                time.sleep(1.5)  # the stable polls its file every second
                t0 = sum(stable.cpu_times()[:2])
                res = run_load(f"{urls['stable']}/v2/models/{label}/infer", body, None, concurrency=16,
                               requests=10**9, duration=max(1.0, duration / 3), warmup=50)
                if res.errors:
                    raise RuntimeError(f"shadow-cost {mode}: {res.errors} failed requests")
                cpu_us[mode].append((sum(stable.cpu_times()[:2]) - t0) * 1e6 / (res.requests + 50))  # + the warm-up
                rps[mode].append(res.rps)
                p50[mode].append(res.p50_ms)
        config.write_text("{}")
        time.sleep(3)  # the last copies land
        import httpx

        text = httpx.get(f"{urls['stable']}/metrics").text
    finally:
        for proc in procs:
            stop(proc)
        os.sched_setaffinity(0, before)
    out = {"rounds": rounds, "pinned": pinned, "rps": rps, "p50_ms": p50, "cpu_us_per_request": cpu_us,
           "counted": {}}
    for mode in modes[1:]:
        # per-round pairs (the same round's off), then the (upper) median of the pairs
        out[mode] = {"throughput_ratio": round(statistics.median_high(a / b for a, b in zip(rps[mode], rps["off"])), 3),
                     "p50_delta_ms": round(statistics.median_high(a - b for a, b in zip(p50[mode], p50["off"])), 3),
                     "cpu_us_per_request_delta": round(statistics.median_high(
                         a - b for a, b in zip(cpu_us[mode], cpu_us["off"])), 1),
                     "cpu_us_per_request_off": round(statistics.median_high(cpu_us["off"]), 1)}
        cand = f"{SHADOW_MODES[mode]}pct"
        out["counted"][mode] = {k: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                       if line.startswith(metric) and f'candidate="{cand}"' in line
                                       and f'"{k}"' in line)
                                for metric, keys in (("modelops_shadow_mirrored_total", ("sent", "dropped", "failed")),
                                                     ("modelops_shadow_comparisons_total", ("agree", "disagree")))
                                for k in keys}
        print(f"  shadow {mode:>4s} / off at c=16 (median of {rounds} alternating rounds): "
              f"{out[mode]['throughput_ratio']:.1%} throughput, p50 {out[mode]['p50_delta_ms']:+.3f} ms, "
              f"stable CPU {out[mode]['cpu_us_per_request_delta']:+.1f} us/request "
              f"(off: {out[mode]['cpu_us_per_request_off']:.1f}); "
              f"counted {out['counted'][mode]}", flush=True)
    return out


def table(all_results: dict) -> str:
    lines = ["| model | server | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=16 req/s | c=16 p50 ms | c=16 p99 ms "
             "| c=16 vs mlflow | c=16 vs kserve-onnx (-binary) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, res in all_results.items():
        res = {k: v for k, v in res.items() if k not in ("auth-cost", "shadow-cost")}
        base = res["mlflow"][16]["rps"] if "mlflow" in res else None
        plain = res["kserve-onnx"][16]["rps"] if "kserve-onnx" in res else None
        for name, r in res.items():
            c1, c16 = r[1], r.get(16)
            if c16 is None:
                lines.append(f"| {model} | {name} (calls/s) | {c1['rps']:.0f} | {c1['p50_ms']:.3f} | "
                             f"{c1['p99_ms']:.3f} | | | | | |")
                continue
            # Binary requests against the plain server's binary requests (mlflow has no binary form).
            binary = name.endswith("-binary")
            ref = res.get("kserve-onnx-binary", {}).get(16, {}).get("rps") if binary else plain
            vs_base = f"{c16['rps'] / base:.2f}x" if base and not binary else ""
            vs_plain = f"{c16['rps'] / ref:.2f}x" if ref else ""
            lines.append(f"| {model} | {name} | {c1['rps']:.0f} | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | "
                         f"{c16['rps']:.0f} | {c16['p50_ms']:.2f} | {c16['p99_ms']:.2f} | "
                         f"{vs_base} | {vs_plain} |")
    for model, res in all_results.items():
        inproc_rps = res.get("ort-inproc", {}).get(1, {}).get("rps")
        for name in ("modelops", "modelops-binary"):
            if inproc_rps and name in res:
                lines.append(f"\n{model}: {name} at c=16 = {res[name][16]['rps'] / inproc_rps:.0%} of in-process "
                             f"onnxruntime batch-1 calls/s ({inproc_rps:.0f})")
        for name in ("modelops+auth", "modelops+auth-noaudit"):
            if name in res.get("auth-cost", {}):
                ratio = res["auth-cost"][name]
                lines.append(f"\n{model}: {name} at c=16 = {ratio:.1%} of modelops' throughput "
                             f"(median of alternating rounds; {1 - ratio:+.1%} cost)")
        for mode in list(SHADOW_MODES)[1:]:
            if mode in res.get("shadow-cost", {}):
                r = res["shadow-cost"][mode]
                lines.append(f"\n{model}: shadow mirroring {mode} at c=16 = {r['throughput_ratio']:.1%} of the "
                             f"stable's throughput without it, p50 {r['p50_delta_ms']:+.3f} ms "
                             f"(median of alternating rounds; counted {res['shadow-cost']['counted'][mode]})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--models", default="mlp,cnn", help="mlp, cnn (scripts/bench_models.py: issue 17's "
                   "shapes), mlp-demo, cnn-demo (the demo's small models)")
    p.add_argument("--out", default=None, help="write the results as JSON")
    p.add_argument("--servers", default=None, help="only these servers (comma-separated), e.g. modelops,modelops+auth; "
                                                   "shadow-cost: the mirroring cost (off vs 10%% vs 100%%)")
    p.add_argument("--auth-kubeconfig", default=None,
                   help="admin kubeconfig of a real API server: also measure --auth kubernetes")
    p.add_argument("--shadow-pin", action="store_true",
                   help="shadow-cost: the candidate on its own core, the stable and the client on the others")
    p.add_argument("--shadow-rounds", type=int, default=6,
                   help="shadow-cost: alternating rounds (each mode duration/3 seconds per round)")
    args = p.parse_args(argv)
    global SHADOW_PIN, SHADOW_ROUNDS
    SHADOW_PIN, SHADOW_ROUNDS = args.shadow_pin, args.shadow_rounds
    specs = {"mlp": (bench_models.register_mlp, bench_models.MLP_SHAPE),
             "cnn": (bench_models.register_cnn, bench_models.CNN_SHAPE),
             "mlp-demo": (models.register_torch_mlp, (models.MLP_FEATURES,)),
             "cnn-demo": (models.register_torch_cnn, models.CNN_SHAPE)}
    with tempfile.TemporaryDirectory(prefix="modelops-bench-") as tmp:
        work = Path(tmp)
        with MlflowServer(work / "mlflow") as server:
            results = {m: bench_model(m, *specs[m], server.url, work, args.duration, args.auth_kubeconfig,
                                      args.servers.split(",") if args.servers else None)
                       for m in args.models.split(",")}
    print()
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
