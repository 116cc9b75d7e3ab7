"""What every predictor route answers with, shared by the V2 routes (`routes`), the OpenAI
routes (`openai`) and gRPC (`grpc_service`): the raw ASGI response, a `ModelOpsError` as JSON, a
bug as a 500 with a request id, the outermost `LastResort` layer, and the ready model a route
names. No route logic: `routes` and `openai` both import it, neither imports the other back."""

from __future__ import annotations

import logging
import uuid

import orjson

from ..errors import ModelNotReady, ModelOpsError, UnknownModel

log = logging.getLogger("modelops.serving")

_JSON = [(b"content-type", b"application/json")]
_CLOSE = [(b"connection", b"close")]


async def _send(send, status: int, body: bytes, headers=_JSON) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send, exc: ModelOpsError, close: bool = False) -> None:
    await _send(send, exc.http_status, orjson.dumps({"error": str(exc), "reason": exc.reason}),
                _JSON + _CLOSE if close else _JSON)


def request_id(scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id" and 0 < len(value) <= 128:
            return value.decode("latin-1")
    return uuid.uuid4().hex


async def send_internal_error(scope, send, exc: BaseException, close: bool = True) -> None:
    """A bug answered as one: 500 with a request id (also logged, with the traceback)."""
    rid = request_id(scope)
    log.error("internal error (request id %s) on %s %s", rid, scope.get("method"), scope.get("path"),
              exc_info=exc)
    body = orjson.dumps({"error": f"internal error (request id {rid})", "reason": "InternalError",
                         "request_id": rid})
    await _send(send, 500, body, [*_JSON, (b"x-request-id", rid.encode()), *(_CLOSE if close else [])])


class LastResort:
    """The outermost layer in front of the access layer: a bug there (a review that raised) is
    answered 500 with a request id when nothing was sent yet, as FastAPI's ServerErrorMiddleware
    did when the layers sat inside it; after a response started it propagates (uvicorn drops
    the connection)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            await send_internal_error(scope, send, exc)


def model_for(models: dict, name: str, version: str | None):
    """The served model NAME (at VERSION, when the route names one), ready to answer."""
    model = models.get(name)
    if model is None:
        raise UnknownModel(f"model '{name}' not found; serving: {sorted(models)}")
    if version is not None and version != model.version:
        served = f"version '{model.version}'" if model.version else "no version (--model-version not given)"
        raise UnknownModel(f"model '{name}' version '{version}' not found; serving {served}")
    if not model.ready:
        raise ModelNotReady(f"model '{name}' is not ready: {model.not_ready_reason or 'loading'}")
    return model
