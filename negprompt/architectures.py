"""Stable Diffusion pipelines built from configs, with random weights, offline.

Nothing can be downloaded where negprompt is tested, so tests and benchmarks build their pipelines here:

- ``tiny_sd_pipeline()`` / ``tiny_sdxl_pipeline()``: the few-thousand-parameter pipelines diffusers' own tests use,
  with a tokenizer built on the spot. Fast enough for every unit test; their images are noise, but noise that is
  a deterministic function of the prompts, seeds and settings, which is what the engine's tests check.
- ``sd15_pipeline()`` / ``sdxl_pipeline()``: the published Stable Diffusion 1.5 and SDXL architectures (UNet, VAE,
  CLIP text encoders) at full size with random weights, for speed and memory benchmarks, where weights do not matter.

Each returns a ready ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` in float32 on the CPU;
``save_pretrained(folder)`` then gives a folder that ``negprompt.load_pipeline(folder)`` loads like a real checkpoint.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from negprompt.tokenizer import build_clip_tokenizer

# Words the test and benchmark prompts use; anything else still tokenizes, byte by byte.
TEST_WORDS = (
    "portrait photo of a man woman with without mustache beard glasses hat red blue green yellow background "
    "smile scarf earrings blurry ugly lowres bad anatomy cartoon painting dog cat astronaut riding horse"
).split()

_SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _text_config(tokenizer, **overrides) -> CLIPTextConfig:
    base = dict(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_position_embeddings=77,
    )
    return CLIPTextConfig(**{**base, **overrides})


def _tiny_vae() -> AutoencoderKL:
    """A four-block VAE (scale factor 8, like Stable Diffusion's) of a few thousand parameters."""
    return AutoencoderKL(
        block_out_channels=(4, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A Stable Diffusion 1.x pipeline of a few thousand parameters (diffusers' test configs), 64x64 images."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TEST_WORDS)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2,
    )
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_text_config(
        tokenizer, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
    ))
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(**_SD_SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """An SDXL pipeline of a few thousand parameters (diffusers' test configs), 64x64 images."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TEST_WORDS)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    vae = _tiny_vae()
    config = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  hidden_act="gelu", projection_dim=32)
    return StableDiffusionXLPipeline(
        unet=unet, vae=vae,
        text_encoder=CLIPTextModel(_text_config(tokenizer, **config)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, **config)), tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**_SD_SCHEDULER, steps_offset=1, timestep_spacing="leading"),
    )


def sd_vae(sample_size: int = 512, **overrides) -> AutoencoderKL:
    """Stable Diffusion's VAE at full size (84M; SD 1.x, 2.x and SDXL share the architecture)."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=sample_size,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **overrides,
    )


def sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The Stable Diffusion 1.5 architecture at full size (860M UNet, 123M CLIP ViT-L/14 text encoder, 84M VAE)."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TEST_WORDS)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = sd_vae(512)
    text_encoder = CLIPTextModel(_text_config(
        tokenizer, vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768,
    ))
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=PNDMScheduler(**_SD_SCHEDULER, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """The SDXL base 1.0 architecture at full size (2.6B UNet, CLIP ViT-L and OpenCLIP ViT-bigG text encoders)."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TEST_WORDS)
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = sd_vae(1024, scaling_factor=0.13025, force_upcast=True)
    text_encoder = CLIPTextModel(_text_config(
        tokenizer, vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768,
    ))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(
        tokenizer, vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
        num_hidden_layers=32, hidden_act="gelu", projection_dim=1280,
    ))
    return StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**_SD_SCHEDULER, steps_offset=1, timestep_spacing="leading"),
    )
