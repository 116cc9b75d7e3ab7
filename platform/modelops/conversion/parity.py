"""The parity gate: the ONNX model must reproduce the original model's outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..tensors import TensorSpec

SAMPLE_BATCHES = (1, 7, 32)  # odd sizes catch batch-axis bugs that batch 1 alone hides


def generate_samples(inputs: list[TensorSpec], example: dict[str, np.ndarray] | None,
                     count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded feeds that follow the signature: `count` rows spread over a few batch sizes.

    Values follow the input example's mean and spread when there is one, so that samples land
    where real inputs do (tree thresholds, activation ranges), else a standard normal.
    """
    rng = np.random.default_rng(seed)
    feeds, remaining = [], count
    sizes = [b for b in SAMPLE_BATCHES if b <= max(count, 1)]
    i = 0
    while remaining > 0:
        batch = min(sizes[i % len(sizes)], remaining)
        remaining -= batch
        i += 1
        feed = {}
        for spec in inputs:
            ex = example.get(spec.name) if example else None
            tail = [d if d > 0 else (ex.shape[j + 1] if ex is not None else 8)
                    for j, d in enumerate(spec.shape[1:])]
            shape = [batch, *tail]
            dt = np.dtype(spec.dtype)
            if dt.kind == "f":
                mean = float(np.mean(ex)) if ex is not None and ex.size else 0.0
                std = float(np.std(ex)) if ex is not None and ex.size > 1 else 1.0
                feed[spec.name] = rng.normal(mean, std or 1.0, size=shape).astype(dt)
            elif dt.kind in "iu":
                feed[spec.name] = rng.integers(0, 10, size=shape).astype(dt)
            elif dt.kind == "b":
                feed[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                raise ValueError(f"cannot generate samples for dtype {dt}")
        feeds.append(feed)
    return feeds


@dataclass
class ParityReport:
    rtol: float
    atol: float
    samples: int = 0
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    passed: bool = True
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"samples": self.samples, "max_abs_err": self.max_abs_err,
                "max_rel_err": self.max_rel_err, "rtol": self.rtol, "atol": self.atol,
                "passed": self.passed, "failures": self.failures[:5]}


def compare(report: ParityReport, names: list[str], expected: list[np.ndarray],
            actual: list[np.ndarray], rows: int) -> None:
    """Fold one batch into the report (numpy.allclose semantics: |a-e| <= atol + rtol*|e|)."""
    report.samples += rows
    if len(expected) != len(actual):
        report.passed = False
        report.failures.append(f"original model gave {len(expected)} outputs, ONNX {len(actual)}")
        return
    for name, e, a in zip(names, expected, actual):
        e, a = np.asarray(e), np.asarray(a)
        if e.size != a.size:
            report.passed = False
            report.failures.append(f"{name}: shape {list(a.shape)} != original {list(e.shape)}")
            continue
        e = e.reshape(a.shape).astype(np.float64)
        a = a.astype(np.float64)
        diff = np.abs(a - e)
        if not np.all(np.isfinite(a) == np.isfinite(e)):
            report.passed = False
            report.failures.append(f"{name}: non-finite values differ")
            continue
        diff = np.where(np.isfinite(diff), diff, 0.0)
        # Relative error with |original| floored at atol: an exact 0 (ReLU, a zero probability)
        # would otherwise report ~1e300 for a harmless 1e-7 difference.
        rel = diff / np.maximum(np.abs(e), max(report.atol, np.finfo(np.float64).tiny))
        report.max_abs_err = max(report.max_abs_err, float(diff.max(initial=0.0)))
        report.max_rel_err = max(report.max_rel_err, float(np.where(diff > 0, rel, 0).max(initial=0.0)))
        bad = diff > report.atol + report.rtol * np.abs(e)
        if bad.any():
            report.passed = False
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.where(bad, diff, -1))), diff.shape))
            report.failures.append(
                f"{name}: {int(bad.sum())} of {bad.size} values out of tolerance; worst at {list(idx)}: "
                f"onnx={a[idx]:.6g} original={e[idx]:.6g}")
