"""Command line: run one comparison and write its grid, cells and manifest.

    python -m negprompt --prompt "portrait photo of a man" --negative mustache --negative hat
    negprompt --prompt "portrait photo of a man" --negatives-file negatives.txt --seeds 1,2,3 --out outputs/run1
    negprompt --prompt "portrait photo of a man" --negative mustache \
        --other-positive "portrait photo of a man without mustache"
    negprompt --prompt "portrait photo of a man" --negative hat@0.3 --negative "glasses@0.2-0.8"   # windows
    negprompt --prompt "portrait photo of a man" --negative hat --guidance-methods cfg,perp-neg,cfg-rescale:0.7
    negprompt --prompt "portrait photo of a man" --negative hat --timing 0,0.2,0.4,0.6
    negprompt --prompt "portrait photo of a man" --negative "hat, glasses, blurry, watermark" --leave-one-out
    negprompt --prompt "portrait photo of a man" --negative "(hat:1.4), [glasses:0.5]" --reading a1111
    negprompt --prompt "portrait photo of a man" --negative "(hat:1.4), blurry" --compare-readings
    negprompt --replay outputs/run1/manifest.json --out outputs/run1-again
    negprompt --model stable-diffusion-v1-5/stable-diffusion-v1-5 --size 512x512 --steps 30 --prompt ... --negative ...
    negprompt --prompt "portrait photo of a man" --negative "portrait-bad"           # the shipped negative embedding
    negprompt --model ./sd15 --embedding EasyNegative=./EasyNegative.safetensors --prompt ... --negative EasyNegative
    negprompt --prompt "portrait photo of a man" --xray portrait-bad                  # each vector alone
    negprompt --model ./sd15 --lora ./detail.safetensors:0.8 --prompt ... --negative ...

A negative may carry a window, the fraction of the steps during which it acts: ``hat@0.3`` from 30% of the steps
to the end, ``hat@0.3-0.8`` from 30% to 80%; outside it the cell uses the baseline's negative. ``--guidance-methods``
makes one cell per method for each negative, ``--timing`` one cell per start fraction. ``--replay`` runs the spec a
manifest recorded again (same images on the same machine), into a new folder that appears whole when done.
``--reading a1111`` reads every prompt as the A1111 web UI does (``negprompt.reading``); ``--compare-readings``
shows each negative read both ways. Without --model it runs the embedded portrait model from assets/, with its
negative embedding ``portrait-bad``. Embeddings (``--embedding``) and LoRAs (``--lora``) load with the model for
the whole comparison; a replay loads the ones its manifest recorded and checks their file hashes. Every argument is
checked before the model loads; errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from negprompt import axes
from negprompt.quiet import OneLineParser, quiet_libraries

TERM_SEEDS = [0, 1, 2]  # leave-one-out and terms-alone rank over at least three seeds unless told otherwise


def _seeds(text: str) -> list[int]:
    """``1,2,3`` or ranges ``0-7``: counted before a range is expanded (one comparison holds at most
    ``LIMITS.max_cells`` images, so at most that many seeds)."""
    from negprompt.errors import LIMITS, InputError
    from negprompt.plan import parse_seeds

    try:
        return list(parse_seeds([item for item in text.split(",") if item.strip()], "--seeds", LIMITS.max_cells))
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error).replace("--seeds[", "item [")) from None


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r} must look like 512x512 (width x height)") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    from negprompt.schedulers import scheduler_names

    parser = OneLineParser(
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
    for axis in axes.ALL:  # one flag per comparison axis (negprompt.axes); the plain comparison has none
        if axis.flag is None:
            continue
        if axis.values is not None:
            modes.add_argument(axis.flag, default=None, metavar=axis.values.metavar, help=axis.help)
        elif axis.takes_name:
            modes.add_argument(axis.flag, default=None, metavar="NAME", help=axis.help)
        else:
            modes.add_argument(axis.flag, action="store_true", help=axis.help)
    modes.add_argument("--replay", type=Path, default=None, metavar="MANIFEST",
                       help="run the comparison a manifest.json recorded again (its prompts, cells and settings)")
    parser.add_argument("--model", default=None,
                        help="Hub id, local diffusers folder or single-file .safetensors (SD 1.x/2.x, SDXL); "
                             "default: the embedded model (with --replay: the manifest's model)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="the seed of the single row (default 0)")
    seeds.add_argument("--seeds", type=_seeds, default=None, metavar="S1,S2,...",
                       help="one row per seed; ranges too: 0-7 (default: 0; for --leave-one-out and "
                            "--terms-alone 0,1,2, so the ranking shows each term's spread over seeds)")
    parser.add_argument("--reading", default=None, choices=("plain", "a1111"),
                        help="how prompts are read: plain (the text as it is, as diffusers reads it: A1111 "
                             "syntax is characters, past 75 tokens is cut; the default) or a1111 ((x:1.3), (x), "
                             "[x], BREAK, 75-token chunks, [a:b:0.4] prompt editing, as the A1111 web UI reads it)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--size", type=_size, default=None, metavar="WxH", help="image size (default: the model's)")
    parser.add_argument("--scheduler", default="Default", choices=scheduler_names(),
                        help="sampler (default: the model's own)")
    parser.add_argument("--baseline", default="auto", choices=("auto", "empty", "zeros"),
                        help="the no-negative cell: empty prompt or zero embeddings (auto: zeros for SDXL only)")
    parser.add_argument("--max-batch", type=int, default=None, help="at most this many images per UNet batch")
    parser.add_argument("--embedding", action="append", default=[], metavar="NAME=PATH",
                        help="load a negative embedding (A1111 .pt/.safetensors, SDXL clip_l/clip_g file, a folder "
                             "or a Hub id) under NAME, which a prompt then writes as a word (repeat for several)")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH:WEIGHT",
                        help="fuse a LoRA (.safetensors file, folder or Hub id) into the model for the whole "
                             "comparison, at WEIGHT (default 1; repeat for several)")
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
    from negprompt.errors import LIMITS
    from negprompt.inputs import read_text_file

    negatives = list(args.negative)
    if args.negatives_file is not None:
        text = read_text_file(args.negatives_file, "--negatives-file", LIMITS.max_text_file_bytes)
        negatives += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return negatives


def _read_manifest(path: Path):
    """(spec, additions) of a manifest: the comparison it recorded and the embeddings and LoRAs its model was
    loaded with (``{}`` for none), each checked before anything runs."""
    from negprompt.errors import LIMITS, InputError
    from negprompt.inputs import load_json_file
    from negprompt.plan import ComparisonSpec

    data = load_json_file(path, "--replay", LIMITS.max_manifest_bytes)
    if not isinstance(data, dict) or "spec" not in data:
        raise InputError("replay", str(path), f"--replay {str(path)!r} is not a negprompt manifest (it has no "
                                              "'spec'; manifests written before version 0.2 cannot be replayed)")
    return ComparisonSpec.from_dict(data["spec"]), _check_additions(path, data.get("model_additions") or {})


def _check_additions(path: Path, additions) -> dict:
    """A manifest's ``model_additions``: ``{"embeddings": [{name, source, sha256}], "loras": [{source, weight,
    sha256}]}``, at most ``LIMITS.max_model_additions`` of each, every field of its type; an ``InputError``
    otherwise."""
    from negprompt.errors import LIMITS, InputError

    fields = {"embeddings": {"name": str, "source": str, "sha256": str},
              "loras": {"source": str, "weight": (int, float), "sha256": str}}
    ok = isinstance(additions, dict) and set(additions) <= set(fields)
    for kind, wanted in fields.items():
        items = additions.get(kind, []) if ok else None
        ok = ok and isinstance(items, list) and len(items) <= LIMITS.max_model_additions and all(
            isinstance(item, dict) and all(isinstance(item.get(k), t) and not isinstance(item.get(k), bool)
                                           and (t is not str or len(item[k]) <= LIMITS.max_text_chars)
                                           for k, t in wanted.items()) for item in items)
    if not ok:
        raise InputError("replay", str(path), f"--replay {str(path)!r}: its model_additions are not a list of "
                                              "embeddings (name, source, sha256) and LoRAs (source, weight, sha256)")
    return additions


def save_atomic(result, out: Path, differences: bool) -> Path:
    """Write ``result`` into a temporary folder beside ``out`` and rename it to ``out`` when complete (``out`` does
    not exist or is empty): a failure leaves no images without their manifest."""
    import os
    import shutil

    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        result.save(partial, differences=differences)
        os.replace(partial, out)  # a rename; onto an empty folder too
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def chosen_axis(args) -> axes.Axis:
    """The comparison axis whose flag was given (at most one: they are mutually exclusive), else the plain one."""
    for axis in axes.ALL:
        if axis.dest is not None and getattr(args, axis.dest, None) not in (None, False):
            return axis
    return axes.get("negatives")


def spec_from_args(args, model: str, baseline: str, embeddings=None):
    """The comparison spec the arguments ask for (pure: nothing loads), built by the chosen axis
    (``negprompt.axes``). ``embeddings``: the loaded model's (for ``--xray``; None before it loads)."""
    from negprompt.errors import LIMITS, InputError
    from negprompt.plan import check_text, parse_window

    if args.prompt is None:
        raise InputError("prompt", None, "--prompt is required (or --replay a manifest)")
    check_text("prompt", args.prompt)
    if args.other_positive is not None:
        check_text("other_positive", args.other_positive)
    texts, windows = [], []
    negatives = _read_negatives(args)
    if len(negatives) >= LIMITS.max_cells:  # each row also holds its baseline
        raise InputError("negatives", len(negatives), f"{len(negatives):,} negatives make more than "
                                                      f"{LIMITS.max_cells} images per seed")
    for i, text in enumerate(negatives):
        negative, window = parse_window(text, f"negatives[{i}]")
        check_text(f"negatives[{i}]", negative)
        texts.append(negative)
        windows.append(window)
    if args.compare_readings and args.reading is not None:
        raise InputError("reading", args.reading, "--compare-readings reads every negative both ways: give no "
                                                  "--reading with it")
    axis = chosen_axis(args)
    default_seeds = args.seeds is None and args.seed is None
    seeds = TERM_SEEDS if default_seeds and axis.long_negative else args.seeds or [args.seed or 0]
    values = axis.values.parse(getattr(args, axis.dest)) if axis.values is not None else ()
    if axis.takes_name:  # the X-ray's embedding: its vectors are known once the model has loaded
        from negprompt.embeddings import find

        embedding = find(embeddings, getattr(args, axis.dest)) if embeddings is not None else None
        values = (embedding.name, embedding.vectors) if embedding else (getattr(args, axis.dest), None)
    width, height = args.size or (None, None)
    common = dict(model=model, steps=args.steps, guidance_scale=args.guidance, height=height, width=width,
                  sampler=args.scheduler, baseline=baseline, other_positive=args.other_positive,
                  reading=args.reading or "plain", values=values, windows=windows)
    spec = axis.build(args.prompt, texts, seeds, **common)
    if axis.long_negative and default_seeds and len(spec.cells) > LIMITS.max_cells:
        fit = max(1, LIMITS.max_cells // (len(spec.cells) // len(seeds)))  # the default seeds that fit
        spec = axis.build(args.prompt, texts, seeds[:fit], **common)
    return spec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("sweep", "report"):  # negprompt sweep CONFIG --out DIR; negprompt report DIR
        from negprompt import report, sweep

        return {"sweep": sweep.main, "report": report.main}[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from negprompt.embeddings import xray_lines
    from negprompt.verdicts import summary_lines

    try:
        planned = _checked(args)  # 1. every argument, before anything loads
        loaded, spec = _loaded(args, *planned)  # 2. the model, and the spec as it can show it
        result, folder = _run_and_save(args, loaded, spec)  # 3. the run and its files
    except (ValueError, OSError) as error:
        print(f"negprompt: error: {error}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {folder / 'grid.png'}, {len(result.cells)} cell PNGs and {folder / 'manifest.json'} "
          f"in {result.timings['total_s']:.2f} s")
    print("\n".join(summary_lines(result)))
    if "xray" in result.explored:
        print("\n".join(xray_lines(result.explored["xray"])))
    return 0


def _checked(args):
    """(spec, model, recorded additions, embeddings, loras): every argument checked before any model loads;
    ``InputError`` otherwise."""
    from negprompt.embeddings import parse_embedding
    from negprompt.errors import LIMITS, InputError
    from negprompt.inputs import check_out_folder
    from negprompt.loading import EMBEDDED_NAME
    from negprompt.loras import parse_lora
    from negprompt.schedulers import scheduler_names

    if args.max_batch is not None and args.max_batch < 1:
        raise InputError("max_batch", args.max_batch, f"--max-batch {args.max_batch} must be at least 1")
    if args.preview_every is not None and args.preview_every < 0:
        raise InputError("preview_every", args.preview_every, "--preview-every must be 0 or more")
    recorded = None
    if args.replay is not None:
        if args.prompt is not None or args.negative or args.negatives_file or args.other_positive is not None \
                or args.reading is not None:
            raise InputError("replay", str(args.replay), "--replay runs the cells its manifest recorded: give no "
                                                         "--prompt, --negative, --other-positive or --reading "
                                                         "with it")
        check_out_folder(args.out, empty=True)  # the replay's folder is written whole, by one rename
        spec, recorded = _read_manifest(args.replay)
        model = args.model or spec.model
    else:
        check_out_folder(args.out)
        model = args.model or EMBEDDED_NAME
        spec = spec_from_args(args, model, "empty" if args.baseline == "auto" else args.baseline)
    spec.validate(LIMITS.max_cells)
    if spec.sampler not in scheduler_names():
        raise InputError("sampler", spec.sampler, f"sampler={spec.sampler!r} is not one of "
                                                  f"{', '.join(scheduler_names())}")
    embeddings = [parse_embedding(text) for text in args.embedding]
    loras = [parse_lora(text) for text in args.lora]
    if recorded is not None and not embeddings and not loras:
        embeddings, loras = _replay_additions(recorded, model)
    return spec, model, recorded, embeddings, loras


def _loaded(args, spec, model: str, recorded, embeddings, loras):
    """(loaded model, spec): the model with its embeddings and LoRAs; a new comparison's spec built again for it
    (the baseline "auto" resolved, the X-ray's vectors known, fitted to what it can show), a replay's checked to
    load what its manifest recorded."""
    from negprompt.engine import default_baseline
    from negprompt.loading import EMBEDDED_NAME, load, model_source
    from negprompt.verdicts import fit_to_model

    loaded = load(None if model == EMBEDDED_NAME else model, device=args.device,
                  preview_decoder=args.preview_decoder, embeddings=embeddings, loras=loras)
    if recorded is not None:
        _check_same_additions(recorded, loaded.additions())
        return loaded, spec
    baseline = default_baseline(loaded.pipe) if args.baseline == "auto" else args.baseline
    return loaded, fit_to_model(spec_from_args(args, model_source(loaded.pipe), baseline, loaded.embeddings), loaded)


def _run_and_save(args, loaded, spec):
    """(result, folder): the comparison run with a progress bar, explained, and written to ``--out``."""
    from tqdm.auto import tqdm

    from negprompt.embeddings import find, xray_findings
    from negprompt.engine import compare
    from negprompt.explore import PreviewRecorder, default_preview_every
    from negprompt.verdicts import explain

    with tqdm(total=None, unit="step", desc="denoising") as bar:
        def on_step(done, total, _previews):
            bar.total = total
            bar.update(done - bar.n)

        every = default_preview_every(spec) if args.preview_every is None else args.preview_every
        recorder = PreviewRecorder(spec.steps, then=on_step)
        result = explain(compare(loaded, spec, max_batch=args.max_batch, callback=recorder, preview_every=every,
                                 attention_maps=args.attention_maps),
                         loaded, recorder if every else None)
    if args.xray is not None:
        embedding = find(loaded.embeddings, args.xray)
        result.explored["xray"] = xray_findings(loaded.pipe, embedding.name, embedding.vectors)
    if args.replay is not None:
        return result, save_atomic(result, args.out, differences=not args.no_differences)
    return result, result.save(args.out, differences=not args.no_differences)


def _replay_additions(recorded: dict, model: str):
    """(embeddings, loras) to load for a replay: the recorded ones, from the files they were read from (the
    embedded model's own embeddings load with it)."""
    from negprompt.loading import EMBEDDED_EMBEDDINGS, EMBEDDED_NAME

    own = {name for name, _ in EMBEDDED_EMBEDDINGS} if model == EMBEDDED_NAME else set()
    embeddings = [(e["name"], e["source"]) for e in recorded.get("embeddings", []) if e["name"] not in own]
    loras = [(lora["source"], lora["weight"]) for lora in recorded.get("loras", [])]
    return embeddings, loras


def _check_same_additions(recorded: dict, loaded: dict) -> None:
    """A replay must run with the embeddings and LoRAs its manifest recorded, byte for byte (by file hash)."""
    from negprompt.errors import InputError

    def hashes(additions: dict) -> dict:
        named = {f"embedding {e['name']}": e["sha256"] for e in additions.get("embeddings", [])}
        named.update({f"LoRA {x['source']} at {x['weight']:g}": x["sha256"] for x in additions.get("loras", [])})
        return named

    want, have = hashes(recorded), hashes(loaded)
    for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
            state = ("is missing" if name not in have else "was not in the recorded run" if name not in want
                     else "has another file hash than the recorded one")
            raise InputError("replay", name, f"--replay: {name} {state}; the images would differ")
