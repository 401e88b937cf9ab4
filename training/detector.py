"""Train the embedded model's attribute detector (``negprompt.portrait_model.detector``, which loads and runs it).

It learns on an endless stream of fresh procedural portraits: clean ones lightly degraded (blur, noise, color shifts,
as a decoder leaves them) and corrupted ones (heavy noise or blur, two portraits blended, shuffled tiles, color
blobs, a smeared or displaced face region), which teach the "clean" head. Attribute losses count only on images that
still show one portrait. From the repository's root:

    python -m training.detector --out assets/portrait-detector         # train (a few minutes on a CPU)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from negprompt.portrait_model.detector import DEFAULT_PATH, OUTPUTS, Detector, DetectorConfig
from negprompt.portrait_model.portraits import BINARY, attribute_matrix, portrait_array, sample_portraits

log = logging.getLogger(__name__)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    x = F.conv2d(F.pad(x[None], (r, r, 0, 0), mode="replicate"), k, groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.transpose(2, 3), groups=3)[0]


def _mild(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Degradations a clean generated portrait may show: slight blur, noise, a color/brightness shift."""
    u = torch.rand(4, generator=g)
    if u[0] < 0.6:
        x = blur(x, 0.3 + 0.9 * float(u[1]))
    x = x * (1 + 0.1 * (torch.rand(3, 1, 1, generator=g) - 0.5)) + 0.08 * (torch.rand(3, 1, 1, generator=g) - 0.5)
    return x + 0.04 * float(u[2]) * torch.randn(x.shape, generator=g)


def _corrupt(x: torch.Tensor, other: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One of six corruptions that make an image no longer a clean portrait."""
    kind, u = int(torch.randint(6, (1,), generator=g)), float(torch.rand(1, generator=g))
    if kind == 0:
        return x + (0.25 + 0.5 * u) * torch.randn(x.shape, generator=g)
    if kind == 1:
        return blur(x, 2.0 + 2.5 * u)
    if kind == 2:
        return (0.3 + 0.4 * u) * x + (0.7 - 0.4 * u) * other
    if kind == 3:
        tiles = x.unfold(1, 16, 16).unfold(2, 16, 16).reshape(3, 16, 16, 16)
        tiles = tiles[:, torch.randperm(16, generator=g)].reshape(3, 4, 4, 16, 16)
        return tiles.permute(0, 1, 3, 2, 4).reshape(3, 64, 64)
    if kind == 4:
        blobs = F.interpolate(torch.rand(1, 3, 4, 4, generator=g) * 2 - 1, size=64, mode="bilinear")[0]
        return (0.2 + 0.5 * u) * x + (0.8 - 0.5 * u) * blobs
    y = x.clone()
    s = int(12 + 16 * u)
    top, left = (int(v) for v in torch.randint(14, 50 - s, (2,), generator=g))
    patch = blur(y[:, top:top + s, left:left + s].clone(), 3.0)
    shift = int(torch.randint(-8, 9, (1,), generator=g))
    y[:, top:top + s, left:left + s] = torch.roll(patch, shift, dims=2) + 0.3 * torch.randn(patch.shape, generator=g)
    return y


def make_batch(rng: np.random.Generator, g: torch.Generator, n: int, p_corrupt: float):
    """Fresh portraits -> (images in [-1, 1], attribute targets, clean targets)."""
    people = sample_portraits(rng, 2 * n)
    x = torch.from_numpy(portrait_array(people)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    attrs = torch.from_numpy(attribute_matrix(people[:n]))
    clean = (torch.rand(n, generator=g) >= p_corrupt).float()
    out = torch.stack([_mild(x[i], g) if clean[i] else _corrupt(x[i], x[n + i], g) for i in range(n)])
    return out.clamp(-1, 1), attrs, clean


def train(cfg: DetectorConfig) -> tuple[Detector, dict[str, float]]:
    """Train on fresh procedural batches; returns the model and its held-out accuracies."""
    torch.manual_seed(cfg.seed)
    model, rng, g = Detector(cfg), np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    start = time.time()
    for step in range(cfg.steps):
        x, attrs, clean = make_batch(rng, g, cfg.batch, cfg.p_corrupt)
        logits = model(x)
        attr_loss = F.binary_cross_entropy_with_logits(logits[:, :-1], attrs, reduction="none").mean(1)
        loss = (attr_loss * clean).sum() / clean.sum().clamp(min=1) + F.binary_cross_entropy_with_logits(
            logits[:, -1], clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0:
            log.info("detector step %d/%d loss %.4f (%.0f s)", step + 1, cfg.steps, loss.item(), time.time() - start)
    model.eval()
    return model, evaluate(model, seed=cfg.seed + 1000)


@torch.no_grad()
def evaluate(model: Detector, seed: int, n: int = 2000) -> dict[str, float]:
    """Held-out accuracy per attribute on clean fresh portraits, and of the clean head on a clean/corrupt mix."""
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    x, attrs, clean = make_batch(rng, g, n, 0.5)
    probs = torch.sigmoid(model(x))
    keep = clean.bool()
    acc = {name: float(((probs[keep, i] >= 0.5) == attrs[keep, i].bool()).float().mean())
           for i, name in enumerate(BINARY)}
    acc["clean"] = float(((probs[:, -1] >= 0.5) == keep).float().mean())
    return acc


def save(model: Detector, cfg: DetectorConfig, accuracy: dict[str, float], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    meta = {"outputs": list(OUTPUTS), "config": asdict(cfg), "heldout_accuracy": accuracy, "image_size": 64}
    (folder / "config.json").write_text(json.dumps(meta, indent=1))




def main() -> None:
    parser = argparse.ArgumentParser(description="Train the portrait attribute detector.")
    parser.add_argument("--out", default=str(DEFAULT_PATH), help="folder for model.safetensors and config.json")
    parser.add_argument("--steps", type=int, default=DetectorConfig.steps, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DetectorConfig(steps=args.steps, seed=args.seed)
    model, acc = train(cfg)
    save(model, cfg, acc, Path(args.out))
    log.info("held-out accuracy: %s", json.dumps(acc))


if __name__ == "__main__":
    main()
