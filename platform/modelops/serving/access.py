"""Where `auth` and `audit` meet the request path: an ASGI layer in front of REST, a gRPC interceptor.

Both ask the `KubeGuard` (when `--auth kubernetes`) before anything else runs, answer a refusal
themselves (REST: 401 with `WWW-Authenticate: Bearer`, 403 or 503, each with a one-line `error`
and its `reason`, and `Connection: close` since the body was never read; gRPC: UNAUTHENTICATED,
PERMISSION_DENIED or UNAVAILABLE before the message is even parsed), count it in
`modelops_predictor_auth_denied_total{reason}`, and write the audit line (`audit.AuditLog`) of every
protected request when it is done. The probes and `/metrics` (`auth.OPEN_PATHS`,
`auth.OPEN_GRPC_METHODS`) pass untouched. Every other path is protected, including routes added
later (v1, OpenAI, docs): the list is of what is open, not of what is closed.
"""

from __future__ import annotations

import inspect
import re
import time

import grpc
import orjson

from . import metrics
from .audit import AuditLog
from .auth import OPEN_GRPC_METHODS, OPEN_PATHS, Decision, KubeGuard
from .openai import AUDIT_MODEL

_MODEL_PATH = re.compile(r"^/v[12]/models/([^/:]+)(?:/versions/([^/]+))?")
_GRPC_CODE = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
              503: grpc.StatusCode.UNAVAILABLE}


def _served_version(models: dict, name: str, asked: str | None) -> str:
    if asked:
        return asked
    model = models.get(name)
    return (getattr(model, "version", None) or "") if model is not None else ""


class AccessASGI:
    """REST: authenticate, authorise, audit. `guard` None: no auth; `audit` None: no audit lines."""

    def __init__(self, app, models: dict, guard: KubeGuard | None = None, audit: AuditLog | None = None):
        self.app, self.models, self.guard, self.audit = app, models, guard, audit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or (self.guard is None and self.audit is None):
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        caller = "-"
        if self.guard is not None:
            header = None
            for key, value in scope["headers"]:
                if key == b"authorization":
                    header = value.decode("latin-1")
                    break
            decision = await self.guard.check(header)
            if not decision.allowed:
                return await self._refuse(scope, send, decision, t0)
            caller = decision.who
        if self.audit is None:
            return await self.app(scope, receive, send)
        status = 500  # what a dropped connection is recorded as

        async def tracking_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._record(scope, caller, status, t0)

    async def _refuse(self, scope, send, decision: Decision, t0: float) -> None:
        exc = decision.error
        metrics.AUTH_DENIED.labels(decision.denied_reason).inc()
        body = orjson.dumps({"error": str(exc), "reason": exc.reason})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        if exc.http_status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="modelops"'))
        elif exc.http_status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._record(scope, decision.who, exc.http_status, t0, decision.denied_reason)

    def _record(self, scope, caller: str, status: int, t0: float, reason: str = "") -> None:
        if self.audit is None:
            return
        path = scope["path"]
        m = _MODEL_PATH.match(path)
        name = m.group(1) if m else scope.get(AUDIT_MODEL) or "-"  # OpenAI: named in the body
        self.audit.record(caller=caller, model=name,
                          version=_served_version(self.models, name, m.group(2) if m else None),
                          protocol="rest", route=f"{scope['method']} {path[:256]}", status=status,
                          latency_s=time.perf_counter() - t0, reason=reason)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """gRPC: the same checks on the `authorization` metadata; the audit line names the method."""

    def __init__(self, models: dict, guard: KubeGuard | None = None, audit: AuditLog | None = None):
        self.models, self.guard, self.audit = models, guard, audit

    async def intercept_service(self, continuation, details):
        method = details.method
        if method in OPEN_GRPC_METHODS or (self.guard is None and self.audit is None):
            return await continuation(details)
        t0 = time.perf_counter()
        caller = "-"
        if self.guard is not None:
            header = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
            if isinstance(header, bytes):
                header = header.decode("latin-1")
            decision = await self.guard.check(header)
            if not decision.allowed:
                return self._refusal(method, decision, t0)
            caller = decision.who
        handler = await continuation(details)
        if handler is None or self.audit is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def audited(request, context):
            try:
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                code = context.code()
                name = getattr(request, "model_name", None) or getattr(request, "name", "") or "-"
                asked = getattr(request, "model_version", None) or getattr(request, "version", None)
                self.audit.record(caller=caller, model=name, version=_served_version(self.models, name, asked),
                                  protocol="grpc", route=method,
                                  status=code.name if isinstance(code, grpc.StatusCode) else "OK",
                                  latency_s=time.perf_counter() - t0)

        return grpc.unary_unary_rpc_method_handler(audited, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _refusal(self, method: str, decision: Decision, t0: float):
        exc = decision.error
        code = _GRPC_CODE[exc.http_status]
        metrics.AUTH_DENIED.labels(decision.denied_reason).inc()
        if self.audit is not None:
            self.audit.record(caller=decision.who, model="-", version="", protocol="grpc", route=method,
                              status=code.name, latency_s=time.perf_counter() - t0,
                              reason=decision.denied_reason)

        async def refuse(_request, context):
            await context.abort(code, str(exc))

        # No deserializer: the refused message is never parsed.
        return grpc.unary_unary_rpc_method_handler(refuse)
