"""Command line: run one comparison and write its grid, cells and manifest.

    python -m negprompt --prompt "portrait photo of a man" --negative mustache --negative hat
    negprompt --prompt "portrait photo of a man" --negatives-file negatives.txt --seeds 1,2,3 --out outputs/run1
    negprompt --model stable-diffusion-v1-5/stable-diffusion-v1-5 --size 512x512 --steps 30 --prompt ... --negative ...

Without --model it runs the embedded portrait model from assets/. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r} must be integers separated by commas") from None


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r} must look like 512x512 (width x height)") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    from negprompt.schedulers import scheduler_names

    parser = argparse.ArgumentParser(
        prog="negprompt", description="Compare negative prompts side by side, all from the same starting noise.")
    parser.add_argument("--prompt", required=True, help="the positive prompt, shared by every cell")
    parser.add_argument("--negative", action="append", default=[], metavar="TEXT",
                        help="a negative prompt to compare (repeat for several)")
    parser.add_argument("--negatives-file", type=Path, metavar="FILE",
                        help="a text file with one negative prompt per line (blank lines and # comments skipped)")
    parser.add_argument("--model", default=None,
                        help="Hub id or local diffusers folder (SD 1.x/2.x, SDXL); default: the embedded model")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="the seed of the single row (default 0)")
    seeds.add_argument("--seeds", type=_seeds, default=None, metavar="S1,S2,...", help="one row per seed")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--size", type=_size, default=None, metavar="WxH", help="image size (default: the model's)")
    parser.add_argument("--scheduler", default="Default", choices=scheduler_names(),
                        help="sampler (default: the model's own)")
    parser.add_argument("--baseline", default="auto", choices=("auto", "empty", "zeros"),
                        help="the no-negative cell: empty prompt or zero embeddings (auto: zeros for SDXL only)")
    parser.add_argument("--max-batch", type=int, default=None, help="at most this many images per UNet batch")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best present)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default ./outputs)")
    parser.add_argument("--no-differences", action="store_true", help="leave the difference maps out of grid.png")
    return parser


def _read_negatives(args) -> list[str]:
    negatives = list(args.negative)
    if args.negatives_file is not None:
        try:
            lines = args.negatives_file.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise ValueError(f"--negatives-file {str(args.negatives_file)!r}: {error.strerror}") from None
        negatives += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return negatives


def quiet_libraries() -> None:
    """Keep library chatter (loading bars, optional-dependency notices) out of a command-line tool's output."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("sweep", "report"):  # negprompt sweep CONFIG --out DIR; negprompt report DIR
        from negprompt import report, sweep

        return {"sweep": sweep.main, "report": report.main}[argv[0]](argv[1:])
    quiet_libraries()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm.auto import tqdm

    from negprompt.engine import compare
    from negprompt.loading import load_pipeline

    try:
        negatives = _read_negatives(args)
        pipe = load_pipeline(args.model, device=args.device)
        width, height = args.size or (None, None)
        with tqdm(total=None, unit="step", desc="denoising") as bar:
            def on_step(done, total, _previews):
                bar.total = total
                bar.update(done - bar.n)

            result = compare(
                pipe, args.prompt, negatives, seed=args.seed, seeds=args.seeds, steps=args.steps,
                guidance_scale=args.guidance, height=height, width=width, scheduler=args.scheduler,
                baseline=args.baseline, max_batch=args.max_batch, callback=on_step,
            )
        folder = result.save(args.out, differences=not args.no_differences)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"negprompt: error: {error}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {folder / 'grid.png'}, {len(result.cells)} cell PNGs and {folder / 'manifest.json'} "
          f"in {result.timings['total_s']:.2f} s")
    print(f"{'seed':>6}  {'change':>7}  negative prompt")
    for cell, score in zip(result.cells, result.change_scores):
        print(f"{cell.seed:>6}  {score:>6.1f}%  {result.label(cell)}")
    return 0
