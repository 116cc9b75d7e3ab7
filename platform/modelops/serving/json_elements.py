"""A JSON tensor's elements as an array, strictly (`codec`'s element policy; pure).

`from_json` turns the `data` of a V2 JSON tensor (or v1 `instances`), already parsed by orjson,
into an array of the model input's dtype, or refuses it with an `InvalidRequest` that names the
element: FP* take JSON numbers within the datatype's finite range, INT*/UINT* JSON integers within
theirs, BOOL true/false, BYTES strings.

The common case, numbers only in a body without `true`/`false` (`contains`), goes through
`struct` (`fast_numbers`): packing the parsed Python numbers straight into the dtype's bytes is 2
to 4x quicker than `np.array` of the list (~70 against ~250 µs for a 3x64x64 image) and refuses
exactly what the exact path would refuse (a string, null, a nested list, a float for an integer
type, a value out of range), in which case the exact path says what is wrong. Every V2 numeric
datatype has a `struct` code (FP16 "e" rounds from the double as numpy does).
"""

from __future__ import annotations

import math
import struct
from functools import lru_cache

import numpy as np
import orjson

from ..errors import InvalidRequest
from ..tensors import TensorSpec

_JSON_TYPE = {bool: "a boolean", int: "an integer", float: "a number with a fraction or exponent",
              str: "a string", type(None): "null", list: "a nested list", dict: "an object"}
_ALLOWED = {"f": (int, float), "i": (int,), "u": (int,), "b": (bool,), "O": (str,)}
_TAKES = {"f": "JSON numbers", "i": "JSON integers", "u": "JSON integers", "b": "true/false",
          "O": "strings"}
# dtypes `struct` packs as numpy lays them out ("=": native order, standard sizes)
_STRUCT_CODES = {np.dtype(t): c for t, c in (
    (np.float16, "e"), (np.float32, "f"), (np.float64, "d"), (np.int8, "b"), (np.uint8, "B"), (np.int16, "h"),
    (np.uint16, "H"), (np.int32, "i"), (np.uint32, "I"), (np.int64, "q"), (np.uint64, "Q"))}


def short(value) -> str:
    """A value as JSON (repr when JSON cannot say it), cut short: reasons stay one short line."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def contains(data: bytes, word: bytes, hops: int = 32) -> bool:
    """`word in data`, for a word whose first byte is rare in DATA (`t`, `f` in a JSON body of
    numbers: only in its keys): memchr hops between the few candidates. CPython's substring
    search crawls through number text (~1 byte/ns: 0.35 ms of a 250 kB CNN request); this 7 µs.
    After `hops` candidates (a body full of that byte) the rest goes to the plain search."""
    first = word[:1]
    i = data.find(first)
    for _ in range(hops):
        if i == -1:
            return False
        if data.startswith(word, i):
            return True
        i = data.find(first, i + 1)
    return i != -1 and data.find(word, i) != -1


def flatten(data, where: str) -> list:
    """A JSON tensor's elements in row-major order: a flat list, or nested lists of equal length."""
    if not isinstance(data, list):
        raise InvalidRequest(f"{where}: data must be a list, got {short(data)}")
    if not data or type(data[0]) is not list:
        return data  # flat; a list hiding further on is caught by the element check
    rows = data
    while rows and type(rows[0]) is list:
        width = len(rows[0])
        if any(type(r) is not list or len(r) != width for r in rows):
            raise InvalidRequest(f"{where}: data is a ragged nested list")
        rows = [x for r in rows for x in r]
    return rows


def _bad_element(spec: TensorSpec, flat: list, allowed: tuple) -> InvalidRequest:
    i, value = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
    return InvalidRequest(f"input '{spec.name}': element {i} is {_JSON_TYPE.get(type(value), type(value).__name__)} "
                          f"({short(value)}); {spec.datatype} takes {_TAKES[spec.dtype.kind]}")


def out_of_range(spec: TensorSpec, values) -> InvalidRequest:
    dtype = spec.dtype
    if dtype.kind == "f":
        info = np.finfo(dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
    for i, v in enumerate(values):
        try:
            inside = lo <= v <= hi and not (isinstance(v, float) and math.isinf(v))
        except TypeError:
            inside = False
        if not inside:
            return InvalidRequest(f"input '{spec.name}': element {i} ({short(v)}) is out of the "
                                  f"{spec.datatype} range [{lo:g}, {hi:g}]" if dtype.kind == "f" else
                                  f"input '{spec.name}': element {i} ({short(v)}) is out of the "
                                  f"{spec.datatype} range [{lo}, {hi}]")
    return InvalidRequest(f"input '{spec.name}': a value is out of the {spec.datatype} range")


@lru_cache(maxsize=256)
def _packer(code: str, count: int):
    return struct.Struct(f"={count}{code}").pack


def fast_numbers(spec: TensorSpec, flat: list) -> np.ndarray | None:
    """The common case at C speed: numbers only (the caller knows the body has no booleans).
    None when in doubt; the exact path then accepts the same values or says what is wrong.

    `struct` refuses (struct.error, OverflowError, TypeError) what the exact path refuses: a
    non-number, a float for an integer code, an integer out of its range, a finite double that
    rounds to infinity as FP16/FP32 (orjson never gives inf or NaN: JSON has neither)."""
    code = _STRUCT_CODES.get(spec.dtype)
    if code is None:
        return None
    try:
        packed = _packer(code, len(flat))(*flat)
    except (struct.error, OverflowError, TypeError):
        return None
    return np.frombuffer(packed, dtype=spec.dtype)


def from_json(spec: TensorSpec, shape: tuple, data, where: str, booleans: bool = True) -> np.ndarray:
    """DATA (a JSON tensor's, parsed) as an array of SHAPE and SPEC's dtype, or InvalidRequest.
    BOOLEANS: whether the body may hold true/false (else the fast path may take numbers)."""
    flat = flatten(data, where)
    check_count(spec, shape, len(flat))
    kind = spec.dtype.kind
    if not booleans and kind in "fiu":
        arr = fast_numbers(spec, flat)
        if arr is not None:
            return arr.reshape(shape)
    allowed = _ALLOWED[kind]
    if not set(map(type, flat)).issubset(allowed):
        raise _bad_element(spec, flat, allowed)
    if kind == "O":
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    try:
        with np.errstate(over="ignore"):
            arr = np.array(flat, dtype=spec.dtype)
    except OverflowError:
        raise out_of_range(spec, flat) from None
    if kind == "f" and not np.isfinite(arr).all():
        raise out_of_range(spec, flat)
    return arr.reshape(shape)


def check_count(spec: TensorSpec, shape: tuple, count: int) -> None:
    need = math.prod(shape)
    if count != need:
        raise InvalidRequest(f"input '{spec.name}': shape {list(shape)} needs {need} elements, data has {count}")
