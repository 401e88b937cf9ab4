"""CFG against NAG on the embedded portrait model: what each removes and what else it changes, over many seeds.

For each attribute X and each seed, one comparison row (the same starting noise in every cell, through
``negprompt.compare``):

  baseline   "portrait photo of a man", no negative
  cfg        the same with the negative prompt "X" as CFG's unconditional branch
  nag        the same with "X" acting through Normalized Attention Guidance (s, tau, alpha: the paper's defaults
             unless --nag-scale/--nag-tau/--nag-alpha), CFG against the empty prompt as in the baseline

and runs the portrait detector on every image. As in ``negative_effect.py`` (whose rates and Wilson intervals this
reuses), rates count only images the detector judges clean portraits; ``collateral max`` is the largest change, in
points, of any OTHER attribute against the baseline; ``change`` is the mean absolute pixel difference from the
baseline, in percent (the app's change score). At ``--guidance 1`` a plain model runs one branch, as a
guidance-distilled model does: CFG cannot act there and NAG still can.

    python benchmarks/nag_effect.py                          # 64 seeds (1000-1063), guidance 7.5, all attributes
    python benchmarks/nag_effect.py --guidance 1             # one branch, as on a distilled model
    python benchmarks/nag_effect.py --seeds 4 --steps 4 --attributes mustache   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from negative_effect import PLAIN, rates, wilson  # noqa: E402

from negprompt.engine import compare  # noqa: E402
from negprompt.guidance import CFG, NAG  # noqa: E402
from negprompt.loading import load  # noqa: E402
from negprompt.plan import methods_spec  # noqa: E402
from negprompt.portrait_model.detector import detect, load_detector  # noqa: E402
from negprompt.portrait_model.portraits import BINARY  # noqa: E402

log = logging.getLogger("nag_effect")


def run(args) -> dict:
    loaded = load(None, device="cpu")
    detector = load_detector()
    attributes = args.attributes.split(",")
    methods = [CFG(), NAG(args.nag_scale, args.nag_tau, args.nag_alpha)]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    images: dict[str, list] = {"baseline": []}
    changes: dict[str, list[float]] = {}
    for i in range(0, len(seeds), args.seeds_per_call):
        chunk = seeds[i:i + args.seeds_per_call]
        spec = methods_spec(PLAIN, attributes, chunk, methods, model="negprompt-portraits", steps=args.steps,
                            guidance_scale=args.guidance)
        result = compare(loaded, spec, max_cells=len(spec.cells))
        for row in result.rows:
            base = np.asarray(row[0].image, dtype=np.float32)
            images["baseline"].append(row[0].image)
            for cell in row[1:]:
                key = f"{cell.spec.guidance.name} {cell.spec.negative}"
                images.setdefault(key, []).append(cell.image)
                diff = np.abs(np.asarray(cell.image, dtype=np.float32) - base).mean() / 255 * 100
                changes.setdefault(key, []).append(float(diff))
        log.info("seeds %d-%d done", chunk[0], chunk[-1])
    by_condition = {name: rates(detect(found, detector)) for name, found in images.items()}
    base = by_condition["baseline"]
    table = {}
    for x in attributes:
        table[x] = {"baseline": base[x], "baseline_ci95": wilson(base[x], base["n"])}
        for method in ("cfg", "nag"):
            got = by_condition[f"{method} {x}"]
            moves = {y: 100 * abs(got[y] - base[y]) for y in BINARY if y != x}
            worst = max(moves, key=moves.get)
            table[x][method] = {"rate": got[x], "ci95": wilson(got[x], got["n"]),
                                "removed_pts": 100 * (base[x] - got[x]), "collateral_max": moves[worst],
                                "collateral_attribute": worst,
                                "change": float(np.mean(changes[f"{method} {x}"])), "clean": got["clean"]}
    return {"table": table, "conditions": by_condition}


def markdown(table: dict, n: int, guidance: float) -> str:
    lines = [f"| attribute (n={n} seeds, guidance {guidance:g}) | baseline | CFG \"X\" | NAG \"X\" "
             "| CFG collateral max | NAG collateral max | CFG change | NAG change |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x, r in table.items():
        cfg, nag = r["cfg"], r["nag"]
        lines.append(f"| {x} | {r['baseline']:.0%} | {cfg['rate']:.0%} | {nag['rate']:.0%} "
                     f"| {cfg['collateral_max']:.0f} pts ({cfg['collateral_attribute']}) "
                     f"| {nag['collateral_max']:.0f} pts ({nag['collateral_attribute']}) "
                     f"| {cfg['change']:.1f}% | {nag['change']:.1f}% |")
    widest = max(100 * (hi - lo) / 2 for r in table.values() for m in ("cfg", "nag") for lo, hi in [r[m]["ci95"]])
    return "\n".join(lines) + (f"\n\nEach rate's 95% interval (Wilson) is at most ±{widest:.0f} points at this "
                                "many seeds.")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CFG against NAG on the embedded model, with the detector.")
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--first-seed", type=int, default=1000, help="first seed (the model card's: 1000)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--attributes", default=",".join(BINARY))
    parser.add_argument("--nag-scale", type=float, default=NAG.scale)
    parser.add_argument("--nag-tau", type=float, default=NAG.tau)
    parser.add_argument("--nag-alpha", type=float, default=NAG.alpha)
    parser.add_argument("--seeds-per-call", type=int, default=8, help="seeds (rows) per comparison")
    parser.add_argument("--json", default=None, help="write the table and settings as JSON to this file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.time()
    out = run(args)
    print(markdown(out["table"], args.seeds, args.guidance))
    print(f"\n{time.time() - start:.0f} s")
    if args.json:
        out["settings"] = vars(args)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
