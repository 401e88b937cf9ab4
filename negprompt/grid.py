"""The labeled grid: a header with the settings, one row per seed, each cell captioned with its negative prompt.

Captions wrap to the cell width and the caption band grows to fit the longest one, so any prompt stays readable.
Small images (the embedded model makes 64x64) are enlarged with nearest-neighbour scaling to at least
``MIN_CELL`` pixels, so the grid is legible on a projector without blurring what the model drew.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

MIN_CELL = 256  # smallest drawn cell side, in pixels
PAD = 12
BACKGROUND = (250, 250, 248)
INK = (20, 20, 20)
MUTED = (95, 95, 95)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def wrap(text: str, font, width: int) -> list[str]:
    """Split ``text`` into lines no wider than ``width`` pixels; words longer than a line are broken. Linear in the
    length of the text (a 10,000-character word takes milliseconds, not seconds)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            *full, line = _break_word(word, font, width)
            lines.extend(full)
        lines.append(line)
    return lines


def _break_word(word: str, font, width: int) -> list[str]:
    """``word`` cut into pieces no wider than ``width`` (at least one character each), in one pass."""
    widths: dict[str, float] = {}

    def length(text: str) -> float:
        return sum(widths.setdefault(ch, font.getlength(ch)) for ch in text)

    pieces, start, used = [], 0, 0.0
    for i, ch in enumerate(word):
        if used + length(ch) > width and i > start:
            end = i
            while end - start > 1 and font.getlength(word[start:end]) > width:  # kerning: rarely a character
                end -= 1
            pieces.append(word[start:end])
            start, used = end, length(word[end:i])
        used += length(ch)
    pieces.append(word[start:])
    return pieces


def _text_block(draw, xy, lines, font, fill, line_height):
    x, y = xy
    for line in lines:
        draw.text((x, y), line, font=font, fill=fill)
        y += line_height


def draw_grid(title: str, details: str, rows: list[list[tuple[Image.Image, str, str]]],
              row_titles: list[str]) -> Image.Image:
    """Draw a grid. ``rows``: per row, (image, caption, detail) per cell; ``title`` and ``details`` go on top;
    ``row_titles`` (one per row, or empty) on the left."""
    first = rows[0][0][0]
    scale = max(1, math.ceil(MIN_CELL / max(first.width, first.height)))
    cell_w, cell_h = first.width * scale, first.height * scale
    font, small, big = _font(max(15, cell_w // 16)), _font(max(13, cell_w // 20)), _font(max(20, cell_w // 11))
    line_h, small_h, big_h = (int(f.size * 1.3) for f in (font, small, big))

    columns = max(len(r) for r in rows)
    left = int(max((small.getlength(t) for t in row_titles), default=0)) + PAD if row_titles else 0
    width = left + PAD + columns * (cell_w + PAD)
    title_lines = wrap(title, big, width - 2 * PAD)
    detail_lines = wrap(details, small, width - 2 * PAD) if details else []
    header_h = PAD + len(title_lines) * big_h + len(detail_lines) * small_h + PAD
    captions = [[wrap(caption, font, cell_w) for _, caption, _ in r] for r in rows]
    caption_h = max(len(lines) for r in captions for lines in r) * line_h + small_h + PAD // 2
    height = header_h + len(rows) * (cell_h + caption_h + PAD) + PAD

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _text_block(draw, (PAD, PAD), title_lines, big, INK, big_h)
    _text_block(draw, (PAD, PAD + len(title_lines) * big_h), detail_lines, small, MUTED, small_h)
    y = header_h
    for r, row in enumerate(rows):
        if row_titles:
            draw.text((PAD, y + cell_h // 2 - small_h // 2), row_titles[r], font=small, fill=MUTED)
        for c, (image, _, detail) in enumerate(row):
            x = left + PAD + c * (cell_w + PAD)
            canvas.paste(image.convert("RGB").resize((cell_w, cell_h), Image.NEAREST), (x, y))
            text_y = y + cell_h + PAD // 2
            _text_block(draw, (x, text_y), captions[r][c], font, INK, line_h)
            draw.text((x, text_y + len(captions[r][c]) * line_h), detail, font=small, fill=MUTED)
        y += cell_h + caption_h + PAD
    return canvas
