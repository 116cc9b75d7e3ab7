"""The local router's routing table: the routes the supervisor puts (checked), the backends they
name, and the weighted choice of one per request.

- `parse_routes`: `PUT /routes`'s body, checked (each field named in the error);
- `RoutingTable`: the backends in the table and those `retired` from it that may still answer;
  `choose` is an independent weighted random choice per request (as Envoy/Istio split);
  `drain` waits until a retired backend has nothing in flight.

No I/O here beyond waiting on in-flight counts; the HTTP data plane is `router.py`, gRPC
`router_grpc.py`.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field

VERSION_HEADER = b"x-modelops-version"


@dataclass
class Backend:
    version: str
    url: str  # http://127.0.0.1:PORT
    weight: int = 0
    grpc: str | None = None  # host:port of its gRPC server
    inflight: int = 0
    served: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict:
        out = {"version": self.version, "url": self.url, "weight": self.weight,
               "inflight": self.inflight, "served": self.served}
        if self.grpc:
            out["grpc"] = self.grpc
        return out

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


class RouteError(ValueError):
    pass


Route = tuple  # (version, url, weight, grpc target or None)
_TARGET = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


def parse_routes(doc) -> list[Route]:
    """`{"routes": [{"version", "url", "weight", "grpc"?}]}` -> [(version, url, weight, grpc)], checked."""
    if not isinstance(doc, dict) or not isinstance(doc.get("routes"), list):
        raise RouteError("body must be {\"routes\": [{\"version\", \"url\", \"weight\"}, ...]}")
    out, urls = [], set()
    for i, r in enumerate(doc["routes"]):
        if not isinstance(r, dict):
            raise RouteError(f"routes[{i}] must be an object")
        version, url, weight = r.get("version"), r.get("url"), r.get("weight")
        if not isinstance(version, str) or not version:
            raise RouteError(f"routes[{i}].version must be a non-empty string")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise RouteError(f"routes[{i}].url must be an http(s) URL")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise RouteError(f"routes[{i}].weight must be an integer between 0 and 100")
        if url in urls:
            raise RouteError(f"routes[{i}].url {url} appears twice")
        grpc_target = r.get("grpc")
        if grpc_target is not None and (not isinstance(grpc_target, str) or not _TARGET.match(grpc_target)):
            raise RouteError(f"routes[{i}].grpc must be host:port")
        urls.add(url)
        out.append((version, url.rstrip("/"), weight, grpc_target))
    return out


class RoutingTable:
    """Backends by URL; requests choose among those with weight > 0."""

    def __init__(self):
        self.backends: dict[str, Backend] = {}  # in the table
        self.retired: dict[str, Backend] = {}  # left the table, maybe still answering
        self._active: list[Backend] = []
        self._total = 0
        self._random = random.Random().random
        self.generation = 0

    def set(self, routes: list[Route]) -> None:
        new: dict[str, Backend] = {}
        for version, url, weight, grpc_target in routes:
            b = self.backends.pop(url, None) or self.retired.pop(url, None) or Backend(version, url)
            b.version, b.weight, b.grpc = version, weight, grpc_target
            new[url] = b
        for url, b in self.backends.items():  # what is left was removed
            b.weight = 0
            self.retired[url] = b
        self.backends = new
        self._active = [b for b in new.values() if b.weight > 0]
        self._total = sum(b.weight for b in self._active)
        self.generation += 1

    def choose(self) -> Backend | None:
        """A backend with probability weight / sum(weights)."""
        active = self._active
        if len(active) == 1:
            return active[0]
        if not active:
            return None
        pick = self._random() * self._total
        for b in active:
            pick -= b.weight
            if pick < 0:
                return b
        return active[-1]

    async def drain(self, urls: list[str], timeout: float) -> dict[str, int]:
        """Wait until every retired backend in `urls` has nothing in flight; returns what is left."""
        deadline = time.monotonic() + timeout
        for url in urls:
            b = self.retired.get(url)
            while b is not None and b.inflight > 0:
                b.idle.clear()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(b.idle.wait(), left)
                except asyncio.TimeoutError:
                    break
        left = {u: self.retired[u].inflight for u in urls if u in self.retired and self.retired[u].inflight}
        for url in urls:
            if url not in left:
                self.retired.pop(url, None)
        return left

    def to_json(self) -> dict:
        return {"generation": self.generation, "routes": [b.to_json() for b in self.backends.values()],
                "retired": [b.to_json() for b in self.retired.values()]}
