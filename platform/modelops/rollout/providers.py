"""Metric providers: Prometheus's HTTP API, or predictors' own /metrics (no Prometheus).

Both answer `modelops.rollout.analysis` queries with a number or `Inconclusive(reason)` and never
raise for a dead server, an empty answer or a NaN.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .analysis import (LATENCY_METRIC, REQUESTS_METRIC, ClientErrorRate, Inconclusive, LatencyQuantile, PromQL,
                       Query, RequestCount, SuccessRate, Value, usable)
from .shadow import COMPARISONS_METRIC, HISTOGRAMS, ComparisonCount, ShadowQuantile


# --- Prometheus ------------------------------------------------------------------------------
def _matchers(selector: Iterable[tuple[str, str]], extra: str = "") -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    parts = [f'{k}="{esc(v)}"' for k, v in selector]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def _range(window: float) -> str:
    return f"[{max(1, int(round(window)))}s]"


def to_promql(q: Query) -> str:
    """The PromQL of a built-in query (what users' own checks can copy)."""
    if isinstance(q, PromQL):
        return q.text
    w = _range(q.window)
    if isinstance(q, RequestCount):
        return f"sum(increase({REQUESTS_METRIC}{_matchers(q.selector)}{w}))"
    if isinstance(q, SuccessRate):
        five_xx = 'code=~"5.."'
        errors = f"{REQUESTS_METRIC}{_matchers(q.selector, five_xx)}"
        total = f"{REQUESTS_METRIC}{_matchers(q.selector)}"
        # `or vector(0)`: no 5xx series yet means no errors; no requests at all stays empty/NaN.
        return f"1 - ((sum(increase({errors}{w})) or vector(0)) / sum(increase({total}{w})))"
    if isinstance(q, ClientErrorRate):
        four_xx = 'code=~"4.."'
        refused = f"{REQUESTS_METRIC}{_matchers(q.selector, four_xx)}"
        total = f"{REQUESTS_METRIC}{_matchers(q.selector)}"
        return f"(sum(increase({refused}{w})) or vector(0)) / sum(increase({total}{w}))"
    if isinstance(q, LatencyQuantile):
        return (f"histogram_quantile({q.q}, sum by (le) "
                f"(rate({LATENCY_METRIC}_bucket{_matchers(q.selector)}{w})))")
    if isinstance(q, ComparisonCount):
        if q.outcome is None:
            return f"sum(increase({COMPARISONS_METRIC}{_matchers(q.selector)}{w}))"
        # `or vector(0)`: no series of this outcome yet means none of them (the total decides "no data").
        outcome = f'outcome="{q.outcome}"'
        return f"sum(increase({COMPARISONS_METRIC}{_matchers(q.selector, outcome)}{w})) or vector(0)"
    if isinstance(q, ShadowQuantile):
        return (f"histogram_quantile({q.q}, sum by (le) "
                f"(rate({HISTOGRAMS[q.metric]}_bucket{_matchers(q.selector)}{w})))")
    raise TypeError(f"unknown query {q!r}")


class PrometheusProvider:
    """Instant queries against Prometheus's HTTP API (`GET /api/v1/query`)."""

    def __init__(self, url: str, *, timeout: float = 5.0, client: httpx.Client | None = None):
        self.url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def query(self, q: Query) -> Value:
        expr = to_promql(q)
        try:
            r = self._client.get(f"{self.url}/api/v1/query", params={"query": expr})
        except httpx.HTTPError as exc:
            return Inconclusive(f"Prometheus {self.url} unreachable: {exc}")
        try:
            body = r.json()
        except ValueError:
            return Inconclusive(f"Prometheus {self.url} answered {r.status_code} without JSON")
        if r.status_code != 200 or body.get("status") != "success":
            return Inconclusive(f"Prometheus error {r.status_code} for {expr!r}: "
                                f"{body.get('errorType', '')} {body.get('error', '')}".strip())
        data = body.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            return usable(_number(result[1]))
        if kind == "vector":
            if not result:
                return Inconclusive(f"no data for {expr!r}")
            if len(result) > 1:
                return Inconclusive(f"{len(result)} series for {expr!r}; a check needs a single value")
            return usable(_number(result[0]["value"][1]))
        return Inconclusive(f"unsupported result type {kind!r} for {expr!r}")


def _number(text) -> float:
    return float(text)  # Prometheus writes NaN / +Inf / -Inf as strings float() reads


# --- predictors' own /metrics ----------------------------------------------------------------
Key = tuple[str, str, tuple[tuple[str, str], ...]]  # (target url, sample name, labels)
_WANTED = {f"{REQUESTS_METRIC}", f"{LATENCY_METRIC}_bucket", f"{LATENCY_METRIC}_count", COMPARISONS_METRIC,
           *(f"{m}_bucket" for m in HISTOGRAMS.values())}


@dataclass(frozen=True)
class Snapshot:
    at: float  # monotonic seconds
    samples: dict  # Key -> value
    failed: tuple[str, ...]  # target URLs that did not answer


class ScrapeProvider:
    """Computes the built-in checks from two scrapes of every predictor's /metrics.

    Counters are differenced between the latest scrape and the one nearest `window` seconds
    before it (a counter that went down was reset: its new value is the increase), summed over
    targets and series that match the selector. p99 comes from the histogram buckets' increases
    with Prometheus's `histogram_quantile` interpolation. Call `scrape()` regularly (every few
    seconds); `query()` also scrapes when the last scrape is older than `max_age`.

    The shadow comparisons (`ComparisonCount`, `ShadowQuantile`) come from the stable predictor's
    /metrics the same way. User PromQL checks cannot be answered honestly without Prometheus:
    they are inconclusive.
    """

    def __init__(self, urls: Iterable[str], *, timeout: float = 5.0, max_age: float = 1.0,
                 retention: float = 3600.0, client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.urls = list(urls)
        self._client = client or httpx.Client(timeout=timeout)
        self._clock = clock
        self._max_age = max_age
        self._retention = retention
        self._snapshots: deque[Snapshot] = deque()

    def set_targets(self, urls: Iterable[str]) -> None:
        self.urls = list(urls)

    def close(self) -> None:
        self._client.close()

    def scrape(self) -> Snapshot:
        samples: dict = {}
        failed = []
        for url in self.urls:
            try:
                r = self._client.get(url)
                r.raise_for_status()
                text = r.text
            except httpx.HTTPError:
                failed.append(url)
                continue
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name in _WANTED:
                        samples[(url, s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        snap = Snapshot(self._clock(), samples, tuple(failed))
        self._snapshots.append(snap)
        while self._snapshots and snap.at - self._snapshots[0].at > self._retention:
            self._snapshots.popleft()
        return snap

    def _pair(self, window: float) -> tuple[Snapshot, Snapshot] | Inconclusive:
        now = self._clock()
        if not self._snapshots or now - self._snapshots[-1].at > self._max_age:
            self.scrape()
        latest = self._snapshots[-1]
        older = [s for s in self._snapshots if s.at <= latest.at - window]
        base = older[-1] if older else self._snapshots[0]
        if base is latest:
            return Inconclusive("one scrape so far: an increase needs two")
        for snap in (base, latest):
            if snap.failed:
                return Inconclusive(f"scraping {', '.join(snap.failed)} failed")
        return base, latest

    @staticmethod
    def _increase(pair: tuple[Snapshot, Snapshot], name: str, selector: dict,
                  extra: Callable[[dict], bool] = lambda labels: True) -> dict:
        """Per label set (without the target URL): summed counter increase."""
        base, latest = pair
        out: dict = {}
        for key, value in latest.samples.items():
            url, sample, labels = key
            if sample != name:
                continue
            d = dict(labels)
            if any(d.get(k) != v for k, v in selector.items()) or not extra(d):
                continue
            before = base.samples.get(key, 0.0)
            inc = value - before if value >= before else value  # reset: counted from zero
            group = tuple(sorted((k, v) for k, v in d.items() if k not in selector))
            out[group] = out.get(group, 0.0) + inc
        return out

    def query(self, q: Query) -> Value:
        if isinstance(q, PromQL):
            return Inconclusive("PromQL checks need Prometheus (spec.rollout.analysis.prometheusUrl); "
                                "reading predictors' /metrics supports requests, successRate, clientErrorsVsStable and p99LatencyMs")
        pair = self._pair(q.window)
        if isinstance(pair, Inconclusive):
            return pair
        selector = dict(q.selector)
        if isinstance(q, RequestCount):
            inc = self._increase(pair, REQUESTS_METRIC, selector)
            return float(sum(inc.values())) if inc else Inconclusive("no requests series for the selector")
        if isinstance(q, (SuccessRate, ClientErrorRate)):
            inc = self._increase(pair, REQUESTS_METRIC, selector)
            total = sum(inc.values())
            first = "5" if isinstance(q, SuccessRate) else "4"
            counted = sum(v for labels, v in inc.items() if dict(labels).get("code", "").startswith(first))
            if not inc or total <= 0:
                return Inconclusive("no requests in the window")
            return 1.0 - counted / total if isinstance(q, SuccessRate) else counted / total
        if isinstance(q, ComparisonCount):
            inc = self._increase(pair, COMPARISONS_METRIC, selector)
            if not inc:
                return Inconclusive("no comparison series for the selector (is the stable mirroring?)")
            return float(sum(v for labels, v in inc.items()
                             if q.outcome is None or dict(labels).get("outcome") == q.outcome))
        if isinstance(q, (LatencyQuantile, ShadowQuantile)):
            name = HISTOGRAMS[q.metric] if isinstance(q, ShadowQuantile) else LATENCY_METRIC
            inc = self._increase(pair, f"{name}_bucket", selector)
            buckets: dict[float, float] = {}
            for labels, v in inc.items():
                le = float(dict(labels)["le"])
                buckets[le] = buckets.get(le, 0.0) + v
            return usable(histogram_quantile(q.q, buckets))
        raise TypeError(f"unknown query {q!r}")


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus's `histogram_quantile` over cumulative bucket counts keyed by upper bound."""
    if not buckets or math.inf not in buckets:
        return math.nan
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    for i in range(1, len(counts)):  # cumulative counts must not decrease
        counts[i] = max(counts[i], counts[i - 1])
    total = counts[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    i = next(i for i, c in enumerate(counts) if c >= rank)
    if bounds[i] == math.inf:
        return bounds[-2] if len(bounds) > 1 else math.nan
    lower = 0.0 if i == 0 else bounds[i - 1]
    below = 0.0 if i == 0 else counts[i - 1]
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    inside = counts[i] - below
    return lower + (bounds[i] - lower) * ((rank - below) / inside if inside > 0 else 0)
