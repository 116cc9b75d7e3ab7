"""The shadow mirror's wire (`shadow`): copies as V2 REST requests to the candidate, its answers
back as arrays, and several queued copies stacked into one call on the batch axis and split back
into their own rows."""

from __future__ import annotations

import numpy as np
import orjson

from ..tensors import NUMPY_TO_V2, V2_TO_NUMPY


# --- the wire: V2 JSON to the candidate, its answer back --------------------------------------------
def encode_request(feeds: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """FEEDS as a V2 REST infer request (JSON; a float tensor with NaN or inf, which JSON cannot
    carry, goes in the binary tensor extension). No `outputs`: the candidate answers all of its
    outputs, and the comparison looks up the stable's by name."""
    entries, blobs = [], []
    for name, arr in feeds.items():
        arr = np.asarray(arr)
        entry = {"name": name, "datatype": NUMPY_TO_V2.get(arr.dtype, "BYTES"), "shape": list(arr.shape)}
        if arr.dtype == object:
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
        elif arr.dtype.kind == "f" and not np.isfinite(arr).all():
            blob = np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif arr.dtype == np.float16:
            entry["data"] = arr.astype(np.float32).ravel()
        else:
            entry["data"] = np.ascontiguousarray(arr).ravel()
        entries.append(entry)
    head = orjson.dumps({"inputs": entries}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    "inference-header-content-length": str(len(head))}


def decode_answer(body: bytes, headers=None) -> dict[str, np.ndarray]:
    """A V2 infer response (JSON, or JSON + binary tensors) as name -> array; ValueError saying
    what is wrong when it is not one."""
    head_len = (headers or {}).get("inference-header-content-length")
    head, raw = (body, b"") if head_len is None else (body[:int(head_len)], memoryview(body)[int(head_len):])
    try:
        doc = orjson.loads(head)
        outputs, offset, out = doc["outputs"], 0, {}
        for o in outputs:
            dtype, shape = V2_TO_NUMPY[o["datatype"]], [int(d) for d in o["shape"]]
            size = (o.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                arr = np.frombuffer(raw[offset:offset + size], dtype=dtype)
                offset += size
            elif dtype == object:
                arr = np.empty(len(o["data"]), dtype=object)
                arr[:] = o["data"]
            else:
                arr = np.asarray(o["data"], dtype=dtype)
            out[str(o["name"])] = arr.reshape(shape)
        return out
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a V2 infer response ({type(exc).__name__}: {str(exc)[:200]})") from None


# --- stacking copies: one call to the candidate for several ------------------------------------------
def rows(feeds: dict[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _stack_key(feeds: dict[str, np.ndarray], stable: dict[str, np.ndarray]):
    """What copies must share to go in one call (None: this one goes alone). Numeric tensors
    only, all with one batch axis of the same length, the stable's outputs too: text (its
    outputs may be padded to the longest text of a call) and anything else go alone."""
    n = None
    key = []
    for name, arr in feeds.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf" or arr.ndim == 0:
            return None
        if n is None:
            n = arr.shape[0]
        if arr.shape[0] != n:
            return None
        key.append((name, arr.dtype.str, arr.shape[1:]))
    if n is None or any(np.ndim(v) == 0 or np.shape(v)[0] != n for v in stable.values()):
        return None
    return tuple(key)


def stack_groups(copies: list[tuple[dict, dict]]) -> list[list[tuple[dict, dict]]]:
    """COPIES in calls: those with one stack key together (in queue order), the others alone."""
    groups: dict = {}
    alone = []
    for copy in copies:
        key = _stack_key(*copy)
        if key is None:
            alone.append([copy])
        else:
            groups.setdefault(key, []).append(copy)
    return list(groups.values()) + alone


def split_rows(answer: dict[str, np.ndarray], counts: list[int]) -> list[dict[str, np.ndarray]] | None:
    """A stacked call's answer cut back into each copy's rows; None when an output does not have
    one row per input row (it cannot be told apart)."""
    total = sum(counts)
    if any(np.ndim(v) == 0 or np.shape(v)[0] != total for v in answer.values()):
        return None
    bounds = np.cumsum([0, *counts])
    return [{k: v[a:b] for k, v in answer.items()} for a, b in zip(bounds[:-1], bounds[1:])]


__all__ = ["decode_answer", "encode_request", "rows", "split_rows", "stack_groups"]
