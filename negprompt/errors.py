"""Bad input as data, and the one set of hard limits every front end shares.

    from negprompt.errors import InputError, LIMITS
    try:
        compare(pipe, prompt, negatives, steps=0)
    except InputError as error:
        print(error.argument, error.value, error)   # "steps" 0 "steps=0 must be an integer from 1 to 200"

``argument`` names what is wrong the way the library's own signatures name it: a keyword (``"prompt"``,
``"steps"``, ``"guidance_scale"``, ``"height"``), an indexed item (``"negatives[2]"``, ``"seeds[0]"``) or a field of
one cell of a comparison spec (``"cells[3].window"``). Front ends map it to their own label with one table
(``base_argument`` strips the index) and never parse message text. Front ends may offer narrower caps (an app on a
shared CPU takes fewer steps), never wider ones than ``LIMITS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class InputError(ValueError):
    """Bad input: ``argument`` names it (``"steps"``, ``"negatives[1]"``), ``value`` is what was given."""

    def __init__(self, argument: str, value, message: str):
        super().__init__(message)
        self.argument = argument
        self.value = value


def base_argument(argument: str) -> tuple[str, int | None]:
    """``"negatives[2]"`` -> ``("negatives", 2)``; ``"cells[3].window"`` -> ``("window", 3)``; ``"steps"`` ->
    ``("steps", None)``."""
    match = re.fullmatch(r"(\w+)(?:\[(\d+)\])?(?:\.(\w+))?", argument)
    if not match:
        return argument, None
    name, index, attribute = match.groups()
    return (attribute or name), (int(index) if index is not None else None)


@dataclass(frozen=True)
class Limits:
    """The largest values negprompt accepts anywhere (library, command line, app, API)."""

    max_seed: int = 2**32 - 1  # A1111's range; also exact in JavaScript numbers, so a browser never rounds a seed
    max_steps: int = 200  # denoising steps
    max_side: int = 4096  # image width or height in pixels
    max_cells: int = 64  # images in one comparison (the library's default; front ends may cap lower)
    max_text_chars: int = 2000  # characters in one prompt or negative prompt (CLIP reads 75 tokens of them)
    max_guidance: float = 100.0  # guidance scale
    # What a manifest, a sweep config or a file they name may carry, checked before any work
    max_label_chars: int = 2100  # a cell's caption: a negative of max_text_chars with its window and method
    max_kind_chars: int = 40  # a cell's kind, a spec's mode, a sampler's or guidance method's name
    max_sweep_seeds: int = 1_000_000  # seeds in one sweep, counted before a range is expanded
    max_sweep_images: int = 1_000_000  # images in one sweep: prompts x axes x seeds x cells per seed
    max_list_items: int = 1000  # prompts, negatives or [[groups]] in one sweep config
    max_axis_values: int = 16  # a sweep's timing starts or guidance methods
    max_nesting: int = 32  # depth of nested lists/objects in a manifest or config (a manifest needs about 6)
    max_config_bytes: int = 1_000_000  # a sweep config (TOML)
    max_manifest_bytes: int = 16_000_000  # a manifest.json given to --replay
    max_text_file_bytes: int = 256 * 1024  # a negatives file
    max_model_additions: int = 64  # negative embeddings, or LoRAs, one manifest records


LIMITS = Limits()


def shown(value, chars: int = 60) -> str:
    """``repr(value)`` cut to about ``chars`` characters: what an error message may echo of any input."""
    text = repr(value)
    return text if len(text) <= chars else f"{text[:chars - 3]}... ({len(text):,} characters)"
