"""How much of each attribute the embedded model's VAE keeps: the detector on VAE reconstructions of real portraits.

A diffusion model can only learn what survives its autoencoder. This script draws fresh procedural portraits,
encodes and decodes them with the model folder's VAE (the latent mean, no sampling), and reports the mean pixel
error and the detector's accuracy per attribute on the reconstructions, beside its accuracy on the originals.

    python benchmarks/vae_fidelity.py                       # the shipped model, 300 portraits
    python benchmarks/vae_fidelity.py --model runs/portrait/model --n 1000 --grid vae.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's training/, beside the package

from negprompt.portrait_model.detector import detect, load_detector  # noqa: E402
from negprompt.portrait_model.portraits import BINARY, grid, portrait_array, sample_portraits  # noqa: E402
from training.portrait_model import to_tensor  # noqa: E402


def accuracy(records: list[dict], people) -> dict[str, float]:
    """Share of images where the detector's call matches the drawn attribute."""
    return {name: float(np.mean([(r[name] >= 0.5) == getattr(p, name) for r, p in zip(records, people)]))
            for name in BINARY}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description="Detector accuracy on VAE reconstructions of real portraits.")
    parser.add_argument("--model", default=str(ROOT / "assets" / "portrait-model"), help="diffusers folder")
    parser.add_argument("--n", type=int, default=300, help="number of portraits")
    parser.add_argument("--seed", type=int, default=99, help="seed of the portraits")
    parser.add_argument("--grid", default=None, help="write originals (top) over reconstructions to this PNG")
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(Path(args.model) / "vae").eval()
    people = sample_portraits(np.random.default_rng(args.seed), args.n)
    pixels = portrait_array(people)
    originals = [Image.fromarray(a) for a in pixels]
    x = to_tensor(pixels)
    rec = torch.cat([vae.decode(vae.encode(x[i:i + 100]).latent_dist.mean).sample for i in range(0, len(x), 100)])
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round()
    error = float((rec - (x + 1) * 127.5).abs().mean())
    images = [Image.fromarray(r.permute(1, 2, 0).byte().numpy()) for r in rec]
    detector = load_detector()
    on_originals, on_rec = accuracy(detect(originals, detector), people), accuracy(detect(images, detector), people)
    print(f"{args.n} portraits, mean absolute error {error:.2f} of 255")
    print("| attribute | detector on originals | detector on reconstructions |\n| --- | --- | --- |")
    for name in BINARY:
        print(f"| {name} | {on_originals[name]:.1%} | {on_rec[name]:.1%} |")
    print(json.dumps({"mean_abs_error": error, "originals": on_originals, "reconstructions": on_rec}))
    if args.grid:
        grid(originals[:8] + images[:8], cols=8, scale=4).save(args.grid)


if __name__ == "__main__":
    main()
