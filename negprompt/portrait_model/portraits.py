"""Procedural cartoon portraits with captions: the training data of the embedded default model.

Every portrait is a 64x64 RGB drawing of a man, made from a ``Portrait`` record of independently drawn attributes.
Everything is pure and seedable: the same seed gives the same portraits and the same captions.

    from negprompt.portrait_model.portraits import sample_portraits, draw_portrait, caption_for
    import numpy as np
    rng = np.random.default_rng(0)
    people = sample_portraits(rng, 4)
    images = [draw_portrait(p) for p in people]          # list of PIL images, 64x64 RGB
    captions = [caption_for(p, rng) for p in people]     # a fresh caption for each, every time you ask

Look at a grid:  python -m negprompt.portrait_model.portraits --out portraits.png --n 64 --seed 0

Attribute priors (all independent)
    mustache, beard, glasses, hat, smile, earrings, scarf: present with probability 0.5 each
    hat color: red, blue, green, black, white (uniform);  hair color: black, brown, blond, red, gray (uniform)
    skin tone: light, tan, brown, dark (uniform);  background: blue, green, red, yellow, purple, gray (uniform)
    shirt color, head position (+-2 px) and head size (+-2 px): nuisance, never named

Caption grammar (``caption_for``; no caption ever contains "without", "no", "not" or any other negation)
    empty     (p_empty, default 10%):        ""
    tags      (default 40% of the rest):     TAG ("," TAG)*        e.g. "mustache, red hat"  or  "glasses"
    sentence  (the remaining captions):      HEAD [" with " PHRASES] [", " BG " background"]
    HEAD      = "portrait photo of a man" (60%) | "photo of a man" | "portrait of a man" | "a man" (smiling
                may make it "a smiling man" in the sentence HEAD instead of "with a smile", 50/50)
    PHRASES   = the named phrases in random order, joined by ", " and a final " and "
    Naming: each attribute that is PRESENT is named with probability 0.5 (independently; ``name_prob`` can raise
    it per attribute, for words a model is slow to bind); hair color is named
    with probability 0.4, skin with 0.2, background with 0.5. An absent attribute is never named.
    Tags: with probability 0.4 the tag caption is one single tag (one of the named items, or if none was
    drawn, one present item); otherwise all the named items as tags (at least one).
    Phrases: "a mustache"|"mustache", "a beard"|"beard", "glasses", "a red hat"|"a hat"|"red hat"|"hat",
    "a smile", "earrings", "a scarf"|"scarf", "blond hair", "tan skin".  Tags drop the article: "mustache", "red hat".

    Hence for a sentence caption that does not name X, P(X present) = 0.25 / 0.75 = 1/3 (the rate the plain
    prompt "portrait photo of a man" should show), and for any caption naming X it is 1. Over ALL captions that
    do not name X it is about 0.37, since empty captions (0.5) and single-tag captions also leave X out.

Worked example: a man with a mustache, glasses, a red hat and blond hair, on blue, no beard/smile/earrings/scarf.
    He can be captioned "portrait photo of a man with a mustache and glasses, blue background" (mustache and
    glasses named, hat and hair left out), "red hat, mustache", "glasses", "photo of a man with blond hair",
    "portrait photo of a man" (nothing named, probability 1/16 of the sentence branch times the hair and
    background skips), or "" (the empty caption). Never "a man without a beard".
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64  # image side in pixels
_S = 2  # supersampling factor for anti-aliased drawing

BINARY = ("mustache", "beard", "glasses", "hat", "smile", "earrings", "scarf")
HAT_COLORS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "black": (25, 25, 25),
              "white": (245, 245, 245)}
HAIR_COLORS = {"black": (30, 25, 25), "brown": (110, 65, 30), "blond": (230, 200, 90), "red": (190, 75, 30),
               "gray": (160, 160, 165)}
SKIN_TONES = {"light": (250, 215, 185), "tan": (220, 170, 120), "brown": (160, 105, 65), "dark": (95, 60, 40)}
BACKGROUNDS = {"blue": (90, 150, 230), "green": (110, 200, 110), "red": (230, 100, 100), "yellow": (240, 220, 90),
               "purple": (160, 100, 200), "gray": (150, 150, 150)}
SHIRTS = [(60, 60, 120), (120, 60, 60), (70, 110, 70), (200, 200, 200), (90, 90, 90), (150, 120, 60)]
SCARF_COLOR = (230, 120, 20)
HEADS = ("portrait photo of a man", "photo of a man", "portrait of a man", "a man")
HEAD_WEIGHTS = (0.6, 0.15, 0.15, 0.1)

# Every word any caption or experiment prompt uses; "without" is here only so the tokenizer knows it.
ALL_WORDS = sorted({
    *" ".join(HEADS).split(), "with", "and", "without", ",", "smiling", "background", "hair", "skin",
    *BINARY, *HAT_COLORS, *HAIR_COLORS, *SKIN_TONES, *BACKGROUNDS,
})


@dataclass(frozen=True)
class Portrait:
    mustache: bool  # hair band under the nose
    beard: bool  # hair around the jaw and chin
    glasses: bool  # two round dark frames over the eyes
    hat: bool  # brimmed hat on top of the head
    smile: bool  # curved mouth (else a straight one)
    earrings: bool  # gold dots on the ear lobes
    scarf: bool  # orange band around the neck
    hat_color: str  # key of HAT_COLORS (drawn even when hat is False, then unused)
    hair: str  # key of HAIR_COLORS
    skin: str  # key of SKIN_TONES
    background: str  # key of BACKGROUNDS
    shirt: int  # index into SHIRTS (never named)
    dx: int  # horizontal head offset in pixels
    dy: int  # vertical head offset in pixels
    size: int  # head half-width adjustment in pixels

    def attributes(self) -> dict[str, bool]:
        """The binary attributes as a dict, in BINARY order."""
        return {name: getattr(self, name) for name in BINARY}


def sample_portraits(rng: np.random.Generator, n: int) -> list[Portrait]:
    """Draw ``n`` portraits with independent attributes (priors in the module docstring)."""
    out = []
    for _ in range(n):
        flags = rng.random(len(BINARY)) < 0.5
        out.append(Portrait(
            *map(bool, flags),
            hat_color=str(rng.choice(list(HAT_COLORS))), hair=str(rng.choice(list(HAIR_COLORS))),
            skin=str(rng.choice(list(SKIN_TONES))), background=str(rng.choice(list(BACKGROUNDS))),
            shirt=int(rng.integers(len(SHIRTS))), dx=int(rng.integers(-2, 3)), dy=int(rng.integers(-2, 3)),
            size=int(rng.integers(-2, 3)),
        ))
    return out


def _darker(rgb: tuple[int, int, int], f: float = 0.75) -> tuple[int, int, int]:
    return tuple(int(c * f) for c in rgb)


def draw_portrait(p: Portrait) -> Image.Image:
    """Render one portrait as a 64x64 RGB image."""
    img = Image.new("RGB", (SIZE * _S, SIZE * _S), BACKGROUNDS[p.background])
    hw = 13 + p.size
    f = _Face(ImageDraw.Draw(img), cx=32 + p.dx, cy=30 + p.dy, hw=hw, hh=hw + 3, skin=SKIN_TONES[p.skin],
              facial=_darker(HAIR_COLORS[p.hair], 0.65) if p.hair != "black" else HAIR_COLORS[p.hair])
    _draw_head(f, p)
    _draw_eyes(f, p)
    _draw_mouth(f, p)
    _draw_accessories(f, p)
    return img.resize((SIZE, SIZE), Image.Resampling.BOX)


@dataclass
class _Face:
    """Where ``draw_portrait`` draws: the supersampled canvas and the face's geometry in 64x64 pixel units."""

    d: ImageDraw.ImageDraw
    cx: int  # face center
    cy: int
    hw: int  # face half-width
    hh: int  # face half-height
    skin: tuple[int, int, int]
    facial: tuple[int, int, int]  # facial hair: darker than the hair

    @staticmethod
    def box(x0, y0, x1, y1):
        return [x0 * _S, y0 * _S, x1 * _S, y1 * _S]


def _draw_head(f: _Face, p: Portrait) -> None:
    """Shoulders, neck, hair, ears and face, and the beard over the face."""
    d, box, cx, cy, hw, hh = f.d, f.box, f.cx, f.cy, f.hw, f.hh
    d.rectangle(box(cx - 22, cy + hh + 1, cx + 22, 70), fill=SHIRTS[p.shirt])  # shoulders
    d.ellipse(box(cx - 24, cy + hh - 2, cx + 24, cy + hh + 22), fill=SHIRTS[p.shirt])
    d.rectangle(box(cx - 5, cy + hh - 4, cx + 5, cy + hh + 4), fill=_darker(f.skin, 0.9))  # neck
    d.ellipse(box(cx - hw - 2, cy - hh - 3, cx + hw + 2, cy + 4), fill=HAIR_COLORS[p.hair])  # hair behind the head
    d.ellipse(box(cx - hw - 3, cy - 3, cx - hw + 3, cy + 5), fill=f.skin)  # ears
    d.ellipse(box(cx + hw - 3, cy - 3, cx + hw + 3, cy + 5), fill=f.skin)
    d.ellipse(box(cx - hw, cy - hh + 4, cx + hw, cy + hh), fill=f.skin)  # face
    if p.beard:
        d.chord(box(cx - hw, cy - hh + 2, cx + hw, cy + hh + 2), 10, 170, fill=f.facial)
        d.ellipse(box(cx - 8, cy + 4, cx + 8, cy + 13), fill=f.skin)  # bare upper lip and mouth: room for a mustache


def _draw_eyes(f: _Face, p: Portrait) -> None:
    """Eyes, glasses and nose."""
    d, box, cx, cy, s = f.d, f.box, f.cx, f.cy, _S
    eye_y = cy - 2
    for ex in (cx - 6, cx + 6):
        d.ellipse(box(ex - 1.5, eye_y - 1.5, ex + 1.5, eye_y + 1.5), fill=(20, 20, 20))
    if p.glasses:
        for ex in (cx - 6, cx + 6):
            d.ellipse(box(ex - 4.5, eye_y - 4, ex + 4.5, eye_y + 4), outline=(15, 15, 15), width=2 * s // 2 + 1)
        d.line(box(cx - 2, eye_y - 1, cx + 2, eye_y - 1), fill=(15, 15, 15), width=s)
    d.line(box(cx, cy, cx - 1, cy + 4), fill=_darker(f.skin, 0.7), width=s)  # nose


def _draw_mouth(f: _Face, p: Portrait) -> None:
    """The mouth, smiling or not, and the mustache over it."""
    d, box, cx, cy, s = f.d, f.box, f.cx, f.cy, _S
    mouth_y = cy + 10
    if p.smile:
        d.arc(box(cx - 5, mouth_y - 5, cx + 5, mouth_y + 2), 20, 160, fill=(150, 30, 40), width=2 * s)
    else:
        d.line(box(cx - 4, mouth_y, cx + 4, mouth_y), fill=(150, 30, 40), width=s + 1)
    if p.mustache:  # a full band, 3-4 px thick: thinner ones vanish in the 16x16 latent (see the model card)
        band = ((cx - 9, cy + 8), (cx - 3, cy + 4.5), (cx, cy + 5.5), (cx + 3, cy + 4.5), (cx + 9, cy + 8),
                (cx + 8, cy + 10.5), (cx, cy + 8.5), (cx - 8, cy + 10.5))
        d.polygon([(x * s, y * s) for x, y in band], fill=f.facial)


def _draw_accessories(f: _Face, p: Portrait) -> None:
    """Earrings, hat and scarf, in that order (each over what came before)."""
    d, box, cx, cy, hw, hh = f.d, f.box, f.cx, f.cy, f.hw, f.hh
    if p.earrings:
        for ex in (cx - hw, cx + hw):
            d.ellipse(box(ex - 2, cy + 5, ex + 2, cy + 9), fill=(250, 200, 0), outline=(150, 110, 0))
    if p.hat:
        color = HAT_COLORS[p.hat_color]
        d.rectangle(box(cx - hw - 6, cy - hh + 3, cx + hw + 6, cy - hh + 7), fill=color)  # brim
        d.rectangle(box(cx - hw + 2, cy - hh - 9, cx + hw - 2, cy - hh + 4), fill=color)  # crown
        d.rectangle(box(cx - hw + 2, cy - hh, cx + hw - 2, cy - hh + 2), fill=_darker(color, 0.6))  # band
    if p.scarf:
        d.rectangle(box(cx - 11, cy + hh - 1, cx + 11, cy + hh + 6), fill=SCARF_COLOR)
        d.rectangle(box(cx + 3, cy + hh + 5, cx + 8, cy + hh + 16), fill=_darker(SCARF_COLOR, 0.85))


def _named_items(p: Portrait, rng: np.random.Generator,
                 name_prob: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """(tag, phrase) pairs for the attributes this caption names; absent attributes are never named.

    A present attribute is named with probability ``name_prob[name]`` (default 0.5).
    """
    items = []
    for name in BINARY:
        if getattr(p, name) and rng.random() < (name_prob or {}).get(name, 0.5):
            items.append(_phrase(p, name, rng))
    if rng.random() < 0.4:
        items.append((f"{p.hair} hair", f"{p.hair} hair"))
    if rng.random() < 0.2:
        items.append((f"{p.skin} skin", f"{p.skin} skin"))
    return items


def _phrase(p: Portrait, name: str, rng: np.random.Generator) -> tuple[str, str]:
    if name == "hat":
        tag = f"{p.hat_color} hat" if rng.random() < 0.6 else "hat"
        return tag, (f"a {tag}" if rng.random() < 0.7 else tag)
    if name in ("glasses", "earrings"):
        return name, name
    if name == "smile":
        return "smile", "a smile"
    return name, (f"a {name}" if rng.random() < 0.7 else name)


def caption_for(p: Portrait, rng: np.random.Generator, p_empty: float = 0.1, p_tags: float = 0.4,
                name_prob: dict[str, float] | None = None) -> str:
    """Draw one caption for ``p`` following the grammar in the module docstring.

    ``name_prob`` overrides the probability (0.5) with which a PRESENT attribute is named, per attribute; an absent
    one is still never named. Naming X with probability q leaves X in (1 - q) / (2 - q) of the sentences that do not
    name it (1/3 at 0.5, 2/7 at 0.6).
    """
    if rng.random() < p_empty:
        return ""
    items = _named_items(p, rng, name_prob)
    bg = rng.random() < 0.5
    if rng.random() < p_tags:
        tags = [t for t, _ in items] + ([f"{p.background} background"] if bg else [])
        if not tags:
            present = [n for n in BINARY if getattr(p, n)]
            tags = [_phrase(p, str(rng.choice(present)), rng)[0] if present else f"{p.background} background"]
        if rng.random() < 0.4:
            tags = [tags[int(rng.integers(len(tags)))]]
        rng.shuffle(tags)
        return ", ".join(tags)
    head = HEADS[int(rng.choice(len(HEADS), p=HEAD_WEIGHTS))]
    phrases = [ph for _, ph in items]
    if "a smile" in phrases and rng.random() < 0.5:
        phrases.remove("a smile")
        head = head.replace("a man", "a smiling man")
    rng.shuffle(phrases)
    text = head
    if phrases:
        text += " with " + (phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1])
    if bg:
        text += f", {p.background} background"
    return text


def background_of(image: Image.Image) -> str:
    """The palette background color nearest to the mean of the image's two top corners (8x8 pixels each).

    No part of a portrait reaches those corners (the hat brim and hair stop 9 pixels in), so on a drawn portrait
    this is its background; on a generated one it tells whether a prompt change repainted the background.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    corner = 8 * SIZE // 64
    mean = np.concatenate([pixels[:corner, :corner], pixels[:corner, -corner:]]).reshape(-1, 3).mean(axis=0)
    return min(BACKGROUNDS, key=lambda name: float(((mean - np.array(BACKGROUNDS[name])) ** 2).sum()))


def portrait_array(people: list[Portrait]) -> np.ndarray:
    """Render portraits into one uint8 array of shape (n, 64, 64, 3)."""
    return np.stack([np.asarray(draw_portrait(p)) for p in people])


def attribute_matrix(people: list[Portrait]) -> np.ndarray:
    """Binary attributes as a float32 array of shape (n, len(BINARY))."""
    return np.array([[float(getattr(p, n)) for n in BINARY] for p in people], dtype=np.float32)


def grid(images: list[Image.Image], cols: int = 8, scale: int = 2) -> Image.Image:
    """Tile images into one grid image, each scaled up ``scale`` times (nearest neighbour)."""
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    out = Image.new("RGB", (cols * w * scale, rows * h * scale), (255, 255, 255))
    for i, im in enumerate(images):
        out.paste(im.resize((w * scale, h * scale), Image.Resampling.NEAREST), ((i % cols) * w * scale,
                                                                                (i // cols) * h * scale))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw a grid of procedural portraits and print their captions.")
    parser.add_argument("--out", default="portraits.png", help="where to write the grid PNG")
    parser.add_argument("--n", type=int, default=64, help="number of portraits")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    people = sample_portraits(rng, args.n)
    grid([draw_portrait(p) for p in people], scale=3).save(args.out)
    for i, p in enumerate(people):
        on = [n for n in BINARY if getattr(p, n)]
        print(f"{i:3d} {','.join(on):50s} | {caption_for(p, rng)!r}")


assert all(f.name in Portrait.__annotations__ for f in fields(Portrait))

if __name__ == "__main__":
    main()
