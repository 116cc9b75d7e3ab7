"""A deliberately bad model version for canary tests, made by our own code from a good one."""

from __future__ import annotations

from pathlib import Path

import onnx

from modelops.demo.models import add_runtime_guard, rename_input


def poisoned_copy(model_file: Path, out_dir: Path, limit: float = 50.0) -> Path:
    """`model_file` plus a bug on inputs whose first feature exceeds `limit` (a genuine run-time
    failure: the predictor answers 500), saved as `out_dir/model.onnx`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(add_runtime_guard(onnx.load(str(model_file)), limit), str(out_dir / "model.onnx"))
    return out_dir



def renamed_copy(model_file: Path, out_dir: Path, new_name: str = "features") -> Path:
    """`model_file` with its first input renamed (`rename_input`), saved as `out_dir/model.onnx`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(rename_input(onnx.load(str(model_file)), new_name), str(out_dir / "model.onnx"))
    return out_dir
