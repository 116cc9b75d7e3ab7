#!/usr/bin/env python
"""Converting a model over 2 GB: wall time per stage and peak RSS, end to end through
`modelops.conversion.convert_model_dir`, on a seeded model built here (nothing downloaded).

A BERT text classifier (`modelops.demo.text_models`, random weights, no training steps; default
11 layers x hidden 2048, 16 heads, intermediate 8192, 512 positions = ~2.2 GB fp32) is saved as an
MLflow `transformers` model, then converted in a child process while this process samples the
child's /proc status (VmRSS, RssAnon, RssFile, VmHWM) every 0.2 s. Reported: the model's size on
disk, the conversion report's `timings`, the child's peak RSS (its rusage from wait4, and the
samples' peak per stage), peak RSS / model size, the output layout (model.onnx, model.onnx.data),
the parity result; then a third process loads the output with `OnnxModel` and serves one text.

Each step runs in its own process, so that one step's memory is not counted in another's.
Weights go to model.onnx.data beyond MODELOPS_EXTERNAL_DATA_BYTES (1 GiB; set it lower to try
the path with a small shape).

    .venv/bin/python scripts/bench_large_model.py [--layers 11 --hidden 2048] [--precision fp32]
        [--samples 64] [--work DIR] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SAMPLE_EVERY_S = 0.2
GB = 1e9
MIB = 1 << 20


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def proc_status(pid: int) -> dict[str, int] | None:
    """VmRSS, RssAnon, RssFile, VmHWM of one process, in bytes (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                kids = []
            found += kids
            todo += kids
    return found


class Sampler(threading.Thread):
    """Samples a process tree's RSS until the root process is gone."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.done = pid, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            root = proc_status(self.pid)
            if root is None or "VmRSS" not in root:  # gone, or a zombie
                break
            tree = sum((proc_status(p) or {}).get("VmRSS", 0) for p in descendants(self.pid))
            self.samples.append((time.monotonic(), root, tree))
            self.done.wait(SAMPLE_EVERY_S)


def run_child(step: str, args: argparse.Namespace, env: dict | None = None) -> dict:
    """Run `step` of this script in a child process; its result, wall time, rusage peak RSS and
    the RSS samples taken meanwhile."""
    result = Path(args.work) / f"{step}.result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", step, "--result", str(result), *sys.argv[1:]]
    t = time.monotonic()
    proc = subprocess.Popen(cmd, env=env)
    sampler = Sampler(proc.pid)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t
    sampler.done.set()
    sampler.join()
    if proc.returncode != 0 or not result.exists():
        raise SystemExit(f"step {step} failed (exit {proc.returncode})")
    out = json.loads(result.read_text())
    out.update(wall_s=wall, ru_maxrss_bytes=usage.ru_maxrss * 1024, samples=sampler.samples)
    return out


# --- the steps, each in its own process -----------------------------------------------------

def shape_of(args) -> tuple[int, int, int, int, int]:
    return (args.layers, args.hidden, args.heads, args.intermediate, args.max_positions)


def step_build(args) -> dict:
    from modelops.demo.text_models import save_text_classifier

    src = Path(args.work) / "src"
    if not (src / "MLmodel").exists():
        save_text_classifier(src, shape=shape_of(args), seed=args.seed, train_steps=0)
    return {"src": str(src)}


def step_convert(args) -> dict:
    from modelops import errors
    from modelops.conversion import ConversionOptions, convert_model_dir

    opts = ConversionOptions(precision=args.precision, samples=args.samples)
    out = Path(args.work) / "onnx"
    t_start = time.monotonic()
    try:
        report = convert_model_dir(Path(args.work) / "src", out, opts)
    except errors.ModelOpsError as exc:
        report = json.loads((out / "conversion.json").read_text()) if (out / "conversion.json").exists() else {}
        report.setdefault("error", str(exc))
    t_end = time.monotonic()
    return {"t_start": t_start, "t_end": t_end, "report": report, "out": str(out),
            "self_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def step_serve(args) -> dict:
    import asyncio

    from modelops.serving.onnx_model import OnnxModel

    out = Path(args.work) / "onnx"
    t = time.monotonic()
    model = OnnxModel("large", out, device="cpu")
    if not model.load():
        return {"ready": False, "reason": model.not_ready_reason}
    load_s = time.monotonic() - t
    text = "the movie was very good and the story was great"
    t = time.monotonic()
    names, outputs, feeds = asyncio.run(model.run_texts([text]))
    answer_s = time.monotonic() - t
    model.stop()
    answer = {n: (o.tolist() if hasattr(o, "tolist") else o) for n, o in zip(names, outputs)}
    return {"ready": True, "load_s": load_s, "answer_s": answer_s, "text": text,
            "tokens": int(feeds["input_ids"].shape[1]), "answer": answer,
            "inputs": model.get_input_types()}


STEPS = {"build": step_build, "convert": step_convert, "serve": step_serve}


# --- the report -----------------------------------------------------------------------------

def stage_windows(conv: dict) -> list[tuple[str, float, float]]:
    """(stage, start, end) on the monotonic clock, from the report's timings: load, export, the
    original model on the gate's samples (`reference`, when the pipeline times it apart),
    normalize+check+optimize+precision+check (`optimize`), the parity session's creation
    (untimed in the report: the gap), parity, then writing the output (sha256, copies)."""
    t0, tm = conv["t_start"], conv.get("report", {}).get("timings", {})
    load_end = t0 + tm.get("load_s", 0)
    export_end = load_end + tm.get("export_s", 0)
    reference_end = export_end + tm.get("reference_s", 0)
    optimize_end = reference_end + tm.get("optimize_s", 0)
    parity_end = t0 + tm.get("total_s", conv["t_end"] - t0)
    parity_start = parity_end - tm.get("parity_s", 0)
    return [("load", t0, load_end), ("export", load_end, export_end), ("reference", export_end, reference_end),
            ("optimize", reference_end, optimize_end),
            ("session", optimize_end, parity_start), ("parity", parity_start, parity_end),
            ("write", parity_end, conv["t_end"])]


def per_stage(conv: dict) -> dict:
    out = {}
    for name, start, end in stage_windows(conv):
        inside = [(root, tree) for t, root, tree in conv["samples"] if start <= t <= end]
        if not inside:
            continue
        out[name] = {"seconds": round(end - start, 2),
                     "peak_rss_gb": round(max(r["VmRSS"] + tr for r, tr in inside) / GB, 3),
                     "peak_anon_gb": round(max(r.get("RssAnon", 0) for r, _ in inside) / GB, 3),
                     "peak_file_gb": round(max(r.get("RssFile", 0) for r, _ in inside) / GB, 3),
                     "hwm_at_end_gb": round(inside[-1][0].get("VmHWM", 0) / GB, 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=None, help="default hidden / 128 (at least 1)")
    ap.add_argument("--intermediate", type=int, default=None, help="default 4 x hidden")
    ap.add_argument("--max-positions", type=int, default=512)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    ap.add_argument("--samples", type=int, default=64, help="ConversionOptions.samples (the gate's texts)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="working directory (default: a new temporary one)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.heads = args.heads or max(1, args.hidden // 128)
    args.intermediate = args.intermediate or 4 * args.hidden
    if args.child:
        import warnings

        warnings.filterwarnings("ignore")
        sys.argv = sys.argv[:1]  # kserve parses the command line when imported
        Path(args.result).write_text(json.dumps(STEPS[args.child](args), default=str))
        return 0
    if args.work is None:
        args.work = tempfile.mkdtemp(prefix="modelops-large-")
        sys.argv += ["--work", args.work]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(f"work dir {args.work}; shape {shape_of(args)}; {args.precision}; samples {args.samples}; "
          f"MODELOPS_EXTERNAL_DATA_BYTES={os.environ.get('MODELOPS_EXTERNAL_DATA_BYTES', 'default (1 GiB)')}",
          flush=True)

    build = run_child("build", args)
    src = Path(build["src"])
    weights = sorted(src.rglob("*.safetensors")) + sorted(src.rglob("*.bin"))
    size = tree_bytes(src)
    print(f"built in {build['wall_s']:.0f} s: {size / GB:.3f} GB on disk "
          f"({', '.join(f'{w.name} {w.stat().st_size / GB:.3f} GB' for w in weights)})", flush=True)

    conv = run_child("convert", args)
    report = conv["report"]
    peak = max(conv["ru_maxrss_bytes"],
               max((r["VmRSS"] + tr for _, r, tr in conv["samples"]), default=0))
    out_dir = Path(conv["out"])
    layout = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
    timings = {k: round(v, 2) for k, v in report.get("timings", {}).items()}
    stages = per_stage(conv)
    print(f"converted in {conv['t_end'] - conv['t_start']:.0f} s (status {report.get('status')}): {timings}")
    print(f"peak RSS {peak / GB:.3f} GB = {peak / size:.2f} x the model's size (target <= 3 x)")
    for name, s in stages.items():
        print(f"  {name:9s} {s['seconds']:8.1f} s  peak RSS {s['peak_rss_gb']:6.2f} GB "
              f"(anon {s['peak_anon_gb']:.2f}, file {s['peak_file_gb']:.2f})  HWM {s['hwm_at_end_gb']:.2f} GB")
    print(f"output: {', '.join(f'{n} {b / MIB:.1f} MiB' for n, b in layout.items())}")
    print(f"parity: {report.get('parity')}")

    served = run_child("serve", args) if report.get("status") == "passed" else {"ready": False}
    if served.get("ready"):
        print(f"served: loaded in {served['load_s']:.1f} s, peak RSS {served['ru_maxrss_bytes'] / GB:.2f} GB; "
              f"{served['text']!r} -> {served['answer'].get('label')} {served['answer'].get('score')}")

    total = timings.get("total_s") or 1
    result = {
        "shape": dict(zip(("layers", "hidden", "heads", "intermediate", "max_positions"), shape_of(args))),
        "precision": args.precision, "samples": args.samples,
        "external_data_bytes": os.environ.get("MODELOPS_EXTERNAL_DATA_BYTES", str(1 << 30)),
        "model_bytes_on_disk": size, "weights_files": {w.name: w.stat().st_size for w in weights},
        "build": {"wall_s": round(build["wall_s"], 1), "peak_rss_bytes": build["ru_maxrss_bytes"]},
        "conversion": {
            "status": report.get("status"), "error": report.get("error"),
            "wall_s": round(conv["t_end"] - conv["t_start"], 2), "process_wall_s": round(conv["wall_s"], 2),
            "timings": timings,
            "gate_share": round((timings.get("reference_s", 0) + timings.get("parity_s", 0)) / total, 3),
            "peak_rss_bytes": peak, "ru_maxrss_bytes": conv["ru_maxrss_bytes"],
            "peak_rss_over_model_size": round(peak / size, 3), "stages": stages,
            "parity": report.get("parity"), "text_parity": report.get("text_parity"),
        },
        "output_files": layout,
        "serve": {k: v for k, v in served.items() if k != "samples"},
        "machine": {"cpus": os.cpu_count(),
                    "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1)},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0 if report.get("status") == "passed" and served.get("ready") else 1


if __name__ == "__main__":
    sys.exit(main())
