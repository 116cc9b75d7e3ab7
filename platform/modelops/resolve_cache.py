"""Share MLflow version look-ups among the reconcile passes of one process.

A burst of ModelDeployments of one registered model would otherwise ask MLflow the same
question (which version does `name@alias` / `name` version N mean, with what tags?) once per
object. `ResolveCache.resolve` answers every caller from one look-up as long as that look-up
*started* at most `max_age` seconds before the caller asked, and coalesces concurrent callers
into one request (single flight). So every answer reflects MLflow as it was at most `max_age`
seconds before the question (max_age 0: every caller asks MLflow itself). A caller that must
follow an alias move within a deadline budgets `max_age` into it (the operator's resolve
timer runs every `interval - max_age`).

Only answers are kept. A failure (not found, MLflow down) reaches the callers waiting on that
very look-up and is never kept: the next question asks MLflow again, so a version or alias that
appears is found at once. `forget` drops what is known of a model (after this process wrote its
tags, e.g. published a conversion).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

Key = tuple[str, str, str]  # (tracking URI, model name, "v<version>" | "@<alias>")


@dataclass
class _Flight:
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    value: object = None
    error: BaseException | None = None
    stale: bool = False  # started before `forget`: its answer is given to its callers, not kept


class ResolveCache:
    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic):
        if max_age < 0:
            raise ValueError("max_age must be >= 0")
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[Key, _Flight] = {}  # the newest successful look-up per key
        self._flying: dict[Key, _Flight] = {}
        self.lookups = 0  # look-ups sent to MLflow (for tests and metrics)

    @staticmethod
    def key(tracking_uri: str, name: str, version=None, alias: str | None = None) -> Key:
        return (tracking_uri, name, f"@{alias}" if alias is not None else f"v{version}")

    def resolve(self, registry, name: str, version=None, alias: str | None = None, *,
                max_age: float | None = None):
        """`registry.resolve_version(name, version=, alias=)`, shared as described above."""
        age = self.max_age if max_age is None else max_age
        key = self.key(registry.tracking_uri, name, version, alias)
        asked = self._clock()
        with self._lock:
            known = self._known.get(key)
            if known is not None and age > 0 and asked - known.started <= age:
                return known.value
            flight = self._flying.get(key)
            mine = flight is None or age == 0 or asked - flight.started > age
            if mine:
                flight = self._flying[key] = _Flight(started=asked)
                self.lookups += 1
        if not mine:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = registry.resolve_version(name, version=version, alias=alias)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                if flight.error is None and not flight.stale:
                    newest = self._known.get(key)
                    if newest is None or newest.started <= flight.started:
                        self._known[key] = flight
                if self._flying.get(key) is flight:
                    del self._flying[key]
            flight.done.set()
        return flight.value

    def forget(self, tracking_uri: str, name: str) -> None:
        """Drop every answer about registered model `name` (its tags or aliases changed here)."""
        with self._lock:
            for key in [k for k in self._known if k[:2] == (tracking_uri, name)]:
                del self._known[key]
            for key in [k for k in self._flying if k[:2] == (tracking_uri, name)]:
                self._flying.pop(key).stale = True  # later callers ask again

    def __len__(self) -> int:
        return len(self._known)
