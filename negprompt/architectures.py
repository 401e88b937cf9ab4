"""Stable Diffusion pipelines built from configs, with random weights, offline.

Nothing can be downloaded where negprompt is tested, so tests and benchmarks build their pipelines here:

- ``tiny_sd_pipeline()`` / ``tiny_sdxl_pipeline()``: the few-thousand-parameter pipelines diffusers' own tests use,
  with a tokenizer built on the spot. Fast enough for every unit test; their images are noise, but noise that is
  a deterministic function of the prompts, seeds and settings, which is what the engine's tests check.
- ``tiny_sd3_pipeline()`` / ``tiny_flux_pipeline()``: the same for the transformer families (diffusers' test
  configs, a small T5 encoder and a T5 tokenizer built here; ``t5=False`` leaves SD3's T5 out, as SD3 allows).
- ``sd15_pipeline()`` / ``sdxl_pipeline()`` / ``sd3_pipeline()`` / ``flux_pipeline()``: the published Stable
  Diffusion 1.5, SDXL, SD3 Medium and FLUX.1-dev architectures (denoiser, VAE, text encoders) at full size with
  random weights, for speed and memory benchmarks, where weights do not matter.

Each returns a ready diffusers pipeline in float32 on the CPU (the two largest take ``device=``, to be made where
they run);
``save_pretrained(folder)`` then gives a folder that ``negprompt.load_pipeline(folder)`` loads like a real checkpoint.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from negprompt.tokenizer import build_clip_tokenizer, build_t5_tokenizer

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


def _tiny_vae(latent_channels: int = 4, **overrides) -> AutoencoderKL:
    """A four-block VAE (scale factor 8, like Stable Diffusion's) of a few thousand parameters."""
    return AutoencoderKL(
        block_out_channels=(4, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=latent_channels,
        norm_num_groups=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        **overrides,
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


# ---------------------------------------------------------------------------------------------------------------
# Transformer families: SD3 (MMDiT, three text encoders) and FLUX.1 (MMDiT + single blocks, CLIP and T5)

_FLUX_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
                       use_dynamic_shifting=True)
_FLOW_VAE = dict(use_quant_conv=False, use_post_quant_conv=False)


def _tiny_t5(tokenizer, d_model: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0))


def _t5_xxl(tokenizer) -> T5EncoderModel:
    """T5 v1.1 XXL's encoder (4.8B), the third text encoder of SD3 and the second of FLUX.1."""
    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                   num_heads=64, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def tiny_sd3_pipeline(seed: int = 0, *, t5: bool = True) -> StableDiffusion3Pipeline:
    """An SD3 pipeline of a few thousand parameters (diffusers' test configs; 16 latent channels as SD3 has),
    64x64 images. ``t5=False``: no T5 encoder (SD3 then reads zeros in its place)."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TEST_WORDS)
    t5_tokenizer = build_t5_tokenizer(TEST_WORDS)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
    )
    config = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  hidden_act="gelu", projection_dim=32)
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=_tiny_vae(16, shift_factor=0.0609, scaling_factor=1.5035, **_FLOW_VAE),
        text_encoder=CLIPTextModelWithProjection(_text_config(tokenizer, **config)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, **config)), tokenizer_2=tokenizer,
        text_encoder_3=_tiny_t5(t5_tokenizer, 64) if t5 else None, tokenizer_3=t5_tokenizer if t5 else None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def tiny_flux_pipeline(seed: int = 0, *, guidance_embeds: bool = False) -> FluxPipeline:
    """A FLUX.1 pipeline of a few thousand parameters (diffusers' test configs), 64x64 images (pass the size: a
    FLUX pipeline's own default is 1024). ``guidance_embeds=True``: a guidance-distilled transformer like
    FLUX.1-dev's, which reads the guidance scale as an input."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TEST_WORDS)
    t5_tokenizer = build_t5_tokenizer(TEST_WORDS)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
        guidance_embeds=guidance_embeds,
    )
    text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_size=32, intermediate_size=37,
                                              num_attention_heads=4, num_hidden_layers=2, hidden_act="gelu",
                                              projection_dim=32))
    return FluxPipeline(
        transformer=transformer, vae=_tiny_vae(4, shift_factor=0.0609, scaling_factor=1.5035, **_FLOW_VAE),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=_tiny_t5(t5_tokenizer, 32),
        tokenizer_2=t5_tokenizer, scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER),
    )


def _clip_l(tokenizer, cls=CLIPTextModel):
    return cls(_text_config(tokenizer, vocab_size=49408, hidden_size=768, intermediate_size=3072,
                            num_attention_heads=12, num_hidden_layers=12, hidden_act="quick_gelu",
                            projection_dim=768))


def sd3_pipeline(seed: int = 0, *, t5: bool = True, device: str | torch.device = "cpu") -> StableDiffusion3Pipeline:
    """The Stable Diffusion 3 Medium architecture at full size (2B MMDiT, CLIP-L, OpenCLIP bigG, T5-XXL unless
    ``t5=False``, 16-channel VAE), random weights, made on ``device``."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TEST_WORDS)
    t5_tokenizer = build_t5_tokenizer(TEST_WORDS)
    with torch.device(device):
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
            pos_embed_max_size=192,
        )
        vae = sd_vae(1024, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, **_FLOW_VAE)
        text_encoder = _clip_l(tokenizer, CLIPTextModelWithProjection)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(
            tokenizer, vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
            num_hidden_layers=32, hidden_act="gelu", projection_dim=1280,
        ))
        text_encoder_3 = _t5_xxl(t5_tokenizer) if t5 else None
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer if t5 else None, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def flux_pipeline(seed: int = 0, *, guidance_embeds: bool = True, device: str | torch.device = "cpu") -> FluxPipeline:
    """The FLUX.1-dev architecture at full size (12B transformer with the guidance embedding; ``guidance_embeds=
    False`` is FLUX.1-schnell's), CLIP-L, T5-XXL and the 16-channel VAE, random weights, made on ``device``."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(TEST_WORDS)
    t5_tokenizer = build_t5_tokenizer(TEST_WORDS)
    with torch.device(device):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
            guidance_embeds=guidance_embeds, axes_dims_rope=(16, 56, 56),
        )
        vae = sd_vae(1024, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, **_FLOW_VAE)
        text_encoder = _clip_l(tokenizer)
        text_encoder_2 = _t5_xxl(t5_tokenizer)
    return FluxPipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER),
    )
