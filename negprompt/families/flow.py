"""What the flow-matching transformer families share: the sampler of the pipeline, set up by the pipeline's own
``retrieve_timesteps`` (with ``calculate_shift``'s resolution-dependent shift where the scheduler uses one), and the
clean-image estimate for previews (``x0 = x - sigma * v``)."""

from __future__ import annotations

from functools import partial

import torch

from negprompt.families import Family
from negprompt.schedulers import DEFAULT, make_scheduler


class FlowFamily(Family):
    """A flow-matching transformer pipeline (SD3, FLUX.1): the transformer denoises, the pipeline's own sampler
    runs, its default size is ``default_sample_size`` latents."""

    @property
    def denoiser(self):
        return self.pipe.transformer

    def default_side(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    def samplers(self):
        return [DEFAULT]

    steers_by_row = True

    def attention_wrapper(self, name: str):
        """Every joint attention layer (``transformer_blocks.N.attn``; FLUX's ``single_transformer_blocks.N.attn``
        with its text tokens leading the sequence) gets a ``JointProcessor``."""
        from negprompt.attention import JointProcessor

        if not name.endswith(".attn.processor"):
            return None  # SD3.5's image-only second attention (attn2) reads no text
        return partial(JointProcessor, single=name.startswith("single_transformer_blocks."))


class FlowStepper:
    """One flow-matching scheduler for the whole chunk (the Euler flow sampler is deterministic and per element, so
    batching changes nothing). ``set_up(scheduler, steps, device)`` sets the timesteps as the pipeline does."""

    init_noise_sigma = 1.0

    def __init__(self, pipe, steps: int, set_up):
        self.scheduler = make_scheduler(pipe.scheduler, DEFAULT)
        self.timesteps = set_up(self.scheduler, steps, pipe._execution_device)
        self.train_steps = self.scheduler.config.num_train_timesteps

    def scale(self, latents, t):
        return latents

    def step(self, velocity, t, latents):
        return self.scheduler.step(velocity, t, latents, return_dict=False)[0]

    def x0(self, model_input, velocity, t):
        sigma = float(t) / self.train_steps
        return (model_input.float() - sigma * velocity.float()).to(model_input.dtype)


def shift_kwargs(scheduler, image_seq_len: int, max_shift: float) -> dict:
    """``{"mu": ...}`` where the scheduler shifts its timesteps by resolution (FLUX, SD3.5 Large Turbo), as the
    pipelines compute it; ``{}`` otherwise."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if not scheduler.config.get("use_dynamic_shifting", None):
        return {}
    config = scheduler.config
    return {"mu": calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                                  config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                  config.get("max_shift", max_shift))}


@torch.no_grad()
def vae_decode(pipe, latents, vae=None):
    """``(latents / scaling_factor) + shift_factor`` through the VAE and the pipeline's post-processing, as SD3 and
    FLUX pipelines decode; a preview decoder (``AutoencoderTiny``) takes the latents as they are."""
    vae = vae if vae is not None else pipe.vae
    latents = latents.to(vae.dtype)
    if vae is pipe.vae:
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    return pipe.image_processor.postprocess(vae.decode(latents, return_dict=False)[0], output_type="pil")
