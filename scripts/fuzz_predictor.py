#!/usr/bin/env python
"""The larger fuzz run of the predictor: tests/core/test_core_fuzz.py with more examples.

    .venv/bin/python scripts/fuzz_predictor.py [--rest 10000] [--grpc 1000] [--seed N] [--out fuzz.json]

Starts `modelops serve` on the two-input test model, sends the generated V2 requests over one
keep-alive REST connection and over gRPC, and prints the counts by status. Fails (exit 1) on any
5xx, any mutated request answered 200, any 200 that differs from onnxruntime in process, or a
dropped connection; the seed is printed so a failure can be replayed with --seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rest", type=int, default=10000, help="REST requests (default 10000)")
    p.add_argument("--grpc", type=int, default=1000, help="gRPC requests (default 1000)")
    p.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    p.add_argument("--out", default=None, help="write the counts as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelops-fuzz-") as tmp:
        report = Path(args.out or Path(tmp) / "fuzz.json").resolve()
        env = {**os.environ, "FUZZ_EXAMPLES": str(args.rest), "FUZZ_GRPC_EXAMPLES": str(args.grpc),
               "FUZZ_REPORT": str(report)}
        if args.seed is not None:
            env["FUZZ_SEED"] = str(args.seed)
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-o", "addopts=", "--timeout", "3600", str(ROOT / "tests/core/test_core_fuzz.py")],
                             cwd=ROOT, env=env)
        if report.exists():
            counts = json.loads(report.read_text())
            print(f"seed {counts['seed']}")
            for protocol in ("rest", "grpc"):
                by_status = counts[protocol]
                print(f"{protocol:5s} {sum(by_status.values()):6d} requests: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
