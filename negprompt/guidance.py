"""Guidance math: pure functions of the two noise predictions, no model in sight.

A negative prompt is the text of classifier-free guidance's unconditional branch. Instead of the empty prompt's
prediction ``eps_uncond``, the negative prompt's ``eps_neg`` is the point the sampler is pushed away from:

    eps = eps_neg + g * (eps_pos - eps_neg)

With ``g = 1`` the negative cancels out (``eps = eps_pos``); with ``g > 1`` sampling moves toward the positive
prompt and away from the negative one, and the larger ``g``, the harder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Protocol, runtime_checkable

import torch

from negprompt.errors import InputError, shown


def classifier_free_guidance(eps_neg: torch.Tensor, eps_pos: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Implements Eq. 6 of Ho & Salimans (2022), "Classifier-Free Diffusion Guidance", with the negative prompt's
    prediction as the unconditional one. Written in the same operation order as diffusers' pipelines, so results
    match them to the last bit."""
    return eps_neg + guidance_scale * (eps_pos - eps_neg)


def perpendicular_negative_guidance(eps_empty: torch.Tensor, eps_pos: torch.Tensor, eps_neg: torch.Tensor,
                                    guidance_scale: float, negative_scale: float = 1.0) -> torch.Tensor:
    """Implements Perp-Neg from Armandpour et al. (2023), "Re-imagine the Negative Prompt Algorithm", in
    ComfyUI's form ``eps_empty + g * (pos - w * perp)``, with the projection taken per sample (dim 0), never over
    the whole batch: a sample's result depends on that sample alone."""
    pos, neg = eps_pos - eps_empty, eps_neg - eps_empty
    dims = tuple(range(1, pos.ndim))
    along = (neg * pos).sum(dim=dims, keepdim=True) / (pos * pos).sum(dim=dims, keepdim=True).clamp_min(1e-12)
    perp = neg - along * pos
    return eps_empty + guidance_scale * (pos - negative_scale * perp)


def rescale_guidance(eps_cfg: torch.Tensor, eps_pos: torch.Tensor, rescale: float) -> torch.Tensor:
    """Implements Section 3.4 of Lin et al. (2023), "Common Diffusion Noise Schedules and Sample Steps are Flawed":
    the guided prediction rescaled to the positive prediction's standard deviation (per sample), mixed by
    ``rescale``; the same operations as diffusers' ``rescale_noise_cfg`` (``guidance_rescale``)."""
    dims = list(range(1, eps_pos.ndim))
    std_pos = eps_pos.std(dim=dims, keepdim=True)
    std_cfg = eps_cfg.std(dim=dims, keepdim=True)
    rescaled = eps_cfg * (std_pos / std_cfg)
    return rescale * rescaled + (1 - rescale) * eps_cfg


def negative_strength_guidance(eps_empty: torch.Tensor, eps_pos: torch.Tensor, eps_neg: torch.Tensor,
                               guidance_scale: float, strength: float) -> torch.Tensor:
    """Implements negation with its own weight from Liu et al. (2022), "Compositional Visual Generation with
    Composable Diffusion Models": ``eps_empty + g * (eps_pos - eps_empty) - s * (eps_neg - eps_empty)``.
    ``s = g - 1`` is plain CFG with the negative; ``s = 0`` is CFG with no negative."""
    return eps_empty + guidance_scale * (eps_pos - eps_empty) - strength * (eps_neg - eps_empty)


def normalized_attention_guidance(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float = 5.0, tau: float = 2.5,
                                  alpha: float = 0.25) -> torch.Tensor:
    """Implements Normalized Attention Guidance (NAG) from Chen et al. (2025), "Normalized Attention Guidance:
    Universal Negative Guidance for Diffusion Models", on the cross-attention outputs of the positive prompt
    (``z_pos``) and of the negative prompt (``z_neg``) for the same image queries, per token (L1 norms over the
    feature dimension, the last one):

        Z~ = Z+ + s (Z+ - Z-)                                    extrapolate away from the negative
        r = ||Z~||_1 / ||Z+||_1;  Z^ = Z~ * min(r, tau) / r      cap the feature norm at tau times the positive's
        Z_NAG = alpha Z^ + (1 - alpha) Z+                         blend back

    (The authors' code writes the first line ``Z+ * s' - Z- * (s' - 1)``, the same with ``s' = s + 1``.) Half
    precision is computed in float32 and returned in its own dtype: an L1 norm over a transformer's thousands of
    features can pass float16's largest number."""
    dtype = z_pos.dtype
    wide = torch.promote_types(dtype, torch.float32)
    z_pos, z_neg = z_pos.to(wide), z_neg.to(wide)
    z_tilde = z_pos + scale * (z_pos - z_neg)
    norm_pos = z_pos.abs().sum(dim=-1, keepdim=True).clamp_min(1e-6)
    ratio = z_tilde.abs().sum(dim=-1, keepdim=True).clamp_min(1e-6) / norm_pos
    z_hat = z_tilde * torch.clamp(ratio, max=tau) / ratio
    return (alpha * z_hat + (1 - alpha) * z_pos).to(dtype)


def guidance_is_active(guidance_scale: float, time_cond_proj_dim: int | None) -> bool:
    """Whether a pipeline runs the negative branch at all.

    diffusers skips classifier-free guidance (and so ignores every negative prompt) when ``guidance_scale <= 1`` or
    when the UNet is guidance-distilled (it takes the scale as an embedding: LCM, Turbo, Lightning).
    """
    return guidance_scale > 1 and time_cond_proj_dim is None


def predicted_original(model_input: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor | float,
                       prediction_type: str) -> torch.Tensor:
    """The clean latent x0 that a prediction implies at noise level ``alpha_bar`` (Eq. 15 of Ho et al. (2020) for
    epsilon; Salimans & Ho (2022), "Progressive Distillation", for v). ``model_input`` is the UNet's input, which
    every diffusers scheduler scales to the DDPM convention. Used for previews while sampling."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float32)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x, out = model_input.float(), model_output.float()
    if prediction_type == "epsilon":
        return (x - s * out) / a
    if prediction_type == "v_prediction":
        return a * x - s * out
    if prediction_type == "sample":
        return out
    raise ValueError(f"prediction_type={prediction_type!r} is not epsilon, v_prediction or sample")


# ---------------------------------------------------------------------------------------------------------------
# Guidance methods as objects
#
# A method declares the UNet branches it needs and combines their predictions for ONE cell. The engine stacks one
# batch row per (cell, branch), runs the UNet once per step for every cell of a comparison, splits the output back
# and calls ``combine`` once per cell, with tensors of batch size 1: per-cell math stays per cell, whatever else
# shares the batch.
#
# Branch names: "positive" (the cell's positive prompt), "negative" (the cell's negative while its window is
# open, else the baseline's unconditional text), "empty" (always the baseline's unconditional text: the empty
# prompt, or zero embeddings where the comparison's baseline is "zeros").
#
# Adding a method: a frozen dataclass here with ``name``, ``branches`` and ``combine``, and one line in METHODS.
# Its fields are its parameters (numbers), written into manifests by ``method_to_dict``.
#
# A method may also act inside the denoiser's attention (``steers_attention = True``): it then has
# ``steer(z_pos, z_neg)``, which the attention layers call on the cell's positive row, with ``z_neg`` the same
# image queries' attention output against the cell's negative prompt (while its window is open): a UNet's
# cross-attention reads the negative's embeddings, a transformer's joint attention the cell's STEERING row, which
# carries the negative's text stream. The engine holds that per-cell state for each step
# (``negprompt.attention.Steering``); the loaded pipeline never changes.

BRANCHES = ("negative", "empty", "positive")  # every branch a method may read, in the order the engine stacks them
# The batch row a transformer family adds for an attention-steering cell: the negative prompt's text stream, beside
# the positive row inside joint attention (``negprompt.attention``); it is never combined.
STEERING = "steering"


@runtime_checkable
class GuidanceMethod(Protocol):
    name: ClassVar[str]  # the registry key, as written in manifests, the command line and the app
    branches: ClassVar[tuple[str, ...]]  # the UNet branches it reads (a subset of BRANCHES)

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor: ...


@dataclass(frozen=True)
class CFG:
    """Classifier-free guidance with the negative prompt as the unconditional branch (Ho & Salimans, 2022)."""

    name: ClassVar[str] = "cfg"
    branches: ClassVar[tuple[str, ...]] = ("negative", "positive")

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        return classifier_free_guidance(preds["negative"], preds["positive"], scale)


@dataclass(frozen=True)
class PerpNeg:
    """Perp-Neg (Armandpour et al., 2023): only the part of the negative's direction perpendicular to the
    positive's is pushed away from, so a negative that overlaps the positive cannot undo it."""

    negative_scale: float = 1.0  # weight of the perpendicular negative direction (ComfyUI's neg_scale)
    name: ClassVar[str] = "perp-neg"
    branches: ClassVar[tuple[str, ...]] = ("empty", "positive", "negative")

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        return perpendicular_negative_guidance(preds["empty"], preds["positive"], preds["negative"], scale,
                                               self.negative_scale)


@dataclass(frozen=True)
class RescaledCFG:
    """CFG with guidance rescale (Lin et al., 2023), diffusers' ``guidance_rescale``."""

    rescale: float = 0.7  # 0: plain CFG; 1: fully rescaled to the positive prediction's spread (paper: 0.7)
    name: ClassVar[str] = "cfg-rescale"
    branches: ClassVar[tuple[str, ...]] = ("negative", "positive")

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        guided = classifier_free_guidance(preds["negative"], preds["positive"], scale)
        return rescale_guidance(guided, preds["positive"], self.rescale)


@dataclass(frozen=True)
class NegativeStrength:
    """CFG from the empty prompt with the negative weighted on its own: ``eps_empty + g * (eps_pos - eps_empty) -
    s * (eps_neg - eps_empty)``; ``s = g - 1`` is plain CFG, ``s = 0`` no negative."""

    strength: float = 3.0  # s, the negative's own weight (plain CFG at scale 7.5 pushes with 6.5)
    name: ClassVar[str] = "neg-strength"
    branches: ClassVar[tuple[str, ...]] = ("empty", "positive", "negative")

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        return negative_strength_guidance(preds["empty"], preds["positive"], preds["negative"], scale,
                                          self.strength)


@dataclass(frozen=True)
class APG:
    """Adaptive Projected Guidance (Sadat et al., 2024, "Eliminating Oversaturation and Artifacts of High Guidance
    Scales in Diffusion Models"): the push away from the negative, ``eps_pos - eps_neg``, capped in norm and split
    into its parts parallel and orthogonal to ``eps_pos``; the parallel part, which oversaturates, is weighted by
    ``eta``. diffusers' ``normalized_guidance`` of its ``AdaptiveProjectedGuidance`` guider, without momentum (a
    method holds no state across steps); ``eta=1, norm_threshold=0`` is plain CFG."""

    eta: float = 0.0  # weight of the parallel part (the paper drops it)
    norm_threshold: float = 15.0  # cap on the push's L2 norm per sample (0: none; diffusers' guider default 15)
    name: ClassVar[str] = "apg"
    branches: ClassVar[tuple[str, ...]] = ("negative", "positive")

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        from diffusers.guiders.adaptive_projected_guidance import normalized_guidance

        return normalized_guidance(preds["positive"], preds["negative"], scale, eta=self.eta,
                                   norm_threshold=self.norm_threshold)


@dataclass(frozen=True)
class CFGZeroStar:
    """CFG-Zero* (Fan et al., 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models"): the
    negative's prediction scaled by the optimized ``s* = <eps_pos, eps_neg> / ||eps_neg||^2`` (per sample) before
    guidance, ``s* eps_neg + g (eps_pos - s* eps_neg)``; diffusers' ``cfg_zero_star_scale``. The paper's zero-init
    of the first steps is left out: a method sees one step's predictions, not the step."""

    name: ClassVar[str] = "cfg-zero-star"
    branches: ClassVar[tuple[str, ...]] = ("negative", "positive")

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale

        pos, neg = preds["positive"], preds["negative"]
        alpha = cfg_zero_star_scale(pos.flatten(1), neg.flatten(1)).view(-1, *(1,) * (pos.ndim - 1))
        return classifier_free_guidance(neg * alpha, pos, scale)


@dataclass(frozen=True)
class TCFG:
    """Tangential Damping CFG (Kwon et al., 2025, "TCFG: Tangential Damping Classifier-free Guidance"): the
    negative's prediction keeps only its component along the first singular direction of the (positive, negative)
    pair, damping the part tangential to the data manifold; diffusers' ``normalized_guidance`` of its
    ``TangentialClassifierFreeGuidance`` guider."""

    name: ClassVar[str] = "tcfg"
    branches: ClassVar[tuple[str, ...]] = ("negative", "positive")

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        from diffusers.guiders.tangential_classifier_free_guidance import normalized_guidance

        return normalized_guidance(preds["positive"], preds["negative"], scale)


@dataclass(frozen=True)
class NAG:
    """Normalized Attention Guidance (Chen et al., 2025): the negative acts inside the positive branch's
    attention (``normalized_attention_guidance``), not through a second prediction, so it also works on a
    guidance-distilled model that runs one branch. The noise predictions combine as the model does with no
    negative: CFG against the baseline's unconditional text where guidance is on, the positive alone where it is
    off (a distilled model, or a scale of 1)."""

    scale: float = 5.0  # s, how far the attention output is pushed away from the negative's (paper default 5)
    tau: float = 2.5  # the cap on the pushed output's L1 norm, relative to the positive's (paper default 2.5)
    alpha: float = 0.25  # the share of the capped output blended with the positive's (paper default 0.25)
    name: ClassVar[str] = "nag"
    branches: ClassVar[tuple[str, ...]] = ("empty", "positive")
    steers_attention: ClassVar[bool] = True

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        return classifier_free_guidance(preds["empty"], preds["positive"], scale)

    def steer(self, z_pos: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
        return normalized_attention_guidance(z_pos, z_neg, self.scale, self.tau, self.alpha)


METHODS: dict[str, type] = {m.name: m for m in (CFG, PerpNeg, RescaledCFG, NegativeStrength, APG, CFGZeroStar,
                                                     TCFG, NAG)}


def steers_attention(method: GuidanceMethod) -> bool:
    """Whether ``method`` acts inside the denoiser's attention (see ``NAG``)."""
    return bool(getattr(method, "steers_attention", False))


def cell_branches(method: GuidanceMethod, active: bool, steers_by_row: bool = False) -> tuple[str, ...]:
    """The denoiser batch rows the engine runs for one cell: the branches ``method`` reads where guidance is on
    (``active``), the positive alone where it is off, plus the ``STEERING`` row of an attention-steering method on
    a family that steers by row (the transformers)."""
    branches = tuple(method.branches) if active else ("positive",)
    return branches + ((STEERING,) if steers_by_row and steers_attention(method) else ())


def method_to_dict(method: GuidanceMethod) -> dict:
    """``CFG()`` -> ``{"method": "cfg"}``; a method's parameters are its dataclass fields."""
    return {"method": method.name, **asdict(method)}


def method_from_dict(data: dict | str, argument: str = "guidance") -> GuidanceMethod:
    """The inverse of ``method_to_dict``; a bare name stands for the method with its default parameters."""
    if not isinstance(data, (str, dict)):
        raise InputError(argument, shown(data), f"{argument}={shown(data)} must be a method name or an object "
                                                "with its \"method\"")
    data = {"method": data} if isinstance(data, str) else dict(data)
    name = data.pop("method", None)
    if not isinstance(name, str) or name not in METHODS:
        raise InputError(argument, shown(name), f"guidance method {shown(name)} is not one of {', '.join(METHODS)}")
    cls = METHODS[name]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(argument, shown(data), f"guidance method {name!r} has no parameter {shown(unknown)} "
                                         f"(it takes: {', '.join(sorted(known)) or 'none'})")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e6:
            raise InputError(argument, shown(value), f"{name} parameter {key}={shown(value)} must be a finite number")
    return cls(**data)


def parse_method(text: str, argument: str = "guidance") -> GuidanceMethod:
    """``"perp-neg"`` -> ``PerpNeg()``; ``"cfg-rescale:0.5"`` -> ``RescaledCFG(rescale=0.5)``: a name, optionally
    with a value for the method's first parameter (the command line's and the app's syntax)."""
    name, _, value = text.strip().partition(":")
    name = name.strip().lower()
    if not value.strip():
        return method_from_dict(name, argument)
    cls = METHODS.get(name)
    parameters = [f.name for f in fields(cls)] if cls else []
    if not parameters:
        raise InputError(argument, shown(text), f"{shown(text)}: guidance method {shown(name)} takes no value")
    try:
        number = float(value)
    except ValueError:
        raise InputError(argument, shown(text), f"{shown(text)}: {shown(value.strip())} is not a number") from None
    return method_from_dict({"method": name, parameters[0]: number}, argument)


def method_label(method: GuidanceMethod) -> str:
    """``PerpNeg()`` -> ``"perp-neg"``; ``RescaledCFG(0.5)`` -> ``"cfg-rescale:0.5"``: the text ``parse_method``
    reads back (defaults left out)."""
    default = type(method)()
    changed = [f.name for f in fields(method) if getattr(method, f.name) != getattr(default, f.name)]
    return method.name + (f":{getattr(method, changed[0]):g}" if changed else "")
