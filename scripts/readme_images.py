"""Make the README's pictures and time the app the way a user meets it.

    python scripts/readme_images.py                 # writes assets/screenshots/app.png and grid.png

Starts ``app.py``'s app with the default settings (the embedded model) on a free loopback port, drives Debian's
Chromium through Playwright: loads the page, clicks Compare on the default form, and times the click to the
finished gallery (three runs: the first includes loading the model). Then it makes the grid image with the
command line's engine call, difference maps included. Prints the timings.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "screenshots", help="folder for the PNGs")
    parser.add_argument("--runs", type=int, default=3, help="timed clicks (the first includes the model load)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    from negprompt.app import build_demo, launch_options

    demo = build_demo()
    demo.queue(max_size=8, default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options())
    seconds = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for run in range(args.runs):
            page.goto(url)  # a fresh page per run, so the finished state of the last one cannot be mistaken
            # a seed per run, the last (pictured) on seed 1: the app answers
            # a request identical to one it just finished from that result, which would time the answer, not a run
            page.locator("#seed input").fill(str(args.runs - run))
            page.get_by_label("Negative prompt 1").fill("mustache")
            for i, negative in enumerate(("hat", "glasses"), start=2):
                page.click("#add-negative")
                page.get_by_label(f"Negative prompt {i}").fill(negative)
            start = time.perf_counter()
            page.click("#run")
            page.wait_for_selector("#status:has-text('Done:')", timeout=300_000)
            seconds.append(time.perf_counter() - start)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(args.out / "app.png"), full_page=False)
        browser.close()
    demo.close()
    print("click to finished gallery (s): " + ", ".join(f"{s:.2f}" for s in seconds)
          + f"; median of the warm runs {statistics.median(seconds[1:] or seconds):.2f}")

    from negprompt import compare, load_pipeline

    result = compare(load_pipeline(), "portrait photo of a man", ["mustache", "hat", "glasses"], seeds=[1, 2],
                     steps=20, guidance_scale=7.5)
    result.grid(differences=True).save(args.out / "grid.png", optimize=True)
    print(f"wrote {args.out / 'app.png'} and {args.out / 'grid.png'}")


if __name__ == "__main__":
    main()
