"""Stable Diffusion 1.x/2.x and SDXL: a UNet predicting noise (or v), CLIP text encoders, the SD VAE.

Every cell with seed ``s`` starts from ``torch.randn`` of ``torch.Generator("cpu").manual_seed(s)`` (what diffusers'
``prepare_latents`` draws), scaled by the scheduler's initial sigma; SDXL's added conditions (pooled text, size
ids) and an LCM-style UNet's guidance embedding are made once per chunk.
"""

from __future__ import annotations

import torch
from PIL import Image

from negprompt import guidance
from negprompt.embeddings import prompt_text
from negprompt.families import Family, TextTable
from negprompt.schedulers import is_stochastic, make_scheduler
from negprompt.speedups import bucketed_unet


class UNetFamily(Family):
    name = "unet"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")

    @property
    def denoiser(self):
        return self.pipe.unet

    @property
    def sdxl(self) -> bool:
        return getattr(self.pipe, "text_encoder_2", None) is not None

    def default_side(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def distilled(self) -> bool:
        return self.pipe.unet.config.time_cond_proj_dim is not None

    def default_baseline(self) -> str:
        return "zeros" if self.sdxl else "empty"

    def attention_wrapper(self, name: str):
        from negprompt.attention import cross_attention

        return cross_attention(name)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextTable:
        """Text -> embeddings (and SDXL's pooled embeddings), through the pipeline's own ``encode_prompt`` (which
        writes out multi-vector negative embeddings; ``prompt_text`` lets it find their names in any case)."""
        pipe = self.pipe
        device = pipe._execution_device
        prompts = [prompt_text(pipe, t) for t in texts]
        if self.sdxl:
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            return TextTable(dict(zip(texts, embeds.split(1))), dict(zip(texts, pooled.split(1))))
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return TextTable(dict(zip(texts, embeds.split(1))), None)

    def initial_latent(self, seed: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        factor = self.pipe.vae_scale_factor
        shape = (1, self.pipe.unet.config.in_channels, height // factor, width // factor)
        return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)

    def stepper(self, sampler, seeds, latents, steps, height, width):
        return UNetStepper(self.pipe, sampler, seeds, latents, steps)

    def denoiser_call(self, height, width, rows, guidance_scale, dtype, device, buckets=None):
        pipe, unet = self.pipe, self.pipe.unet
        time_ids = None
        if self.sdxl:
            size = (height, width)
            projection = pipe.text_encoder_2.config.projection_dim
            time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype,
                                              text_encoder_projection_dim=projection).to(device).repeat(rows, 1)
        timestep_cond = None
        if unet.config.time_cond_proj_dim is not None:
            timestep_cond = pipe.get_guidance_scale_embedding(
                torch.tensor(guidance_scale - 1).repeat(rows), embedding_dim=unet.config.time_cond_proj_dim
            ).to(device=device, dtype=dtype)

        def call(model_input, t, text, pooled, rows=None):
            ids = time_ids if rows is None or time_ids is None else time_ids[rows]
            cond = timestep_cond if rows is None or timestep_cond is None else timestep_cond[rows]
            added = {"text_embeds": pooled, "time_ids": ids} if pooled is not None else None
            return bucketed_unet(unet, model_input, t, text, buckets=buckets, timestep_cond=cond,
                                 added_cond_kwargs=added)

        return call

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, height: int, width: int, vae=None) -> list[Image.Image]:
        """Images from ``latents`` through ``vae`` (default: the pipeline's), with the pipeline's post-processing.
        An ``AutoencoderTiny`` (scaling factor 1, no latent statistics) takes the latents as the UNet makes
        them."""
        pipe = self.pipe
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


class UNetStepper:
    """The scheduler(s) of one chunk. Deterministic schedulers step the whole batch at once; stochastic ones get one
    scheduler and one generator per cell, seeded like diffusers seeds a single-image call (the generator has drawn
    the starting latent before it draws step noise), so every cell gets its own single-call noise."""

    def __init__(self, pipe, name, seeds, latents, steps: int):
        device = pipe._execution_device
        first = make_scheduler(pipe.scheduler, name)
        if is_stochastic(first):
            self.groups = []
            for i, seed in enumerate(seeds):
                generator = torch.Generator("cpu").manual_seed(seed)
                torch.randn(latents[i:i + 1].shape, generator=generator, dtype=latents.dtype)
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

    def x0(self, model_input, eps, t):
        """The clean latent each row is heading for at this step (for previews)."""
        alpha_bar = self.scheduler.alphas_cumprod[int(round(float(t)))]
        x0 = guidance.predicted_original(model_input, eps, alpha_bar, self.scheduler.config.prediction_type)
        return x0.to(model_input.dtype)
