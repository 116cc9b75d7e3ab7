"""Tensor specs shared by conversion (MLflow signatures) and serving (V2 protocol datatypes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Open Inference Protocol v2 datatype names <-> numpy dtypes.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}

# onnxruntime's type strings ("tensor(float)") -> numpy.
ORT_TO_NUMPY: dict[str, np.dtype] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8), "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32), "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8), "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32), "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16), "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64), "tensor(string)": np.dtype(object),
}


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor; -1 marks a dynamic dimension (the batch axis is dim 0)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return NUMPY_TO_V2[np.dtype(self.dtype)]

    def to_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_ort(cls, node) -> "TensorSpec":
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
        return cls(node.name, ORT_TO_NUMPY[node.type], shape)
