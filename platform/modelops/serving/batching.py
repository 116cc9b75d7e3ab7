"""Server-side dynamic batching: concurrent requests share one onnxruntime call.

No fixed delay by default: while one batch runs (in a worker thread, GIL released), requests
queue up; when it finishes, everything queued (up to `max_batch_size` rows) runs as the next
batch. A lone request therefore runs at once, and batches grow with the load.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 64
    max_wait_ms: float = 0.0  # >0: wait this long for a batch to fill (throughput over latency)


class DynamicBatcher:
    def __init__(self, run: Callable[[dict], list[np.ndarray]], config: BatchingConfig,
                 on_batch: Callable[[int], None] | None = None):
        self._run = run
        self._config = config
        self._queue: list[tuple[dict, int, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-batch")
        self._on_batch = on_batch

    async def submit(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        rows = len(next(iter(feeds.values())))
        self._queue.append((feeds, rows, fut))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await fut

    def _take(self) -> list[tuple[dict, int, asyncio.Future]]:
        """The next batch: queued requests with the same non-batch shapes, up to the row limit."""
        first = self._queue[0]
        tail = {k: v.shape[1:] for k, v in first[0].items()}
        batch, rest, rows = [], [], 0
        for item in self._queue:
            fits = rows + item[1] <= self._config.max_batch_size or not batch
            if fits and all(item[0][k].shape[1:] == s for k, s in tail.items()):
                batch.append(item)
                rows += item[1]
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._config.max_wait_ms > 0 and len(self._queue) < self._config.max_batch_size:
                await asyncio.sleep(self._config.max_wait_ms / 1000)
            batch = self._take()
            if len(batch) == 1:
                feeds = batch[0][0]
            else:
                feeds = {k: np.concatenate([item[0][k] for item in batch]) for k in batch[0][0]}
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, feeds)
            except Exception as exc:
                if len(batch) == 1:
                    if not batch[0][2].done():
                        batch[0][2].set_exception(exc)
                    continue
                # One request's values can fail the whole call (an index out of range): rerun
                # each alone, so only the request that caused it sees the failure.
                for item_feeds, _, fut in batch:
                    try:
                        result = await loop.run_in_executor(self._executor, self._run, item_feeds)
                    except Exception as item_exc:
                        if not fut.done():
                            fut.set_exception(item_exc)
                    else:
                        if not fut.done():
                            fut.set_result(result)
                continue
            if self._on_batch:
                self._on_batch(sum(item[1] for item in batch))
            start = 0
            for item_feeds, rows, fut in batch:
                if not fut.done():
                    fut.set_result([o[start:start + rows] for o in outputs])
                start += rows

    def close(self) -> None:
        self._executor.shutdown(wait=False)
