"""Train a negative embedding for the embedded portrait model: textual inversion on degraded portraits.

The learned vectors stand for "what a damaged portrait looks like": every training image is a clean procedural
portrait (``negprompt.portrait_model.portraits``) made blurry, noisy or washed out, captioned with its usual caption
plus the new token. Nothing of the model changes; only the token's vectors are learned (the UNet, VAE and text
encoder stay frozen). Written as a negative prompt, the token steers images away from those damages: the offline
counterpart of community negative embeddings such as "EasyNegative".

    python -m training.negative_embedding --out assets/portrait-embeddings     # the shipped one
    python -m training.negative_embedding --out runs/ti-tiny --steps 5 --images 64   # a seconds-long check

Output: ``OUT/degraded.safetensors`` in A1111's format (one tensor ``emb_params`` of shape (vectors, 64)), which
``negprompt --embedding portrait-bad=OUT/degraded.safetensors`` and diffusers' ``load_textual_inversion`` load,
``OUT/training.json`` (the settings and the loss curve) and ``OUT/training-samples.png`` (baseline vs. the token as
a negative, a few seeds). The run is fully determined by ``--seed``; it uses one CPU thread. The shipped run took
2,344 s on a 2-core CPU shared with several other jobs (about 4 s per step); on an idle core expect far less.

Recipe: ``--images`` portraits drawn from ``--seed``, each degraded once by one of three damages picked in turn
(Gaussian blur with sigma 1.2-2.4 px; Gaussian pixel noise with std 0.15-0.35 on the [-1, 1] scale; washed out:
mixed 40-65% of the way to flat mid-gray); their latents are encoded once with the model's VAE. The token's
``--vectors`` vectors start as the mean embedding of the model's own words plus small noise, and are trained with
AdamW on the model's training loss (v-prediction, min-SNR-5 weights) at random timesteps, a fresh caption per image
per step ("CAPTION, portrait-bad"), a linear warmup then cosine decay.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from negprompt.portrait_model.portraits import caption_for, draw_portrait, grid, sample_portraits  # noqa: E402
from training.detector import blur  # noqa: E402  (the detector's training blur)
from training.portrait_model import cosine_lr, diffusion_loss, noise_scheduler, to_tensor  # noqa: E402

log = logging.getLogger("training.negative_embedding")
ROOT = Path(__file__).resolve().parent.parent
DAMAGES = ("blur", "noise", "washed-out")


def degrade(x: torch.Tensor, damage: str, g: torch.Generator) -> torch.Tensor:
    """One damage applied to an image in [-1, 1] (3, H, W); the result is clipped back to [-1, 1]."""
    u = float(torch.rand(1, generator=g))
    if damage == "blur":
        y = blur(x, 1.2 + 1.2 * u)
    elif damage == "noise":
        y = x + (0.15 + 0.2 * u) * torch.randn(x.shape, generator=g)
    else:  # washed out: toward flat mid-gray (0 on this scale)
        y = x * (1 - (0.4 + 0.25 * u))
    return y.clamp(-1, 1)


def degraded_dataset(n: int, seed: int):
    """``n`` portraits, each with one damage (in turn): (images in [-1, 1], people, damage names)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    people = sample_portraits(rng, n)
    clean = to_tensor(np.stack([np.asarray(draw_portrait(p)) for p in people]))
    damages = [DAMAGES[i % len(DAMAGES)] for i in range(n)]
    return torch.stack([degrade(x, d, g) for x, d in zip(clean, damages)]), people, damages


def _shown(path: Path) -> str:
    """A path as the record shows it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a negative embedding (textual inversion) on degraded "
                                                 "portraits for the embedded portrait model.")
    parser.add_argument("--out", type=Path, required=True, help="output folder (degraded.safetensors, training.json)")
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "portrait-model", help="the model folder")
    parser.add_argument("--token", default="portrait-bad", help="the token the training captions use")
    parser.add_argument("--vectors", type=int, default=4, help="vectors in the embedding (default 4)")
    parser.add_argument("--images", type=int, default=768, help="degraded portraits in the dataset (default 768)")
    parser.add_argument("--steps", type=int, default=550, help="optimizer steps (default 550)")
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (default 5e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the start and the noise")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(args.model), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    text, unet, vae, tokenizer = pipe.text_encoder, pipe.unet, pipe.vae, pipe.tokenizer
    for module in (text, unet, vae):
        module.eval().requires_grad_(False)

    # 1. Data: degraded portraits, encoded once
    images, people, damages = degraded_dataset(args.images, args.seed)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 128]).latent_dist.mean
                             for i in range(0, len(images), 128)]) * vae.config.scaling_factor

    # 2. The token: its vectors start at the mean word embedding, plus noise
    table = text.get_input_embeddings().weight
    g = torch.Generator().manual_seed(args.seed)
    start = table.mean(0, keepdim=True) + 0.1 * table.std() * torch.randn(args.vectors, table.shape[1], generator=g)
    pipe.load_textual_inversion(start, token=args.token)
    ids = tokenizer.convert_tokens_to_ids([args.token] + [f"{args.token}_{i}" for i in range(1, args.vectors)])
    table = text.get_input_embeddings().weight
    table.requires_grad_(True)
    mask = torch.zeros(table.shape[0], 1)
    mask[ids] = 1.0
    opt = torch.optim.AdamW([table], lr=args.lr, weight_decay=0.0)
    expanded = pipe.maybe_convert_prompt(args.token, tokenizer)
    cache: dict[str, list[int]] = {}

    def batch_ids(rows, rng) -> torch.Tensor:
        out = []
        for r in rows:
            caption = caption_for(people[r], rng)
            prompt = f"{caption}, {expanded}" if caption else expanded
            if prompt not in cache:
                cache[prompt] = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                                          truncation=True).input_ids
            out.append(cache[prompt])
        return torch.tensor(out)

    # 3. Train the token's rows only (every other row gets a zero gradient, so AdamW leaves it as it is)
    sched, loss_cfg = noise_scheduler(), SimpleNamespace(snr_gamma=5.0)
    rng, gen = np.random.default_rng(args.seed + 1), torch.Generator().manual_seed(args.seed + 2)
    curve, began, running = [], time.perf_counter(), []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.steps, max(1, args.steps // 20), args.lr)
        rows = rng.integers(0, len(latents), args.batch)
        loss = diffusion_loss(unet, text, sched, latents[rows], batch_ids(rows, rng), gen, loss_cfg)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        table.grad.mul_(mask)
        opt.step()
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            curve.append({"step": step + 1, "loss": round(float(np.mean(running)), 5),
                          "elapsed_s": round(time.perf_counter() - began, 1)})
            log.info("step %d/%d loss %.4f (%.0f s)", step + 1, args.steps, curve[-1]["loss"],
                     curve[-1]["elapsed_s"])
            running = []

    # 4. Save in A1111's format, with the settings, the loss curve and a sample grid
    vectors = table.detach()[ids].clone().contiguous()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors}, args.out / "degraded.safetensors")
    record = {"settings": {k: _shown(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "damages": {d: damages.count(d) for d in DAMAGES}, "loss": curve,
              "seconds": round(time.perf_counter() - began, 1), "threads": torch.get_num_threads()}
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    samples = []
    with torch.no_grad():
        for s in range(8):
            for negative in ("", args.token):
                samples += pipe("portrait photo of a man", negative_prompt=negative, num_inference_steps=20,
                                generator=torch.Generator().manual_seed(1000 + s)).images
    grid(samples, cols=8).save(args.out / "training-samples.png")
    log.info("wrote %s", args.out / "degraded.safetensors")


if __name__ == "__main__":
    main()
