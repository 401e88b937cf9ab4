"""The mechanism explorer measured on the embedded portrait model: when a negative acts, which terms matter, speed.

  timing         for the negatives "hat" and "glasses", one cell per start fraction (0, 0.1, ..., 0.6: the negative
                 acts from that fraction of the steps to the end) beside the row's baseline. Per start: the removal
                 rate (the detector sees the attribute in the baseline and not in the cell), the rate at which the
                 negative ADDED it (absent in the baseline, present in the cell: Ban et al. (2024)'s "reverse
                 activation"), collateral (the largest change, in points, of another attribute's rate against the
                 baselines; and the mean number of other attributes that flipped per image), the change score against
                 the baseline, and the change score outside the attribute's region (where a hat or glasses can be
                 drawn; the portraits' geometry gives it). Then the latest start whose removal rate is still at least
                 90% of the plain negative's (start 0).
  leave-one-out  a 12-term negative holding "hat" and "glasses" among words the model knows but that name no
                 attribute, one color, and words it never learned; per seed, the terms ranked by how much leaving
                 each out changes the image. Reports the ranking averaged over the seeds, the share of seeds whose own
                 top two are exactly "hat" and "glasses", and, among seeds whose baseline shows a hat (glasses), the
                 share that rank that term in their top two.
  speed          that leave-one-out (baseline, full negative and 12 leave-out cells, 20 steps, one seed): every cell
                 in one batched comparison versus one comparison per cell, in the same run; images must agree.

    python benchmarks/explore.py --seeds 64 --json explore.json              # all three, 64 seeds
    python benchmarks/explore.py timing --seeds 32                           # one part
    python benchmarks/explore.py --smoke                                     # 2 seeds, 4 steps: a check that it runs
    python benchmarks/explore.py timing --seeds 16 --cache runs/explore      # then --seeds 32 reuses those 16 seeds

Seeds are 0, 1, ..., N-1. Guidance 7.5, 20 steps, the model's own sampler (DDIM), baseline: the empty prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's negprompt, whatever is installed

from negprompt.difference import change_score, pixel_differences  # noqa: E402
from negprompt.explore import latest_removing_start, leave_one_out_spec, rank_terms, timing_table  # noqa: E402
from negprompt.loading import EMBEDDED_NAME, load_pipeline  # noqa: E402
from negprompt.plan import timing_spec, with_cells  # noqa: E402
from negprompt.portrait_model.detector import detect, load_detector  # noqa: E402

log = logging.getLogger("explore")
PROMPT = "portrait photo of a man"
STARTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
TIMED = ("hat", "glasses")
PARTS = ("timing", "leave-one-out", "speed")
# Known words that name no attribute, one color, unknown words, and the two attributes.
LONG_NEGATIVE = ("blurry, background, hat, lowres, hair, watermark, glasses, skin, text, purple, photo, cropped")
# Where a hat or glasses can be drawn on a 64x64 portrait (rows, columns), from the geometry of
# negprompt.portrait_model.portraits.draw_portrait (head offset +-2 px, head size +-2 px) with a 2-pixel margin.
REGIONS = {"hat": (slice(0, 28), slice(6, 58)), "glasses": (slice(19, 38), slice(16, 49))}


def change_outside(image, reference, attribute: str) -> float:
    """The change score (percent) over the pixels outside ``attribute``'s region."""
    difference = pixel_differences(image, reference)
    keep = np.ones(difference.shape, bool)
    keep[REGIONS[attribute]] = False
    return float(difference[keep].mean() * 100)


def run(pipe, spec, rows_per_call: int, cache: Path | None = None) -> list:
    """Every cell's image, in spec order, from comparisons of at most ``rows_per_call`` seed rows each.

    With ``cache``, each comparison's images are kept as PNGs in a folder named by the hash of its spec, and a later
    run with the same settings reads them instead of computing them again (so a long run can be stopped and
    continued, and its tables remade from the images)."""
    from negprompt.engine import compare

    images = []
    for first in range(0, spec.rows, rows_per_call):
        members = [i for i, c in enumerate(spec.cells) if first <= c.row < first + rows_per_call]
        cells = [replace(spec.cells[i], row=spec.cells[i].row - first,
                         reference=None if spec.cells[i].reference is None else spec.cells[i].reference - members[0])
                 for i in members]
        part = with_cells(spec, cells)
        folder = cache / hashlib.sha256(part.to_json().encode()).hexdigest()[:16] if cache else None
        if folder is not None and (folder / "done").is_file():
            images += [Image.open(folder / f"{k:03d}.png").convert("RGB") for k in range(len(cells))]
            continue
        start = time.perf_counter()
        made = [cell.image for cell in compare(pipe, part).cells]
        log.info("rows %d-%d of %d: %d cells in %.0f s", first, min(first + rows_per_call, spec.rows) - 1,
                 spec.rows, len(cells), time.perf_counter() - start)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for k, image in enumerate(made):
                image.save(folder / f"{k:03d}.png")
            (folder / "done").write_text(part.to_json())
        images += made
    return images


def measure_timing(pipe, detector, seeds: list[int], steps: int, rows_per_call: int, cache: Path | None) -> dict:
    spec = timing_spec(PROMPT, list(TIMED), seeds, list(STARTS), model=EMBEDDED_NAME, steps=steps)
    start = time.perf_counter()
    images = run(pipe, spec, rows_per_call, cache)
    seconds = time.perf_counter() - start
    detections = detect(images, detector)
    refs = [c.reference for c in spec.cells]
    changes = [0.0 if r is None else change_score(im, images[r]) for im, r in zip(images, refs)]
    out = {"seconds": round(seconds, 1), "images": len(images),
           "clean_share": round(sum(d["clean"] for d in detections) / len(detections), 4)}
    for attribute in TIMED:
        outside = [0.0 if r is None else change_outside(im, images[r], attribute) for im, r in zip(images, refs)]
        table = timing_table(spec, detections, attribute, changes, negative=attribute, changes_outside=outside)
        out[attribute] = {"rows": [r.to_dict() for r in table], "latest_removing_start": latest_removing_start(table)}
    return out


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.0%}"


def timing_markdown(result: dict, n: int) -> str:
    lines = []
    for attribute in TIMED:
        part = result[attribute]
        lines += [f"Negative \"{attribute}\" ({n} seeds; removal among seeds whose baseline shows {attribute}):", "",
                  "| start | removed | added | collateral | other flips/image | change | change outside region |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in part["rows"]:
            lines.append(f"| {r['start']:g} | {r['removed']}/{r['present']} ({_pct(r['removal_rate'])}) | "
                         f"{r['added']}/{r['absent']} ({_pct(r['added_rate'])}) | {r['collateral_pp']:.0f} pts | "
                         f"{r['other_flips']:.2f} | {r['change']:.1f}% | {r['change_outside']:.1f}% |")
        lines += ["", f"Latest start still removing at least 90% as often as start 0: "
                      f"{part['latest_removing_start']}", ""]
    return "\n".join(lines)


def measure_leave_one_out(pipe, detector, seeds: list[int], steps: int, rows_per_call: int,
                          cache: Path | None) -> dict:
    spec = leave_one_out_spec(PROMPT, LONG_NEGATIVE, seeds, model=EMBEDDED_NAME, steps=steps)
    start = time.perf_counter()
    images = run(pipe, spec, rows_per_call, cache)
    seconds = time.perf_counter() - start
    changes = [0.0 if c.reference is None else change_score(im, images[c.reference])
               for c, im in zip(spec.cells, images)]
    ranking = rank_terms(spec, changes)
    baselines = [i for i, c in enumerate(spec.cells) if c.kind == "baseline"]
    shows = detect([images[i] for i in baselines], detector)
    position = {t.term: t.position for t in ranking.terms}
    conditional = {}
    for attribute in TIMED:
        rows = [r for r, d in enumerate(shows) if d[attribute] >= 0.5]
        top = [position[attribute] in ranking.row_orders[r][:2] for r in rows]
        conditional[attribute] = {"seeds": len(rows), "in_top_two": sum(top)}
    return {"seconds": round(seconds, 1), "negative": LONG_NEGATIVE, "ranking": ranking.to_dict(),
            "top_two_share": ranking.top_share(TIMED), "given_baseline_shows": conditional}


def leave_one_out_markdown(result: dict, n: int) -> str:
    lines = [f"Leave-one-out of \"{result['negative']}\" ({n} seeds): change when the term is left out, against "
             "the full negative", "", "| rank | term | mean change | seeds above 1% |", "| --- | --- | --- | --- |"]
    for k, t in enumerate(result["ranking"]["terms"], 1):
        above = sum(c >= result["ranking"]["threshold_percent"] for c in t["changes"])
        lines.append(f"| {k} | {t['term']} | {t['mean_change']:.2f}% | {above}/{len(t['changes'])} |")
    lines += ["", f"Seeds whose own top two are exactly hat and glasses: {_pct(result['top_two_share'])}."]
    for attribute, c in result["given_baseline_shows"].items():
        share = c["in_top_two"] / c["seeds"] if c["seeds"] else None
        lines.append(f"Seeds whose baseline shows {attribute}: {c['seeds']}; of them {_pct(share)} rank "
                     f"'{attribute}' in their top two.")
    lines.append(f"Trimmed negative: \"{result['ranking']['trimmed_negative']}\".")
    return "\n".join(lines)


def measure_speed(pipe, steps: int, repeats: int) -> dict:
    from negprompt.engine import compare

    spec = leave_one_out_spec(PROMPT, LONG_NEGATIVE, [0], model=EMBEDDED_NAME, steps=steps)
    singles = [with_cells(spec, [replace(c, reference=None)]) for c in spec.cells]
    batched_times, single_times, batched, alone = [], [], None, None
    compare(pipe, singles[0])  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        batched = [c.image for c in compare(pipe, spec).cells]
        batched_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        alone = [compare(pipe, s).cells[0].image for s in singles]
        single_times.append(time.perf_counter() - start)
    diff = max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(batched, alone))
    b, s = statistics.median(batched_times), statistics.median(single_times)
    return {"cells": len(spec.cells), "steps": steps, "repeats": repeats, "batched_s": round(b, 3),
            "one_call_per_cell_s": round(s, 3), "speedup": round(s / b, 2), "max_pixel_difference": diff}


def speed_markdown(r: dict) -> str:
    return ("| cells | steps | one batched comparison | one comparison per cell | speed-up | max pixel diff |\n"
            "| --- | --- | --- | --- | --- | --- |\n"
            f"| {r['cells']} | {r['steps']} | {r['batched_s']:.2f} s | {r['one_call_per_cell_s']:.2f} s | "
            f"{r['speedup']:.1f}x | {r['max_pixel_difference']}/255 |")


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the mechanism explorer on the embedded model.")
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help="timing, leave-one-out and/or speed (default: all three)")
    parser.add_argument("--seeds", type=int, default=64, help="seeds 0..N-1 (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--rows-per-call", type=int, default=4, help="seed rows per comparison (default 4)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of the speed test (median)")
    parser.add_argument("--smoke", action="store_true", help="2 seeds, 4 steps: only checks that it runs")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep each comparison's images here; a later run with the same settings reuses them")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    args = parser.parse_args()
    args.parts = args.parts or list(PARTS)
    if set(args.parts) - set(PARTS):
        parser.error(f"parts must be among {', '.join(PARTS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.smoke:
        args.seeds, args.steps = 2, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    from negprompt.quiet import quiet_libraries

    quiet_libraries()
    pipe, detector = load_pipeline(device="cpu"), load_detector()
    seeds = list(range(args.seeds))
    results: dict = {"settings": {"seeds": args.seeds, "steps": args.steps, "guidance_scale": 7.5,
                                  "prompt": PROMPT, "device": "cpu"}}
    if "timing" in args.parts:
        results["timing"] = measure_timing(pipe, detector, seeds, args.steps, args.rows_per_call, args.cache)
        print(timing_markdown(results["timing"], len(seeds)))
    if "leave-one-out" in args.parts:
        results["leave_one_out"] = measure_leave_one_out(pipe, detector, seeds, args.steps,
                                                         args.rows_per_call, args.cache)
        print(leave_one_out_markdown(results["leave_one_out"], len(seeds)))
    if "speed" in args.parts:
        results["speed"] = measure_speed(pipe, args.steps, args.repeats)
        print(speed_markdown(results["speed"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
