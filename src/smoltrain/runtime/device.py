"""Device and precision choice."""

from __future__ import annotations

import torch

from smoltrain.errors import ConfigError


def device_type(requested: str) -> str:
    """``cuda``, ``mps`` or ``cpu``: what ``requested`` names (``auto`` takes cuda, then mps, then cpu),
    checked against what this machine has. The process group's backend follows it, before ranks are known."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        kind = torch.device(requested).type
    except RuntimeError:
        raise ConfigError(f"device '{requested}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but MPS is not available; use device=auto or device=cpu")
    return kind


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """The device of :func:`device_type`; a CUDA device without an index is this process's local rank's."""
    kind = device_type(requested)
    device = torch.device(requested) if requested != "auto" else torch.device(kind)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on CUDA and fp32 elsewhere (bf16 matmuls are ~100x slower on most CPUs)."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def widest_float(device: torch.device) -> torch.dtype:
    """The most precise float dtype ``device`` computes in: float64, except on Apple's MPS, which has none (the
    reference's float64 stablemax loss falls back to float32 there, NaN-free thanks to the guarded stablemax)."""
    return torch.float32 if device.type == "mps" else torch.float64


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
