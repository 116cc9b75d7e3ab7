"""`modelops` command line: convert, serve, loadtest, local, demo, operator, render, status."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import errors
from .serving import options as serve_options

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
                                atol=args.atol, samples=args.samples, fusion=args.fusion)
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

    if args.max_padding_ratio is not None and not args.max_padding_ratio >= 1:
        print("error: --max-padding-ratio must be >= 1", file=sys.stderr)
        return 2
    batching = BatchingConfig(args.max_batch_size, args.batch_wait_ms,
                              args.max_padding_ratio or BatchingConfig.max_padding_ratio) \
        if args.max_batch_size > 1 else None
    try:
        access = serve_options.from_args(args)
    except ValueError as exc:
        print(f"modelops serve: {exc}", file=sys.stderr)
        return 2
    serve(args.model_dir, args.name, device=args.device, http_port=args.http_port,
          grpc_port=args.grpc_port, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
          batching=batching, intra_op_threads=args.intra_op_threads, version=args.model_version,
          **access)
    return 0


def cmd_loadtest(args) -> int:
    from .bench.loadtest import run_cli

    return run_cli(args)


def cmd_demo(args) -> int:
    if args.text:
        from .demo.text_demo import run_text_demo

        return run_text_demo(work_dir=Path(args.work_dir), interval=args.interval,
                             keep_running=args.keep_running, port=args.port)
    from .demo.run import run_demo

    return run_demo(work_dir=Path(args.work_dir), interval=args.interval, keep_running=args.keep_running,
                    port=args.port, json_path=Path(args.json) if args.json else None)


def _local_dir(args):
    """The state directory of a local deployment: --state-dir, else .modelops/local/<name>."""
    from .local.rundir import RunDir, default_dir

    if getattr(args, "state_dir", None):
        return RunDir(args.state_dir), None
    name = getattr(args, "name", None)
    if getattr(args, "file", None):
        from .local.manifest import load_manifest

        try:
            name = load_manifest(args.file).name
        except errors.InvalidSpec:
            if args.command_local == "up":
                raise
            import yaml  # status/down of a file that no longer validates: its name is enough

            try:
                name = (yaml.safe_load(Path(args.file).read_text()) or {})["metadata"]["name"]
            except (OSError, yaml.YAMLError, KeyError, TypeError):
                raise errors.InvalidSpec("-f", f"cannot read metadata.name from {args.file}") from None
    if not name:
        raise errors.InvalidSpec("-f", "give -f FILE, --name NAME or --state-dir DIR")
    return RunDir(default_dir(name)), name


def cmd_local_up(args) -> int:
    from .local.manifest import load_manifest
    from .local.supervisor import run_up

    manifest = load_manifest(args.file)  # malformed: InvalidSpec naming the field, nothing started
    rundir, _ = _local_dir(args)
    running = rundir.running()
    if running:
        print(f"modelops: AlreadyRunning: {manifest.name} already runs here (pid {running['pid']}, "
              f"{rundir.root}); stop it with `modelops local down -f {args.file}`", file=sys.stderr)
        return EXIT_INVALID
    try:
        return run_up(manifest, rundir, tracking_uri=args.tracking_uri, port=args.port,
                      grpc_port=args.grpc_port, host=args.host,
                      resolve_interval=args.resolve_interval, prometheus_url=args.prometheus_url,
                      secrets_dir=args.secrets_dir, device=args.device, mlflow_port=args.mlflow_port,
                      live={"auto": None, "live": True, "lines": False}[args.progress],
                      token_file=args.token_file)
    except RuntimeError as exc:  # a child that would not start (MLflow, the router)
        print(f"modelops: LocalModeFailed: {exc}", file=sys.stderr)
        return 1


def cmd_local_status(args) -> int:
    from .local.status import render

    rundir, name = _local_dir(args)
    status, supervisor = rundir.status(), rundir.supervisor()
    running = rundir.running() is not None
    if status is None and supervisor is None:
        print(f"modelops: NotFound: no local deployment in {rundir.root}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print(json.dumps({"running": running, "status": status,
                          "processes": (supervisor or {}).get("children", {}) if running else {}}, indent=2))
    else:
        print(render(name or (supervisor or {}).get("name") or rundir.root.name, status, supervisor, running))
    return 0


def cmd_local_down(args) -> int:
    from .local.rundir import stop_recorded

    rundir, _ = _local_dir(args)
    stopped = stop_recorded(rundir, timeout=args.timeout)
    if not stopped:
        print(f"nothing running in {rundir.root}")
    for what in stopped:
        print(f"stopped {what}")
    return 0


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
    c.add_argument("--no-fusion", dest="fusion", action="store_false",
                   help="BERT-class text models: skip onnxruntime's transformer fusions (Attention, "
                        "SkipLayerNormalization...) and convert the plain graph")
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
    s.add_argument("--max-padding-ratio", type=float, default=None,
                   help="sequence models: a call's tokens over its requests' own tokens (default 1.25)")
    s.add_argument("--max-body-mb", type=float, default=16.0)
    s.add_argument("--intra-op-threads", type=int, default=0, help="0: onnxruntime's default")
    serve_options.add_arguments(s)
    s.set_defaults(fn=cmd_serve)

    t = sub.add_parser("loadtest", help="a bounded closed-loop load test of a predictor (the rollout's "
                                        "performance gate): throughput, p50, p99, errors")
    t.add_argument("url", help="the predictor's base URL, e.g. http://host:8080")
    t.add_argument("--model", required=True, help="the model name it serves")
    t.add_argument("--baseline", default=None, metavar="URL",
                   help="first the same test against this predictor (the stable version); the JSON is then "
                        "{stable, candidate}")
    t.add_argument("--concurrency", type=int, default=4, help="clients sending back to back (default 4)")
    t.add_argument("--duration", default="20s", help="how long to measure (default 20s)")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--body", default=None, help="a V2 infer request body (JSON) to send")
    src.add_argument("--from-metadata", action="store_true",
                     help="build seeded requests from the model's V2 metadata (the default)")
    t.add_argument("--timeout", default="10s", help="per request; a request that takes longer is an error")
    t.add_argument("--warmup", type=int, default=None, help="requests sent before measuring (default 2 per client)")
    t.add_argument("--header", action="append", help="'Name: value' sent with every request (repeatable)")
    t.add_argument("--bearer-token-file", default=None, help="send 'Authorization: Bearer <file's token>'")
    t.add_argument("--json", action="store_true", help="print the result document as JSON")
    t.add_argument("--termination-log", default=None,
                   help="also write the result (or the failure) as JSON to this file, within 4096 bytes "
                        "(in a Job: /dev/termination-log, the Pod's termination message)")
    t.set_defaults(fn=cmd_loadtest)

    lo = sub.add_parser("local", help="run a ModelDeployment on this machine, without Kubernetes")
    lsub = lo.add_subparsers(dest="command_local", required=True)
    up = lsub.add_parser("up", help="serve a ModelDeployment YAML locally: MLflow, predictors, router, rollouts")
    up.add_argument("-f", "--file", required=True, help="the ModelDeployment YAML (what kubectl would apply)")
    up.add_argument("--tracking-uri", default=None,
                    help="an existing MLflow server (default: start an embedded one in the state dir)")
    up.add_argument("--port", type=int, default=8080, help="the router's port (0: a free one)")
    up.add_argument("--grpc-port", type=int, default=8081, help="the router's gRPC port (0: no gRPC)")
    up.add_argument("--host", default="127.0.0.1",
                    help="the router's address (predictors, MLflow and the admin API stay on 127.0.0.1)")
    up.add_argument("--token-file", default=None,
                    help="require this static bearer token on the router, HTTP, gRPC and admin "
                         "(default: $MODELOPS_ROUTER_TOKEN, else none)")
    up.add_argument("--state-dir", default=None, help="default: .modelops/local/<metadata.name>")
    up.add_argument("--resolve-interval", type=float, default=None,
                    help="seconds between MLflow alias look-ups (default: min(5, rollout interval))")
    up.add_argument("--prometheus-url", default=None,
                    help="analyse canaries with this Prometheus (default: the predictors' own /metrics)")
    up.add_argument("--secrets-dir", default=os.environ.get("MODELOPS_SECRETS_DIR"),
                    help="hook secrets: secretRef {name, key} is read from DIR/name/key")
    up.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                    help="predictor device (default: cuda when spec.predictor.gpu > 0, else cpu)")
    up.add_argument("--mlflow-port", type=int, default=None, help="the embedded MLflow's port (default: free)")
    up.add_argument("--progress", choices=["auto", "live", "lines"], default="auto",
                    help="live table on a terminal (auto), or one line at a time")
    up.set_defaults(fn=cmd_local_up)
    for verb, fn, text in (("status", cmd_local_status, "the status document and the processes"),
                           ("down", cmd_local_down, "stop everything `local up` started")):
        q = lsub.add_parser(verb, help=text)
        q.add_argument("-f", "--file", default=None)
        q.add_argument("--name", default=None, help="metadata.name (instead of -f)")
        q.add_argument("--state-dir", default=None)
        if verb == "status":
            q.add_argument("--json", action="store_true", help="the status document as JSON")
        else:
            q.add_argument("--timeout", type=float, default=60.0, help="seconds before SIGKILL")
        q.set_defaults(fn=fn)

    d = sub.add_parser("demo", help="a canary promoted; an erroring and a silently wrong version rolled back in "
                                    "shadow, a slow one stopped by its performance gate; end to end on this machine")
    d.add_argument("--work-dir", default=".modelops/demo")
    d.add_argument("--interval", default="3s", help="the canary's analysis interval (short for the demo)")
    d.add_argument("--port", type=int, default=0, help="the router's port (default: a free one)")
    d.add_argument("--keep-running", action="store_true", help="keep MLflow, the router and predictors up")
    d.add_argument("--json", metavar="PATH", help="also write the final summary (per version) as JSON to PATH")
    d.add_argument("--text", action="store_true",
                   help="a Hugging Face text classifier (transformers flavor) instead; needs modelops[transformers]")
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
    # MLflow draws download progress bars on stderr when tqdm is installed: our stderr says one
    # line (the reason) on failure, and progress of ours where there is any.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
