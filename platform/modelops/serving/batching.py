"""Server-side dynamic batching: concurrent requests share one onnxruntime call.

No fixed delay by default: while one batch runs (in a worker thread, GIL released), requests
queue up; when it finishes, everything queued (up to `max_batch_size` rows) runs as the next
batch. A lone request therefore runs at once, and batches grow with the load.

Sequence models (text, token ids: `SequenceAxes`) also batch requests of different lengths:
a batch is the oldest queued request plus the queued requests closest to its length (length
buckets formed on the fly), each input with a sequence axis (dim 1) right-padded to the longest
in the batch (input_ids with the pad id, masks and type ids with 0); the batch runs once, and
each request gets its own rows back, cut to its own length on the outputs that have a sequence
axis (last_hidden_state). The attention mask makes the padding harmless. Padding is bounded: a
request that would make the batch's tokens exceed `max_padding_ratio` times the requests' own
tokens waits for a later call; each call's ratio is reported (`on_padding`).

A model whose calls are cheap (a running average under `inline_max_ms`) runs on the event loop
itself: handing a call of a few dozen microseconds to the worker thread and its result back (a
thread wake-up, a self-pipe write, two futures) costs more than the call. The first call always
goes to the thread (nothing measured yet), and a call that turns slow (bigger batches) sends the
next ones back to it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 64
    max_wait_ms: float = 0.0  # >0: wait this long for a batch to fill (throughput over latency)
    # Sequence models: tokens per call / the requests' own tokens. Measured on 2 CPU cores (MiniLM,
    # lengths 8-256 at c16): a 2x bound halved throughput against fixed-length requests; padding
    # is compute spent on nothing, while a bigger batch buys little on CPU.
    max_padding_ratio: float = 1.25
    # A call whose running-average duration is under this runs on the event loop (no thread
    # hand-off); 0: always the worker thread.
    inline_max_ms: float = 0.2


def runs_inline(average_call_s: float | None, inline_max_ms: float) -> bool:
    """Whether the next call runs on the event loop: only once calls were measured cheap."""
    return average_call_s is not None and average_call_s * 1000 < inline_max_ms


@dataclass(frozen=True)
class SequenceAxes:
    """Which inputs have a sequence axis at dim 1 (name -> pad value) and which outputs (by
    index in the graph's output order)."""

    pad: dict[str, int]
    outputs: frozenset[int] = frozenset()


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    width: int  # sequence length (1 when the model has no sequence axis)
    fut: asyncio.Future


class DynamicBatcher:
    def __init__(self, run: Callable[[dict], list[np.ndarray]], config: BatchingConfig,
                 on_batch: Callable[[int], None] | None = None, sequence: SequenceAxes | None = None,
                 on_padding: Callable[[float], None] | None = None):
        self._run = run
        self._config = config
        self._queue: list[_Item] = []
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-batch")
        self._on_batch = on_batch
        self._sequence = sequence
        self._on_padding = on_padding
        self._seq_key = next(iter(sequence.pad), None) if sequence else None
        self._average_call_s: float | None = None  # running average of one call's duration

    def _timed(self, feeds: dict) -> list[np.ndarray]:
        t = time.perf_counter()
        try:
            return self._run(feeds)
        finally:
            took = time.perf_counter() - t
            last = self._average_call_s
            self._average_call_s = took if last is None else 0.8 * last + 0.2 * took

    async def _call(self, loop, feeds: dict) -> list[np.ndarray]:
        if runs_inline(self._average_call_s, self._config.inline_max_ms):
            return self._timed(feeds)
        return await loop.run_in_executor(self._executor, self._timed, feeds)

    async def submit(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        rows = len(next(iter(feeds.values())))
        key = self._seq_key
        width = feeds[key].shape[1] if key in feeds and feeds[key].ndim > 1 else 1
        self._queue.append(_Item(feeds, rows, width, fut))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await fut

    def _tails(self, feeds: dict) -> dict:
        """What must be equal for two requests to share a call: the shapes past the batch axis,
        past the sequence axis too for the padded inputs."""
        pad = self._sequence.pad if self._sequence else {}
        return {k: (v.ndim, v.shape[2:]) if k in pad and v.ndim > 1 else v.shape[1:] for k, v in feeds.items()}

    def _take(self) -> list[_Item]:
        """The next batch: the oldest request, then the queued requests closest to its length
        (length bucketing: a 5-token request waits for a call of its own size rather than being
        padded to 256), up to the row limit and the padding bound. The rest stay queued in order."""
        first = self._queue[0]
        tails = self._tails(first.feeds)
        order = sorted(range(1, len(self._queue)), key=lambda i: abs(self._queue[i].width - first.width))
        taken, rows, width, real = {0}, first.rows, first.width, first.rows * first.width
        for i in order:
            item = self._queue[i]
            if rows + item.rows > self._config.max_batch_size:
                continue
            if self._sequence is not None:
                padded = (rows + item.rows) * max(width, item.width)
                if padded > self._config.max_padding_ratio * (real + item.rows * item.width):
                    continue
            if self._tails(item.feeds) != tails:
                continue
            taken.add(i)
            rows, width, real = rows + item.rows, max(width, item.width), real + item.rows * item.width
        batch = [item for i, item in enumerate(self._queue) if i in taken]
        self._queue = [item for i, item in enumerate(self._queue) if i not in taken]
        if self._on_padding and self._sequence is not None:
            self._on_padding(rows * width / max(real, 1))
        return batch

    def _merge(self, batch: list[_Item]) -> dict[str, np.ndarray]:
        if len(batch) == 1:
            return batch[0].feeds
        pad = self._sequence.pad if self._sequence else {}
        feeds = {}
        for k, first in batch[0].feeds.items():
            parts = [item.feeds[k] for item in batch]
            if k in pad and first.ndim > 1:
                width = max(p.shape[1] for p in parts)
                if any(p.shape[1] != width for p in parts):
                    out = np.full((sum(len(p) for p in parts), width, *first.shape[2:]), pad[k], first.dtype)
                    start = 0
                    for p in parts:
                        out[start:start + len(p), :p.shape[1]] = p
                        start += len(p)
                    feeds[k] = out
                    continue
            feeds[k] = np.concatenate(parts)
        return feeds

    def _split(self, batch: list[_Item], outputs: list[np.ndarray]) -> None:
        seq = self._sequence.outputs if self._sequence else frozenset()
        start = 0
        for item in batch:
            if not item.fut.done():
                item.fut.set_result([o[start:start + item.rows, :item.width] if i in seq and o.ndim > 1
                                     else o[start:start + item.rows] for i, o in enumerate(outputs)])
            start += item.rows

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._config.max_wait_ms > 0 and len(self._queue) < self._config.max_batch_size:
                await asyncio.sleep(self._config.max_wait_ms / 1000)
            batch = self._take()
            feeds = self._merge(batch)
            try:
                outputs = await self._call(loop, feeds)
            except Exception as exc:
                if len(batch) == 1:
                    if not batch[0].fut.done():
                        batch[0].fut.set_exception(exc)
                    continue
                # One request's values can fail the whole call (an index out of range): rerun
                # each alone, so only the request that caused it sees the failure.
                for item in batch:
                    try:
                        result = await self._call(loop, item.feeds)
                    except Exception as item_exc:
                        if not item.fut.done():
                            item.fut.set_exception(item_exc)
                    else:
                        if not item.fut.done():
                            item.fut.set_result(result)
                continue
            if self._on_batch:
                self._on_batch(sum(item.rows for item in batch))
            self._split(batch, outputs)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
