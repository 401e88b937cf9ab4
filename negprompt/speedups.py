"""GPU speed levers for a loaded pipeline, applied once at load time and never per request.

    from negprompt.loading import load
    from negprompt.speedups import apply_speedups, warmup, bucket
    loaded = load(device="cuda")                 # applies the device's default levers once, at load time
    loaded.runtime.speedups                      # what was applied, what was skipped and why
    warmup(loaded.pipe, sizes=[bucket(2 * cells) for cells in range(2, 10)], buckets=loaded.runtime.buckets)

    report = apply_speedups(pipe, Levers(fuse_qkv=True))          # on a pipeline you built yourself
    report = apply_speedups(pipe, Levers(compile=True), report)   # adds a lever; the report accumulates

Levers (each one switchable, each a no-op where it does not apply; all off on the CPU by default):

- ``channels_last``: UNet and VAE weights in NHWC, which cuDNN's convolutions prefer on tensor-core GPUs.
- ``fuse_qkv``: one matmul for q, k and v in self-attention (k and v in cross-attention), UNet and VAE.
- SDPA: diffusers already runs attention through ``torch.nn.functional.scaled_dot_product_attention`` (flash or
  memory-efficient kernels on CUDA); ``apply_speedups`` checks it and records which processors are in use.
- ``compile``: ``torch.compile`` of the UNet (``compile_mode``: "default", "reduce-overhead" = CUDA graphs,
  "max-autotune"). Compiled graphs are specialised to the batch size, so the engine pads every UNet batch up to
  ``bucket(n)`` (a few fixed sizes) with copies and drops the padding: a new number of negatives then reuses a graph
  compiled at start-up by ``warmup`` instead of recompiling in the middle of a request. Off on ZeroGPU (the
  ``SPACES_ZERO_GPU`` environment variable), which does not allow ``torch.compile``.

Half precision is chosen by ``negprompt.devices.pick_dtype``, one UNet batch per step by the engine. Nothing here
skips or approximates the negative branch: every lever leaves each image unchanged up to rounding.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# UNet batch sizes (samples: 2 per cell with guidance) that compiled graphs are made for. Every even size up to 18
# (1 to 8 negatives plus the baseline, with guidance) pads nothing; beyond that the padding stays under a third.
BUCKETS: tuple[int, ...] = (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 24, 32, 48, 64, 96, 128)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# (FLUX's processors go through diffusers' attention dispatch, which runs SDPA unless another backend is chosen.)
SDPA_PROCESSORS = ("AttnProcessor2_0", "FusedAttnProcessor2_0", "JointAttnProcessor2_0", "FusedJointAttnProcessor2_0",
                   "FluxAttnProcessor", "FluxAttnProcessor2_0")


@dataclass
class Levers:
    """Which speed levers to apply. ``Levers.for_device(device)`` gives the defaults."""

    channels_last: bool = False  # UNet and VAE in channels_last memory format
    fuse_qkv: bool = False  # fused QKV projections in the UNet's and VAE's attention
    compile: bool = False  # torch.compile the UNet (the engine must then pad batches to bucket sizes)
    compile_mode: str = "max-autotune-no-cudagraphs"  # a torch.compile mode, see COMPILE_MODES
    buckets: tuple[int, ...] = BUCKETS  # UNet batch sizes compiled graphs are made for

    @classmethod
    def for_device(cls, device: torch.device | str) -> "Levers":
        """channels_last and fused QKV on CUDA, nothing elsewhere (on the CPU and MPS they do not pay).

        torch.compile is opt-in (``NEGPROMPT_COMPILE=1``, never on ZeroGPU): it costs a compile per batch bucket at
        start-up and its GPU speed-up has not been measured by this project yet, so it is not forced on anyone."""
        on_gpu = torch.device(device).type == "cuda"
        wants_compile = os.environ.get("NEGPROMPT_COMPILE", "") == "1"
        return cls(channels_last=on_gpu, fuse_qkv=on_gpu, compile=on_gpu and wants_compile and not on_zero_gpu())

    def __post_init__(self):
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r} must be one of {', '.join(COMPILE_MODES)}")
        if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or self.buckets[0] < 1:
            raise ValueError(f"buckets={self.buckets!r} must be distinct positive sizes in increasing order")


def on_zero_gpu() -> bool:
    """True on a Hugging Face ZeroGPU Space, where torch.compile is not allowed."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def bucket(n: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The UNet batch size that ``n`` samples are padded to: the smallest bucket >= n; above the largest bucket, the
    next multiple of it (the engine chunks batches that large anyway)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer")
    for size in buckets:
        if size >= n:
            return size
    return math.ceil(n / buckets[-1]) * buckets[-1]


def pad_batch(tensor: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """``tensor`` with its first dimension padded to ``size`` rows by repeating its last row (None stays None)."""
    if tensor is None or tensor.shape[0] == size:
        return tensor
    if tensor.shape[0] > size:
        raise ValueError(f"cannot pad a batch of {tensor.shape[0]} down to {size}")
    filler = tensor[-1:].expand(size - tensor.shape[0], *tensor.shape[1:])
    return torch.cat([tensor, filler])


def bucketed_unet(unet, sample, timestep, encoder_hidden_states, *, buckets: Sequence[int] | None = BUCKETS,
                  **kwargs) -> torch.Tensor:
    """``unet(sample, timestep, encoder_hidden_states, **kwargs, return_dict=False)[0]`` run at the batch size
    ``bucket(len(sample))``: every batch-sized input is padded with copies of its last row, and the padding rows
    are dropped from the output. Rows do not interact in a UNet, so the kept rows are the unpadded result (up to
    the rounding of a different kernel choice). ``buckets=None`` runs unpadded.

    The timestep goes in as a float32 tensor on the sample's device whatever the scheduler gives (the UNet makes it
    float32 anyway), so one compiled graph serves every scheduler."""
    n = sample.shape[0]
    timestep = torch.as_tensor(timestep).to(device=sample.device, dtype=torch.float32)
    size = n if buckets is None else bucket(n, buckets)
    if size == n:
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False, **kwargs)[0]

    def pad(value):
        if isinstance(value, dict):
            return {k: pad(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
            return pad_batch(value, size)
        return value

    out = unet(pad(sample), pad(timestep), encoder_hidden_states=pad(encoder_hidden_states), return_dict=False,
               **{k: pad(v) for k, v in kwargs.items()})[0]
    return out[:n]


def attention_processors(model) -> dict[str, int]:
    """How many attention layers of ``model`` use each processor class, e.g. {"AttnProcessor2_0": 16}. A processor
    that wraps another (``negprompt.attention.CaptureProcessor``, which calls it unchanged) counts as the one it
    wraps."""
    counts: dict[str, int] = {}
    for processor in getattr(model, "attn_processors", {}).values():
        while hasattr(processor, "inner"):
            processor = processor.inner
        name = type(processor).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def uses_sdpa(model) -> bool:
    """True when every attention layer of ``model`` runs through torch's scaled_dot_product_attention."""
    counts = attention_processors(model)
    return bool(counts) and all(name in SDPA_PROCESSORS for name in counts)


def new_report() -> dict:
    """An empty speed-lever report: nothing applied yet."""
    return {"applied": [], "skipped": {}, "buckets": None}


def apply_speedups(pipe, levers: Levers | None = None, report: dict | None = None) -> dict:
    """Apply ``levers`` (default: ``Levers.for_device`` of the pipeline's device) to ``pipe`` in place.

    Call it right after loading, before the pipeline is shared: it changes the pipeline's modules. ``report`` is
    what earlier calls on this pipeline returned (``loading.load`` keeps it in the pipeline's ``Runtime``): each
    lever is applied at most once, so a later call applies only levers not applied yet (a benchmark adds them one
    by one). Returns the updated report: what was applied, what was skipped and why, which attention processors run,
    and ``buckets``, the batch sizes the engine must pad UNet batches to (None: the UNet is not compiled).
    """
    report = report if report is not None else new_report()
    report.setdefault("applied", [])
    report.setdefault("skipped", {})
    report.setdefault("buckets", None)
    from negprompt.families import family_of

    levers = levers or Levers.for_device(pipe._execution_device)
    denoiser = family_of(pipe).denoiser
    models = {"unet" if denoiser is getattr(pipe, "unet", None) else "transformer": denoiser, "vae": pipe.vae}
    applied, skipped = report["applied"], report["skipped"]

    if levers.channels_last and "channels_last" not in applied:
        for model in models.values():
            model.to(memory_format=torch.channels_last)
        applied.append("channels_last")

    for name, model in models.items():
        if not levers.fuse_qkv or f"fuse_qkv:{name}" in applied:
            continue
        if not hasattr(model, "fuse_qkv_projections"):
            skipped[f"fuse_qkv:{name}"] = f"{type(model).__name__} has no fuse_qkv_projections"
            continue
        try:
            with torch.no_grad():
                model.fuse_qkv_projections()
        except ValueError as error:  # added KV projections (not in SD/SDXL) cannot be fused
            skipped[f"fuse_qkv:{name}"] = str(error)
            continue
        model.requires_grad_(False)
        applied.append(f"fuse_qkv:{name}")

    if levers.compile and report["buckets"] is None:
        if on_zero_gpu():
            skipped["compile"] = "SPACES_ZERO_GPU is set: ZeroGPU does not allow torch.compile"
        else:
            # Each bucket is one graph; allow them all without dynamo giving up and running eagerly.
            limit = max(torch._dynamo.config.recompile_limit, 2 * len(levers.buckets))
            torch._dynamo.config.recompile_limit = limit
            denoiser.compile(mode=levers.compile_mode, dynamic=False)
            applied.append(f"compile:{levers.compile_mode}")
            report["buckets"] = list(levers.buckets)

    report.update(
        device=str(pipe._execution_device),
        dtype=str(denoiser.dtype).removeprefix("torch."),
        attention={name: attention_processors(model) for name, model in models.items()},
        sdpa=all(uses_sdpa(model) for model in models.values()),
    )
    if not report["sdpa"]:
        log.warning("attention does not run through scaled_dot_product_attention: %s", report["attention"])
    return report


def example_unet_inputs(pipe, n: int, height: int,
                        width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Random UNet inputs of batch ``n`` shaped like the engine's: (sample, timestep, text embeddings, kwargs)."""
    config = pipe.unet.config
    device, dtype = pipe._execution_device, pipe.unet.dtype
    factor = pipe.vae_scale_factor
    sample = torch.randn(n, config.in_channels, height // factor, width // factor, device=device, dtype=dtype)
    text = torch.randn(n, 77, config.cross_attention_dim, device=device, dtype=dtype)
    kwargs = {}
    if config.addition_embed_type == "text_time":
        pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(n, pooled_dim, device=device, dtype=dtype),
                                       "time_ids": time_ids.repeat(n, 1)}
    if config.time_cond_proj_dim is not None:
        kwargs["timestep_cond"] = torch.randn(n, config.time_cond_proj_dim, device=device, dtype=dtype)
    return sample, torch.tensor(999.0), text, kwargs


@torch.no_grad()
def warmup(pipe, sizes: Iterable[int], height: int | None = None, width: int | None = None, *,
           buckets: Sequence[int] | None = None) -> dict[int, float]:
    """Run the UNet once at each batch size in ``sizes`` (rounded to ``buckets``, the report's) at ``height`` x
    ``width`` (default: the model's size), so that a compiled UNet compiles every bucket now, not during a request.
    Returns seconds per bucket (compile time included)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = height or size, width or size
    device = pipe._execution_device
    seconds = {}
    for n in sorted({bucket(s, buckets) if buckets else s for s in sizes}):
        sample, t, text, kwargs = example_unet_inputs(pipe, n, height, width)
        start = time.perf_counter()
        bucketed_unet(pipe.unet, sample, t, text, buckets=buckets, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[n] = time.perf_counter() - start
        log.info("warm-up: UNet batch %d at %dx%d took %.2f s", n, width, height, seconds[n])
    return seconds
