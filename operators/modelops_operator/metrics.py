"""The operator's Prometheus metrics and its HTTP endpoints: /metrics, /healthz, /readyz.

Every operator process serves them from start-up, the leader and the standbys alike (so a standby
passes its probes and `modelops_operator_leader` tells which one acts). The chart scrapes
/metrics through a Service (optionally a ServiceMonitor) and its PrometheusRule alerts on:
- `modelops_operator_leader` (no process leads: operator down),
- `modelops_operator_reconcile_errors_total{reason}` (reconcile errors by reason),
- `modelops_operator_deployment_stalled{namespace,name,reason}` (a rollout failed: Stalled, or a
  canary rolled back).

Wiring (handlers/main): `record_pass(namespace, name, result, seconds)` after each reconcile pass,
`record_api_error(exc)` when the Kubernetes API failed one, `Endpoints(address).start()` before
the leader election.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)

log = logging.getLogger("modelops.operator")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

RECONCILES = Counter("modelops_operator_reconciles", "Reconcile passes by outcome (ok, retry, stalled, error).",
                     ["outcome"], registry=REGISTRY)
RECONCILE_ERRORS = Counter("modelops_operator_reconcile_errors",
                           "Reconcile passes that ended in an error, by reason (RegistryUnavailable, "
                           "ParityFailed, KubernetesApiError, ...).", ["reason"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("modelops_operator_reconcile_seconds", "Duration of one reconcile pass.",
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                              registry=REGISTRY)
WRITES = Counter("modelops_operator_writes", "Objects the operator wrote, by what it wrote.",
                 ["resource"], registry=REGISTRY)
STALLED = Gauge("modelops_operator_deployment_stalled",
                "1 while a ModelDeployment is Stalled (its rollout failed), with the reason.",
                ["namespace", "name", "reason"], registry=REGISTRY)
LEADER = Gauge("modelops_operator_leader", "1 while this process leads (reconciles); 0 on a standby.",
               registry=REGISTRY)

ROLLOUTS = Counter("modelops_operator_rollouts", "Canary rollouts that ended, by result (promoted, rolled_back).",
                   ["result"], registry=REGISTRY)
ROLLOUT_SECONDS = Histogram("modelops_operator_rollout_seconds", "From a canary's start to its end, by result.",
                            ["result"], buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600),
                            registry=REGISTRY)
CANARY_WEIGHT = Gauge("modelops_operator_canary_weight", "Traffic percent on the canary (0 without one).",
                      ["namespace", "name"], registry=REGISTRY)
ANALYSES = Counter("modelops_operator_analysis_checks", "Canary analysis checks counted, by check and outcome.",
                   ["check", "outcome"], registry=REGISTRY)

_stalled: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def _set_stalled(namespace: str, name: str, reason: str | None) -> None:
    with _lock:
        old = _stalled.pop((namespace, name), None)
        if old is not None and old != reason:
            STALLED.remove(namespace, name, old)
        if reason is not None:
            _stalled[(namespace, name)] = reason
            STALLED.labels(namespace, name, reason).set(1)


def record_pass(namespace: str, name: str, result, seconds: float | None = None) -> None:
    """Account for one `Reconciler.reconcile` result (`.retry`, `.stalled`, `.wrote`, `.body`, and
    `.phase` when it has one: a canary `RolledBack` counts as a failed rollout too)."""
    if seconds is not None:
        RECONCILE_SECONDS.observe(seconds)
    if getattr(result, "rollout", None) is not None:
        record_rollout(namespace, name, result.rollout)
    for what in getattr(result, "wrote", ()) or ():
        WRITES.labels(what).inc()
    if getattr(result, "body", None) is None:  # gone or being deleted
        _set_stalled(namespace, name, None)
        RECONCILES.labels("ok").inc()
    elif result.stalled is not None:
        _set_stalled(namespace, name, result.stalled.reason)
        RECONCILES.labels("stalled").inc()
        RECONCILE_ERRORS.labels(result.stalled.reason).inc()
    elif result.retry is not None:
        RECONCILES.labels("retry").inc()
        RECONCILE_ERRORS.labels(result.retry.reason).inc()
    elif getattr(result, "phase", None) == "RolledBack":
        _set_stalled(namespace, name, "RolledBack")
        RECONCILES.labels("ok").inc()
    else:
        _set_stalled(namespace, name, None)
        RECONCILES.labels("ok").inc()


def record_rollout(namespace: str, name: str, step) -> None:
    """Account for one canary step (`rollout.StepResult`): weight, ended rollouts, analyses."""
    state = step.state or {}
    from modelops.deployment.schema import ACTIVE_ROLLOUT_PHASES

    active = state.get("phase") in ACTIVE_ROLLOUT_PHASES
    CANARY_WEIGHT.labels(namespace, name).set(state.get("weight", 0) if active else 0)
    for n in step.notifications:
        result = {"Promoted": "promoted", "RolledBack": "rolled_back"}.get(n.event)
        if result is None:
            continue
        ROLLOUTS.labels(result).inc()
        started = state.get("startedAt")
        if started:
            from modelops.rollout.state import parse_time

            ROLLOUT_SECONDS.labels(result).observe(max(0.0, (n.at - parse_time(started)).total_seconds()))
    for check in (step.analysed or {}).get("checks", []):
        ANALYSES.labels(check.get("name", "?"), check.get("outcome", "?")).inc()


def record_api_error(exc: BaseException, reason: str = "KubernetesApiError") -> None:
    """A pass the Kubernetes API refused or failed (it is retried)."""
    RECONCILES.labels("error").inc()
    RECONCILE_ERRORS.labels(reason).inc()


# --- endpoints ----------------------------------------------------------------------------------
def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--metrics-address", default=os.environ.get("MODELOPS_METRICS_ADDRESS", ""),
                    metavar="HOST:PORT",
                    help="serve /metrics, /healthz and /readyz here, e.g. 0.0.0.0:8080 "
                         "(env MODELOPS_METRICS_ADDRESS; empty: off)")


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics-address {text!r} is not HOST:PORT")
    return host or "0.0.0.0", int(port)


class Endpoints:
    """/metrics (Prometheus text format), /healthz (liveness), /readyz (readiness) over aiohttp.

    `healthy` is polled on /healthz (e.g. the leader-election thread is alive); `ready` turns
    /readyz to 503 while the process shuts down.
    """

    def __init__(self, address: str, *, healthy: Callable[[], bool] | None = None,
                 registry: CollectorRegistry = REGISTRY):
        self.host, self.port = parse_address(address)
        self.healthy = healthy
        self.ready = True
        self.registry = registry
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok = self.healthy is None or self.healthy()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "unhealthy\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503, text="ok\n" if self.ready else "stopping\n")

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # noqa: SLF001 (aiohttp keeps it there)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("serving /metrics, /healthz, /readyz on %s:%s", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        self.ready = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
