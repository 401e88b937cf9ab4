"""Batching on the engine alone: N students' 1+3 comparisons one by one, all together from the start, and joining a
running stream one every two steps (as a class's requests arrive), with the memory a step frees kept or returned.

    python benchmarks/batching.py                  # 9 comparisons, the embedded model, 20 steps, this CPU
    python benchmarks/batching.py --students 4 --repeats 3

Prints, for each way, milliseconds per comparison-step (the time of all N comparisons / (N x steps)) and the page
faults per denoiser call, and the ratio to one by one; then the same with ``NEGPROMPT_KEEP_MEMORY=0`` (glibc hands
freed blocks back to the system: ``negprompt.devices.keep_freed_memory``). Each setting runs in its own process
(the setting holds for a whole process), the two one after the other in this one run; medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEGATIVES = ["mustache", "hat", "glasses"]


def measure(students: int, steps: int, repeats: int) -> dict:
    """{way: (ms per comparison-step, page faults per denoiser call)} in this process."""
    sys.path.insert(0, str(ROOT))
    from negprompt.batching import Stream, run_many
    from negprompt.engine import run
    from negprompt.loading import load_pipeline
    from negprompt.plan import negatives_spec

    pipe = load_pipeline(device="cpu")
    specs = [negatives_spec("portrait photo of a man", NEGATIVES[i % 3:] + NEGATIVES[:i % 3], [1000 + i],
                            model="embedded", steps=steps, guidance_scale=7.5) for i in range(students)]

    def alone():
        for spec in specs:
            run(pipe, spec)
        return students * steps

    def together():
        run_many(pipe, specs, max_cells=4 * students)
        return steps

    def joining():
        stream, waiting, calls = Stream(pipe), list(specs), 0
        while waiting or stream:
            if waiting and calls % 2 == 0:
                stream.add(waiting.pop(0), max_cells=4 * students)
            stream.step()
            calls += 1
        return calls

    run(pipe, specs[0])  # warm
    out = {}
    for name, way in (("one by one", alone), ("together", together), ("joining", joining)):
        times, faults = [], []
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            calls = way()
            times.append((time.perf_counter() - start) * 1000 / (students * steps))
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls)
        out[name] = (statistics.median(times), statistics.median(faults))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=9, help="comparisons (1+3 each, their own seeds)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs of each way")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print(json.dumps(measure(args.students, args.steps, args.repeats)))
        return
    print(f"{args.students} comparisons of 1+3 images, {args.steps} steps, the embedded model on the CPU, load "
          f"average {os.getloadavg()[0]:.1f}")
    for keep in ("1", "0"):
        env = {**os.environ, "NEGPROMPT_KEEP_MEMORY": keep}
        line = subprocess.run([sys.executable, __file__, "--child", "--students", str(args.students), "--steps",
                               str(args.steps), "--repeats", str(args.repeats)], env=env, check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        figures = json.loads(line)
        base = figures["one by one"][0]
        print(f"memory {'kept    ' if keep == '1' else 'returned'}: " + "; ".join(
            f"{name} {ms:.1f} ms per comparison-step ({ms / base:.2f}x), {faults:,.0f} page faults per call"
            for name, (ms, faults) in figures.items()), flush=True)


if __name__ == "__main__":
    main()
