"""The predictor's lean request path: a raw ASGI layer in front of KServe's FastAPI app.

KServe's generic V2 route validates the body into pydantic models, re-encodes the response
through FastAPI's encoder, and its TimingMiddleware reads the process CPU time twice per
request just to log it (measured: ~30% of a CNN request). This layer answers the V2 model
routes itself (`/v2/models/{name}[/versions/{version}]`, `.../ready`, `.../infer`),
`/v2/health/ready` and the OpenAI routes (`openai`): it reads the body once (with a size
limit), decodes and validates it (`codec`), and writes the response with orjson. Everything
else (v1, docs, /metrics) goes to KServe's app unchanged, behind the same body limit; gRPC is `grpc.ModelServicer`.

No request can cost the next one: every error is answered here, with the connection left
usable (the body was read) or closed explicitly (`Connection: close`, when it was not). An
unexpected exception is a bug: it is logged with a request id and answered 500 with that id,
never by dropping the connection.
"""

from __future__ import annotations

import logging
import re
import time

import orjson

from ..errors import InvalidRequest, ModelOpsError, PayloadTooLarge
from . import codec, metrics, openai
from .replies import _send, _send_error, model_for, send_internal_error

log = logging.getLogger("modelops.serving")

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_MODEL_ROUTE = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/infer|/ready)?$")
_BINARY_HEADER = codec.BINARY_HEADER.encode()


class _TooLarge(Exception):
    pass


class PredictorASGI:
    def __init__(self, app, models: dict, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.models = models  # name -> OnnxModel
        self.max_body_bytes = max_body_bytes

    # --- plumbing ---------------------------------------------------------------------------
    def _declared_length(self, scope) -> int | None:
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    raise InvalidRequest("invalid Content-Length") from None
        return None

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds the {self.max_body_bytes}-byte limit")

    async def _read_body(self, scope, receive) -> bytes:
        declared = self._declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # --- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            m = _MODEL_ROUTE.match(path) if path.startswith("/v2/models/") else None
            if m:
                name, version, action = m.groups()
                if method == "POST" and action == "/infer":
                    return await self.infer(name, version, scope, receive, send)
                if method == "GET" and action == "/ready":
                    return await self._guarded(self.model_ready(name, version, send), scope, send)
                if method == "GET" and action is None:
                    return await self._guarded(self.metadata(name, version, send), scope, send)
            elif method == "GET" and path == "/v2/health/ready":
                return await self._guarded(self.server_ready(send), scope, send)
            elif path.startswith(openai.PREFIX):
                return await openai.handle(self, scope, receive, send)
            return await self._limited(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _guarded(self, handler, scope, send) -> None:
        """Body-less GET routes: a bug answers 500 with a request id."""
        try:
            await handler
        except Exception as exc:
            await send_internal_error(scope, send, exc)

    async def _limited(self, scope, receive, send):
        """KServe's routes, behind the same body limit (also for chunked bodies)."""
        try:
            declared = self._declared_length(scope)
        except InvalidRequest as exc:
            return await _send_error(send, exc, close=True)
        if declared is not None and declared > self.max_body_bytes:
            return await _send_error(send, self._too_large(), close=True)
        seen, started, complete = 0, False, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started, complete
            started = started or message["type"] == "http.response.start"
            complete = complete or (message["type"] == "http.response.body" and not message.get("more_body"))
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, self._too_large(), close=True)
        except Exception as exc:
            if not started:
                await send_internal_error(scope, send, exc)
            elif complete:
                log.error("error after the response to %s was sent", scope.get("path"), exc_info=exc)
            else:
                raise  # half a response: the server must drop the connection

    async def infer(self, name: str, version: str | None, scope, receive, send) -> None:
        t0 = time.perf_counter()
        label, read = "", False
        try:
            # The body first (within the limit): whatever the answer, the connection stays usable.
            body = await self._read_body(scope, receive)
            read = True
            model = model_for(self.models, name, version)
            label = model.version or ""
            json_length = None
            for key, value in scope["headers"]:
                if key == _BINARY_HEADER:
                    try:
                        json_length = int(value)
                    except ValueError:
                        raise InvalidRequest(f"{codec.BINARY_HEADER} must be an integer") from None
            request = codec.decode_request(body, model.inputs, model.output_names, json_length,
                                           getattr(model, "signatures", None))
            names, outputs = await model.answer(request)
            payload, head_len = codec.encode_response(
                name, names, outputs, request.id, request.binary, model.version)
        except ModelOpsError as exc:
            metrics.REQUESTS.labels(name, label, "rest", str(exc.http_status)).inc()
            return await _send_error(send, exc, close=not read)
        except Exception as exc:
            metrics.REQUESTS.labels(name, label, "rest", "500").inc()
            return await send_internal_error(scope, send, exc, close=not read)
        count, latency = metrics.answered(name, label, "rest")
        count.inc()
        latency.observe(time.perf_counter() - t0)
        if head_len is None:
            await _send(send, 200, payload)
        else:
            await _send(send, 200, payload, [(b"content-type", b"application/octet-stream"),
                                             (_BINARY_HEADER, str(head_len).encode())])
        mirror = getattr(model, "mirror", None)
        if mirror is not None:  # shadow: a copy, after the answer went out
            mirror.offer(request.feeds, names, outputs)

    async def metadata(self, name: str, version: str | None, send) -> None:
        try:
            model = model_for(self.models, name, version)
        except ModelOpsError as exc:
            return await _send_error(send, exc)
        await _send(send, 200, orjson.dumps(model.metadata()))

    async def model_ready(self, name: str, version: str | None, send) -> None:
        try:
            model_for(self.models, name, version)
        except ModelOpsError as exc:
            return await _send_error(send, exc)
        await _send(send, 200, orjson.dumps({"name": name, "ready": True}))

    async def server_ready(self, send) -> None:
        not_ready = {n: m.not_ready_reason or "loading" for n, m in self.models.items() if not m.ready}
        if not_ready:
            return await _send(send, 503, orjson.dumps({
                "ready": False, "models": not_ready,
                "error": "; ".join(f"{n}: {r}" for n, r in not_ready.items())}))
        await _send(send, 200, orjson.dumps({"ready": True}))
