"""The local router: one stable address in front of the predictors, splitting traffic by weight.

It plays the part KServe's canary split plays on a cluster: clients talk to one address with the
predictors' own protocol (V2 REST, and anything else the predictor serves over HTTP: v1,
metadata, health), and each request goes to the stable or the canary predictor by weight.

- Data plane: a raw ASGI app on uvicorn (httptools, uvloop) that reads the request body once and
  forwards it over a pooled, keep-alive `aiohttp` client; no per-request parsing beyond HTTP.
- Split: an independent weighted random choice per request (as Envoy/Istio split), so the
  canary sees a fair sample of the traffic; a deterministic rotation would send it every n-th
  request, which a periodic client pattern can alias (a canary that never sees some inputs).
- No lost requests: a request picks its backend and counts itself in-flight there before its
  first await; a new table (a weight step, a promotion, a rollback) only affects requests that
  start after it. A predictor leaving the table is `retired`: `drain` waits until its in-flight
  count is zero, and only then may the supervisor stop it. A connection the predictor closed
  while idle (keep-alive race) is retried once on a fresh connection, before any response.
- gRPC (`--grpc-port`): every unary method (KServe's `GRPCInferenceService`: ModelInfer,
  ServerReady, ModelMetadata, ...) is passed through as bytes to the chosen predictor's gRPC port,
  metadata and deadline included, with the same split and the same in-flight accounting; a
  predictor's error status comes back unchanged.
- Control plane (`--admin-port`, loopback): `GET /routes`, `PUT /routes`, `POST /drain`,
  `GET /metrics` (the router's own Prometheus metrics), `GET /healthz`.

Every answer carries `x-modelops-version: <version that answered>` (an HTTP header; gRPC initial
and trailing metadata); a request the router itself cannot place is a JSON error (`503 NoBackend`,
`502 BackendUnavailable`) or gRPC `UNAVAILABLE`.

This module is the HTTP data plane, its metrics, the control API and the entry point
(`python -m modelops.local.router`); the routing table is `routes.py`, the gRPC side `router_grpc.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from . import router_auth
from .routes import VERSION_HEADER, Backend, Route, RouteError, RoutingTable, parse_routes

__all__ = ["VERSION_HEADER", "Backend", "Route", "RouteError", "Router", "RoutingTable", "admin_app",
           "main", "parse_routes", "serve"]

log = logging.getLogger("modelops.router")
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the client library sets itself.
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"host", b"content-length"}
_HOP_RESPONSE = _HOP | {b"date", b"server"}
_JSON = (b"content-type", b"application/json")


class Router:
    """The ASGI app of the data plane."""

    def __init__(self, table: RoutingTable | None = None, *, connections: int = 256,
                 timeout: float = 60.0):
        self.table = table or RoutingTable()
        self._connections = connections
        self._timeout = timeout
        self.session: aiohttp.ClientSession | None = None
        self.metrics = CollectorRegistry()
        self.requests = Counter("modelops_router_requests_total", "Requests forwarded by the router",
                                ["version", "protocol", "code"], registry=self.metrics)
        self.latency = Histogram("modelops_router_request_seconds", "Time to answer through the router",
                                 ["version", "protocol"], registry=self.metrics,
                                 buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self._counters: dict = {}
        self.on_startup: list = []
        self.on_shutdown: list = []

    async def start(self) -> None:
        # Idle keep-alive connections are dropped well before the predictor's own keep-alive
        # timeout (KServe: 65 s), so a reused connection is rarely one the server is closing.
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0, keepalive_timeout=30,
                                         ttl_dns_cache=None, use_dns_cache=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=self._timeout),
                                             skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    def count(self, version: str, code, seconds: float, protocol: str = "http") -> None:
        key = (version, code, protocol)
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = (self.requests.labels(version, protocol, str(code)),
                                       self.latency.labels(version, protocol))
        c[0].inc()
        c[1].observe(seconds)

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            return await self.http(scope, receive, send)
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.start()
                    for fn in self.on_startup:
                        await fn()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for fn in self.on_shutdown:
                        await fn()
                    await self.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def http(self, scope, receive, send):
        t0 = time.perf_counter()
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)

        backend = self.table.choose()  # no await between choosing and counting in flight
        if backend is None:
            return await self._error(send, 503, "NoBackend", "no predictor is ready behind the router", t0)
        backend.enter()
        try:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _HOP]
            path = scope.get("raw_path") or scope["path"].encode()
            url = backend.url + path.decode("latin-1")
            if scope.get("query_string"):
                url += "?" + scope["query_string"].decode("latin-1")
            for attempt in (1, 2):
                try:
                    async with self.session.request(scope["method"], url, data=body or None,
                                                    headers=headers) as resp:
                        payload = await resp.read()
                        status = resp.status
                        out = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in _HOP_RESPONSE]
                    break
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    # A keep-alive connection closed under us before any answer: once more, fresh.
                    if attempt == 2:
                        return await self._error(send, 502, "BackendUnavailable",
                                                 f"v{backend.version} at {backend.url}: {exc}", t0, backend)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    return await self._error(send, 502, "BackendUnavailable",
                                             f"v{backend.version} at {backend.url}: {type(exc).__name__} {exc}",
                                             t0, backend)
        finally:
            backend.leave()
        backend.served += 1
        out.append((VERSION_HEADER, backend.version.encode()))
        out.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})
        self.count(backend.version, status, time.perf_counter() - t0)

    async def _error(self, send, status: int, reason: str, message: str, t0: float,
                     backend: Backend | None = None) -> None:
        body = orjson.dumps({"error": message, "reason": reason})
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        if backend is not None:
            headers.append((VERSION_HEADER, backend.version.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.count(backend.version if backend else "", status, time.perf_counter() - t0)


# --- control plane ---------------------------------------------------------------------------
def admin_app(router: Router, token: str | None = None) -> web.Application:
    table = router.table

    async def get_routes(_request):
        return web.json_response(table.to_json())

    async def put_routes(request):
        try:
            routes = parse_routes(await request.json())
        except (ValueError, RouteError) as exc:
            return web.json_response({"error": str(exc), "reason": "InvalidRoutes"}, status=400)
        table.set(routes)
        log.info("routes: %s", ", ".join(f"v{r[0]} {r[2]}%" for r in routes) or "none")
        return web.json_response(table.to_json())

    async def drain(request):
        try:
            doc = await request.json()
            urls = [u.rstrip("/") for u in doc["urls"]]
            timeout = float(doc.get("timeout", 30))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"body must be {{\"urls\": [...]}}: {exc}",
                                      "reason": "InvalidDrain"}, status=400)
        busy = [u for u in urls if u in table.backends and table.backends[u].weight > 0]
        if busy:
            return web.json_response({"error": f"still routed: {busy}", "reason": "StillRouted"}, status=409)
        t = time.perf_counter()
        left = await table.drain(urls, timeout)
        return web.json_response({"drained": not left, "inflight": left,
                                  "waited_ms": round((time.perf_counter() - t) * 1000, 1)},
                                 status=200 if not left else 504)

    async def metrics(_request):
        return web.Response(body=generate_latest(router.metrics), content_type="text/plain")

    async def healthz(_request):
        return web.json_response({"ok": True, "routes": len(table.backends)})

    app = web.Application(middlewares=[router_auth.admin_middleware(token)] if token else [])
    app.add_routes([web.get("/routes", get_routes), web.put("/routes", put_routes),
                    web.post("/drain", drain), web.get("/metrics", metrics), web.get("/healthz", healthz)])
    return app


def serve(port: int, admin_port: int, host: str = "127.0.0.1", routes: list | None = None,
          grpc_port: int = 0, token: str | None = None) -> None:
    """Run the router until SIGTERM/SIGINT (graceful: requests in flight finish, HTTP and gRPC)."""
    import uvicorn

    from .router_grpc import start_grpc

    router = Router()
    if routes:
        router.table.set(routes)
    runner: list[web.AppRunner] = []
    grpc_server: list = []

    async def start_admin():
        r = web.AppRunner(admin_app(router, token), access_log=None, handle_signals=False)
        await r.setup()
        await web.TCPSite(r, "127.0.0.1", admin_port).start()
        runner.append(r)
        if grpc_port:
            grpc_server.extend(await start_grpc(router, host, grpc_port, token))

    async def stop_admin():
        if grpc_server:
            server, proxy = grpc_server
            await server.stop(30)  # new calls refused, calls in flight finish
            await proxy.close()
        for r in runner:
            await r.cleanup()

    router.on_startup.append(start_admin)
    router.on_shutdown.append(stop_admin)
    app = router_auth.BearerASGI(router, token) if token else router
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
                            access_log=False, log_level="warning", timeout_keep_alive=75, backlog=2048,
                            timeout_graceful_shutdown=30)
    uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="modelops local router", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, default=0, help="gRPC pass-through (0: none)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--routes", default=None, help='initial table, JSON: {"routes": [...]}')
    p.add_argument("--token-file", default=None,
                   help=f"require this static bearer token (default: ${router_auth.ENV}, else none)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s router %(message)s")
    routes = parse_routes(orjson.loads(args.routes)) if args.routes else None
    serve(args.port, args.admin_port, args.host, routes, grpc_port=args.grpc_port,
          token=router_auth.load_token(args.token_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
