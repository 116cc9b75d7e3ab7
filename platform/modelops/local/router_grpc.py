"""The local router's gRPC side: every unary method (KServe's `GRPCInferenceService`: ModelInfer,
ServerReady, ModelMetadata, ...) passed through as bytes to the chosen predictor's gRPC port,
metadata and deadline included, with the same split and in-flight accounting as HTTP."""

from __future__ import annotations

import time

from .routes import VERSION_HEADER

GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024)]


class GrpcProxy:
    """A generic gRPC handler: each unary call goes, as bytes, to the chosen predictor's gRPC port."""

    def __init__(self, router):
        """`router`: the HTTP side's `router.Router` (its table and its request metrics)."""
        import grpc

        self._grpc = grpc
        self.router = router
        self.table = router.table
        self._channels: dict[str, object] = {}
        self._handlers: dict[str, object] = {}

    def _channel(self, target: str):
        ch = self._channels.get(target)
        if ch is None:
            ch = self._channels[target] = self._grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
        return ch

    def service(self, details):
        handler = self._handlers.get(details.method)
        if handler is None:
            handler = self._handlers[details.method] = self._grpc.unary_unary_rpc_method_handler(
                self._forwarder(details.method))
        return handler

    def _forwarder(self, method: str):
        grpc = self._grpc

        async def forward(request: bytes, context):
            t0 = time.perf_counter()
            backend = self.table.choose()
            if backend is None or not backend.grpc:
                why = "no predictor is ready behind the router" if backend is None else \
                    f"v{backend.version} has no gRPC endpoint"
                self.router.count(backend.version if backend else "", "UNAVAILABLE", time.perf_counter() - t0,
                                  "grpc")
                await context.abort(grpc.StatusCode.UNAVAILABLE, why)
            version = ((VERSION_HEADER.decode(), backend.version),)
            backend.enter()
            try:
                metadata = tuple((k, v) for k, v in (context.invocation_metadata() or ())
                                 if not k.startswith((":", "grpc-")) and k not in ("user-agent", "te"))
                remaining = context.time_remaining()
                call = self._channel(backend.grpc).unary_unary(method)(
                    request, metadata=metadata, timeout=remaining if remaining and remaining < 1e6 else 60.0)
                try:
                    response = await call
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                    context.set_trailing_metadata(version)
                    self.router.count(backend.version, code, time.perf_counter() - t0, "grpc")
                    await context.abort(exc.code(), exc.details() or "")
            finally:
                backend.leave()
            backend.served += 1
            await context.send_initial_metadata(version)
            context.set_trailing_metadata(version)
            self.router.count(backend.version, code, time.perf_counter() - t0, "grpc")
            return response

        return forward

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()


async def start_grpc(router, host: str, port: int, token: str | None = None):
    """The gRPC side of the router on `host:port`, in the running event loop."""
    import grpc

    proxy = GrpcProxy(router)
    from . import router_auth

    server = grpc.aio.server(options=GRPC_OPTIONS,
                             interceptors=[router_auth.grpc_interceptor(token)] if token else None)
    server.add_generic_rpc_handlers((proxy,))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port} for gRPC")
    await server.start()
    return server, proxy
