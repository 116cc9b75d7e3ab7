"""`modelops operator`: run the ModelDeployment operator (in cluster or with KUBECONFIG).

    modelops operator [--namespace NS ... | --all-namespaces] [--conversion job|inprocess]
                      [--resolve-interval SECONDS] [--tracking-uri URI]
                      [--storage-uri-rewrite FROM=TO ...]

The CLI calls `run(argv)`; tests and benchmarks use `build()` + `serve()` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import Sequence

import kopf

from modelops.deployment.storage import parse_rewrites

from . import access, handlers, lean, leader, metrics
from .config import DEFAULT_CONVERTER_IMAGE, DEFAULT_RUNTIME, OperatorConfig
from .conversion import InProcessConversion, JobConversion
from .kube import Kube
from .reconciler import Reconciler


def parse_args(argv: Sequence[str] | None) -> OperatorConfig:
    env = os.environ
    ap = argparse.ArgumentParser(prog="modelops operator",
                                 description="Reconcile ModelDeployments into KServe InferenceServices.")
    scope = ap.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[],
                       help="watch this namespace (repeatable); default: all namespaces")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch all namespaces")
    ap.add_argument("--conversion", choices=["job", "inprocess"],
                    default=env.get("MODELOPS_CONVERSION", "job"),
                    help="job: convert in a Kubernetes Job (default); inprocess: in this process (dev)")
    ap.add_argument("--resolve-interval", type=float,
                    default=float(env.get("MODELOPS_RESOLVE_INTERVAL", "60")),
                    help="an alias move in MLflow is followed within this many seconds (default 60)")
    ap.add_argument("--resolve-cache", type=float,
                    default=float(env.get("MODELOPS_RESOLVE_CACHE", "1")),
                    help="passes share MLflow's answer for a model version/alias up to this many seconds "
                         "old (default 1; at most a tenth of --resolve-interval; 0: every pass asks)")
    ap.add_argument("--workers", type=int, default=int(env.get("MODELOPS_OPERATOR_WORKERS", "16")),
                    help="reconcile passes in flight at once (threads; default 16)")
    ap.add_argument("--batch-window", type=float, default=float(env.get("MODELOPS_OPERATOR_BATCH_WINDOW", "0.1")),
                    help="Kopf: seconds an object's worker waits for more of its events before a pass (default 0.1)")
    ap.add_argument("--worker-limit", type=int, default=int(env.get("MODELOPS_OPERATOR_WORKER_LIMIT", "0")),
                    help="Kopf: objects handled at once (default 0: no limit)")
    ap.add_argument("--tracking-uri", default=OperatorConfig.env_tracking_uri(),
                    help="default MLflow tracking URI (env MODELOPS_MLFLOW_TRACKING_URI)")
    ap.add_argument("--storage-uri-rewrite", action="append",
                    default=[r for r in env.get("MODELOPS_STORAGE_URI_REWRITES", "").split(",") if r],
                    metavar="FROM=TO",
                    help="map an MLflow artifact URI prefix to one KServe can download, "
                         "e.g. mlflow-artifacts:/=s3://mlflow/ (env MODELOPS_STORAGE_URI_REWRITES)")
    ap.add_argument("--prometheus-url", default=env.get("MODELOPS_PROMETHEUS_URL") or None,
                    help="Prometheus for canary analysis (env MODELOPS_PROMETHEUS_URL); a ModelDeployment "
                         "may override it in spec.rollout.analysis.prometheusUrl")
    ap.add_argument("--rollout-tick", type=float, default=float(env.get("MODELOPS_ROLLOUT_TICK", "5")),
                    help="seconds between passes of an active canary (its analysis runs every spec interval)")
    ap.add_argument("--converter-image", default=env.get("MODELOPS_CONVERTER_IMAGE", DEFAULT_CONVERTER_IMAGE))
    ap.add_argument("--converter-service-account", default=env.get("MODELOPS_CONVERTER_SERVICE_ACCOUNT") or None)
    ap.add_argument("--converter-resources", type=json.loads, default=env.get("MODELOPS_CONVERTER_RESOURCES") or None,
                    help="conversion Jobs' container resources as JSON (env MODELOPS_CONVERTER_RESOURCES)")
    ap.add_argument("--converter-deadline", type=int, default=int(env.get("MODELOPS_CONVERTER_DEADLINE_SECONDS") or 3600),
                    help="conversion Jobs' activeDeadlineSeconds (env MODELOPS_CONVERTER_DEADLINE_SECONDS)")
    ap.add_argument("--runtime", default=env.get("MODELOPS_RUNTIME", DEFAULT_RUNTIME),
                    help="KServe ClusterServingRuntime name")
    ap.add_argument("--api-url", default=env.get("MODELOPS_KUBE_API_URL"),
                    help="Kubernetes API URL without auth (kubectl proxy); default in-cluster/KUBECONFIG")
    ap.add_argument("--liveness", default=env.get("MODELOPS_LIVENESS", "http://0.0.0.0:8080/healthz"),
                    help="liveness endpoint URL; empty to disable")
    ap.add_argument("--verbose", "-v", action="store_true")
    metrics.add_arguments(ap)
    leader.add_arguments(ap)
    access.add_arguments(ap, env)
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.resolve_interval <= 0:
        ap.error("--resolve-interval must be positive")
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    if args.resolve_cache < 0:
        ap.error("--resolve-cache must be >= 0")
    if args.batch_window < 0 or args.worker_limit < 0:
        ap.error("--batch-window and --worker-limit must be >= 0")
    try:
        election = leader.settings_from_args(args)
        if args.metrics_address:
            metrics.parse_address(args.metrics_address)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        rewrites = parse_rewrites(args.storage_uri_rewrite)
    except ValueError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return OperatorConfig(
        tracking_uri=args.tracking_uri, namespaces=tuple(args.namespace),
        conversion=args.conversion, resolve_interval=args.resolve_interval, resolve_cache=args.resolve_cache,
        pass_workers=args.workers, batch_window=args.batch_window, worker_limit=args.worker_limit or None,
        storage_rewrites=rewrites, runtime=args.runtime, converter_image=args.converter_image,
        converter_service_account=args.converter_service_account, api_url=args.api_url,
        prometheus_url=args.prometheus_url, rollout_tick=args.rollout_tick,
        converter_resources=args.converter_resources, job_timeout=args.converter_deadline,
        extra_env={"liveness": args.liveness or None, "leader": election,
                   "metrics": args.metrics_address or None},
        **access.config_from_args(args),
    )


def build(config: OperatorConfig, *, registry_factory=None) -> tuple[kopf.OperatorRegistry, Reconciler]:
    """A Kopf registry with our handlers, wired to a reconciler for `config`."""
    kube = Kube.from_environment(config.api_url)
    # Import MLflow's client now (seconds) rather than on the first object. The converter itself
    # (onnx, onnxruntime: tens of MiB) only where this process converts.
    import modelops.conversion  # noqa: F401
    import modelops.registry  # noqa: F401

    if config.conversion == "inprocess":
        import modelops.conversion.pipeline  # noqa: F401
    converter = InProcessConversion(config) if config.conversion == "inprocess" else JobConversion(config, kube)
    reconciler = Reconciler(config, kube, converter, registry_factory=registry_factory, emit=handlers.post_events)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler, config)
    return registry, reconciler


async def serve(config: OperatorConfig, *, stop_flag: asyncio.Event | threading.Event | None = None,
                ready_flag: asyncio.Event | threading.Event | None = None,
                registry_factory=None, built=None) -> None:
    registry, reconciler = built or build(config, registry_factory=registry_factory)
    settings = kopf.OperatorSettings()
    handlers.configure_settings(settings, config)
    try:
        await kopf.operator(
            registry=registry, settings=settings, standalone=True,
            clusterwide=not config.namespaces, namespaces=list(config.namespaces),
            liveness_endpoint=config.extra_env.get("liveness"),
            stop_flag=stop_flag, ready_flag=ready_flag,
        )
    finally:
        reconciler.kube.close()


async def serve_elected(config: OperatorConfig) -> None:
    """/metrics and probes first (standbys answer them too), then the operator while this process
    holds the leader Lease (at once without --leader-elect)."""
    endpoints = None
    if config.extra_env.get("metrics"):
        endpoints = metrics.Endpoints(config.extra_env["metrics"])
        await endpoints.start()
    built = build(config)  # imports and clients before the election: a takeover starts at once
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a standby stops on them (Kopf takes them over)
        loop.add_signal_handler(sig, stop.set)
    try:
        # Kopf stops on SIGTERM/SIGINT itself; losing the Lease exits the process (leader.py).
        await leader.run_elected(lambda stop_flag: serve(config, built=built),
                                 config.extra_env.get("leader") or leader.LeaderElectionSettings(),
                                 stop_flag=stop)
    finally:
        if endpoints is not None:
            await endpoints.stop()


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of `modelops operator`; `argv` excludes the subcommand name. Blocks until stopped."""
    config = parse_args(argv)
    lean.install(os.environ, config.conversion)  # before MLflow's client is imported (build)
    asyncio.run(serve_elected(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
