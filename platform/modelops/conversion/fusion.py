"""Transformer-aware graph fusion of BERT-class text models (onnxruntime's transformer optimizer).

The TorchScript export of an encoder is plain arithmetic (MatMul, Softmax, LayerNormalization,
Erf...); `onnxruntime.transformers.optimizer` rewrites each layer into onnxruntime's fused
contrib operators (com.microsoft Attention, SkipLayerNormalization, BiasGelu,
EmbedLayerNormalization). Only its Python fusions run (opt_level=0): none of onnxruntime's
provider-specific rewrites, so the file holds the same operators on CPU and CUDA (both have
kernels for them). The fused Attention takes the attention mask as per-row lengths, i.e. right
padding, which is what `modelops.text.TextFrontend` sends.

The fused graph is kept only when at least one Attention was fused (the point of the exercise;
LayerNorm/Gelu fusions alone onnxruntime's serving session also does at load time); otherwise,
or when the optimizer raises, the plain graph is kept and the report says why. Either way the
result goes through the parity gate.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import transforms

# Hugging Face model types given to onnxruntime's "bert" optimizer. Checked with seeded 2-layer
# models (onnxruntime 1.32): bert, distilbert, electra fuse fully (EmbedLayerNormalization too);
# roberta, xlm-roberta, camembert fuse Attention + SkipLayerNormalization; albert fuses one
# Attention of its shared layers; mpnet fuses no Attention (relative position bias): it falls back
# to the plain graph, with the reason in the report.
OPTIMIZER_MODEL_TYPES = {t: "bert" for t in ("bert", "distilbert", "electra", "roberta", "xlm-roberta",
                                             "camembert", "albert", "mpnet")}
ATTENTION_OPS = ("Attention", "MultiHeadAttention")
DISABLED = "disabled"
# What int8 quantizes in a fused graph (None: all quantize_dynamic knows, QAttention included).
INT8_OP_TYPES: list[str] | None = None


def transformer_config(config) -> dict | None:
    """What the optimizer needs, from a Hugging Face config; None when it is not BERT-class."""
    model_type = getattr(config, "model_type", None)
    optimizer_type = OPTIMIZER_MODEL_TYPES.get(str(model_type))
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if optimizer_type is None or not heads or not hidden:
        return None
    return {"model_type": optimizer_type, "hf_model_type": str(model_type),
            "num_heads": int(heads), "hidden_size": int(hidden)}


def not_applied(reason: str, transformer: dict | None = None) -> dict:
    return {"applied": False, "fused": {}, "reason": reason, **({"transformer": transformer} if transformer else {})}


def decide(stats: dict[str, int]) -> tuple[bool, dict[str, int], str]:
    """(keep the fused graph?, the fused operators counted (nonzero only), why not)."""
    fused = {op: int(n) for op, n in sorted(stats.items()) if n}
    if any(fused.get(op) for op in ATTENTION_OPS):
        return True, fused, ""
    found = f" (fused only {', '.join(f'{op} x{n}' for op, n in fused.items())})" if fused else ""
    return False, fused, f"no Attention fused{found}"


class _QuietOptimizer:
    """The optimizer logs each pattern it does not match as a warning: keep that out of our logs.
    Its modules are imported by their bare names (it puts its directory on sys.path), so are
    their loggers."""

    def __enter__(self):
        import onnxruntime.transformers as package

        names = ["onnxruntime.transformers", *(p.stem for p in Path(package.__file__).parent.glob("*.py"))]
        self.levels = {name: logging.getLogger(name).level for name in names}
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def fuse(src: Path, dst: Path, transformer: dict | None, enabled: bool = True) -> dict:
    """Fuse the graph at `src` into `dst` (external data kept when `src` has it); the report.

    `dst` is written only when the report says applied: otherwise use `src` as it is."""
    if not enabled:
        return not_applied(DISABLED, transformer)
    if not transformer:
        return not_applied("not a BERT-class transformer")
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with _QuietOptimizer():
            model = optimize_model(str(src), model_type=transformer["model_type"],
                                   num_heads=int(transformer["num_heads"]),
                                   hidden_size=int(transformer["hidden_size"]), opt_level=0, use_gpu=False)
            stats = model.get_fused_operator_statistics()
    except Exception as exc:  # the optimizer's own failure: the plain graph is still a good one
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        return not_applied(f"the optimizer raised {type(exc).__name__}" + (f": {detail}" if detail else ""),
                           transformer)
    applied, fused, reason = decide(stats)
    report = {"applied": applied, "fused": fused, "transformer": transformer}
    if not applied:
        return {**report, "reason": reason}
    model.topological_sort()
    transforms.save(_with_ms_opset(model.model), dst)
    return report


def _with_ms_opset(model):
    """The fused operators' domain imported (the optimizer adds it only in its own save)."""
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        opset = model.opset_import.add()
        opset.domain, opset.version = "com.microsoft", 1
    return model
