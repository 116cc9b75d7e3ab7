"""The parity gate: the ONNX model must reproduce the original model's outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..tensors import TensorSpec

SAMPLE_BATCHES = (1, 7, 32)  # odd sizes catch batch-axis bugs that batch 1 alone hides
MAX_SAMPLED = 64  # largest size sampled on a dynamic non-batch axis whose maximum is not known
DEFAULT_INT_RANGE = (0, 10)  # integer inputs with neither an example nor a vocabulary


def axis_name(dtype, axis: int) -> str:
    """The name of a dynamic axis: batch (0), sequence (axis 1 of an integer input: token ids,
    masks), else dim_<axis>. Inputs share a name when their axes must have equal sizes."""
    if axis == 0:
        return "batch"
    if axis == 1 and np.dtype(dtype).kind in "iu":
        return "sequence"
    return f"dim_{axis}"


def is_mask(name: str, example: np.ndarray | None) -> bool:
    """An attention-style 0/1 mask: named so, or an integer example holding only 0 and 1."""
    if "mask" in name.lower():
        return True
    return example is not None and example.size > 0 and np.isin(example, (0, 1)).all()


def axis_sizes(inputs: list[TensorSpec], example: dict[str, np.ndarray] | None,
               dynamic_axes: dict[str, dict[int, str]] | None = None,
               max_sizes: dict[str, int] | None = None) -> dict[str, list[int]]:
    """Sizes sampled on every dynamic non-batch axis, by axis name: 1, the example's size (else
    halfway) and the largest the model takes (`max_sizes`), else twice the example's size (8
    without an example), capped at MAX_SAMPLED."""
    seen: dict[str, int | None] = {}
    for spec in inputs:
        ex = example.get(spec.name) if example else None
        for axis, d in enumerate(spec.shape):
            if axis == 0 or d > 0:
                continue
            name = (dynamic_axes or {}).get(spec.name, {}).get(axis) or axis_name(spec.dtype, axis)
            size = ex.shape[axis] if ex is not None and ex.ndim > axis else None
            seen[name] = max(seen.get(name) or 0, size or 0) or None
    out = {}
    for name, size in seen.items():
        top = (max_sizes or {}).get(name) or min(2 * (size or 8), MAX_SAMPLED)
        # The middle size is the example's (where real inputs are), else halfway.
        middle = size if size and 1 < size < top else max(1, (1 + top) // 2)
        out[name] = sorted({1, middle, top})
    return out


def _mask(rng, shape: list[int], dt) -> np.ndarray:
    """Right padding: each row holds ones then zeros, at least one 1."""
    if len(shape) < 2:
        return np.ones(shape, dt)
    length = shape[1]
    keep = rng.integers(1, length + 1, size=shape[0])
    keep[0] = length  # one full row: the longest sequence is always sampled
    m = (np.arange(length)[None, :] < keep[:, None]).astype(dt)
    return np.broadcast_to(m.reshape(shape[:2] + [1] * (len(shape) - 2)), shape).copy()


def _integers(rng, spec: TensorSpec, ex, shape: list[int], vocab: int | None) -> np.ndarray:
    dt = np.dtype(spec.dtype)
    if is_mask(spec.name, ex):
        return _mask(rng, shape, dt)
    if ex is not None and ex.size:
        low, high = int(ex.min()), int(ex.max()) + 1
    elif vocab:
        low, high = 0, int(vocab)
    else:
        low, high = DEFAULT_INT_RANGE
    return rng.integers(low, high, size=shape).astype(dt)


def generate_samples(inputs: list[TensorSpec], example: dict[str, np.ndarray] | None,
                     count: int, seed: int, *,
                     dynamic_axes: dict[str, dict[int, str]] | None = None,
                     max_sizes: dict[str, int] | None = None,
                     vocab_sizes: dict[str, int] | None = None) -> list[dict[str, np.ndarray]]:
    """Seeded feeds that follow the signature: `count` rows spread over a few batch sizes, and
    every dynamic non-batch axis sampled at 1, a middle size and its largest (see `axis_sizes`);
    inputs sharing an axis name get the same size.

    Float values follow the input example's mean and spread when there is one, so that samples
    land where real inputs do (tree thresholds, activation ranges), else a standard normal.
    Integers stay inside the example's [min, max] per input, else [0, vocab) when
    `vocab_sizes` names the input, else [0, 10); a 0/1 mask gets right-padding patterns.
    """
    rng = np.random.default_rng(seed)
    sizes = [b for b in SAMPLE_BATCHES if b <= max(count, 1)]
    dims = axis_sizes(inputs, example, dynamic_axes, max_sizes)
    feeds, remaining, i = [], count, 0
    # Enough feeds for every axis size to be sampled once, however few rows were asked for.
    while remaining > 0 or (count > 0 and i < max((len(v) for v in dims.values()), default=0)):
        batch = max(1, min(sizes[i % len(sizes)], remaining))
        remaining -= batch
        chosen = {name: v[i % len(v)] for name, v in dims.items()}
        i += 1
        feed = {}
        for spec in inputs:
            ex = example.get(spec.name) if example else None
            shape = [batch]
            for axis, d in enumerate(spec.shape[1:], start=1):
                if d > 0:
                    shape.append(d)
                    continue
                name = (dynamic_axes or {}).get(spec.name, {}).get(axis) or axis_name(spec.dtype, axis)
                shape.append(chosen[name])
            dt = np.dtype(spec.dtype)
            if dt.kind == "f":
                mean = float(np.mean(ex)) if ex is not None and ex.size else 0.0
                std = float(np.std(ex)) if ex is not None and ex.size > 1 else 1.0
                feed[spec.name] = rng.normal(mean, std or 1.0, size=shape).astype(dt)
            elif dt.kind in "iu":
                feed[spec.name] = _integers(rng, spec, ex, shape, (vocab_sizes or {}).get(spec.name))
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
