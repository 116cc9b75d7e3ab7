"""ONNX conversion with a parity gate: PyTorch, scikit-learn and ONNX passthrough.

The options and the published-result look-up (`ConversionOptions`, `find_published`) import
neither onnx nor onnxruntime: the operator reads published conversions in job mode without them
(tens of MiB of RSS). The converter itself (`convert_model_dir`, `convert_and_publish`'s work)
is imported on first use.
"""

from __future__ import annotations

import importlib

from .options import PRECISIONS, ConversionOptions
from .publish import ConversionResult, convert_and_publish, find_published

_LAZY = {"MODEL_FILE": ".pipeline", "REPORT_FILE": ".pipeline", "convert_model_dir": ".pipeline",
         "SUPPORTED_FLAVORS": ".source"}

__all__ = [
    "PRECISIONS", "SUPPORTED_FLAVORS", "MODEL_FILE", "REPORT_FILE", "ConversionOptions",
    "ConversionResult", "convert_model_dir", "convert_and_publish", "find_published",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
