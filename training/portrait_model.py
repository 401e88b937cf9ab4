"""Train the embedded default model: a tiny latent diffusion model of procedural portraits.

One command draws the data, trains the VAE, then the text encoder and UNet together, writes sample grids as it
goes and saves a standard diffusers Stable Diffusion folder (``T`` is ``python -m training.portrait_model``,
from the repository's root):

    T --out runs/portrait --minutes 80                            # a CPU run (2 cores)
    T --out runs/portrait --minutes 10 --device cuda
    T --out runs/portrait --minutes 40 --resume                   # continue after an interruption
    T --out runs/portrait --minutes 90 --resume --extend 10000    # train a finished run further (warm restart)
    T --out runs/tiny --tiny --vae-steps 5 --steps 5              # seconds; what the tests run

Or start from a saved model, keeping its VAE and adding cross-attention at 16x16 (3 heads 16 channels wide) to its
UNet, with the new layers starting at zero so that the run starts from exactly the saved model:

    T --out runs/v2 --init-from assets/portrait-model --attn-levels 1,1,1 --attn-heads 3,32,32 --init-lr-scale 0.5 \
      --name-prob mustache=0.6 --name-prob smile=0.6 --minutes 110

The decoder stage can also run beside the UNet stage, in a second process (it does not change the latents):

    T --out runs/portrait --decoder-only --decoder-steps 4000 --minutes 38 --threads 1
    T --out runs/portrait --resume                                # afterwards: re-save with that decoder

Output: ``OUT/model/`` (load it with ``StableDiffusionPipeline.from_pretrained``), ``OUT/samples/*.png``,
``OUT/train.log.jsonl`` (losses), ``OUT/checkpoint.pt``, ``OUT/stage_*.pt`` and ``OUT/tokenizer/`` (for ``--resume``;
not the model).

Recipe: a fixed in-memory dataset of portraits (``negprompt.portrait_model.portraits``) drawn from ``--seed``; an
AutoencoderKL (64x64x3 -> 16x16x4, L1 + MSE + tiny KL) trained first, then its decoder alone on the frozen encoder's
latents; the dataset is encoded once; then CLIPTextModel + UNet2DConditionModel learn v-prediction under Stable
Diffusion's ``scaled_linear`` schedule with min-SNR-5 loss weights, AdamW, linear warmup then cosine decay, an EMA
of the weights (what is saved), and a fresh caption per image per step (10% empty: the prompt dropout that gives the
unconditional branch its meaning). With ``--minutes`` the UNet step count is fitted to the remaining time and
re-fitted every 100 steps to the measured speed, so the cosine schedule ends on time on a busy machine; with
``--steps`` the run is fully determined by the seed. The UNet is saved in float16 (it loads as float32).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# OpenMP threads that spin while waiting slow a shared CPU down several times; must be set before torch loads. Only
# for the command: a program that imports this module (a benchmark, the tests) keeps its own OpenMP settings.
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from negprompt.portrait_model.portraits import ALL_WORDS, BINARY, caption_for, grid, portrait_array, sample_portraits  # noqa: E402
from negprompt.tokenizer import build_clip_tokenizer  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    seed: int = 0  # seeds the dataset, captions, initial weights and noise
    n_images: int = 20000  # size of the fixed in-memory dataset
    vae_channels: tuple[int, ...] = (16, 32, 64)  # AutoencoderKL block widths (3 blocks: 64 -> 16)
    vae_steps: int = 1800  # VAE optimizer steps
    vae_batch: int = 16  # VAE batch size
    vae_lr: float = 1e-3  # VAE peak learning rate
    kl_weight: float = 1e-6  # weight of the VAE's KL term
    decoder_steps: int = 1500  # extra steps that train only the VAE decoder on the frozen encoder's latents
    decoder_lr: float = 5e-4  # peak learning rate of the decoder-only stage
    text_width: int = 64  # CLIP text encoder hidden size
    text_layers: int = 2  # CLIP text encoder layers (0: each output position is its token's own normalised embedding)
    text_positions: bool = True  # learn position embeddings; False: they stay zero, so with 0 layers "mustache"
    # gives the same key wherever it stands (a bag of words; see build_models)
    text_heads: int = 2  # CLIP text encoder attention heads (2 x 32 channels)
    unet_channels: tuple[int, ...] = (48, 96, 96)  # UNet block widths at 16x16, 8x8, 4x4 latent resolution
    unet_layers: int = 1  # resnet layers per UNet block
    attn_levels: tuple[bool, ...] = (False, True, True)  # cross-attention per UNet level (16x16, 8x8, 4x4)
    attn_heads: int | tuple[int, ...] = 32  # heads per UNet attention layer, or one count per level (see build_models)
    steps: int = 0  # UNet optimizer steps; 0 means: fit them to the time budget
    batch: int = 32  # UNet batch size
    lr: float = 8e-4  # UNet and text encoder peak learning rate
    warmup: int = 200  # linear warmup steps
    ema: float = 0.999  # EMA decay of the saved weights
    snr_gamma: float = 5.0  # min-SNR loss weight cap
    p_empty: float = 0.1  # share of empty captions (prompt dropout)
    p_tags: float = 0.4  # share of tag-style captions among the non-empty ones
    name_prob: dict[str, float] = field(default_factory=dict)  # per attribute: P(named | present), default 0.5
    init_from: str = ""  # a saved model folder to start from: its VAE (frozen), tokenizer, text encoder and UNet
    init_lr_scale: float = 1.0  # with init_from: learning rate of the loaded weights relative to lr (new ones: lr)
    fresh_text: bool = False  # with init_from: a new text encoder (from this config) instead of the saved one
    mouth_weight: float = 0.0  # extra loss weight on the latent cells of the mouth (see region_weights)
    sample_every: int = 2000  # steps between sample grids
    checkpoint_every: int = 500  # steps between checkpoints
    time_margin: float = 0.95  # share of the remaining budget planned for UNet steps (the rest is slack)
    replan_every: int = 100  # with --minutes: steps between re-fits of the step count to the measured speed


# The fields that shape the models: a checkpoint only resumes under the same values.
ARCHITECTURE = ("vae_channels", "text_width", "text_layers", "text_heads", "text_positions", "unet_channels",
                "unet_layers", "attn_levels", "attn_heads")

TINY = dict(n_images=256, vae_channels=(8, 16, 16), decoder_steps=2, text_width=32, text_layers=1,
            unet_channels=(16, 32, 32), attn_heads=2, text_heads=2, batch=8, vae_batch=8, warmup=2,
            sample_every=10**9, checkpoint_every=10**9)


def build_models(cfg: TrainConfig, vocab_size: int) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    """Fresh VAE, text encoder and UNet for ``cfg``."""
    groups = math.gcd(16, *cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1, norm_num_groups=groups,
        block_out_channels=cfg.vae_channels, down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_width, intermediate_size=2 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=77, projection_dim=cfg.text_width,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    ))
    if not cfg.text_positions:
        # Without layers, CLIP's text model is final_layer_norm(token + position). With the position term fixed at
        # zero each output is its token's embedding normalised to unit scale: training can turn a word's direction,
        # but shrinking it changes nothing until its norm nears 0.03 (where the norm's epsilon, 1e-5, matters), ten
        # times below where the 2-layer encoder's silenced "mustache" and "smile" ended (0.35). And a negative
        # prompt's keys are the same words the captions taught, wherever they stand.
        with torch.no_grad():
            _positions(text).zero_()
        _positions(text).requires_grad_(False)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attn_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attn_levels))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=cfg.unet_layers,
        block_out_channels=cfg.unet_channels, down_block_types=down, up_block_types=up,
        # diffusers' UNet2DConditionModel reads attention_head_dim as the NUMBER of heads (a naming quirk kept for
        # Stable Diffusion's configs, whose "8" means 8 heads). The shipped model was trained with 32, meant as a
        # width: 32 heads 3 channels wide. 6 heads 16 wide (--attn-heads 6 --text-heads 4) was tried against it:
        # 1.5x faster to sample, the same words bound, slightly worse on the evaluation (see the model card).
        # A tuple gives one head count per level (down order), e.g. (3, 32, 32): 3 heads 16 wide at 16x16.
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.attn_heads,
        norm_num_groups=math.gcd(16, *cfg.unet_channels),
    )
    return vae, text, unet


def architecture_of(folder: Path) -> dict:
    """The ``TrainConfig`` architecture fields of a saved model folder (for ``TrainConfig(**architecture_of(f))``).

    ``text_positions`` is False when the saved position embeddings are all zero."""
    from safetensors.torch import load_file

    text = json.loads((Path(folder) / "text_encoder" / "config.json").read_text())
    unet = json.loads((Path(folder) / "unet" / "config.json").read_text())
    positions = next(v for k, v in load_file(Path(folder) / "text_encoder" / "model.safetensors").items()
                     if k.endswith("position_embedding.weight"))
    heads = unet["attention_head_dim"]
    return dict(text_width=text["hidden_size"], text_layers=text["num_hidden_layers"],
                text_heads=text["num_attention_heads"], text_positions=bool(torch.count_nonzero(positions)),
                unet_channels=tuple(unet["block_out_channels"]), unet_layers=unet["layers_per_block"],
                attn_levels=tuple(t.startswith("CrossAttn") for t in unet["down_block_types"]),
                attn_heads=tuple(heads) if isinstance(heads, list) else heads)


def _positions(text: CLIPTextModel) -> torch.nn.Parameter:
    """The position embedding table of a CLIP text model (its module path differs between transformers versions)."""
    return next(p for n, p in text.named_parameters() if n.endswith("position_embedding.weight"))


def warm_start(cfg: TrainConfig, folder: Path, vocab_size: int):
    """``build_models(cfg)`` with the weights of the saved model ``folder``; returns (vae, text, unet, new names).

    The VAE and text encoder must match ``cfg`` exactly. The UNet may add cross-attention at levels the saved one
    lacked (``attn_levels``): those layers are the only new parameters (their names are returned), and each one's
    output projection starts at zero, so the residual attention adds nothing and the warm-started UNet computes
    exactly what the saved one does until training moves it.

    With ``cfg.fresh_text`` the text encoder is new (built from ``cfg``) and the UNet keeps everything but what it
    read from the old encoder: every cross-attention output projection starts at zero (the UNet starts out as the
    saved one with its text removed) and the cross-attention layers count as new.
    """
    from safetensors.torch import load_file

    vae, text, unet = build_models(cfg, vocab_size)
    vae.load_state_dict(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    vae.register_to_config(scaling_factor=json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"])
    if not cfg.fresh_text:
        text.load_state_dict(load_file(folder / "text_encoder" / "model.safetensors"))
    missing, unexpected = unet.load_state_dict(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"),
                                               strict=False)
    if unexpected or any(".attentions." not in k for k in missing):
        lacking = [k for k in missing if ".attentions." not in k]
        raise ValueError(f"{folder} does not fit this architecture: it lacks {lacking} and has unknown {unexpected}")
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith(".proj_out") and f"{name}.weight" in missing:
                module.weight.zero_()
                module.bias.zero_()
        if cfg.fresh_text:
            for name, module in unet.named_modules():
                if name.endswith(".attn2"):
                    module.to_out[0].weight.zero_()
                    module.to_out[0].bias.zero_()
                    missing += [f"{name}.{k}" for k, _ in module.named_parameters()]
    return vae.eval(), text, unet, set(missing)


def noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion's scaled_linear schedule with v-prediction (the training side of the saved DDIM)."""
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, prediction_type="v_prediction", clip_sample=False)


def sampling_scheduler() -> DDIMScheduler:
    """The scheduler saved with the model: DDIM over the same schedule, trailing timesteps, no clipping."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, prediction_type="v_prediction", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")


def cosine_lr(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to 2% of it at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 64, 64, 3) -> float (n, 3, 64, 64) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def train_vae(vae: AutoencoderKL, images: np.ndarray, cfg: TrainConfig, device: str, out: Path) -> list[float]:
    """Train the autoencoder with L1 reconstruction + a tiny KL term; returns the loss curve (every 50 steps)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + 1)
    vae.train()
    curve, running = [], 0.0
    for step in range(cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.vae_steps, min(100, cfg.warmup), cfg.vae_lr)
        x = to_tensor(images[rng.integers(len(images), size=cfg.vae_batch)]).to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean() / (4 * 16 * 16)
        loss = F.l1_loss(rec, x) + 0.5 * F.mse_loss(rec, x) + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item()
        if (step + 1) % 50 == 0 or step + 1 == cfg.vae_steps:
            curve.append(running / (50 if (step + 1) % 50 == 0 else (step + 1) % 50))
            log.info("vae step %d/%d loss %.4f", step + 1, cfg.vae_steps, curve[-1])
            _log_json(out, {"phase": "vae", "step": step + 1, "loss": curve[-1]})
            running = 0.0
    vae.eval()
    return curve


def finetune_decoder(vae: AutoencoderKL, images: np.ndarray, cfg: TrainConfig, device: str, out: Path,
                     deadline: float | None = None) -> None:
    """Train only the decoder on the frozen encoder's latents: sharper images, same latent space for the UNet."""
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + 4)
    vae.eval()
    vae.decoder.train()
    for step in range(cfg.decoder_steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.decoder_steps, 50, cfg.decoder_lr)
        x = to_tensor(images[rng.integers(len(images), size=cfg.vae_batch)]).to(device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + 0.5 * F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log.info("decoder step %d/%d loss %.4f", step + 1, cfg.decoder_steps, loss.item())
            _log_json(out, {"phase": "decoder", "step": step + 1, "loss": loss.item()})
        if deadline is not None and time.time() > deadline:
            log.warning("decoder stage out of time at step %d of %d", step + 1, cfg.decoder_steps)
            break
    vae.eval()


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: np.ndarray, device: str, batch: int = 256) -> torch.Tensor:
    """Latent means of the whole dataset, unscaled, on the CPU."""
    chunks = [vae.encode(to_tensor(images[i:i + batch]).to(device)).latent_dist.mean.cpu()
              for i in range(0, len(images), batch)]
    return torch.cat(chunks)


def train_autoencoder(vae: AutoencoderKL, images: np.ndarray, cfg: TrainConfig, device: str, out: Path,
                      deadline: float | None) -> None:
    """The VAE stage, then the decoder stage; each saves its weights in ``out`` and is skipped when they exist."""
    vae_path = out / "stage_vae.pt"
    if vae_path.exists():
        vae.load_state_dict(torch.load(vae_path))
        vae.eval()
    else:
        train_vae(vae, images, cfg, device, out)
        torch.save(vae.state_dict(), vae_path)
    decoder_path = out / "stage_decoder.pt"
    if decoder_path.exists():
        vae.load_state_dict(torch.load(decoder_path))
    elif cfg.decoder_steps:
        finetune_decoder(vae, images, cfg, device, out, deadline=deadline)
        torch.save(vae.state_dict(), decoder_path)


def _log_json(out: Path, record: dict) -> None:
    with open(out / "train.log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


class CaptionBatcher:
    """Fresh captions for dataset rows, tokenized to 77 ids (cached per caption string)."""

    def __init__(self, people, tokenizer, cfg: TrainConfig):
        self.people, self.tokenizer, self.cfg = people, tokenizer, cfg
        self.cache: dict[str, list[int]] = {}

    def __call__(self, rows: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        ids = []
        for r in rows:
            text = caption_for(self.people[r], rng, p_empty=self.cfg.p_empty, p_tags=self.cfg.p_tags,
                               name_prob=self.cfg.name_prob)
            if text not in self.cache:
                self.cache[text] = self.tokenizer(text, padding="max_length", max_length=77,
                                                  truncation=True).input_ids
            ids.append(self.cache[text])
        return torch.tensor(ids)


def region_weights(cfg: TrainConfig, side: int = 16) -> torch.Tensor | None:
    """Per latent cell loss weights with mean 1: ``1 + cfg.mouth_weight`` on the mouth, 1 elsewhere (None if 0).

    The mustache and the mouth (``portraits.draw_portrait``: y 32-45, x 21-43 with the head's jitter) cover about
    24 of the 256 latent cells, so their share of the loss is small next to the hat, hair and background; the
    weight raises it while leaving the rest of the image in the loss.
    """
    if not cfg.mouth_weight:
        return None
    weights = torch.ones(side, side)
    weights[8:12, 5:11] += cfg.mouth_weight
    return weights / weights.mean()


def diffusion_loss(unet, text, sched, latents, ids, gen, cfg: TrainConfig,
                   region: torch.Tensor | None = None) -> torch.Tensor:
    """v-prediction MSE at uniform random timesteps, weighted by min(SNR, gamma) / (SNR + 1) (and ``region``)."""
    noise = torch.randn(latents.shape, generator=gen).to(latents.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(latents.device)
    noisy = sched.add_noise(latents, noise, t)
    target = sched.get_velocity(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text(ids)[0]).sample
    alpha = sched.alphas_cumprod.to(latents.device)[t]
    snr = alpha / (1 - alpha)
    weight = torch.clamp(snr, max=cfg.snr_gamma) / (snr + 1)
    error = F.mse_loss(pred, target, reduction="none")
    if region is not None:
        error = error * region.to(error.device)
    return (weight * error.mean(dim=(1, 2, 3))).mean()


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def assemble(vae, text, unet, tokenizer, scale: float) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline (no safety checker) from the parts, in float32 on the CPU."""
    vae.register_to_config(scaling_factor=scale)
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).cpu().float(), text_encoder=copy.deepcopy(text).cpu().float(), tokenizer=tokenizer,
        unet=copy.deepcopy(unet).cpu().float(), scheduler=sampling_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


SAMPLE_PROMPTS = ["portrait photo of a man", "portrait photo of a man with a mustache",
                  "portrait photo of a man with glasses", "portrait photo of a man with a red hat"]


@torch.no_grad()
def write_samples(pipe: StableDiffusionPipeline, path: Path, seed: int = 0, per_prompt: int = 8) -> None:
    """A grid: one row per prompt in SAMPLE_PROMPTS plus a row of the plain prompt with negative "mustache"."""
    rows = [(p, "") for p in SAMPLE_PROMPTS] + [(SAMPLE_PROMPTS[0], "mustache")]
    latents = torch.randn((per_prompt, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
    images = []
    for prompt, negative in rows:
        images += pipe([prompt] * per_prompt, negative_prompt=[negative] * per_prompt, latents=latents,
                       num_inference_steps=20, guidance_scale=5.0, height=64, width=64).images
    grid(images, cols=per_prompt).save(path)


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def reinit_token(dst: int, others: list[int], texts: list[CLIPTextModel], opt: torch.optim.Optimizer,
                 gen: torch.Generator) -> None:
    """Give token ``dst`` a fresh embedding orthogonal to every token in ``others``, in every model of ``texts``.

    For a word that training left unbound (``benchmarks/word_binding.py``: naming it changes nothing), in case a
    random start near other words' embeddings trapped it: once those words bind, such a word drives their features
    and training silences it. The fresh vector has the mean norm of the ``others`` and shares no direction with
    them; the first model's AdamW moments for it restart (first moment zero, second moment the others' mean).
    Tried on the embedded model's "mustache", it did not bind the word (see the model card).
    """
    with torch.no_grad():
        weight = texts[0].get_input_embeddings().weight
        basis = torch.linalg.qr(weight[others].T.float()).Q  # orthonormal columns spanning the other words
        fresh = torch.randn(weight.shape[1], generator=gen).to(weight)
        fresh -= basis @ (basis.T @ fresh)
        fresh *= weight[others].norm(dim=1).mean() / fresh.norm()
        for model in texts:
            model.get_input_embeddings().weight[dst] = fresh
        moments = opt.state.get(weight, {})
        if "exp_avg" in moments:
            moments["exp_avg"][dst] = 0
            moments["exp_avg_sq"][dst] = moments["exp_avg_sq"][others].mean(dim=0)


def _optimizer(text, unet, cfg: TrainConfig, new: frozenset[str]) -> tuple[torch.optim.AdamW, list]:
    """AdamW over the trainable parameters of ``text`` and ``unet`` (also returned), in groups with a learning rate
    ``scale``: the UNet parameters named in ``new`` (and a fresh text encoder) at 1, the loaded ones at
    ``cfg.init_lr_scale`` when warm-started from ``cfg.init_from``."""
    params = [p for p in list(unet.parameters()) + list(text.parameters()) if p.requires_grad]
    fresh = [p for n, p in unet.named_parameters() if n in new]
    if cfg.fresh_text:  # the new text encoder learns at the full rate
        fresh += [p for p in text.parameters() if p.requires_grad]
    loaded = [p for p in params if all(p is not f for f in fresh)]
    groups = [dict(params=loaded, scale=cfg.init_lr_scale if cfg.init_from else 1.0)]
    if fresh:
        groups.append(dict(params=fresh, scale=1.0))
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01), params


def _resume(ckpt: Path, cfg: TrainConfig, parts: dict, rng: np.random.Generator, gen: torch.Generator,
            extend: int) -> tuple[int, list[float]]:
    """Load the checkpoint ``ckpt`` into ``parts`` (its keys: unet, text, ema_unet, ema_text, opt) and the random
    generators; set ``cfg.steps`` to its planned total plus ``extend``; returns its step and loss curve. Refuses a
    checkpoint trained with another architecture."""
    state = torch.load(ckpt, weights_only=False)
    changed = {k: (v, getattr(cfg, k)) for k, v in state.get("config", {}).items()
               if k in ARCHITECTURE and v != getattr(cfg, k)}
    if changed:  # e.g. the head count changes no weight shape, so the weights would load and mean nothing
        raise ValueError(f"{ckpt} was trained with another architecture (saved, now): {changed}")
    for key, part in parts.items():
        part.load_state_dict(state[key])
    rng.bit_generator.state = state["rng"]
    gen.set_state(state["gen"])
    cfg.steps = state["steps"] + extend
    return state["step"], state["curve"]


def train_diffusion(text, unet, latents, batcher, cfg: TrainConfig, device: str, out: Path,
                    plan_end: float | None, make_pipe, extend: int = 0, reinit: tuple[int, ...] = (),
                    words: tuple[int, ...] = (), new: frozenset[str] = frozenset()) -> dict:
    """Joint text encoder + UNet training; returns a summary. Resumes from ``out/checkpoint.pt`` if present.

    With ``plan_end`` (a time.time() value) the step count is re-fitted every ``cfg.replan_every`` steps to the
    measured speed, so the cosine schedule ends on time even when the machine gets busier or quieter. On resume,
    ``extend`` adds steps to the checkpoint's planned total (a warm restart: the cosine schedule stretches to the
    new end, so the learning rate rises again) and each token of ``reinit`` gets a fresh embedding orthogonal to
    the other tokens of ``words`` (``reinit_token``). With ``cfg.init_from``, the UNet parameters named in ``new``
    (the layers the warm start added) learn at ``cfg.lr`` and all the others at ``cfg.lr * cfg.init_lr_scale``.
    """
    sched, region = noise_scheduler(), region_weights(cfg)
    opt, params = _optimizer(text, unet, cfg, new)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    rng, gen, step, curve = np.random.default_rng(cfg.seed + 2), torch.Generator().manual_seed(cfg.seed + 3), 0, []
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        step, curve = _resume(ckpt, cfg, dict(unet=unet, text=text, ema_unet=ema_unet, ema_text=ema_text, opt=opt),
                              rng, gen, extend)
        for dst in reinit:
            reinit_token(dst, [w for w in words if w != dst], [text, ema_text], opt, gen)
            log.info("token %d re-initialized", dst)
        log.info("resumed at step %d of %d", step, cfg.steps)
    t0, running, timed, lap = time.time(), 0.0, step, time.time()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr) * g["scale"]
        rows = rng.integers(len(latents), size=cfg.batch)
        loss = diffusion_loss(unet, text, sched, latents[rows].to(device), batcher(rows, rng).to(device), gen, cfg,
                              region)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        update_ema(ema_unet, unet, decay)
        update_ema(ema_text, text, decay)
        step += 1
        running += loss.item()
        if step % 50 == 0:
            curve.append(running / 50)
            running = 0.0
            rate = (time.time() - t0) / (step - timed)
            log.info("step %d/%d loss %.4f (%.3f s/step)", step, cfg.steps, curve[-1], rate)
            _log_json(out, {"phase": "unet", "step": step, "loss": curve[-1], "s_per_step": rate})
        if step % cfg.sample_every == 0:
            write_samples(make_pipe(ema_text, ema_unet), out / "samples" / f"step{step:06d}.png")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(ckpt, dict(unet=unet.state_dict(), text=text.state_dict(), opt=opt.state_dict(),
                                       ema_unet=ema_unet.state_dict(), ema_text=ema_text.state_dict(),
                                       rng=rng.bit_generator.state, gen=gen.get_state(), step=step,
                                       curve=curve, steps=cfg.steps,
                                       config={k: getattr(cfg, k) for k in ARCHITECTURE}))
        if plan_end is not None and step % cfg.replan_every == 0:
            rate, lap = (time.time() - lap) / cfg.replan_every, time.time()
            cfg.steps = max(step + 1, step + int(max(0.0, plan_end - lap) * cfg.time_margin / rate))
        if plan_end is not None and time.time() > plan_end + 120:
            log.warning("over the time budget: stopping at step %d of %d", step, cfg.steps)
            break
    return dict(ema_text=ema_text, ema_unet=ema_unet, step=step, curve=curve)


def fit_steps(unet, text, latents, batcher, cfg: TrainConfig, device: str, seconds: float) -> int:
    """Time a few throwaway steps on copies of the models and return how many steps fit in ``seconds``."""
    u, t = copy.deepcopy(unet), copy.deepcopy(text)
    opt = torch.optim.AdamW(list(u.parameters()) + list(t.parameters()), lr=0.0)
    rng, gen, sched = np.random.default_rng(12345), torch.Generator().manual_seed(12345), noise_scheduler()
    for i in range(13):
        if i == 3:
            start = time.time()
        rows = rng.integers(len(latents), size=cfg.batch)
        loss = diffusion_loss(u, t, sched, latents[rows].to(device), batcher(rows, rng).to(device), gen, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_step = (time.time() - start) / 10 * 1.04 + 0.0005  # EMA and logging overhead
    steps = int(seconds / per_step)
    log.info("timed %.3f s/step: %d steps fit in %.0f s", per_step, steps, seconds)
    return max(steps, 10)


def _word_id(tokenizer: CLIPTokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"{word!r} is not one token of this model's vocabulary")
    return ids[0]


def _run_tokenizer(out: Path, init_from: str = "") -> CLIPTokenizer:
    """The run's tokenizer, saved in ``out/tokenizer`` at its start and reloaded by ``--resume``.

    The byte-level BPE trainer breaks ties between equally frequent merges in no fixed order, so two builds can
    number a few sub-word merges differently (every caption word is one token with a stable id, so captions are
    unaffected). Reloading the saved one guarantees that a resumed checkpoint sees exactly the ids it learned.
    """
    folder = out / "tokenizer"
    if (folder / "tokenizer_config.json").exists():
        return CLIPTokenizer.from_pretrained(folder)
    if init_from:
        tokenizer = CLIPTokenizer.from_pretrained(Path(init_from) / "tokenizer")
    else:
        tokenizer = build_clip_tokenizer(ALL_WORDS)
    tokenizer.save_pretrained(folder)
    return tokenizer


def run(cfg: TrainConfig, out: Path, device: str, minutes: float, decoder_only: bool = False, extend: int = 0,
        reinit: tuple[str, ...] = ()) -> Path:
    """The whole recipe; returns the saved model folder (with ``decoder_only``: the decoder stage file).

    ``extend`` and ``reinit`` (words) apply when continuing a checkpoint; see ``train_diffusion``.
    """
    if (extend or reinit) and not (out / "checkpoint.pt").exists():  # before any work, not after the VAE stage
        raise ValueError(f"extend and reinit continue a checkpoint, and there is none in {out}")
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    torch.manual_seed(cfg.seed)
    people = sample_portraits(np.random.default_rng(cfg.seed), cfg.n_images)
    images = portrait_array(people)
    tokenizer = _run_tokenizer(out, cfg.init_from)
    new: set[str] = set()
    if cfg.init_from:  # the saved model's VAE stays as it is: its latents are the ones its UNet learned
        vae, text, unet, new = warm_start(cfg, Path(cfg.init_from), len(tokenizer))
        log.info("warm start from %s; new UNet parameters: %d tensors", cfg.init_from, len(new))
    else:
        vae, text, unet = build_models(cfg, len(tokenizer))
    vae, text, unet = vae.to(device), text.to(device), unet.to(device)
    log.info("parameters: vae %.2fM, text %.2fM, unet %.2fM", *(sum(p.numel() for p in m.parameters()) / 1e6
                                                              for m in (vae, text, unet)))
    if not cfg.init_from:
        train_autoencoder(vae, images, cfg, device, out, deadline=start + minutes * 60 if decoder_only else None)
    if decoder_only:
        return out / "stage_decoder.pt"
    raw = encode_all(vae, images, device)
    scale = vae.config.scaling_factor if cfg.init_from else float(1.0 / raw.std())
    latents = raw * scale
    log.info("latent scaling factor %.4f", scale)
    batcher = CaptionBatcher(people, tokenizer, cfg)
    plan_end = None if cfg.steps else start + minutes * 60 - 60
    if not cfg.steps and not (out / "checkpoint.pt").exists():
        cfg.steps = fit_steps(unet, text, latents, batcher, cfg, device, (plan_end - time.time()) * cfg.time_margin)
    make_pipe = lambda t, u: assemble(vae, t, u, tokenizer, scale)  # noqa: E731
    words = tuple(_word_id(tokenizer, w) for w in ALL_WORDS)
    result = train_diffusion(text, unet, latents, batcher, cfg, device, out, plan_end, make_pipe, extend,
                             tuple(_word_id(tokenizer, w) for w in reinit), words, frozenset(new))
    save_model(make_pipe(result["ema_text"], result["ema_unet"]), out / "model")
    pipe = StableDiffusionPipeline.from_pretrained(out / "model")
    pipe.set_progress_bar_config(disable=True)
    write_samples(pipe, out / "samples" / "final.png")
    summary = dict(steps=result["step"], minutes=(time.time() - start) / 60, device=device,
                   final_loss=result["curve"][-1] if result["curve"] else None, scaling_factor=scale)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("saved %s: %s", out / "model", summary)
    return out / "model"


def export_checkpoint(cfg: TrainConfig, out: Path) -> Path:
    """Save ``out/model`` from the EMA weights of ``out/checkpoint.pt`` as they are, without training.

    For a run stopped early (out of time): the model it would save at that step. ``cfg`` must be the run's.
    """
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    tokenizer = _run_tokenizer(out, cfg.init_from)
    if cfg.init_from:
        vae, text, unet, _ = warm_start(cfg, Path(cfg.init_from), len(tokenizer))
        scale = vae.config.scaling_factor
    else:
        vae, text, unet = build_models(cfg, len(tokenizer))
        vae.load_state_dict(torch.load(out / ("stage_decoder.pt" if (out / "stage_decoder.pt").exists()
                                              else "stage_vae.pt")))
        people = sample_portraits(np.random.default_rng(cfg.seed), cfg.n_images)
        scale = float(1.0 / encode_all(vae.eval(), portrait_array(people), "cpu").std())
    text.load_state_dict(state["ema_text"])
    unet.load_state_dict(state["ema_unet"])
    save_model(assemble(vae, text.eval(), unet.eval(), tokenizer, scale), out / "model")
    log.info("saved %s from the checkpoint of step %d", out / "model", state["step"])
    return out / "model"


def save_model(pipe: StableDiffusionPipeline, folder: Path) -> None:
    """Save the folder as safetensors; the UNet's weights in float16 (they load as float32 by default)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    copy.deepcopy(pipe.unet).half().save_pretrained(folder / "unet", safe_serialization=True)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    _prepare_out(parser, args, out)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _config(parser, args)
    if (args.extend or args.reinit_token) and not (out / "checkpoint.pt").exists():
        parser.error("--extend and --reinit-token continue a checkpoint: OUT/checkpoint.pt is missing")
    if args.export:
        export_checkpoint(cfg, out)
        return
    run(cfg, out, args.device, args.minutes, decoder_only=args.decoder_only, extend=args.extend,
        reinit=tuple(args.reinit_token))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the embedded portrait model (see the module docstring).")
    parser.add_argument("--out", required=True, help="output folder (model/, samples/, logs, checkpoint)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train")
    parser.add_argument("--minutes", type=float, default=60.0, help="total time budget when --steps is 0")
    parser.add_argument("--steps", type=int, default=0, help="UNet steps (0: fit them to --minutes)")
    parser.add_argument("--vae-steps", type=int, default=None, help="VAE steps (default from the config)")
    parser.add_argument("--batch", type=int, default=None, help="UNet batch size (default from the config)")
    parser.add_argument("--n-images", type=int, default=None, help="dataset size (default from the config)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for data, weights and noise")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--decoder-steps", type=int, default=None, help="decoder-only VAE steps (default: config)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="only run the decoder stage on OUT/stage_vae.pt (it can run beside the UNet stage, "
                             "whose latents it does not change); a later --resume picks it up")
    parser.add_argument("--attn-heads", type=_ints, default=None,
                        help="heads per UNet attention layer: one count, or one per level such as 3,32,32 "
                             "(default: config)")
    parser.add_argument("--attn-levels", type=_ints, default=None,
                        help="cross-attention per UNet level as 0/1, e.g. 1,1,1 adds it at 16x16 (default: 0,1,1)")
    parser.add_argument("--init-from", default=None,
                        help="start from this saved model folder (its VAE, frozen; tokenizer; text encoder; UNet, "
                             "with any attention level it lacks added so that it starts out computing the same)")
    parser.add_argument("--init-lr-scale", type=float, default=None,
                        help="with --init-from: learning rate of the loaded weights relative to --lr (default 1)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: config)")
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps (default: config)")
    parser.add_argument("--name-prob", action="append", default=[], metavar="WORD=P",
                        help="name a present WORD in captions with probability P instead of 0.5 (repeatable)")
    parser.add_argument("--text-heads", type=int, default=None, help="text encoder attention heads (default: config)")
    parser.add_argument("--text-layers", type=int, default=None,
                        help="text encoder layers (default: config); 0 keeps each token's own embedding")
    parser.add_argument("--no-text-positions", dest="text_positions", action="store_false", default=None,
                        help="keep the text encoder's position embeddings at zero (with --text-layers 0: a bag of "
                             "words, each word the same key wherever it stands)")
    parser.add_argument("--fresh-text", action="store_true", default=None,
                        help="with --init-from: a new text encoder from the options above instead of the saved one "
                             "(the UNet's cross-attention outputs start at zero)")
    parser.add_argument("--mouth-weight", type=float, default=None,
                        help="extra loss weight on the mouth's latent cells, e.g. 3 (default 0; see region_weights)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for tests")
    parser.add_argument("--export", action="store_true",
                        help="only save OUT/model from OUT/checkpoint.pt's EMA weights (a run stopped early); pass "
                             "the run's model options")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt and OUT/stage_vae.pt")
    parser.add_argument("--extend", type=int, default=0,
                        help="with --resume: add this many steps to the planned total (a warm restart of the cosine "
                             "schedule; with --minutes it is then re-fitted to the time budget)")
    parser.add_argument("--reinit-token", action="append", default=[], metavar="WORD",
                        help="with --resume: give WORD a fresh embedding orthogonal to every other word's "
                             "(repeatable), for a word the model left unbound; see reinit_token")
    return parser


def _prepare_out(parser: argparse.ArgumentParser, args, out: Path) -> None:
    """Refuse an ``--export`` without a checkpoint, and a fresh run (not --resume, --decoder-only or --export) into a
    folder holding one; a fresh run starts without the VAE stage and tokenizer an earlier run left there."""
    if args.export and not (out / "checkpoint.pt").exists():
        parser.error(f"--export saves a checkpoint's model: {out / 'checkpoint.pt'} is missing")
    fresh = not args.resume and not args.decoder_only and not args.export
    if fresh and (out / "checkpoint.pt").exists():
        parser.error(f"--out {out} already holds a checkpoint: pass --resume or choose another folder")
    if fresh:
        (out / "stage_vae.pt").unlink(missing_ok=True)
        shutil.rmtree(out / "tokenizer", ignore_errors=True)


def _config(parser: argparse.ArgumentParser, args) -> TrainConfig:
    """The ``TrainConfig`` the command line asks for: ``--tiny``'s sizes or the defaults, with each option given."""
    cfg = TrainConfig(**(TINY if args.tiny else {}), seed=args.seed, steps=args.steps)
    for name in ("vae_steps", "decoder_steps", "batch", "n_images", "attn_heads", "text_heads", "text_layers",
                 "text_positions", "fresh_text", "mouth_weight", "init_from", "init_lr_scale", "lr", "warmup"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.attn_levels is not None:
        cfg.attn_levels = tuple(bool(a) for a in args.attn_levels)
    if isinstance(cfg.attn_heads, tuple) and len(cfg.attn_heads) == 1:
        cfg.attn_heads = cfg.attn_heads[0]
    for item in args.name_prob:
        word, _, prob = item.partition("=")
        if word not in BINARY or not prob:
            parser.error(f"--name-prob {item!r}: expected WORD=P with WORD one of {', '.join(BINARY)}")
        cfg.name_prob[word] = float(prob)
    return cfg


if __name__ == "__main__":
    main()
