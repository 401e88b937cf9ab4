"""FLUX.1 (``FluxPipeline``): an MMDiT with single-stream blocks under flow matching, CLIP-L (pooled) and T5, a
16-channel VAE whose latents are packed in 2x2 patches.

A plain CFG cell equals ``FluxPipeline(...)(prompt, negative_prompt=negative, true_cfg_scale=g,
generator=torch.Generator("cpu").manual_seed(seed))`` ("true CFG": the comparison's guidance scale is FLUX's
``true_cfg_scale``); the baseline reads the empty negative prompt (``negative_prompt=""``). A guidance-distilled
transformer (``guidance_embeds``, FLUX.1-dev) also reads the distilled guidance ``FLUX_EMBEDDED_GUIDANCE``, the
pipeline's default ``guidance_scale``. Starting noise, packing and the resolution-dependent shift come from the
pipeline's own ``prepare_latents``, ``_unpack_latents``, ``_prepare_latent_image_ids`` and ``calculate_shift``.
"""

from __future__ import annotations

import numpy as np
import torch

from negprompt.families import TextTable
from negprompt.families.flow import FlowFamily, FlowStepper, shift_kwargs, vae_decode

MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default T5 length
FLUX_EMBEDDED_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale, read by a guidance-distilled transformer


class FluxFamily(FlowFamily):
    name = "flux"
    pipeline_classes = ("FluxPipeline",)

    @property
    def size_factor(self) -> int:
        return self.pipe.vae_scale_factor * 2  # latents are packed in 2x2 patches

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextTable:
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=texts, prompt_2=None,
                                                    device=self.pipe._execution_device, num_images_per_prompt=1,
                                                    max_sequence_length=MAX_SEQUENCE_LENGTH)
        return TextTable(dict(zip(texts, embeds.split(1))), dict(zip(texts, pooled.split(1))))

    def initial_latent(self, seed, height, width, dtype):
        channels = self.pipe.transformer.config.in_channels // 4
        latents, _ = self.pipe.prepare_latents(1, channels, height, width, dtype, torch.device("cpu"),
                                               torch.Generator("cpu").manual_seed(seed))
        return latents

    def stepper(self, sampler, seeds, latents, steps, height, width):
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        seq_len = latents.shape[1]

        def set_up(scheduler, n, device):
            sigmas = np.linspace(1.0, 1 / n, n)
            if getattr(scheduler.config, "use_flow_sigmas", False):
                sigmas = None
            kwargs = shift_kwargs(scheduler, seq_len, 1.15)
            timesteps = retrieve_timesteps(scheduler, n, device, sigmas=sigmas, mu=kwargs.get("mu"))[0]
            scheduler.set_begin_index(0)
            return timesteps

        return FlowStepper(self.pipe, steps, set_up)

    def _latent_ids(self, height, width, device, dtype):
        factor = self.pipe.vae_scale_factor
        h, w = 2 * (int(height) // (factor * 2)), 2 * (int(width) // (factor * 2))
        return self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)

    def denoiser_call(self, height, width, rows, guidance_scale, dtype, device, buckets=None):
        transformer = self.pipe.transformer
        image_ids = self._latent_ids(height, width, device, dtype)
        embedded = None
        if transformer.config.guidance_embeds:
            embedded = torch.full([1], FLUX_EMBEDDED_GUIDANCE, device=device, dtype=torch.float32)
        text_ids = {}

        def call(model_input, t, text, pooled, rows=None):  # every row alike: ``rows`` needs no subsetting
            length = text.shape[1]
            if length not in text_ids:
                text_ids[length] = torch.zeros(length, 3, device=device, dtype=text.dtype)
            timestep = t.expand(model_input.shape[0]).to(model_input.dtype)
            scale = embedded.expand(model_input.shape[0]) if embedded is not None else None
            return transformer(hidden_states=model_input, timestep=timestep / 1000, guidance=scale,
                               pooled_projections=pooled, encoder_hidden_states=text, txt_ids=text_ids[length],
                               img_ids=image_ids, return_dict=False)[0]

        return call

    def decode(self, latents, height, width, vae=None):
        latents = self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)
        return vae_decode(self.pipe, latents, vae)
