"""`modelops` command line: convert, serve, demo, bench, operator, render, status."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import errors

# Exit codes: scripts and Kubernetes Jobs can tell "try again later" from "fix your input".
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_CONVERSION = 4
EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL


def exit_code(exc: errors.ModelOpsError) -> int:
    if exc.retryable:
        return EXIT_UNAVAILABLE
    if isinstance(exc, (errors.ModelNotFound, errors.VersionNotFound, errors.AliasNotFound)):
        return EXIT_NOT_FOUND
    if isinstance(exc, errors.ConversionError):
        return EXIT_CONVERSION
    return EXIT_INVALID


def _tracking_uri(args) -> str:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or os.environ.get(
        "MODELOPS_MLFLOW_TRACKING_URI")
    if not uri:
        raise errors.InvalidSpec("--tracking-uri", "no MLflow tracking URI (flag, MLFLOW_TRACKING_URI "
                                                   "or MODELOPS_MLFLOW_TRACKING_URI)")
    return uri


def cmd_convert(args) -> int:
    from .conversion import ConversionOptions, convert_and_publish, convert_model_dir
    from .conversion.publish import provenance
    from .registry import Registry

    options = ConversionOptions(precision=args.precision, opset=args.opset, rtol=args.rtol,
                                atol=args.atol, samples=args.samples)
    registry = Registry(_tracking_uri(args))
    resolved = registry.resolve(args.model_uri)
    out = Path(args.output)
    if args.register:
        result = convert_and_publish(registry, resolved, options, out_dir=out, cache_dir=args.cache_dir)
        report = json.loads((out / "conversion.json").read_text())
        where = result.onnx_uri
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="modelops-src-") as tmp:
            src = registry.download(resolved, tmp)
            report = convert_model_dir(src, out, options, cache_dir=args.cache_dir,
                                       provenance=provenance(resolved))
        where = str(out / "model.onnx")
    parity = report["parity"]
    print(f"converted {resolved.label} ({report['flavor']}, {report['precision']}, opset {report['opset']}): "
          f"parity max_abs_err={parity['max_abs_err']:.3g} max_rel_err={parity['max_rel_err']:.3g} "
          f"over {parity['samples']} samples; sha256 {report['sha256'][:12]}; "
          f"{'cached' if report.get('cached') else 'converted'} -> {where}")
    return 0


def cmd_serve(args) -> int:
    from .serving.batching import BatchingConfig
    from .serving.server import serve

    batching = BatchingConfig(args.max_batch_size, args.batch_wait_ms) if args.max_batch_size > 1 else None
    serve(args.model_dir, args.name, device=args.device, http_port=args.http_port,
          grpc_port=args.grpc_port, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
          batching=batching, intra_op_threads=args.intra_op_threads, version=args.model_version)
    return 0


def cmd_demo(args) -> int:
    from .demo.run import run_demo

    return run_demo(work_dir=Path(args.work_dir), requests=args.requests, keep_running=args.keep_running)


def cmd_operator(argv: list[str]) -> int:
    from modelops_operator.main import run  # the operator package is optional at import time

    return run(argv) or 0


def cmd_render(argv: list[str]) -> int:
    from modelops_operator.render import run  # the operator's builders, without a cluster

    return run(argv)


def cmd_status(argv: list[str]) -> int:
    from modelops_operator.status_view import run  # needs the operator extra (Kubernetes client)

    return run(argv)


# Subcommands implemented in modelops_operator (imported only when used): their own parsers.
DELEGATED = {"render": cmd_render, "status": cmd_status}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelops", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert an MLflow model to ONNX and prove parity")
    c.add_argument("model_uri", help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH")
    c.add_argument("--tracking-uri", help="MLflow tracking server (default: $MLFLOW_TRACKING_URI)")
    c.add_argument("--output", required=True, help="directory for model.onnx and conversion.json")
    c.add_argument("--opset", type=int, default=17)
    c.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    c.add_argument("--rtol", type=float, default=None, help="parity tolerance (default per precision)")
    c.add_argument("--atol", type=float, default=None)
    c.add_argument("--samples", type=int, default=64, help="seeded parity samples besides the input example")
    c.add_argument("--cache-dir", default=os.environ.get("MODELOPS_CACHE_DIR"),
                   help="reuse results for the same source digest and options")
    c.add_argument("--register", action="store_true",
                   help="log the ONNX model and report to MLflow and tag the model version")
    c.set_defaults(fn=cmd_convert)

    s = sub.add_parser("serve", help="serve DIR/model.onnx with the KServe-compatible predictor")
    s.add_argument("model_dir")
    s.add_argument("--name", required=True)
    s.add_argument("--model-version", default=os.environ.get("MODELOPS_MODEL_VERSION") or None,
                   help="the MLflow version served: metadata and the metrics' `version` label "
                        "(env MODELOPS_MODEL_VERSION, set by the operator)")
    s.add_argument("--http-port", type=int, default=8080)
    s.add_argument("--grpc-port", type=int, default=8081, help="0 disables gRPC")
    # The shared ClusterServingRuntime runs one command for CPU and GPU models: the operator sets
    # MODELOPS_DEVICE on GPU InferenceServices so they fail readiness rather than run on CPU.
    s.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   default=os.environ.get("MODELOPS_DEVICE", "auto"))
    s.add_argument("--max-batch-size", type=int, default=64, help="dynamic batching limit; 1 disables it")
    s.add_argument("--batch-wait-ms", type=float, default=0.0)
    s.add_argument("--max-body-mb", type=float, default=16.0)
    s.add_argument("--intra-op-threads", type=int, default=0, help="0: onnxruntime's default")
    s.set_defaults(fn=cmd_serve)

    d = sub.add_parser("demo", help="MLflow -> ONNX -> served predictions, end to end on this machine")
    d.add_argument("--work-dir", default=".modelops/demo")
    d.add_argument("--requests", type=int, default=2000, help="requests per model for the latency table")
    d.add_argument("--keep-running", action="store_true", help="keep MLflow and predictors up afterwards")
    d.set_defaults(fn=cmd_demo)

    sub.add_parser("operator", help="run the Kubernetes operator (see `modelops operator --help`)",
                   add_help=False)
    sub.add_parser("render", help="print the InferenceService (and Job) the operator would create for a "
                                  "ModelDeployment file, without a cluster (`modelops render -f md.yaml`)",
                   add_help=False)
    sub.add_parser("status", help="one readable view of a ModelDeployment on the cluster "
                                  "(`modelops status NAME [-n NS]`)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["operator"]:
        return cmd_operator(argv[1:])
    try:
        if argv and argv[0] in DELEGATED:
            return DELEGATED[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except errors.ModelOpsError as exc:
        print(f"modelops: {exc.reason}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
