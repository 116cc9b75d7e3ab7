#!/usr/bin/env python
"""The access layer's own cost per request, in process (no network, no model): what
`--auth kubernetes` (a cached token) and the audit line add to a request, measured around an ASGI
app that answers at once. End to end, with a real API server: scripts/bench_predictor.py
--auth-kubeconfig.

    .venv/bin/python scripts/bench_access.py [--requests 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time

from modelops.serving.access import AccessASGI
from modelops.serving.audit import AuditLog
from modelops.serving.auth import Caller, Decision, KubeAuthConfig, KubeGuard

TOKEN = "x" * 900  # about the size of a ServiceAccount token


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _send(message):
    pass


async def _receive():
    return {"type": "http.request", "body": b""}


SCOPE = {"type": "http", "path": "/v2/models/m/infer", "method": "POST",
         "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                     (b"authorization", f"Bearer {TOKEN}".encode())]}


class Model:
    version = "1"


async def per_request_us(layer, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        await layer(SCOPE, _receive, _send)
    return (time.perf_counter() - t) / n * 1e6


async def main(n: int) -> None:
    guard = KubeGuard(KubeAuthConfig(namespace="n", deployment="m"))
    guard._allowed[hashlib.sha256(TOKEN.encode()).digest()] = Decision(Caller("system:serviceaccount:n:c"))
    with tempfile.NamedTemporaryFile() as f:
        fd = os.open(f.name, os.O_WRONLY)
        audit = AuditLog(sink=lambda line: os.write(fd, line))
        base = await per_request_us(app, n)
        auth = await per_request_us(AccessASGI(app, {"m": Model()}, guard, None), n)
        both = await per_request_us(AccessASGI(app, {"m": Model()}, guard, audit), n)
        os.close(fd)
    print(f"auth (cached token): +{auth - base:.1f} µs/request; auth + audit line (to a file): "
          f"+{both - base:.1f} µs/request")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=30000)
    asyncio.run(main(p.parse_args().requests))
