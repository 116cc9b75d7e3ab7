"""OpenAI-compatible embeddings on KServe's paths: `POST /openai/v1/embeddings`, `GET /openai/v1/models`.

    {"model": NAME, "input": "a text" | ["texts", ...], "encoding_format": "float" | "base64"}
 -> {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...] | "<b64>"}],
     "model": NAME, "usage": {"prompt_tokens": N, "total_tokens": N}}

`base64` is the vector's little-endian float32 bytes; tokens are the inputs' real tokens
(special tokens included, no padding). Embedding models are text models of task
sentence-embedding (the graph's `sentence_embedding`) and feature-extraction (last_hidden_state
mean-pooled over the mask, see `text_model.TextServing.embeddings`). Errors are OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`: unknown model 404, a bad field or a model that
makes no embeddings 400, too large 413, not ready 503. Counted in the same request metrics as
the other routes, with protocol="openai"; behind the same access layer (auth, audit).
"""

from __future__ import annotations

import base64
import time

import numpy as np
import orjson

from ..errors import InvalidRequest, ModelOpsError, UnknownModel
from . import metrics
from .replies import _CLOSE, _JSON, _send, model_for, send_internal_error

PREFIX = "/openai/v1/"
AUDIT_MODEL = "modelops.model"  # scope key: the model a body named (read by `access`)
EMBEDDINGS, MODELS = "/openai/v1/embeddings", "/openai/v1/models"


class _Field(InvalidRequest):
    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


def error_body(exc: ModelOpsError) -> bytes:
    status = exc.http_status
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    code = "model_not_found" if isinstance(exc, UnknownModel) else exc.reason
    param = getattr(exc, "param", "model" if isinstance(exc, UnknownModel) else None)
    return orjson.dumps({"error": {"message": str(exc), "type": kind, "param": param, "code": code}})


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise _Field("'input' must be a string or a non-empty list of strings", "input")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Field(f"'input'[{i}] is {type(item).__name__}, not a string (token ids are not "
                         f"accepted: send text)", "input")
    return value


def parse(body: bytes) -> tuple[str, list[str], str]:
    """(model, texts, encoding_format) of an embeddings request, or a `_Field` naming what is wrong."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Field(f"request body is not valid JSON: {exc}", None) from None
    if not isinstance(req, dict):
        raise _Field("request body must be a JSON object", None)
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise _Field("'model' must be a non-empty string", "model")
    if "input" not in req:
        raise _Field("'input' is required", "input")
    texts = _texts(req["input"])
    fmt = req.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _Field(f"'encoding_format' must be 'float' or 'base64', got {str(fmt)[:32]!r}", "encoding_format")
    if req.get("dimensions") is not None:
        raise _Field("'dimensions' is not supported: the model's embedding size is fixed", "dimensions")
    return model, texts, fmt


def encode(vectors: np.ndarray, fmt: str):
    if fmt == "base64":
        return [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    return [v.tolist() for v in np.asarray(vectors, np.float32)]


async def handle(asgi, scope, receive, send) -> None:
    path, method = scope["path"], scope["method"]
    if path == MODELS and method == "GET":
        data = [{"id": name, "object": "model", "created": getattr(m, "created", 0), "owned_by": "modelops"}
                for name, m in asgi.models.items()]
        return await _send(send, 200, orjson.dumps({"object": "list", "data": data}))
    if path != EMBEDDINGS or method != "POST":
        allowed = "GET" if path == MODELS else "POST" if path == EMBEDDINGS else None
        status, message = (405, f"{method} is not allowed on {path}") if allowed else (404, f"no route {path}")
        body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": "not_found" if status == 404 else "method_not_allowed"}})
        return await _send(send, status, body, _JSON + _CLOSE)
    t0, name, label, read = time.perf_counter(), "", "", False
    try:
        body = await asgi._read_body(scope, receive)
        read = True
        name, texts, fmt = parse(body)
        scope[AUDIT_MODEL] = name  # the model is in the body: the access layer's audit line names it
        model = model_for(asgi.models, name, None)
        label = model.version or ""
        vectors, tokens = await model.embed(texts)
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encode(vectors, fmt))]
        payload = orjson.dumps({"object": "list", "data": data, "model": name,
                                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
    except ModelOpsError as exc:
        if name in asgi.models or not name:
            metrics.REQUESTS.labels(name, label, "openai", str(exc.http_status)).inc()
        return await _send(send, exc.http_status, error_body(exc), _JSON if read else _JSON + _CLOSE)
    except Exception as exc:
        metrics.REQUESTS.labels(name, label, "openai", "500").inc()
        return await send_internal_error(scope, send, exc, close=not read)
    count, latency = metrics.answered(name, label, "openai")
    count.inc()
    latency.observe(time.perf_counter() - t0)
    await _send(send, 200, payload)
