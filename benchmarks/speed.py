"""How fast is a comparison? Times the same N+1 images three ways, in one run on one device:

  (a) one diffusers pipeline call per image (the baseline, then each negative), each with
      ``generator=torch.Generator("cpu").manual_seed(seed)``: the way most demos compare negatives today;
  (b) one batched diffusers call: ``prompt=[p] * N, negative_prompt=[""] + negatives`` and one seeded latent
      repeated N times as ``latents=``;
  (c) ``negprompt.compare`` as the app runs it, after ``negprompt.speedups.apply_speedups`` (the device's levers).

(a) and (b) run first, on the eager pipeline; the levers are applied after them. Each way runs ``--warmup`` times
untimed (reported as warm-up, compile time included) then ``--repeats`` times; the table shows medians. UNet and
VAE FLOPs are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode`` (text encoding is
left out: under 0.1% of the work); the compute floor is those FLOPs at ``--peak-tflops``. Images of (c) must match
(b) within 2/255 (the script exits with status 1 otherwise). Baselines use the empty negative prompt "" in all three
ways, SDXL included, so that they draw the same images.

    python benchmarks/speed.py --smoke --device cpu      # tiny pipelines, 2 steps: a few seconds (CI)
    python benchmarks/speed.py --device cpu              # the embedded model, 64x64, 1+4 and 1+8 images
    python benchmarks/speed.py --device cuda --sweep --json speed-cuda.json
                                                         # SD1.5 512x512 and SDXL 1024x1024, 30 steps, 1+8 images
    python benchmarks/speed.py --device cuda --configs sd15 --negatives 8 --steps 30 --repeats 5
    python benchmarks/speed.py --device cuda --configs sd3,flux --negatives 4 --steps 28
                                                         # SD3 Medium and FLUX.1-dev (true CFG), random weights
    python benchmarks/speed.py --device cpu --configs tiny_sd3,tiny_flux --steps 2   # their tiny versions
    python benchmarks/speed.py --device cuda --model ./my-sd15-folder --size 512 --negatives 4,8

``--sweep`` times (c) again after each lever (channels_last, fused QKV, torch.compile) for the before/after notes.
The last line is for scripts: ``speedup_vs_one_call_per_image=<a/c> seconds=<c> device=<name>`` (the first
configuration's numbers).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from negprompt import architectures, speedups  # noqa: E402
from negprompt.engine import compare  # noqa: E402
from negprompt.families import family_of  # noqa: E402
from negprompt.loading import Loaded, ModelNotFoundError, load_pipeline  # noqa: E402

PROMPT = "portrait photo of a man"
NEGATIVES = ("mustache", "beard", "glasses", "hat", "smile", "scarf", "earrings", "blurry", "cartoon", "painting",
             "lowres", "bad anatomy", "red background", "blue background", "green background", "ugly")
# Dense bf16/fp16 matmul rates, TFLOP/s. H200: measured (REFERENCE.md section 6). The H100 SXM has the same compute
# die and clocks, so it gets the same rate; other cards need --peak-tflops.
PEAK_TFLOPS = {"H200": 790.0, "H100 80GB HBM3": 790.0}
MAX_PIXEL_DIFFERENCE = 2 / 255


@dataclass
class Config:
    """One benchmark configuration."""

    name: str  # label in the table
    source: str  # "embedded", "tiny_sd", "tiny_sdxl", "sd15", "sdxl" or a model folder / Hub id
    negatives: int  # negative prompts; images = negatives + 1
    steps: int  # denoising steps
    size: int | None  # image side in pixels (None: the model's)
    results: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(source: str, device: torch.device, dtype: torch.dtype):
    """The pipeline for ``source`` on ``device`` in ``dtype``, and a note on what it is."""
    builders = {"tiny_sd": architectures.tiny_sd_pipeline, "tiny_sdxl": architectures.tiny_sdxl_pipeline,
                "tiny_sd3": architectures.tiny_sd3_pipeline, "tiny_flux": architectures.tiny_flux_pipeline,
                "sd15": architectures.sd15_pipeline, "sdxl": architectures.sdxl_pipeline}
    made_on_device = {"sd3": architectures.sd3_pipeline, "flux": architectures.flux_pipeline}  # 2B + 4.8B, 12B + 4.8B
    if source in builders:
        pipe = builders[source]().to(device, dtype)
        note = f"{source} architecture, random weights"
    elif source in made_on_device:
        pipe = made_on_device[source](device=device).to(device, dtype)
        note = f"{source} architecture, random weights"
    else:
        try:
            pipe = load_pipeline(None if source == "embedded" else source, device=device, dtype=dtype)
            note = source
        except ModelNotFoundError:
            if source != "embedded":
                raise
            pipe = architectures.tiny_sd_pipeline().to(device, dtype)
            note = "embedded model not found (assets/portrait-model): tiny_sd_pipeline() instead"
    for module in (family_of(pipe).denoiser, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "text_encoder_3", None)):
        if module is not None:
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, note


@torch.no_grad()
def count_flops(pipe, height: int, width: int) -> tuple[float, float]:
    """FLOPs of one denoiser forward on one latent and of one VAE decode of one image."""
    family = family_of(pipe)
    if family.name == "unet":
        sample, t, text, kwargs = speedups.example_unet_inputs(pipe, 1, height, width)
        with FlopCounterMode(display=False) as counter:
            pipe.unet(sample, t, encoder_hidden_states=text, return_dict=False, **kwargs)
        denoiser = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            pipe.vae.decode(sample.to(pipe.vae.dtype))
        return float(denoiser), float(counter.get_total_flops())
    device = pipe._execution_device
    table = family.encode([PROMPT])
    text, pooled = table.stack([PROMPT], device)
    sample = family.initial_latent(0, height, width, table.dtype).to(device)
    stepper = family.stepper("Default", [0], sample, 1, height, width)
    call = family.denoiser_call(height, width, 1, 1.0, table.dtype, device)
    with FlopCounterMode(display=False) as counter:
        call(sample, stepper.timesteps[0], text, pooled)
    denoiser = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        family.decode(sample, height, width)
    return float(denoiser), float(counter.get_total_flops())


def time_ways(ways: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, dict]:
    """Run each of ``ways`` (name -> function returning images) ``warmup`` times untimed, then ``repeats`` rounds
    of one run each, interleaved so that a busy machine slows every way alike. Per way: median seconds, every
    run's seconds, warm-up seconds, peak GPU memory and the last run's images."""
    results = {}
    for name, fn in ways.items():
        start = time.perf_counter()
        for _ in range(warmup):
            fn()
        sync(device)
        results[name] = {"all_seconds": [], "warmup_s": time.perf_counter() - start, "peak_gib": None}
    for _ in range(repeats):
        for name, fn in ways.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            images = fn()
            sync(device)
            result = results[name]
            result["all_seconds"].append(time.perf_counter() - start)
            result["images"] = images
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                result["peak_gib"] = max(peak, result["peak_gib"] or 0)
    for result in results.values():
        result["seconds"] = statistics.median(result["all_seconds"])
    return results


def max_difference(left, right) -> float:
    """Largest pixel difference between two lists of images, in units of the full range (1 = 255 levels)."""
    return max(float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) / 255 for a, b in
               zip(left, right, strict=True))


def lever_stages(args, device: torch.device) -> tuple[speedups.Levers, list[tuple[str, speedups.Levers]]]:
    """The eager levers, and the stages (label, levers) at which (c) is timed: (c) eager first when sweeping or when
    no lever applies, timed with (a) and (b); then (c) again with each lever added (the sweep) or with all of them,
    after (a) and (b) are done on the eager pipeline."""
    wanted = levers_from(args.levers, device, args.compile_mode)
    names = [name for name in ("channels_last", "fuse_qkv", "compile") if getattr(wanted, name)]
    eager = speedups.Levers(compile_mode=wanted.compile_mode, buckets=wanted.buckets)
    stages = [("eager", eager)] if args.sweep or not names else []
    if args.sweep:
        for name in names:
            stages.append((f"+{name}", speedups.Levers(**{**vars(stages[-1][1]), name: True})))
    elif names:
        stages.append(("levers", wanted))
    return eager, stages


def run_config(config: Config, args, device: torch.device, dtype: torch.dtype) -> dict:
    pipe, note = build(config.source, device, dtype)
    family = family_of(pipe)
    size = config.size or family.default_side()
    negatives = list(NEGATIVES[:config.negatives])
    cells = ["", *negatives]
    scale = {"true_cfg_scale": args.guidance} if family.name == "flux" else {"guidance_scale": args.guidance}
    common = dict(num_inference_steps=config.steps, height=size, width=size, output_type="pil", **scale)
    logging.info("%s: %s, %d images, %d steps, %dx%d, %s", config.name, note, len(cells), config.steps, size, size,
                 dtype)

    def one_call_per_image():
        return [pipe(PROMPT, negative_prompt=n, generator=torch.Generator("cpu").manual_seed(args.seed),
                     **common).images[0] for n in cells]

    latent = family.initial_latent(args.seed, size, size, family.denoiser.dtype)  # what the pipeline draws

    def one_batched_call():
        latents = latent.repeat(len(cells), *[1] * (latent.ndim - 1))
        return pipe([PROMPT] * len(cells), negative_prompt=cells, latents=latents, **common).images

    loaded = Loaded(pipe)  # the pipeline with its runtime facts: the levers applied, the compiled batch sizes

    def negprompt_compare():
        result = compare(loaded, PROMPT, negatives, seed=args.seed, steps=config.steps, guidance_scale=args.guidance,
                         height=size, width=size, baseline="empty")
        return [cell.image for cell in result.cells]

    unet_flops, vae_flops = count_flops(pipe, size, size)
    flops = unet_flops * 2 * len(cells) * config.steps + vae_flops * len(cells)
    result = {"name": config.name, "model": note, "images": len(cells), "steps": config.steps, "size": size,
              "dtype": str(dtype).removeprefix("torch."), "unet_tflop_per_sample": unet_flops / 1e12,
              "vae_tflop_per_image": vae_flops / 1e12, "tflop": flops / 1e12}
    eager, stages = lever_stages(args, device)
    ways = {"a": one_call_per_image, "b": one_batched_call}
    if stages[0][0] == "eager":
        ways["c"] = negprompt_compare
    report = speedups.apply_speedups(pipe, eager, loaded.runtime.speedups)
    timed = time_ways(ways, device, args.warmup, args.repeats)
    result["stages"] = {"eager": timed["c"]} if "c" in timed else {}
    for label, levers in stages[1:] if "c" in timed else stages:
        report = speedups.apply_speedups(pipe, levers, loaded.runtime.speedups)
        start = time.perf_counter()
        if report["buckets"]:
            speedups.warmup(pipe, [2 * len(cells)], size, size, buckets=loaded.runtime.buckets)
        compile_s = time.perf_counter() - start
        timed["c"] = time_ways({"c": negprompt_compare}, device, args.warmup, args.repeats)["c"]
        timed["c"]["warmup_s"] += compile_s
        result["stages"][label] = timed["c"]
    result["stages"] = {k: {n: v for n, v in stage.items() if n != "images"} for k, stage in result["stages"].items()}
    result["speedups"] = report

    for key, value in timed.items():
        result[key] = {k: v for k, v in value.items() if k != "images"}
    result["max_diff_c_vs_b"] = max_difference(timed["c"]["images"], timed["b"]["images"])
    result["max_diff_c_vs_a"] = max_difference(timed["c"]["images"], timed["a"]["images"])
    result["image_check"] = "ok" if result["max_diff_c_vs_b"] <= MAX_PIXEL_DIFFERENCE else "FAIL"
    c = result["c"]["seconds"]
    result["a_over_c"] = result["a"]["seconds"] / c
    result["b_over_c"] = result["b"]["seconds"] / c
    result["achieved_tflops"] = flops / 1e12 / c
    peak = args.peak_tflops or peak_for(device)
    result["peak_tflops"] = peak if dtype in (torch.float16, torch.bfloat16) or args.peak_tflops else None
    result["floor_s"] = flops / 1e12 / result["peak_tflops"] if result["peak_tflops"] else None
    result["floor_fraction"] = result["floor_s"] / c if result["floor_s"] else None
    return result


def levers_from(text: str, device: torch.device, mode: str) -> speedups.Levers:
    if text == "auto":
        levers = speedups.Levers.for_device(device)
        levers.compile_mode = mode
        return levers
    names = [] if text == "none" else [n.strip() for n in text.split(",")]
    unknown = set(names) - {"channels_last", "fuse_qkv", "compile"}
    if unknown:
        raise SystemExit(f"--levers {text!r}: unknown lever(s) {sorted(unknown)}")
    return speedups.Levers(**dict.fromkeys(names, True), compile_mode=mode)


def peak_for(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((rate for key, rate in PEAK_TFLOPS.items() if key in name), None)


def device_name(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    return name.replace(" ", "_")


def fmt(value, spec=".2f", none="-"):
    return none if value is None else format(value, spec)


def print_table(results: list[dict]) -> None:
    head = ("config", "images", "steps", "size", "a: 1/image s", "b: batched s", "c: negprompt s", "a/c", "b/c",
            "TFLOP/s", "floor", "peak GiB", "warm-up s (a/b/c)", "max diff c-b", "check")
    rows = [head]
    for r in results:
        warm = "/".join(fmt(r[k]["warmup_s"], ".1f") for k in "abc")
        rows.append((r["name"], str(r["images"]), str(r["steps"]), f"{r['size']}x{r['size']}",
                     fmt(r["a"]["seconds"], ".3f"), fmt(r["b"]["seconds"], ".3f"), fmt(r["c"]["seconds"], ".3f"),
                     fmt(r["a_over_c"]) + "x", fmt(r["b_over_c"]) + "x", fmt(r["achieved_tflops"], ".3g"),
                     fmt(r["floor_fraction"], ".0%"), fmt(r["c"]["peak_gib"], ".1f"), warm,
                     f"{r['max_diff_c_vs_b'] * 255:.1f}/255", r["image_check"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in results:
        stages = ", ".join(f"{k} {v['seconds']:.3f} s" for k, v in r["stages"].items())
        print(f"{r['name']}: {r['model']}; {r['tflop']:.3g} TFLOP; (c) stages: {stages}; "
              f"applied: {', '.join(r['speedups']['applied']) or 'none'}; sdpa: {r['speedups']['sdpa']}; "
              f"max diff c-a {r['max_diff_c_vs_a'] * 255:.1f}/255")


def configs_for(args) -> list[Config]:
    counts = [int(n) for n in args.negatives.split(",")] if args.negatives else None
    if args.model:
        return [Config(f"{Path(args.model).name}+{n}", args.model, n, args.steps or 30, args.size)
                for n in counts or [8]]
    if args.smoke:
        names = ["tiny_sd", "tiny_sdxl"]
        return [Config(f"{s}+{n}", s, n, args.steps or 2, args.size) for s in names for n in counts or [2]]
    if args.device_obj.type == "cpu" and args.configs is None:
        return [Config(f"embedded+{n}", "embedded", n, args.steps or 20, args.size) for n in counts or [4, 8]]
    table = {"sd15": 512, "sdxl": 1024, "sd3": 1024, "flux": 1024, "tiny_sd3": 64, "tiny_flux": 64}
    names = (args.configs or "sd15,sdxl").split(",")
    for name in names:
        if name not in table:
            raise SystemExit(f"--configs {args.configs!r}: unknown configuration {name!r} ({', '.join(table)})")
    return [Config(f"{s}+{n}", s, n, args.steps or 30, args.size or table[s]) for s in names for n in counts or [8]]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                        help="precision (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--smoke", action="store_true", help="tiny pipelines, 2 steps, 1+2 images: seconds, for CI")
    parser.add_argument("--model", default=None, help="a diffusers folder or Hub id instead of the built-in configs")
    parser.add_argument("--configs", default=None,
                        help="configurations, comma-separated (default sd15,sdxl on cuda): sd15 (512x512), sdxl, sd3 "
                             "(SD3 Medium with T5), flux (FLUX.1-dev) (1024x1024), tiny_sd3, tiny_flux (64x64, any "
                             "device)")
    parser.add_argument("--negatives", default=None,
                        help="negative prompts per comparison, comma-separated for several configurations "
                             "(default: 8 on cuda, 4,8 on cpu, 2 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 30 cuda, 20 cpu, 2 smoke)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: per configuration)")
    parser.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default 7.5)")
    parser.add_argument("--seed", type=int, default=1, help="the seed every image starts from (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each way first (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per way (default 3, 1 with --smoke)")
    parser.add_argument("--levers", default="auto",
                        help="speed levers for (c): auto (the device's defaults), none, or a comma-separated list "
                             "of channels_last, fuse_qkv, compile")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", choices=speedups.COMPILE_MODES,
                        help="torch.compile mode when compile is on (default max-autotune-no-cudagraphs)")
    parser.add_argument("--sweep", action="store_true",
                        help="time (c) eager, then again after each lever is added (before/after per lever)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense half-precision rate for the compute floor (default: known cards)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 with --smoke); 1 is steadier on a "
                             "busy CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write all results to this JSON file")
    args = parser.parse_args(argv)
    args.device_obj = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    if args.threads is None and args.smoke:
        args.threads = 1  # tiny models gain nothing from threads, and lose a lot on a busy CPU
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args = parse_args(argv)
    device = args.device_obj
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    start = time.perf_counter()
    results = []
    for config in configs_for(args):
        results.append(run_config(config, args, device, dtype))
        if device.type == "cuda":  # the configuration's pipeline is gone with run_config's frame
            torch.cuda.empty_cache()
    print(f"device: {device_name(device)}, {dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"repeats {args.repeats} (median), warm-up runs {args.warmup}, total {time.perf_counter() - start:.0f} s")
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(device), "torch": torch.__version__,
                                         "results": results}, indent=2))
    first = results[0]
    print(f"speedup_vs_one_call_per_image={first['a_over_c']:.2f} seconds={first['c']['seconds']:.3f} "
          f"device={device_name(device)}")
    return 0 if all(r["image_check"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
