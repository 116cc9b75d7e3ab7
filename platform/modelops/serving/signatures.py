"""The ways in to a served model: an ordinary model has one, a text model two (see `Signature`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest
from ..tensors import TensorSpec


@dataclass(frozen=True)
class Signature:
    """One way to call a model: its V2 inputs and the outputs it answers. An ordinary model has
    one (`tensors`); a text model two: `text` (one BYTES input, the default) and `tokens` (the
    graph's int64 token tensors, for clients that tokenize themselves, answered with the graph's
    outputs). The input names a request uses choose it (`choose`); every check after that is
    the same."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    kind: str = "tensors"


def choose(signatures, names) -> Signature:
    """The signature a request means: the first that has one of the input NAMES (else the first,
    whose checks then name what is wrong)."""
    if len(signatures) > 1:
        for sig in signatures:
            known = {s.name for s in sig.inputs}
            if any(isinstance(n, str) and n in known for n in names):
                return sig
    return signatures[0]


def resolve(signatures, specs: list[TensorSpec], output_names: list[str], names) -> tuple[list, list, str]:
    """(input specs, output names, kind) a request with input NAMES is checked against: those of
    the signature it chooses, or SPECS and OUTPUT_NAMES when the model has no SIGNATURES."""
    if not signatures:
        return specs, output_names, "tensors"
    sig = choose(signatures, names)
    return list(sig.inputs), list(sig.outputs), sig.kind


def check_tokens(feeds: dict[str, np.ndarray], vocab_size: int = 0) -> None:
    """Token tensors (a text model's `tokens` signature): one shape for all, ids in the vocabulary."""
    (first, shape), *rest = [(n, a.shape) for n, a in feeds.items()]
    for name, other in rest:
        if other != shape:
            raise InvalidRequest(f"input '{name}': shape {list(other)} differs from '{first}' {list(shape)}")
    ids = feeds.get("input_ids")
    if ids is not None and vocab_size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise InvalidRequest(f"input 'input_ids': token ids must be in [0, {vocab_size - 1}]")
