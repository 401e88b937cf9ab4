"""Guidance math: pure functions of the two noise predictions, no model in sight.

A negative prompt is the text of classifier-free guidance's unconditional branch. Instead of the empty prompt's
prediction ``eps_uncond``, the negative prompt's ``eps_neg`` is the point the sampler is pushed away from:

    eps = eps_neg + g * (eps_pos - eps_neg)

With ``g = 1`` the negative cancels out (``eps = eps_pos``); with ``g > 1`` sampling moves toward the positive
prompt and away from the negative one, and the larger ``g``, the harder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch


def classifier_free_guidance(eps_neg: torch.Tensor, eps_pos: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Implements Eq. 6 of Ho & Salimans (2022), "Classifier-Free Diffusion Guidance", with the negative prompt's
    prediction as the unconditional one. Written in the same operation order as diffusers' pipelines, so results
    match them to the last bit."""
    return eps_neg + guidance_scale * (eps_pos - eps_neg)


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
# per cell and calls ``combine``: per-cell math stays per cell, whatever else shares the batch.
#
# Branch names: "positive" (the cell's positive prompt), "negative" (the cell's negative while its window is
# open, else the baseline's unconditional text), "empty" (always the baseline's unconditional text: the empty
# prompt, or zero embeddings where the comparison's baseline is "zeros").
#
# Adding a method: a frozen dataclass here with ``name``, ``branches`` and ``combine``, and one line in METHODS.


@runtime_checkable
class GuidanceMethod(Protocol):
    name: ClassVar[str]  # the registry key, as written in manifests, the command line and the app
    branches: ClassVar[tuple[str, ...]]  # the UNet branches it reads, in the order the engine stacks them

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor: ...


@dataclass(frozen=True)
class CFG:
    """Classifier-free guidance with the negative prompt as the unconditional branch (Ho & Salimans, 2022)."""

    name: ClassVar[str] = "cfg"
    branches: ClassVar[tuple[str, ...]] = ("negative", "positive")

    def combine(self, preds: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        return classifier_free_guidance(preds["negative"], preds["positive"], scale)


METHODS: dict[str, type] = {CFG.name: CFG}


def method_to_dict(method: GuidanceMethod) -> dict:
    """``CFG()`` -> ``{"method": "cfg"}``; a method's parameters are its dataclass fields."""
    return {"method": method.name, **asdict(method)}


def method_from_dict(data: dict | str) -> GuidanceMethod:
    """The inverse of ``method_to_dict``; a bare name stands for the method with its default parameters."""
    data = {"method": data} if isinstance(data, str) else dict(data)
    name = data.pop("method", None)
    if name not in METHODS:
        raise ValueError(f"guidance method {name!r} is not one of {', '.join(METHODS)}")
    return METHODS[name](**data)
