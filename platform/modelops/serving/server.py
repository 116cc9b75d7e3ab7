"""`modelops serve`: one ONNX model behind KServe's ModelServer (REST + gRPC + /metrics)."""

from __future__ import annotations

import logging
from pathlib import Path

import kserve.model_server as kserve_model_server
import kserve.protocol.grpc.server as kserve_grpc_server
from kserve import ModelServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer

from . import routes
from .batching import BatchingConfig
from .grpc_service import ModelServicer
from .onnx_model import OnnxModel


def lean_rest_server(models: dict, max_body_bytes: int) -> type[RESTServer]:
    class LeanRESTServer(RESTServer):
        """KServe's REST server with our ASGI layer in front instead of KServe's TimingMiddleware
        (which only logs per-request timings, at a measured ~30% of the request cost)."""

        def _add_middlewares(self, app):
            app.add_middleware(routes.PredictorASGI, models=models, max_body_bytes=max_body_bytes)

    return LeanRESTServer


class PredictorServer(ModelServer):
    """KServe's ModelServer, with two changes:

    - a model that failed to load is still registered: KServe exits when no model is ready; we
      keep serving so /v2/health/ready answers 503 with the reason (a GPU that is not there, a
      corrupt file) instead of a crash loop without one;
    - the REST server puts our lean request path in front (see `routes`), and gRPC's ModelInfer,
      ModelMetadata and ModelReady are ours (see `grpc_service`): one validation path.
    """

    def __init__(self, *, max_body_bytes: int = routes.DEFAULT_MAX_BODY_BYTES, **kwargs):
        super().__init__(**kwargs)
        self.max_body_bytes = max_body_bytes

    def _register_and_check_atleast_one_model_is_ready(self, models):
        for model in models:
            self.register_model(model)
            model.enable_latency_logging = False
            model.start()

    def start(self, models) -> None:
        # ModelServer.start builds its REST server and gRPC servicer from these module-level names.
        by_name = {m.name: m for m in models}
        kserve_model_server.RESTServer = lean_rest_server(by_name, self.max_body_bytes)
        kserve_grpc_server.InferenceServicer = lambda dp, ext: ModelServicer(dp, ext, by_name)
        try:
            super().start(models)
        finally:
            kserve_model_server.RESTServer = RESTServer
            kserve_grpc_server.InferenceServicer = InferenceServicer


def build(model_dir: str | Path, name: str, *, device: str = "auto", version: str | None = None,
          http_port: int = 8080, grpc_port: int = 8081, max_body_bytes: int = routes.DEFAULT_MAX_BODY_BYTES,
          batching: BatchingConfig | None = BatchingConfig(), intra_op_threads: int = 0):
    model = OnnxModel(name, model_dir, device=device, batching=batching,
                      intra_op_threads=intra_op_threads, version=version)
    model.load()
    server = PredictorServer(http_port=http_port, grpc_port=grpc_port or 8081, enable_grpc=bool(grpc_port),
                             enable_latency_logging=False, max_body_bytes=max_body_bytes)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    return server, model


def serve(model_dir: str | Path, name: str, **kwargs) -> None:
    server, model = build(model_dir, name, **kwargs)
    server.start([model])
