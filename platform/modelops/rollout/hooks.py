"""Rollout hooks: signed notification webhooks and gate calls.

Pure parts (body, signature, backoff, gate verdict) are plain functions; the HTTP edge is
`WebhookDispatcher` (asyncio + httpx) and `call_gates`.

Delivery contract (README): `POST` with a JSON body, headers
- `X-ModelOps-Event`: Started | StepAdvanced | Promoted | RolledBack | Failed | ShadowStarted |
  ShadowPassed | ShadowFailed | PerformanceGatePassed | PerformanceGateFailed
- `X-ModelOps-Delivery`: `<namespace>/<name>/<seq>`, the same for every attempt (dedupe on it)
- `X-ModelOps-Signature-256`: `sha256=<hex HMAC-SHA256 of the raw body>` when a secret is set.
A 2xx answer acknowledges. Anything else (or no answer) is retried with exponential backoff
(`modelops.retry.WEBHOOK` unless the dispatcher is given another policy).
Per ModelDeployment and webhook, notifications go out one at a time in sequence order (at least
once: a retry after a lost acknowledgement repeats one); each (ModelDeployment, webhook) has its
own worker, so a slow receiver never blocks another object or another webhook.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Sequence

import httpx

from .. import retry
from .engine import GateResult
from .state import Notification

log = logging.getLogger("modelops.rollout.hooks")

EVENT_HEADER = "X-ModelOps-Event"
DELIVERY_HEADER = "X-ModelOps-Delivery"
SIGNATURE_HEADER = "X-ModelOps-Signature-256"
USER_AGENT = "modelops-rollout/1"


# --- pure parts ------------------------------------------------------------------------------
def notification_body(deployment: str, model: str, n: Notification) -> bytes:
    """The JSON body of a notification (compact, sorted keys: the signed bytes are stable)."""
    doc = {"deployment": deployment, "model": model, **n.to_status(), "id": f"{deployment}/{n.seq}"}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def gate_body(deployment: str, model: str, gate_type: str, version: str, stable_version: str | None,
              weight: int) -> bytes:
    doc = {"deployment": deployment, "model": model, "gate": gate_type, "version": version,
           "stableVersion": stable_version, "weight": weight}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return bool(signature) and hmac.compare_digest(sign(secret, body), signature)


def headers(body: bytes, secret: bytes | None, **extra: str) -> dict[str, str]:
    out = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **extra}
    if secret:
        out[SIGNATURE_HEADER] = sign(secret, body)
    return out


def backoff(attempt: int, base: float = retry.WEBHOOK.first, cap: float = retry.WEBHOOK.cap) -> float:
    """Delay before retry number `attempt` (1, 2, ...): base, 2 base, 4 base, ... capped."""
    return retry.Backoff(base, cap).delay(attempt)


def acknowledged(status_code: int) -> bool:
    return 200 <= status_code < 300


def gate_verdict(gate_type: str, version: str, answers: Sequence[tuple[str, int | None, str]]) -> GateResult:
    """All gates of a type must answer 2xx; (name, status or None for no answer, detail)."""
    refusals = [f"{name}: {status if status is not None else 'no answer'}{' ' + detail if detail else ''}"
                for name, status, detail in answers if status is None or not acknowledged(status)]
    if refusals:
        return GateResult(gate_type, version, False, "; ".join(refusals)[:1024])
    return GateResult(gate_type, version, True, f"{len(answers)} {gate_type} gate(s) answered 2xx")


# --- targets ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    events: frozenset[str]
    secret: bytes | None = None


@dataclass(frozen=True)
class Gate:
    name: str
    url: str
    type: str
    secret: bytes | None = None


def webhooks_from_spec(hooks, secret: Callable[[object], bytes | None]) -> list[Webhook]:
    """`spec.hooks.webhooks` (a `HooksSpec`) as delivery targets; `secret(SecretRef)` reads a key."""
    return [Webhook(w.name, w.url, frozenset(w.events), secret(w.secret_ref) if w.secret_ref else None)
            for w in hooks.webhooks]


def gates_from_spec(hooks, secret: Callable[[object], bytes | None]) -> list[Gate]:
    return [Gate(g.name, g.url, g.type, secret(g.secret_ref) if g.secret_ref else None) for g in hooks.gates]


# --- gates -----------------------------------------------------------------------------------
async def call_gates(client: httpx.AsyncClient, gates: Iterable[Gate], gate_type: str, *, deployment: str,
                     model: str, version: str, stable_version: str | None, weight: int,
                     timeout: float = 10.0) -> GateResult:
    """POST to every gate of `gate_type`; any non-2xx or error holds (the result is closed)."""
    body = gate_body(deployment, model, gate_type, version, stable_version, weight)
    answers = []
    for gate in (g for g in gates if g.type == gate_type):
        try:
            r = await client.post(gate.url, content=body, timeout=timeout,
                                  headers=headers(body, gate.secret, **{EVENT_HEADER: gate_type}))
            answers.append((gate.name, r.status_code, r.text[:200].strip()))
        except httpx.HTTPError as exc:
            answers.append((gate.name, None, f"{type(exc).__name__}: {exc}"[:200]))
    return gate_verdict(gate_type, version, answers)


# --- notifications ---------------------------------------------------------------------------
class _NotAcknowledged(Exception):
    """A delivery attempt got no 2xx (the text says what it got)."""


OnDelivered = Callable[[str, str, int], "Awaitable[None] | None"]


class WebhookDispatcher:
    """Ordered, retried, at-least-once delivery; one worker per (deployment, webhook).

    `submit()` never blocks: it queues what is new (a notification already queued or delivered
    by this process is skipped, so every reconcile can hand over its whole outbox) and returns.
    `on_delivered(deployment, webhook, seq)` runs after each 2xx: the caller records it in the
    state (`modelops.rollout.acknowledge`) so that a restart resumes after it.
    """

    def __init__(self, *, client: httpx.AsyncClient | None = None, on_delivered: OnDelivered | None = None,
                 base_delay: float | None = None, max_delay: float | None = None, timeout: float = 10.0,
                 max_attempts: int | None = None, policy: retry.Backoff = retry.WEBHOOK):
        """`policy` (default `retry.WEBHOOK`) sets the delays; `base_delay`, `max_delay` and
        `max_attempts` override its parts."""
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._own_client = client is None
        self._on_delivered = on_delivered
        self._policy = retry.Backoff(policy.first if base_delay is None else base_delay,
                                     policy.cap if max_delay is None else max_delay,
                                     policy.attempts if max_attempts is None else max_attempts)
        self._timeout = timeout
        self._queues: dict[tuple[str, str], deque] = {}
        self._done: dict[tuple[str, str], int] = {}
        self._hooks: dict[tuple[str, str], Webhook] = {}
        self._models: dict[str, str] = {}
        self._workers: dict[tuple[str, str], asyncio.Task] = {}
        self.attempts: dict[tuple[str, str, int], int] = {}
        self.failures: list[tuple[str, str, int, str]] = []  # given up (max_attempts reached)

    def submit(self, deployment: str, model: str, webhooks: Iterable[Webhook],
               pending: Iterable[tuple[str, Notification]], delivered: dict[str, int] | None = None) -> None:
        """Queue `(webhook name, notification)` pairs (from `modelops.rollout.pending`)."""
        hooks = {w.name: w for w in webhooks}
        self._models[deployment] = model
        for name, seq in (delivered or {}).items():
            key = (deployment, name)
            self._done[key] = max(self._done.get(key, 0), seq)
        for name, n in pending:
            hook = hooks.get(name)
            if hook is None or n.event not in hook.events:
                continue
            key = (deployment, name)
            self._hooks[key] = hook
            queue = self._queues.setdefault(key, deque())
            last = queue[-1].seq if queue else self._done.get(key, 0)
            if n.seq <= last:
                continue  # delivered or queued already
            queue.append(n)
            worker = self._workers.get(key)
            if worker is None or worker.done():
                self._workers[key] = asyncio.get_running_loop().create_task(self._work(key))

    def forget(self, deployment: str) -> None:
        """The object is gone: stop its workers."""
        for key in [k for k in self._workers if k[0] == deployment]:
            self._workers.pop(key).cancel()
            self._queues.pop(key, None)
            self._done.pop(key, None)

    async def _work(self, key: tuple[str, str]) -> None:
        deployment, name = key
        queue = self._queues[key]
        while queue:
            n = queue[0]
            ok = await self._deliver(key, n)
            queue.popleft()
            self._done[key] = n.seq
            if ok and self._on_delivered is not None:
                try:
                    result = self._on_delivered(deployment, name, n.seq)
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # the caller's bookkeeping must not stop deliveries
                    log.exception("on_delivered failed for %s %s #%d", deployment, name, n.seq)

    async def _deliver(self, key: tuple[str, str], n: Notification) -> bool:
        deployment, name = key
        tries = (deployment, name, n.seq)

        async def attempt() -> None:
            hook = self._hooks[key]  # the latest configuration of this webhook
            body = notification_body(deployment, self._models.get(deployment, ""), n)
            self.attempts[tries] = self.attempts.get(tries, 0) + 1
            try:
                r = await self._client.post(
                    hook.url, content=body, timeout=self._timeout,
                    headers=headers(body, hook.secret, **{EVENT_HEADER: n.event,
                                                          DELIVERY_HEADER: f"{deployment}/{n.seq}"}))
            except httpx.HTTPError as exc:
                raise _NotAcknowledged(f"{type(exc).__name__}: {exc}") from exc
            if not acknowledged(r.status_code):
                raise _NotAcknowledged(f"HTTP {r.status_code}")

        def retrying(exc, delay: float) -> None:
            log.info("webhook %s of %s: #%d attempt %d failed (%s); retrying in %.1fs",
                     name, deployment, n.seq, self.attempts[tries], exc, delay)

        self.attempts.pop(tries, None)
        try:
            await self._policy.retrying(retry_on=(_NotAcknowledged,), on_retry=retrying, asynchronous=True)(attempt)
            return True
        except _NotAcknowledged as exc:  # only with a bounded policy (max_attempts)
            self.failures.append((deployment, name, n.seq, str(exc)))
            log.warning("webhook %s of %s: giving up on #%d after %d attempts (%s)",
                        name, deployment, n.seq, self.attempts[tries], exc)
            return False

    async def join(self, timeout: float | None = None) -> None:
        """Wait until every queue is empty (tests, shutdown)."""
        async def wait():
            while any(not t.done() for t in self._workers.values()):
                await asyncio.gather(*[t for t in self._workers.values() if not t.done()],
                                     return_exceptions=True)
        await asyncio.wait_for(wait(), timeout)

    async def aclose(self) -> None:
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        if self._own_client:
            await self._client.aclose()
