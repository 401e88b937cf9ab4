"""The sweep's thread default, side by side: the same sweep with torch's own thread count (``--threads 0``, the
default before) and with the sweep's default (``default_threads``: on a CPU, one thread per core that other work
leaves idle, one per process when several run), one after the other in one run.

    python benchmarks/sweep_threads.py                                   # benchmarks/sweeps/smoke.toml, 80 images
    python benchmarks/sweep_threads.py --config my.toml --limit 300      # stop each run after 300 s

Each run is a fresh ``python -m negprompt.sweep CONFIG --out TMP`` without OMP_NUM_THREADS; a run stopped at
``--limit`` is counted by the comparisons it finished. Prints the machine's cores and load average next to the
numbers (on a shared CPU, the load other jobs make decides the result), then cells per second and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(config: Path, out: Path, extra: list[str], limit: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "negprompt.sweep", str(config), "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=limit, env=env, cwd=ROOT)
        log, stopped = done.stderr + done.stdout, False
    except subprocess.TimeoutExpired as error:
        log, stopped = (error.stderr or b"").decode() + (error.stdout or b"").decode(), True
    wall = time.perf_counter() - start
    finished = [json.loads(p.read_text()) for p in out.glob("specs/*/done.json")]
    cells = sum(f["cells"] for f in finished)
    busy = sum(f["seconds"] for f in finished)
    threads = re.search(r"torch threads per process: (\d+)", log)
    return {"threads": int(threads[1]) if threads else "torch's own", "cells": cells, "wall_s": round(wall, 1),
            "stopped": stopped, "cells_per_s": round(cells / busy, 3) if busy else 0.0, "load_before": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks" / "sweeps" / "smoke.toml")
    parser.add_argument("--limit", type=float, default=420.0, help="stop a run after this many seconds")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, load average now: {os.getloadavg()[0]:.2f} (1 min)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("new default", []), ("old default (--threads 0)", ["--threads", "0"])):
            results[name] = run(args.config, Path(tmp) / name.split()[0], extra, args.limit)
            r = results[name]
            print(f"{name:28s} threads {r['threads']!s:>11}  {r['cells']:3d} cells  {r['cells_per_s']:.3f} cells/s "
                  f"(of the finished comparisons)  wall {r['wall_s']:.1f} s{' (stopped)' if r['stopped'] else ''}  "
                  f"load before {r['load_before']:.2f}")
    new, old = (results[k]["cells_per_s"] for k in results)
    print(f"new default / old default: {new / old:.2f}x cells per second" if old else "the old default finished "
          "no comparison within the limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
