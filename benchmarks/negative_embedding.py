"""What the shipped negative embedding ``portrait-bad`` does to the embedded model's portraits, over many seeds.

With the same starting noise per seed, it generates

  plain       "portrait photo of a man"                   (negative prompt "")
  negative    "portrait photo of a man"                   (negative prompt "portrait-bad")
  with it     "portrait photo of a man, portrait-bad"      (negative prompt ""; the check that the token means damage)

and measures every image with pixel statistics and the portrait detector:

  edge sharpness, noise, contrast, saturation   ``negprompt.difference.image_statistics``: blur lowers the
                   sharpness, pixel noise raises the noise, washing out lowers contrast and saturation
  clean            the share of images the detector judges clean portraits
  attributes       the share of clean images with each attribute; collateral = |negative - plain| in points
  background kept  the share of seeds whose background color (``portraits.background_of``) is the plain image's

Paired per seed, ``sharper`` and ``less noisy`` are the shares of seeds whose negative-cell image scores better than
the plain image of the same seed.

    python benchmarks/negative_embedding.py                     # 64 seeds (1000-1063), 20 DDIM steps, guidance 7.5
    python benchmarks/negative_embedding.py --json assets/portrait-embeddings/evaluation.json \
        --grid assets/portrait-embeddings/evaluation-grid.png
    python benchmarks/negative_embedding.py --seeds 4 --steps 4    # a smoke run

Generation uses plain diffusers: ``StableDiffusionPipeline.from_pretrained`` and ``load_textual_inversion``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from negative_effect import PLAIN, add_run_arguments, generate, kept, rates, seed_latents, wilson

from negprompt.difference import image_statistics
from negprompt.portrait_model.detector import detect, load_detector
from negprompt.portrait_model.portraits import BINARY, background_of, grid

log = logging.getLogger("negative_embedding")
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "portrait-bad"
STATISTICS = ("sharpness", "noise", "contrast", "saturation")


def conditions(token: str = TOKEN) -> dict[str, tuple[str, str]]:
    """Condition name -> (prompt, negative prompt)."""
    return {"plain": (PLAIN, ""), "negative": (PLAIN, token), "with it": (f"{PLAIN}, {token}", "")}


def summarize(stats: dict[str, list[dict]], by_condition: dict, backgrounds: dict) -> dict:
    """Means of the pixel statistics, paired shares, the detector's rates and the collateral, per condition."""
    plain = stats["plain"]
    out = {}
    for name, values in stats.items():
        row = {s: float(np.mean([v[s] for v in values])) for s in STATISTICS}
        row["sharper"] = float(np.mean([v["sharpness"] > p["sharpness"] for v, p in zip(values, plain)]))
        row["less_noisy"] = float(np.mean([v["noise"] < p["noise"] for v, p in zip(values, plain)]))
        row["clean"] = by_condition[name]["clean"]
        row["clean_ci95"] = wilson(row["clean"], len(values))
        moves = {y: 100 * abs(by_condition[name][y] - by_condition["plain"][y]) for y in BINARY}
        row["collateral"] = moves
        row["collateral_max"] = max(moves.values())
        row["collateral_attribute"] = max(moves, key=moves.get)
        row["background_kept"] = kept(backgrounds[name], backgrounds["plain"])
        row["attributes"] = {y: by_condition[name][y] for y in BINARY}
        out[name] = row
    return out


def add_example(args, seeds, stats, records, backgrounds, sharper: float) -> None:
    """Write the embedding's app example (one entry, marked as chosen here, which scripts/choose_examples.py keeps)."""
    def flips(i: int) -> int:
        return sum((records["plain"][i][y] >= 0.5) != (records["negative"][i][y] >= 0.5) for y in BINARY)

    fair = [i for i in range(len(seeds)) if not flips(i) and backgrounds["negative"][i] == backgrounds["plain"][i]
            and records["plain"][i]["clean"] and records["negative"][i]["clean"]]
    best = max(fair, key=lambda i: stats["negative"][i]["sharpness"] - stats["plain"][i]["sharpness"])
    path = ROOT / "negprompt" / "app" / "examples.json"
    data = json.loads(path.read_text())
    entry = {"label": f"Negative embedding '{args.token}' (learned from blurred, noisy, washed-out portraits)",
             "title": f"Negative embedding '{args.token}' (seed {seeds[best]})",
             "prompt": PLAIN, "negatives": [args.token], "other": "", "seed": seeds[best],
             "rates": {f"{args.token} sharper than plain": round(sharper, 3)},
             "chosen_by": "benchmarks/negative_embedding.py --example"}
    data["examples"] = [e for e in data["examples"] if e.get("chosen_by") != entry["chosen_by"]] + [entry]
    path.write_text(json.dumps(data, indent=1) + "\n")
    log.info("example: seed %d", seeds[best])


def markdown(table: dict, n: int) -> str:
    lines = [f"| condition (n={n} seeds) | edge sharpness | noise | contrast | saturation | sharper than plain "
             "| less noisy than plain | clean (detector) | attributes moved, max | background kept |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in table.items():
        lo, hi = r["clean_ci95"]
        lines.append(f"| {name} | {r['sharpness']:.1f} | {r['noise']:.2f} | {r['contrast']:.1f} "
                     f"| {r['saturation']:.3f} | {r['sharper']:.0%} | {r['less_noisy']:.0%} "
                     f"| {r['clean']:.0%} ({lo:.0%}-{hi:.0%}) | {r['collateral_max']:.0f} pts "
                     f"({r['collateral_attribute']}) | {r['background_kept']:.0%} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Measure what the negative embedding portrait-bad does.")
    parser.add_argument("--model", default=str(ROOT / "assets" / "portrait-model"), help="diffusers folder")
    parser.add_argument("--embedding", default=str(ROOT / "assets" / "portrait-embeddings" / "degraded.safetensors"),
                        help="the embedding file (loaded under --token)")
    parser.add_argument("--token", default=TOKEN, help="the name the prompts write")
    parser.add_argument("--example", action="store_true",
                        help="add (or replace) the app example of the embedding in negprompt/app/examples.json: the "
                             "seed whose negative cell gains the most edge sharpness with no attribute flipped and "
                             "the background kept")
    add_run_arguments(parser, first_seed=1000)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(args.embedding, token=args.token)
    detector = load_detector()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    latents = seed_latents(seeds)
    start, stats, by_condition, backgrounds, rows, records = time.time(), {}, {}, {}, [], {}
    for name, (prompt, negative) in conditions(args.token).items():
        images = generate(pipe, prompt, negative, latents, args)
        records[name] = detect(images, detector)
        by_condition[name] = rates(records[name])
        stats[name] = [image_statistics(image) for image in images]
        backgrounds[name] = [background_of(image) for image in images]
        rows += images[:8]
        log.info("%s done", name)
    table = summarize(stats, by_condition, backgrounds)
    print(markdown(table, len(seeds)))
    print(f"\n{time.time() - start:.0f} s for {len(seeds) * len(table)} images.")
    if args.grid:
        grid(rows, cols=min(8, len(seeds)), scale=2).save(args.grid)
    if args.example:
        add_example(args, seeds, stats, records, backgrounds, table["negative"]["sharper"])
    if args.json:
        settings = {k: getattr(args, k) for k in ("seeds", "first_seed", "steps", "guidance", "token")}
        for key in ("model", "embedding"):
            path = Path(getattr(args, key)).resolve()
            settings[key] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else getattr(args, key)
        Path(args.json).write_text(json.dumps({"conditions": table, "settings": settings}, indent=1) + "\n")


if __name__ == "__main__":
    main()
