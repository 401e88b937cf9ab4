"""Pick where and in what precision a pipeline runs: cuda, then mps, then the CPU; keep the memory a CPU run frees."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

import torch

from negprompt.errors import InputError

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3



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


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc (once per process) to keep the memory a denoising step frees for the next step, instead
    of handing blocks over 128 KB back to the system and faulting them in again, zeroed, a step later. On the CPU a
    UNet batch's activations are such blocks: the embedded model's 9-comparison batch faulted in about 40,000 pages
    per step, and none once kept, and ran faster (``python benchmarks/batching.py`` measures it, kept and not, side
    by side). The cost: the process keeps up to its largest step's memory (blocks up to 32 MB; larger ones are
    still returned). PyTorch's CPU tuning guides reach the same end by preloading jemalloc or tcmalloc; this needs
    no preload. False (and nothing changed) without glibc, or with ``NEGPROMPT_KEEP_MEMORY=0``."""
    if os.environ.get("NEGPROMPT_KEEP_MEMORY", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _mallopt({_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20})


def _mallopt(values: dict[int, int]) -> bool:
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("not glibc: the memory a step frees goes back to the system")
        return False
    return all(mallopt(param, value) == 1 for param, value in values.items())
