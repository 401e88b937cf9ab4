"""Guidance math: pure functions of the two noise predictions, no model in sight.

A negative prompt is the text of classifier-free guidance's unconditional branch. Instead of the empty prompt's
prediction ``eps_uncond``, the negative prompt's ``eps_neg`` is the point the sampler is pushed away from:

    eps = eps_neg + g * (eps_pos - eps_neg)

With ``g = 1`` the negative cancels out (``eps = eps_pos``); with ``g > 1`` sampling moves toward the positive
prompt and away from the negative one, and the larger ``g``, the harder.
"""

from __future__ import annotations

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
