"""Shadow comparison: the stable predictor's answer to a request against the candidate's (pure).

Per output, by name (the stable's answered outputs; extra candidate outputs are ignored):
- numeric outputs: max |stable - candidate| and max relative difference
  |s - c| / max(|s|, |c|) (0 where both are 0; NaN equal to NaN; NaN against a number: inf);
- classifier outputs (`CLASSIFIER_NAMES`: a label output, or 2-D float [rows, classes > 1]
  scores / logits / probabilities): the top class of each row (the label itself, or the argmax);
- vector outputs (float, rank >= 2, last dim > 1, not a classifier output: embeddings
  [rows, dim], hidden states [rows, seq, dim]): the minimum cosine similarity over the vectors.

The outcome of the request (one per mirrored request, every row counted): when it has
classifier outputs, `agree` iff every row's top class is the same in every one of them; else
`agree` iff every output is allclose(rtol, atol) (BYTES outputs: equal). A missing output, a
shape or a kind (numbers vs strings) that differs is `disagree`, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABEL_NAMES = frozenset({"label", "labels", "output_label", "predicted_label", "class", "classes"})
SCORE_NAMES = frozenset({"scores", "logits", "probabilities", "probs", "output_probability"})
CLASSIFIER_NAMES = LABEL_NAMES | SCORE_NAMES


@dataclass(frozen=True)
class Comparison:
    outcome: str  # agree | disagree
    abs_diff: float | None = None  # max over the numeric outputs (None: none compared)
    rel_diff: float | None = None
    cosine: float | None = None  # min over the vector outputs (None: none)
    reason: str | None = None  # why `disagree`

    @property
    def agree(self) -> bool:
        return self.outcome == "agree"


def _is_label(name: str, arr: np.ndarray) -> bool:
    return name.lower() in LABEL_NAMES and arr.ndim <= 2 and (arr.ndim < 2 or arr.shape[-1] == 1)


def _is_scores(name: str, arr: np.ndarray) -> bool:
    return (name.lower() in SCORE_NAMES and arr.ndim == 2 and arr.dtype.kind == "f"
            and arr.shape[1] > 1)


def _is_vector(name: str, arr: np.ndarray) -> bool:
    return (arr.dtype.kind == "f" and arr.ndim >= 2 and arr.shape[-1] > 1
            and name.lower() not in CLASSIFIER_NAMES)


def _numeric(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "fiub"


def _finite_differences(s: np.ndarray, c: np.ndarray, rtol: float, atol: float):
    """Elementwise |s - c|, the relative difference (0 where both are 0) and allclose, of two
    finite float64 arrays."""
    diff = np.abs(s - c)
    scale = np.maximum(np.abs(s), np.abs(c))
    rel = np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)
    return diff, rel, diff <= atol + rtol * np.abs(c)


def differences(s: np.ndarray, c: np.ndarray, rtol: float = 0.0, atol: float = 0.0) -> tuple[float, float, bool]:
    """(max absolute, max relative difference, allclose(rtol, atol)) of two same-shape numeric
    arrays (allclose as numpy's: |s - c| <= atol + rtol * |c|, NaN equal to NaN)."""
    s, c = s.astype(np.float64), c.astype(np.float64)
    if not s.size:
        return 0.0, 0.0, True
    if np.isfinite(s).all() and np.isfinite(c).all():  # the common case, a few array operations
        diff, rel, within = _finite_differences(s, c, rtol, atol)
        return float(diff.max()), float(rel.max()), bool(within.all())
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(s - c)
        both_nan = np.isnan(s) & np.isnan(c)
        same_inf = np.isinf(s) & (s == c)
        diff = np.where(both_nan | same_inf, 0.0, diff)
        diff = np.where(np.isnan(diff), np.inf, diff)  # NaN against a number
        scale = np.maximum(np.abs(s), np.abs(c))
        rel = np.where(diff == 0, 0.0, diff / np.where(scale == 0, 1.0, scale))
        rel = np.where(np.isnan(rel), np.inf, rel)  # inf against inf of the other sign
        close = bool(((diff == 0) | (diff <= atol + rtol * np.abs(c))).all())
    return float(diff.max()), float(rel.max()), close


def _cosines(s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The cosine similarity of each pair of matching rows of two float64 [n, dim] arrays, in
    [-1, 1]; two zero vectors count as identical (1), a zero vector against another as 0."""
    ns, nc = np.sqrt((s * s).sum(axis=1)), np.sqrt((c * c).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (s * c).sum(axis=1) / (ns * nc)
    cos = np.where((ns == 0) & (nc == 0), 1.0, np.where((ns == 0) | (nc == 0), 0.0, cos))
    return np.clip(np.where(np.isnan(cos), 0.0, cos), -1.0, 1.0)


def min_cosine(s: np.ndarray, c: np.ndarray) -> float:
    """The smallest cosine similarity between matching vectors (last axis) of S and C (`_cosines`)."""
    s = s.astype(np.float64).reshape(-1, s.shape[-1])
    c = c.astype(np.float64).reshape(-1, c.shape[-1])
    cos = _cosines(s, c) if s.size else np.empty(0)
    return float(cos.min()) if cos.size else 1.0


def _top_class(name: str, arr: np.ndarray) -> np.ndarray:
    if _is_label(name, arr):
        return arr.reshape(len(arr), -1)[:, 0] if arr.ndim else arr.reshape(1)
    return np.argmax(arr, axis=1)


def _labels_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "O" or b.dtype.kind == "O":
        return np.array([str(x) == str(y) for x, y in zip(a.tolist(), b.tolist())], dtype=bool)
    return a == b


def compare(stable: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            rtol: float = 1e-3, atol: float = 1e-3) -> Comparison:
    """Compare the stable's answered outputs (name -> array) with the candidate's."""
    abs_d = rel_d = cos = None
    classifier_agree: bool | None = None
    close, problems = True, []
    for name, s in stable.items():
        s = np.asarray(s)
        c = candidate.get(name)
        if c is None:
            problems.append(f"output '{name}' is missing from the candidate's answer "
                            f"(it has {sorted(candidate)})")
            continue
        c = np.asarray(c)
        if s.shape != c.shape:
            problems.append(f"output '{name}': shape {list(s.shape)} vs the candidate's {list(c.shape)}")
            continue
        if _numeric(s) != _numeric(c):
            problems.append(f"output '{name}': {s.dtype.kind == 'O' and 'strings' or 'numbers'} vs the "
                            f"candidate's {c.dtype.kind == 'O' and 'strings' or 'numbers'}")
            continue
        if _is_label(name, s) or _is_scores(name, s):
            same = bool(_labels_equal(_top_class(name, s), _top_class(name, c)).all()) if s.size else True
            classifier_agree = same if classifier_agree is None else classifier_agree and same
        if _numeric(s) and s.dtype == c.dtype and np.array_equal(s, c):
            abs_d, rel_d = abs_d or 0.0, rel_d or 0.0  # the common case, at a fraction of the cost
            if _is_vector(name, s):
                cos = min(cos, 1.0) if cos is not None else 1.0
        elif _numeric(s):
            a, r, within = differences(s, c, rtol, atol)
            abs_d, rel_d, close = max(abs_d or 0.0, a), max(rel_d or 0.0, r), close and within
            if _is_vector(name, s):
                m = min_cosine(s, c)
                cos = m if cos is None else min(cos, m)
        else:
            close = close and bool(_labels_equal(s.ravel(), c.ravel()).all())
    if problems:
        return Comparison("disagree", abs_d, rel_d, cos, "; ".join(problems))
    return _verdict(classifier_agree, close, abs_d, rel_d, cos, rtol, atol)


def _verdict(classifier_agree: bool | None, close: bool, abs_d, rel_d, cos, rtol: float, atol: float) -> Comparison:
    """With classifier outputs, their top classes decide; else allclose of every output."""
    if classifier_agree is not None:
        reason = None if classifier_agree else "top class differs"
        return Comparison("agree" if classifier_agree else "disagree", abs_d, rel_d, cos, reason)
    if close:
        return Comparison("agree", abs_d, rel_d, cos)
    return Comparison("disagree", abs_d, rel_d, cos,
                      f"outputs differ beyond rtol={rtol:g}, atol={atol:g} (max abs diff {abs_d:.3g})")


def compare_stacked(stable: dict[str, np.ndarray], candidate: dict[str, np.ndarray], counts: list[int],
                    rtol: float = 1e-3, atol: float = 1e-3) -> list[Comparison] | None:
    """`compare` of each of several requests whose answers are stacked on the batch axis (COUNTS:
    each request's rows, in order), in one pass of array operations over all of them: the same
    Comparison per request as `compare` on its own rows gives. None when the answers are not the
    common case this covers (every output numeric, finite, present with the stable's shape, at
    least one value per row): then `compare` each request's rows instead."""
    total = sum(counts)
    if not stable or not counts or min(counts) < 1:
        return None
    starts = np.cumsum([0, *counts[:-1]])
    n = len(counts)
    abs_d, rel_d = np.zeros(n), np.zeros(n)
    close = np.ones(n, dtype=bool)
    cls_agree, cos = None, None
    for name, s in stable.items():
        c = candidate.get(name)
        if (not isinstance(s, np.ndarray) or not isinstance(c, np.ndarray) or s.shape != c.shape
                or s.ndim == 0 or s.shape[0] != total or s.size == 0 or not _numeric(s) or not _numeric(c)):
            return None
        s64, c64 = s.astype(np.float64).reshape(total, -1), c.astype(np.float64).reshape(total, -1)
        if not (np.isfinite(s64).all() and np.isfinite(c64).all()):
            return None
        if _is_label(name, s) or _is_scores(name, s):
            same = _top_class(name, s) == _top_class(name, c)
            agree = np.logical_and.reduceat(same, starts)
            cls_agree = agree if cls_agree is None else cls_agree & agree
        diff, rel, within = _finite_differences(s64, c64, rtol, atol)
        out_abs = np.maximum.reduceat(diff.max(axis=1), starts)
        abs_d, rel_d = np.maximum(abs_d, out_abs), np.maximum(rel_d, np.maximum.reduceat(rel.max(axis=1), starts))
        close &= np.logical_and.reduceat(within.all(axis=1), starts)
        if _is_vector(name, s):
            dim = s.shape[-1]
            vc = _cosines(s64.reshape(-1, dim), c64.reshape(-1, dim))
            per_copy = np.minimum.reduceat(vc.reshape(total, -1).min(axis=1), starts)
            per_copy = np.where(out_abs == 0, 1.0, per_copy)  # identical vectors: exactly 1, as `compare`
            cos = per_copy if cos is None else np.minimum(cos, per_copy)
    return [_verdict(None if cls_agree is None else bool(cls_agree[i]), bool(close[i]), float(abs_d[i]),
                     float(rel_d[i]), None if cos is None else float(cos[i]), rtol, atol) for i in range(n)]
