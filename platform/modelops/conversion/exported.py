"""What every exporter returns: the ONNX file it wrote and a way to run the original model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..tensors import TensorSpec
from ..text import TextConfig

# Runs the original model on named inputs; returns outputs in the ONNX graph's output order.
Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
# Text models: runs the original (HF pipeline, SentenceTransformer.encode) on texts; one array per
# text, what TextFrontend.answer serves for it: classification `scores` (all classes, id order),
# embeddings the vector, feature-extraction the [tokens, hidden] states.
TextReference = Callable[[list[str]], list[np.ndarray]]


@dataclass
class Exported:
    reference: Reference
    inputs: list[TensorSpec]
    # Dynamic axes of the exported graph, per input and output name: {axis: "batch" | "sequence" | "dim_<i>"}
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # Files served beside model.onnx (name -> where the exporter wrote it), e.g. tokenizer.json, text.json
    extra_files: dict[str, Path] = field(default_factory=dict)
    text: TextConfig | None = None  # set for text models: the parity gate then runs on texts
    text_reference: TextReference | None = None
    # Largest size per dynamic axis name the model takes, when it says (e.g. {"sequence": 512}).
    max_sizes: dict[str, int] = field(default_factory=dict)
    # Vocabulary size per integer input, when known: parity samples ids in [0, vocab).
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    # The input example as the graph takes it (names, dtypes), when the exporter corrected it.
    example: dict[str, np.ndarray] | None = None
    # BERT-class text models: what onnxruntime's transformer optimizer needs (conversion.fusion):
    # {"model_type": "bert", "hf_model_type", "num_heads", "hidden_size"}; None for other models.
    transformer: dict | None = None

    def release(self) -> None:
        """Drop the original model (held by the references) once its outputs are computed: a
        large model is then not resident beside its ONNX graph."""
        self.reference = None
        self.text_reference = None
