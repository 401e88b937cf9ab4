"""A1111-style infotext: the text that PNG files carry in their ``parameters`` chunk and many tools read back.

    portrait photo of a man
    Negative prompt: mustache
    Steps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Size: 64x64, Model: negprompt-portraits

The "Negative prompt:" line is left out when the negative is empty; values holding ``,``, ``:`` or a newline are
JSON-quoted. ``parse_infotext`` reads any such text back into a dict of settings.
"""

from __future__ import annotations

import json
import re

_PAIR = re.compile(r'\s*([\w .+-]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:\n"') else text


def format_infotext(settings, seed: int, negative_prompt: str) -> str:
    """The infotext of one cell of a comparison run with ``settings``."""
    fields = {
        "Steps": settings.steps,
        "Sampler": settings.scheduler,
        "CFG scale": f"{settings.guidance_scale:g}",
        "Seed": seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model": settings.model,
    }
    if not negative_prompt and settings.baseline == "zeros":
        fields["Baseline"] = "zero embeddings"
    lines = [settings.prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items()))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict:
    """Read infotext back: ``prompt``, ``negative_prompt`` and every ``Key: value`` of the last line, with
    Steps, Seed and CFG scale as numbers and Size split into ``width`` and ``height``."""
    lines = text.strip().split("\n")
    params: dict = {}
    if len(lines) > 1 and _PAIR.match(lines[-1]) and ":" in lines[-1]:
        for key, value in _PAIR.findall(lines.pop()):
            value = value.strip()
            if value.startswith('"') and value.endswith('"'):
                value = json.loads(value)
            params[key.strip()] = value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    params["prompt"] = "\n".join(prompt).strip()
    params["negative_prompt"] = "\n".join(negative).strip()
    for key, kind in (("Steps", int), ("Seed", int), ("CFG scale", float)):
        if key in params:
            params[key] = kind(params[key])
    if "Size" in params:
        width, height = params["Size"].split("x")
        params["width"], params["height"] = int(width), int(height)
    return params
