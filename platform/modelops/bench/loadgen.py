"""A closed-loop HTTP load generator: N concurrent clients, each sending back to back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    first_error: str | None = None  # what the first failed request got (status and body, or the exception)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {"concurrency": self.concurrency, "requests": self.requests, "errors": self.errors,
                "rps": round(self.rps, 1), "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3)}


async def run_load_async(url: str, body: bytes | list[bytes], headers: dict, concurrency: int, requests: int,
                         duration: float | None, warmup: int, timeout: float | None = None) -> LoadResult:
    """`run_load` in a running event loop; TIMEOUT: seconds per request (a failed request)."""
    bodies = body if isinstance(body, list) else [body]
    sent = 0
    first_error: str | None = None
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout) if timeout else None
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        async def one() -> bool:
            nonlocal sent, first_error
            data = bodies[sent % len(bodies)]  # a mixed workload: the bodies in turn
            sent += 1
            try:
                async with session.post(url, data=data, headers=headers) as resp:
                    answer = await resp.read()
                    if resp.status == 200:
                        return True
                    why = f"HTTP {resp.status}: {answer[:200].decode('utf-8', 'replace')}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}"[:300]
            first_error = first_error or why
            return False

        for _ in range(warmup):
            await one()
        first_error = None  # only the measured requests count
        latencies: list[float] = []
        errors = 0
        remaining = requests
        deadline = time.perf_counter() + duration if duration else None

        async def worker():
            nonlocal remaining, errors
            while remaining > 0 and (deadline is None or time.perf_counter() < deadline):
                remaining -= 1
                t = time.perf_counter()
                ok = await one()
                latencies.append(time.perf_counter() - t)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return LoadResult(concurrency, len(latencies), errors, elapsed,
                      float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), first_error)


def run_load(url: str, body: bytes | list[bytes], headers: dict | None = None, concurrency: int = 1,
             requests: int = 1000, duration: float | None = None, warmup: int = 20) -> LoadResult:
    """Send `requests` POSTs (or until `duration` seconds) with `concurrency` in flight; a list
    of bodies is sent in turn."""
    headers = {"content-type": "application/json", **(headers or {})}
    return asyncio.run(run_load_async(url, body, headers, concurrency, requests, duration, warmup))


def wait_ready(url: str, timeout: float = 120.0, proc=None) -> None:
    """Poll a readiness URL until it answers 200 (or the process dies)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before becoming ready ({url})")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")
