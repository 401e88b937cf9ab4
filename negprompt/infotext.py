"""A1111-style infotext: the text that PNG files carry in their ``parameters`` chunk and many tools read back.

    portrait photo of a man
    Negative prompt: mustache
    Steps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Size: 64x64, Model: negprompt-portraits

The "Negative prompt:" line is left out when the negative is empty; values holding ``,``, ``:`` or a newline are
JSON-quoted. A cell whose negative acts during part of the steps only, or that uses another guidance method than
CFG, says so in extra pairs, as A1111 extensions do: ``Negative window: 0.3-0.8`` (the syntax of
``negprompt.plan.parse_window``) and ``Guidance method: perp-neg`` (that of ``negprompt.guidance.parse_method``);
prompts read as A1111 reads them say ``Prompt reading: a1111`` (``negprompt.reading``).
``parse_infotext`` reads any such text back into a dict of settings.
"""

from __future__ import annotations

import json
import re

_PAIR = re.compile(r'\s*([\w .+-]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:\n"') else text


def format_infotext(settings, seed: int, negative_prompt: str, *, prompt: str | None = None,
                    extra: dict | None = None) -> str:
    """The infotext of one image of a comparison run with ``settings`` (its positive prompt, unless ``prompt``
    gives another), with ``extra`` pairs after the usual ones."""
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
    fields.update(extra or {})
    lines = [settings.prompt if prompt is None else prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items()))
    return "\n".join(lines)


def cell_infotext(settings, cell, reading: str = "plain") -> str:
    """The infotext of one cell (a ``negprompt.plan.CellSpec``) of a comparison run with ``settings``, its prompts
    read ``reading`` (``negprompt.reading``; only a reading other than "plain" is written)."""
    from negprompt.guidance import CFG, method_label
    from negprompt.plan import WHOLE, format_window

    extra = {}
    if tuple(cell.window) != WHOLE:
        extra["Negative window"] = format_window(cell.window)
    if not isinstance(cell.guidance, CFG):
        extra["Guidance method"] = method_label(cell.guidance)
    if cell.guidance_scale is not None:
        extra["CFG scale"] = f"{cell.guidance_scale:g}"  # the cell's own, in place of the comparison's
    if reading != "plain":
        extra["Prompt reading"] = reading
    return format_infotext(settings, cell.seed, cell.negative or "", prompt=cell.positive, extra=extra)


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
