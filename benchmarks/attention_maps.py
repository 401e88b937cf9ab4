"""What capturing attention maps costs: the same comparison with and without ``attention_maps=True``, alternated.

    python benchmarks/attention_maps.py                    # the embedded model, 1+4 cells, 20 steps, CPU
    python benchmarks/attention_maps.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --device cuda --steps 30

Prints the median time of each and the ratio, and checks that the images are the same both ways.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from negprompt.engine import compare
from negprompt.loading import load

NEGATIVES = ["mustache", "hat", "glasses", "beard"]


def main() -> None:
    parser = argparse.ArgumentParser(description="Attention-map capture: time with and without, side by side.")
    parser.add_argument("--model", default=None, help="Hub id or folder (default: the embedded model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded = load(args.model, device=args.device)

    def timed(maps: bool):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = compare(loaded, "portrait photo of a man", NEGATIVES, seed=1, steps=args.steps, attention_maps=maps)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    timed(False)  # warm-up
    plain, mapped = [], []
    for _ in range(args.repeats):
        seconds, a = timed(False)
        plain.append(seconds)
        seconds, b = timed(True)
        mapped.append(seconds)
    same = max(int(np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int)).max())
               for x, y in zip(a.cells, b.cells))
    p, m = statistics.median(plain), statistics.median(mapped)
    print(f"1+{len(NEGATIVES)} cells, {args.steps} steps on {args.device}: {p:.3f} s without maps, {m:.3f} s with "
          f"({m / p:.2f}x); max pixel difference {same}/255")
    print(json.dumps({"without_s": round(p, 4), "with_s": round(m, 4), "ratio": round(m / p, 3),
                      "max_pixel_difference": same}))


if __name__ == "__main__":
    main()
