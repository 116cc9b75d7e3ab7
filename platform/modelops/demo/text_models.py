"""Seeded Hugging Face models built here (nothing downloaded): a WordPiece vocabulary we write,
`BertConfig` with seeded weights; a text classifier whose head is trained for a few steps on
seeded synthetic labels (so its predictions vary), and a SentenceTransformer (mean pooling,
normalised). Used by the tests, `modelops demo --text` and `scripts/bench_transformers.py`.
Needs the `transformers` extra (torch, transformers, sentence-transformers).
"""

from __future__ import annotations

from pathlib import Path

from ..words import NEGATIVE, POSITIVE, WORDS, seeded_texts

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LABELS = ("negative", "neutral", "positive")
PIP_REQUIREMENTS = ["torch==2.13.0", "transformers", "tokenizers"]

# layers, hidden, heads, intermediate, max positions
SHAPES = {
    "tiny": (2, 32, 2, 64, 64),
    "minilm": (6, 384, 12, 1536, 512),
    "bert-base": (12, 768, 12, 3072, 512),
    "large-2g": (11, 2048, 16, 8192, 512),  # ~2.2 GB fp32: over protobuf's 2 GB (scripts/bench_large_model.py)
}
Shape = str | tuple[int, int, int, int, int]  # a name in SHAPES, or (layers, hidden, heads, intermediate, max positions)


def dims(shape: Shape) -> tuple[int, int, int, int, int]:
    """(layers, hidden, heads, intermediate, max positions) of a named or explicit shape."""
    return SHAPES[shape] if isinstance(shape, str) else tuple(int(v) for v in shape)


def vocabulary() -> dict[str, int]:
    return {w: i for i, w in enumerate(SPECIAL + WORDS)}


def build_tokenizer(max_length: int = 64):
    from transformers import BertTokenizerFast

    # transformers 5 ignores vocab_file= here (every word becomes [UNK]): pass the dict.
    tok = BertTokenizerFast(vocab=vocabulary(), model_max_length=max_length)
    assert len(tok) == len(SPECIAL) + len(WORDS), len(tok)
    return tok


def synthetic_label(text: str) -> int:
    words = text.split()
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return 2 if score > 0 else 0 if score < 0 else 1


def _config(shape: Shape, **extra):
    from transformers import BertConfig

    layers, hidden, heads, inter, max_pos = dims(shape)
    return BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=max_pos,
                      attn_implementation="eager", **extra)


def build_classifier(shape: Shape = "tiny", seed: int = 0, train_steps: int = 60):
    """(model, tokenizer): BertForSequenceClassification with seeded weights, trained for a
    few steps on seeded texts labelled by `synthetic_label`, so its answers vary by text."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = _config(shape, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                     label2id={v: k for k, v in enumerate(LABELS)})
    model = BertForSequenceClassification(config)
    tok = build_tokenizer(dims(shape)[4])
    if train_steps:
        texts = seeded_texts(128, seed=seed + 1, max_words=20)
        batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
        labels = torch.tensor([synthetic_label(t) for t in texts])
        opt = torch.optim.Adam(model.parameters(), lr=3e-3 if shape == "tiny" else 5e-4)
        model.train()
        for _ in range(train_steps):
            opt.zero_grad()
            model(**batch, labels=labels).loss.backward()
            opt.step()
    model.eval()
    return model, tok


def build_pipeline(shape: Shape = "tiny", seed: int = 0, train_steps: int = 60):
    from transformers import pipeline

    model, tok = build_classifier(shape, seed, train_steps)
    return pipeline("text-classification", model=model, tokenizer=tok)


def build_sentence_transformer(shape: Shape = "tiny", seed: int = 0, workdir: str | Path | None = None):
    """A SentenceTransformer: a seeded BertModel, mean pooling, L2 normalisation."""
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertModel

    torch.manual_seed(seed)
    base = Path(workdir or tempfile.mkdtemp(prefix="modelops-st-")) / "encoder"
    BertModel(_config(shape)).save_pretrained(base)
    build_tokenizer(dims(shape)[4]).save_pretrained(base)
    encoder = Transformer(str(base), max_seq_length=dims(shape)[4])
    pooling = Pooling(dims(shape)[1], pooling_mode="mean")
    return SentenceTransformer(modules=[encoder, pooling, Normalize()], device="cpu")


def save_text_classifier(path: str | Path, shape: Shape = "tiny", seed: int = 0, train_steps: int = 60) -> Path:
    """An MLflow `transformers` model directory (text-classification), as users log it."""
    import mlflow.transformers

    model, tok = build_classifier(shape, seed, train_steps)
    mlflow.transformers.save_model({"model": model, "tokenizer": tok}, str(path), task="text-classification",
                                   pip_requirements=PIP_REQUIREMENTS)
    return Path(path)


def save_sentence_transformer(path: str | Path, shape: Shape = "tiny", seed: int = 0) -> Path:
    """An MLflow `sentence_transformers` model directory."""
    import mlflow.sentence_transformers

    model = build_sentence_transformer(shape, seed)
    mlflow.sentence_transformers.save_model(model, str(path),
                                            pip_requirements=PIP_REQUIREMENTS + ["sentence-transformers"])
    return Path(path)


def register_text_classifier(tracking_uri: str, name: str, shape: Shape = "tiny", seed: int = 0,
                             train_steps: int = 60) -> str:
    """Log the classifier as users do (`mlflow.transformers.log_model`, a registered model
    version); returns the new version."""
    import mlflow
    import mlflow.transformers

    model, tok = build_classifier(shape, seed, train_steps)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("modelops-demo")
    with mlflow.start_run():
        info = mlflow.transformers.log_model({"model": model, "tokenizer": tok}, name="model",
                                             task="text-classification", registered_model_name=name,
                                             pip_requirements=PIP_REQUIREMENTS)
    return str(info.registered_model_version)
