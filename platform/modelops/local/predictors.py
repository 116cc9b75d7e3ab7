"""Local mode's versions: each converted (the operator's conversion code) and served by its own
`modelops serve` process; started, checked for readiness, drained and stopped here.

A `Slot` is one version: `pending` -> `converting` -> `starting` -> `ready`, and `stopping` ->
`stopped` once nothing routes to it (`failed` after a permanent error; a retryable one goes back
to `pending` after a pause). A predictor leaves only after the router stopped sending to it and
its in-flight requests finished (`drain`). No rollout decision is made here.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from .. import errors, retry
from .ports import free_port
from .processes import spawn, stop

RETRY_AFTER = 5.0  # seconds before a version is tried again after a retryable failure


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

    @property
    def ready(self) -> bool:
        return self.state == "ready"


@dataclass
class Predictors:
    """The slots and their processes. `convert(version) -> (dir, served, cached)` is the conversion;
    `record(role, proc, **more)` / `forget(role)` keep the supervisor's record of its children."""

    logs: Path
    name: str  # the served model name (the ModelDeployment's)
    device: str
    grpc: bool
    convert: Callable[[str], tuple[Path, dict, bool]]
    record: Callable[..., None]
    forget: Callable[[str], None]
    say: Callable[[str], None]  # an event line
    log_event: Callable[..., None]  # the events log
    on_ready: Callable[[], None] = lambda: None  # the set of ready predictors changed
    slots: dict[str, Slot] = field(default_factory=dict)
    stopping: bool = False
    _convert_lock: asyncio.Lock | None = None

    def get(self, version: str | None) -> Slot | None:
        return self.slots.get(version) if version else None

    def ready(self, version: str | None) -> bool:
        slot = self.get(version)
        return slot is not None and slot.ready

    def shadow_file(self, version: str) -> Path:
        """The mirror configuration the predictor of VERSION watches (absent or {}: off)."""
        return self.logs / f"shadow-v{version}.json"

    def metrics_urls(self) -> list[str]:
        return [s.metrics_url for s in self.slots.values() if s.ready]

    def ensure(self, version: str, needed: Callable[[], set[str]]) -> Slot:
        """Convert and start `version` unless it is under way (or waiting to be retried)."""
        slot = self.slots.get(version)
        if slot is None:
            slot = self.slots[version] = Slot(version)
        if slot.state in ("pending", "stopped") and not self.stopping and time.monotonic() >= slot.retry_at:
            slot.state = "converting" if slot.onnx_dir is None else "starting"
            slot.task = asyncio.create_task(self._prepare(slot, needed))
        return slot

    async def _prepare(self, slot: Slot, needed: Callable[[], set[str]]) -> None:
        v = slot.version
        if self._convert_lock is None:
            self._convert_lock = asyncio.Lock()
        try:
            if slot.onnx_dir is None:
                async with self._convert_lock:
                    t = time.monotonic()
                    slot.onnx_dir, slot.served, cached = await asyncio.to_thread(self.convert, v)
                how = "published conversion reused" if cached else "converted with the parity gate"
                self.say(f"v{v}: {how} in {time.monotonic() - t:.1f}s (sha256 {slot.served['sha256'][:12]})")
                self.log_event("Converted", version=v, cached=cached, sha256=slot.served["sha256"])
            if self.stopping or v not in needed():
                slot.state = "stopped"
                return
            slot.state = "starting"
            await self._start(slot)
            slot.state = "ready"
            self.on_ready()
            self.say(f"v{v}: predictor ready at {slot.url} (pid {slot.proc.pid})")
        except errors.ModelOpsError as exc:
            slot.state, slot.error = ("pending" if exc.retryable else "failed"), exc
            if exc.retryable:
                slot.retry_at = time.monotonic() + RETRY_AFTER
            self.say(f"v{v}: {exc.reason}: {exc}" + (f"; retrying in {RETRY_AFTER:g}s" if exc.retryable else ""))
            self.log_event("Failed", version=v, reason=exc.reason, message=str(exc))
            await self._kill(slot)
        except Exception as exc:  # an unexpected failure of one version never stops the others
            slot.state = "failed"
            slot.error = errors.ConversionError(f"{type(exc).__name__}: {exc}")
            self.say(f"v{v}: failed: {type(exc).__name__}: {exc}")
            await self._kill(slot)

    async def _kill(self, slot: Slot) -> None:
        if slot.proc is not None:
            await asyncio.to_thread(stop, slot.proc)
            self.forget(f"predictor-v{slot.version}")
            slot.proc = None

    async def _start(self, slot: Slot) -> None:
        slot.port = free_port()
        slot.grpc_port = free_port() if self.grpc else 0
        while slot.grpc_port and slot.grpc_port == slot.port:
            slot.grpc_port = free_port()
        cmd = [sys.executable, "-m", "modelops.cli", "serve", str(slot.onnx_dir), "--name", self.name,
               "--model-version", slot.version, "--http-port", str(slot.port), "--grpc-port", str(slot.grpc_port),
               "--device", self.device, "--host", "127.0.0.1",  # only the router is reached from outside
               "--shadow-config", str(self.shadow_file(slot.version))]  # what LocalPlatform.set_shadow writes
        log = self.logs / f"predictor-v{slot.version}.log"
        slot.proc = spawn(cmd, log)
        self.record(f"predictor-v{slot.version}", slot.proc, port=slot.port, version=slot.version)
        why = "not answering"
        async with httpx.AsyncClient(timeout=2.0) as client:
            async def ready() -> bool:
                nonlocal why
                if slot.proc.poll() is not None:  # exited: raised at once, not waited for
                    tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                    raise errors.ServingError(f"the predictor of v{slot.version} exited with "
                                              f"{slot.proc.returncode}; {log}: {tail.strip()[-300:]}")
                if self.stopping:
                    raise errors.ServingError("stopping")
                r = await client.get(f"{slot.url}/v2/health/ready")
                why = r.text[:300]
                return r.status_code == 200

            await retry.wait_until(ready, retry.PREDICTOR_READY, ignore=(httpx.HTTPError,),
                                   on_timeout=lambda: errors.DeviceUnavailable(
                                       f"the predictor of v{slot.version} is not ready after "
                                       f"{retry.PREDICTOR_READY.timeout:.0f}s: {why}"))

    async def retire(self, slot: Slot, drain: Callable) -> None:
        """Stop a predictor once the router no longer sends to it and its requests finished;
        `drain(url)` asks the router to wait for that (returns the wait in ms, or None)."""
        slot.state = "stopping"
        waited = await drain(slot.url)
        await asyncio.to_thread(stop, slot.proc)
        self.forget(f"predictor-v{slot.version}")
        slot.proc, slot.port = None, None
        slot.state = "stopped"
        drained = f"drained in {waited:.0f} ms, " if waited is not None else ""
        self.say(f"v{slot.version}: predictor stopped ({drained}no longer routed)")

    def check(self) -> None:
        """A predictor that died is started again (by the next `ensure`)."""
        for slot in self.slots.values():
            if slot.ready and slot.proc is not None and slot.proc.poll() is not None:
                self.say(f"v{slot.version}: predictor exited with {slot.proc.returncode} "
                         f"(see {self.logs / f'predictor-v{slot.version}.log'}); restarting")
                self.forget(f"predictor-v{slot.version}")
                slot.proc, slot.state = None, "stopped"
                self.on_ready()

    async def close(self) -> None:
        self.stopping = True
        for slot in self.slots.values():
            if slot.task is not None and not slot.task.done():
                try:
                    await asyncio.wait_for(slot.task, 60)
                except (asyncio.TimeoutError, Exception):
                    pass
        for slot in self.slots.values():
            await self._kill(slot)


def convert_version(registry, model: str, version: str, options, fingerprint: str, models_dir: Path):
    """Resolve, then reuse a published conversion or convert and publish (the operator's code);
    returns (the ONNX directory, the served record, whether a published result was reused)."""
    from ..conversion import convert_and_publish, find_published

    resolved = registry.resolve_version(model, version=version)
    out = models_dir / f"v{version}-{options.key}"
    found = find_published(registry, resolved, options, fresh=True)
    if found is not None:
        from ..conversion.pipeline import file_sha256

        if not ((out / "model.onnx").exists() and file_sha256(out / "model.onnx") == found.sha256):
            if out.exists():
                shutil.rmtree(out)
            registry.download_dir(found.onnx_uri, out)
        result, cached = found, True
    else:
        result = convert_and_publish(registry, resolved, options, out_dir=out)
        cached = False
    served = {"version": version, "onnxUri": result.onnx_uri, "storageUri": str(out),
              "sha256": result.sha256, "options": fingerprint}
    return out, served, cached
