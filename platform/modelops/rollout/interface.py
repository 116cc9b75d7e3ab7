"""Is a candidate's served interface compatible with the stable version's? (pure)

The interface is what the predictor serves: input and output names, V2 datatypes and shapes,
`-1` for a dynamic dimension (the shape of `conversion.json`'s `inputs`/`outputs`, and of the
V2 model metadata). `compare(stable, candidate)` lists what would break a client of the stable
version (incompatible) and what would not (compatible, noted):

- inputs: every stable input must still be there with the same datatype and rank; a fixed
  dimension must keep its size or become dynamic (noted); a dynamic one must stay dynamic. A new
  input is incompatible: an ONNX graph input has no default, so existing clients would be refused.
- outputs: every stable output must still be there with the same datatype and rank; a fixed
  dimension must keep its size or become dynamic (noted); a new output is compatible (noted):
  clients that name their outputs are not affected, the others get one more.

Each difference is one short phrase naming the tensor, e.g. `input 'input' renamed or removed`,
`new input 'features'`, `input 'x' datatype FP32 -> FP64`, `input 'x' dim 1: 8 -> 16`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

CHECK_NAME = "interface"


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def from_json(cls, raw: dict) -> Tensor:
        return cls(name=str(raw["name"]), datatype=str(raw.get("datatype", "")),
                   shape=tuple(int(d) if int(d) >= 0 else -1 for d in raw.get("shape") or ()))

    def to_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Interface:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @classmethod
    def from_json(cls, raw: dict | None) -> Interface | None:
        """From `{"inputs": [...], "outputs": [...]}`; None when either list is missing."""
        if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), list) \
                or not isinstance(raw.get("outputs"), list):
            return None
        return cls(tuple(Tensor.from_json(t) for t in raw["inputs"]),
                   tuple(Tensor.from_json(t) for t in raw["outputs"]))

    def to_json(self) -> dict:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}


@dataclass(frozen=True)
class InterfaceCheck:
    """The comparison of `version`'s interface with `stable_version`'s, as the engine reads it.

    `error`: the interfaces could not be read (e.g. MLflow unreachable): the canary waits, it is
    never started blind."""

    version: str
    stable_version: str
    incompatible: tuple[str, ...] = ()
    compatible: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.incompatible

    @property
    def message(self) -> str:
        return "; ".join(self.incompatible)

    @property
    def note(self) -> str:
        """The compatible changes, for the canary's Started message ('' when none)."""
        return "; ".join(self.compatible)


def _dim(d: int) -> str:
    return "dynamic" if d < 0 else str(d)


def _compare_tensor(kind: str, old: Tensor, new: Tensor, bad: list[str], fine: list[str]) -> None:
    what = f"{kind} '{old.name}'"
    if old.datatype != new.datatype:
        bad.append(f"{what} datatype {old.datatype} -> {new.datatype}")
    if len(old.shape) != len(new.shape):
        bad.append(f"{what} rank {len(old.shape)} -> {len(new.shape)} "
                   f"(shape {list(old.shape)} -> {list(new.shape)})")
        return
    for i, (a, b) in enumerate(zip(old.shape, new.shape)):
        if a == b:
            continue
        if b < 0:  # fixed -> dynamic: every request that fitted still fits
            fine.append(f"{what} dim {i} now dynamic (was {a})")
        elif a < 0 and kind == "output":  # a dynamic output became fixed: still a valid answer
            fine.append(f"{what} dim {i} now fixed at {b}")
        else:
            bad.append(f"{what} dim {i}: {_dim(a)} -> {_dim(b)}")


def compare(stable: Interface, candidate: Interface) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(incompatible differences, compatible differences) of `candidate` against `stable`."""
    bad: list[str] = []
    fine: list[str] = []
    for kind, old_list, new_list in (("input", stable.inputs, candidate.inputs),
                                     ("output", stable.outputs, candidate.outputs)):
        new_by_name = {t.name: t for t in new_list}
        old_names = {t.name for t in old_list}
        for old in old_list:
            new = new_by_name.get(old.name)
            if new is None:
                bad.append(f"{kind} '{old.name}' renamed or removed")
            else:
                _compare_tensor(kind, old, new, bad, fine)
        for new in new_list:
            if new.name not in old_names:
                (bad if kind == "input" else fine).append(f"new {kind} '{new.name}'")
    return tuple(bad), tuple(fine)


def check(version: str, stable_version: str, stable: Interface | None,
          candidate: Interface | None, *, error: str | None = None) -> InterfaceCheck:
    """The engine's observation for a candidate; an unreadable side is an `error` (wait)."""
    if error is None and stable is None:
        error = f"the interface of the stable v{stable_version} is unknown"
    if error is None and candidate is None:
        error = f"the interface of v{version} is unknown"
    if error is not None:
        return InterfaceCheck(version, stable_version, error=error)
    bad, fine = compare(stable, candidate)
    return InterfaceCheck(version, stable_version, incompatible=bad, compatible=fine)


# --- where interfaces come from --------------------------------------------------------------
def from_report(report: dict | None) -> Interface | None:
    """From a conversion report (`conversion.json`) or a published record's `interface`."""
    if not isinstance(report, dict):
        return None
    return Interface.from_json(report.get("interface") or report)


def from_model_dir(path: str | Path) -> Interface | None:
    """What a predictor serves from this directory: `conversion.json`'s inputs/outputs, else the
    ONNX graph itself (its inputs that are not initializers, and its outputs)."""
    path = Path(path)
    report = path / "conversion.json"
    if report.is_file():
        try:
            found = from_report(json.loads(report.read_text()))
        except ValueError:
            found = None
        if found is not None:
            return found
    model = path / "model.onnx"
    if not model.is_file():
        return None
    return from_onnx(model)


def from_onnx(model_path: str | Path) -> Interface:
    import onnx

    from ..tensors import NUMPY_TO_V2

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def tensors(values: Iterable[Any]) -> tuple[Tensor, ...]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(Tensor(v.name, NUMPY_TO_V2.get(dtype, str(dtype)), shape))
        return tuple(out)

    return Interface(tensors(model.graph.input), tensors(model.graph.output))
