"""Execution provider selection: a GPU request never silently runs on the CPU."""

from __future__ import annotations

import onnxruntime as ort

from ..errors import DeviceUnavailable, InvalidSpec

DEVICES = ("auto", "cpu", "cuda")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def select_providers(device: str, available: list[str] | None = None) -> list[str]:
    """Providers in priority order for `device`.

    auto: TensorRT/CUDA when this onnxruntime build has them, else CPU.
    cuda: TensorRT/CUDA or `DeviceUnavailable` (the caller fails readiness).
    """
    if device not in DEVICES:
        raise InvalidSpec("device", f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = list(ort.get_available_providers() if available is None else available)
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and not gpu:
        raise DeviceUnavailable(
            "a GPU was requested (--device cuda) but this onnxruntime build has no CUDA or TensorRT "
            f"provider (available: {', '.join(available)}); install onnxruntime-gpu "
            "(the `gpu` extra) or run with --device cpu")
    return gpu + ["CPUExecutionProvider"]


def check_session_providers(session: ort.InferenceSession, device: str) -> None:
    """After session creation: a CUDA request must have got a GPU provider, not a CPU fallback."""
    if device == "cuda" and not any(p in GPU_PROVIDERS for p in session.get_providers()):
        raise DeviceUnavailable(
            "a GPU was requested but onnxruntime could not initialise CUDA/TensorRT "
            f"(session providers: {session.get_providers()}); check the driver, CUDA libraries "
            "and nvidia.com/gpu resources")
