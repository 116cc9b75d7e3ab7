"""Kopf handlers: thin triggers around `Reconciler.reconcile`.

Triggers:
- create/update(spec)/resume of a ModelDeployment: full reconcile (resolve, convert, deploy);
  retryable errors back off via `kopf.TemporaryError`, permanent ones end as `PermanentError`
  after the status says `Stalled` with the reason.
- a timer per alias-following ModelDeployment: re-resolve every `resolve_timer` seconds, so
  moving the alias in MLflow deploys the new version within `resolve_interval` (passes share
  MLflow's answers up to `resolve_max_age` old: `modelops.resolve_cache`).
- InferenceService events (KServe reporting readiness): refresh the owner's status, no MLflow.
- conversion Job events (job mode): continue the reconcile once the Job finished.

Passes of one object are serialized by a per-object lock; they run in worker threads so blocking
MLflow calls never stall the event loop, and a deletion never waits on MLflow.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import kopf

from modelops.deployment import GROUP, PLURAL, VERSION
from modelops.deployment.plan import ACTIVE_ROLLOUT_PHASES
from modelops.rollout.hooks import WebhookDispatcher

from . import builders, metrics
from .config import OperatorConfig
from .kube import ApiError
from .reconciler import Reconciler

log = logging.getLogger("modelops.operator")


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    # Handler progress in annotations: the CRD's structural schema would prune status.kopf.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelops.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="modelops.dev", key="last-handled-configuration")
    settings.persistence.finalizer = "modelops.dev/finalizer"
    # Our own Events describe transitions; Kopf's per-handler chatter stays in the logs.
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True  # one acting replica: the leader Lease (modelops_operator.leader)
    settings.execution.max_workers = 16  # Kopf's own executor (sync handlers; ours are async)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.batch_window = config.batch_window
    settings.batching.worker_limit = config.worker_limit


def post_events(body: dict, events) -> None:
    """Kubernetes Events for `body`, through Kopf (which posts them from any thread)."""
    for ev in events:
        kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message)


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, config: OperatorConfig) -> None:
    locks: dict[tuple[str, str], asyncio.Lock] = {}
    # Passes mostly wait on the Kubernetes API and MLflow: more of them in flight than asyncio's
    # default executor allows (CPUs + 4) is what a burst needs.
    workers = ThreadPoolExecutor(max_workers=config.pass_workers, thread_name_prefix="modelops-pass")

    async def in_worker(fn, *args, **kwargs):
        # as asyncio.to_thread: the context travels along (kopf.event from the thread needs it)
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(workers, call)

    async def delivered(deployment: str, webhook: str, seq: int) -> None:
        namespace, name = deployment.split("/", 1)
        async with locks.setdefault((namespace, name), asyncio.Lock()):
            await in_worker(reconciler.acknowledge, namespace, name, webhook, seq)

    dispatcher: list[WebhookDispatcher] = []  # made in the operator's event loop, on first use

    def dispatch(owed) -> None:
        if not dispatcher:
            dispatcher.append(WebhookDispatcher(on_delivered=delivered, base_delay=config.backoff_base / 5,
                                                max_delay=config.backoff_max))
        dispatcher[0].submit(owed.deployment, owed.model, owed.webhooks, owed.pending, owed.delivered)

    async def run_pass(namespace: str, name: str, *, resolve: bool, retry: int = 0,
                       strict: bool = False) -> None:
        lock = locks.setdefault((namespace, name), asyncio.Lock())
        started = time.monotonic()
        try:
            async with lock:
                result = await in_worker(reconciler.reconcile, namespace, name, resolve=resolve)
        except ApiError as exc:  # the Kubernetes API refused or failed: retry, never crash
            metrics.record_api_error(exc)
            if strict:
                raise kopf.TemporaryError(str(exc), delay=config.backoff(retry)) from exc
            log.warning("%s/%s: %s", namespace, name, exc)
            return
        metrics.record_pass(namespace, name, result, time.monotonic() - started)
        if result.body is not None:
            post_events(result.body, result.events)
        if result.wrote:
            log.info("%s/%s: wrote %s", namespace, name, ", ".join(result.wrote))
        if result.deliveries is not None:  # never blocks: one ordered worker per webhook
            dispatch(result.deliveries)
        if result.retry is not None:
            delay = config.backoff(retry)
            if strict:
                raise kopf.TemporaryError(f"{result.retry.reason}: {result.retry.message}", delay=delay)
            log.warning("%s/%s: %s (next try at the next resync)", namespace, name, result.retry.message)
        elif result.stalled is not None and strict:
            raise kopf.PermanentError(f"{result.stalled.reason}: {result.stalled.message}")

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        if config.api_url:
            return kopf.ConnectionInfo(server=config.api_url, insecure=True)
        # The official client's loaders (client certificates, exec plugins, in-cluster tokens),
        # the same configuration as the operator's own calls; Kopf logs in again on a 401.
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    async def reconcile_spec(name, namespace, retry, **_):
        await run_pass(namespace, name, resolve=True, retry=retry, strict=True)

    def follows_alias(spec, **_) -> bool:
        return bool((spec or {}).get("model", {}).get("alias"))

    # Every resolve_timer seconds with MLflow answers up to resolve_max_age old: within resolve_interval.
    @kopf.timer(GROUP, VERSION, PLURAL, interval=config.resolve_timer,
                initial_delay=config.resolve_timer, when=follows_alias, registry=registry)
    async def resolve_alias(name, namespace, stopped, **_):
        # Kopf never cancels a running timer; it waits for it before removing the finalizer.
        # So give up waiting on a pass (its thread finishes on its own) once the object goes.
        async def until_stopped():
            await stopped.wait()

        work = asyncio.ensure_future(run_pass(namespace, name, resolve=True))
        stop = asyncio.ensure_future(until_stopped())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            work.result()

    def rollout_active(status, **_) -> bool:
        return ((status or {}).get("canary") or {}).get("phase") in ACTIVE_ROLLOUT_PHASES

    @kopf.timer(GROUP, VERSION, PLURAL, interval=config.rollout_tick, initial_delay=config.rollout_tick,
                when=rollout_active, registry=registry)
    async def rollout_tick(name, namespace, **_):
        # The engine decides when an analysis is due; this only gives it the chance. No MLflow.
        await run_pass(namespace, name, resolve=False)

    @kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices",
                   labels={builders.LABEL_DEPLOYMENT: kopf.PRESENT}, registry=registry)
    async def service_changed(type, namespace, name, labels, meta, status, **_):
        if type in (None, "ADDED", "MODIFIED"):  # None: the initial listing
            if reconciler.own_write(namespace, name, meta.get("resourceVersion"), status):
                return  # the event of our own write: the pass that wrote it planned on it
            await run_pass(namespace, labels[builders.LABEL_DEPLOYMENT], resolve=False)

    if config.conversion == "job":
        @kopf.on.event("batch", "v1", "jobs", labels={builders.LABEL_COMPONENT: "converter"},
                       registry=registry)
        async def job_changed(type, namespace, labels, status, **_):
            finished = any(c.get("status") == "True" and c.get("type") in ("Complete", "Failed")
                           for c in (status or {}).get("conditions") or [])
            if finished and type in (None, "ADDED", "MODIFIED"):
                await run_pass(namespace, labels[builders.LABEL_DEPLOYMENT], resolve=True)
