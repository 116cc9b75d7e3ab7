"""The parity gate of text models: the original (HF pipeline / SentenceTransformer.encode) against
the served path (TextFrontend over an onnxruntime session of the final graph), on seeded texts of
varied lengths, the empty string and texts longer than the model's limit; each text served alone
and in padded batches."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..text import TextFrontend
from .exported import Exported
from .options import ConversionOptions
from .parity import SAMPLE_BATCHES, ParityReport, compare

EDGE_TEXTS = ["", " ", "Hello, World! THE Movie -- était très BIEN? 😀 \t tabs\nand lines", "good"]
ANSWER_OF = {"text-classification": "scores"}


def text_samples(count: int, seed: int, max_length: int) -> list[str]:
    """Edge cases, short and medium seeded texts, and (about a sixth) texts over the token limit."""
    from ..words import seeded_texts

    n = max(count - len(EDGE_TEXTS), 3)
    over = max(n // 6, 1)
    rest = n - over
    texts = list(EDGE_TEXTS)
    texts += seeded_texts(rest // 2, seed=seed, min_words=1, max_words=8)
    texts += seeded_texts(rest - rest // 2, seed=seed + 1, min_words=9, max_words=max(10, max_length // 2))
    texts += seeded_texts(over, seed=seed + 2, min_words=max_length + 4, max_words=2 * max_length + 40)
    return texts


def _served(frontend: TextFrontend, session, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(answer array, top labels or None) of one graph run."""
    names, arrays = frontend.answer(session.run(None, feeds))
    answer = dict(zip(names, arrays))
    task = frontend.config.task
    main = answer[ANSWER_OF.get(task, frontend.config.outputs[0])]
    return np.asarray(main), (answer["label"] if "label" in answer else None)


def text_references(exported: Exported, options: ConversionOptions) -> tuple[list[str], list[np.ndarray]]:
    """The gate's texts and the original model's answers to them (needs the original model)."""
    texts = text_samples(options.samples, options.seed, exported.text.max_length)
    return texts, exported.text_reference(texts)


def run_text_parity(session, exported: Exported, model_dir: Path, options: ConversionOptions,
                    references: tuple[list[str], list[np.ndarray]] | None = None) -> tuple[ParityReport, dict]:
    """`references`: `text_references`' result when computed earlier (the original model may be gone)."""
    cfg = exported.text
    frontend = TextFrontend(model_dir, cfg)
    rtol, atol = options.tolerance
    report = ParityReport(rtol=rtol, atol=atol)
    texts, expected = references or text_references(exported, options)
    sequence = cfg.task == "feature-extraction"
    name = ANSWER_OF.get(cfg.task, cfg.outputs[0])
    labels = cfg.task == "text-classification"
    top = [cfg.id2label.get(int(np.argmax(e)), "") for e in expected] if labels else []
    agree = disagree = 0

    def check_label(i: int, got, mode: str):
        nonlocal agree, disagree
        if got == top[i]:
            agree += 1
            return
        disagree += 1
        e = expected[i]
        label2id = {v: k for k, v in cfg.id2label.items()}
        margin = float(e.max() - e[label2id.get(str(got), int(np.argmax(e)))])
        if margin > atol + rtol * float(e.max()):  # not a near-tie: the served label is wrong
            report.passed = False
            report.failures.append(f"label[text {i}, {mode}]: served {got!r}, original {top[i]!r} "
                                   f"(score margin {margin:.3g})")

    tokens = []
    for i, text in enumerate(texts):
        feeds = frontend.encode_one(text)
        tokens.append(int(feeds["input_ids"].shape[1]))
        got, got_labels = _served(frontend, session, feeds)
        compare(report, [f"{name}[text {i}, alone]"], [expected[i][None]], [got], rows=1)
        if labels:
            check_label(i, got_labels[0], "alone")
    order = list(range(len(texts)))
    random.Random(options.seed).shuffle(order)  # long and short texts share batches: padding matters
    batches, start, b = [], 0, 0
    while start < len(order):
        size = SAMPLE_BATCHES[b % len(SAMPLE_BATCHES)]
        batches.append(order[start:start + size])
        start += size
        b += 1
    for batch in batches:
        feeds = frontend.encode([texts[i] for i in batch])
        got, got_labels = _served(frontend, session, feeds)
        for row, i in enumerate(batch):
            actual = got[row, :tokens[i]] if sequence else got[row]
            compare(report, [f"{name}[text {i}, batch of {len(batch)}]"], [expected[i]], [actual], rows=0)
            if labels:
                check_label(i, got_labels[row], f"batch of {len(batch)}")
    summary = {
        "task": cfg.task, "texts": len(texts), "empty_text": "" in texts,
        "over_limit": sum(t >= cfg.max_length for t in tokens), "max_length": cfg.max_length,
        "max_tokens": max(tokens), "batch_sizes": sorted({len(b) for b in batches}),
        "modes": ["alone", "padded batches"],
    }
    if labels:
        summary["label_agreement"] = agree / max(agree + disagree, 1)
        summary["label_disagreements"] = disagree
    return report, summary
