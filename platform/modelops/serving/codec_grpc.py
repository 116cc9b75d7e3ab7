"""Open Inference Protocol v2 over gRPC: `ModelInferRequest` decoding with the same checks as
REST (`codec`'s names, datatypes, shapes, elements and outputs), and `ModelInferResponse` encoding."""

from __future__ import annotations

import struct

import numpy as np

from ..errors import InvalidRequest
from ..tensors import NUMPY_TO_V2, TensorSpec
from .codec import Decoded, check_complete, check_shape, from_bytes, input_spec, requested_outputs, strings
from .json_elements import check_count, out_of_range
from .signatures import Signature, resolve

# --- gRPC: ModelInferRequest -------------------------------------------------------------------------
# The InferTensorContents field that carries each datatype (FP16 has none: raw contents only).
GRPC_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_GRPC_WIRE = {"int_contents": np.int32, "int64_contents": np.int64, "uint_contents": np.uint32,
              "uint64_contents": np.uint64, "fp32_contents": np.float32, "fp64_contents": np.float64,
              "bool_contents": np.bool_}


def _from_contents(spec: TensorSpec, shape: tuple, contents) -> np.ndarray:
    field = GRPC_CONTENTS.get(spec.datatype)
    if field is None:
        raise InvalidRequest(f"input '{spec.name}': {spec.datatype} data must be sent in raw_input_contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidRequest(f"input '{spec.name}': {spec.datatype} data goes in contents.{field}, "
                             f"got {', '.join(others)}")
    values = getattr(contents, field)
    check_count(spec, shape, len(values))
    if spec.dtype.kind == "O":
        return strings(values, spec).reshape(shape)
    wire = np.array(values, dtype=_GRPC_WIRE[field])
    if wire.dtype != spec.dtype:  # INT8/16 in int32, UINT8/16 in uint32: check the range
        info = np.iinfo(spec.dtype)
        if wire.min() < info.min or wire.max() > info.max:
            raise out_of_range(spec, wire.tolist())
        wire = wire.astype(spec.dtype)
    return wire.reshape(shape)


def decode_grpc(request, specs: list[TensorSpec], output_names: list[str],
                signatures: list[Signature] | None = None) -> Decoded:
    """Decode and validate a gRPC `ModelInferRequest` with the REST path's checks (BYTES: UTF-8
    strings in contents.bytes_contents, or length-prefixed in raw_input_contents)."""
    if not request.inputs:
        raise InvalidRequest("request needs a non-empty 'inputs' list")
    specs, output_names, kind = resolve(signatures, specs, output_names, [item.name for item in request.inputs])
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents")
    by_name = {s.name: s for s in specs}
    feeds: dict[str, np.ndarray] = {}
    for i, item in enumerate(request.inputs):
        spec = input_spec(by_name, feeds, item.name, item.datatype, f"inputs[{i}]")
        shape = check_shape(spec, list(item.shape))
        if raw:
            if item.HasField("contents"):
                raise InvalidRequest(f"input '{item.name}' has both contents and raw_input_contents")
            feeds[item.name] = from_bytes(spec, shape, memoryview(raw[i]))
        else:
            feeds[item.name] = _from_contents(spec, shape, item.contents)
    check_complete(specs, feeds)
    names = [o.name for o in request.outputs]
    return Decoded(feeds, requested_outputs(names, output_names) or None, frozenset(),
                   request.id or None, raw=bool(raw), kind=kind)



def encode_grpc(pb, model_name: str, names: list[str], outputs: list[np.ndarray], request_id: str | None,
                raw: bool, model_version: str | None):
    """A `ModelInferResponse` (pb: KServe's generated module): raw contents when the request
    used them (or an output has no typed field, FP16), typed contents otherwise."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version or "",
                                     id=request_id or "")
    raw = raw or any(a.dtype == np.float16 for a in outputs)
    for name, arr in zip(names, outputs):
        datatype = NUMPY_TO_V2.get(arr.dtype, "BYTES")
        out = response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if datatype == "BYTES":
            items = [v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel()]
            if raw:
                response.raw_output_contents.append(
                    b"".join(struct.pack("<I", len(v)) + v for v in items))
            else:
                out.contents.bytes_contents.extend(items)
        elif raw:
            response.raw_output_contents.append(np.ascontiguousarray(arr).tobytes())
        else:
            getattr(out.contents, GRPC_CONTENTS[datatype]).extend(arr.ravel().tolist())
    return response
