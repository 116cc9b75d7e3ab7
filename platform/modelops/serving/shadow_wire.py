"""The shadow mirror's wire (`shadow`): copies as V2 REST requests to the candidate, its answers
back as arrays, and several queued copies stacked into one call on the batch axis and split back
into their own rows."""

from __future__ import annotations

import numpy as np
import orjson

from ..tensors import NUMPY_TO_V2, V2_TO_NUMPY


# --- the wire: V2 JSON to the candidate, its answer back --------------------------------------------
def encode_request(feeds: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """FEEDS as a V2 REST infer request: numeric tensors in the binary tensor extension (raw
    bytes after the JSON header: no float formatting on either side, NaN and inf carried as
    they are), BYTES as JSON strings; the candidate asked to answer in binary too. No
    `outputs`: the candidate answers all of its outputs, and the comparison looks up the
    stable's by name."""
    entries, blobs = [], []
    for name, arr in feeds.items():
        arr = np.asarray(arr)
        entry = {"name": name, "datatype": NUMPY_TO_V2.get(arr.dtype, "BYTES"), "shape": list(arr.shape)}
        if arr.dtype == object:
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
        else:
            blob = np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        entries.append(entry)
    head = orjson.dumps({"inputs": entries, "parameters": {"binary_data_output": True}})
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
    only, all with one batch axis of the same length, the stable's outputs too (the same names,
    dtypes and other axes: they are stacked for one comparison): text (its outputs may be padded
    to the longest text of a call) and anything else go alone."""
    n = None
    key = []
    for part in (feeds, stable):
        for name, arr in part.items():
            if type(arr) is not np.ndarray or arr.ndim == 0 or (part is feeds and arr.dtype.kind not in "biuf"):
                return None
            if n is None:
                n = arr.shape[0]
            if arr.shape[0] != n:
                return None
            key.append((name, arr.dtype.str, arr.shape[1:]))
        key.append(None)  # feeds | outputs
    if n is None or not feeds:
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


def splits(answer: dict[str, np.ndarray], total: int) -> bool:
    """Whether every output of a stacked call's ANSWER has one row per input row (TOTAL): only
    then can it be told which rows answer which copy."""
    return all(type(v) is np.ndarray and v.ndim > 0 and v.shape[0] == total for v in answer.values())


def split_rows(answer: dict[str, np.ndarray], counts: list[int]) -> list[dict[str, np.ndarray]] | None:
    """A stacked call's answer cut back into each copy's rows; None when an output does not have
    one row per input row (it cannot be told apart)."""
    if not splits(answer, sum(counts)):
        return None
    out, a = [], 0
    for n in counts:
        out.append({k: v[a:a + n] for k, v in answer.items()})
        a += n
    return out


def stack(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Copies' tensors (one stack key) concatenated on the batch axis, in order."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


__all__ = ["decode_answer", "encode_request", "rows", "split_rows", "splits", "stack", "stack_groups"]
