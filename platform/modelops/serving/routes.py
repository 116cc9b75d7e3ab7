"""The predictor's lean request path: a raw ASGI layer in front of KServe's FastAPI app.

KServe's generic V2 route validates the body into pydantic models, re-encodes the response
through FastAPI's encoder, and its TimingMiddleware reads the process CPU time twice per
request just to log it (measured: ~30% of a CNN request). This layer answers
`POST /v2/models/{name}/infer` and the readiness routes itself: it reads the body once (with a
size limit), decodes it straight into numpy (orjson, or the binary tensor extension),
validates it, and writes the response with orjson. Everything else (metadata, v1, docs,
/metrics) goes to KServe's app unchanged, behind the same body limit; gRPC is KServe's.
"""

from __future__ import annotations

import re
import time

import orjson

from ..errors import InvalidRequest, ModelNotReady, ModelOpsError, PayloadTooLarge, UnknownModel
from . import codec, metrics

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_MODEL_READY = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/ready$")
_JSON = [(b"content-type", b"application/json")]


class _TooLarge(Exception):
    pass


async def _send(send, status: int, body: bytes, headers=_JSON) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send, exc: ModelOpsError) -> None:
    await _send(send, exc.http_status, orjson.dumps({"error": str(exc), "reason": exc.reason}))


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

    def _model(self, name: str):
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"model '{name}' not found; serving: {sorted(self.models)}")
        if not model.ready:
            raise ModelNotReady(f"model '{name}' is not ready: {model.not_ready_reason or 'loading'}")
        return model

    # --- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if method == "POST":
                m = _INFER.match(path)
                if m:
                    return await self.infer(m.group(1), scope, receive, send)
            elif method == "GET":
                if path == "/v2/health/ready":
                    return await self.server_ready(send)
                m = _MODEL_READY.match(path)
                if m:
                    return await self.model_ready(m.group(1), send)
            return await self._limited(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _limited(self, scope, receive, send):
        """KServe's routes, behind the same body limit (also for chunked bodies)."""
        try:
            declared = self._declared_length(scope)
        except InvalidRequest as exc:
            return await _send_error(send, exc)
        if declared is not None and declared > self.max_body_bytes:
            return await _send_error(send, self._too_large())
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, self._too_large())

    async def infer(self, name: str, scope, receive, send) -> None:
        t0 = time.perf_counter()
        version = ""
        try:
            model = self._model(name)
            version = model.version or ""
            json_length = None
            for key, value in scope["headers"]:
                if key == codec.BINARY_HEADER.encode():
                    try:
                        json_length = int(value)
                    except ValueError:
                        raise InvalidRequest(f"{codec.BINARY_HEADER} must be an integer") from None
            body = await self._read_body(scope, receive)
            feeds, header = codec.decode_request(body, model.inputs, json_length)
            names, wanted = model.output_names, header.get("outputs")
            if wanted:
                requested = [o.get("name") if isinstance(o, dict) else None for o in wanted]
                unknown = [n for n in requested if n not in names]
                if unknown:
                    raise InvalidRequest(f"unknown requested outputs {unknown}; model outputs: {names}")
            outputs = await model.infer(feeds)
            if wanted:
                outputs = [outputs[names.index(n)] for n in requested]
                names = requested
            payload, head_len = codec.encode_response(
                name, names, outputs, header.get("id"), codec.wants_binary(header), model.version)
        except ModelOpsError as exc:
            metrics.REQUESTS.labels(name, version, "rest", str(exc.http_status)).inc()
            return await _send_error(send, exc)
        metrics.REQUESTS.labels(name, version, "rest", "200").inc()
        metrics.LATENCY.labels(name, version, "rest").observe(time.perf_counter() - t0)
        if head_len is None:
            return await _send(send, 200, payload)
        await _send(send, 200, payload, [(b"content-type", b"application/octet-stream"),
                                         (codec.BINARY_HEADER.encode(), str(head_len).encode())])

    async def model_ready(self, name: str, send) -> None:
        try:
            self._model(name)
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
