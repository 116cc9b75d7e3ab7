"""Local mode's MLflow history (version tags, `promoteAlias`): the rollout driver's `History`.

The driver records from its worker thread; the writes happen in order on the event loop, each
retried while MLflow is away by the one retry policy (`modelops.retry.HISTORY`: 2, 4, 8, 10 s between
five tries); after the last try those entries are missed (said on the console), never the rollout.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Callable

from .. import errors, retry


class HistoryWriter:
    """`write(moves, now, state)` runs in a thread; `say` gets a line when a write must wait for MLflow."""

    def __init__(self, write: Callable[[tuple, datetime, object], None], say: Callable[[str], None]):
        self._write = write
        self._say = say
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker())

    def record(self, moves: tuple, now: datetime, state=None) -> None:
        """The driver's `History.record`, from any thread (`state`: the frozen RolloutState persisted
        with the moves, for the rollout report)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (moves, now, state))

    async def _worker(self) -> None:
        while True:
            moves, now, state = await self._queue.get()
            try:
                async for attempt in retry.history(on_retry=self._retrying):
                    with attempt:
                        await asyncio.to_thread(self._write, moves, now, state)
            except errors.ModelOpsError as exc:
                self._say(f"MLflow history not written ({exc.reason}): these transitions are missed there")
            finally:
                self._queue.task_done()

    def _retrying(self, exc: BaseException | None, delay: float) -> None:
        reason = getattr(exc, "reason", type(exc).__name__)
        self._say(f"MLflow history not written yet ({reason}); retrying in {delay:g}s")

    async def close(self, timeout: float = 15.0) -> None:
        """What happened is written to MLflow before it goes away (waits at most `timeout`)."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except asyncio.TimeoutError:
                pass
        if self._task is not None:
            self._task.cancel()
