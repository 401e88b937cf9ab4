"""How a prompt's text is read: ``plain`` (the characters as they are) or ``a1111`` (AUTOMATIC1111's prompt syntax).

    from negprompt.reading import attention, text_at, chunks
    attention("(worst quality:1.4), [blurry]")   # [("worst quality", 1.4), (", ", 1.0), ("blurry", 0.909...)]
    text_at("[mustache:0.3]", 2, 10)             # "" (prompt editing: "mustache" comes in after step 3 of 10)
    chunks(tokenizer, "(hat:1.3) BREAK glasses")  # two 77-token chunks, each with its per-token weights

Under ``plain`` (what diffusers does, and negprompt's default) a prompt goes to the text encoder as it is: brackets,
colons and numbers are characters, and anything past 75 tokens is cut. Under ``a1111`` it is read as the Stable
Diffusion web UI reads it, following the semantics its wiki documents ("Features": attention/emphasis, prompt
editing, alternating words, BREAK); this module is written from those semantics, not from the web UI's code:

- ``(x)`` multiplies the weight of ``x`` by 1.1, ``[x]`` divides it by 1.1, ``(x:1.3)`` multiplies it by 1.3;
  nesting multiplies (``((x))`` = 1.21). ``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal brackets. An unclosed bracket
  weighs everything after it; an unmatched closing one is text.
- ``BREAK`` (capitals, a word of its own, outside brackets) ends the current 75-token chunk; the rest is padded.
- Prompt editing: ``[a:b:N]`` reads ``a`` up to step N and ``b`` after it, ``[x:N]`` adds ``x`` after step N,
  ``[x::N]`` removes it after step N. N with a decimal point is a fraction of the steps (``0.4`` of 20 steps is
  step 8), without one a step number. As in the web UI the switch comes *after* step ``int(N)``: with 20 steps
  ``[x:0.3]`` adds ``x`` from the 8th step (0-based step 7); it equals the window ``x@0.3`` (``negprompt.plan``)
  whenever 0.3 x steps is not a whole number, and starts one step later when it is.
- Alternation ``[a|b]`` swaps ``a`` and ``b`` every step. Text the editing grammar cannot read stays as it is.
- The text is cut into chunks of 75 tokens (a chunk that would split a term moves the tokens after its last comma,
  if that comma is at most 20 tokens back, to the next chunk); each chunk is wrapped in start and end tokens and
  padded to 77; the chunks are encoded one by one and concatenated along the token axis.

The weights multiply the encoder's output at each token, then every chunk is scaled back to its unweighted mean
(``negprompt.weighting``), as the web UI does by default and as diffusers' long-prompt-weighting community pipeline
shows. Textual-inversion embeddings and LoRA tags are not handled here.

Everything here is pure: text (and a tokenizer's ids) in, plain data out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

READINGS = ("plain", "a1111")  # how a comparison reads its prompts
EMPHASIS = 1.1  # what one pair of round brackets multiplies a weight by; square brackets divide by it
CHUNK = 75  # tokens of text per chunk (CLIP reads 77: a start token, 75, an end token)
COMMA_BACKTRACK = 20  # a full chunk moves the tokens after its last comma (this close) to the next chunk
BREAK = "BREAK"


# ---------------------------------------------------------------------------------------------------------------
# Prompt editing: [a:b:N], [x:N], [x::N], [a|b]


@dataclass(frozen=True)
class _Scheduled:
    before: tuple  # nodes read up to step ``when``
    after: tuple  # nodes read after it
    number: str  # N as written


@dataclass(frozen=True)
class _Alternate:
    options: tuple  # one tuple of nodes per option


@dataclass(frozen=True)
class _Emphasis:
    open: str  # "(" or "["
    parts: tuple  # tuples of nodes, joined by ":" (a weight "(x:1.3)" is two parts)
    close: str


class _Fail(Exception):
    pass


_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")


def _plain(text: str, i: int) -> int:
    """The end of the run of ordinary characters (a backslash keeps the next character) starting at ``i``."""
    while i < len(text) and text[i] not in "[]():|":
        i += 2 if text[i] == "\\" else 1
    return min(i, len(text))


def _sequence(text: str, i: int, top: bool) -> tuple[tuple, int]:
    """Nodes from ``i`` up to a character that closes or separates a bracket (inside one) or the end (at the top,
    where a bracket that reads as nothing is kept as a character)."""
    nodes: list = []
    while i < len(text):
        ch = text[i]
        if ch in "([":
            try:
                node, j = _bracket(text, i)
            except _Fail:
                if not top:
                    raise
                node, j = ch, i + 1
            nodes.append(node)
            i = j
        elif ch in "]):|":
            if not top:
                break
            if ch == "|":
                raise _Fail  # the grammar has no place for "|" outside brackets
            nodes.append(ch)
            i += 1
        else:
            j = _plain(text, i)
            nodes.append(text[i:j])
            i = j
    return tuple(nodes), i


def _bracket(text: str, i: int):
    """The bracket opening at ``i`` as a node, and the index after it; ``_Fail`` when the grammar reads none."""
    first, j = _sequence(text, i + 1, top=False)
    end = text[j] if j < len(text) else ""
    if text[i] == "(":
        return _round(text, first, j, end)
    if end == "]":
        return _Emphasis("[", (first,), "]"), j + 1
    if end == "|":
        return _alternation(text, first, j)
    if end == ":":
        return _scheduled(text, first, j)
    raise _Fail


def _round(text: str, first: tuple, j: int, end: str):
    """``(x)`` or ``(x:w)``, ``first`` (x) read up to ``j``, where the character ``end`` stands."""
    if end == ")":
        return _Emphasis("(", (first,), ")"), j + 1
    if end == ":":
        second, k = _sequence(text, j + 1, top=False)
        if k < len(text) and text[k] == ")":
            return _Emphasis("(", (first, second), ")"), k + 1
    raise _Fail


def _alternation(text: str, first: tuple, j: int):
    """``[a|b|...]``, ``first`` (a) read up to the ``|`` at ``j``."""
    options = [first]
    while j < len(text) and text[j] == "|":
        option, j = _sequence(text, j + 1, top=False)
        options.append(option)
    if j < len(text) and text[j] == "]":
        return _Alternate(tuple(options)), j + 1
    raise _Fail


def _scheduled(text: str, first: tuple, j: int):
    """``[x:N]`` or ``[a:b:N]``, ``first`` (x or a) read up to the ``:`` at ``j``."""
    closing = _closing_number(text, j + 1)
    if closing:  # [x:N]
        return _Scheduled((), first, closing[0]), closing[1]
    second, k = _sequence(text, j + 1, top=False)
    closing = _closing_number(text, k + 1) if k < len(text) and text[k] == ":" else None
    if closing:  # [a:b:N]
        return _Scheduled(first, second, closing[0]), closing[1]
    raise _Fail


def _closing_number(text: str, start: int) -> tuple[str, int] | None:
    """The number N written from ``start`` when a ``]`` follows it, and the index after that ``]``; else None."""
    number = _NUMBER.match(text, start)
    if number and number.end() < len(text) and text[number.end()] == "]":
        return number.group(1), number.end() + 1
    return None


@lru_cache(maxsize=4096)
def _tree(text: str) -> tuple:
    try:
        return _sequence(text, 0, top=True)[0]
    except _Fail:
        return (text,)  # the web UI reads a prompt its editing grammar rejects as it is


def _when(number: str, steps: int) -> int:
    """The step after which a schedule switches: a number with a decimal point is a fraction of the steps."""
    value = float(number) * steps if "." in number else float(number)
    return min(steps, int(value))


def _resolve(nodes: tuple, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            out.append(_resolve(node.before if step <= _when(node.number, steps) else node.after, step, steps))
        elif isinstance(node, _Alternate):
            out.append(_resolve(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(node.open + ":".join(_resolve(p, step, steps) for p in node.parts) + node.close)
    return "".join(out)


def text_at(text: str, step: int, steps: int) -> str:
    """The text ``text`` reads at ``step`` (0-based) of ``steps`` once its prompt editing is resolved; what is
    left (weights, BREAK) is read by ``attention``. The web UI's step counter makes steps 0 and 1 read alike."""
    return _resolve(_tree(text), max(step, 1), steps)


def schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """``[(last step, text read until then), ...]``: the distinct texts ``text`` reads over ``steps`` steps, each
    with the last (0-based) step that reads it, in order; one entry when it holds no prompt editing."""
    out: list[tuple[int, str]] = []
    for step in range(steps):
        now = text_at(text, step, steps)
        if out and out[-1][1] == now:
            out[-1] = (step, now)
        else:
            out.append((step, now))
    return out


def edits(text: str) -> bool:
    """Whether ``text`` holds prompt editing or alternation that the a1111 reading resolves."""
    return any(not isinstance(n, str) for n in _flatten(_tree(text)) if not isinstance(n, _Emphasis))


def _flatten(nodes: tuple):
    for node in nodes:
        yield node
        if isinstance(node, _Scheduled):
            yield from _flatten(node.before)
            yield from _flatten(node.after)
        elif isinstance(node, (_Alternate, _Emphasis)):
            for part in (node.options if isinstance(node, _Alternate) else node.parts):
                yield from _flatten(part)


# ---------------------------------------------------------------------------------------------------------------
# Attention: (x), [x], (x:1.3), BREAK


_ATTENTION = re.compile(r"\\[\\()\[\]]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def attention(text: str) -> list[tuple[str, float | None]]:
    """``text`` (prompt editing resolved) as ``(piece, weight)`` pairs in order, neighbours of equal weight merged;
    a ``(BREAK, None)`` pair marks a chunk break. ``"a (b:1.3) [c]"`` -> ``[("a ", 1.0), ("b", 1.3), (" ", 1.0),
    ("c", 1/1.1)]``; an empty text is ``[("", 1.0)]``."""
    weighing = _Weighing()
    for match in _ATTENTION.finditer(text):
        weighing.read(match.group(0), match.group(1))
    for start in weighing.round_open:  # unclosed brackets weigh everything after them
        weighing.scale(start, EMPHASIS)
    for start in weighing.square_open:
        weighing.scale(start, 1 / EMPHASIS)
    merged: list[tuple[str, float | None]] = []
    for piece_text, weight, is_break in weighing.pieces:
        if is_break:
            merged.append((BREAK, None))
        elif merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece_text, weight)
        elif piece_text:
            merged.append((piece_text, weight))
    return merged or [("", 1.0)]


class _Weighing:
    """``attention``'s reading so far: the pieces of text with their weights, and where the brackets still open
    began (an index into the pieces)."""

    def __init__(self) -> None:
        self.pieces: list[list] = []  # [text, weight, is_break]
        self.round_open: list[int] = []
        self.square_open: list[int] = []

    def scale(self, start: int, factor: float) -> None:
        """Multiply the weight of every piece from ``start`` on (BREAKs have none) by ``factor``."""
        for piece in self.pieces[start:]:
            if not piece[2]:
                piece[1] *= factor

    def read(self, token: str, weight: str | None) -> None:
        """One token of ``_ATTENTION``; ``weight``: the number of a ``:N)`` token."""
        if token.startswith("\\"):
            self.pieces.append([token[1:], 1.0, False])
        elif token == "(":
            self.round_open.append(len(self.pieces))
        elif token == "[":
            self.square_open.append(len(self.pieces))
        elif weight is not None and self.round_open:
            try:
                self.scale(self.round_open.pop(), float(weight))
            except ValueError:  # "1.2.3" is no number: the web UI fails; read the characters
                self.pieces.append([token, 1.0, False])
        elif token == ")" and self.round_open:
            self.scale(self.round_open.pop(), EMPHASIS)
        elif token == "]" and self.square_open:
            self.scale(self.square_open.pop(), 1 / EMPHASIS)
        else:
            self._text(token)

    def _text(self, token: str) -> None:
        """Plain text; outside brackets a BREAK in it ends a chunk."""
        inside = self.round_open or self.square_open
        for k, part in enumerate([token] if inside else _BREAK.split(token)):
            if k:
                self.pieces.append([BREAK, 1.0, True])
            self.pieces.append([part, 1.0, False])


def weighted(text: str) -> bool:
    """Whether ``text`` (prompt editing resolved) holds a weight other than 1 or a BREAK."""
    return any(w != 1.0 for _, w in attention(text))


# ---------------------------------------------------------------------------------------------------------------
# 75-token chunks


@dataclass(frozen=True)
class Chunk:
    """One chunk of a prompt as the text encoder reads it: 77 token ids (start, 75 of text or padding, end, with
    the tokenizer's padding after the end token) and one weight per token (1 for the start, end and padding)."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    used: int  # tokens of text in it (the rest is padding)


def chunks(tokenizer, text: str, convert=None) -> list[Chunk]:
    """``text`` (prompt editing resolved) read into chunks of ``CHUNK`` tokens, at least one. ``convert`` (a
    textual-inversion pipeline's ``maybe_convert_prompt``) rewrites each piece before it is tokenized."""
    comma = tokenizer.get_vocab().get(",</w>")
    out: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        out.append(_wrap(tokenizer, ids, weights))
        ids, weights, last_comma = [], [], -1

    for piece, weight in attention(text):
        if weight is None:
            close()
            continue
        if convert is not None:
            piece = convert(piece, tokenizer)
        for token in tokenizer(piece, add_special_tokens=False, truncation=False).input_ids:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                keep = last_comma + 1
                moved_ids, moved_weights = ids[keep:], weights[keep:]
                ids, weights = ids[:keep], weights[:keep]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == CHUNK:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not out:
        close()
    return out


def _wrap(tokenizer, ids: list[int], weights: list[float]) -> Chunk:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    filling = CHUNK - len(ids)
    return Chunk(ids=(tokenizer.bos_token_id, *ids, tokenizer.eos_token_id, *[pad] * filling),
                 weights=(1.0, *weights, 1.0, *[1.0] * filling), used=len(ids))


def empty_chunk(tokenizer) -> Chunk:
    """The chunk a shorter prompt is padded with (what the empty prompt reads as)."""
    return _wrap(tokenizer, [], [])


def token_positions(tokenizer, text: str | None) -> list[int]:
    """Positions of ``text``'s tokens of text (no start, end or padding) in its concatenated chunks."""
    if not text:
        return []
    width = CHUNK + 2
    return [k * width + 1 + i for k, c in enumerate(chunks(tokenizer, text)) for i in range(c.used)]


# ---------------------------------------------------------------------------------------------------------------
# Terms of a negative, as the a1111 reading sees them


def terms(negative: str) -> list[str]:
    """The terms of ``negative`` under the a1111 reading, each written so that it reads alone as it did in the
    whole: split at commas and at BREAK outside brackets; a weighted group holding commas, ``(bad hands, extra
    fingers:1.2)``, becomes one term per part, each with the group's weight: ``(bad hands:1.2)``,
    ``(extra fingers:1.2)``. A term with prompt editing stays whole."""
    from negprompt.explore import split_terms

    out: list[str] = []
    for part in _BREAK.split(negative):
        for term in split_terms(part):
            if "," in term and not edits(term):
                out += [t for t in (_write(p, w) for p, w in _split_pieces(attention(term))) if t]
            else:
                out.append(term)
    return out


def _split_pieces(pieces: list[tuple[str, float | None]]) -> list[tuple[str, float]]:
    """Weighted pieces cut at their commas, one (text, weight) per term (a term of mixed weights keeps its first
    piece's weight only when all agree; otherwise the parts are written one by one)."""
    out: list[list[tuple[str, float]]] = [[]]
    for piece, weight in pieces:
        if weight is None:
            out.append([])
            continue
        for k, part in enumerate(piece.split(",")):
            if k:
                out.append([])
            if part.strip():
                out[-1].append((part.strip(), weight))
    return [(" ".join(p for p, _ in term), term[0][1]) if len({w for _, w in term}) == 1
            else (" ".join(_write(p, w) for p, w in term), 1.0) for term in out if term]


def _write(text: str, weight: float) -> str:
    """``text`` with ``weight``, as the a1111 reading reads it back."""
    if weight == 1.0:
        return text
    return f"({text}:{round(weight, 4):g})"


def describe(term: str) -> str:
    """A term in words for a ranking under the a1111 reading: ``"(worst quality:1.4)"`` -> ``"worst quality
    (weight 1.4)"``; a term with prompt editing is shown as written."""
    if edits(term):
        return term
    pieces = [(p.strip(), w) for p, w in attention(term) if w is not None and p.strip()]
    weights = {round(w, 4) for _, w in pieces}
    text = " ".join(p for p, _ in pieces)
    if len(weights) == 1 and weights != {1.0}:
        return f"{text} (weight {weights.pop():g})"
    return text if weights <= {1.0} else term
