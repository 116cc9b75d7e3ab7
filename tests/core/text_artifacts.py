"""Text-model artifact directories for the serving tests, built here without the converter:
a seeded Hugging Face model (`modelops.demo.text_models`, "tiny") exported with
`torch.onnx.export` (dynamic batch and sequence axes), its fast tokenizer as tokenizer.json and a
`TextConfig` as text.json: the layout `modelops.text` describes. Swappable for the converter's
output later (same directory contract).
"""

from __future__ import annotations

from pathlib import Path

from modelops.text import TOKENIZER_FILE, TextConfig

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _export(module, out: Path, outputs: tuple[str, ...], seq_outputs: tuple[str, ...] = ()) -> None:
    import torch

    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    types = torch.zeros_like(ids)
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUTS}
    for name in outputs:
        axes[name] = {0: "batch", 1: "sequence"} if name in seq_outputs else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(module, (ids, mask, types), str(out / "model.onnx"), input_names=list(INPUTS),
                          output_names=list(outputs), dynamic_axes=axes, opset_version=17, dynamo=False)


def _save_tokenizer(tok, out: Path) -> None:
    backend = getattr(tok, "backend_tokenizer", None) or tok._tokenizer
    backend.save(str(out / TOKENIZER_FILE))


def classifier_dir(out: Path):
    """(dir, pipeline): text-classification; the pipeline is the reference."""
    import torch
    from transformers import pipeline

    from modelops.demo.text_models import build_classifier

    model, tok = build_classifier("tiny")

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    out.mkdir(parents=True, exist_ok=True)
    _export(Logits().eval(), out, ("logits",))
    _save_tokenizer(tok, out)
    TextConfig(task="text-classification", max_length=tok.model_max_length, model_inputs=INPUTS,
               outputs=("logits",), pad_token_id=tok.pad_token_id, vocab_size=len(tok),
               id2label=dict(model.config.id2label), function_to_apply="softmax").save(out)
    return out, pipeline("text-classification", model=model, tokenizer=tok)


def sentence_embedding_dir(out: Path):
    """(dir, SentenceTransformer): pooling and normalisation in the graph (`sentence_embedding`)."""
    import torch

    from modelops.demo.text_models import build_sentence_transformer

    st = build_sentence_transformer("tiny", workdir=out.parent / f"{out.name}-src")

    class Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.st({"input_ids": input_ids, "attention_mask": attention_mask,
                            "token_type_ids": token_type_ids})["sentence_embedding"]

    out.mkdir(parents=True, exist_ok=True)
    _export(Embedding().eval(), out, ("sentence_embedding",))
    tok = st.tokenizer
    _save_tokenizer(tok, out)
    TextConfig(task="sentence-embedding", max_length=st.max_seq_length, model_inputs=INPUTS,
               outputs=("sentence_embedding",), pad_token_id=tok.pad_token_id, vocab_size=len(tok),
               source_flavor="sentence_transformers").save(out)
    return out, st


def feature_extraction_dir(out: Path, st):
    """(dir): the SentenceTransformer's encoder alone (`last_hidden_state`, a sequence axis)."""
    import torch

    encoder = st[0].auto_model

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    out.mkdir(parents=True, exist_ok=True)
    _export(Hidden().eval(), out, ("last_hidden_state",), seq_outputs=("last_hidden_state",))
    tok = st.tokenizer
    _save_tokenizer(tok, out)
    TextConfig(task="feature-extraction", max_length=st.max_seq_length, model_inputs=INPUTS,
               outputs=("last_hidden_state",), pad_token_id=tok.pad_token_id, vocab_size=len(tok)).save(out)
    return out
