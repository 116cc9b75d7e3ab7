"""`modelops serve`: one ONNX model behind KServe's ModelServer (REST + gRPC + /metrics)."""

from __future__ import annotations

import logging
from pathlib import Path

from kserve import ModelServer

from . import routes
from .batching import BatchingConfig
from .onnx_model import OnnxModel


class PredictorServer(ModelServer):
    """KServe's ModelServer, except that a model that failed to load is still registered.

    KServe exits when no model is ready; we keep serving so /v2/health/ready answers 503 with the
    reason (a GPU that is not there, a corrupt file) instead of a crash loop without one.
    """

    def _register_and_check_atleast_one_model_is_ready(self, models):
        for model in models:
            self.register_model(model)
            model.enable_latency_logging = False
            if model.ready:  # kserve.Model.start() sets ready=True: never for a model that failed to load
                model.start()


def build(model_dir: str | Path, name: str, *, device: str = "auto", version: str | None = None,
          http_port: int = 8080, grpc_port: int = 8081, max_body_bytes: int = routes.DEFAULT_MAX_BODY_BYTES,
          batching: BatchingConfig | None = BatchingConfig(), intra_op_threads: int = 0):
    from kserve.model_server import app

    model = OnnxModel(name, model_dir, device=device, batching=batching,
                      intra_op_threads=intra_op_threads, version=version)
    model.load()
    server = PredictorServer(http_port=http_port, grpc_port=grpc_port or 8081,
                             enable_grpc=bool(grpc_port), enable_latency_logging=False)
    routes.install(app, {name: model}, max_body_bytes=max_body_bytes)
    # KServe logs a timing line per request through kserve.trace: keep it for warnings only.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    return server, model


def serve(model_dir: str | Path, name: str, **kwargs) -> None:
    server, model = build(model_dir, name, **kwargs)
    server.start([model])
