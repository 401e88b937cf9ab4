"""SD3 and SD3.5 (``StableDiffusion3Pipeline``): an MMDiT under flow matching, CLIP-L, OpenCLIP bigG and
optionally T5 (without it, SD3 reads zeros in T5's place, as the pipeline does), a 16-channel VAE.

A plain CFG cell equals ``StableDiffusion3Pipeline(...)(prompt, negative_prompt=negative, guidance_scale=g,
generator=torch.Generator("cpu").manual_seed(seed))``: the starting noise comes from the pipeline's own
``prepare_latents``, the timesteps from its ``retrieve_timesteps``, the texts from its ``encode_prompt`` (256 T5
tokens, its default), and its baseline with no negative is the empty prompt, as the pipeline's is.
"""

from __future__ import annotations

import torch

from negprompt.families import TextTable
from negprompt.families.flow import FlowFamily, FlowStepper, shift_kwargs, vae_decode

MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default T5 length


class SD3Family(FlowFamily):
    name = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)

    @property
    def size_factor(self) -> int:
        return self.pipe.vae_scale_factor * self.pipe.transformer.config.patch_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextTable:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=texts, prompt_2=None, prompt_3=None, device=self.pipe._execution_device, num_images_per_prompt=1,
            do_classifier_free_guidance=False, max_sequence_length=MAX_SEQUENCE_LENGTH)
        return TextTable(dict(zip(texts, embeds.split(1))), dict(zip(texts, pooled.split(1))))

    def initial_latent(self, seed, height, width, dtype):
        channels = self.pipe.transformer.config.in_channels
        return self.pipe.prepare_latents(1, channels, height, width, dtype, torch.device("cpu"),
                                         torch.Generator("cpu").manual_seed(seed))

    def stepper(self, sampler, seeds, latents, steps, height, width):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

        patch = self.pipe.transformer.config.patch_size
        seq_len = (latents.shape[2] // patch) * (latents.shape[3] // patch)

        def set_up(scheduler, n, device):
            return retrieve_timesteps(scheduler, n, device, **shift_kwargs(scheduler, seq_len, 1.16))[0]

        return FlowStepper(self.pipe, steps, set_up)

    def denoiser_call(self, height, width, rows, guidance_scale, dtype, device, buckets=None):
        transformer = self.pipe.transformer

        def call(model_input, t, text, pooled, rows=None):  # every row alike: ``rows`` needs no subsetting
            return transformer(hidden_states=model_input, timestep=t.expand(model_input.shape[0]),
                               encoder_hidden_states=text, pooled_projections=pooled, return_dict=False)[0]

        return call

    def decode(self, latents, height, width, vae=None):
        return vae_decode(self.pipe, latents, vae)
