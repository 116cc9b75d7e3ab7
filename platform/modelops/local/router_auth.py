"""The local router's optional static bearer token (`modelops local up --token-file F`, or the
environment variable MODELOPS_ROUTER_TOKEN), so that a model on a shared workstation is not open to
every local user: loopback is reachable by all of them.

With a token, every request needs `Authorization: Bearer <token>` — HTTP (the data plane, except
`/v2/health/live` and `/v2/health/ready`), gRPC (the `authorization` metadata, except ServerLive
and ServerReady) and the admin API (except `/healthz`), which can change the routes. A refusal
is 401 (gRPC UNAUTHENTICATED) with a one-line reason; the token is compared in constant time and
is not forwarded to the predictors over HTTP.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import orjson

ENV = "MODELOPS_ROUTER_TOKEN"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
OPEN_GRPC = frozenset({"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"})


def load_token(token_file: str | None) -> str | None:
    """The token from the file (stripped), else from $MODELOPS_ROUTER_TOKEN, else None (no auth)."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"--token-file {token_file} is empty")
        return token
    return os.environ.get(ENV) or None


def allowed(token: str, header: str | bytes | None) -> bool:
    if isinstance(header, str):
        header = header.encode("latin-1", "replace")
    if not header or not header[:7].lower() == b"bearer ":
        return False
    return hmac.compare_digest(header[7:].strip(), token.encode())


def _refusal(header) -> str:
    return "missing bearer token (Authorization: Bearer <token>)" if not header else "invalid bearer token"


class BearerASGI:
    """HTTP data plane: check, then pass on without the Authorization header."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if not allowed(self.token, header):
            body = orjson.dumps({"error": _refusal(header), "reason": "Unauthenticated"})
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="modelops-local"'), (b"connection", b"close")]})
            return await send({"type": "http.response.body", "body": body})
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"authorization"]}
        return await self.app(scope, receive, send)


def grpc_interceptor(token: str):
    import grpc

    class BearerInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            if details.method in OPEN_GRPC:
                return await continuation(details)
            header = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
            if allowed(token, header):
                return await continuation(details)

            async def refuse(_request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, _refusal(header))

            return grpc.unary_unary_rpc_method_handler(refuse)

    return BearerInterceptor()


def admin_middleware(token: str):
    from aiohttp import web

    @web.middleware
    async def check(request, handler):
        if request.path != "/healthz" and not allowed(token, request.headers.get("Authorization")):
            return web.json_response({"error": _refusal(request.headers.get("Authorization")),
                                      "reason": "Unauthenticated"}, status=401)
        return await handler(request)

    return check
