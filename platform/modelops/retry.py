"""The one retry policy: every delay ModelOps waits between two attempts is defined here.

Built on `tenacity` (no hand-made loops). Two shapes:

- `Backoff(first, cap, attempts)`: exponential, `first, 2*first, 4*first, ...` capped at `cap`;
  `attempts=None` retries forever (webhook delivery is at least once).
- `Poll(every, timeout)`: ask again every `every` seconds until a check holds or `timeout` passes
  (readiness waits).

The policies, in one table:

| policy | used by | delays |
|---|---|---|
| `WEBHOOK` | `rollout.hooks.WebhookDispatcher` (operator) | 1s, 2s, 4s ... 60s, forever |
| `LOCAL_WEBHOOK` | the dispatcher in local mode | 0.5s ... 10s, forever |
| `OPERATOR` | `OperatorConfig.backoff` (Kopf `TemporaryError` delay after a retryable error) | 5s ... 300s |
| `HISTORY` | MLflow history in local mode (`history()`) | 2s, 4s, 8s, 10s: 5 attempts |
| `MLFLOW_HTTP` | MLflow's own HTTP client (`registry.py` sets its environment) | 1 retry, factor 1, 30s timeout |
| `PREDICTOR_READY` / `ROUTER_READY` / `MLFLOW_READY` | readiness waits (`wait_until`) | every 0.2s / 0.1s / 0.25s up to 180s / 30s / 90s |

For local mode (the lead wires these in):

    async for attempt in retry.history(on_retry=lambda exc, delay: display.event(...)):
        with attempt:
            await asyncio.to_thread(record_actions, ...)
    # after the last attempt the error is re-raised: catch ModelOpsError to log and go on

    await retry.wait_until(ready, retry.PREDICTOR_READY, on_timeout=lambda: DeviceUnavailable(...))
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import tenacity
from tenacity import (AsyncRetrying, RetryCallState, Retrying, retry_if_exception_type, retry_if_result,
                      stop_after_attempt, stop_after_delay, stop_never, wait_exponential, wait_fixed)

OnRetry = Callable[[BaseException | None, float], Any]  # (the failure, the delay before the next try)


@dataclass(frozen=True)
class Backoff:
    first: float  # delay before the first retry
    cap: float  # no delay is longer
    attempts: int | None = None  # all tries together; None: retry forever

    def wait(self):
        """The tenacity wait strategy: first * 2**(n-1) before retry n, capped."""
        return wait_exponential(multiplier=self.first, exp_base=2, min=0, max=self.cap)

    def stop(self):
        return stop_never if self.attempts is None else stop_after_attempt(self.attempts)

    def delay(self, retry: int) -> float:
        """Seconds before retry number `retry` (1, 2, ...), as tenacity computes it."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = max(1, retry)
        return self.wait()(state)

    def retrying(self, *, retry_on: tuple[type[BaseException], ...] = (Exception,),
                 on_retry: OnRetry | None = None, asynchronous: bool = False):
        """A tenacity `Retrying` (or `AsyncRetrying`) of this policy; the last error is re-raised."""
        cls = AsyncRetrying if asynchronous else Retrying
        return cls(wait=self.wait(), stop=self.stop(), retry=retry_if_exception_type(retry_on), reraise=True,
                   before_sleep=_before_sleep(on_retry))


@dataclass(frozen=True)
class Poll:
    every: float  # seconds between two checks
    timeout: float  # give up after this long


WEBHOOK = Backoff(first=1.0, cap=60.0)
LOCAL_WEBHOOK = Backoff(first=0.5, cap=10.0)
OPERATOR = Backoff(first=5.0, cap=300.0)
HISTORY = Backoff(first=2.0, cap=10.0, attempts=5)
MLFLOW_HTTP = {  # MLflow's REST client retries for minutes by default: we retry at our own boundary
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
MLFLOW_PROBE_TIMEOUT = 3.0  # Registry.check_reachable's GET /health
PREDICTOR_READY = Poll(every=0.2, timeout=180.0)
ROUTER_READY = Poll(every=0.1, timeout=30.0)
MLFLOW_READY = Poll(every=0.25, timeout=90.0)


def _before_sleep(on_retry: OnRetry | None):
    if on_retry is None:
        return None

    def call(state: RetryCallState) -> None:
        outcome = state.outcome
        on_retry(outcome.exception() if outcome is not None and outcome.failed else None,
                 state.next_action.sleep if state.next_action else 0.0)
    return call


def history(on_retry: OnRetry | None = None) -> AsyncRetrying:
    """Local mode's MLflow history writes: `HISTORY` on any `ModelOpsError` (MLflow away).
    Use as `async for attempt in history(...): with attempt: ...`; after the last attempt the
    error is raised again."""
    from .errors import ModelOpsError

    return HISTORY.retrying(retry_on=(ModelOpsError,), on_retry=on_retry, asynchronous=True)


async def wait_until(check: Callable[[], Awaitable[bool] | bool], poll: Poll, *,
                     on_timeout: Callable[[], BaseException],
                     ignore: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """Call `check()` every `poll.every` seconds until it returns true; an exception of a type in
    `ignore` (e.g. `httpx.HTTPError`: not listening yet) counts as false. After `poll.timeout`,
    raise `on_timeout()`. Any other exception from `check` propagates at once (a process that
    exited: raise from `check`)."""
    async def once() -> bool:
        result = check()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    retrying = AsyncRetrying(wait=wait_fixed(poll.every), stop=stop_after_delay(poll.timeout),
                             retry=retry_if_result(lambda ok: not ok) | retry_if_exception_type(ignore))
    try:
        await retrying(once)
    except tenacity.RetryError:
        raise on_timeout() from None


def wait_until_sync(check: Callable[[], bool], poll: Poll, *, on_timeout: Callable[[], BaseException],
                    ignore: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """`wait_until` for code without an event loop (the embedded MLflow server's start)."""
    retrying = Retrying(wait=wait_fixed(poll.every), stop=stop_after_delay(poll.timeout),
                        retry=retry_if_result(lambda ok: not ok) | retry_if_exception_type(ignore))
    try:
        retrying(lambda: bool(check()))
    except tenacity.RetryError:
        raise on_timeout() from None
