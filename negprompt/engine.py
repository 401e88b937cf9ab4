"""The comparison engine: one positive prompt against several negative prompts, from one starting noise.

    from negprompt import load_pipeline, compare
    pipe = load_pipeline()
    result = compare(pipe, "portrait photo of a man", ["mustache", "glasses"], seed=1, steps=20, guidance_scale=7)
    result.grid().save("grid.png")

Every row of the result is one seed: its baseline (the empty negative prompt, what a pipeline does with no
negative) then one cell per negative prompt, all denoised from the same latent, drawn exactly as diffusers draws it
from ``torch.Generator("cpu").manual_seed(seed)``. So a cell equals
``pipe(prompt, negative_prompt=negative, generator=torch.Generator("cpu").manual_seed(seed), ...)``, and anyone can
reproduce it without negprompt.

All cells and both guidance branches go through the UNet in one batch per step. We write this loop ourselves
instead of calling the pipeline because a pipeline call cannot mix an SDXL zero-embedding baseline with text
negatives, cannot split into memory-sized chunks or stream previews of every cell, and draws a different noise per
image; the loop reuses the pipeline's own parts (text encoding, scheduler, UNet, VAE, image processor) unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from negprompt import guidance
from negprompt.acceleration import bucketed_unet, unet_buckets
from negprompt.comparison import Cell, Comparison, Settings
from negprompt.infotext import format_infotext
from negprompt.loading import model_label
from negprompt.prompts import comparison_warnings
from negprompt.schedulers import DEFAULT, is_stochastic, make_scheduler, sampler_label

MAX_CELLS = 64  # default cap on images per comparison (rows x (negatives + 1))
MAX_STEPS = 200
MAX_SEED = 2**63 - 1
BASELINES = ("empty", "zeros")

# Largest batch (in cells) known to fit, per (pipeline, height, width), learned from out-of-memory errors.
_safe_batch: dict[tuple[int, int, int], int] = {}

StepCallback = Callable[[int, int, "list[Image.Image] | None"], None]


@dataclass
class _Job:
    """One chunk of cells denoised together."""

    negative_embeds: torch.Tensor  # (B, tokens, dim)
    positive_embeds: torch.Tensor  # (B, tokens, dim)
    negative_pooled: torch.Tensor | None  # (B, dim), SDXL only
    positive_pooled: torch.Tensor | None
    latents: torch.Tensor  # (B, C, h, w), unscaled starting noise
    seeds: list[int]


def compare(
    pipe,
    prompt: str,
    negatives: Sequence[str] | str,
    *,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    scheduler: str = DEFAULT,
    baseline: str = "auto",
    max_batch: int | None = None,
    max_cells: int = MAX_CELLS,
    model_name: str | None = None,
    callback: StepCallback | None = None,
    preview_every: int = 0,
) -> Comparison:
    """Run ``prompt`` with no negative (the baseline) and with each of ``negatives``, for each seed.

    ``seed`` or ``seeds`` (one row per seed; default seed 0). ``baseline``: "empty" (the empty prompt, the default
    for SD 1.x/2.x) or "zeros" (zero embeddings, what SDXL does with no negative and its default). ``max_batch``: at
    most this many cells per UNet batch (None: all, halved automatically on out-of-memory); results do not depend
    on it. ``callback(done_steps, total_steps, previews)`` is called after every step, with preview images of
    every cell every ``preview_every`` steps (else None); an exception raised by the callback stops the comparison
    and propagates (that is how a front end cancels an abandoned run).
    """
    # 1. Check inputs
    negatives = [negatives] if isinstance(negatives, str) else list(negatives)
    rows = _check_inputs(prompt, negatives, seed, seeds, steps, guidance_scale, baseline, max_cells)
    default_side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height = default_side if height is None else height
    width = default_side if width is None else width
    _check_size(pipe, height, width)
    if baseline == "auto":
        baseline = "zeros" if _is_sdxl(pipe) else "empty"
    distilled = pipe.unet.config.time_cond_proj_dim is not None
    settings = Settings(
        prompt=prompt, negatives=tuple(negatives), seeds=tuple(rows), steps=steps, guidance_scale=guidance_scale,
        height=height, width=width, scheduler=sampler_label(make_scheduler(pipe.scheduler, scheduler)),
        model=model_name or model_label(getattr(pipe, "name_or_path", None)), baseline=baseline,
    )
    warnings = comparison_warnings(_tokenizer(pipe), prompt, negatives, guidance_scale, distilled)
    timings: dict[str, float] = {}

    # 2. Encode every distinct text once
    start = time.perf_counter()
    texts = [prompt, *negatives] + ([""] if baseline == "empty" else [])
    embeds, pooled = _encode(pipe, list(dict.fromkeys(texts)))
    timings["encode_s"] = time.perf_counter() - start

    # 3. Starting noise, one latent per row, shared by every cell of the row
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    dtype = embeds[prompt].dtype
    row_latents = {s: torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=dtype) for s in rows}

    # 4. Denoise every cell, in chunks of at most max_batch cells
    cell_negatives = [None if baseline == "zeros" else "", *negatives]
    plan = [(s, n) for s in rows for n in cell_negatives]
    start = time.perf_counter()
    latents, batch_used = _denoise_all(pipe, plan, embeds, pooled, row_latents, settings, scheduler, max_batch,
                                       callback, preview_every)
    timings["denoise_s"] = time.perf_counter() - start

    # 5. Decode
    start = time.perf_counter()
    images = [img for i in range(0, len(plan), batch_used) for img in _decode(pipe, latents[i:i + batch_used])]
    timings["decode_s"] = time.perf_counter() - start
    timings["total_s"] = sum(timings.values())

    cells = []
    for index, ((row_seed, negative), image) in enumerate(zip(plan, images)):
        cells.append(Cell(
            index=index, row=index // len(cell_negatives), negative_prompt=negative or "", is_baseline=negative in (None, ""),
            image=image, seed=row_seed, initial_latent_sha256=_sha256(row_latents[row_seed]),
            parameters=format_infotext(settings, row_seed, negative or ""),
        ))
    return Comparison(settings=settings, cells=cells, warnings=warnings, timings=timings, max_batch_used=batch_used)


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def _check_inputs(prompt, negatives, seed, seeds, steps, guidance_scale, baseline, max_cells):
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt={prompt!r} must be a non-empty string")
    for i, negative in enumerate(negatives):
        if not isinstance(negative, str):
            raise ValueError(f"negatives[{i}]={negative!r} must be a string")
        if not negative.strip():
            raise ValueError(f"negatives[{i}]={negative!r} is empty; the baseline cell already shows the empty "
                             "negative prompt")
    if seed is not None and seeds is not None:
        raise ValueError(f"give seed={seed!r} or seeds={list(seeds)!r}, not both")
    rows = list(seeds) if seeds is not None else [0 if seed is None else seed]
    if not rows:
        raise ValueError("seeds=[] must name at least one seed")
    for s in rows:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise ValueError(f"seed={s!r} must be an integer from 0 to {MAX_SEED}")
    if len(set(rows)) != len(rows):
        raise ValueError(f"seeds={rows!r} repeats a seed")
    cells = len(rows) * (len(negatives) + 1)
    if cells > max_cells:
        raise ValueError(f"{len(rows)} seed(s) x ({len(negatives)} negatives + baseline) = {cells} images is more "
                         f"than max_cells={max_cells}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps={steps!r} must be an integer from 1 to {MAX_STEPS}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or not 0 <= guidance_scale <= 100:
        raise ValueError(f"guidance_scale={guidance_scale!r} must be a finite number from 0 to 100")
    if baseline not in ("auto", *BASELINES):
        raise ValueError(f"baseline={baseline!r} must be 'auto', 'empty' or 'zeros'")
    return rows


def _check_size(pipe, height, width):
    factor = pipe.vae_scale_factor
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise ValueError(f"{name}={value!r} must be a positive multiple of {factor} (the VAE's scale factor)")
        if value > 4096:
            raise ValueError(f"{name}={value!r} is larger than 4096")


# ---------------------------------------------------------------------------------------------------------------
# Model parts


def _is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def _tokenizer(pipe):
    return pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2


@torch.no_grad()
def _encode(pipe, texts: list[str]):
    """Text -> embeddings (and SDXL's pooled embeddings), through the pipeline's own ``encode_prompt``."""
    device = pipe._execution_device
    if _is_sdxl(pipe):
        embeds, _, pooled, _ = pipe.encode_prompt(texts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return dict(zip(texts, embeds.split(1))), dict(zip(texts, pooled.split(1)))
    embeds, _ = pipe.encode_prompt(texts, device, 1, False)
    return dict(zip(texts, embeds.split(1))), None


def _sha256(latent: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(latent.float().contiguous().numpy().tobytes()).hexdigest()


@torch.no_grad()
def _decode(pipe, latents: torch.Tensor) -> list[Image.Image]:
    vae = pipe.vae
    latents = latents.to(vae.dtype)
    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    return pipe.image_processor.postprocess(vae.decode(latents).sample, output_type="pil")


# ---------------------------------------------------------------------------------------------------------------
# Denoising


def _denoise_all(pipe, plan, embeds, pooled, row_latents, settings, scheduler, max_batch, callback, preview_every):
    """Denoise every (seed, negative) cell of ``plan``; returns final latents and the batch size used."""
    key = (id(pipe), settings.height, settings.width)
    batch = min(len(plan), max_batch or len(plan), _safe_batch.get(key, len(plan)))
    device = pipe._execution_device
    while True:
        try:
            progress = _Progress(callback, settings.steps * math.ceil(len(plan) / batch), preview_every)
            outputs = []
            for i in range(0, len(plan), batch):
                job = _make_job(plan[i:i + batch], settings.prompt, embeds, pooled, row_latents, device)
                outputs.append(_denoise(pipe, job, settings, scheduler, progress))
            return torch.cat(outputs), batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            _safe_batch[key] = batch
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _make_job(chunk, prompt, embeds, pooled, row_latents, device) -> _Job:
    def stack(table, text_of):
        rows = [torch.zeros_like(table[prompt]) if t is None else table[t] for t in map(text_of, chunk)]
        return torch.cat(rows).to(device)

    return _Job(
        negative_embeds=stack(embeds, lambda c: c[1]),
        positive_embeds=stack(embeds, lambda c: prompt),
        negative_pooled=stack(pooled, lambda c: c[1]) if pooled is not None else None,
        positive_pooled=stack(pooled, lambda c: prompt) if pooled is not None else None,
        latents=torch.cat([row_latents[s] for s, _ in chunk]).to(device),
        seeds=[s for s, _ in chunk],
    )


class _Stepper:
    """The scheduler(s) of one chunk. Deterministic schedulers step the whole batch at once; stochastic ones get one
    scheduler and one generator per cell, seeded like diffusers seeds a single-image call (the generator has drawn
    the starting latent before it draws step noise), so every cell gets its own single-call noise."""

    def __init__(self, pipe, name, job: _Job, steps: int):
        device = pipe._execution_device
        first = make_scheduler(pipe.scheduler, name)
        if is_stochastic(first):
            self.groups = []
            for i, seed in enumerate(job.seeds):
                generator = torch.Generator("cpu").manual_seed(seed)
                torch.randn(job.latents[i:i + 1].shape, generator=generator, dtype=job.latents.dtype)
                self.groups.append((make_scheduler(pipe.scheduler, name), slice(i, i + 1), generator))
        else:
            self.groups = [(first, slice(None), None)]
        for scheduler, _, _ in self.groups:
            scheduler.set_timesteps(steps, device=device)
        self.scheduler = self.groups[0][0]
        self.timesteps = self.scheduler.timesteps
        self.init_noise_sigma = self.scheduler.init_noise_sigma

    def scale(self, latents, t):
        return torch.cat([s.scale_model_input(latents[sl], t) for s, sl, _ in self.groups])

    def step(self, eps, t, latents):
        out = []
        for scheduler, sl, generator in self.groups:
            kwargs = {"generator": generator} if generator is not None else {}
            out.append(scheduler.step(eps[sl], t, latents[sl], return_dict=False, **kwargs)[0])
        return torch.cat(out)


@torch.no_grad()
def _denoise(pipe, job: _Job, settings: Settings, scheduler_name: str, progress: "_Progress") -> torch.Tensor:
    unet = pipe.unet
    stepper = _Stepper(pipe, scheduler_name, job, settings.steps)
    g = settings.guidance_scale
    active = guidance.guidance_is_active(g, unet.config.time_cond_proj_dim)
    latents = job.latents * stepper.init_noise_sigma
    batch = latents.shape[0]

    if active:
        text = torch.cat([job.negative_embeds, job.positive_embeds])
    else:
        text = job.positive_embeds
    added = None
    if job.positive_pooled is not None:
        pooled = torch.cat([job.negative_pooled, job.positive_pooled]) if active else job.positive_pooled
        time_ids = _sdxl_time_ids(pipe, settings, pooled.dtype).to(latents.device)
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(pooled.shape[0], 1)}
    timestep_cond = None
    if unet.config.time_cond_proj_dim is not None:
        timestep_cond = pipe.get_guidance_scale_embedding(
            torch.tensor(g - 1).repeat(batch), embedding_dim=unet.config.time_cond_proj_dim
        ).to(device=latents.device, dtype=latents.dtype)

    buckets = unet_buckets(pipe)  # batch sizes a compiled UNet was built for (None: not compiled)
    for t in stepper.timesteps:
        model_input = stepper.scale(latents, t)
        unet_input = torch.cat([model_input] * 2) if active else model_input
        out = bucketed_unet(unet, unet_input, t, text, buckets=buckets, timestep_cond=timestep_cond,
                            added_cond_kwargs=added)
        eps = guidance.classifier_free_guidance(*out.chunk(2), g) if active else out
        progress.step(lambda: _preview(pipe, stepper.scheduler, model_input, eps, t))
        latents = stepper.step(eps, t, latents)
    return latents


def _sdxl_time_ids(pipe, settings: Settings, dtype) -> torch.Tensor:
    size = (settings.height, settings.width)
    projection = pipe.text_encoder_2.config.projection_dim
    return pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection)


def _preview(pipe, scheduler, model_input, eps, t) -> list[Image.Image]:
    """Decode the clean image each cell is heading for (its x0 estimate) at this step."""
    alpha_bar = scheduler.alphas_cumprod[int(round(float(t)))]
    x0 = guidance.predicted_original(model_input, eps, alpha_bar, scheduler.config.prediction_type)
    return _decode(pipe, x0.to(model_input.dtype))


class _Progress:
    """Counts steps over all chunks and hands previews to the callback every ``every`` steps."""

    def __init__(self, callback: StepCallback | None, total: int, every: int):
        self.callback, self.total, self.every, self.done = callback, total, every, 0

    def step(self, make_preview: Callable[[], list[Image.Image]]) -> None:
        self.done += 1
        if self.callback is None:
            return
        wants_preview = self.every > 0 and (self.done % self.every == 0) and self.done < self.total
        self.callback(self.done, self.total, make_preview() if wants_preview else None)
