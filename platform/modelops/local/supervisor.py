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

This module is the driving loop. Process management is elsewhere: the router, MLflow and the
record of children in `services.py`, the predictors in `predictors.py`; what is observed from
the slots in `observe.py`; the MLflow history writer in `history_writer.py`; the output in
`narrate.py`/`display.py`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

import httpx

from .. import errors
from ..rollout import CallGate, GateResult, RolloutPolicy, RolloutState, acknowledge, pending
from ..rollout import driver
from ..rollout.history import RegistryHistory
from . import narrate, observe
from .display import Display
from .history_writer import HistoryWriter
from .local_platform import LocalPlatform
from .manifest import LOCAL_NAMESPACE, Manifest
from .predictors import Predictors, convert_version
from .preflight import check_ports, check_secrets, secret_reader
from .rundir import RunDir, read_json, write_json
from .services import Services, utcnow
from .status import compose


class Supervisor:
    def __init__(self, manifest: Manifest, rundir: RunDir, *, tracking_uri: str | None = None,
                 port: int = 8080, grpc_port: int = 8081, host: str = "127.0.0.1",
                 resolve_interval: float | None = None,
                 prometheus_url: str | None = None, secrets_dir: str | Path | None = None,
                 device: str | None = None, out: TextIO | None = None, live: bool | None = None,
                 tick: float | None = None, mlflow_port: int | None = None, token_file: str | None = None):
        self.manifest = manifest
        self.spec = manifest.spec
        self.rundir = rundir
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
        self.services = Services(manifest, rundir, tracking_uri=tracking_uri, port=port, grpc_port=grpc_port,
                                 host=host, say=self.display.event, token_file=token_file)

        self.predictors: Predictors | None = None
        self.platform: LocalPlatform | None = None
        self.state = RolloutState()
        self.generation = 1
        self.resolved: str | None = None
        self.target: str | None = None
        self.resolve_error: errors.ModelOpsError | None = None
        self.registry = None
        self.provider = None
        self.metrics_provider = None
        self.http: httpx.AsyncClient | None = None
        self.dispatcher = None
        self.webhooks: list = []
        self.gates: list = []
        self.stopping = False
        self._acks: list[tuple[str, int]] = []
        self.history: HistoryWriter | None = None
        self._next_resolve = 0.0
        self._status: dict | None = None
        self._last_analysis_at: str | None = None
        self._restoring = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def router_url(self) -> str:
        return self.services.router_url

    @property
    def tracking_uri(self) -> str | None:
        return self.services.tracking_uri

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
        s = self.services
        s.port = check_ports(s.host, s.port, s.grpc_port)
        check_secrets(self.spec.hooks, self._secret_reader())

    async def _start(self) -> None:
        from ..rollout.hooks import WebhookDispatcher, gates_from_spec, webhooks_from_spec

        self.rundir.create()
        self._restore()
        write_json(self.rundir.local_path, {"model": self.spec.model.name, "generation": self.generation,
                                            "specHash": self.manifest.spec_hash})
        self.services.write_record()
        if self.tracking_uri is None:
            await self.services.start_mlflow(self.mlflow_port)
        self.services.write_record()
        await self.services.start_router()
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
        history = RegistryHistory(self.registry, self.spec.model.name, LOCAL_NAMESPACE, self.manifest.name,
                                  self.spec.rollout.promote_alias)
        self.history = HistoryWriter(history.record, self.display.event)  # in a thread, in order, retried
        self.history.start()
        s = self.services
        self.predictors = Predictors(
            logs=self.rundir.logs, name=self.manifest.name, device=self.device, grpc=bool(s.grpc_port),
            convert=self._convert, record=s.add_child, forget=s.drop_child, say=self.display.event,
            log_event=s.log_event, on_ready=self._targets_changed)
        self.platform = LocalPlatform(self.predictors, s.admin_url, headers=s.admin_headers)
        model = self.spec.model
        follows = f"alias @{model.alias} (re-resolved every {self.resolve_interval:g}s)" if model.alias \
            else f"version {model.version}"
        r = self.spec.rollout
        how = (f"canary: steps {list(r.steps)}%, interval {r.interval}, failureLimit "
               f"{r.analysis.failure_limit}, analysis from "
               + (f"Prometheus {self.prometheus_url}" if self.prometheus_url else "the predictors' /metrics")
               if r.strategy == "canary" else "strategy replace")
        self.display.event(f"ModelDeployment {self.manifest.name}: models:/{model.name} {follows}; {how}")
        grpc_at = f", gRPC {self.router_url.split('//')[1].rsplit(':', 1)[0]}:{s.grpc_port}" \
            if s.grpc_port else ""
        self.display.event(f"router: {self.router_url}  (V2 REST: POST {self.router_url}/v2/models/"
                           f"{self.manifest.name}/infer{grpc_at})   MLflow: {self.tracking_uri}")

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
        return observe.needed(self.state, self.resolved, self.generation)

    async def _drain(self, url: str) -> float | None:
        return await self.services.drain(self.http, url)

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
            self.services.log_event("Resolved", version=resolved.version)
            self.resolved = resolved.version
            slot = self.predictors.get(resolved.version)
            if slot is not None and slot.state == "failed":  # the alias changed: try that version again
                slot.state, slot.error = "pending", None

    def _observe(self) -> tuple[str | None, str | None]:
        """(target, preparing) as the operator defines them, from the slots."""
        target, preparing, self.target = observe.observe(self.predictors, self.state, self.resolved,
                                                         self.generation, self.target)
        return target, preparing

    def _gate(self, c: CallGate) -> GateResult:
        from ..rollout.hooks import call_gates

        coro = call_gates(self.http, self.gates, c.type, deployment=self.manifest.deployment_id,
                          model=self.spec.model.name, version=c.version, stable_version=c.stable_version,
                          weight=c.weight)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    def _stats(self, versions: list[str]) -> dict[str, tuple[float | None, float | None]]:
        return observe.traffic_stats(self.metrics_provider, self.manifest.name, versions,
                                     self.spec.rollout.interval_seconds)

    # The driver's Store (local mode's status document); its History is the `HistoryWriter`.
    def save(self, state: RolloutState, result) -> None:
        self.state = state
        self._write_status()

    def _pass(self, facts: driver.Facts, now: datetime):
        """In a worker thread: scrape, one pass of the rollout driver, stats for the table."""
        if self.metrics_provider.urls:
            self.metrics_provider.scrape()
        result = driver.tick(self.state, self.spec, facts, platform=self.platform, store=self, history=self.history,
                             provider=self.provider, scope=driver.AnalysisScope(self.manifest.name, LOCAL_NAMESPACE),
                             now=now, gate=self._gate, policy=self.policy)
        t = result.state.traffic
        stats = self._stats([v for v in (t.stable, t.canary) if v]) if self.metrics_provider.urls else {}
        return result, stats

    async def tick_once(self) -> None:
        now = utcnow()
        self.services.check_router()
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
            self.services.log_event("Routes", routes=[{"version": x["version"], "weight": x["weight"]}
                                                      for x in self.platform.routes])
        if result.shadow_error:
            self.display.event(f"shadow: mirroring not applied ({result.shadow_error}); trying again")
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
        narrate.report(self.display.event, self.services.log_event, actions, new, weight)

    def _show(self, stats: dict) -> None:
        phase = (self._status or {}).get("phase", "Pending")
        self.display.table(*narrate.table(self.state, self.policy, stats, phase))

    def _write_status(self, stopped: bool = False) -> None:
        facts = observe.status_facts(self.predictors, self.state, generation=self.generation,
                                     resolved=self.resolved, resolve_error=self.resolve_error, status=self._status,
                                     url=self.router_url if self.platform.routes else None,
                                     fingerprint=self.spec.conversion.fingerprint)
        facts.stopped = stopped
        doc = compose(facts, self._status)
        if doc != self._status:
            self._status = doc
            write_json(self.rundir.status_path, doc)

    # --- side channels -------------------------------------------------------------------------
    def _delivered(self, deployment: str, webhook: str, seq: int) -> None:
        self._acks.append((webhook, seq))

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
        if self.history is not None:
            await self.history.close(15)  # what happened is written to MLflow before it goes away
        if self.dispatcher is not None:
            try:
                await asyncio.wait_for(self.dispatcher.join(), 5)
            except asyncio.TimeoutError:
                pass
            await self.dispatcher.aclose()
        # The router first (uvicorn finishes the requests in flight), then what it forwarded to.
        await self.services.stop_router()
        if self.predictors is not None:
            await self.predictors.close()
        if self.platform is not None:
            self.platform.close()
        if self.http is not None:
            await self.http.aclose()
        await self.services.stop_mlflow()
        if self._status is not None and self.registry is not None:
            self._write_status(stopped=True)
        self.services.remove_record()
        self.display.event("stopped")


def run_up(manifest: Manifest, rundir: RunDir, **kwargs) -> int:
    supervisor = Supervisor(manifest, rundir, **kwargs)
    supervisor.preflight()  # InvalidSpec naming the flag or field: nothing started, nothing written
    return asyncio.run(supervisor.run())
