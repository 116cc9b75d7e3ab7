"""`modelops local up`: one ModelDeployment on this machine, with the operator's own logic.

What the operator does with Kubernetes and KServe, done with local processes:

- the spec is parsed by `modelops.deployment.spec.parse_spec` (malformed: the field is named and
  nothing starts);
- the model is resolved in MLflow (`modelops.registry.Registry`) every resolve interval, so a moved
  alias is followed; each resolved version is converted by `modelops.conversion` (a published
  result for the same version and options is reused), and served by its own `modelops serve`
  process (`--model-version`, so its metrics carry the version);
- the local router (`modelops.local.router`) is the one stable address; it splits traffic
  between the stable and the canary predictor as `RolloutState.traffic` says;
- the rollout engine (`modelops.rollout.drive`) runs every tick with the same observations the
  operator builds; its analysis reads the predictors' own /metrics (`ScrapeProvider`), or a
  Prometheus (`--prometheus-url` / `spec.rollout.analysis.prometheusUrl`);
- transitions are recorded in MLflow (`record_actions`: version tags, `promoteAlias`) and sent to
  the spec's webhooks (`WebhookDispatcher`); gates are called (`call_gates`);
- the status document is kept in `<dir>/status.json` (`modelops local status`).

A predictor leaves only after the router stopped sending to it and its in-flight requests
finished (`drain`). SIGINT/SIGTERM (`modelops local down`) stop everything it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import httpx

from .. import errors
from ..rollout import CallGate, GateResult, RolloutPolicy, RolloutState, acknowledge, pending
from ..rollout import driver
from ..rollout.analysis import LatencyQuantile, RequestCount, Target
from . import narrate
from .display import Display
from .preflight import check_ports, check_secrets, secret_reader
from .local_platform import LocalPlatform
from .manifest import LOCAL_NAMESPACE, Manifest
from .ports import free_port
from .predictors import Predictors, convert_version
from .processes import spawn, stop
from .rundir import RunDir, process_record, read_json, write_json
from .status import Facts, compose

ROUTER_READY_TIMEOUT = 30.0


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Supervisor:
    def __init__(self, manifest: Manifest, rundir: RunDir, *, tracking_uri: str | None = None,
                 port: int = 8080, grpc_port: int = 8081, host: str = "127.0.0.1",
                 resolve_interval: float | None = None,
                 prometheus_url: str | None = None, secrets_dir: str | Path | None = None,
                 device: str | None = None, out: TextIO | None = None, live: bool | None = None,
                 tick: float | None = None, mlflow_port: int | None = None):
        self.manifest = manifest
        self.spec = manifest.spec
        self.rundir = rundir
        self.tracking_uri = tracking_uri
        self.port = port
        self.grpc_port = grpc_port
        self.host = host
        interval = self.spec.rollout.interval_seconds
        self.resolve_interval = resolve_interval if resolve_interval is not None else min(5.0, interval)
        self.tick = tick if tick is not None else max(0.2, min(1.0, interval / 4))
        self.prometheus_url = prometheus_url or self.spec.rollout.analysis.prometheus_url
        self.secrets_dir = Path(secrets_dir) if secrets_dir else None
        self.device = device or ("cuda" if self.spec.predictor.gpu > 0 else "cpu")
        self.mlflow_port = mlflow_port
        self.policy = RolloutPolicy.from_spec(self.spec)
        self.display = Display(out, live=live, every=max(2.0, min(10.0, interval)))
        self.out = self.display.out

        self.predictors: Predictors | None = None
        self.platform: LocalPlatform | None = None
        self.state = RolloutState()
        self.generation = 1
        self.resolved: str | None = None
        self.target: str | None = None
        self.resolve_error: errors.ModelOpsError | None = None
        self.children: dict[str, dict] = {}
        self.router_proc: subprocess.Popen | None = None
        self.router_url = ""
        self.admin_url = ""
        self.mlflow = None
        self.registry = None
        self.provider = None
        self.metrics_provider = None
        self.http: httpx.AsyncClient | None = None
        self.dispatcher = None
        self.webhooks: list = []
        self.gates: list = []
        self.stopping = False
        self._acks: list[tuple[str, int]] = []
        self._history: asyncio.Queue | None = None
        self._history_task: asyncio.Task | None = None
        self._next_resolve = 0.0
        self._status: dict | None = None
        self._last_analysis_at: str | None = None
        self._restoring = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # --- records -----------------------------------------------------------------------------
    def _write_supervisor(self) -> None:
        doc = {**process_record(os.getpid()), "name": self.manifest.name, "manifest": str(self.manifest.path),
               "trackingUri": self.tracking_uri,
               "router": {"url": self.router_url, "admin": self.admin_url, "grpcPort": self.grpc_port or None},
               "children": self.children}
        doc["pgid"] = os.getpgid(0)
        write_json(self.rundir.supervisor_path, doc)

    def _add_child(self, role: str, proc: subprocess.Popen, **more) -> None:
        self.children[role] = process_record(proc.pid, **more)
        self._write_supervisor()

    def _drop_child(self, role: str) -> None:
        if self.children.pop(role, None) is not None:
            self._write_supervisor()

    def _events_log(self, kind: str, **fields) -> None:
        line = {"at": _utcnow().isoformat().replace("+00:00", "Z"), "kind": kind, **fields}
        with open(self.rundir.root / "events.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    # --- start ---------------------------------------------------------------------------------
    def _secret_reader(self):
        return secret_reader(self.secrets_dir)

    def _restore(self) -> None:
        """Resume from the last status document of this directory (like the operator's status)."""
        local = read_json(self.rundir.local_path) or {}
        status = self.rundir.status() or {}
        if local.get("model") != self.spec.model.name:
            return  # another model (or nothing) ran here: start fresh
        self.generation = int(local.get("generation") or 1)
        if local.get("specHash") != self.manifest.spec_hash:
            self.generation += 1
        self.state = RolloutState.from_status(status.get("canary"))
        self._status = status
        if self.state.stable_version:
            self._restoring = True
            self.display.event(f"resuming: v{self.state.stable_version} was stable"
                               + (f", canary v{self.state.version} at {self.state.weight}%"
                                  if self.state.traffic.canary else ""))

    def preflight(self) -> None:
        """What can be wrong before anything starts: ports taken, hook secrets missing (named)."""
        self.port = check_ports(self.host, self.port, self.grpc_port)
        check_secrets(self.spec.hooks, self._secret_reader())

    async def _start(self) -> None:
        from ..rollout.hooks import WebhookDispatcher, gates_from_spec, webhooks_from_spec

        self.rundir.create()
        self._restore()
        write_json(self.rundir.local_path, {"model": self.spec.model.name, "generation": self.generation,
                                            "specHash": self.manifest.spec_hash})
        self._write_supervisor()
        if self.tracking_uri is None:
            from .mlflow_server import MlflowServer

            self.display.event(f"starting MLflow (sqlite + local artifacts in {self.rundir.mlflow})")
            self.mlflow = MlflowServer(self.rundir.mlflow, port=self.mlflow_port or None)
            await asyncio.to_thread(self._start_mlflow)
            self.tracking_uri = self.mlflow.url
        self._write_supervisor()
        await self._start_router()
        from ..registry import Registry
        from ..rollout.providers import PrometheusProvider, ScrapeProvider

        self.registry = Registry(self.tracking_uri)
        # Analysis windows are one interval long: a few intervals of scrapes is all that is needed.
        self.metrics_provider = ScrapeProvider([], max_age=self.tick / 2,
                                               retention=max(30.0, 3 * self.spec.rollout.interval_seconds))
        self.provider = PrometheusProvider(self.prometheus_url) if self.prometheus_url else self.metrics_provider
        self.http = httpx.AsyncClient(timeout=30)
        read = self._secret_reader()
        self.webhooks = webhooks_from_spec(self.spec.hooks, read)
        self.gates = gates_from_spec(self.spec.hooks, read)
        self.dispatcher = WebhookDispatcher(on_delivered=self._delivered, base_delay=0.5, max_delay=10)
        self._history = asyncio.Queue()
        self._history_task = asyncio.create_task(self._history_worker())
        self.predictors = Predictors(
            logs=self.rundir.logs, name=self.manifest.name, device=self.device, grpc=bool(self.grpc_port),
            convert=self._convert, record=self._add_child, forget=self._drop_child, say=self.display.event,
            log_event=self._events_log, on_ready=self._targets_changed)
        self.platform = LocalPlatform(self.predictors, self.admin_url)
        model = self.spec.model
        follows = f"alias @{model.alias} (re-resolved every {self.resolve_interval:g}s)" if model.alias \
            else f"version {model.version}"
        r = self.spec.rollout
        how = (f"canary: steps {list(r.steps)}%, interval {r.interval}, failureLimit "
               f"{r.analysis.failure_limit}, analysis from "
               + (f"Prometheus {self.prometheus_url}" if self.prometheus_url else "the predictors' /metrics")
               if r.strategy == "canary" else "strategy replace")
        self.display.event(f"ModelDeployment {self.manifest.name}: models:/{model.name} {follows}; {how}")
        grpc_at = f", gRPC {self.router_url.split('//')[1].rsplit(':', 1)[0]}:{self.grpc_port}" \
            if self.grpc_port else ""
        self.display.event(f"router: {self.router_url}  (V2 REST: POST {self.router_url}/v2/models/"
                           f"{self.manifest.name}/infer{grpc_at})   MLflow: {self.tracking_uri}")

    def _start_mlflow(self) -> None:
        self.mlflow.start()
        self._add_child("mlflow", self.mlflow.proc, port=self.mlflow.port)

    async def _start_router(self) -> None:
        admin_port = free_port()
        cmd = [sys.executable, "-m", "modelops.local.router", "--port", str(self.port),
               "--admin-port", str(admin_port), "--host", self.host, "--grpc-port", str(self.grpc_port or 0)]
        self.router_proc = spawn(cmd, self.rundir.logs / "router.log")
        self.router_url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self._add_child("router", self.router_proc, port=self.port, adminPort=admin_port,
                        grpcPort=self.grpc_port or None)
        deadline = time.monotonic() + ROUTER_READY_TIMEOUT
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if self.router_proc.poll() is not None:
                    raise RuntimeError(f"the router exited with {self.router_proc.returncode}; "
                                       f"see {self.rundir.logs / 'router.log'}")
                try:
                    if (await client.get(f"{self.admin_url}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the router did not start in {ROUTER_READY_TIMEOUT:.0f}s; "
                                       f"see {self.rundir.logs / 'router.log'}")
                await asyncio.sleep(0.1)

    # --- versions ------------------------------------------------------------------------------
    def _options(self):
        from ..conversion import ConversionOptions

        c = self.spec.conversion
        return ConversionOptions(precision=c.precision, opset=c.opset, rtol=c.rtol, atol=c.atol)

    def _convert(self, version: str):
        return convert_version(self.registry, self.spec.model.name, version, self._options(),
                               self.spec.conversion.fingerprint, self.rundir.models)

    def _needed(self) -> set[str]:
        """Versions that must have a running predictor now."""
        traffic = self.state.traffic
        need = {v for v in (traffic.stable, traffic.canary) if v}
        if self.resolved and not self._refused(self.resolved):
            need.add(self.resolved)
        return need

    def _refused(self, version: str) -> bool:
        """The engine will not canary this version again (rolled back in this generation)."""
        rb = self.state.rolled_back
        return (rb is not None and rb.version == version and rb.generation == self.generation
                and version != self.state.stable_version)

    async def _drain(self, url: str) -> float | None:
        try:
            r = await self.http.post(f"{self.admin_url}/drain", json={"urls": [url], "timeout": 30})
            return r.json().get("waited_ms", 0)
        except (httpx.HTTPError, ValueError):
            return None

    def _targets_changed(self) -> None:
        self.metrics_provider.set_targets(self.predictors.metrics_urls())

    # --- one pass ------------------------------------------------------------------------------
    async def _resolve(self) -> None:
        model = self.spec.model
        try:
            resolved = await asyncio.to_thread(self.registry.resolve_version, model.name,
                                               version=model.version, alias=model.alias)
        except errors.ModelOpsError as exc:
            if self.resolve_error is None or str(exc) != str(self.resolve_error):
                self.display.event(f"{exc.reason}: {exc}"
                                   + ("; retrying" if exc.retryable else f"; looking again every "
                                                                         f"{self.resolve_interval:g}s"))
            self.resolve_error = exc
            return
        if self.resolve_error is not None:
            self.display.event(f"MLflow: {resolved.label} resolved")
        self.resolve_error = None
        if resolved.version != self.resolved:
            if self.resolved is not None:
                self.display.event(f"models:/{model.name}@{model.alias} moved: v{self.resolved} -> "
                                   f"v{resolved.version}" if model.alias else f"resolved v{resolved.version}")
            else:
                self.display.event(f"{model.uri} resolves to v{resolved.version}")
            self._events_log("Resolved", version=resolved.version)
            self.resolved = resolved.version
            slot = self.predictors.get(resolved.version)
            if slot is not None and slot.state == "failed":  # the alias changed: try that version again
                slot.state, slot.error = "pending", None

    def _observe(self) -> tuple[str | None, str | None]:
        """(target, preparing) as the operator defines them, from the slots."""
        v = self.resolved
        if v is None:
            return self.target, None
        if self._refused(v):
            return v, None  # the engine knows it was rolled back: it will not canary it again
        slot = self.predictors.get(v)
        if slot is not None and slot.ready:
            self.target = v
            return v, None
        if slot is not None and slot.state in ("converting", "starting", "pending"):
            return self.target, v
        return self.target, None

    def _gate(self, c: CallGate) -> GateResult:
        from ..rollout.hooks import call_gates

        coro = call_gates(self.http, self.gates, c.type, deployment=self.manifest.deployment_id,
                          model=self.spec.model.name, version=c.version, stable_version=c.stable_version,
                          weight=c.weight)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    def _stats(self, versions: list[str]) -> dict[str, tuple[float | None, float | None]]:
        window = max(2.0, min(5.0, self.spec.rollout.interval_seconds))
        out = {}
        for v in versions:
            selector = Target(self.manifest.name, v, None, window, 0).selector(v)
            n = self.metrics_provider.query(RequestCount(selector, window))
            p99 = self.metrics_provider.query(LatencyQuantile(selector, window, 0.99))
            out[v] = (n / window if isinstance(n, float) else None,
                      p99 * 1000 if isinstance(p99, float) else None)
        return out

    # The driver's Store and History (local mode's status document; MLflow through the worker).
    def save(self, state: RolloutState, result) -> None:
        self.state = state
        self._write_status()

    def record(self, moves: tuple, now: datetime) -> None:
        self._loop.call_soon_threadsafe(self._history.put_nowait, (moves, now))

    def _pass(self, facts: driver.Facts, now: datetime):
        """In a worker thread: scrape, one pass of the rollout driver, stats for the table."""
        if self.metrics_provider.urls:
            self.metrics_provider.scrape()
        result = driver.tick(self.state, self.spec, facts, platform=self.platform, store=self, history=self,
                             provider=self.provider, scope=driver.AnalysisScope(self.manifest.name, LOCAL_NAMESPACE),
                             now=now, gate=self._gate, policy=self.policy)
        t = result.state.traffic
        stats = self._stats([v for v in (t.stable, t.canary) if v]) if self.metrics_provider.urls else {}
        return result, stats

    async def tick_once(self) -> None:
        now = _utcnow()
        if self.router_proc is not None and self.router_proc.poll() is not None:
            raise RuntimeError(f"the router exited with {self.router_proc.returncode}; "
                               f"see {self.rundir.logs / 'router.log'}")
        self.predictors.check()
        if time.monotonic() >= self._next_resolve:
            await self._resolve()
            self._next_resolve = time.monotonic() + self.resolve_interval
        for v in self._needed():
            self.predictors.ensure(v, self._needed)
        target, preparing = self._observe()
        traffic = self.state.traffic
        if self._restoring:
            waiting = [v for v in (traffic.stable, traffic.canary) if v and not self.predictors.ready(v)]
            if any((self.predictors.get(v) or None) and self.predictors.get(v).state == "failed" for v in waiting):
                self.display.event("could not restore the previous versions: starting afresh")
                self.state = RolloutState()
            self._restoring = bool(waiting) and self.state.stable_version is not None
        for webhook, seq in self._acks:
            self.state = acknowledge(self.state, webhook, seq, self.policy)
        self._acks.clear()
        weight = self.state.weight
        facts = driver.Facts(target=target, preparing=preparing, generation=self.generation,
                             annotations=self.manifest.annotations)
        result, stats = await asyncio.to_thread(self._pass, facts, now)
        if result.apply_error:
            self.display.event(f"router: routes not applied ({result.apply_error}); trying again")
        elif self.platform.changed:
            self._events_log("Routes", routes=[{"version": x["version"], "weight": x["weight"]}
                                               for x in self.platform.routes])
        self._report(result.actions, weight)
        if self.webhooks:
            self.dispatcher.submit(self.manifest.deployment_id, self.spec.model.name, self.webhooks,
                                   pending(self.state, self.policy), self.state.delivered)
        need = self._needed()
        for slot in list(self.predictors.slots.values()):
            if slot.ready and slot.version not in need:
                self.metrics_provider.set_targets([u for u in self.predictors.metrics_urls() if u != slot.metrics_url])
                asyncio.create_task(self.predictors.retire(slot, self._drain))
                slot.state = "stopping"
        self._write_status()
        self._show(stats)

    # --- output --------------------------------------------------------------------------------
    def _report(self, actions, weight: int) -> None:
        """Event lines and the events log; `weight`: the canary's weight before this pass."""
        a = self.state.analysis
        new = a if a and a.get("at") != self._last_analysis_at else None
        if new:
            self._last_analysis_at = new.get("at")
        narrate.report(self.display.event, self._events_log, actions, new, weight)

    def _show(self, stats: dict) -> None:
        phase = (self._status or {}).get("phase", "Pending")
        self.display.table(*narrate.table(self.state, self.policy, stats, phase))

    def _facts(self) -> Facts:
        stable_slot = self.predictors.get(self.state.stable_version)
        stable = stable_slot.served if stable_slot is not None else None
        if stable is None and self._status and (self._status.get("stable") or {}).get("version") == \
                self.state.stable_version:
            stable = self._status.get("stable")
        facts = Facts(generation=self.generation, resolved_version=self.resolved, stable=stable,
                      url=self.router_url if self.platform.routes else None, canary=self.state)
        slot = self.predictors.get(self.resolved)
        if self.resolve_error is not None:
            e = self.resolve_error
            facts.error = (e.reason, str(e), e.retryable)
        elif slot is not None and slot.state == "pending" and slot.error is not None:
            e = slot.error
            facts.error = (e.reason, str(e), True)
        elif slot is not None and slot.state == "failed" and slot.error is not None:
            e = slot.error
            facts.error = (e.reason, str(e), False)
            facts.failed = {"version": slot.version, "options": self.spec.conversion.fingerprint,
                            "reason": e.reason, "message": str(e)[:2048]}
        elif slot is not None and slot.state == "converting":
            facts.converting = slot.version
        elif slot is not None and slot.state == "starting":
            facts.starting = slot.version
        return facts

    def _write_status(self, stopped: bool = False) -> None:
        facts = self._facts()
        facts.stopped = stopped
        doc = compose(facts, self._status)
        if doc != self._status:
            self._status = doc
            write_json(self.rundir.status_path, doc)

    # --- side channels -------------------------------------------------------------------------
    def _delivered(self, deployment: str, webhook: str, seq: int) -> None:
        self._acks.append((webhook, seq))

    async def _history_worker(self) -> None:
        """MLflow history (version tags, promoteAlias), in order, retried while MLflow is away."""
        from ..rollout.history import record_actions

        while True:
            moves, now = await self._history.get()
            for attempt in range(1, 6):
                try:
                    await asyncio.to_thread(record_actions, self.registry, self.spec.model.name,
                                            LOCAL_NAMESPACE, self.manifest.name, moves, now,
                                            self.spec.rollout.promote_alias)
                    break
                except errors.ModelOpsError as exc:
                    self.display.event(f"MLflow history not written yet ({exc.reason}); retrying")
                    await asyncio.sleep(min(10, attempt * 2))
            self._history.task_done()

    # --- run -----------------------------------------------------------------------------------
    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start()
            while not self._stop.is_set():
                await self.tick_once()
                try:
                    await asyncio.wait_for(self._stop.wait(), self.tick)
                except asyncio.TimeoutError:
                    pass
            self.display.event("stopping (drain, then stop every process started)")
            return 0
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.stopping = True
        if self._history is not None:
            try:  # what happened is written to MLflow before it goes away
                await asyncio.wait_for(self._history.join(), 15)
            except asyncio.TimeoutError:
                pass
        if self._history_task is not None:
            self._history_task.cancel()
        if self.dispatcher is not None:
            try:
                await asyncio.wait_for(self.dispatcher.join(), 5)
            except asyncio.TimeoutError:
                pass
            await self.dispatcher.aclose()
        # The router first (uvicorn finishes the requests in flight), then what it forwarded to.
        await asyncio.to_thread(stop, self.router_proc)
        self._drop_child("router")
        if self.predictors is not None:
            await self.predictors.close()
        if self.platform is not None:
            self.platform.close()
        if self.http is not None:
            await self.http.aclose()
        if self.mlflow is not None:
            await asyncio.to_thread(self.mlflow.stop)
            self._drop_child("mlflow")
        if self._status is not None and self.registry is not None:
            self._write_status(stopped=True)
        try:
            self.rundir.supervisor_path.unlink()
        except FileNotFoundError:
            pass
        self.display.event("stopped")


def run_up(manifest: Manifest, rundir: RunDir, **kwargs) -> int:
    supervisor = Supervisor(manifest, rundir, **kwargs)
    supervisor.preflight()  # InvalidSpec naming the flag or field: nothing started, nothing written
    return asyncio.run(supervisor.run())
