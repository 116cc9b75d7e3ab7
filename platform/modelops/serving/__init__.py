"""The ModelOps predictor: a KServe custom runtime around onnxruntime."""
