"""Which words has the embedded model bound to what they name? Naming an attribute should help it denoise.

A text-to-image model has learned a word when the word changes its prediction the right way. This script measures
that directly, without sampling: for each binary attribute X it draws fresh portraits that all have X (every
other attribute drawn from the priors), encodes them with the model's VAE, adds the same noise at a few timesteps,
and compares the UNet's denoising error under "portrait photo of a man with X" against "portrait photo of a man".
The plain prompt leaves X open (one time in three in the data), so a model that has bound the word does better
when told, and the error falls; a word the model ignores leaves the error where it was (0%).

    python benchmarks/word_binding.py                               # the shipped model, 128 portraits
    python benchmarks/word_binding.py --model runs/portrait/model --n 256 --json binding.json
    python benchmarks/word_binding.py --checkpoint runs/portrait/checkpoint.pt   # a run in progress (EMA weights)

It takes about 20 s on a 2-core CPU. The same noise is used under both prompts, so the difference is the prompt's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's training/, beside the package

from negprompt.portrait_model.portraits import BINARY, portrait_array, sample_portraits  # noqa: E402
from training.portrait_model import TrainConfig, assemble, build_models, to_tensor  # noqa: E402

PLAIN = "portrait photo of a man"
TIMESTEPS = (300, 500, 700)  # where attributes get decided: lower is nearly the image, higher nearly noise


def _latents(pipe: StableDiffusionPipeline, people) -> torch.Tensor:
    return pipe.vae.encode(to_tensor(portrait_array(people))).latent_dist.mean * pipe.vae.config.scaling_factor


def _errors(pipe, sched: DDPMScheduler, latents, prompts: dict[str, torch.Tensor], t: int,
            seed: int) -> dict[str, float]:
    """The UNet's mean squared error on ``latents`` noised to timestep ``t``, under each prompt embedding."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed * 1000 + t))
    steps = torch.full((len(latents),), t)
    noisy = sched.add_noise(latents, noise, steps)
    target = sched.get_velocity(latents, noise, steps) if sched.config.prediction_type == "v_prediction" else noise
    return {name: float(((pipe.unet(noisy, steps, emb.expand(len(latents), -1, -1)).sample - target) ** 2).mean())
            for name, emb in prompts.items()}


@torch.no_grad()
def error_reduction(pipe: StableDiffusionPipeline, attribute: str, n: int, seed: int,
                    timesteps=TIMESTEPS) -> dict[int, float]:
    """For each timestep: 1 - error("with X") / error(plain) on ``n`` portraits that have X, in [-inf, 1]."""
    people = [replace(p, **{attribute: True}) for p in sample_portraits(np.random.default_rng(seed), n)]
    latents = _latents(pipe, people)
    prompts = {name: pipe.encode_prompt(text, pipe.device, 1, False)[0]
               for name, text in (("told", f"{PLAIN} with {attribute}"), ("plain", PLAIN))}
    sched = DDPMScheduler.from_config(pipe.scheduler.config)  # the training side of the model's scheduler
    out = {}
    for t in timesteps:
        err = _errors(pipe, sched, latents, prompts, t, seed)
        out[t] = 1.0 - err["told"] / err["plain"]
    return out


def load_checkpoint(pipe: StableDiffusionPipeline, path: str) -> StableDiffusionPipeline:
    """``pipe`` with the EMA text encoder and UNet of a ``training.portrait_model`` checkpoint (same VAE and
    tokenizer)."""
    state = torch.load(path, weights_only=False, map_location="cpu")
    _, text, unet = build_models(TrainConfig(**state.get("config", {})), len(pipe.tokenizer))
    text.load_state_dict(state["ema_text"])
    unet.load_state_dict(state["ema_unet"])
    print(f"checkpoint at step {state['step']}")
    return assemble(pipe.vae, text.eval(), unet.eval(), pipe.tokenizer, pipe.vae.config.scaling_factor)


def main() -> None:
    parser = argparse.ArgumentParser(description="How much naming each attribute lowers the model's denoising error.")
    parser.add_argument("--model", default=str(ROOT / "assets" / "portrait-model"), help="diffusers folder")
    parser.add_argument("--n", type=int, default=128, help="portraits per attribute")
    parser.add_argument("--seed", type=int, default=123, help="seed of the portraits and the noise")
    parser.add_argument("--json", default=None, help="also write the table as JSON to this file")
    parser.add_argument("--checkpoint", default=None,
                        help="a training.portrait_model checkpoint.pt: measure its EMA weights (VAE and "
                             "tokenizer from --model)")
    args = parser.parse_args()
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    if args.checkpoint:
        pipe = load_checkpoint(pipe, args.checkpoint)
    table = {x: error_reduction(pipe, x, args.n, args.seed) for x in BINARY}
    head = " | ".join(f"t={t}" for t in TIMESTEPS)
    print(f"Error reduction from naming X (\"{PLAIN} with X\" against \"{PLAIN}\"), {args.n} portraits with X:")
    print(f"| attribute | {head} |\n| --- |" + " --- |" * len(TIMESTEPS))
    for x, row in table.items():
        print(f"| {x} | " + " | ".join(f"{row[t]:.1%}" for t in TIMESTEPS) + " |")
    report = {x: {str(t): v for t, v in row.items()} for x, row in table.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
