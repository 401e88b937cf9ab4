"""Pick where and in what precision a pipeline runs: cuda, then mps, then the CPU."""

from __future__ import annotations

import torch

from negprompt.errors import InputError


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """The requested device, or the best one present: cuda, then mps, then cpu. A device that does not exist or is
    not present raises ``InputError`` (argument ``"device"``)."""
    if requested is not None:
        try:
            device = torch.device(requested)
        except (RuntimeError, TypeError):
            raise InputError("device", requested, f"device={requested!r} is not a device (cuda, mps or cpu)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device", requested, f"device={requested!r}: no CUDA GPU is available here")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError("device", requested, f"device={requested!r}: there are only "
                                                  f"{torch.cuda.device_count()} CUDA GPU(s)")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError("device", requested, f"device={requested!r}: Apple's MPS is not available here")
        if device.type not in ("cuda", "mps", "cpu"):
            raise InputError("device", requested, f"device={requested!r}: negprompt runs on cuda, mps or cpu")
        return device
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
        dtype = getattr(torch, requested, None) if isinstance(requested, str) else requested
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise InputError("dtype", requested, f"dtype={requested!r} must be float32, float16 or bfloat16")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32
