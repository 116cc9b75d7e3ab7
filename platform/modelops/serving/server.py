"""`modelops serve`: one ONNX model behind KServe's ModelServer (REST + gRPC + /metrics)."""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import kserve.model_server as kserve_model_server
import uvicorn
from grpc import aio
from kserve import ModelServer
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.rest.server import RESTServer

from . import replies, routes
from .access import AccessASGI, AccessInterceptor
from .audit import AuditLog
from .auth import KubeAuthConfig, KubeGuard
from .batching import BatchingConfig
from .grpc_service import ModelServicer
from .onnx_model import OnnxModel
from .shadow import Mirror
from .tls import ContextReloader, TlsFiles, grpc_credentials


@dataclass(frozen=True)
class Access:
    """Where the predictor listens and who may call it (see `auth`, `audit`, `tls`)."""

    host: str = "0.0.0.0"  # inside a container, KServe's convention; local mode passes 127.0.0.1
    tls: TlsFiles | None = None
    guard: KubeGuard | None = None
    audit: AuditLog | None = None
    access_log: bool = False  # uvicorn's one line per request (--access-log on)

    @property
    def layered(self) -> bool:
        return self.guard is not None or self.audit is not None

    def grpc_address(self, port: int) -> str:
        if self.host in ("0.0.0.0", "::", ""):
            return f"[::]:{port}"  # KServe's: every interface, IPv4 and IPv6
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


class _ReloadingServer(uvicorn.Server):
    """uvicorn, with its SSLContext kept in step with the certificate files (`tls.ContextReloader`)."""

    def __init__(self, config: uvicorn.Config, tls: TlsFiles | None, background=()):
        super().__init__(config)
        self.tls = tls
        self.background = background  # coroutine functions run while serving (the shadow mirror)

    async def serve(self, sockets=None) -> None:
        if not self.config.loaded:
            self.config.load()
        tasks = [asyncio.create_task(run()) for run in self.background]
        if self.tls is not None and self.config.ssl is not None:
            tasks.append(asyncio.create_task(ContextReloader(self.tls, self.config.ssl).run()))
        try:
            await super().serve(sockets=sockets)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def lean_rest_server(models: dict, max_body_bytes: int, access: Access = Access(),
                     background=()) -> type[RESTServer]:
    class LeanRESTServer(RESTServer):
        """KServe's REST server with our ASGI layer in front instead of KServe's TimingMiddleware
        (which only logs per-request timings, at a measured ~30% of the request cost), and
        outside it the access layer (auth, audit) when configured."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = access.host
            if access.tls is not None:
                self.config.ssl_certfile, self.config.ssl_keyfile = access.tls.cert, access.tls.key
            self._server = _ReloadingServer(self.config, access.tls, background)
            if not access.access_log:
                # uvicorn logs a request only when its access logger has handlers (checked per
                # connection): none, and the per-request LogRecord is never built.
                access_logger = logging.getLogger("uvicorn.access")
                access_logger.handlers = []
                access_logger.propagate = False

        def _add_middlewares(self, app):
            self._kserve_app = app  # no middleware inside it: ours goes in front (create_application)

        def create_application(self):
            """uvicorn -> [access layer] -> our routes -> KServe's FastAPI app (its whole stack: v1,
            docs, /metrics). In front, not inside: FastAPI's own layers (ServerErrorMiddleware,
            telemetry, its body limit) cost ~5% of a small model's request and do nothing for
            routes that read their body within the limit and answer every error themselves."""
            super().create_application()
            front = routes.PredictorASGI(self._kserve_app, models=models, max_body_bytes=max_body_bytes)
            if access.layered:
                front = replies.LastResort(AccessASGI(front, models=models, guard=access.guard,
                                                     audit=access.audit))
            self.config.app = front

    return LeanRESTServer


def predictor_grpc_server(models: dict, access: Access = Access()) -> type[GRPCServer]:
    class PredictorGRPCServer(GRPCServer):
        """KServe's gRPC server with our servicer, the access interceptor, TLS and the host."""

        async def start(self, max_workers):
            interceptors = [ExceptionToStatusInterceptor()]
            if access.layered:
                interceptors.insert(0, AccessInterceptor(models, access.guard, access.audit))
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=interceptors,
                options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                         ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length"))])
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                ModelServicer(self._data_plane, self._model_repository_extension, models), self._server)
            address = access.grpc_address(self._port)
            if access.tls is not None:
                self._server.add_secure_port(address, grpc_credentials(access.tls))
            else:
                self._server.add_insecure_port(address)
            logging.getLogger("modelops.serving").info("gRPC on %s (%s)", address,
                                                       "TLS" if access.tls else "plaintext")
            await self._server.start()
            await self._server.wait_for_termination()

    return PredictorGRPCServer


class PredictorServer(ModelServer):
    """KServe's ModelServer, with two changes:

    - a model that failed to load is still registered: KServe exits when no model is ready; we
      keep serving so /v2/health/ready answers 503 with the reason (a GPU that is not there, a
      corrupt file) instead of a crash loop without one;
    - the REST server puts our lean request path in front (see `routes`), and gRPC's ModelInfer,
      ModelMetadata and ModelReady are ours (see `grpc_service`): one validation path.
    """

    def __init__(self, *, max_body_bytes: int = routes.DEFAULT_MAX_BODY_BYTES, access: Access = Access(),
                 background=(), **kwargs):
        super().__init__(**kwargs)
        self.max_body_bytes = max_body_bytes
        self.access = access
        self.background = tuple(background)

    def _register_and_check_atleast_one_model_is_ready(self, models):
        for model in models:
            self.register_model(model)
            model.enable_latency_logging = False
            model.start()

    def start(self, models) -> None:
        # ModelServer.start builds its REST server and gRPC servicer from these module-level names.
        by_name = {m.name: m for m in models}
        kserve_model_server.RESTServer = lean_rest_server(by_name, self.max_body_bytes, self.access,
                                                          self.background)
        kserve_model_server.GRPCServer = predictor_grpc_server(by_name, self.access)
        policy = asyncio.get_event_loop_policy()
        if self.event_loop in ("auto", "uvloop"):
            # KServe's "auto" means uvloop when installed, but ModelServer.start runs asyncio.run()
            # itself, so uvicorn never installs it: the stdlib selector loop served every request.
            try:
                import uvloop
            except ImportError:
                pass
            else:
                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
                # KServe's setup_event_loop asks for the current loop (uvloop's policy makes none)
                # before asyncio.run() makes the one that serves, as with the stdlib policy.
                asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            super().start(models)
        finally:
            kserve_model_server.RESTServer = RESTServer
            kserve_model_server.GRPCServer = GRPCServer
            asyncio.set_event_loop_policy(policy)


def build(model_dir: str | Path, name: str, *, device: str = "auto", version: str | None = None,
          http_port: int = 8080, grpc_port: int = 8081, max_body_bytes: int = routes.DEFAULT_MAX_BODY_BYTES,
          batching: BatchingConfig | None = BatchingConfig(), intra_op_threads: int = 0,
          host: str = "0.0.0.0", auth: KubeAuthConfig | None = None, audit: AuditLog | None = None,
          tls: TlsFiles | None = None, shadow_config: str | Path | None = None, access_log: bool = False):
    """The server and its model. `auth` None: no access control; `audit` None: no audit lines;
    `shadow_config`: the mirror configuration file to watch (`shadow`), None: no mirroring;
    `access_log`: uvicorn's access log (off by default)."""
    if tls is not None:
        tls.read()  # a missing or mismatched pair fails at start, not at the first handshake
    access = Access(host=host, tls=tls, guard=KubeGuard(auth) if auth is not None else None, audit=audit,
                    access_log=access_log)
    model = OnnxModel(name, model_dir, device=device, batching=batching,
                      intra_op_threads=intra_op_threads, version=version)
    model.load()
    background = []
    if shadow_config:
        model.mirror = Mirror(shadow_config, name, version)
        background.append(model.mirror.run)
    server = PredictorServer(http_port=http_port, grpc_port=grpc_port or 8081, enable_grpc=bool(grpc_port),
                             enable_latency_logging=False, max_body_bytes=max_body_bytes, access=access,
                             background=background)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    return server, model


def serve(model_dir: str | Path, name: str, **kwargs) -> None:
    server, model = build(model_dir, name, **kwargs)
    server.start([model])
