"""The predictor's lean REST path, mounted on KServe's FastAPI app ahead of KServe's routes.

KServe's generic V2 route validates the body into pydantic models and re-encodes the response
through FastAPI's encoder; for tensors that is most of the request cost. These routes read the
body once, decode it straight into numpy (orjson or the binary extension), and write the
response with orjson. Every other endpoint (metadata, v1, gRPC, /metrics) stays KServe's.
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidRequest, ModelNotReady, ModelOpsError, PayloadTooLarge, UnknownModel
from . import codec, metrics

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


def error_response(exc: ModelOpsError) -> Response:
    return Response(orjson.dumps({"error": str(exc), "reason": exc.reason}), status_code=exc.http_status,
                    media_type="application/json")


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: by Content-Length up front, else while streaming."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = PayloadTooLarge(f"request body exceeds the {self.max_bytes}-byte limit")
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    if int(value) > self.max_bytes:
                        return await error_response(too_large)(scope, receive, send)
                except ValueError:
                    return await error_response(InvalidRequest("invalid Content-Length"))(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
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
                await error_response(too_large)(scope, receive, send)


class _TooLarge(Exception):
    pass


class PredictorRoutes:
    def __init__(self, models: dict):
        self.models = models  # name -> OnnxModel

    def _model(self, name: str):
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"model '{name}' not found; serving: {sorted(self.models)}")
        if not model.ready:
            raise ModelNotReady(f"model '{name}' is not ready: {model.not_ready_reason or 'loading'}")
        return model

    async def infer(self, request: Request) -> Response:
        t0 = time.perf_counter()
        name = request.path_params["model_name"]
        try:
            model = self._model(name)
            json_length = request.headers.get(codec.BINARY_HEADER)
            try:
                json_length = int(json_length) if json_length is not None else None
            except ValueError:
                raise InvalidRequest(f"{codec.BINARY_HEADER} must be an integer") from None
            body = await request.body()
            feeds, header = codec.decode_request(body, model.inputs, json_length)
            names, wanted = model.output_names, header.get("outputs")
            outputs = await model.infer(feeds)
            if wanted:
                requested = [o.get("name") if isinstance(o, dict) else None for o in wanted]
                unknown = [n for n in requested if n not in names]
                if unknown:
                    raise InvalidRequest(f"unknown requested outputs {unknown}; model outputs: {names}")
                outputs = [outputs[names.index(n)] for n in requested]
                names = requested
            payload, head_len = codec.encode_response(
                name, names, outputs, header.get("id"), codec.wants_binary(header), model.version)
        except ModelOpsError as exc:
            metrics.REQUESTS.labels(name, "rest", str(exc.http_status)).inc()
            return error_response(exc)
        metrics.REQUESTS.labels(name, "rest", "200").inc()
        metrics.LATENCY.labels(name, "rest").observe(time.perf_counter() - t0)
        if head_len is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={codec.BINARY_HEADER: str(head_len)})

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["model_name"]
        try:
            self._model(name)
        except ModelOpsError as exc:
            return error_response(exc)
        return Response(orjson.dumps({"name": name, "ready": True}), media_type="application/json")

    async def server_ready(self, request: Request) -> Response:
        not_ready = {n: m.not_ready_reason or "loading" for n, m in self.models.items() if not m.ready}
        if not_ready:
            return Response(orjson.dumps({"ready": False, "models": not_ready,
                                          "error": "; ".join(f"{n}: {r}" for n, r in not_ready.items())}),
                            status_code=503, media_type="application/json")
        return Response(orjson.dumps({"ready": True}), media_type="application/json")


def install(app, models: dict, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Add our routes before KServe adds its own (Starlette matches in order)."""
    routes = PredictorRoutes(models)
    app.add_route("/v2/models/{model_name}/infer", routes.infer, methods=["POST"])
    app.add_route("/v2/models/{model_name}/ready", routes.model_ready, methods=["GET"])
    app.add_route("/v2/health/ready", routes.server_ready, methods=["GET"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
