"""The predictor's gRPC `ModelInfer`, `ModelMetadata` and `ModelReady`: KServe's servicer with
these three answered by the same checks as REST (`codec_grpc.decode_grpc`, `replies.model_for`).

Errors become status codes, never exceptions for KServe's interceptor to guess at: 400 ->
INVALID_ARGUMENT, 404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, and an
unexpected exception -> INTERNAL with a request id (logged with its traceback).
"""

from __future__ import annotations

import logging
import time
import uuid

import grpc
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer

from ..errors import ModelOpsError
from . import codec_grpc, metrics
from .replies import model_for

log = logging.getLogger("modelops.serving")

STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}


def _fail(context, code: grpc.StatusCode, message: str):
    context.set_code(code)
    context.set_details(message)


class ModelServicer(InferenceServicer):
    def __init__(self, data_plane, model_repository_extension, models: dict):
        super().__init__(data_plane, model_repository_extension)
        self.models = models  # name -> OnnxModel

    def _internal(self, context, method: str, exc: Exception):
        rid = uuid.uuid4().hex
        log.error("internal error (request id %s) in gRPC %s", rid, method, exc_info=exc)
        _fail(context, grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")

    async def ModelInfer(self, request, context):
        t0 = time.perf_counter()
        name, label = request.model_name, ""
        try:
            model = model_for(self.models, name, request.model_version or None)
            label = model.version or ""
            decoded = codec_grpc.decode_grpc(request, model.inputs, model.output_names,
                                             getattr(model, "signatures", None))
            names, outputs = await model.answer(decoded)
            response = codec_grpc.encode_grpc(pb, name, names, outputs, decoded.id, decoded.raw, model.version)
        except ModelOpsError as exc:
            metrics.REQUESTS.labels(name, label, "grpc", str(exc.http_status)).inc()
            _fail(context, STATUS.get(exc.http_status, grpc.StatusCode.INTERNAL), str(exc))
            return pb.ModelInferResponse()
        except Exception as exc:
            metrics.REQUESTS.labels(name, label, "grpc", "500").inc()
            self._internal(context, "ModelInfer", exc)
            return pb.ModelInferResponse()
        count, latency = metrics.answered(name, label, "grpc")
        count.inc()
        latency.observe(time.perf_counter() - t0)
        mirror = getattr(model, "mirror", None)
        if mirror is not None:  # shadow: a copy of the decided answer (queued, not sent here)
            mirror.offer(decoded.feeds, names, outputs)
        return response

    async def ModelMetadata(self, request, context):
        try:
            doc = model_for(self.models, request.name, request.version or None).metadata()
        except ModelOpsError as exc:
            _fail(context, STATUS.get(exc.http_status, grpc.StatusCode.INTERNAL), str(exc))
            return pb.ModelMetadataResponse()
        except Exception as exc:
            self._internal(context, "ModelMetadata", exc)
            return pb.ModelMetadataResponse()
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=doc["name"], versions=doc["versions"], platform=doc["platform"],
            inputs=[tensor(**t) for t in doc["inputs"]], outputs=[tensor(**t) for t in doc["outputs"]])

    async def ModelReady(self, request, context):
        model = self.models.get(request.name)
        if model is None or (request.version and request.version != model.version):
            try:
                model_for(self.models, request.name, request.version or None)
            except ModelOpsError as exc:
                _fail(context, grpc.StatusCode.NOT_FOUND, str(exc))
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=bool(model.ready))
