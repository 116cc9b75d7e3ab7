"""ModelOps: ship MLflow models to (GPU) serving as validated ONNX behind a KServe predictor."""

__version__ = "0.1.0"
