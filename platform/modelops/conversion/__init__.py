"""ONNX conversion with a parity gate: PyTorch, scikit-learn and ONNX passthrough."""

from .options import PRECISIONS, ConversionOptions
from .pipeline import MODEL_FILE, REPORT_FILE, convert_model_dir
from .publish import ConversionResult, convert_and_publish, find_published
from .source import SUPPORTED_FLAVORS

__all__ = [
    "PRECISIONS", "SUPPORTED_FLAVORS", "MODEL_FILE", "REPORT_FILE", "ConversionOptions",
    "ConversionResult", "convert_model_dir", "convert_and_publish", "find_published",
]
