"""The one retry policy (modelops.retry): its delays, and its tenacity loops retry, stop and re-raise."""

from __future__ import annotations

import asyncio

import pytest

from modelops import errors, retry


def test_delays_are_the_documented_ones():
    assert [retry.WEBHOOK.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [retry.HISTORY.delay(n) for n in range(1, 5)] == [2, 4, 8, 10] and retry.HISTORY.attempts == 5
    from modelops_operator.config import OperatorConfig

    config = OperatorConfig()
    assert (config.backoff_base, config.backoff_max) == (retry.OPERATOR.first, retry.OPERATOR.cap)
    # Kopf counts retries from 0: the first delay is the policy's first.
    assert [config.backoff(r) for r in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert OperatorConfig(backoff_base=0.5, backoff_max=2).backoff(5) == 2


def test_retrying_retries_then_reraises_the_last_error():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise errors.RegistryUnavailable(f"down {len(calls)}")
        return "ok"

    policy = retry.Backoff(first=0.001, cap=0.004, attempts=4)
    assert policy.retrying(on_retry=lambda exc, d: waits.append((str(exc), d)))(flaky) == "ok"
    assert waits == [("down 1", 0.001), ("down 2", 0.002)]
    calls.clear()
    with pytest.raises(errors.RegistryUnavailable, match="down 2"):
        retry.Backoff(0.001, 0.001, attempts=2).retrying()(flaky)
    with pytest.raises(ValueError):  # not a retried type: raised at once
        retry.Backoff(0.001, 0.001, attempts=5).retrying(retry_on=(errors.ModelOpsError,))(
            lambda: (_ for _ in ()).throw(ValueError("bad")))


def test_history_retries_modelops_errors_only(monkeypatch):
    monkeypatch.setattr(retry, "HISTORY", retry.Backoff(0.001, 0.001, attempts=3))
    seen = []

    async def write(fail_with):
        async for attempt in retry.history(on_retry=lambda exc, d: seen.append(type(exc).__name__)):
            with attempt:
                raise fail_with

    with pytest.raises(errors.RegistryUnavailable):
        asyncio.run(write(errors.RegistryUnavailable("MLflow away")))
    assert seen == ["RegistryUnavailable"] * 2  # 3 attempts, 2 waits
    with pytest.raises(KeyError):
        asyncio.run(write(KeyError("a bug is not retried")))
    assert len(seen) == 2


def test_wait_until_polls_ignores_not_listening_and_times_out():
    answers = iter([OSError("refused"), False, True])

    def check():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    asyncio.run(retry.wait_until(check, retry.Poll(0.001, 5), on_timeout=lambda: AssertionError("late")))
    with pytest.raises(TimeoutError, match="never"):
        asyncio.run(retry.wait_until(lambda: False, retry.Poll(0.01, 0.05), on_timeout=lambda: TimeoutError("never")))

    async def exited():
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):  # not ignored: at once, not after the timeout
        asyncio.run(retry.wait_until(exited, retry.Poll(0.01, 60), on_timeout=lambda: TimeoutError()))
    with pytest.raises(TimeoutError):
        retry.wait_until_sync(lambda: False, retry.Poll(0.01, 0.05), on_timeout=lambda: TimeoutError())
