"""What a step preview costs: Stable Diffusion's full VAE against a TAESD-style AutoencoderTiny, side by side.

Both decoders are built at their real sizes with random weights (the cost does not depend on the weights, and
nothing is downloaded): the SD VAE (84M parameters, what SD 1.x, 2.x and SDXL decode with) and diffusers'
``AutoencoderTiny`` in its default configuration, which is TAESD's architecture (``madebyollin/taesd``, 2.4M).
It decodes one batch of ``--cells`` latents, as the engine decodes all cells' previews at a step, and prints the
time of each and the ratio.

    python benchmarks/preview_decoder.py                          # 4 cells at 256x256 on the CPU
    python benchmarks/preview_decoder.py --device cuda --cells 9 --side 512 --dtype float16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers import AutoencoderTiny

from negprompt.architectures import sd_vae


@torch.no_grad()
def seconds(decode, latents, repeats: int, device: str) -> float:
    decode(latents)  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        decode(latents)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description="Step preview decoding: full VAE vs AutoencoderTiny.")
    parser.add_argument("--cells", type=int, default=4, help="latents decoded in one batch")
    parser.add_argument("--side", type=int, default=256, help="image side in pixels (latents are side / 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    vae = sd_vae(args.side).to(args.device, dtype).eval()
    tiny = AutoencoderTiny().to(args.device, dtype).eval()
    latents = torch.randn(args.cells, 4, args.side // 8, args.side // 8, device=args.device, dtype=dtype)
    full = seconds(lambda z: vae.decode(z / vae.config.scaling_factor).sample, latents, args.repeats, args.device)
    small = seconds(lambda z: tiny.decode(z).sample, latents, args.repeats, args.device)
    result = {"cells": args.cells, "side": args.side, "device": args.device, "dtype": args.dtype,
              "vae_s": round(full, 4), "tiny_s": round(small, 4), "speedup": round(full / small, 1),
              "vae_params_m": round(sum(p.numel() for p in vae.parameters()) / 1e6, 1),
              "tiny_params_m": round(sum(p.numel() for p in tiny.parameters()) / 1e6, 2)}
    print(f"{args.cells} previews at {args.side}x{args.side} on {args.device} ({args.dtype}): full VAE "
          f"{full:.3f} s, AutoencoderTiny {small:.3f} s: {full / small:.1f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
