"""The seed article's experiment, measured on the embedded portrait model.

For each of the seven attributes X (mustache, beard, glasses, hat, smile, earrings, scarf; ``--attributes`` picks
fewer), with the same starting noise for every seed, it generates

  plain       "portrait photo of a man"                      (negative prompt "")
  without     "portrait photo of a man without X"            (negative prompt "")
  negative    "portrait photo of a man"                      (negative prompt "X")
  adherence   "portrait photo of a man with X"               (negative prompt "")

and runs the portrait detector on every image. Rates count only images the detector judges clean portraits; the
share of clean images is reported per condition and overall. ``collateral_max`` is the largest change, in
percentage points, of any OTHER detector attribute between "plain" and "negative X". ``background_kept`` is the
share of seeds whose background color (``portraits.background_of``: the palette color nearest to the top corners)
under "negative X" is the one the plain image of the same seed has. Each rate also gets a 95% Wilson interval
(``ci95`` in the JSON), so a reader can tell a real effect from the noise of a few dozen seeds.

    python benchmarks/negative_effect.py                                  # 64 seeds, guidance 7.5 (the app's)
    python benchmarks/negative_effect.py --first-seed 1000 --json evaluation.json   # seeds 1000-1063
    python benchmarks/negative_effect.py --seeds 128 --json effect.json --grid effect.png
    python benchmarks/negative_effect.py --seeds 4 --steps 4              # a smoke run (the tests use this)

Generation uses plain ``StableDiffusionPipeline.from_pretrained(--model)`` (DDIM as saved, batched calls).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from negprompt.portrait_model.detector import detect, load_detector
from negprompt.portrait_model.portraits import BINARY, background_of, grid

log = logging.getLogger("negative_effect")
ROOT = Path(__file__).resolve().parent.parent
PLAIN = "portrait photo of a man"


def conditions(attributes=BINARY) -> dict[str, tuple[str, str]]:
    """Condition name -> (prompt, negative prompt)."""
    out = {"plain": (PLAIN, "")}
    for x in attributes:
        out[f"without {x}"] = (f"{PLAIN} without {x}", "")
        out[f"negative {x}"] = (PLAIN, x)
        out[f"with {x}"] = (f"{PLAIN} with {x}", "")
    return out


def seed_latents(seeds: list[int]) -> torch.Tensor:
    """One (4, 16, 16) starting latent per seed, each from its own CPU generator."""
    return torch.cat([torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def generate(pipe, prompt: str, negative: str, latents: torch.Tensor, args) -> list[Image.Image]:
    images = []
    for i in range(0, len(latents), args.batch):
        chunk = latents[i:i + args.batch]
        images += pipe([prompt] * len(chunk), negative_prompt=[negative] * len(chunk), latents=chunk.clone(),
                       num_inference_steps=args.steps, guidance_scale=args.guidance, height=64, width=64).images
    return images


def rates(records: list[dict], clean_only: bool = True) -> dict[str, float]:
    """Share of each attribute among clean images (or all images), plus the clean share itself."""
    clean = [r for r in records if r["clean"] or not clean_only]
    out = {name: (sum(r[name] >= 0.5 for r in clean) / len(clean) if clean else float("nan")) for name in BINARY}
    out["clean"] = sum(r["clean"] for r in records) / len(records)
    out["n"] = len(clean)
    return out


def wilson(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate measured on ``n`` images: how far sampling noise alone can move it."""
    if n == 0:
        return float("nan"), float("nan")
    center = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((rate * (1 - rate) + z * z / (4 * n)) / n) ** 0.5 / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def kept(backgrounds: list[str], plain: list[str]) -> float:
    """Share of seeds whose background color is the plain image's."""
    return sum(a == b for a, b in zip(backgrounds, plain)) / len(plain)


def summarize(by_condition: dict[str, dict[str, float]], backgrounds: dict[str, list[str]]) -> dict:
    """The table: per attribute its four rates (fractions), the collateral change (points), the backgrounds kept."""
    plain = by_condition["plain"]
    table = {}
    for x in [c.split(" ", 1)[1] for c in by_condition if c.startswith("negative ")]:
        neg = by_condition[f"negative {x}"]
        moves = {y: 100 * abs(neg[y] - plain[y]) for y in BINARY if y != x}
        worst = max(moves, key=moves.get)
        columns = {"plain": "plain", "without": f"without {x}", "negative": f"negative {x}", "adherence": f"with {x}"}
        background = kept(backgrounds[f"negative {x}"], backgrounds["plain"])
        n = len(backgrounds["plain"])
        table[x] = {**{key: by_condition[c][x] for key, c in columns.items()}, "collateral_max": moves[worst],
                    "collateral_attribute": worst, "collateral": moves, "background_kept": background,
                    "ci95": {**{key: wilson(by_condition[c][x], by_condition[c]["n"]) for key, c in columns.items()},
                             "background_kept": wilson(background, n)}}
    return table


def markdown(table: dict, by_condition: dict, n: int) -> str:
    lines = [f"| attribute (n={n} seeds) | plain | \"without X\" | negative \"X\" | \"with X\" | collateral max "
             "| background kept |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for x, r in table.items():
        lines.append(f"| {x} | {r['plain']:.0%} | {r['without']:.0%} | {r['negative']:.0%} | {r['adherence']:.0%} "
                     f"| {r['collateral_max']:.0f} pts ({r['collateral_attribute']}) | {r['background_kept']:.0%} |")
    clean = ", ".join(f"{c} {v['clean']:.0%}" for c, v in by_condition.items())
    widest = max(100 * (hi - lo) / 2 for r in table.values() for lo, hi in r["ci95"].values())
    return ("\n".join(lines) + f"\n\nClean portraits per condition: {clean}.\n"
            f"Sampling noise: each rate's 95% interval (Wilson) is at most ±{widest:.0f} points at this many seeds; "
            "the intervals are in the JSON output.")


def time_grid(pipe, args) -> float:
    """Median seconds for a 1 + 4 comparison (baseline and four negatives) in one batched call."""
    latents = seed_latents([args.first_seed]).repeat(5, 1, 1, 1)
    times = []
    for _ in range(3):
        start = time.time()
        pipe([PLAIN] * 5, negative_prompt=["", "mustache", "glasses", "hat", "beard"], latents=latents.clone(),
             num_inference_steps=args.steps, guidance_scale=args.guidance, height=64, width=64)
        times.append(time.time() - start)
    return sorted(times)[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Measure what 'without X' and a negative prompt 'X' do.")
    parser.add_argument("--model", default=str(ROOT / "assets" / "portrait-model"), help="diffusers folder")
    parser.add_argument("--detector", default=None, help="detector folder (default: the shipped one)")
    parser.add_argument("--attributes", default=",".join(BINARY),
                        help=f"comma-separated attributes to test (default: all of {','.join(BINARY)})")
    add_run_arguments(parser, first_seed=0)
    return parser.parse_args()


def add_run_arguments(parser: argparse.ArgumentParser, first_seed: int) -> None:
    """The seeds, sampling, output and thread flags shared with benchmarks/negative_embedding.py."""
    parser.add_argument("--seeds", type=int, default=64, help="number of seeds per condition")
    parser.add_argument("--first-seed", type=int, default=first_seed, help="first seed; seeds are consecutive")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (the app's: 7.5)")
    parser.add_argument("--batch", type=int, default=32, help="images per pipeline call")
    parser.add_argument("--json", default=None, help="write the table and settings as JSON to this file")
    parser.add_argument("--grid", default=None, help="write a grid (one row per condition, 8 seeds) to this PNG")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    detector = load_detector(args.detector)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    latents = seed_latents(seeds)
    start, by_condition, all_images, backgrounds, rows = time.time(), {}, {}, {}, []
    for name, (prompt, negative) in conditions(tuple(args.attributes.split(","))).items():
        images = generate(pipe, prompt, negative, latents, args)
        records = detect(images, detector)
        by_condition[name], all_images[name] = rates(records), rates(records, clean_only=False)
        backgrounds[name] = [background_of(image) for image in images]
        rows += images[:8]
        log.info("%s: %s", name, json.dumps({k: round(v, 3) for k, v in by_condition[name].items()}))
    table = summarize(by_condition, backgrounds)
    clean_share = sum(v["clean"] for v in by_condition.values()) / len(by_condition)
    print(markdown(table, by_condition, len(seeds)))
    print(f"\nAll conditions: {clean_share:.1%} clean portraits; {time.time() - start:.0f} s for "
          f"{len(seeds) * len(by_condition)} images.")
    seconds = time_grid(pipe, args)
    print(f"A 1 + 4 grid (one batched call, {args.steps} steps): {seconds:.2f} s (median of 3).")
    if args.grid:
        grid(rows, cols=min(8, len(seeds)), scale=2).save(args.grid)
    if args.json:
        settings = {k: getattr(args, k) for k in ("model", "seeds", "first_seed", "steps", "guidance", "attributes")}
        model = Path(args.model).resolve()
        settings["model"] = str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else args.model
        kept_all = {name: kept(found, backgrounds["plain"]) for name, found in backgrounds.items()}
        Path(args.json).write_text(json.dumps({**table, "clean_share": clean_share, "conditions": by_condition,
                                               "background_kept_per_condition": kept_all,
                                               "conditions_all_images": all_images, "grid_1_plus_4_seconds": seconds,
                                               "settings": settings}, indent=1))


if __name__ == "__main__":
    main()
