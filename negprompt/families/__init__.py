"""Model families: what the engine needs from a kind of pipeline, behind one small interface.

The engine (``negprompt.engine``) owns the comparison: the batch layout of (cell, branch) rows, chunking on
out-of-memory, previews, progress and each cell's guidance method. A family owns everything that depends on the
model: how texts become conditioning, the starting noise of a seed, the sampler, one batched denoiser call per step
and decoding. ``family_of(pipe)`` picks it from the pipeline's class:

- ``UNetFamily`` (``unet.py``): Stable Diffusion 1.x/2.x and SDXL (``StableDiffusionPipeline``,
  ``StableDiffusionXLPipeline``).
- ``SD3Family`` (``sd3.py``): SD3 and SD3.5 (``StableDiffusion3Pipeline``), with or without its T5 encoder.
- ``FluxFamily`` (``flux.py``): FLUX.1 (``FluxPipeline``), true CFG with the negative; a guidance-distilled
  transformer (FLUX.1-dev) also reads its distilled guidance (``FLUX_EMBEDDED_GUIDANCE``).

Any other pipeline class is refused by name (``InputError`` with ``argument="model"``).

The interface (``Family``):

    family = family_of(pipe)
    family.encode(texts) -> TextTable                     # every distinct text encoded once
    family.initial_latent(seed, height, width, dtype)     # (1, ...) the latent diffusers draws for the seed
    stepper = family.stepper(sampler, seeds, latents, steps, height, width)   # timesteps, scale, step, x0
    call = family.denoiser_call(height, width, rows, guidance_scale, dtype, device)
    out = call(model_input, t, text, pooled, rows=None)   # one batched denoiser call per step (``rows``: the
                                                          # subset of the batch rows given, where texts of two
                                                          # lengths meet)
    family.decode(latents, height, width, vae=None)       # images
    family.attention_wrapper(name)                        # the wrapper of the denoiser's attention processor
                                                          # ``name`` (``negprompt.attention``), installed once at
                                                          # load time; None: left as it is
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from negprompt.errors import InputError


class Paired(NamedTuple):
    """A text table key of a batch row that reads one key's embeddings (``text``) with another's pooled embeddings
    (``pooled``): an attention-steering cell's steering row on a transformer, which reads the negative prompt but
    shares the positive's pooled text, and so its modulation (``negprompt.attention``)."""

    text: object
    pooled: object


class TextTable:
    """Every distinct text of a comparison, encoded once: key -> embeddings (1, tokens, dim) and, where the model
    has them, pooled embeddings (1, dim). A key is the text itself under the plain reading and ``("a1111", text)``
    under the a1111 reading (``negprompt.engine.text_key``); ``None`` reads as zero embeddings (SDXL's "no
    negative")."""

    def __init__(self, embeds: dict, pooled: dict | None):
        self.embeds, self.pooled = embeds, pooled
        first = next(iter(embeds.values()))
        self.dtype = first.dtype
        self._zeros = torch.zeros_like(first)
        self._zeros_pooled = torch.zeros_like(next(iter(pooled.values()))) if pooled else None

    def length(self, key) -> int:
        """Tokens in the embeddings of ``key`` (77 per chunk for CLIP)."""
        key = key.text if isinstance(key, Paired) else key
        return (self._zeros if key is None else self.embeds[key]).shape[1]

    def stack(self, keys: list, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        texts = [k.text if isinstance(k, Paired) else k for k in keys]
        embeds = torch.cat([self._zeros if k is None else self.embeds[k] for k in texts]).to(device)
        if self.pooled is None:
            return embeds, None
        pooled_keys = [k.pooled if isinstance(k, Paired) else k for k in keys]
        pooled = torch.cat([self._zeros_pooled if k is None else self.pooled[k] for k in pooled_keys]).to(device)
        return embeds, pooled


class Family:
    """What the engine asks of a kind of pipeline (see the module doc). One instance per pipeline, cheap to make;
    it never changes the pipeline."""

    name = "family"
    pipeline_classes: tuple[str, ...] = ()

    def __init__(self, pipe):
        self.pipe = pipe

    # --- facts
    @property
    def denoiser(self):
        """The module that predicts noise (or velocity): the UNet or the transformer."""
        raise NotImplementedError

    @property
    def size_factor(self) -> int:
        """Heights and widths must be multiples of this."""
        return self.pipe.vae_scale_factor

    def default_side(self) -> int:
        raise NotImplementedError

    @property
    def distilled(self) -> bool:
        """Whether the denoiser takes the guidance scale as an input and so runs no negative branch."""
        return False

    def guidance_active(self, guidance_scale: float) -> bool:
        """Whether a plain pipeline call would run the negative branch at this scale."""
        return guidance_scale > 1 and not self.distilled

    # An attention-steering cell (NAG) gets one more batch row, its negative's text stream, where text tokens change
    # from block to block (the transformers); the UNet's steering reads the negative's embeddings directly.
    steers_by_row = False

    def attention_wrapper(self, name: str):
        """The wrapper (``negprompt.attention``) of the denoiser's attention processor ``name``: a class or function
        taking the processor, or None to leave it as it is. Wrapped layers let guidance methods steer attention."""
        return None

    @property
    def tokenizer(self):
        """The CLIP tokenizer whose 77-token limit the prompt warnings count against."""
        return self.pipe.tokenizer if self.pipe.tokenizer is not None else self.pipe.tokenizer_2

    def default_baseline(self) -> str:
        return "empty"

    def samplers(self) -> list[str] | None:
        """The sampler names this family runs (None: every name of ``negprompt.schedulers``; the flow-matching
        families run only their pipeline's own, "Default")."""
        return None

    # --- the run
    def encode(self, texts: list[str]) -> TextTable:
        raise NotImplementedError

    def initial_latent(self, seed: int, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def stepper(self, sampler: str, seeds: list[int], latents: torch.Tensor, steps: int, height: int, width: int):
        raise NotImplementedError

    def denoiser_call(self, height: int, width: int, rows: int, guidance_scale: float, dtype, device, buckets=None):
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, height: int, width: int, vae=None) -> list:
        raise NotImplementedError


def _families() -> list[type[Family]]:
    from negprompt.families.flux import FluxFamily
    from negprompt.families.sd3 import SD3Family
    from negprompt.families.unet import UNetFamily

    return [UNetFamily, SD3Family, FluxFamily]


def supported_classes() -> list[str]:
    """The pipeline class names negprompt runs."""
    return [name for family in _families() for name in family.pipeline_classes]


# Why some well-known pipeline classes are not run yet (a class not named here gets the generic reason).
NOT_YET = {
    "PixArtAlphaPipeline": "PixArt's transformer is not one of negprompt's families yet",
    "PixArtSigmaPipeline": "PixArt's transformer is not one of negprompt's families yet",
    "SanaPipeline": "Sana's linear-attention transformer is not one of negprompt's families yet",
    "ChromaPipeline": "Chroma is not one of negprompt's families yet",
    "QwenImagePipeline": "Qwen-Image is not one of negprompt's families yet",
    "StableDiffusionXLImg2ImgPipeline": "negprompt makes images from text only",
}


def refusal(class_name: str, model: str) -> InputError:
    """The error for a pipeline class no family runs, naming the class and the ones it does run."""
    reason = NOT_YET.get(class_name, "no model family of negprompt drives it")
    return InputError("model", model, f"model={model!r} is a {class_name}; negprompt runs "
                                      f"{', '.join(supported_classes())}: {reason}")


def family_of(pipe) -> Family:
    """The family that runs ``pipe`` (a diffusers pipeline), or ``InputError`` naming its class."""
    lineage = [cls.__name__ for cls in type(pipe).__mro__]
    for family in _families():
        if any(name in family.pipeline_classes for name in lineage):
            return family(pipe)
    raise refusal(lineage[0], getattr(pipe, "name_or_path", "") or lineage[0])
