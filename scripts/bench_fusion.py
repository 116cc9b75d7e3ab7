#!/usr/bin/env python
"""Transformer fusion benchmark: plain vs fused graphs of one seeded BERT-class classifier.

`prepare` saves `modelops.demo.text_models.save_text_classifier(shape, train_steps)` (20) as an MLflow
`transformers` model and converts it (`convert_model_dir`, each result through the parity gate):

  plain-fp32   fusion=False                 fused-fp32       fusion on (the default)
  plain-int8   fusion=False, int8           fused-int8       fusion on, int8 (QAttention + MatMulInteger)
  fused-int8-matmul   fusion on, int8 of the MatMuls only (conversion.fusion.INT8_OP_TYPES=["MatMul"])

`measure` runs each graph in process (onnxruntime, CPU, ORT_ENABLE_ALL as the predictor does),
batch 1, one text of exactly `--tokens` tokens, rounds interleaved; and the top-label agreement of
each variant with plain-fp32 on 200 seeded texts (`seeded_texts(200, seed=99)`, the served path).
Run `measure` alone on the machine (`flock -x /tmp/cpu.lock`).

    .venv/bin/python scripts/bench_fusion.py prepare --shape minilm --dir /tmp/fb-minilm
    flock -x /tmp/cpu.lock .venv/bin/python scripts/bench_fusion.py measure --dir /tmp/fb-minilm
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

VARIANTS = {
    "plain-fp32": dict(precision="fp32", fusion=False),
    "fused-fp32": dict(precision="fp32"),
    "plain-int8": dict(precision="int8", fusion=False),
    "fused-int8": dict(precision="int8"),
    "fused-int8-matmul": dict(precision="int8"),
}
COUNTED = ("Attention", "QAttention", "MultiHeadAttention", "EmbedLayerNormalization", "QEmbedLayerNormalization",
           "SkipLayerNormalization", "LayerNormalization", "BiasGelu", "Gelu", "FastGelu", "MatMulInteger",
           "MatMul", "DynamicQuantizeLinear")


def prepare(args) -> None:
    from modelops.conversion import ConversionOptions, convert_model_dir, fusion
    from modelops.demo.text_models import save_text_classifier

    root = Path(args.dir)
    src = root / "src"
    if not (src / "MLmodel").exists():
        t = time.perf_counter()
        save_text_classifier(src, shape=args.shape, train_steps=args.train_steps)
        print(f"built {args.shape} in {time.perf_counter() - t:.0f}s", flush=True)
    reports = {}
    for name in args.variants.split(","):
        kw = VARIANTS[name]
        fusion.INT8_OP_TYPES = ["MatMul"] if name.endswith("-matmul") else None
        t = time.perf_counter()
        r = convert_model_dir(src, root / name, ConversionOptions(**kw, samples=args.samples))
        reports[name] = {"transformer_optimization": r["transformer_optimization"], "parity": r["parity"],
                         "label_agreement": r["text_parity"].get("label_agreement"), "timings": r["timings"],
                         "bytes": (root / name / "model.onnx").stat().st_size}
        print(f"{name:18s} converted in {time.perf_counter() - t:5.1f}s  parity max_abs_err "
              f"{r['parity']['max_abs_err']:.3g}  fused {r['transformer_optimization']['fused']}", flush=True)
    (root / "prepare.json").write_text(json.dumps(reports, indent=2))


def session(path: Path, threads: int, dump: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    if dump:  # what the session runs, to count its operators
        so.optimized_model_filepath = str(dump)
        so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def op_counts(path: Path) -> dict:
    import onnx

    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    return {op: ops.count(op) for op in COUNTED if op in ops}


def measure(args) -> None:
    import onnxruntime as ort

    from modelops.words import WORDS, seeded_texts
    from modelops.text import TextFrontend

    root = Path(args.dir)
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(args.tokens - 2))  # each word one token
    runs, graphs = {}, {}
    names = [name for name in VARIANTS if (root / name / "model.onnx").is_file()]
    for name in names:
        d = root / name
        fe = TextFrontend(d)
        feeds = fe.encode([text])
        assert feeds["input_ids"].shape == (1, args.tokens), feeds["input_ids"].shape
        dump = root / f"{name}.ort-all.onnx"
        runs[name] = (fe, session(d / "model.onnx", args.threads, dump), feeds)
        graphs[name] = {"file": op_counts(d / "model.onnx"), "after_ORT_ENABLE_ALL": op_counts(dump)}
    lat = {name: [] for name in names}
    for name, (_, sess, feeds) in runs.items():
        for _ in range(5):
            sess.run(None, feeds)
    for _ in range(args.rounds):  # interleaved: drift of the machine hits every variant alike
        for name, (_, sess, feeds) in runs.items():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.duration:
                t = time.perf_counter()
                sess.run(None, feeds)
                lat[name].append(time.perf_counter() - t)
    texts = seeded_texts(200, seed=99)
    labels = {name: [fe.answer(sess.run(None, fe.encode([t])))[1][0][0] for t in texts]
              for name, (fe, sess, _) in runs.items()}
    result = {"tokens": args.tokens, "batch": 1, "threads": args.threads or "onnxruntime default",
              "onnxruntime": ort.__version__, "variants": {}}
    base = labels["plain-fp32"]
    for name in names:
        ms = np.array(lat[name]) * 1000
        result["variants"][name] = {
            "seq_per_s": round(len(ms) / (ms.sum() / 1000), 2), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "runs": len(ms),
            "label_agreement_with_plain_fp32": float(np.mean([a == b for a, b in zip(labels[name], base)])),
            "ops": graphs[name]}
        fp32 = labels.get(name.split("-int8")[0] + "-fp32")
        if "int8" in name and fp32:
            result["variants"][name]["label_agreement_with_own_fp32"] = float(
                np.mean([a == b for a, b in zip(labels[name], fp32)]))
    result["labels_seen_plain_fp32"] = {lab: base.count(lab) for lab in sorted(set(base))}
    for name, r in result["variants"].items():
        print(f"{name:18s} {r['seq_per_s']:8.1f} seq/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"labels = plain-fp32 {r['label_agreement_with_plain_fp32']:.3f}", flush=True)
    (root / "measure.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--shape", default="minilm", choices=["tiny", "minilm", "bert-base"])
    a.add_argument("--dir", required=True)
    a.add_argument("--train-steps", type=int, default=20, help="steps of head training (labels vary)")
    a.add_argument("--samples", type=int, default=64, help="the parity gate's texts")
    a.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    a.set_defaults(fn=prepare)
    m = sub.add_parser("measure")
    m.add_argument("--dir", required=True)
    m.add_argument("--tokens", type=int, default=128)
    m.add_argument("--duration", type=float, default=3.0, help="seconds per variant per round")
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    m.set_defaults(fn=measure)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
