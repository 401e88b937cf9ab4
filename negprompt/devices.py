"""Pick where and in what precision a pipeline runs: cuda, then mps, then the CPU."""

from __future__ import annotations

import torch


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """The requested device, or the best one present: cuda, then mps, then cpu."""
    if requested is not None:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, requested: torch.dtype | str | None = None) -> torch.dtype:
    """Half precision on a GPU (bfloat16 where the card supports it, else float16), float32 on the CPU.

    bfloat16 is preferred on CUDA because it has float32's range: SDXL's VAE overflows in float16, and bfloat16
    runs at the same speed on every card that supports it.
    """
    if requested is not None:
        return getattr(torch, requested) if isinstance(requested, str) else requested
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32
