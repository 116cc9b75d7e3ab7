"""Text models: what a converted Hugging Face model carries beside `model.onnx`, and the one
tokenize / answer path that the predictor serves and the parity gate checks.

An artifact directory of a text model holds:
  model.onnx      the graph: int64 inputs named in `TextConfig.model_inputs`, [batch, sequence]
  tokenizer.json  the model's fast tokenizer (Hugging Face `tokenizers`, Rust; no torch needed)
  text.json       `TextConfig`: task, max length, label map, how scores are made

Pure and light: numpy and `tokenizers` only (the predictor image has no torch, no transformers).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

TEXT_CONFIG_FILE = "text.json"
TOKENIZER_FILE = "tokenizer.json"
TASKS = ("text-classification", "feature-extraction", "sentence-embedding")
TEXT_INPUT = "text"  # the BYTES input a text model takes over every protocol


@dataclass(frozen=True)
class TextConfig:
    task: str
    max_length: int  # texts are truncated to this many tokens (special tokens included)
    model_inputs: tuple[str, ...]  # graph inputs fed from the tokenizer, in graph order
    outputs: tuple[str, ...]  # graph outputs, in graph order
    pad_token_id: int = 0
    vocab_size: int = 0
    id2label: dict[int, str] = field(default_factory=dict)  # text-classification only
    function_to_apply: str = "none"  # softmax | sigmoid | none (the pipeline's rule)
    source_flavor: str = "transformers"  # or sentence_transformers

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown text task {self.task!r}; supported: {', '.join(TASKS)}")
        if self.function_to_apply not in ("softmax", "sigmoid", "none"):
            raise ValueError(f"unknown function_to_apply {self.function_to_apply!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["model_inputs"], d["outputs"] = list(self.model_inputs), list(self.outputs)
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return d

    @classmethod
    def from_json(cls, doc: dict) -> "TextConfig":
        doc = dict(doc)
        doc["model_inputs"] = tuple(doc["model_inputs"])
        doc["outputs"] = tuple(doc["outputs"])
        doc["id2label"] = {int(k): str(v) for k, v in (doc.get("id2label") or {}).items()}
        return cls(**doc)

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / TEXT_CONFIG_FILE
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> "TextConfig | None":
        path = Path(model_dir) / TEXT_CONFIG_FILE
        if not path.is_file():
            return None
        return cls.from_json(json.loads(path.read_text()))


def answer_specs(config: TextConfig, graph_outputs: list):
    """What a text model answers (TensorSpecs), from its graph's outputs (TensorSpecs): the
    classification outputs of `TextFrontend.answer`, or the graph's own outputs."""
    from .tensors import TensorSpec

    if config.task != "text-classification":
        return list(graph_outputs)
    classes = graph_outputs[0].shape[-1] if graph_outputs[0].shape else -1
    f32 = np.dtype(np.float32)
    return [TensorSpec("label", np.dtype(object), (-1,)), TensorSpec("score", f32, (-1,)),
            TensorSpec("scores", f32, (-1, classes)), TensorSpec("logits", f32, (-1, classes))]


def text_input_spec():
    from .tensors import TensorSpec

    return TensorSpec(TEXT_INPUT, np.dtype(object), (-1,))


def is_text_model(model_dir: str | Path) -> bool:
    return Path(model_dir).is_dir() and (Path(model_dir) / TEXT_CONFIG_FILE).is_file()


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class TextFrontend:
    """Tokenize texts for the graph and turn its outputs into what the pipeline answers."""

    def __init__(self, model_dir: str | Path, config: TextConfig | None = None):
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        self.config = config or TextConfig.load(self.model_dir)
        if self.config is None:
            raise FileNotFoundError(f"no {TEXT_CONFIG_FILE} in {self.model_dir}")
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.config.max_length)

    def encode_one(self, text: str) -> dict[str, np.ndarray]:
        """One text, unpadded: each model input as int64 [1, tokens]."""
        enc = self.tokenizer.encode(text)
        return self._feeds([enc.ids], [enc.attention_mask], [enc.type_ids])

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Texts padded (right, with the pad id) to the longest of them: int64 [n, longest]."""
        encs = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encs)
        pad = self.config.pad_token_id
        ids = [e.ids + [pad] * (width - len(e.ids)) for e in encs]
        mask = [e.attention_mask + [0] * (width - len(e.ids)) for e in encs]
        types = [e.type_ids + [0] * (width - len(e.ids)) for e in encs]
        return self._feeds(ids, mask, types)

    def _feeds(self, ids, mask, types) -> dict[str, np.ndarray]:
        table = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: np.asarray(table[name], dtype=np.int64) for name in self.config.model_inputs}

    def answer(self, outputs: list[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
        """Graph outputs -> (names, arrays) the predictor answers. Classification: `label`
        (BYTES, the top class from id2label), `score` (its probability), `scores` (all classes,
        in id order) and `logits`; other tasks: the graph's outputs as they are."""
        cfg = self.config
        if cfg.task != "text-classification":
            return list(cfg.outputs), outputs
        logits = np.asarray(outputs[0], dtype=np.float32)
        if cfg.function_to_apply == "softmax":
            scores = softmax(logits)
        elif cfg.function_to_apply == "sigmoid":
            scores = sigmoid(logits)
        else:
            scores = logits
        top = scores.argmax(axis=-1)
        labels = np.empty(len(top), dtype=object)
        labels[:] = [cfg.id2label.get(int(i), f"LABEL_{int(i)}") for i in top]
        score = np.take_along_axis(scores, top[:, None], axis=-1)[:, 0].astype(np.float32)
        return ["label", "score", "scores", "logits"], [labels, score, scores.astype(np.float32), logits]
