"""What every exporter returns: the ONNX file it wrote and a way to run the original model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..tensors import TensorSpec

# Runs the original model on named inputs; returns outputs in the ONNX graph's output order.
Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Exported:
    reference: Reference
    inputs: list[TensorSpec]
    # Dynamic axes of the exported graph, per input and output name: {axis: "batch" | "sequence" | "dim_<i>"}
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # Largest size per dynamic axis name the model takes, when it says (e.g. {"sequence": 512}).
    max_sizes: dict[str, int] = field(default_factory=dict)
    # Vocabulary size per integer input, when known: parity samples ids in [0, vocab).
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    # The input example as the graph takes it (names, dtypes), when the exporter corrected it.
    example: dict[str, np.ndarray] | None = None
