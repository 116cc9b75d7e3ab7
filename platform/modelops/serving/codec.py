"""Open Inference Protocol v2 request decoding/validation and response encoding (pure).

Every malformed request becomes `InvalidRequest` with a reason a client can act on. Supports
the JSON form and the binary tensor extension (`Inference-Header-Content-Length`).
"""

from __future__ import annotations

import math

import numpy as np
import orjson

from ..errors import InvalidRequest
from ..tensors import NUMPY_TO_V2, V2_TO_NUMPY, TensorSpec

BINARY_HEADER = "inference-header-content-length"


def _check_shape(spec: TensorSpec, shape: list) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InvalidRequest(f"input '{spec.name}': shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) != len(spec.shape):
        raise InvalidRequest(f"input '{spec.name}': shape {shape} has rank {len(shape)}, "
                             f"model expects rank {len(spec.shape)} {list(spec.shape)}")
    for i, (got, want) in enumerate(zip(shape, spec.shape)):
        if want >= 0 and got != want:
            raise InvalidRequest(f"input '{spec.name}': dimension {i} is {got}, model expects {want} "
                                 f"(shape {list(spec.shape)}, -1 = any)")
    return tuple(shape)


def _input_spec(by_name: dict, feeds: dict, name, datatype, where: str = "") -> TensorSpec:
    """The model input a request tensor names, after checking name, uniqueness and datatype."""
    spec = by_name.get(name)
    if spec is None:
        raise InvalidRequest(f"{where}unknown input name {name!r}; model inputs: {sorted(by_name)}")
    if name in feeds:
        raise InvalidRequest(f"input '{name}' given twice")
    if datatype not in V2_TO_NUMPY:
        raise InvalidRequest(f"input '{name}': unknown datatype {datatype!r}")
    if datatype != spec.datatype:
        raise InvalidRequest(f"input '{name}': datatype {datatype} does not match the model's {spec.datatype}")
    return spec


def _check_complete(specs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> None:
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise InvalidRequest(f"missing model inputs: {missing}")
    batches = {a.shape[0] for a in feeds.values() if a.ndim}
    if len(batches) > 1:
        raise InvalidRequest(f"inputs disagree on the batch size: {sorted(batches)}")


def _from_json_data(spec: TensorSpec, shape: tuple, data) -> np.ndarray:
    count = math.prod(shape)
    dtype = spec.dtype
    try:
        arr = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(f"input '{spec.name}': data is not a valid {spec.datatype} tensor: {exc}") from None
    if arr.size != count:
        raise InvalidRequest(f"input '{spec.name}': shape {list(shape)} needs {count} elements, "
                             f"data has {arr.size}")
    return arr.reshape(shape)


def _from_bytes(spec: TensorSpec, shape: tuple, raw: memoryview) -> np.ndarray:
    need = math.prod(shape) * spec.dtype.itemsize
    if len(raw) != need:
        raise InvalidRequest(f"input '{spec.name}': shape {list(shape)} of {spec.datatype} needs {need} bytes, "
                             f"binary data has {len(raw)}")
    return np.frombuffer(raw, dtype=spec.dtype).reshape(shape)


def decode_request(body: bytes, specs: list[TensorSpec], json_length: int | None = None) -> tuple[dict, dict]:
    """Decode a V2 infer request into named numpy arrays, checked against the model's inputs.

    Returns (feeds, header) where header is the parsed JSON object (id, outputs, parameters).
    """
    if json_length is not None:
        if not 0 < json_length <= len(body):
            raise InvalidRequest(f"{BINARY_HEADER} is {json_length}, body has {len(body)} bytes")
        head, binary = body[:json_length], memoryview(body)[json_length:]
    else:
        head, binary = body, None
    try:
        req = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise InvalidRequest("request body must be a JSON object with an 'inputs' list")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("request needs a non-empty 'inputs' list")
    by_name = {s.name: s for s in specs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise InvalidRequest(f"inputs[{i}] must be an object with name, shape, datatype, data")
        name = item.get("name")
        spec = _input_spec(by_name, feeds, name, item.get("datatype"), where=f"inputs[{i}]: ")
        shape = _check_shape(spec, item.get("shape"))
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if binary is None:
                raise InvalidRequest(f"input '{name}' has binary_data_size but the request has no "
                                     f"{BINARY_HEADER} header")
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidRequest(f"input '{name}': binary_data_size {size!r} exceeds the binary payload")
            feeds[name] = _from_bytes(spec, shape, binary[offset:offset + size])
            offset += size
        else:
            if "data" not in item:
                raise InvalidRequest(f"input '{name}': no 'data'")
            feeds[name] = _from_json_data(spec, shape, item["data"])
    if binary is not None and offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} unused bytes after the binary inputs")
    _check_complete(specs, feeds)
    return feeds, req


def wants_binary(header: dict) -> bool:
    params = header.get("parameters") or {}
    if params.get("binary_data_output"):
        return True
    return any((o.get("parameters") or {}).get("binary_data") for o in header.get("outputs") or []
               if isinstance(o, dict))


def encode_response(model_name: str, names: list[str], outputs: list[np.ndarray], request_id=None,
                    binary: bool = False, model_version: str | None = None) -> tuple[bytes, int | None]:
    """Encode outputs as V2 JSON (or JSON header + raw tensors); returns (body, json_length)."""
    entries, blobs = [], []
    for name, arr in zip(names, outputs):
        arr = np.ascontiguousarray(arr)
        entry = {"name": name, "datatype": NUMPY_TO_V2.get(arr.dtype, "BYTES"), "shape": list(arr.shape)}
        if binary and arr.dtype != object:
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel()  # orjson serializes numpy arrays natively
        entries.append(entry)
    doc = {"model_name": model_name, "outputs": entries}
    if model_version:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def decode_infer_request(request, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The same checks for a `kserve.InferRequest` (gRPC, and KServe's own REST decoding)."""
    by_name = {s.name: s for s in specs}
    feeds: dict[str, np.ndarray] = {}
    for item in request.inputs:
        spec = _input_spec(by_name, feeds, item.name, item.datatype)
        shape = _check_shape(spec, [int(d) for d in item.shape])
        try:
            data = item.as_numpy()
        except Exception as exc:
            raise InvalidRequest(f"input '{item.name}': data is not a valid {spec.datatype} tensor: {exc}") from None
        feeds[item.name] = _from_json_data(spec, shape, data)
    _check_complete(specs, feeds)
    return feeds


def decode_v1(body: dict, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """KServe v1 `{"instances": [...]}` for single-input models (one row per instance)."""
    if isinstance(body, (bytes, str)):  # KServe passes non-JSON content types through undecoded
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise InvalidRequest("v1 request needs an 'instances' list")
    if len(specs) != 1:
        raise InvalidRequest("v1 'instances' works for single-input models; use the v2 protocol")
    spec = specs[0]
    try:
        arr = np.asarray(body["instances"], dtype=spec.dtype)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"instances are not a valid {spec.datatype} tensor: {exc}") from None
    _check_shape(spec, list(arr.shape))
    return {spec.name: arr}
