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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import httpx

from .. import errors
from ..rollout import (Analyse, AnalysisResult, CallGate, GateResult, Notify, Observations, Outcome,
                       Promote, RollBack, RolloutPolicy, RolloutState, acknowledge, analyse, drive, pending)
from ..rollout.analysis import LatencyQuantile, RequestCount, Target
from ..rollout.engine import transitions
from .display import Display, Row
from .manifest import LOCAL_NAMESPACE, Manifest
from .ports import free_port
from . import router_auth
from .processes import spawn, stop
from .rundir import RunDir, process_record, read_json, write_json
from .status import Facts, compose

ROUTER_READY_TIMEOUT = 30.0
PREDICTOR_READY_TIMEOUT = 180.0


@dataclass
class Slot:
    """One model version in local mode: converted, then served by its own predictor."""

    version: str
    state: str = "pending"  # converting | starting | ready | failed | stopping | stopped
    onnx_dir: Path | None = None
    served: dict | None = None  # {version, onnxUri, storageUri, sha256, options} (status.stable)
    proc: subprocess.Popen | None = None
    port: int | None = None
    grpc_port: int | None = None
    error: errors.ModelOpsError | None = None
    task: asyncio.Task | None = None
    retry_at: float = 0.0  # after a retryable failure (MLflow unreachable): when to try again

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Supervisor:
    def __init__(self, manifest: Manifest, rundir: RunDir, *, tracking_uri: str | None = None,
                 port: int = 8080, grpc_port: int = 8081, host: str = "127.0.0.1",
                 resolve_interval: float | None = None,
                 prometheus_url: str | None = None, secrets_dir: str | Path | None = None,
                 device: str | None = None, out: TextIO | None = None, live: bool | None = None,
                 tick: float | None = None, mlflow_port: int | None = None, token_file: str | None = None):
        self.manifest = manifest
        # The router's static bearer token (router_auth): from the file, else $MODELOPS_ROUTER_TOKEN.
        self.token_file = token_file
        token = router_auth.load_token(token_file)
        self.admin_headers = {"Authorization": f"Bearer {token}"} if token else {}
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

        self.slots: dict[str, Slot] = {}
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
        self._routes: list | None = None
        self._acks: list[tuple[str, int]] = []
        self._history: asyncio.Queue | None = None
        self._history_task: asyncio.Task | None = None
        self._convert_lock: asyncio.Lock | None = None
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
        def read(ref) -> bytes:
            base = self.secrets_dir or (Path(os.environ["MODELOPS_SECRETS_DIR"])
                                        if os.environ.get("MODELOPS_SECRETS_DIR") else None)
            if base is None:
                raise FileNotFoundError("no --secrets-dir")
            return (base / ref.name / ref.key).read_bytes().strip()
        return read

    def _check_secrets(self) -> None:
        """A secretRef that cannot be read fails before anything starts, naming the field."""
        read = self._secret_reader()
        hooks = self.spec.hooks
        for kind, items in (("webhooks", hooks.webhooks), ("gates", hooks.gates)):
            for i, item in enumerate(items):
                if item.secret_ref is None:
                    continue
                try:
                    read(item.secret_ref)
                except OSError:
                    raise errors.InvalidSpec(
                        f"spec.hooks.{kind}[{i}].secretRef",
                        f"secret {item.secret_ref.name}/{item.secret_ref.key} not found: local mode reads "
                        f"secrets from files --secrets-dir DIR/{item.secret_ref.name}/{item.secret_ref.key}") \
                        from None

    def _check_ports(self) -> None:
        import socket

        if self.port == 0:
            self.port = free_port()
        elif self.port == self.grpc_port:
            raise errors.InvalidSpec("--grpc-port", f"{self.port} is the HTTP port too")
        for flag, port in (("--port", self.port), ("--grpc-port", self.grpc_port)):
            if not port:
                continue
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.host, port))
                except OSError as exc:
                    raise errors.InvalidSpec(flag, f"{self.host}:{port} is not free ({exc.strerror}); choose "
                                                   f"another with {flag}") from None

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
        self._check_ports()
        self._check_secrets()

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
        self._convert_lock = asyncio.Lock()
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
               "--admin-port", str(admin_port), "--host", self.host, "--grpc-port", str(self.grpc_port or 0),
               *(["--token-file", self.token_file] if self.token_file else [])]
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

    def _convert(self, version: str) -> tuple[Path, dict, bool]:
        """Resolve, then reuse a published conversion or convert and publish (the operator's code)."""
        from ..conversion import convert_and_publish, find_published

        options = self._options()
        resolved = self.registry.resolve_version(self.spec.model.name, version=version)
        out = self.rundir.models / f"v{version}-{options.key}"
        found = find_published(self.registry, resolved, options, fresh=True)
        if found is not None:
            from ..conversion.pipeline import file_sha256

            if not ((out / "model.onnx").exists() and file_sha256(out / "model.onnx") == found.sha256):
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                self.registry.download_dir(found.onnx_uri, out)
            result, cached = found, True
        else:
            result = convert_and_publish(self.registry, resolved, options, out_dir=out)
            cached = False
        served = {"version": version, "onnxUri": result.onnx_uri, "storageUri": str(out),
                  "sha256": result.sha256, "options": self.spec.conversion.fingerprint}
        return out, served, cached

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

    def _ensure(self, version: str) -> Slot:
        slot = self.slots.get(version)
        if slot is None:
            slot = self.slots[version] = Slot(version)
        if slot.state in ("pending", "stopped") and not self.stopping and time.monotonic() >= slot.retry_at:
            slot.state = "converting" if slot.onnx_dir is None else "starting"
            slot.task = asyncio.create_task(self._prepare(slot))
        return slot

    async def _prepare(self, slot: Slot) -> None:
        v = slot.version
        try:
            if slot.onnx_dir is None:
                async with self._convert_lock:
                    t = time.monotonic()
                    slot.onnx_dir, slot.served, cached = await asyncio.to_thread(self._convert, v)
                how = "published conversion reused" if cached else "converted with the parity gate"
                self.display.event(f"v{v}: {how} in {time.monotonic() - t:.1f}s "
                                   f"(sha256 {slot.served['sha256'][:12]})")
                self._events_log("Converted", version=v, cached=cached, sha256=slot.served["sha256"])
            if self.stopping or v not in self._needed():
                slot.state = "stopped"
                return
            slot.state = "starting"
            await self._start_predictor(slot)
            slot.state = "ready"
            self.metrics_provider.set_targets(self._metrics_urls())
            self.display.event(f"v{v}: predictor ready at {slot.url} (pid {slot.proc.pid})")
        except errors.ModelOpsError as exc:
            slot.state, slot.error = ("pending" if exc.retryable else "failed"), exc
            if exc.retryable:
                slot.retry_at = time.monotonic() + 5.0
            self.display.event(f"v{v}: {exc.reason}: {exc}" + ("; retrying in 5s" if exc.retryable else ""))
            self._events_log("Failed", version=v, reason=exc.reason, message=str(exc))
            if slot.proc is not None:
                await asyncio.to_thread(stop, slot.proc)
                self._drop_child(f"predictor-v{v}")
                slot.proc = None
        except Exception as exc:  # an unexpected failure of one version never stops the others
            slot.state = "failed"
            slot.error = errors.ConversionError(f"{type(exc).__name__}: {exc}")
            self.display.event(f"v{v}: failed: {type(exc).__name__}: {exc}")
            if slot.proc is not None:
                await asyncio.to_thread(stop, slot.proc)
                self._drop_child(f"predictor-v{v}")
                slot.proc = None

    async def _start_predictor(self, slot: Slot) -> None:
        slot.port = free_port()
        slot.grpc_port = free_port() if self.grpc_port else 0
        while slot.grpc_port and slot.grpc_port == slot.port:
            slot.grpc_port = free_port()
        cmd = [sys.executable, "-m", "modelops.cli", "serve", str(slot.onnx_dir), "--name", self.manifest.name,
               "--model-version", slot.version, "--http-port", str(slot.port), "--grpc-port", str(slot.grpc_port),
               "--device", self.device, "--host", "127.0.0.1"]  # only the router is reached from outside
        log = self.rundir.logs / f"predictor-v{slot.version}.log"
        slot.proc = spawn(cmd, log)
        self._add_child(f"predictor-v{slot.version}", slot.proc, port=slot.port, version=slot.version)
        deadline = time.monotonic() + PREDICTOR_READY_TIMEOUT
        why = "not answering"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if slot.proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                    raise errors.ServingError(f"the predictor of v{slot.version} exited with "
                                              f"{slot.proc.returncode}; {log}: {tail.strip()[-300:]}")
                if self.stopping:
                    raise errors.ServingError("stopping")
                try:
                    r = await client.get(f"{slot.url}/v2/health/ready")
                    if r.status_code == 200:
                        return
                    why = r.text[:300]
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise errors.DeviceUnavailable(f"the predictor of v{slot.version} is not ready after "
                                                   f"{PREDICTOR_READY_TIMEOUT:.0f}s: {why}")
                await asyncio.sleep(0.2)

    def _metrics_urls(self) -> list[str]:
        return [s.metrics_url for s in self.slots.values() if s.state == "ready"]

    async def _retire(self, slot: Slot) -> None:
        """Stop a predictor once the router no longer sends to it and its requests finished."""
        slot.state = "stopping"
        try:
            r = await self.http.post(f"{self.admin_url}/drain", json={"urls": [slot.url], "timeout": 30},
                                 headers=self.admin_headers)
            waited = r.json().get("waited_ms", 0)
        except (httpx.HTTPError, ValueError):
            waited = None
        await asyncio.to_thread(stop, slot.proc)
        self._drop_child(f"predictor-v{slot.version}")
        slot.proc, slot.port = None, None
        slot.state = "stopped"
        drained = f"drained in {waited:.0f} ms, " if waited is not None else ""
        self.display.event(f"v{slot.version}: predictor stopped ({drained}no longer routed)")

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
            slot = self.slots.get(resolved.version)
            if slot is not None and slot.state == "failed":  # the alias changed: try that version again
                slot.state, slot.error = "pending", None

    def _observe(self) -> tuple[str | None, str | None]:
        """(target, preparing) as the operator defines them, from the slots."""
        v = self.resolved
        if v is None:
            return self.target, None
        if self._refused(v):
            return v, None  # the engine knows it was rolled back: it will not canary it again
        slot = self.slots.get(v)
        if slot is not None and slot.state == "ready":
            self.target = v
            return v, None
        if slot is not None and slot.state in ("converting", "starting", "pending"):
            return self.target, v
        return self.target, None

    def _analyse(self, a: Analyse, now: datetime) -> AnalysisResult:
        target = Target(model=self.manifest.name, version=a.version, stable_version=a.stable_version,
                        window=a.window_seconds, weight=a.weight, namespace=LOCAL_NAMESPACE)
        return analyse(self.spec.rollout.analysis, self.provider, target, now)

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

    def _drive(self, obs: Observations, now: datetime, driving: bool):
        """In a worker thread: scrape, step the engine (answering its questions), read stats."""
        if self.metrics_provider.urls:
            self.metrics_provider.scrape()
        state, actions = self.state, ()
        if driving:
            state, actions = drive(self.state, obs, self.policy, now,
                                   analyse=lambda a: self._analyse(a, now), gate=self._gate)
        t = state.traffic
        stats = self._stats([v for v in (t.stable, t.canary) if v]) if self.metrics_provider.urls else {}
        return state, actions, stats

    async def _apply_traffic(self) -> None:
        t = self.state.traffic
        routes = []
        for version, weight in ((t.stable, 100 - t.weight if t.canary else 100), (t.canary, t.weight)):
            if version is None:
                continue
            slot = self.slots.get(version)
            if slot is None or slot.state != "ready":
                continue
            route = {"version": version, "url": slot.url, "weight": weight}
            if slot.grpc_port:
                route["grpc"] = f"127.0.0.1:{slot.grpc_port}"
            routes.append(route)
        if routes == self._routes:
            return
        r = await self.http.put(f"{self.admin_url}/routes", json={"routes": routes}, headers=self.admin_headers)
        r.raise_for_status()
        self._routes = routes
        self._events_log("Routes", routes=[{"version": x["version"], "weight": x["weight"]} for x in routes])

    def _check_children(self) -> None:
        """A predictor that died is restarted; the router dying ends local mode (exit 1)."""
        if self.router_proc is not None and self.router_proc.poll() is not None:
            raise RuntimeError(f"the router exited with {self.router_proc.returncode}; "
                               f"see {self.rundir.logs / 'router.log'}")
        for slot in self.slots.values():
            if slot.state == "ready" and slot.proc is not None and slot.proc.poll() is not None:
                self.display.event(f"v{slot.version}: predictor exited with {slot.proc.returncode} "
                                   f"(see {self.rundir.logs / f'predictor-v{slot.version}.log'}); restarting")
                self._drop_child(f"predictor-v{slot.version}")
                slot.proc, slot.state = None, "stopped"
                self.metrics_provider.set_targets(self._metrics_urls())

    async def tick_once(self) -> None:
        now = _utcnow()
        self._check_children()
        if time.monotonic() >= self._next_resolve:
            await self._resolve()
            self._next_resolve = time.monotonic() + self.resolve_interval
        for v in self._needed():
            self._ensure(v)
        target, preparing = self._observe()
        traffic = self.state.traffic
        waiting = [v for v in (traffic.stable, traffic.canary)
                   if v and (self.slots.get(v) is None or self.slots[v].state != "ready")]
        if self._restoring and any(self.slots.get(v) and self.slots[v].state == "failed" for v in waiting):
            self.display.event("could not restore the previous versions: starting afresh")
            self.state, self._restoring = RolloutState(), False
            waiting = []
        elif self._restoring and not waiting:
            self._restoring = False
            if self.state.phase.active and self.state.next_analysis_at is not None:
                # Nothing was measured while local mode was down: like a resumed pause, the
                # canary gets a fresh interval of traffic before it is analysed.
                self.state = self.state.evolve(next_analysis_at=now + self.policy.interval)
        driving = not waiting
        for webhook, seq in self._acks:
            self.state = acknowledge(self.state, webhook, seq, self.policy)
        self._acks.clear()
        obs = Observations.from_resource(self.spec, self.manifest.annotations, target=target,
                                         preparing=preparing, generation=self.generation)
        weight = self.state.weight
        state, actions, stats = await asyncio.to_thread(self._drive, obs, now, driving)
        self.state = state
        self._report(actions, now, weight)
        if self.webhooks:
            self.dispatcher.submit(self.manifest.deployment_id, self.spec.model.name, self.webhooks,
                                   pending(self.state, self.policy), self.state.delivered)
        await self._apply_traffic()
        need = self._needed()
        for slot in list(self.slots.values()):
            if slot.state == "ready" and slot.version not in need:
                self.metrics_provider.set_targets([u for u in self._metrics_urls() if u != slot.metrics_url])
                slot.state = "stopping"
                asyncio.create_task(self._retire(slot))
        self._write_status()
        self._show(stats)

    # --- output --------------------------------------------------------------------------------
    def _report(self, actions, now: datetime, weight: int) -> None:
        """Event lines and the events log; `weight`: the canary's weight before this pass."""
        moves = transitions(actions)
        if moves:
            self._history.put_nowait((moves, now))
        # The analysis first, then what it decided.
        a = self.state.analysis
        if a and a.get("at") != self._last_analysis_at:
            self._last_analysis_at = a.get("at")
            checks = ", ".join(c.get("message", "") if c["name"] in c.get("message", "")
                               else f"{c['name']} {c.get('message', '')}" for c in a.get("checks", [])
                               if c.get("outcome") != Outcome.SKIPPED.value)
            self.display.event(f"analysis of v{a['version']} at {weight}%: {a['outcome']} ({checks})")
            self._events_log("Analysis", version=a["version"], outcome=a["outcome"], check=a.get("check"),
                             message=a.get("message"), weight=weight)
        for a in actions:
            if isinstance(a, Notify):
                n = a.notification
                check = f" [deciding check: {n.check}]" if n.check else ""
                self.display.event(f"{n.event}: {n.message}{check}")
                self._events_log(n.event, version=n.version, weight=n.weight, stableVersion=n.stable_version,
                                 reason=n.reason, message=n.message, check=n.check)
            elif isinstance(a, Promote) and a.reason not in ("Analysis", "Manual"):
                what = "first deployment" if a.reason == "FirstDeployment" else f"strategy replace, was v{a.previous}"
                self.display.event(f"v{a.version} serves 100% ({what})")
                self._events_log("Serving", version=a.version, reason=a.reason, previous=a.previous)
            elif isinstance(a, RollBack) and a.reason in ("TargetIsStable", "Superseded", "Replace"):
                self.display.event(f"canary v{a.version} removed: {a.message}")
                self._events_log("Removed", version=a.version, reason=a.reason, message=a.message)

    def _show(self, stats: dict) -> None:
        s = self.state
        t = s.traffic
        rows = []
        if t.stable:
            rps, p99 = stats.get(t.stable, (None, None))
            rows.append(Row(t.stable, "stable", 100 - t.weight if t.canary else 100, rps=rps, p99_ms=p99))
        if t.canary:
            rps, p99 = stats.get(t.canary, (None, None))
            a = s.analysis if s.analysis and s.analysis.get("version") == t.canary else None
            checks = ""
            if a:
                outcomes = [c.get("outcome") for c in a.get("checks", [])]
                checks = f"{outcomes.count('Passed')} passed, {outcomes.count('Failed')} failed"
            rows.append(Row(t.canary, "canary", t.weight, step=f"{s.step + 1}/{len(self.policy.steps)}",
                            checks=checks or "none yet",
                            analyses=f"failed {s.failed_checks}/{self.policy.failure_limit}",
                            rps=rps, p99_ms=p99))
        phase = (self._status or {}).get("phase", "Pending")
        self.display.table(rows, f"{phase}; canary {s.phase.value}: {s.message}" if s.message else phase)

    def _facts(self) -> Facts:
        stable_slot = self.slots.get(self.state.stable_version or "")
        stable = stable_slot.served if stable_slot is not None else None
        if stable is None and self._status and (self._status.get("stable") or {}).get("version") == \
                self.state.stable_version:
            stable = self._status.get("stable")
        facts = Facts(generation=self.generation, resolved_version=self.resolved, stable=stable,
                      url=self.router_url if self._routes else None, canary=self.state)
        slot = self.slots.get(self.resolved or "")
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
        for slot in self.slots.values():
            if slot.task is not None and not slot.task.done():
                try:
                    await asyncio.wait_for(slot.task, 60)
                except (asyncio.TimeoutError, Exception):
                    pass
        for slot in self.slots.values():
            if slot.proc is not None:
                await asyncio.to_thread(stop, slot.proc)
                self._drop_child(f"predictor-v{slot.version}")
                slot.proc = None
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
