"""Where a negative prompt acted: the cross-attention of each cell's negative-prompt tokens, captured during the run.

``install(unet)`` (``negprompt.loading.load`` calls it once, when a model loads) wraps every cross-attention
processor of the UNet in a ``CaptureProcessor``. The wrapper calls the processor it wraps and returns its output
untouched, so a run computes exactly what it would without it; only while a ``Capture`` is active in the running
thread (``with capturing(capture):``, which ``engine.run(..., attention_maps=True)`` opens) does it also compute,
for the UNet batch rows the capture names (each cell's negative branch), the attention that every image position
pays to that cell's negative-prompt tokens, averaged over heads, and add it to the cell's map at the latent size.
The maps are then averaged over layers and over about ``STEPS_SAMPLED`` evenly spaced steps.

Why by hand: diffusers' attention processors return the attention output, not the probabilities (Prompt-to-Prompt
and the diffusers community examples capture maps the same way, with a processor that recomputes them).

    from negprompt.attention import change_inside_outside, overlay
    result = compare(loaded, "portrait photo of a man", ["hat"], attention_maps=True)
    overlay(result.cells[1].image, result.attention_maps[1])          # a heat map over the image
    change_inside_outside(result.cells[1].image, result.cells[0].image, result.attention_maps[1])

The same wrapper lets a guidance method act inside cross-attention (``negprompt.guidance.NAG``): while a
``Steering`` is active (``with steering(steer):``, which the engine opens for a comparison with such cells), the
rows it names have their attention output replaced by the method's ``steer(z_pos, z_neg)``, where ``z_neg`` is
the attention of the same image queries to that row's negative prompt, both taken before the output projection.
With no steering active, nothing but the wrapped processor runs: the images are bit for bit those of an unwrapped
UNet.

The transformer families (SD3/SD3.5's joint attention, FLUX.1's double- and single-stream attention) get a
``JointProcessor`` in every joint attention layer instead: no maps, the same steering. There text and image tokens
attend jointly and the text tokens change from block to block, so the negative cannot be a fixed embedding: the
engine gives each steered cell one more batch row, its "steering" row, which starts from the cell's latent, reads
the negative prompt as its text and the positive's pooled text (so both rows share the time-and-text modulation),
and the steering names it beside the positive row. In every joint layer the image queries' attention output with
the positive text (``z_pos``, the positive row's) and with the negative text (``z_neg``, the steering row's) are
combined by ``steer(z_pos, z_neg)`` and the result is written to the image tokens of BOTH rows, so their image
tokens stay the same from block to block while the steering row's text tokens evolve as the negative prompt's own
stream. That is the approach of the NAG authors' SD3.5 and FLUX processors (Chen et al., 2025, their
Normalized-Attention-Guidance repository), where the negative text rides along as extra batch rows that share the
positive's image tokens and read the positive's pooled text; negprompt keeps it per cell inside one batch, and uses
the paper's L1 norms on every family (``negprompt.guidance.normalized_attention_guidance``; the authors' FLUX
processor measures them in L2). The steering row's own output is never used. Which layers get which wrapper is the
family's choice (``Family.attention_wrapper``).

A compiled UNet is not wrapped (the wrapper's per-call check would break its graph); it has no maps and no
steering.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

_state = threading.local()
REGION_SHARE = 0.2  # the region a negative attended to: its map's top 20% of image positions
STEPS_SAMPLED = 5  # the maps are averaged over about this many evenly spaced steps (every step would cost the
# first embedded model's CPU run 21% more time; five of twenty cost it 7%, and the current one 2%:
# benchmarks/attention_maps.py)


class Capture:
    """Per cell, the running sum of its negative tokens' attention maps at the latent size ``(height, width)``;
    ``positions[i]``: where cell i's negative-prompt tokens sit in its text encoding (``token_positions``)."""

    def __init__(self, positions: list[list[int]], height: int, width: int):
        self.positions, self.height, self.width = positions, height, width
        cells = len(positions)
        self.sums: list[torch.Tensor | None] = [None] * cells
        self.counts = [0] * cells
        self.rows: dict[int, tuple[int, list[int]]] = {}  # UNet batch row -> (cell, token positions)

    def reset(self) -> None:
        """Forget everything (the engine starts over with smaller chunks after running out of memory)."""
        self.sums, self.counts, self.rows = [None] * len(self.sums), [0] * len(self.counts), {}

    def watch(self, rows: dict[int, int]) -> None:
        """Name the rows of the next UNet calls: batch row -> the cell whose negative prompt that row reads."""
        self.rows = {r: (cell, self.positions[cell]) for r, cell in rows.items() if self.positions[cell]}

    @torch.no_grad()
    def add(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        if not self.rows or hidden_states.ndim != 3:
            return
        rows = list(self.rows)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states[rows]))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states[rows]))
        probs = attn.get_attention_scores(query, key, None).float()  # (rows * heads, positions, tokens)
        probs = probs.view(len(rows), attn.heads, *probs.shape[1:]).mean(dim=1)
        positions = probs.shape[1]
        scale = math.sqrt(self.height * self.width / positions)
        h, w = round(self.height / scale), round(self.width / scale)
        if h * w != positions:
            return
        mask = torch.zeros(len(rows), probs.shape[2], device=probs.device)
        for i, row in enumerate(rows):
            mask[i, self.rows[row][1]] = 1.0
        pictures = torch.einsum("rpt,rt->rp", probs, mask).view(len(rows), 1, h, w)
        if (h, w) != (self.height, self.width):
            pictures = F.interpolate(pictures, size=(self.height, self.width), mode="bilinear", align_corners=False)
        pictures = pictures[:, 0].cpu()
        for i, row in enumerate(rows):
            cell = self.rows[row][0]
            self.sums[cell] = pictures[i] if self.sums[cell] is None else self.sums[cell] + pictures[i]
            self.counts[cell] += 1

    def maps(self) -> list[np.ndarray | None]:
        """Per cell, its mean map scaled to [0, 1] (None: a cell with no negative tokens, or never watched)."""
        out: list[np.ndarray | None] = []
        for total, count in zip(self.sums, self.counts):
            if total is None or not count:
                out.append(None)
                continue
            picture = (total / count).numpy()
            low, high = float(picture.min()), float(picture.max())
            out.append((picture - low) / (high - low) if high > low else np.zeros_like(picture))
        return out


class Steering:
    """Per denoiser call, which batch rows a guidance method steers inside attention: batch row -> (the method, the
    negative it is steered away from). The negative is the negative prompt's embeddings (1, tokens, dim) in a
    UNet's cross-attention (``apply``), the batch row that carries the negative prompt's text stream in a
    transformer's joint attention (``apply_joint``). ``text_tokens``: how many text tokens lead a single-stream
    layer's sequence (FLUX's single blocks attend over text and image tokens together)."""

    def __init__(self):
        self.rows: dict[int, tuple] = {}
        self.text_tokens = 0

    def watch(self, rows: dict[int, tuple], text_tokens: int = 0) -> None:
        self.rows, self.text_tokens = rows, text_tokens

    def apply(self, attn, hidden_states, encoder_hidden_states, out):
        """``out`` with the steered rows replaced (see the module doc)."""
        if not self.rows or hidden_states.ndim != 3 or attn.residual_connection or attn.spatial_norm is not None \
                or attn.group_norm is not None:
            return out
        out = out.clone()
        for row, (method, negative) in self.rows.items():  # one row at a time: negatives may differ in length
            queries = hidden_states[row:row + 1]
            z_pos = attention_output(attn, queries, encoder_hidden_states[row:row + 1])
            z_neg = attention_output(attn, queries, negative.to(encoder_hidden_states))
            steered = attn.to_out[1](attn.to_out[0](method.steer(z_pos, z_neg))) / attn.rescale_output_factor
            out[row:row + 1] = steered.to(out.dtype)
        return out

    def apply_joint(self, inner, attn, hidden_states, encoder_hidden_states, out, single: bool, args, kwargs):
        """``out`` of a joint attention layer with the steered rows' image tokens replaced (see the module doc).
        A joint layer's image output is taken again, before its output projection, by the same processor on the
        steered rows alone (``_Unprojected``); a single-stream layer returns it unprojected already."""
        pairs = [(row, method, partner) for row, (method, partner) in self.rows.items()]
        if not pairs:
            return out
        if single:
            text = self.text_tokens
            out = out.clone()
            for row, method, partner in pairs:
                steered = method.steer(out[row:row + 1, text:], out[partner:partner + 1, text:])
                out[[row, partner], text:] = steered.to(out.dtype).expand(2, -1, -1)
            return out
        if encoder_hidden_states is None:
            return out  # an image-only layer (SD3.5's second attention): no text to steer by
        rows = [row for row, _, _ in pairs] + [partner for _, _, partner in pairs]
        unprojected = inner(_Unprojected(attn), hidden_states[rows], encoder_hidden_states[rows],
                            *_rows_of(args, rows, hidden_states.shape[0]),
                            **{k: _rows_of([v], rows, hidden_states.shape[0])[0] for k, v in kwargs.items()})[0]
        image, text_out = out
        image = image.clone()
        n = len(pairs)
        for i, (row, method, partner) in enumerate(pairs):
            steered = attn.to_out[1](attn.to_out[0](method.steer(unprojected[i:i + 1], unprojected[n + i:n + i + 1])))
            image[[row, partner]] = steered.to(image.dtype).expand(2, -1, -1)
        return image, text_out


class _Unprojected:
    """A joint attention layer seen without its output projections, so that its own processor returns the attention
    output itself (the transient view ``apply_joint`` calls the processor with; the layer is not changed)."""

    to_out = (torch.nn.Identity(), torch.nn.Identity())
    to_add_out = torch.nn.Identity()

    def __init__(self, attn):
        self._attn = attn

    def __getattr__(self, name):
        return getattr(self._attn, name)


def _rows_of(values, rows: list[int], batch: int) -> list:
    """``values`` with every tensor that has one entry per batch row cut to ``rows`` (an attention mask); the rest
    (rotary embeddings, None) as they are."""
    return [v[rows] if isinstance(v, torch.Tensor) and v.ndim > 2 and v.shape[0] == batch else v for v in values]


def attention_output(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """The cross-attention output of ``attn`` before its output projection (batch, positions, heads * dim): the
    same operations as diffusers' ``AttnProcessor2_0`` up to ``to_out``."""
    batch = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
    key, value = attn.to_k(context), attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    z = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    return z.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


class CaptureProcessor:
    """Wraps a cross-attention processor: the same output, plus the active capture's maps and the active
    steering's rows (see the module doc)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        capture = getattr(_state, "capture", None)
        if capture is not None and encoder_hidden_states is not None:
            capture.add(attn, hidden_states, encoder_hidden_states)
        out = self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        steer = getattr(_state, "steering", None)
        if steer is not None and encoder_hidden_states is not None:
            out = steer.apply(attn, hidden_states, encoder_hidden_states, out)
        return out


class JointProcessor:
    """Wraps a transformer's joint attention processor (SD3's ``JointAttnProcessor2_0``, FLUX's
    ``FluxAttnProcessor``): the same output, with the active steering's rows (see the module doc). ``single``: a
    single-stream layer, whose sequence is the text tokens followed by the image tokens."""

    def __init__(self, inner, single: bool = False):
        self.inner, self.single = inner, single

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        steer = getattr(_state, "steering", None)
        if steer is not None and steer.rows:
            out = steer.apply_joint(self.inner, attn, hidden_states, encoder_hidden_states, out, self.single, args,
                                    kwargs)
        return out


WRAPPERS = (CaptureProcessor, JointProcessor)


def cross_attention(name: str):
    """The wrapper of a UNet's processor ``name``: every cross-attention layer (``attn2``) gets a
    ``CaptureProcessor``, the rest none."""
    return CaptureProcessor if name.endswith("attn2.processor") else None


def install(denoiser, wrapper=cross_attention) -> bool:
    """Wrap the attention processors of ``denoiser`` (once; the outputs stay the same): ``wrapper(name)`` gives the
    wrapper class of the processor ``name`` (None: left as it is). False when it wraps none."""
    processors = denoiser.attn_processors
    chosen = {name: wrapper(name) for name in processors}
    if not any(chosen.values()):
        return False
    if not installed(denoiser):
        denoiser.set_attn_processor({name: chosen[name](p) if chosen[name] else p for name, p in processors.items()})
    return True


def installed(denoiser) -> bool:
    """Whether ``denoiser``'s attention is wrapped: guidance methods can steer it."""
    return any(isinstance(p, WRAPPERS) for p in denoiser.attn_processors.values())


def captures(denoiser) -> bool:
    """Whether ``denoiser``'s cross-attention is wrapped for attention maps (a UNet's)."""
    return any(isinstance(p, CaptureProcessor) for p in denoiser.attn_processors.values())


@contextmanager
def _active(slot: str, value):
    """Make ``value`` the thread's active ``slot`` ("capture" or "steering") inside the block."""
    previous = getattr(_state, slot, None)
    setattr(_state, slot, value)
    try:
        yield value
    finally:
        setattr(_state, slot, previous)


def capturing(capture: Capture):
    """Activate ``capture`` for the UNet calls this thread makes inside the block."""
    return _active("capture", capture)


def steering(steer: Steering):
    """Activate ``steer`` for the UNet calls this thread makes inside the block."""
    return _active("steering", steer)


def token_positions(tokenizer, text: str | None) -> list[int]:
    """Positions of ``text``'s word tokens in its 77-token encoding (no start or end token; none for no text)."""
    if not text:
        return []
    ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return list(range(1, len(ids) - 1))


def _region(attention: np.ndarray, size: tuple[int, int], share: float = REGION_SHARE) -> np.ndarray:
    """The boolean mask, at image ``size`` (width, height), of the ``share`` of positions the map weighs most."""
    picture = Image.fromarray((attention * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    values = np.asarray(picture, dtype=np.float32)
    return values >= np.quantile(values, 1 - share)


def change_inside_outside(image, reference, attention: np.ndarray | None,
                          share: float = REGION_SHARE) -> tuple[float, float] | None:
    """(change inside, change outside) the region ``attention`` marks, in percent (mean absolute pixel
    difference against ``reference``, as the change score); None without a map."""
    from negprompt.difference import pixel_differences

    if attention is None:
        return None
    inside = _region(attention, image.size, share)
    difference = pixel_differences(image, reference)
    return (round(float(difference[inside].mean() * 100), 3), round(float(difference[~inside].mean() * 100), 3))


def overlay(image, attention: np.ndarray | None, strength: float = 0.6) -> Image.Image:
    """``image`` with ``attention`` laid over it in red (the image itself without a map)."""
    if attention is None:
        return image
    heat = Image.fromarray((attention * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    alpha = np.asarray(heat, dtype=np.float32)[..., None] / 255.0 * strength
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    red = np.array([255.0, 30.0, 30.0])
    return Image.fromarray((base * (1 - alpha) + red * alpha).round().astype(np.uint8))
