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

from negprompt import attention, reading, weighting
from negprompt.comparison import Cell, Comparison, Settings
from negprompt.embeddings import prompt_text
from negprompt.errors import LIMITS, InputError
from negprompt.families import Family, Paired, TextTable, family_of
from negprompt.guidance import BRANCHES, STEERING, GuidanceMethod, cell_branches, steers_attention
from negprompt.infotext import cell_infotext
from negprompt.loading import Loaded, additions_of, model_label, model_source, runtime_of
from negprompt.plan import BASELINES, CellSpec, ComparisonSpec, check_int, check_text, negatives_spec
from negprompt.prompts import spec_warnings
from negprompt.schedulers import DEFAULT, make_scheduler, sampler_label, scheduler_names

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


def _check_family_reads(family: Family, pipe, spec: ComparisonSpec) -> None:
    """The spec's sampler and prompt readings are ones this model family runs."""
    if spec.sampler not in (family.samplers() or scheduler_names()):
        only = f" ({type(pipe).__name__} runs its own flow-matching sampler)" if family.samplers() else ""
        raise InputError("sampler", spec.sampler, f"sampler={spec.sampler!r} is not one of "
                                                  f"{family.samplers() or scheduler_names()}{only}")
    if family.name != "unet" and any(spec.reading_of(c) == "a1111" for c in spec.cells):
        raise InputError("reading", "a1111", f"the a1111 reading weights CLIP embeddings as the A1111 web UI does, "
                                             f"for SD 1.x/2.x and SDXL; {type(pipe).__name__} reads prompts plain")


def _run(pipe, spec: ComparisonSpec, *, max_batch, max_cells, callback, preview_every, attention_maps,
         interrupt) -> Comparison:
    # 1-3. Check inputs, encode every distinct text once, draw the starting noise
    if max_batch is not None:
        check_int("max_batch", max_batch, 1, 10**6)
    job = prepare(pipe, spec, max_cells=max_cells, callback=callback, preview_every=preview_every,
                  attention_maps=attention_maps)

    # 4. Denoise every cell, in chunks of whole cells
    start = time.perf_counter()
    with attention.capturing(job.capture) if job.capture is not None else nullcontext(), \
            attention.steering(job.steer) if job.steer is not None else nullcontext():
        latents, batch_used, twins = _denoise_all(job, max_batch)
    job.timings["denoise_s"] = time.perf_counter() - start

    # 5. Decode
    return finish(job, latents, batch_used, twins, interrupt)


@dataclass
class Job:
    """A checked spec ready to denoise (``prepare``): its texts encoded, its starting noise drawn, its capture of
    attention maps and its steering made. ``run`` denoises one in chunks; ``negprompt.batching`` denoises several
    together."""

    pipe: object
    runtime: object
    family: Family
    spec: ComparisonSpec  # with the image size resolved
    settings: Settings
    warnings: list
    table: TextTable
    seed_latents: dict
    capture: attention.Capture | None
    steer: attention.Steering | None
    callback: StepCallback | None
    preview_every: int
    timings: dict


def prepare(pipe, spec: ComparisonSpec, *, max_cells: int = MAX_CELLS, callback: StepCallback | None = None,
            preview_every: int = 0, attention_maps: bool = False) -> Job:
    """Check ``spec`` on ``pipe`` (``InputError`` naming what is wrong), encode its texts and draw its noise."""
    # 1. Check inputs
    pipe, runtime = (pipe.pipe, pipe.runtime) if isinstance(pipe, Loaded) else (pipe, runtime_of(pipe))
    family = family_of(pipe)
    if not isinstance(spec, ComparisonSpec):
        raise InputError("spec", spec, f"spec={type(spec).__name__} must be a ComparisonSpec")
    check_int("max_cells", max_cells, 1, 10**6)
    spec.validate(max_cells)
    check_int("preview_every", preview_every, 0, 10**6)
    if callback is not None and not callable(callback):
        raise InputError("callback", callback, "callback must be callable")
    if attention_maps and not attention.captures(family.denoiser):
        raise InputError("attention_maps", attention_maps, f"this pipeline's {type(family.denoiser).__name__} "
                                                           "captures no attention maps: load it with "
                                                           "negprompt.loading.load (a compiled UNet, or a "
                                                           "transformer, has none)")
    steer = attention.Steering() if any(steers_attention(c.guidance) for c in spec.cells) else None
    if steer is not None and not attention.installed(family.denoiser):
        method = next(c.guidance.name for c in spec.cells if steers_attention(c.guidance))
        raise InputError("guidance", method, f"guidance method {method!r} acts inside attention; this "
                                             f"pipeline's {type(family.denoiser).__name__} is not wrapped for it "
                                             "(load the model with negprompt.loading.load; a compiled UNet cannot "
                                             "be steered)")
    _check_family_reads(family, pipe, spec)
    default_side = family.default_side()
    spec = replace(spec, height=spec.height or default_side, width=spec.width or default_side)
    _check_size(family, spec.height, spec.width)
    sampler = sampler_label(make_scheduler(pipe.scheduler, spec.sampler))
    settings = Settings.from_spec(spec, sampler, model_label(spec.model))
    warnings = spec_warnings(family.tokenizer, spec, family.distilled)
    timings: dict[str, float] = {}

    # 2. Encode every distinct text once (under the a1111 reading: every text a cell reads at some step)
    start = time.perf_counter()
    table = _encode_spec(family, spec)
    timings["encode_s"] = time.perf_counter() - start

    # 3. Starting noise, one latent per seed, shared by every cell with that seed
    seed_latents = {s: family.initial_latent(s, spec.height, spec.width, table.dtype) for s in spec.seeds}
    capture = None
    if attention_maps:
        factor = pipe.vae_scale_factor
        positions = [(reading if spec.reading_of(c) == "a1111" else attention).token_positions(
            family.tokenizer, prompt_text(pipe, c.negative, True)) for c in spec.cells]
        capture = attention.Capture(positions, spec.height // factor, spec.width // factor)
    return Job(pipe, runtime, family, spec, settings, warnings, table, seed_latents, capture, steer, callback,
               preview_every, timings)


def finish(job: Job, latents: torch.Tensor, batch_used: int, twins: Sequence[int],
           interrupt: Callable[[], None] | None = None) -> Comparison:
    """Decode ``job``'s final latents (every cell's, in cell order) into its ``Comparison``; ``twins[i]``: the cell
    whose trajectory cell i shares (``Denoising.twins``; i itself where none)."""
    start = time.perf_counter()
    spec, family = job.spec, job.family
    distinct = sorted(set(twins))  # a twin is decoded once: the same latent gives the same image, bit for bit
    decoded = []
    for i in range(0, len(distinct), batch_used):
        if interrupt is not None:
            interrupt()
        decoded.extend(family.decode(latents[distinct[i:i + batch_used]], spec.height, spec.width))
    image_of = dict(zip(distinct, decoded))
    images = [image_of[twin].copy() if twin != i else image_of[twin] for i, twin in enumerate(twins)]
    job.timings["decode_s"] = time.perf_counter() - start
    job.timings["total_s"] = sum(v for k, v in job.timings.items() if k != "total_s")

    hashes = {s: _sha256(latent) for s, latent in job.seed_latents.items()}
    cells = [Cell(index=i, row=c.row, spec=c, image=image, seed=c.seed, initial_latent_sha256=hashes[c.seed],
                  parameters=cell_infotext(job.settings, c, spec.reading_of(c)))
             for i, (c, image) in enumerate(zip(spec.cells, images))]
    capture = job.capture
    return Comparison(spec=spec, settings=job.settings, cells=cells, warnings=job.warnings, timings=job.timings,
                      max_batch_used=batch_used, attention_maps=capture.maps() if capture is not None else [],
                      additions=additions_of(job.pipe))


# ---------------------------------------------------------------------------------------------------------------
# Interrupting a long step

_INTERRUPT: ContextVar[Callable[[], None] | None] = ContextVar("negprompt_interrupt", default=None)


@contextmanager
def _interrupting(pipe, interrupt: Callable[[], None] | None):
    """While the block runs (in this thread), ``interrupt()`` is called before each block of the denoiser (UNet or
    transformer) and of the VAE decoder. The hooks are installed once per model, and do nothing when no interrupt
    is set."""
    if interrupt is None:
        yield
        return
    for module in (family_of(pipe).denoiser, getattr(getattr(pipe, "vae", None), "decoder", None)):
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
              *getattr(module, "up_blocks", ()),  # a UNet or a VAE decoder; a transformer's blocks:
              *getattr(module, "transformer_blocks", ()), *getattr(module, "single_transformer_blocks", ())]
    for block in blocks:
        if isinstance(block, torch.nn.Module):
            block.register_forward_pre_hook(_checkpoint)
            for layer in (*getattr(block, "resnets", ()), *(getattr(block, "attentions", None) or ())):
                layer.register_forward_pre_hook(_checkpoint)
    module._negprompt_checkpoints = True


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def _check_negatives(negatives) -> None:
    """Each negative prompt a string with text in it."""
    for i, negative in enumerate(negatives):
        if not isinstance(negative, str):
            raise InputError(f"negatives[{i}]", negative, f"negatives[{i}]={negative!r} must be a string")
        if not negative.strip():
            raise InputError(f"negatives[{i}]", negative, f"negatives[{i}]={negative!r} is empty; the baseline "
                                                          "cell already shows the empty negative prompt")
        check_text(f"negatives[{i}]", negative)


def _seed_rows(seed, seeds) -> list[int]:
    """The seed of each row: ``seeds``, or the one ``seed`` (0 when neither is given); at least one, distinct, each
    from 0 to MAX_SEED."""
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
    return rows


def _check_convenience(prompt, negatives, seed, seeds, baseline, other_positive, scheduler, max_cells) -> list[int]:
    """The checks of ``compare``'s own arguments (the spec's ``validate`` checks the rest), named as its
    parameters are."""
    check_text("prompt", prompt)
    _check_negatives(negatives)
    if other_positive is not None:
        check_text("other_positive", other_positive)
    rows = _seed_rows(seed, seeds)
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


def _check_size(family: Family, height, width):
    factor = family.size_factor
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise InputError(name, value, f"{name}={value!r} must be a positive multiple of {factor} (the VAE's "
                                          "scale factor, times the denoiser's patch size)")
        if value > LIMITS.max_side:
            raise InputError(name, value, f"{name}={value!r} is larger than {LIMITS.max_side}")


# ---------------------------------------------------------------------------------------------------------------
# Model parts


def default_baseline(pipe) -> str:
    """What a pipeline does with no negative prompt: "zeros" (zero embeddings) for SDXL, else "empty" (the empty
    prompt). ``pipe``: a diffusers pipeline or a ``Loaded`` record. What ``baseline="auto"`` resolves to."""
    return family_of(pipe.pipe if isinstance(pipe, Loaded) else pipe).default_baseline()


def _sha256(latent: torch.Tensor) -> str:
    return hashlib.sha256(latent.float().contiguous().numpy().tobytes()).hexdigest()


def text_key(how: str, text: str | None, step: int, steps: int):
    """The table key of ``text`` read ``how`` ("plain" or "a1111") at ``step`` of ``steps``: the text itself, or
    ``("a1111", the text it reads at that step once its prompt editing is resolved)``."""
    if how == "plain":
        return text
    return "a1111", None if text is None else reading.text_at(text, step, steps)


def _encode_spec(family: Family, spec: ComparisonSpec) -> TextTable:
    """The text table of ``spec``: its plain texts through the family's encoder (the pipeline's ``encode_prompt``),
    every text its a1111 cells read at any step through ``negprompt.weighting`` (padded to one number of chunks)."""
    plain = [c for c in spec.cells if spec.reading_of(c) == "plain"]
    a1111 = [c for c in spec.cells if spec.reading_of(c) == "a1111"]
    embeds: dict = {}
    pooled: dict | None = None
    if plain:
        texts = [c.positive for c in plain] + [c.negative for c in plain if c.negative is not None]
        texts = [t for t in dict.fromkeys(texts) if t != spec.baseline_negative]
        if spec.baseline_negative is not None:
            texts.append(spec.baseline_negative)  # last, as before specs: the batch order changes the rounding
        table = family.encode(texts)
        embeds, pooled = dict(table.embeds), table.pooled
    if a1111:
        unconditional = spec.baseline_negative
        keys = dict.fromkeys(text_key("a1111", text, step, spec.steps) for c in a1111 for step in range(spec.steps)
                             for text in (c.positive, c.negative_at(step, spec.steps, unconditional)))
        texts = [text for _, text in keys if text is not None]
        read, read_pooled = weighting.encode_a1111(family.pipe, texts or [""],
                                                   rewrite=lambda t: prompt_text(family.pipe, t))
        zeros = torch.zeros_like(next(iter(read.values())))
        embeds |= {("a1111", text): value for text, value in read.items()} | {("a1111", None): zeros}
        if read_pooled is not None:
            pooled = (pooled or {}) | {("a1111", text): value for text, value in read_pooled.items()}
            pooled[("a1111", None)] = torch.zeros_like(next(iter(read_pooled.values())))
    return TextTable(embeds, pooled)


# ---------------------------------------------------------------------------------------------------------------
# Denoising


def _denoise_all(job: Job, max_batch: int | None):
    """Denoise every cell of ``job``, in chunks of whole cells; returns final latents, the chunk size used and each
    cell's twin (``Denoising.twins``).
    An out-of-memory error halves the chunk size and starts over; the size that fits is remembered with the
    pipeline (``runtime.safe_batch``), so the next comparison of that size starts there."""
    spec, runtime = job.spec, job.runtime
    n = len(spec.cells)
    size = (spec.height, spec.width)
    batch = min(n, max_batch or n, runtime.safe_batch.get(size, n))
    device = job.family.pipe._execution_device
    while True:
        try:
            progress = _Progress(job.callback, spec.steps * math.ceil(n / batch), job.preview_every)
            outputs, twins = [], []
            for i in range(0, n, batch):
                denoising = Denoising(job, _Chunk(spec.cells[i:i + batch], job.seed_latents, device, offset=i),
                                      progress)
                outputs.append(_denoise(denoising))
                twins += denoising.twins
            return torch.cat(outputs), batch, twins
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            runtime.safe_batch[size] = batch
            if job.capture is not None:
                job.capture.reset()
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
    """Which denoiser batch row holds which (cell, branch): rows are grouped by branch in ``BRANCHES`` order (for
    CFG: every cell's negative row, then every cell's positive row, as diffusers stacks them), then the steering
    rows of attention-steering cells on a transformer (``guidance.cell_branches``), cells in order within a branch.
    ``rows[j][branch]`` is cell j's row of that branch."""

    order: tuple[tuple[int, str], ...]  # (cell, branch) per batch row
    rows: tuple[dict[str, int], ...]  # per cell: branch -> batch row

    @classmethod
    def of(cls, cells: Sequence[CellSpec], active: Sequence[bool], steers_by_row: bool = False) -> _Layout:
        """``active[j]``: whether cell j runs its guidance's branches (else its positive branch alone);
        ``steers_by_row``: the family gives attention-steering cells a steering row."""
        wanted = [cell_branches(c.guidance, on, steers_by_row) for c, on in zip(cells, active)]
        order = tuple((j, b) for b in (*BRANCHES, STEERING) for j in range(len(cells)) if b in wanted[j])
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
            elif branch == STEERING:  # the negative's text with the positive's pooled text (the positive's alone
                negative = cell.negative_at(step, steps, unconditional)  # while the window is closed)
                key = text_key(readings[j], cell.positive, step, steps)
                steered = negative is not None and negative != unconditional
                keys.append(Paired(text_key(readings[j], negative, step, steps), key) if steered else key)
                continue
            else:
                text = unconditional
            keys.append(text_key(readings[j], text, step, steps))
        return keys


@torch.no_grad()
def _denoise(denoising: Denoising) -> torch.Tensor:
    """Run ``denoising`` to its end, one denoiser call per step (per text length); returns its final latents."""
    job = denoising.job
    call = job.family.denoiser_call(job.spec.height, job.spec.width, denoising.rows, job.spec.guidance_scale,
                                    job.table.dtype, denoising.latents.device, buckets=job.runtime.buckets)
    while not denoising.done:
        step = denoising.inputs()
        denoising.advance(_call_by_length(call, step.groups, step.denoiser_input, step.t, job.capture,
                                          step.watched, job.steer, step.steered))
    return denoising.latents


@dataclass
class StepInput:
    """What one step of a ``Denoising`` asks of the denoiser: its batch rows' input, the timestep, its texts in
    groups of one length ((rows, text, pooled)), and the rows the capture watches and the steering steers."""

    denoiser_input: torch.Tensor
    t: torch.Tensor
    groups: list
    watched: dict
    steered: dict


class Denoising:
    """One chunk of a job's cells, denoised a step at a time: ``inputs()`` is this step's denoiser batch (one row
    per (cell, branch), ``_Layout``), ``advance(out)`` takes the denoiser's output for those rows, lets each cell's
    guidance method combine its own rows at its own scale, hands the progress (and previews) on and steps the
    sampler. Cells with guidance off and the same seed, positive prompt and reading share one row and are decoded
    once (``twins``). ``_denoise`` runs one alone; ``negprompt.batching`` runs several jobs' in one denoiser call
    per step."""

    def __init__(self, job: Job, chunk: _Chunk, progress: _Progress):
        family, spec = job.family, job.spec
        self.job, self.chunk, self.progress = job, chunk, progress
        self.cells = cells = chunk.cells
        self.stepper = family.stepper(spec.sampler, chunk.seeds, chunk.latents, spec.steps, spec.height, spec.width)
        scales = [spec.scale_of(c) for c in cells]  # each cell combines its branches at its own scale
        active = [family.guidance_active(scale) for scale in scales]
        # A cell with guidance off (and not steered in attention) follows its positive row alone: such cells with
        # the same seed, positive prompt and reading are one trajectory, made once (``made``: the cells given batch
        # rows; cell j takes the prediction of made cell ``source[j]``), so each is its twin's image by
        # construction.
        firsts: dict[tuple, int] = {}
        self.made, self.source = [], []
        for j, (cell, on) in enumerate(zip(cells, active)):
            plain = not on and not steers_attention(cell.guidance)  # a steered cell's positive row is its own
            key = (cell.seed, cell.positive, spec.reading_of(cell)) if plain else (j,)
            if key not in firsts:
                firsts[key] = len(self.made)
                self.made.append(j)
            self.source.append(firsts[key])
        self.made_cells = [cells[j] for j in self.made]
        self.scales, self.active = [scales[j] for j in self.made], [active[j] for j in self.made]
        self.layout = _Layout.of(self.made_cells, self.active, family.steers_by_row)
        of_row = [self.made[j] for j, _ in self.layout.order]
        self.cell_of_row = None if of_row == list(range(len(cells))) else torch.tensor(of_row,
                                                                                       device=chunk.latents.device)
        self.latents = chunk.latents * self.stepper.init_noise_sigma
        self.readings = [spec.reading_of(c) for c in self.made_cells]
        self.twins = [chunk.offset + self.made[k] for k in self.source]  # per cell, its index in the spec
        self.timesteps = self.stepper.timesteps
        self.step = 0
        self._texts: dict[tuple, list] = {}  # the stacked text embeddings change only where a window opens or closes
        self._model_input = None

    @property
    def rows(self) -> int:
        return len(self.layout.order)

    @property
    def done(self) -> bool:
        return self.step >= len(self.timesteps)

    def inputs(self) -> StepInput:
        job, cells, layout, step = self.job, self.made_cells, self.layout, self.step
        spec, table, unconditional = job.spec, job.table, job.spec.baseline_negative
        t = self.timesteps[step]
        keys = tuple(layout.text_keys(cells, step, spec.steps, unconditional, self.readings))
        if keys not in self._texts:  # rows of one text length each (two only where plain and long a1111 texts meet)
            lengths = [table.length(k) for k in keys]
            groups = [[k for k, n in enumerate(lengths) if n == length] for length in dict.fromkeys(lengths)]
            self._texts[keys] = [(rows, *table.stack([keys[k] for k in rows], self.latents.device))
                                 for rows in groups]
        self._model_input = model_input = self.stepper.scale(self.latents, t)
        denoiser_input = model_input if self.cell_of_row is None else model_input[self.cell_of_row]
        watched, steered = {}, {}
        if job.capture is not None:  # the rows reading their cell's own negative prompt, at about five steps
            sampled = step % max(1, round(spec.steps / attention.STEPS_SAMPLED)) == 0
            own = [text_key(self.readings[j], cells[j].negative, step, spec.steps) for j, _ in layout.order]
            watched = {k: self.chunk.offset + self.made[j] for k, (j, branch) in enumerate(layout.order) if sampled
                       and branch == "negative" and cells[j].negative is not None and keys[k] == own[k]}
        if job.steer is not None:
            steered = _steered_rows(layout, cells, step, spec.steps, unconditional, table, self.readings,
                                    job.family.steers_by_row)
        return StepInput(denoiser_input, t, self._texts[keys], watched, steered)

    @torch.no_grad()
    def advance(self, out: torch.Tensor) -> None:
        job, t, model_input = self.job, self.timesteps[self.step], self._model_input
        made = [cell.guidance.combine({b: out[k:k + 1] for b, k in rows.items() if b != STEERING}, scale)
                if on else out[rows["positive"]:rows["positive"] + 1]  # guidance off: the positive alone
                for cell, rows, scale, on in zip(self.made_cells, self.layout.rows, self.scales, self.active)]
        eps = torch.cat([made[k] for k in self.source])
        spec, family = job.spec, job.family
        self.progress.step(lambda: family.decode(self.stepper.x0(model_input, eps, t), spec.height, spec.width,
                                                 job.runtime.preview_decoder))
        self.latents = self.stepper.step(eps, t, self.latents)
        self.step += 1


def _call_by_length(call, groups: list, denoiser_input: torch.Tensor, t, capture, watched: dict, steer,
                    steered: dict) -> torch.Tensor:
    """The denoiser's output for every batch row: one call per text length in ``groups`` ((rows, text, pooled);
    one call in all but rare runs), each with the capture's and the steering's rows renumbered to its own batch."""
    n = sum(len(rows) for rows, _, _ in groups)
    parts = []
    for rows, text, pooled in groups:
        whole = len(rows) == n
        if capture is not None:
            capture.watch({i: watched[k] for i, k in enumerate(rows) if k in watched})
        if steer is not None:
            here = {k: i for i, k in enumerate(rows)}  # a steering row is renumbered too (it has the same length)
            steer.watch({here[k]: (method, here[negative] if isinstance(negative, int) else negative)
                         for k, (method, negative) in steered.items()
                         if k in here and (not isinstance(negative, int) or negative in here)}, text.shape[1])
        parts.append(call(denoiser_input if whole else denoiser_input[rows], t, text, pooled,
                          rows=None if whole else rows))
    if len(parts) == 1:
        return parts[0]
    out = torch.empty((n, *parts[0].shape[1:]), dtype=parts[0].dtype, device=parts[0].device)
    for (rows, _, _), part in zip(groups, parts):
        out[rows] = part
    return out


def _steered_rows(layout: _Layout, cells, step: int, steps: int, unconditional, table: TextTable,
                  readings: Sequence[str], by_row: bool = False) -> dict:
    """Each attention-steering cell's positive row -> (its method, its negative's embeddings, or with ``by_row``
    its steering row), while its window is open and its negative is a text of its own."""
    rows = {}
    for k, (j, branch) in enumerate(layout.order):
        if branch != "positive" or not steers_attention(cells[j].guidance):
            continue
        negative = cells[j].negative_at(step, steps, unconditional)
        if negative is not None and negative != unconditional:
            rows[k] = (cells[j].guidance, layout.rows[j][STEERING] if by_row
                       else table.embeds[text_key(readings[j], negative, step, steps)])
    return rows


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
