"""Open Inference Protocol v2 request decoding/validation and response encoding (pure).

One validation path for every protocol: the REST JSON body (and its binary tensor extension),
the gRPC `ModelInferRequest` (`codec_grpc`) and KServe v1 `instances` are each checked for their own framing
(JSON types, proto fields), then go through the same checks of names, datatypes, shapes,
elements and requested outputs. Every violation is an `InvalidRequest` whose one-line message
names the field; nothing a client sends reaches onnxruntime unchecked.

Element policy (strict, the same for REST and gRPC; JSON elements: `json_elements`):
- FP16/FP32/FP64 take JSON numbers; a number outside the datatype's finite range (1e39 as
  FP32) is refused, not turned into inf. Typed values (binary extension, gRPC contents) are
  taken bit for bit, NaN and inf included: that is how a client sends a missing value.
- INT*/UINT* take JSON integers within the datatype's range; a number written with a fraction
  or exponent (1.5, 2.0, 1e3) is refused, and so are integers beyond 64 bits (JSON parsers
  read those as floats, so they could never be exact).
- BOOL takes true/false only; BYTES takes strings only (UTF-8 over gRPC and binary).
- Refused everywhere: null, numeric strings ("1.5"), booleans as numbers, numbers as booleans,
  tensors with no elements, unknown or duplicate requested outputs.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import orjson

from ..errors import InvalidRequest
from ..tensors import NUMPY_TO_V2, V2_TO_NUMPY, TensorSpec
from .json_elements import check_count, contains, from_json, short as _short
from .signatures import Signature, resolve

BINARY_HEADER = "inference-header-content-length"

@dataclass
class Decoded:
    """A validated request: the feeds, and what to answer with."""

    feeds: dict[str, np.ndarray]
    outputs: list[str] | None = None  # requested outputs, in order; None: all of them
    binary: frozenset[str] = frozenset()  # REST: outputs to send as binary tensors
    id: str | None = None
    raw: bool = False  # gRPC: the request used raw_input_contents
    kind: str = "tensors"  # the signature it was decoded with: tensors | text | tokens


# --- checks shared by every protocol (also codec_grpc's) --------------------------------------------------------------
def input_spec(by_name: dict, feeds: dict, name, datatype, where: str) -> TensorSpec:
    """The model input a request tensor names, after checking name, uniqueness and datatype."""
    if not isinstance(name, str):
        raise InvalidRequest(f"{where}.name must be a string, got {_short(name)}")
    spec = by_name.get(name)
    if spec is None:
        raise InvalidRequest(f"{where}: unknown input name {name[:64]!r}; model inputs: {sorted(by_name)}")
    if name in feeds:
        raise InvalidRequest(f"input '{name}' given twice")
    if not isinstance(datatype, str):
        raise InvalidRequest(f"input '{name}': datatype must be a string, got {_short(datatype)}")
    if datatype not in V2_TO_NUMPY:
        raise InvalidRequest(f"input '{name}': unknown datatype {datatype[:32]!r}; "
                             f"V2 datatypes: {', '.join(V2_TO_NUMPY)}")
    if datatype != spec.datatype:
        raise InvalidRequest(f"input '{name}': datatype {datatype} does not match the model's {spec.datatype}")
    return spec


def check_shape(spec: TensorSpec, shape) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidRequest(f"input '{spec.name}': shape must be a list of non-negative integers, "
                             f"got {_short(shape)}")
    if len(shape) != len(spec.shape):
        raise InvalidRequest(f"input '{spec.name}': shape {shape} has rank {len(shape)}, "
                             f"model expects rank {len(spec.shape)} {list(spec.shape)}")
    for i, (got, want) in enumerate(zip(shape, spec.shape)):
        if want >= 0 and got != want:
            raise InvalidRequest(f"input '{spec.name}': dimension {i} is {got}, model expects {want} "
                                 f"(shape {list(spec.shape)}, -1 = any)")
    if 0 in shape:
        raise InvalidRequest(f"input '{spec.name}': shape {shape} has no elements")
    return tuple(shape)


def check_complete(specs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> None:
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise InvalidRequest(f"missing model inputs: {missing}")
    batches = {a.shape[0] for a in feeds.values() if a.ndim}
    if len(batches) > 1:
        raise InvalidRequest(f"inputs disagree on the batch size: {sorted(batches)}")


def requested_outputs(names: list, output_names: list[str]) -> list[str]:
    unknown = [n[:64] for n in names if n not in output_names]
    if unknown:
        raise InvalidRequest(f"unknown requested outputs {unknown}; model outputs: {output_names}")
    seen = set()
    for name in names:
        if name in seen:
            raise InvalidRequest(f"output '{name}' requested twice")
        seen.add(name)
    return list(names)


def strings(items, spec: TensorSpec) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    try:
        out[:] = [bytes(b).decode("utf-8") for b in items]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"input '{spec.name}': BYTES element is not UTF-8: {exc.reason}") from None
    return out


def _split_bytes(spec: TensorSpec, raw: memoryview) -> list[memoryview]:
    """The BYTES wire format: each element is a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest(f"input '{spec.name}': truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidRequest(f"input '{spec.name}': BYTES element of {length} bytes overruns the data")
        items.append(raw[offset:offset + length])
        offset += length
    return items


def from_bytes(spec: TensorSpec, shape: tuple, raw: memoryview) -> np.ndarray:
    if spec.dtype.kind == "O":
        items = _split_bytes(spec, raw)
        check_count(spec, shape, len(items))
        return strings(items, spec).reshape(shape)
    need = math.prod(shape) * spec.dtype.itemsize
    if len(raw) != need:
        raise InvalidRequest(f"input '{spec.name}': shape {list(shape)} of {spec.datatype} needs {need} bytes, "
                             f"binary data has {len(raw)}")
    arr = np.frombuffer(raw, dtype=spec.dtype).reshape(shape)
    if spec.dtype.kind == "b" and np.frombuffer(raw, dtype=np.uint8).max() > 1:
        raise InvalidRequest(f"input '{spec.name}': BOOL bytes must be 0 or 1")
    return arr


# --- REST: JSON body, optionally followed by binary tensors -----------------------------------------
def _object(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be an object, got {_short(value)}")
    return value


def _flag(params: dict, key: str, where: str) -> bool:
    value = params.get(key, False)
    if type(value) is not bool:
        raise InvalidRequest(f"{where}.{key} must be true or false, got {_short(value)}")
    return value


def decode_request(body: bytes, specs: list[TensorSpec], output_names: list[str],
                   json_length: int | None = None, signatures: list[Signature] | None = None) -> Decoded:
    """Decode and validate a V2 REST infer request (JSON, or the binary tensor extension);
    SIGNATURES (a text model's): the one its input names choose replaces SPECS, OUTPUT_NAMES."""
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
    # JSON spells booleans only as `true`/`false`: without those bytes, no element can be one.
    booleans = contains(head, b"true") or contains(head, b"false")
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest(f"id must be a string, got {_short(request_id)}")
    params = _object(req.get("parameters"), "parameters")
    binary_all = _flag(params, "binary_data_output", "parameters")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("request needs a non-empty 'inputs' list")
    given = [item.get("name") for item in inputs if isinstance(item, dict)]
    specs, output_names, kind = resolve(signatures, specs, output_names, given)
    by_name = {s.name: s for s in specs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object with name, shape, datatype, data")
        name = item.get("name")
        spec = input_spec(by_name, feeds, name, item.get("datatype"), where)
        shape = check_shape(spec, item.get("shape"))
        item_params = _object(item.get("parameters"), f"{where}.parameters")
        size = item_params.get("binary_data_size")
        if size is not None:
            if binary is None:
                raise InvalidRequest(f"input '{name}' has binary_data_size but the request has no "
                                     f"{BINARY_HEADER} header")
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidRequest(f"input '{name}': binary_data_size {_short(size)} exceeds the binary payload")
            if "data" in item:
                raise InvalidRequest(f"input '{name}' has both 'data' and binary_data_size")
            feeds[name] = from_bytes(spec, shape, binary[offset:offset + size])
            offset += size
        else:
            if "data" not in item:
                raise InvalidRequest(f"input '{name}': no 'data'")
            feeds[name] = from_json(spec, shape, item["data"], f"input '{name}'", booleans)
    if binary is not None and offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} unused bytes after the binary inputs")
    check_complete(specs, feeds)

    wanted = req.get("outputs")
    if wanted is None:
        return Decoded(feeds, None, frozenset(output_names if binary_all else ()), request_id, kind=kind)
    if not isinstance(wanted, list):
        raise InvalidRequest(f"outputs must be a list, got {_short(wanted)}")
    names, binary_out = [], set()
    for i, out in enumerate(wanted):
        if not isinstance(out, dict):
            raise InvalidRequest(f"outputs[{i}] must be an object with a name")
        name = out.get("name")
        if not isinstance(name, str):
            raise InvalidRequest(f"outputs[{i}].name must be a string, got {_short(name)}")
        out_params = _object(out.get("parameters"), f"outputs[{i}].parameters")
        if "binary_data" in out_params:
            if _flag(out_params, "binary_data", f"outputs[{i}].parameters"):
                binary_out.add(name)
        elif binary_all:
            binary_out.add(name)
        names.append(name)
    chosen = requested_outputs(names, output_names) or None
    return Decoded(feeds, chosen, frozenset(binary_out), request_id, kind=kind)


def encode_response(model_name: str, names: list[str], outputs: list[np.ndarray], request_id=None,
                    binary: frozenset[str] = frozenset(), model_version: str | None = None
                    ) -> tuple[bytes, int | None]:
    """Encode outputs as V2 JSON (or JSON header + raw tensors); returns (body, json_length)."""
    entries, blobs = [], []
    for name, arr in zip(names, outputs):
        arr = np.ascontiguousarray(arr)
        entry = {"name": name, "datatype": NUMPY_TO_V2.get(arr.dtype, "BYTES"), "shape": list(arr.shape)}
        if name in binary and arr.dtype != object:
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif arr.dtype == object:  # BYTES: strings
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
        elif arr.dtype == np.float16:  # orjson has no float16: every FP16 value is exact in FP32
            entry["data"] = arr.astype(np.float32).ravel()
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


# --- KServe v1 ----------------------------------------------------------------------------------------
def decode_v1(body, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """KServe v1 `{"instances": [...]}` for single-input models (one row per instance; a text
    model's: one string per instance)."""
    if isinstance(body, (bytes, str)):  # KServe passes non-JSON content types through undecoded
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
        raise InvalidRequest("v1 request needs a non-empty 'instances' list")
    if len(specs) != 1:
        raise InvalidRequest("v1 'instances' works for single-input models; use the v2 protocol")
    spec = specs[0]
    shape, level = [], body["instances"]
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
    shape = check_shape(spec, shape)
    return {spec.name: from_json(spec, shape, body["instances"], "instances")}
