"""Prompt text checks: token counts, truncation, and the warnings a comparison carries.

CLIP text encoders read 77 tokens: a start token, 75 of text, an end token. Longer text is cut, and diffusers
warns about a cut positive prompt but silently cuts a negative one, so negprompt counts tokens itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenCount:
    """How much of a prompt the text encoder reads."""

    used: int  # tokens of text, without the start and end tokens
    limit: int  # tokens of text the encoder reads (75 for CLIP)
    truncated: str  # the text that is cut off ("" when it fits)

    @property
    def fits(self) -> bool:
        return self.used <= self.limit

    def __str__(self) -> str:
        return f"{self.used}/{self.limit}"


def count_tokens(tokenizer, text: str) -> TokenCount:
    """Count ``text``'s tokens under ``tokenizer`` (a CLIP tokenizer) and give the tail that would be cut."""
    limit = tokenizer.model_max_length - 2
    ids = tokenizer(text, truncation=False, add_special_tokens=False).input_ids
    tail = tokenizer.decode(ids[limit:]).strip() if len(ids) > limit else ""
    return TokenCount(used=len(ids), limit=limit, truncated=tail)


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def spec_warnings(tokenizer, spec, distilled: bool) -> list[str]:
    """Everything about a comparison spec (``negprompt.plan.ComparisonSpec``) that makes it show less than the user
    expects, in plain words."""
    first_row = [c for c in spec.cells if c.row == spec.cells[0].row]
    negatives = [c.negative for c in first_row if c.kind == "negative" and c.negative]
    positives = list(dict.fromkeys(c.positive for c in spec.cells))
    plain = [c for c in spec.cells if spec.reading_of(c) == "plain"]
    read_plain = {c.negative for c in plain} | {c.positive for c in plain}
    warnings = comparison_warnings(tokenizer, [p for p in positives if p in read_plain],
                                   [n for n in dict.fromkeys(negatives) if n in read_plain],
                                   max(spec.scale_of(c) for c in spec.cells),  # "off" only if off in every cell
                                   distilled, numbers=list(dict.fromkeys(negatives)))
    from negprompt.verdicts import a1111_syntax

    for i, negative in enumerate(dict.fromkeys(negatives), start=1):
        pieces = a1111_syntax(negative) if negative in read_plain else []
        if pieces:
            warnings.append(f"Negative prompt {i} is written in A1111 syntax ({pieces[0]}); the plain reading passes "
                            "it to the text encoder as characters. The a1111 reading reads it as A1111 does.")
    seen: dict[tuple, int] = {}
    for cell in first_row:
        key = (cell.positive, cell.negative, cell.guidance, tuple(cell.window), spec.reading_of(cell),
               spec.scale_of(cell))
        if key in seen and cell.kind == "negative":
            warnings.append(f"Negative prompt {negatives.index(cell.negative) + 1} ('{cell.negative}') is listed "
                            "twice; both cells are the same image.")
        seen[key] = 1
    return warnings


def comparison_warnings(
    tokenizer, prompt: str | list[str], negatives: list[str], guidance_scale: float, distilled: bool,
    numbers: list[str] | None = None,
) -> list[str]:
    """Everything about these inputs that makes a comparison show less than the user expects, in plain words.
    ``numbers``: the list the negatives are numbered from in the messages (default ``negatives``)."""
    warnings = []
    if distilled:
        warnings.append(
            "This model is guidance-distilled (it takes the guidance scale as an input and runs no unconditional "
            "branch), so negative prompts have no effect: every cell equals the baseline."
        )
    elif guidance_scale <= 1:
        warnings.append(
            f"Guidance scale {guidance_scale:g} is at most 1, so classifier-free guidance is off and negative prompts "
            "have no effect: every cell equals the baseline. Use a scale above 1 (5 to 9 is usual)."
        )
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    numbers = negatives if numbers is None else numbers
    for i, text in enumerate(prompts):
        count = count_tokens(tokenizer, text)
        if not count.fits:
            which = "The prompt" if i == 0 else f"The positive prompt '{text[:40]}'"
            warnings.append(f"{which} has {count.used} tokens; the text encoder reads {count.limit}, "
                            f"so this was cut: '{count.truncated}'.")
    for negative in negatives:
        i = numbers.index(negative) + 1
        count = count_tokens(tokenizer, negative)
        if not count.fits:
            warnings.append(f"Negative prompt {i} has {count.used} tokens; the text encoder reads {count.limit}, "
                            f"so this was cut: '{count.truncated}'.")
        if prompts and _same_text(negative, prompts[0]):
            warnings.append(f"Negative prompt {i} equals the positive prompt: the two branches cancel and the cell "
                            "shows the unguided image (as at guidance scale 1).")
    return warnings
