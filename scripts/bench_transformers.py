#!/usr/bin/env python
"""Transformer serving benchmark: one run, side by side, this machine, seeded models built here.

A BERT-class text classifier (`modelops.demo.text_models`, shape `minilm` = 6 layers x 384 or
`bert-base` = 12 x 768, random weights, its head trained a few steps so labels vary) saved as an
MLflow `transformers` model, converted by `convert_model_dir` (fp32 and int8 with transformer
fusion, the default; fp32 plain, `--no-fusion`), then:

  torch-inproc  the HF model's forward in process, batch 1            (ceiling)
  ort-inproc    onnxruntime in process on the converted graph, batch 1 (ceiling): fused fp32,
                plain fp32 (-plain) and int8 (fused)
  kserve-hf     a plain `kserve.Model` running the HF pipeline (text in)
  kserve-onnx   a plain `kserve.Model` around an onnxruntime session (token ids in)
  modelops      `modelops serve` fused fp32, text in (tokenizer + dynamic batching in the predictor)
  modelops-plain the same on the plain (unfused) fp32 graph
  modelops-ids  the same server, token-id tensors in (clients that tokenize themselves)
  modelops-int8 `modelops serve` on the int8 conversion, text in
  mlserver-hf   MLServer 1.7.1 + `mlserver-huggingface` (`HuggingFaceRuntime`, task
                text-classification) on the same HF weights and tokenizer, text in; its own
                venv (its pins conflict with ours: transformers < 4.42), made by
                `scripts/mlserver_venv.sh` at $MLSERVER_VENV (default /work/mlserver-venv);
                skipped with a line when that venv is missing. MLServer's defaults as KServe's
                `kserve-mlserver` runtime leaves them: one parallel inference worker, no
                adaptive batching (max_batch_size 0).

Workloads: `seq128` (every request one text of exactly 128 tokens) and `mixed` (texts of 8 to 256
tokens in turn), closed-loop clients at concurrency 1 and 16, one request = one sequence.

    .venv/bin/python scripts/bench_transformers.py --shape minilm [--duration 4] [--out f.json]
        [--servers mlserver-hf,kserve-hf]   # only these (in-process ceilings: torch-inproc, ort-inproc)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

from modelops.bench.loadgen import run_load, wait_ready  # noqa: E402
from modelops.local.ports import free_port  # noqa: E402
from modelops.local.processes import spawn, stop  # noqa: E402

PY = sys.executable
CONCURRENCY = (1, 16)
SERVERS = ("torch-inproc", "ort-inproc", "modelops", "modelops-plain", "modelops-ids", "modelops-int8", "kserve-onnx",
           "kserve-hf", "mlserver-hf")
MLSERVER_VENV = Path(os.environ.get("MLSERVER_VENV", "/work/mlserver-venv"))


def texts_of(tokens: int, n: int, seed: int) -> list[str]:
    """Texts of exactly `tokens` tokens ([CLS] and [SEP] included): every word is one token."""
    from modelops.words import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(tokens - 2)) for _ in range(n)]


def workloads(seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    mixed = [texts_of(rng.randint(8, 256), 1, seed + i)[0] for i in range(64)]
    return {"seq128": texts_of(128, 16, seed), "mixed": mixed}


def text_body(text: str) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}).encode()


def mlserver_body(text: str) -> bytes:
    """MLServer's HF runtime: inputs become the pipeline's arguments by name; `args` (a `str`
    BYTES tensor) the positional text, `truncation` (an `hg_json` value) a keyword, as
    kserve-hf passes truncation=True itself (without it a text over the model's length is a 500)."""
    return json.dumps({"inputs": [
        {"name": "args", "datatype": "BYTES", "shape": [1], "data": [text], "parameters": {"content_type": "str"}},
        {"name": "truncation", "datatype": "BYTES", "shape": [1], "data": ["true"],
         "parameters": {"content_type": "hg_json"}}]}).encode()


def ids_body(frontend, text: str) -> bytes:
    feeds = frontend.encode([text])
    return json.dumps({"inputs": [{"name": k, "datatype": "INT64", "shape": list(v.shape),
                                   "data": v.ravel().tolist()} for k, v in feeds.items()]}).encode()


def timed(fn, duration: float) -> dict:
    for _ in range(3):
        fn()
    lat, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < duration:
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    el = time.perf_counter() - t0
    lat = np.array(lat) * 1000
    return {"rps": round(len(lat) / el, 2), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def ceilings(pipe, onnx_dirs: dict[str, Path], texts: list[str], duration: float) -> dict:
    import onnxruntime as ort
    import torch

    from modelops.text import TextFrontend

    out = {}
    if pipe is not None:
        batch = pipe.tokenizer(texts[0], return_tensors="pt", truncation=True)
        with torch.no_grad():
            out["torch-inproc"] = {1: timed(lambda: pipe.model(**batch), duration)}
    for label, d in onnx_dirs.items():
        sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = TextFrontend(d).encode([texts[0]])
        out[f"ort-inproc{label}"] = {1: timed(lambda: sess.run(None, feeds), duration)}
    for name, r in out.items():
        print(f"  {name:15s} c=1  {r[1]['rps']:8.1f} seq/s  p50 {r[1]['p50_ms']:7.2f} ms", flush=True)
    return out


def agreement(onnx_dirs: dict[str, Path], n: int = 200) -> dict:
    """Top-label agreement of int8 with fp32 on seeded texts (in process, the served path)."""
    import onnxruntime as ort

    from modelops.words import seeded_texts
    from modelops.text import TextFrontend

    texts = seeded_texts(n, seed=99)
    labels = {}
    for label, d in onnx_dirs.items():
        fe, sess = TextFrontend(d), ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        labels[label] = [fe.answer(sess.run(None, fe.encode([t])))[1][0][0] for t in texts]
    agree = float(np.mean([a == b for a, b in zip(labels[""], labels["-int8"])]))
    seen = {lab: labels[""].count(lab) for lab in sorted(set(labels[""]))}
    return {"texts": n, "agreement": agree, "labels_seen_fp32": seen}


def export_pretrained(src: Path, dst: Path) -> Path:
    """One `from_pretrained` directory (config, safetensors weights, tokenizer.json) out of an
    MLflow `transformers` model dir. Written by transformers 5, the files load as they are in
    MLServer's transformers 4.41 (same labels and scores as the MLflow pipeline, checked by hand)."""
    dst.mkdir(parents=True)
    for sub in ("model", "components/tokenizer"):
        for f in (src / sub).iterdir():
            shutil.copy2(f, dst / f.name)
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (dst / f).exists()]
    if missing:
        raise RuntimeError(f"{src}: no {', '.join(missing)} in model/ or components/tokenizer/")
    return dst


def mlserver_repository(work: Path, pretrained: Path, name: str, http_port: int) -> Path:
    """settings.json + <name>/model-settings.json for `mlserver start`. Only ports and paths set:
    parallel_workers 1 is MLServer's default (one inference worker process beside the server)."""
    repo = work / "mlserver-repo"
    (repo / name).mkdir(parents=True)
    settings = {"host": "127.0.0.1", "http_port": http_port, "grpc_port": free_port(), "metrics_port": free_port(),
                "parallel_workers": 1, "metrics_dir": str(work / "mlserver-metrics")}
    (repo / "settings.json").write_text(json.dumps(settings, indent=1))
    model = {"name": name, "implementation": "mlserver_huggingface.HuggingFaceRuntime",
             "parameters": {"extra": {"task": "text-classification", "pretrained_model": str(pretrained)}}}
    (repo / name / "model-settings.json").write_text(json.dumps(model, indent=1))
    return repo


def first_answer(name: str, url: str, body: bytes, labels: bool) -> None:
    """One request by hand before the load: a 200 (for text in, whose body names a label)."""
    import httpx

    from modelops.demo.text_models import LABELS

    r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
    if r.status_code != 200 or (labels and not any(label in r.text for label in LABELS)):
        raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")
    print(f"  {name:15s} answer: {r.text[:160]}", flush=True)


def measure(name: str, url: str, bodies: dict[str, list[bytes]], duration: float) -> dict:
    out = {}
    for workload, body in bodies.items():
        for c in CONCURRENCY:
            r = run_load(url, body, concurrency=c, requests=10**9, duration=duration, warmup=4)
            if r.errors:
                raise RuntimeError(f"{name}: {r.errors} failed requests ({workload}, c={c})")
            out.setdefault(workload, {})[c] = r.to_json()
            print(f"  {name:15s} {workload:6s} c={c:<3d} {r.rps:8.1f} seq/s  p50 {r.p50_ms:8.2f} ms  "
                  f"p99 {r.p99_ms:8.2f} ms", flush=True)
    return out


def bench(shape: str, duration: float, work: Path, selected: tuple[str, ...] = SERVERS) -> dict:
    from modelops.conversion import ConversionOptions, convert_model_dir
    from modelops.demo.text_models import save_text_classifier
    from modelops.text import TextFrontend

    src = save_text_classifier(work / "src", shape=shape, train_steps=20)
    want = set(selected)
    precisions = [("", "fp32")] if want & {"ort-inproc", "modelops", "modelops-ids", "kserve-onnx"} else []
    precisions += [("-plain", "fp32")] if want & {"ort-inproc", "modelops-plain"} else []
    precisions += [("-int8", "int8")] if want & {"ort-inproc", "modelops-int8"} else []
    onnx_dirs, report = {}, {}
    for label, precision in precisions:
        t = time.perf_counter()
        # "" and "-int8": the default conversion (transformer fusion on); "-plain": --no-fusion
        r = convert_model_dir(src, work / f"onnx{label}", ConversionOptions(precision=precision,
                                                                            fusion=label != "-plain"))
        onnx_dirs[label] = work / f"onnx{label}"
        report[precision + label] = {"seconds": round(time.perf_counter() - t, 1), "parity": r.get("parity"),
                                     "fusion": r.get("transformer_optimization")}
        print(f"converted {precision}{label} in {report[precision + label]['seconds']} s", flush=True)
    loads = workloads()
    results = {"conversion": report}
    if "" in onnx_dirs and "-int8" in onnx_dirs:
        results["agreement"] = agreement({k: onnx_dirs[k] for k in ("", "-int8")})
    if want & {"torch-inproc", "ort-inproc"}:
        import mlflow.transformers

        pipe = mlflow.transformers.load_model(str(src)) if "torch-inproc" in want else None
        results |= ceilings(pipe, onnx_dirs if "ort-inproc" in want else {}, loads["seq128"], duration)
        del pipe
    text_bodies = {w: [text_body(t) for t in ts] for w, ts in loads.items()}
    id_bodies = {}
    if "" in onnx_dirs:
        fe = TextFrontend(onnx_dirs[""])
        id_bodies = {w: [ids_body(fe, t) for t in ts] for w, ts in loads.items()}
    servers = {
        "modelops": ("serve", onnx_dirs.get(""), text_bodies),
        "modelops-plain": ("serve", onnx_dirs.get("-plain"), text_bodies),
        "modelops-ids": ("serve", onnx_dirs.get(""), id_bodies),
        "modelops-int8": ("serve", onnx_dirs.get("-int8"), text_bodies),
        "kserve-onnx": ("kserve-onnx", onnx_dirs.get(""), id_bodies),
        "kserve-hf": ("kserve-hf", src, text_bodies),
        "mlserver-hf": ("mlserver", src, {w: [mlserver_body(t) for t in ts] for w, ts in loads.items()}),
    }
    for name, (kind, path, bodies) in servers.items():
        if name not in want:
            continue
        port, env, ready = free_port(), None, None
        if kind == "serve":
            cmd = [PY, "-m", "modelops.cli", "serve", str(path), "--name", "clf", "--http-port", str(port),
                   "--grpc-port", "0", "--host", "127.0.0.1"]
        elif kind == "mlserver":
            if not (MLSERVER_VENV / "bin" / "mlserver").exists():
                print(f"  mlserver-hf skipped: no MLServer venv at {MLSERVER_VENV} (bash scripts/mlserver_venv.sh)")
                continue
            repo = mlserver_repository(work, export_pretrained(path, work / "hf-pretrained"), "clf", port)
            cmd, env = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(repo)], {"PYTHONPATH": ""}
            ready = "models/clf"  # the model, not only the server
        else:
            cmd = [PY, "-m", "modelops.bench.baselines", kind, str(path), "--name", "clf", "--port", str(port)]
        proc = spawn(cmd, work / f"{name}.log", env=env)
        try:
            wait_ready(f"http://127.0.0.1:{port}/v2/{ready or 'health'}/ready", timeout=300, proc=proc)
            url = f"http://127.0.0.1:{port}/v2/models/clf/infer"
            first_answer(name, url, bodies["mixed"][0], labels=bodies is not id_bodies)
            results[name] = measure(name, url, bodies, duration)
        except Exception:
            print((work / f"{name}.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(proc)
    return results


def table(shape: str, res: dict) -> str:
    lines = [f"| {shape} | workload | c=1 seq/s | c=1 p50 ms | c=16 seq/s | c=16 p50 ms | c=16 p99 ms | c=16 vs kserve-hf |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        if name in ("conversion", "agreement"):
            continue
        if "seq128" not in r:
            lines.append(f"| {name} (in process, batch 1) | seq128 | {r[1]['rps']:.1f} | {r[1]['p50_ms']:.1f} | | | | |")
            continue
        for workload, by_c in r.items():
            c1, c16 = by_c[1], by_c[16]
            hf = res.get("kserve-hf", {}).get(workload, {}).get(16, {}).get("rps")
            vs = f"{c16['rps'] / hf:.2f}x" if hf else ""
            lines.append(f"| {name} | {workload} | {c1['rps']:.1f} | {c1['p50_ms']:.1f} | {c16['rps']:.1f} | "
                         f"{c16['p50_ms']:.1f} | {c16['p99_ms']:.1f} | {vs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="minilm", choices=["tiny", "minilm", "bert-base"])
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    p.add_argument("--out", default=None)
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {','.join(SERVERS)} (default all)")
    args = p.parse_args(argv)
    selected = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    unknown = sorted(set(selected) - set(SERVERS))
    if unknown:
        p.error(f"unknown servers {unknown}; choose from {', '.join(SERVERS)}")
    with tempfile.TemporaryDirectory(prefix="modelops-bench-tf-") as tmp:
        res = bench(args.shape, args.duration, Path(tmp), selected)
    print()
    print(table(args.shape, res))
    print(json.dumps({k: res[k] for k in ("conversion", "agreement") if k in res}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
