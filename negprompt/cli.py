"""Command line: run one comparison and write its grid, cells and manifest.

    python -m negprompt --prompt "portrait photo of a man" --negative mustache --negative hat
    negprompt --prompt "portrait photo of a man" --negatives-file negatives.txt --seeds 1,2,3 --out outputs/run1
    negprompt --prompt "portrait photo of a man" --negative mustache \
        --other-positive "portrait photo of a man without mustache"
    negprompt --prompt "portrait photo of a man" --negative hat@0.3 --negative "glasses@0.2-0.8"   # windows
    negprompt --prompt "portrait photo of a man" --negative hat --guidance-methods cfg,perp-neg,cfg-rescale:0.7
    negprompt --prompt "portrait photo of a man" --negative hat --timing 0,0.2,0.4,0.6
    negprompt --prompt "portrait photo of a man" --negative "hat, glasses, blurry, watermark" --leave-one-out
    negprompt --replay outputs/run1/manifest.json --out outputs/run1-again
    negprompt --model stable-diffusion-v1-5/stable-diffusion-v1-5 --size 512x512 --steps 30 --prompt ... --negative ...

A negative may carry a window, the fraction of the steps during which it acts: ``hat@0.3`` from 30% of the steps
to the end, ``hat@0.3-0.8`` from 30% to 80%; outside it the cell uses the baseline's negative. ``--guidance-methods``
makes one cell per method for each negative, ``--timing`` one cell per start fraction. ``--replay`` runs the spec a
manifest recorded again (same images on the same machine). Without --model it runs the embedded portrait model from
assets/. Every argument is checked before the model loads; errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
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


def _fractions(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--timing {text!r} must be fractions separated by commas") from None


def build_parser() -> argparse.ArgumentParser:
    from negprompt.schedulers import scheduler_names

    parser = argparse.ArgumentParser(
        prog="negprompt", description="Compare negative prompts side by side, all from the same starting noise.")
    parser.add_argument("--prompt", default=None, help="the positive prompt, shared by every cell (required unless "
                                                       "--replay)")
    parser.add_argument("--negative", action="append", default=[], metavar="TEXT",
                        help="a negative prompt to compare (repeat for several); TEXT@0.3 acts from 30%% of the "
                             "steps, TEXT@0.3-0.8 from 30%% to 80%%")
    parser.add_argument("--negatives-file", type=Path, metavar="FILE",
                        help="a text file with one negative prompt per line (blank lines and # comments skipped)")
    parser.add_argument("--other-positive", default=None, metavar="TEXT",
                        help="one more cell per row: this positive prompt with no negative, from the row's noise "
                             "(e.g. 'portrait photo of a man without mustache')")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--guidance-methods", default=None, metavar="M1,M2,...",
                       help="one cell per guidance method for each negative: cfg, perp-neg, cfg-rescale, "
                            "neg-strength; NAME:VALUE sets the method's parameter (e.g. cfg-rescale:0.5)")
    modes.add_argument("--timing", type=_fractions, default=None, metavar="S1,S2,...",
                       help="one cell per start fraction for each negative: the negative acts from that fraction "
                            "of the steps to the end (0 = the plain negative)")
    modes.add_argument("--leave-one-out", action="store_true",
                       help="rank the terms of the single --negative (split on commas): one cell per term with that "
                            "term left out, compared against the full negative")
    modes.add_argument("--terms-alone", action="store_true",
                       help="each term of the single --negative alone, compared against the baseline")
    modes.add_argument("--replay", type=Path, default=None, metavar="MANIFEST",
                       help="run the comparison a manifest.json recorded again (its prompts, cells and settings)")
    parser.add_argument("--model", default=None,
                        help="Hub id, local diffusers folder or single-file .safetensors (SD 1.x/2.x, SDXL); "
                             "default: the embedded model (with --replay: the manifest's model)")
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
    parser.add_argument("--preview-decoder", default=None, metavar="TAESD",
                        help="an AutoencoderTiny (folder or Hub id: madebyollin/taesd for SD 1.x/2.x, "
                             "madebyollin/taesdxl for SDXL) that decodes the kept step previews; the final images "
                             "still come from the model's VAE")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default ./outputs)")
    parser.add_argument("--no-differences", action="store_true", help="leave the difference maps out of grid.png")
    parser.add_argument("--preview-every", type=int, default=None, metavar="K",
                        help="keep every cell's preview every K steps; the manifest gets each cell's divergence "
                             "curve (default: about ten per run in --leave-one-out, --terms-alone, --timing and "
                             "--guidance-methods, else none; 0: none)")
    parser.add_argument("--attention-maps", action="store_true",
                        help="also capture where each negative prompt's tokens were attended to: an "
                             "attention-*.png overlay per cell, and in the manifest each cell's change inside and "
                             "outside that region (the images do not change)")
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


def _read_manifest(path: Path):
    from negprompt.errors import InputError
    from negprompt.plan import ComparisonSpec

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError("replay", str(path), f"--replay {str(path)!r}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise InputError("replay", str(path), f"--replay {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or "spec" not in data:
        raise InputError("replay", str(path), f"--replay {str(path)!r} is not a negprompt manifest (it has no "
                                              "'spec'; manifests written before version 0.2 cannot be replayed)")
    return ComparisonSpec.from_dict(data["spec"])


def spec_from_args(args, model: str, baseline: str):
    """The comparison spec the arguments ask for (pure: nothing loads). One builder per mode; a new mode adds its
    flag to ``build_parser``'s group and one branch here."""
    from negprompt.errors import InputError
    from negprompt.guidance import parse_method
    from negprompt.plan import check_text, parse_window

    if args.prompt is None:
        raise InputError("prompt", None, "--prompt is required (or --replay a manifest)")
    check_text("prompt", args.prompt)
    if args.other_positive is not None:
        check_text("other_positive", args.other_positive)
    texts, windows = [], []
    for i, text in enumerate(_read_negatives(args)):
        negative, window = parse_window(text, f"negatives[{i}]")
        check_text(f"negatives[{i}]", negative)
        texts.append(negative)
        windows.append(window)
    seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
    width, height = args.size or (None, None)
    common = dict(model=model, steps=args.steps, guidance_scale=args.guidance, height=height, width=width,
                  sampler=args.scheduler, baseline=baseline, other_positive=args.other_positive)
    from negprompt.explore import mode_spec

    mode = ("leave-one-out" if args.leave_one_out else "terms-alone" if args.terms_alone
            else "methods" if args.guidance_methods is not None else "timing" if args.timing is not None
            else "negatives")
    methods = [parse_method(m, "guidance_methods") for m in (args.guidance_methods or "").split(",") if m.strip()]
    return mode_spec(mode, args.prompt, texts, seeds, windows=windows, starts=args.timing, methods=methods,
                     **common)


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
    args = build_parser().parse_args(argv)
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm.auto import tqdm

    from negprompt.engine import compare, default_baseline
    from negprompt.errors import LIMITS, InputError
    from negprompt.explore import PreviewRecorder, default_preview_every
    from negprompt.loading import EMBEDDED_NAME, load, model_source
    from negprompt.verdicts import explain, nag_for_distilled, summary_lines

    try:
        # 1. Check every argument before anything loads
        if args.max_batch is not None and args.max_batch < 1:
            raise InputError("max_batch", args.max_batch, f"--max-batch {args.max_batch} must be at least 1")
        if args.preview_every is not None and args.preview_every < 0:
            raise InputError("preview_every", args.preview_every, "--preview-every must be 0 or more")
        if args.replay is not None:
            if args.prompt is not None or args.negative or args.negatives_file or args.other_positive is not None:
                raise InputError("replay", str(args.replay), "--replay runs the cells its manifest recorded: give "
                                                             "no --prompt, --negative or --other-positive with it")
            spec = _read_manifest(args.replay)
            model = args.model or spec.model
        else:
            model = args.model or EMBEDDED_NAME
            spec = spec_from_args(args, model, "empty" if args.baseline == "auto" else args.baseline)
        spec.validate(LIMITS.max_cells)

        # 2. Load the model; resolve the baseline "auto" for it
        loaded = load(None if model == EMBEDDED_NAME else model, device=args.device,
                      preview_decoder=args.preview_decoder)
        if args.replay is None:
            baseline = default_baseline(loaded.pipe) if args.baseline == "auto" else args.baseline
            spec = nag_for_distilled(spec_from_args(args, model_source(loaded.pipe), baseline), loaded)

        # 3. Run and save
        with tqdm(total=None, unit="step", desc="denoising") as bar:
            def on_step(done, total, _previews):
                bar.total = total
                bar.update(done - bar.n)

            every = default_preview_every(spec) if args.preview_every is None else args.preview_every
            recorder = PreviewRecorder(spec.steps, then=on_step)
            result = explain(compare(loaded, spec, max_batch=args.max_batch, callback=recorder, preview_every=every,
                                     attention_maps=args.attention_maps),
                             loaded, recorder if every else None)
        folder = result.save(args.out, differences=not args.no_differences)
    except (ValueError, OSError) as error:
        print(f"negprompt: error: {error}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {folder / 'grid.png'}, {len(result.cells)} cell PNGs and {folder / 'manifest.json'} "
          f"in {result.timings['total_s']:.2f} s")
    print("\n".join(summary_lines(result)))
    return 0
