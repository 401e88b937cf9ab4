"""Screenshot a sweep's report page in a real browser (Debian's Chromium through Playwright).

    python -m negprompt.sweep benchmarks/sweeps/smoke.toml --out runs/smoke && python -m negprompt.report runs/smoke
    python scripts/report_screenshot.py runs/smoke            # writes assets/screenshots/sweep-report.png

Opens ``report.html`` from disk (file://, so the page must stand alone: inline CSS, relative image links), checks
that every image on the page loaded, and saves the top of the page, palette-reduced to keep the PNG small.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a sweep's --out folder holding report.html")
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "screenshots" / "sweep-report.png")
    parser.add_argument("--height", type=int, default=1500, help="pixels of the page to keep, from the top")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": args.height})
        page.goto((args.results / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth)).map(i => i.src)")
        if broken:
            raise SystemExit(f"images that did not load: {broken}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    Image.open(args.out).convert("RGB").quantize(colors=128).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
