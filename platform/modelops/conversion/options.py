"""Conversion options and their canonical identity (used as the cache key)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

PRECISIONS = ("fp32", "fp16", "int8")

# Reduced precision changes numbers by design; each precision has its own parity tolerance.
DEFAULT_TOLERANCE = {
    "fp32": (1e-3, 1e-5),
    "fp16": (1e-2, 1e-3),
    "int8": (5e-2, 5e-2),
}

# Bump when a change to the converter can change its output: it invalidates cached results.
CONVERTER_REVISION = 2  # 2: transformer fusion of BERT-class text models (conversion.fusion)


@dataclass(frozen=True)
class ConversionOptions:
    precision: str = "fp32"
    opset: int = 17
    rtol: float | None = None  # None: the precision's default
    atol: float | None = None
    samples: int = 64  # seeded samples generated from the signature, besides the input example
    seed: int = 0
    # BERT-class text models: onnxruntime's transformer fusions (conversion.fusion); other models
    # are not affected by it.
    fusion: bool = True

    def __post_init__(self):
        from ..errors import InvalidSpec

        if self.precision not in PRECISIONS:
            raise InvalidSpec("conversion.precision",
                              f"unknown precision {self.precision!r}; supported: {', '.join(PRECISIONS)}")
        if not 7 <= int(self.opset) <= 23:
            raise InvalidSpec("conversion.opset", f"opset {self.opset} outside the supported 7..23")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise InvalidSpec(f"conversion.tolerance.{name}", f"must be >= 0, got {value}")
        if self.samples < 0:
            raise InvalidSpec("conversion.samples", "must be >= 0")

    @property
    def tolerance(self) -> tuple[float, float]:
        rtol, atol = DEFAULT_TOLERANCE[self.precision]
        return (rtol if self.rtol is None else float(self.rtol),
                atol if self.atol is None else float(self.atol))

    def identity(self) -> dict:
        rtol, atol = self.tolerance
        d = asdict(self)
        d.update(rtol=rtol, atol=atol, revision=CONVERTER_REVISION)
        return d

    @property
    def key(self) -> str:
        """Short stable hash of the options (names the published artifact and its tag)."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
