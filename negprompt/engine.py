"""The comparison engine: every cell of a comparison spec, denoised from its row's noise, in one UNet batch per step.

    from negprompt import load_pipeline, compare
    pipe = load_pipeline()
    result = compare(pipe, "portrait photo of a man", ["mustache", "glasses"], seed=1, steps=20, guidance_scale=7)
    result.grid().save("grid.png")

    result.save("outputs/run1")
    from negprompt.plan import ComparisonSpec
    spec = ComparisonSpec.from_dict(json.load(open("outputs/run1/manifest.json"))["spec"])
    again = compare(pipe, spec)   # the same images, pixel for pixel, on the same machine

``compare`` takes either a ``ComparisonSpec`` (``negprompt.plan``: any set of cells, each with its seed, positive,
negative, guidance method and window) or, as a convenience, a prompt and a list of negatives, which it turns into
the classic spec (``plan.negatives_spec``: one row per seed, its baseline, one cell per negative and optionally
another positive prompt) before running it the same way. ``run(pipe, spec)`` is the spec path alone.

Every cell with seed ``s`` starts from the latent diffusers draws from ``torch.Generator("cpu").manual_seed(s)``, so
a plain CFG cell equals ``pipe(prompt, negative_prompt=negative, generator=torch.Generator("cpu").manual_seed(s))``
and anyone can reproduce it without negprompt. Per step the engine stacks one UNet batch row per (cell, branch),
reading each row's text embedding from a table in which every distinct text is encoded once (a window only picks
which text a cell's "negative" branch reads at this step), runs the UNet once, splits the output back and lets each
cell's guidance method (``negprompt.guidance``) combine its own rows.

We write this loop ourselves instead of calling the pipeline because a pipeline call cannot mix an SDXL
zero-embedding baseline with text negatives, guidance methods or windows per image, cannot split into memory-sized
chunks or stream previews of every cell, and draws a different noise per image; the loop reuses the pipeline's own
parts (text encoding, scheduler, UNet, VAE, image processor) unchanged.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, replace

import torch
from PIL import Image

from negprompt import attention, guidance, reading, weighting
from negprompt.comparison import Cell, Comparison, Settings
from negprompt.embeddings import prompt_text
from negprompt.errors import LIMITS, InputError
from negprompt.guidance import BRANCHES, GuidanceMethod
from negprompt.infotext import cell_infotext
from negprompt.loading import Loaded, additions_of, model_label, model_source, runtime_of
from negprompt.plan import BASELINES, CellSpec, ComparisonSpec, check_int, check_text, negatives_spec
from negprompt.prompts import spec_warnings
from negprompt.schedulers import DEFAULT, is_stochastic, make_scheduler, sampler_label, scheduler_names
from negprompt.speedups import bucketed_unet

MAX_CELLS = LIMITS.max_cells  # default cap on images per comparison
MAX_STEPS = LIMITS.max_steps
MAX_SEED = LIMITS.max_seed

StepCallback = Callable[[int, int, "list[Image.Image] | None"], None]


def compare(
    pipe,
    prompt: str | ComparisonSpec,
    negatives: Sequence[str] | str = (),
    *,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    scheduler: str = DEFAULT,
    baseline: str = "auto",
    other_positive: str | None = None,
    guidance_method: GuidanceMethod | None = None,
    max_batch: int | None = None,
    max_cells: int = MAX_CELLS,
    model_name: str | None = None,
    callback: StepCallback | None = None,
    preview_every: int = 0,
    attention_maps: bool = False,
    interrupt: Callable[[], None] | None = None,
) -> Comparison:
    """Run a comparison: ``compare(pipe, spec)`` runs a ``ComparisonSpec`` as it stands; ``compare(pipe, prompt,
    negatives, ...)`` runs ``prompt`` with no negative (the baseline) and with each of ``negatives``, for each seed.

    ``pipe``: a pipeline from ``load_pipeline`` (or the ``Loaded`` record of ``loading.load``). ``seed`` or ``seeds``
    (one row per seed; default seed 0). ``baseline``: "empty" (the empty prompt, the default for SD 1.x/2.x) or
    "zeros" (zero embeddings, what SDXL does with no negative and its default). ``other_positive``: one more cell
    per row running this positive prompt with no negative (the seed article's "... without mustache"), from the
    row's latent. ``guidance_method``: the method of every cell (default CFG). ``max_batch``: at most this many cells
    per UNet batch (None: all, halved automatically on out-of-memory); results do not depend on it.
    ``callback(done_steps, total_steps, previews)`` is called after every step, with preview images of every cell of
    the running chunk every ``preview_every`` steps (else None); an exception raised by the callback stops the
    comparison and propagates (that is how a front end cancels an abandoned run). ``attention_maps``: also capture,
    per cell, where its negative prompt's tokens were attended to (``negprompt.attention``; the images do not
    change), in ``result.attention_maps``. ``interrupt()`` is called inside every step, between the UNet's blocks,
    and before every VAE decode: an exception it raises stops the comparison there and propagates (a deadline or a
    cancel that cannot wait for a long step to end). Bad input raises ``InputError``.
    """
    if isinstance(prompt, ComparisonSpec):
        if negatives or other_positive is not None or seed is not None or seeds is not None:
            raise InputError("negatives", negatives, "with a ComparisonSpec, the cells come from the spec: give no "
                                                     "negatives, seeds or other_positive")
        return run(pipe, prompt, max_batch=max_batch, max_cells=max_cells, callback=callback,
                   preview_every=preview_every, attention_maps=attention_maps, interrupt=interrupt)
    negatives = [negatives] if isinstance(negatives, str) else list(negatives)
    rows = _check_convenience(prompt, negatives, seed, seeds, baseline, other_positive, scheduler, max_cells)
    diffusers_pipe = pipe.pipe if isinstance(pipe, Loaded) else pipe
    if baseline == "auto":
        baseline = default_baseline(diffusers_pipe)
    spec = negatives_spec(prompt, negatives, rows, model=model_name or model_source(diffusers_pipe), steps=steps,
                          guidance_scale=guidance_scale, height=height, width=width, sampler=scheduler,
                          baseline=baseline, other_positive=other_positive, guidance=guidance_method)
    return run(pipe, spec, max_batch=max_batch, max_cells=max_cells, callback=callback, preview_every=preview_every,
               attention_maps=attention_maps, interrupt=interrupt)


def run(pipe, spec: ComparisonSpec, *, max_batch: int | None = None, max_cells: int = MAX_CELLS,
        callback: StepCallback | None = None, preview_every: int = 0, attention_maps: bool = False,
        interrupt: Callable[[], None] | None = None) -> Comparison:
    """Make every cell of ``spec`` (see ``compare``). The result keeps the spec with the image size resolved and
    the chunking it used (``max_batch_used``), so ``run(pipe, result.spec, max_batch=result.max_batch_used)`` gives
    the same images again, pixel for pixel, on the same machine and libraries. Another chunking gives the same
    images up to the rounding of the UNet's kernels at another batch size (a CPU's kernels round differently at some
    batch sizes): at most a few 1/255 steps on a few pixels, never another picture."""
    with _interrupting(pipe.pipe if isinstance(pipe, Loaded) else pipe, interrupt):
        return _run(pipe, spec, max_batch=max_batch, max_cells=max_cells, callback=callback,
                    preview_every=preview_every, attention_maps=attention_maps, interrupt=interrupt)


def _run(pipe, spec: ComparisonSpec, *, max_batch, max_cells, callback, preview_every, attention_maps,
         interrupt) -> Comparison:
    # 1. Check inputs
    pipe, runtime = (pipe.pipe, pipe.runtime) if isinstance(pipe, Loaded) else (pipe, runtime_of(pipe))
    if not isinstance(spec, ComparisonSpec):
        raise InputError("spec", spec, f"spec={type(spec).__name__} must be a ComparisonSpec")
    check_int("max_cells", max_cells, 1, 10**6)
    spec.validate(max_cells)
    if max_batch is not None:
        check_int("max_batch", max_batch, 1, 10**6)
    check_int("preview_every", preview_every, 0, 10**6)
    if callback is not None and not callable(callback):
        raise InputError("callback", callback, "callback must be callable")
    if attention_maps and not attention.installed(pipe.unet):
        raise InputError("attention_maps", attention_maps, "this pipeline's UNet captures no attention maps: load it "
                                                           "with negprompt.loading.load (a compiled UNet has none)")
    if spec.sampler not in scheduler_names():
        raise InputError("sampler", spec.sampler, f"sampler={spec.sampler!r} is not one of {scheduler_names()}")
    default_side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    spec = replace(spec, height=spec.height or default_side, width=spec.width or default_side)
    _check_size(pipe, spec.height, spec.width)
    distilled = pipe.unet.config.time_cond_proj_dim is not None
    sampler = sampler_label(make_scheduler(pipe.scheduler, spec.sampler))
    settings = Settings.from_spec(spec, sampler, model_label(spec.model))
    warnings = spec_warnings(_tokenizer(pipe), spec, distilled)
    timings: dict[str, float] = {}

    # 2. Encode every distinct text once (under the a1111 reading: every text a cell reads at some step)
    start = time.perf_counter()
    table = _encode_spec(pipe, spec)
    timings["encode_s"] = time.perf_counter() - start

    # 3. Starting noise, one latent per seed, shared by every cell with that seed
    shape = (1, pipe.unet.config.in_channels, spec.height // pipe.vae_scale_factor,
             spec.width // pipe.vae_scale_factor)
    dtype = table.dtype
    seed_latents = {s: torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=dtype)
                    for s in spec.seeds}

    # 4. Denoise every cell, in chunks of whole cells
    start = time.perf_counter()
    capture = None
    if attention_maps:
        positions = [reading.token_positions(_tokenizer(pipe), prompt_text(pipe, c.negative, True))
                     if spec.reading_of(c) == "a1111"
                     else attention.token_positions(_tokenizer(pipe), prompt_text(pipe, c.negative, True))
                     for c in spec.cells]
        capture = attention.Capture(positions, shape[2], shape[3])
    with attention.capturing(capture) if capture is not None else nullcontext():
        latents, batch_used = _denoise_all(pipe, runtime, spec, table, seed_latents, max_batch, callback,
                                           preview_every, capture)
    timings["denoise_s"] = time.perf_counter() - start

    # 5. Decode
    start = time.perf_counter()
    n = len(spec.cells)
    images = []
    for i in range(0, n, batch_used):
        if interrupt is not None:
            interrupt()
        images.extend(_decode(pipe, latents[i:i + batch_used]))
    timings["decode_s"] = time.perf_counter() - start
    timings["total_s"] = sum(timings.values())

    hashes = {s: _sha256(latent) for s, latent in seed_latents.items()}
    cells = [Cell(index=i, row=c.row, spec=c, image=image, seed=c.seed, initial_latent_sha256=hashes[c.seed],
                  parameters=cell_infotext(settings, c, spec.reading_of(c)))
             for i, (c, image) in enumerate(zip(spec.cells, images))]
    return Comparison(spec=spec, settings=settings, cells=cells, warnings=warnings, timings=timings,
                      max_batch_used=batch_used, attention_maps=capture.maps() if capture is not None else [],
                      additions=additions_of(pipe))


def run_many(pipe, specs: Sequence[ComparisonSpec], *, max_cells: int = MAX_CELLS,
             callbacks: Sequence[StepCallback | None] | None = None, preview_every: int = 0,
             attention_maps: bool = False, interrupt: Callable[[], None] | None = None) -> list[Comparison]:
    """Run several specs that share their settings (model, steps, guidance scale, size, sampler, baseline) as ONE
    spec: every cell of every spec in one UNet batch per step. Returns one ``Comparison`` per spec, as ``run`` would
    return it for that spec alone: its own cells in its own order, rows, references, settings, infotexts, warnings
    and attention maps; only the timings (shared) and the batch used tell that it ran with others. The images are
    the spec's own up to the rounding of a larger batch (see ``run``). ``callbacks[k]`` gets spec k's step counts
    and its own cells' previews (previews only while one chunk holds every cell); ``max_cells`` caps the cells of
    all specs together."""
    pipe_parts = pipe.pipe if isinstance(pipe, Loaded) else pipe
    specs = list(specs)
    if not specs or not all(isinstance(s, ComparisonSpec) for s in specs):
        raise InputError("specs", specs, "run_many needs a list of one or more ComparisonSpecs")
    side = pipe_parts.unet.config.sample_size * pipe_parts.vae_scale_factor
    specs = [replace(s, height=s.height or side, width=s.width or side) for s in specs]
    shared = _shared_settings(specs[0])
    for k, spec in enumerate(specs):
        if _shared_settings(spec) != shared:
            raise InputError(f"specs[{k}]", _shared_settings(spec), f"specs[{k}] differs from specs[0] in a setting "
                                                                    "every cell of a batch shares")
    cells, offsets, rows = [], [], 0
    for spec in specs:
        offsets.append(len(cells))
        cells.extend(replace(c, row=c.row + rows,
                             reference=None if c.reference is None else c.reference + offsets[-1]) for c in spec.cells)
        rows += spec.rows
    merged = replace(specs[0], cells=tuple(cells), mode=specs[0].mode if len({s.mode for s in specs}) == 1
                     else "batch")

    def split(done, total, previews):
        for k, callback in enumerate(callbacks or ()):
            if callback is not None:
                whole = previews is not None and len(previews) == len(cells)
                own = previews[offsets[k]:offsets[k] + len(specs[k].cells)] if whole else None
                callback(done, total, own)

    result = run(pipe, merged, max_cells=max_cells, callback=split if callbacks else None,
                 preview_every=preview_every, attention_maps=attention_maps, interrupt=interrupt)
    tokenizer, distilled = _tokenizer(pipe_parts), pipe_parts.unet.config.time_cond_proj_dim is not None
    out = []
    for spec, offset in zip(specs, offsets):
        settings = Settings.from_spec(spec, result.settings.scheduler, result.settings.model)
        mine = result.cells[offset:offset + len(spec.cells)]
        own = [Cell(index=j, row=c.row, spec=c, image=m.image, seed=m.seed,
                    initial_latent_sha256=m.initial_latent_sha256, parameters=cell_infotext(settings, c))
               for j, (c, m) in enumerate(zip(spec.cells, mine))]
        maps = result.attention_maps[offset:offset + len(spec.cells)] if result.attention_maps else []
        out.append(Comparison(spec=spec, settings=settings, cells=own, warnings=spec_warnings(tokenizer, spec,
                                                                                              distilled),
                              timings=dict(result.timings), max_batch_used=result.max_batch_used,
                              attention_maps=maps))
    return out


def _shared_settings(spec: ComparisonSpec) -> tuple:
    """What every cell of one batch shares."""
    return (spec.model, spec.steps, spec.guidance_scale, spec.height, spec.width, spec.sampler, spec.baseline)


# ---------------------------------------------------------------------------------------------------------------
# Interrupting a long step

_INTERRUPT: ContextVar[Callable[[], None] | None] = ContextVar("negprompt_interrupt", default=None)


@contextmanager
def _interrupting(pipe, interrupt: Callable[[], None] | None):
    """While the block runs (in this thread), ``interrupt()`` is called before each block of the UNet and of the VAE
    decoder. The hooks are installed once per model, and do nothing when no interrupt is set."""
    if interrupt is None:
        yield
        return
    for module in (getattr(pipe, "unet", None), getattr(getattr(pipe, "vae", None), "decoder", None)):
        _install_checkpoints(module)
    token = _INTERRUPT.set(interrupt)
    try:
        yield
    finally:
        _INTERRUPT.reset(token)


def _checkpoint(*_args):
    interrupt = _INTERRUPT.get()
    if interrupt is not None:
        interrupt()


def _install_checkpoints(module) -> None:
    if module is None or getattr(module, "_negprompt_checkpoints", False) or hasattr(module, "_orig_mod"):
        return  # none, done already, or compiled (its graph stays whole)
    blocks = [*getattr(module, "down_blocks", ()), getattr(module, "mid_block", None),
              *getattr(module, "up_blocks", ())]
    for block in blocks:
        if isinstance(block, torch.nn.Module):
            block.register_forward_pre_hook(_checkpoint)
            for layer in (*getattr(block, "resnets", ()), *(getattr(block, "attentions", None) or ())):
                layer.register_forward_pre_hook(_checkpoint)
    module._negprompt_checkpoints = True


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def _check_convenience(prompt, negatives, seed, seeds, baseline, other_positive, scheduler, max_cells) -> list[int]:
    """The checks of ``compare``'s own arguments (the spec's ``validate`` checks the rest), named as its
    parameters are."""
    check_text("prompt", prompt)
    for i, negative in enumerate(negatives):
        if not isinstance(negative, str):
            raise InputError(f"negatives[{i}]", negative, f"negatives[{i}]={negative!r} must be a string")
        if not negative.strip():
            raise InputError(f"negatives[{i}]", negative, f"negatives[{i}]={negative!r} is empty; the baseline "
                                                          "cell already shows the empty negative prompt")
        check_text(f"negatives[{i}]", negative)
    if other_positive is not None:
        check_text("other_positive", other_positive)
    if seed is not None and seeds is not None:
        raise InputError("seeds", seeds, f"give seed={seed!r} or seeds={list(seeds)!r}, not both")
    rows = list(seeds) if seeds is not None else [0 if seed is None else seed]
    if not rows:
        raise InputError("seeds", [], "seeds=[] must name at least one seed")
    for i, s in enumerate(rows):
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            argument = "seed" if seeds is None else f"seeds[{i}]"
            raise InputError(argument, s, f"seed={s!r} must be an integer from 0 to {MAX_SEED}")
    if len(set(rows)) != len(rows):
        raise InputError("seeds", rows, f"seeds={rows!r} repeats a seed")
    check_int("max_cells", max_cells, 1, 10**6)
    cells = len(rows) * (len(negatives) + 1 + (other_positive is not None))
    if cells > max_cells:
        raise InputError("max_cells", cells, f"{len(rows)} seed(s) x ({len(negatives)} negatives + baseline) = "
                                             f"{cells} images is more than max_cells={max_cells}")
    if baseline not in ("auto", *BASELINES):
        raise InputError("baseline", baseline, f"baseline={baseline!r} must be 'auto', 'empty' or 'zeros'")
    if scheduler not in scheduler_names():
        raise InputError("scheduler", scheduler, f"scheduler={scheduler!r} is not one of {scheduler_names()}")
    return rows


def _check_size(pipe, height, width):
    factor = pipe.vae_scale_factor
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise InputError(name, value, f"{name}={value!r} must be a positive multiple of {factor} (the VAE's "
                                          "scale factor)")
        if value > LIMITS.max_side:
            raise InputError(name, value, f"{name}={value!r} is larger than {LIMITS.max_side}")


# ---------------------------------------------------------------------------------------------------------------
# Model parts


def _is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def default_baseline(pipe) -> str:
    """What a pipeline does with no negative prompt: "zeros" (zero embeddings) for SDXL, else "empty" (the empty
    prompt). ``pipe``: a diffusers pipeline or a ``Loaded`` record. What ``baseline="auto"`` resolves to."""
    return "zeros" if _is_sdxl(pipe.pipe if isinstance(pipe, Loaded) else pipe) else "empty"


def _tokenizer(pipe):
    return pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2


class _TextTable:
    """Every distinct text of a comparison, encoded once: key -> embeddings (1, tokens, dim) and, for SDXL, pooled
    embeddings (1, dim). A key is the text itself under the plain reading and ``("a1111", text)`` under the a1111
    reading (``text_key``); ``None`` reads as zero embeddings (SDXL's "no negative")."""

    def __init__(self, embeds: dict, pooled: dict | None):
        self.embeds, self.pooled = embeds, pooled
        first = next(iter(embeds.values()))
        self.dtype = first.dtype
        self._zeros = torch.zeros_like(first)
        self._zeros_pooled = torch.zeros_like(next(iter(pooled.values()))) if pooled else None

    def length(self, key) -> int:
        """Tokens in the embeddings of ``key`` (77 per chunk)."""
        return (self._zeros if key is None else self.embeds[key]).shape[1]

    def stack(self, keys: list[str | None], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        embeds = torch.cat([self._zeros if k is None else self.embeds[k] for k in keys]).to(device)
        if self.pooled is None:
            return embeds, None
        pooled = torch.cat([self._zeros_pooled if k is None else self.pooled[k] for k in keys]).to(device)
        return embeds, pooled


def text_key(how: str, text: str | None, step: int, steps: int):
    """The table key of ``text`` read ``how`` ("plain" or "a1111") at ``step`` of ``steps``: the text itself, or
    ``("a1111", the text it reads at that step once its prompt editing is resolved)``."""
    if how == "plain":
        return text
    return "a1111", None if text is None else reading.text_at(text, step, steps)


def _encode_spec(pipe, spec: ComparisonSpec) -> _TextTable:
    """The text table of ``spec``: its plain texts through the pipeline's ``encode_prompt``, every text its a1111
    cells read at any step through ``negprompt.weighting`` (padded to one number of chunks)."""
    plain = [c for c in spec.cells if spec.reading_of(c) == "plain"]
    a1111 = [c for c in spec.cells if spec.reading_of(c) == "a1111"]
    embeds: dict = {}
    pooled: dict | None = None
    if plain:
        texts = [c.positive for c in plain] + [c.negative for c in plain if c.negative is not None]
        texts = [t for t in dict.fromkeys(texts) if t != spec.baseline_negative]
        if spec.baseline_negative is not None:
            texts.append(spec.baseline_negative)  # last, as before specs: the batch order changes the rounding
        table = _encode(pipe, texts)
        embeds, pooled = dict(table.embeds), table.pooled
    if a1111:
        unconditional = spec.baseline_negative
        keys = dict.fromkeys(text_key("a1111", text, step, spec.steps) for c in a1111 for step in range(spec.steps)
                             for text in (c.positive, c.negative_at(step, spec.steps, unconditional)))
        texts = [text for _, text in keys if text is not None]
        read, read_pooled = weighting.encode_a1111(pipe, texts or [""])
        zeros = torch.zeros_like(next(iter(read.values())))
        embeds |= {("a1111", text): value for text, value in read.items()} | {("a1111", None): zeros}
        if read_pooled is not None:
            pooled = (pooled or {}) | {("a1111", text): value for text, value in read_pooled.items()}
            pooled[("a1111", None)] = torch.zeros_like(next(iter(read_pooled.values())))
    return _TextTable(embeds, pooled)


@torch.no_grad()
def _encode(pipe, texts: list[str]) -> _TextTable:
    """Text -> embeddings (and SDXL's pooled embeddings), through the pipeline's own ``encode_prompt`` (which
    writes out multi-vector negative embeddings; ``prompt_text`` lets it find their names in any case)."""
    device = pipe._execution_device
    prompts = [prompt_text(pipe, t) for t in texts]
    if _is_sdxl(pipe):
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return _TextTable(dict(zip(texts, embeds.split(1))), dict(zip(texts, pooled.split(1))))
    embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return _TextTable(dict(zip(texts, embeds.split(1))), None)


def _sha256(latent: torch.Tensor) -> str:
    return hashlib.sha256(latent.float().contiguous().numpy().tobytes()).hexdigest()


@torch.no_grad()
def _decode(pipe, latents: torch.Tensor, vae=None) -> list[Image.Image]:
    """Images from ``latents`` through ``vae`` (default: the pipeline's), with the pipeline's post-processing. An
    ``AutoencoderTiny`` (scaling factor 1, no latent statistics) takes the latents as the UNet makes them."""
    vae = vae if vae is not None else pipe.vae
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


def _denoise_all(pipe, runtime, spec: ComparisonSpec, table: _TextTable, seed_latents, max_batch, callback,
                 preview_every, capture=None):
    """Denoise every cell of ``spec``, in chunks of whole cells; returns final latents and the chunk size used.
    An out-of-memory error halves the chunk size and starts over; the size that fits is remembered with the
    pipeline (``runtime.safe_batch``), so the next comparison of that size starts there."""
    n = len(spec.cells)
    size = (spec.height, spec.width)
    batch = min(n, max_batch or n, runtime.safe_batch.get(size, n))
    device = pipe._execution_device
    while True:
        try:
            progress = _Progress(callback, spec.steps * math.ceil(n / batch), preview_every)
            outputs = []
            for i in range(0, n, batch):
                chunk = _Chunk(spec.cells[i:i + batch], seed_latents, device, offset=i)
                outputs.append(_denoise(pipe, runtime, chunk, spec, table, progress, capture))
            return torch.cat(outputs), batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            runtime.safe_batch[size] = batch
            if capture is not None:
                capture.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()


@dataclass
class _Chunk:
    """Cells denoised together, with their starting latents stacked (unscaled)."""

    cells: Sequence[CellSpec]
    seed_latents: dict
    device: torch.device
    offset: int = 0  # the index of its first cell in the spec

    def __post_init__(self):
        self.latents = torch.cat([self.seed_latents[c.seed] for c in self.cells]).to(self.device)
        self.seeds = [c.seed for c in self.cells]


@dataclass(frozen=True)
class _Layout:
    """Which UNet batch row holds which (cell, branch): rows are grouped by branch in ``BRANCHES`` order (for CFG:
    every cell's negative row, then every cell's positive row, as diffusers stacks them), cells in order within a
    branch. ``rows[j][branch]`` is cell j's row of that branch."""

    order: tuple[tuple[int, str], ...]  # (cell, branch) per batch row
    rows: tuple[dict[str, int], ...]  # per cell: branch -> batch row

    @classmethod
    def of(cls, cells: Sequence[CellSpec], active: bool) -> _Layout:
        wanted = [set(c.guidance.branches) if active else {"positive"} for c in cells]
        order = tuple((j, b) for b in BRANCHES for j in range(len(cells)) if b in wanted[j])
        rows: list[dict[str, int]] = [{} for _ in cells]
        for k, (j, b) in enumerate(order):
            rows[j][b] = k
        return cls(order, tuple(rows))

    def text_keys(self, cells: Sequence[CellSpec], step: int, steps: int, unconditional: str | None,
                  readings: Sequence[str]) -> list:
        """The table key each batch row reads at ``step``: the cell's positive, its negative while its window is
        open (else the unconditional text), or the unconditional text ("empty"), each read as its cell reads
        (``readings``; under a1111 prompt editing picks the text of this step)."""
        keys = []
        for j, branch in self.order:
            cell = cells[j]
            if branch == "positive":
                text = cell.positive
            elif branch == "negative":
                text = cell.negative_at(step, steps, unconditional)
            else:
                text = unconditional
            keys.append(text_key(readings[j], text, step, steps))
        return keys


class _Stepper:
    """The scheduler(s) of one chunk. Deterministic schedulers step the whole batch at once; stochastic ones get one
    scheduler and one generator per cell, seeded like diffusers seeds a single-image call (the generator has drawn
    the starting latent before it draws step noise), so every cell gets its own single-call noise."""

    def __init__(self, pipe, name, chunk: _Chunk, steps: int):
        device = pipe._execution_device
        first = make_scheduler(pipe.scheduler, name)
        if is_stochastic(first):
            self.groups = []
            for i, seed in enumerate(chunk.seeds):
                generator = torch.Generator("cpu").manual_seed(seed)
                torch.randn(chunk.latents[i:i + 1].shape, generator=generator, dtype=chunk.latents.dtype)
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
def _denoise(pipe, runtime, chunk: _Chunk, spec: ComparisonSpec, table: _TextTable,
             progress: _Progress, capture=None) -> torch.Tensor:
    unet = pipe.unet
    cells = chunk.cells
    stepper = _Stepper(pipe, spec.sampler, chunk, spec.steps)
    g = spec.guidance_scale
    active = guidance.guidance_is_active(g, unet.config.time_cond_proj_dim)
    layout = _Layout.of(cells, active)
    cell_of_row = torch.tensor([j for j, _ in layout.order], device=chunk.latents.device)
    latents = chunk.latents * stepper.init_noise_sigma
    unconditional = spec.baseline_negative

    time_ids = None
    if table.pooled is not None:
        time_ids = _sdxl_time_ids(pipe, spec, table.dtype).to(latents.device).repeat(len(layout.order), 1)
    timestep_cond = None
    if unet.config.time_cond_proj_dim is not None:
        timestep_cond = pipe.get_guidance_scale_embedding(
            torch.tensor(g - 1).repeat(len(layout.order)), embedding_dim=unet.config.time_cond_proj_dim
        ).to(device=latents.device, dtype=latents.dtype)

    readings = [spec.reading_of(c) for c in cells]
    texts: dict[tuple, list] = {}  # the stacked text embeddings change only where a window opens or closes
    for step, t in enumerate(stepper.timesteps):
        keys = tuple(layout.text_keys(cells, step, spec.steps, unconditional, readings))
        if keys not in texts:  # rows of one text length each (two only where plain and long a1111 texts meet)
            lengths = [table.length(k) for k in keys]
            groups = [[k for k, n in enumerate(lengths) if n == length] for length in dict.fromkeys(lengths)]
            texts[keys] = [(rows, *table.stack([keys[k] for k in rows], latents.device)) for rows in groups]
        model_input = stepper.scale(latents, t)
        unet_input = model_input[cell_of_row] if active else model_input
        if capture is not None:  # the rows reading their cell's own negative prompt, at about five steps of the run
            sampled = step % max(1, round(spec.steps / attention.STEPS_SAMPLED)) == 0
            own = [text_key(readings[j], cells[j].negative, step, spec.steps) for j, _ in layout.order]
            watched = {k for k, (j, branch) in enumerate(layout.order) if sampled and branch == "negative"
                       and cells[j].negative is not None and keys[k] == own[k]}
        parts = []
        for rows, text, pooled in texts[keys]:
            whole = len(rows) == len(keys)
            if capture is not None:
                capture.watch({i: chunk.offset + layout.order[k][0] for i, k in enumerate(rows) if k in watched})
            added = None
            if pooled is not None:
                added = {"text_embeds": pooled, "time_ids": time_ids if whole else time_ids[rows]}
            cond = timestep_cond if timestep_cond is None or whole else timestep_cond[rows]
            parts.append(bucketed_unet(unet, unet_input if whole else unet_input[rows], t, text,
                                       buckets=runtime.buckets, timestep_cond=cond, added_cond_kwargs=added))
        out = parts[0]
        if len(parts) > 1:
            out = torch.empty((len(keys), *parts[0].shape[1:]), dtype=parts[0].dtype, device=parts[0].device)
            for (rows, _, _), part in zip(texts[keys], parts):
                out[rows] = part
        if active:
            eps = torch.cat([cell.guidance.combine({b: out[k:k + 1] for b, k in rows.items()}, g)
                             for cell, rows in zip(cells, layout.rows)])
        else:
            eps = out
        progress.step(lambda: _preview(pipe, stepper.scheduler, model_input, eps, t, runtime.preview_decoder))
        latents = stepper.step(eps, t, latents)
    return latents


def _sdxl_time_ids(pipe, spec: ComparisonSpec, dtype) -> torch.Tensor:
    size = (spec.height, spec.width)
    projection = pipe.text_encoder_2.config.projection_dim
    return pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection)


def _preview(pipe, scheduler, model_input, eps, t, decoder=None) -> list[Image.Image]:
    """Decode the clean image each cell is heading for (its x0 estimate) at this step, all cells in one batch,
    through ``decoder`` (a small preview decoder, ``loading.load(preview_decoder=...)``) or the full VAE."""
    alpha_bar = scheduler.alphas_cumprod[int(round(float(t)))]
    x0 = guidance.predicted_original(model_input, eps, alpha_bar, scheduler.config.prediction_type)
    return _decode(pipe, x0.to(model_input.dtype), decoder)


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
