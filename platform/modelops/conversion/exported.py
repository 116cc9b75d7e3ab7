"""What every exporter returns: the ONNX file it wrote and a way to run the original model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..tensors import TensorSpec

# Runs the original model on named inputs; returns outputs in the ONNX graph's output order.
Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Exported:
    reference: Reference
    inputs: list[TensorSpec]
