"""What keeping every step's previews costs the app's embedded model (its step plot shows every step).

    python benchmarks/preview_cadence.py                      # 1+3 cells, 20 steps, 5 rounds, on the CPU
    python benchmarks/preview_cadence.py --negatives 5 --rounds 7 --threads 1

Runs the app's comparison (the embedded model, a prompt, N negatives, 20 steps) with previews kept every step, every
5 steps, and never, in alternating rounds in one process, and prints the median time of each and the ratios: the
price of the plot's every-step line against the old cadence of 5.
"""

from __future__ import annotations

import argparse
import statistics
import time

NEGATIVES = ("mustache", "hat", "glasses", "beard", "scarf", "earrings", "smile", "blond")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--negatives", type=int, default=3, help="negative prompts (cells: baseline + these)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians are printed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()

    import torch

    from negprompt.app.runner import PREVIEW_SIDE
    from negprompt.engine import compare
    from negprompt.explore import PreviewRecorder
    from negprompt.loading import EMBEDDED_NAME, load_pipeline
    from negprompt.plan import negatives_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(device="cpu")
    spec = negatives_spec("portrait photo of a man", list(NEGATIVES[:args.negatives]), [1], model=EMBEDDED_NAME,
                          steps=args.steps, guidance_scale=7.5)
    cadences = {"every step": 1, "every 5 steps": 5, "none": 0}
    times: dict[str, list[float]] = {name: [] for name in cadences}
    compare(pipe, spec)  # warm up
    for _ in range(args.rounds):
        for name, every in cadences.items():
            recorder = PreviewRecorder(spec.steps, max_side=PREVIEW_SIDE)
            start = time.perf_counter()
            compare(pipe, spec, callback=recorder if every else None, preview_every=every)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"1+{args.negatives} cells, {args.steps} steps, {args.rounds} rounds, {torch.get_num_threads()} thread(s)")
    for name, seconds in median.items():
        print(f"previews {name:>14}: {seconds:.3f} s median ({seconds / median['none']:.2f}x of none)")
    print(f"every step / every 5 steps: {median['every step'] / median['every 5 steps']:.2f}x")


if __name__ == "__main__":
    main()
