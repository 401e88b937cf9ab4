"""A classroom against one app: N students each send a 1+3 comparison at the app's defaults within a few seconds.

    python benchmarks/classroom.py                     # 30 clients within 10 s, the embedded model, this CPU
    python benchmarks/classroom.py --clients 8 --within 2
    python benchmarks/classroom.py --same-example      # all 30 send the same request (one example, one seed)
    python benchmarks/classroom.py --compare-batching  # the same 30 requests with batching off, then on

Starts the app in this process on a loopback port (nothing leaves the machine), warms it with one request, then
times the engine alone (``compare`` on the loaded model, median of 3) against a warm request through the app's API
(the whole handler: checks, files, detector). Then every client (its own ``gradio_client.Client``) submits once at a
random moment within ``--within`` seconds, with its own seed and its own order of negatives, and polls its job. It
prints: refused (errors), lost (no result), cross-talk (a result whose manifest is not its own request), the largest
queue position a client saw, p50/p95 seconds from submit to result, and the app-vs-engine time.

``--compare-batching`` runs the same class twice in one run, on two apps started alike: first with batching off
(``NEGPROMPT_BATCH=0``: one request per run), then on (waiting requests with the same settings run as one batch).
Every client keeps its images; in the second class each client's images are compared with its own images from the
first (``crossed``: a client whose images are not those of its own request, more than 2/255 apart, the rounding of
another batch size), and the p50/p95 ratios on/off are printed.

The students share this machine with the app, so they are kept light: each reads its result's images from the
app's disk (``download_files=False``) instead of downloading them. A class's browsers run on their own machines;
here, 30 in-process downloads (each through a new HTTP client that builds its own TLS context) took about a sixth
of a 2-core CPU's samples while the model ran (``py-spy``), slowing the app they were measuring.
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

    record = out[index] = {"refused": False, "lost": True, "own": False, "rank": 0, "seconds": None, "images": None}
    negatives = NEGATIVES if same else NEGATIVES[index % 3:] + NEGATIVES[:index % 3]  # each student's own order
    seed = 1000 if same else 1000 + index
    try:
        client = clients[index] if clients else Client(url, verbose=False, download_files=False)
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
        record["images"] = [pixels(item) for item in gallery]
    except Exception as error:  # a refusal (queue full, error) counts, whatever its type
        record["refused"] = True
        record["error"] = f"{type(error).__name__}: {error}"[:200]


def pixels(item):
    """A gallery item's image as an int16 array."""
    import numpy as np
    from PIL import Image

    path = item["image"] if isinstance(item, dict) else item[0] if isinstance(item, (list, tuple)) else item
    path = path["path"] if isinstance(path, dict) else path
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def crossed(records: list[dict], reference: list[dict], tolerance: int = 2) -> int:
    """Clients whose images differ from their own request's ``reference`` images by more than ``tolerance``/255."""
    bad = 0
    for mine, theirs in zip(records, reference):
        if mine["images"] is None or theirs["images"] is None:
            continue
        if len(mine["images"]) != len(theirs["images"]) or any(
                int(abs(a - b).max()) > tolerance for a, b in zip(mine["images"], theirs["images"])):
            bad += 1
    return bad


def engine_seconds(steps: int) -> float:
    """The engine alone on the loaded embedded model: seconds for the same 1+3 comparison."""
    from negprompt.engine import compare
    from negprompt.loading import load_pipeline

    pipe = load_pipeline(device="cpu")
    start = time.perf_counter()
    compare(pipe, PROMPT, NEGATIVES, seed=1, steps=steps, guidance_scale=7.5)
    return time.perf_counter() - start


def engine_batching(requests: int, steps: int) -> tuple[float, float]:
    """Seconds for ``requests`` students' 1+3 comparisons on the engine alone: one by one, then as one batch
    (``negprompt.batching.run_many``), on the loaded embedded model."""
    from negprompt.batching import run_many
    from negprompt.engine import run
    from negprompt.loading import load_pipeline
    from negprompt.plan import negatives_spec

    pipe = load_pipeline(device="cpu")
    specs = [negatives_spec(PROMPT, NEGATIVES[i % 3:] + NEGATIVES[:i % 3], [1000 + i], model="embedded",
                            steps=steps, guidance_scale=7.5) for i in range(requests)]
    run(pipe, specs[0])  # warm
    start = time.perf_counter()
    for spec in specs:
        run(pipe, spec)
    alone = time.perf_counter() - start
    start = time.perf_counter()
    run_many(pipe, specs, max_cells=sum(len(s.cells) for s in specs))
    return alone, time.perf_counter() - start


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
              same: bool = False, reference: list[dict] | None = None) -> dict:
    """Run the class; returns the figures (see the module docstring). ``same``: every student sends the same
    request (a class pressing the same example). ``reference``: the ``records`` of an earlier class of the same
    requests, to count the clients whose images are not their own request's (``crossed``)."""
    from gradio_client import Client

    rng = random.Random(seed)
    delays = sorted(rng.uniform(0, within) for _ in range(clients))
    connected = [Client(url, verbose=False, download_files=False) for _ in range(clients)] if connect_first else []
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
        "crossed": crossed(records, reference) if reference is not None else None,
        "errors": [r["error"] for r in records if "error" in r][:3],
        "records": records,
    }


def serve(settings):
    """Start the app in this process on a free loopback port; returns (demo, url)."""
    import socket

    from negprompt.app import build_demo, launch_options

    demo = build_demo(settings)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                            **launch_options(settings))
    return demo, url


def show(figures: dict) -> str:
    return " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
                    if k != "records")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=30, help="students (0: only the app-vs-engine timing)")
    parser.add_argument("--within", type=float, default=10.0, help="seconds over which they all submit")
    parser.add_argument("--same-example", action="store_true",
                        help="every student sends the same request (seed 1000), as a class pressing one example")
    parser.add_argument("--compare-batching", action="store_true",
                        help="the same class with batching off, then on, in this one run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))

    from dataclasses import replace

    import torch

    from negprompt.app import AppSettings

    settings = AppSettings.from_env()
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.compare_batching:
        alone, together = engine_batching(8, settings.default_steps)
        print(f"engine, 8 students' 1+3 at {settings.default_steps} steps: one by one {alone:.1f} s, as one batch "
              f"{together:.1f} s ({together / alone:.2f}x)", flush=True)
        figures = {}
        for batching in (False, True) if args.clients else ():
            demo, url = serve(replace(settings, batch_requests=batching))
            try:
                from gradio_client import Client

                app_seconds(Client(url, verbose=False), seed=100)  # loads the model
                reference = figures[False]["records"] if batching else None
                figures[batching] = classroom(url, args.clients, args.within, same=args.same_example,
                                              reference=reference)
            finally:
                demo.close()
            print(f"batching {'on ' if batching else 'off'}: {show(figures[batching])} "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        off, on = figures.get(False), figures.get(True)
        if off and on and off["p50_s"] and on["p50_s"]:
            print(f"on/off: p50 {on['p50_s'] / off['p50_s']:.2f}x, p95 {on['p95_s'] / off['p95_s']:.2f}x")
        return
    demo, url = serve(settings)
    try:
        engine, app = overhead(url, settings.default_steps)
        print(f"engine 1+3 at {settings.default_steps} steps: {engine:.2f} s; warm app request: {app:.2f} s "
              f"({app / engine:.2f}x)", flush=True)
        if args.clients:
            print(show(classroom(url, args.clients, args.within, same=args.same_example)))
    finally:
        demo.close()


if __name__ == "__main__":
    main()
