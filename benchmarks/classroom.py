"""A classroom against one app: N students each send a 1+3 comparison at the app's defaults within a few seconds.

    python benchmarks/classroom.py                     # 30 clients within 10 s, the embedded model, this CPU
    python benchmarks/classroom.py --clients 8 --within 2
    python benchmarks/classroom.py --same-example      # all 30 send the same request (one example, one seed)

Starts the app in this process on a loopback port (nothing leaves the machine), warms it with one request, then
times the engine alone (``compare`` on the loaded model, median of 3) against a warm request through the app's API
(the whole handler: checks, files, detector). Then every client (its own ``gradio_client.Client``) submits once at a
random moment within ``--within`` seconds, with its own seed and its own order of negatives, and polls its job. It
prints: refused (errors), lost (no result), cross-talk (a result whose manifest is not its own request), the largest
queue position a client saw, p50/p95 seconds from submit to result, and the app-vs-engine time.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEGATIVES = ["mustache", "hat", "glasses"]
PROMPT = "portrait photo of a man"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def student(url: str, index: int, delay: float, out: dict, clients: list, same: bool = False) -> None:
    """One student: waits ``delay`` s, submits, polls the queue position, checks the result is its own."""
    from gradio_client import Client

    record = out[index] = {"refused": False, "lost": True, "own": False, "rank": 0, "seconds": None}
    negatives = NEGATIVES if same else NEGATIVES[index % 3:] + NEGATIVES[:index % 3]  # each student's own order
    seed = 1000 if same else 1000 + index
    try:
        client = clients[index] if clients else Client(url, verbose=False)
        time.sleep(delay)
        start = time.perf_counter()
        job = client.submit(prompt=PROMPT, negative_prompts=negatives, seed=seed, api_name="/compare")
        while not job.done():
            status = job.status()
            if status.rank is not None:
                record["rank"] = max(record["rank"], status.rank + 1)
            time.sleep(0.2)
        gallery, manifest = job.result()
        record["seconds"] = time.perf_counter() - start
        record["lost"] = False
        cells = manifest["cells"]
        record["own"] = ([c["negative_prompt"] for c in cells] == ["", *negatives]
                         and all(c["seed"] == seed for c in cells) and len(gallery) == 4
                         and manifest["settings"]["prompt"] == PROMPT)
    except Exception as error:  # a refusal (queue full, error) counts, whatever its type
        record["refused"] = True
        record["error"] = f"{type(error).__name__}: {error}"[:200]


def engine_seconds(steps: int) -> float:
    """The engine alone on the loaded embedded model: seconds for the same 1+3 comparison."""
    from negprompt.engine import compare
    from negprompt.loading import load_pipeline

    pipe = load_pipeline(device="cpu")
    start = time.perf_counter()
    compare(pipe, PROMPT, NEGATIVES, seed=1, steps=steps, guidance_scale=7.5)
    return time.perf_counter() - start


def app_seconds(client, seed: int = 1) -> float:
    """A request through the app's API, at its defaults: seconds from submit to result. Each timed request needs
    its own seed: the app answers a request identical to one it just finished from that result."""
    start = time.perf_counter()
    client.predict(prompt=PROMPT, negative_prompts=NEGATIVES, seed=seed, api_name="/compare")
    return time.perf_counter() - start


def overhead(url: str, steps: int, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of the engine alone and of a warm app request, measured alternately (a busy host slows
    both alike)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    app_seconds(client, seed=100)  # loads the model
    engine, app = [], []
    for repeat in range(repeats):
        engine.append(engine_seconds(steps))
        app.append(app_seconds(client, seed=101 + repeat))
    return statistics.median(engine), statistics.median(app)


def classroom(url: str, clients: int, within: float, seed: int = 0, connect_first: bool = True,
              same: bool = False) -> dict:
    """Run the class; returns the figures (see the module docstring). ``same``: every student sends the same
    request (a class pressing the same example)."""
    from gradio_client import Client

    rng = random.Random(seed)
    delays = sorted(rng.uniform(0, within) for _ in range(clients))
    connected = [Client(url, verbose=False) for _ in range(clients)] if connect_first else []
    out: dict[int, dict] = {}
    threads = [threading.Thread(target=student, args=(url, i, delays[i], out, connected, same))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = [out[i] for i in range(clients)]
    seconds = [r["seconds"] for r in records if r["seconds"] is not None]
    return {
        "clients": clients,
        "refused": sum(r["refused"] for r in records),
        "lost": sum(r["lost"] and not r["refused"] for r in records),
        "cross_talk": sum(not r["own"] for r in records if not r["lost"]),
        "max_queue_position": max((r["rank"] for r in records), default=0),
        "saw_queue_position": sum(r["rank"] > 0 for r in records),
        "p50_s": percentile(seconds, 0.5) if seconds else None,
        "p95_s": percentile(seconds, 0.95) if seconds else None,
        "errors": [r["error"] for r in records if "error" in r][:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=30, help="students (0: only the app-vs-engine timing)")
    parser.add_argument("--within", type=float, default=10.0, help="seconds over which they all submit")
    parser.add_argument("--same-example", action="store_true",
                        help="every student sends the same request (seed 1000), as a class pressing one example")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))

    import socket

    from negprompt.app import AppSettings, build_demo, launch_options

    settings = AppSettings.from_env()
    demo = build_demo(settings)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                            **launch_options(settings))
    try:
        engine, app = overhead(url, settings.default_steps)
        print(f"engine 1+3 at {settings.default_steps} steps: {engine:.2f} s; warm app request: {app:.2f} s "
              f"({app / engine:.2f}x)", flush=True)
        if args.clients:
            figures = classroom(url, args.clients, args.within, same=args.same_example)
            print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    finally:
        demo.close()


if __name__ == "__main__":
    main()
