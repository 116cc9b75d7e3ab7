"""A text model behind the predictor: what `OnnxModel` serves when its directory has text.json.

The V2 face is one BYTES input, `text` [-1] (`modelops.text.TEXT_INPUT`), answered with
`TextFrontend.answer`'s outputs (classification: label, score, scores, logits; embeddings: the
graph's sentence_embedding or last_hidden_state). The graph's own int64 token tensors stay
callable for clients that tokenize themselves (a request naming them gets the graph's outputs):
two `signatures.Signature`s, the request's input names choose, one validation path.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidOnnxModel
from ..tensors import TensorSpec
from ..text import TextFrontend, answer_specs, text_input_spec
from .batching import SequenceAxes
from .signatures import Signature

EMBEDDING_TASKS = ("sentence-embedding", "feature-extraction")


class TextServing:
    def __init__(self, model_dir, graph_inputs: list, graph_outputs: list):
        """GRAPH_INPUTS / GRAPH_OUTPUTS: onnxruntime's node args (their symbolic dims name the
        sequence axis)."""
        self.frontend = TextFrontend(model_dir)
        self.config = cfg = self.frontend.config
        self.graph_inputs = [TensorSpec.from_ort(i) for i in graph_inputs]
        self.graph_outputs = [TensorSpec.from_ort(o) for o in graph_outputs]
        names = [s.name for s in self.graph_inputs]
        if sorted(names) != sorted(cfg.model_inputs):
            raise InvalidOnnxModel(f"text.json names the inputs {list(cfg.model_inputs)}, the graph has {names}")
        seq_dim = graph_inputs[0].shape[1] if len(graph_inputs[0].shape) > 1 else None
        seq_outputs = frozenset(
            i for i, o in enumerate(graph_outputs)
            if len(o.shape) > 2 and ((isinstance(seq_dim, str) and o.shape[1] == seq_dim)
                                     or o.name == "last_hidden_state"))
        self.sequence = SequenceAxes({n: cfg.pad_token_id if n == "input_ids" else 0 for n in names}, seq_outputs)
        self.outputs = self._answer_specs()
        text_sig = Signature((text_input_spec(),),
                             tuple(s.name for s in self.outputs), "text")
        token_sig = Signature(tuple(self.graph_inputs), tuple(s.name for s in self.graph_outputs), "tokens")
        self.signatures = [text_sig, token_sig]

    def _answer_specs(self) -> list[TensorSpec]:
        return answer_specs(self.config, self.graph_outputs)

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.signatures[0].inputs)

    def tokenize(self, texts) -> dict[str, np.ndarray]:
        """The texts of one request, padded to its longest (the batcher pads across requests)."""
        return self.frontend.encode([str(t) for t in texts])

    @staticmethod
    def tokens(feeds: dict[str, np.ndarray]) -> int:
        """Real tokens (special tokens included, padding not)."""
        mask = feeds.get("attention_mask")
        return int(mask.sum()) if mask is not None else int(feeds["input_ids"].size)

    def answer(self, outputs: list[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
        return self.frontend.answer(outputs)

    def v1_predictions(self, names: list[str], arrays: list[np.ndarray], feeds: dict) -> list:
        """What the Hugging Face pipeline answers, one per text: classification [{label, score}],
        sentence-embedding a vector, feature-extraction each token's vector (its own tokens)."""
        out = dict(zip(names, arrays))
        if self.config.task == "text-classification":
            return [{"label": str(lbl), "score": float(s)} for lbl, s in zip(out["label"], out["score"])]
        if self.config.task == "sentence-embedding":
            return np.asarray(out.get("sentence_embedding", arrays[0]), np.float32).tolist()
        hidden = np.asarray(out.get("last_hidden_state", arrays[0]), np.float32)
        lengths = feeds["attention_mask"].sum(axis=1) if "attention_mask" in feeds else [hidden.shape[1]] * len(hidden)
        return [h[:int(n)].tolist() for h, n in zip(hidden, lengths)]

    def embeddings(self, names: list[str], outputs: list[np.ndarray], feeds: dict) -> np.ndarray:
        """One vector per text. sentence-embedding: the graph's `sentence_embedding` (pooling and
        normalisation are in the graph). feature-extraction: `last_hidden_state` mean-pooled over
        the attention mask (sum of the real tokens' vectors / their count, not normalised), as
        KServe's Hugging Face runtime makes embeddings of an encoder."""
        out = dict(zip(names, outputs))
        if self.config.task == "sentence-embedding":
            return np.asarray(out.get("sentence_embedding", outputs[0]), np.float32)
        hidden = np.asarray(out.get("last_hidden_state", outputs[0]), np.float32)
        mask = feeds["attention_mask"][:, :hidden.shape[1], None].astype(np.float32)
        return (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
