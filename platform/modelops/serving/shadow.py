"""Shadow mirroring: the stable predictor copies a sample of its answered requests to a candidate
predictor and compares the two answers (`compare`); clients only ever get the stable's answer.

`modelops serve --shadow-config FILE`: FILE is polled by mtime (and inode and size: a ConfigMap
volume swaps a symlink) every second; missing, empty or `{}` is off, an invalid file is logged
once and is off (never a crash, never a failed client request):

    {"candidate": {"url": "http://host:port", "model": "<name the candidate serves>", "version": "3"},
     "percent": 10, "queueSize": 64, "timeoutMs": 2000, "tolerance": {"rtol": 1e-3, "atol": 1e-3}}

The request path only samples and puts (request inputs, stable outputs) on a bounded asyncio
queue, after the client's answer is decided (REST: after it was sent); a full queue drops the
copy (counted). `MIRROR_WORKERS` tasks send the copies as V2 requests, numeric tensors in the
binary extension (the copies that arrive within `LINGER_SECONDS` of a call's first, up to
`MAX_COPIES_PER_CALL`, stacked into one call: `shadow_wire`) to the candidate's
`/v2/models/{model}/infer` (aiohttp; `timeoutMs` per copy over the whole exchange), decode its
answer, compare (`compare_stacked`: the copies of a call in one pass), and record
`metrics.SHADOW_*`. A candidate that is down, overloaded or slow (no answer, 502, 503, 504, a
timeout) costs only failed or dropped copies; one that refuses (4xx) or fails (500, 501) a copy the
stable answered disagrees with it: a client would have got that answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from ..errors import InvalidSpec
from . import metrics
from .compare import Comparison, compare, compare_stacked
from .shadow_wire import decode_answer, encode_request, rows, split_rows, splits, stack, stack_groups

log = logging.getLogger("modelops.serving.shadow")

MIRROR_WORKERS = 4  # calls in flight to the candidate at once
# Copies waiting in the queue when a worker is free go in one call, stacked on the batch axis
# (an HTTP exchange costs the stable ~0.5 ms of CPU; a copy's rows in a shared one a few µs, and
# the copies of one call are compared in one pass: `compare_stacked`).
MAX_COPIES_PER_CALL = 32
# How long a call waits for more copies after its first: a copy is never the client's wait, and
# at 10% of a few thousand requests a second it gathers a few dozen copies per call.
LINGER_SECONDS = 0.1
# 401, 403, 407, 408 and 429 say something about the mirror's call, not about the model.
_NOT_THE_MODELS = frozenset({401, 403, 407, 408, 429})
POLL_SECONDS = 1.0
LOG_EVERY_SECONDS = 10.0  # disagreements and failures: one log line per this many seconds


def models_answer(status: int) -> bool:
    """Whether a candidate's non-200 STATUS to a copy the stable answered is the model's answer to
    that input (a client would have got it: a disagreement): a 4xx, except `_NOT_THE_MODELS`,
    and a 500 or 501 (the model failed at run time, `InferenceFailed`, or a bug). 502, 503 and
    504 say that it, or the way to it, is down or overloaded: failed copies, never comparisons."""
    return (400 <= status < 500 and status not in _NOT_THE_MODELS) or status in (500, 501)


# --- configuration ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowConfig:
    url: str  # the candidate predictor's base URL
    model: str  # the model name the candidate serves
    version: str = ""  # the candidate's version (the metrics' `candidate` label)
    percent: float = 10.0
    queue_size: int = 64
    timeout_s: float = 2.0
    rtol: float = 1e-3
    atol: float = 1e-3

    @property
    def infer_url(self) -> str:
        return f"{self.url.rstrip('/')}/v2/models/{self.model}/infer"

    def describe(self) -> str:
        return (f"{self.percent:g}% of answered requests to {self.infer_url} (candidate version "
                f"{self.version or '-'}; queue {self.queue_size}, timeout {self.timeout_s * 1000:g} ms, "
                f"rtol {self.rtol:g}, atol {self.atol:g})")


def _number(doc: dict, key: str, where: str, default, lo: float, hi: float, integer: bool = False):
    value = doc.get(key, default)
    ok = type(value) is int or (type(value) is float and not integer and math.isfinite(value))
    if not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise InvalidSpec(f"{where}{key}", f"must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    return value


def parse_config(text: str) -> ShadowConfig | None:
    """The mirror configuration in TEXT (JSON); None when it says off (empty, `{}`, percent 0).
    InvalidSpec naming the field otherwise."""
    if not text.strip():
        return None
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidSpec("shadow config", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidSpec("shadow config", "must be a JSON object")
    if not doc:
        return None
    cand = doc.get("candidate")
    if not isinstance(cand, dict):
        raise InvalidSpec("candidate", "must be an object with url and model")
    url, model, version = cand.get("url"), cand.get("model"), cand.get("version", "")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidSpec("candidate.url", f"must be an http:// or https:// URL, got {url!r}")
    if not isinstance(model, str) or not model or "/" in model:
        raise InvalidSpec("candidate.model", f"must be the model name the candidate serves, got {model!r}")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str):
        raise InvalidSpec("candidate.version", f"must be a string, got {version!r}")
    tol = doc.get("tolerance", {})
    if not isinstance(tol, dict):
        raise InvalidSpec("tolerance", "must be an object with rtol and atol")
    percent = _number(doc, "percent", "", 10, 0, 100)
    if percent == 0:
        return None
    unknown = sorted(set(doc) - {"candidate", "percent", "queueSize", "timeoutMs", "tolerance"})
    if unknown:
        log.warning("shadow config: ignoring unknown keys %s", unknown)
    return ShadowConfig(url, model, version, float(percent),
                        _number(doc, "queueSize", "", 64, 1, 100_000, integer=True),
                        _number(doc, "timeoutMs", "", 2000, 1, 600_000) / 1000.0,
                        float(_number(tol, "rtol", "tolerance.", 1e-3, 0, 1e6)),
                        float(_number(tol, "atol", "tolerance.", 1e-3, 0, 1e9)))


# --- the mirror ----------------------------------------------------------------------------------------
class _Every:
    """Rate limit of a log line: True at most once per SECONDS (with the count suppressed since)."""

    def __init__(self, seconds: float = LOG_EVERY_SECONDS):
        self.seconds, self.next, self.suppressed = seconds, 0.0, 0

    def __call__(self) -> int | None:
        now = time.monotonic()
        if now < self.next:
            self.suppressed += 1
            return None
        self.next, suppressed, self.suppressed = now + self.seconds, self.suppressed, 0
        return suppressed


class _Generation:
    """One configuration at work: its queue, its HTTP client, its workers, its metric series."""

    def __init__(self, config: ShadowConfig, model: str, version: str):
        self.config = config
        self.queue: asyncio.Queue = asyncio.Queue(config.queue_size)
        labels = (model, version, config.version)
        self.sent, self.dropped, self.failed = (metrics.SHADOW_MIRRORED.labels(*labels, r)
                                                for r in ("sent", "dropped", "failed"))
        self.agree, self.disagree = (metrics.SHADOW_COMPARISONS.labels(*labels, o) for o in ("agree", "disagree"))
        self.abs_diff, self.rel_diff, self.cosine = (h.labels(*labels) for h in (
            metrics.SHADOW_ABS_DIFF, metrics.SHADOW_REL_DIFF, metrics.SHADOW_COSINE))
        # aiohttp, not httpx: measured ~0.4 ms of the stable's CPU per copy against httpx's ~2.2 ms
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MIRROR_WORKERS),
            timeout=aiohttp.ClientTimeout(total=config.timeout_s), raise_for_status=False)
        self.log_failed, self.log_disagree = _Every(), _Every()
        self.collecting = asyncio.Lock()
        self.wake, self.wanted = asyncio.Event(), 0  # `_collect` waits for `wanted` more copies
        self.tasks = [asyncio.create_task(self._work()) for _ in range(MIRROR_WORKERS)]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()

    async def _collect(self) -> list:
        """The next call's copies: the first one, then whatever comes within LINGER_SECONDS, or
        until MAX_COPIES_PER_CALL are there (`offer` wakes the collector then: one timer and
        one wake-up per call, not one per copy). One worker collects at a time, so copies
        gather in one call rather than spreading over the idle workers; the calls themselves
        still run side by side."""
        async with self.collecting:
            queue = self.queue
            copies = [await queue.get()]
            deadline = time.monotonic() + LINGER_SECONDS
            while True:
                while len(copies) < MAX_COPIES_PER_CALL and not queue.empty():
                    copies.append(queue.get_nowait())
                left = deadline - time.monotonic()
                if len(copies) >= MAX_COPIES_PER_CALL or left <= 0:
                    return copies
                self.wake.clear()
                self.wanted = MAX_COPIES_PER_CALL - len(copies)
                try:
                    async with asyncio.timeout(left):
                        await self.wake.wait()
                except TimeoutError:
                    pass
                finally:
                    self.wanted = 0

    async def _work(self) -> None:
        while True:
            copies = await self._collect()
            for group in stack_groups(copies):
                try:
                    await self._mirror(group)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug here must cost copies, never the worker
                    self.failed.inc(len(group))
                    log.error("shadow: mirroring a request failed", exc_info=exc)

    async def _mirror(self, copies: list[tuple[dict, dict]]) -> None:
        """One call to the candidate for COPIES (stacked on the batch axis when more than one;
        the timeout is per copy: a call of k copies gets k times it), then one comparison per
        copy. A stacked call the candidate refuses, or answers with outputs that do not split
        back into the copies' rows, is sent again copy by copy: a copy is judged on its own, as
        the client's request was."""
        cfg, k = self.config, len(copies)
        body, headers = encode_request(stack([f for f, _ in copies]))
        try:
            async with self.client.post(cfg.infer_url, data=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=cfg.timeout_s * k)) as resp:
                status, answer = resp.status, await resp.read()
                answer_headers = {h.lower(): v for h, v in resp.headers.items()}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            self.failed.inc(k - 1)
            return self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if status != 200:
            if k > 1:
                return await self._one_by_one(copies)
            why = f"HTTP {status}: {answer[:300].decode('utf-8', 'replace')}"
            if models_answer(status):
                self.sent.inc()
                verb = "failed" if status >= 500 else "refused"
                return self.record(Comparison("disagree", reason=f"the candidate {verb} it: {why}"))
            return self._failed(why)
        try:
            got = decode_answer(answer, answer_headers)
        except ValueError as exc:
            if k > 1:
                return await self._one_by_one(copies)
            self.sent.inc()
            return self.record(Comparison("disagree", reason=f"the candidate answered 200 with {exc}"))
        counts = [rows(f) for f, _ in copies]
        if k > 1 and not splits(got, sum(counts)):
            return await self._one_by_one(copies)
        self.sent.inc(k)
        try:
            results = compare_stacked(stack([s for _, s in copies]), got, counts, cfg.rtol, cfg.atol)
        except ValueError:
            results = None
        if results is None:  # not the all-numeric common case: each copy on its own rows
            parts = split_rows(got, counts) if k > 1 else [got]
            results = [self._compare(stable, part) for (_, stable), part in zip(copies, parts)]
        for result in results:
            self.record(result)

    def _compare(self, stable: dict, candidate: dict) -> Comparison:
        try:
            return compare(stable, candidate, self.config.rtol, self.config.atol)
        except ValueError as exc:
            return Comparison("disagree", reason=f"the candidate answered 200 with {exc}")

    async def _one_by_one(self, copies: list[tuple[dict, dict]]) -> None:
        for copy in copies:
            await self._mirror([copy])

    def _failed(self, why: str) -> None:
        self.failed.inc()
        suppressed = self.log_failed()
        if suppressed is not None:
            log.warning("shadow: copy to %s failed: %s%s", self.config.infer_url, why,
                        f" ({suppressed} more since the last line)" if suppressed else "")

    def record(self, result: Comparison) -> None:
        (self.agree if result.agree else self.disagree).inc()
        if result.abs_diff is not None:
            self.abs_diff.observe(result.abs_diff)
            self.rel_diff.observe(result.rel_diff)
        if result.cosine is not None:
            self.cosine.observe(result.cosine)
        if not result.agree:
            suppressed = self.log_disagree()
            if suppressed is not None:
                log.warning("shadow: candidate %s disagrees: %s%s", self.config.version or self.config.url,
                            result.reason, f" ({suppressed} more since the last line)" if suppressed else "")


def _visible_log() -> None:
    """The mirror's state changes at INFO on stderr in KServe's format (the predictor's other
    loggers show only warnings): `mirroring on` / `off` is what an operator looks for."""
    if not log.handlers:
        from kserve.logging import KSERVE_LOGGER_DATE_FORMAT, KSERVE_LOGGER_FORMAT

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(KSERVE_LOGGER_FORMAT, KSERVE_LOGGER_DATE_FORMAT))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class Mirror:
    """The stable predictor's side: watches PATH, samples and queues answered requests."""

    def __init__(self, path: str | Path, model: str, version: str | None, interval: float = POLL_SECONDS):
        _visible_log()
        self.path, self.model, self.version = Path(path), model, version or ""
        self.interval = interval
        self._key: object = object()  # never equal to a stat key: the first poll reads
        self._gen: _Generation | None = None
        self._closing: set[asyncio.Task] = set()
        self._random = random.random

    # --- the request path: cheap, never raises ------------------------------------------------------
    def offer(self, feeds: dict, names: list[str], outputs: list) -> None:
        """A successfully answered request (its inputs) and the stable's answer (names, arrays)."""
        gen = self._gen
        if gen is None or (gen.config.percent < 100 and self._random() * 100 >= gen.config.percent):
            return
        try:
            gen.queue.put_nowait((feeds, dict(zip(names, outputs))))
            if gen.wanted and gen.queue.qsize() >= gen.wanted:
                gen.wake.set()
        except asyncio.QueueFull:
            gen.dropped.inc()
        except Exception as exc:  # never the client's problem
            log.error("shadow: could not queue a copy", exc_info=exc)

    # --- the watcher ----------------------------------------------------------------------------------
    def _stat_key(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def poll(self) -> None:
        """Re-read the file when it changed; (re)configure. In the event loop."""
        key = self._stat_key()
        if key == self._key:
            return
        self._key = key
        if key is None:
            return self._apply(None, f"{self.path} is missing")
        try:
            config = parse_config(self.path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            return self._apply(None, f"{self.path} is unreadable ({exc})", error=True)
        except InvalidSpec as exc:
            return self._apply(None, f"{self.path} is invalid ({exc})", error=True)
        self._apply(config, f"{self.path} says off" if config is None else "")

    def _apply(self, config: ShadowConfig | None, why: str, error: bool = False) -> None:
        old = self._gen
        if old is not None and config == old.config:
            return
        self._gen = None
        if old is not None:
            task = asyncio.create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if config is None:
            if error:
                log.error("shadow: mirroring off: %s", why)
            elif old is not None or why.endswith("says off"):
                log.info("shadow: mirroring off: %s", why)
            return
        self._gen = _Generation(config, self.model, self.version)
        log.info("shadow: mirroring on: %s", config.describe())

    async def run(self) -> None:
        """Poll the file until cancelled (the server's lifetime); then stop mirroring."""
        log.info("shadow: watching %s (every %gs)", self.path, self.interval)
        try:
            while True:
                try:
                    self.poll()
                except Exception as exc:  # a watcher bug must not stop the server
                    log.error("shadow: polling %s failed", self.path, exc_info=exc)
                await asyncio.sleep(self.interval)
        finally:
            gen, self._gen = self._gen, None
            if gen is not None:
                await gen.close()
