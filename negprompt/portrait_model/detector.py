"""Attribute detector for the embedded portrait model: what is in a 64x64 portrait, and is it a clean portrait?

A small CNN (about 0.3M parameters, 1.2 MB) with one logit per binary attribute of
``negprompt.portrait_model.portraits`` (mustache, beard, glasses, hat, smile, earrings, scarf) and one "clean"
logit, trained on fresh procedural portraits, clean and corrupted (its trainer, ``training/detector.py`` in the
repository, is not part of the package).

    from negprompt.portrait_model.detector import load_detector, detect
    detector = load_detector()                      # assets/portrait-detector by default
    detect(images, detector)   # -> [{"mustache": 0.98, ..., "clean_score": 0.97, "clean": True}, ...]

An attribute counts as present when its probability is >= 0.5; ``clean`` is ``clean_score >= 0.5``.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from negprompt._assets import asset
from negprompt.difference import pixel_differences
from negprompt.portrait_model.portraits import (
    BACKGROUNDS,
    BINARY,
    HAIR_COLORS,
    HAT_COLORS,
    SHIRTS,
    SKIN_TONES,
    Portrait,
    background_of,
    draw_portrait,
)

DEFAULT_PATH = asset("portrait-detector")  # the repository's assets/, or the installed package's copy
OUTPUTS = (*BINARY, "clean")


@dataclass
class DetectorConfig:
    """The architecture (what loading needs) and the training settings it was trained with (training/detector.py)."""

    channels: tuple[int, ...] = (32, 48, 64, 96)  # conv widths; every conv halves the image size
    hidden: int = 128  # width of the fully connected layer
    steps: int = 2000  # optimizer steps
    batch: int = 64  # images per step
    lr: float = 2e-3  # peak learning rate (cosine decay)
    p_corrupt: float = 0.35  # share of corrupted (not clean) training images
    seed: int = 0  # seeds the portraits and the corruptions


class Detector(nn.Module):
    """Conv stack -> flatten -> MLP -> one logit per entry of OUTPUTS."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        layers, c_in = [], 3
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        side = 64 // 2 ** len(cfg.channels)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in * side * side, cfg.hidden), nn.ReLU(),
                                  nn.Linear(cfg.hidden, len(OUTPUTS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_detector(path: str | Path | None = None) -> Detector:
    """Load the detector saved by ``save`` (default: the shipped one), in eval mode on the CPU."""
    folder = Path(path) if path is not None else DEFAULT_PATH
    meta = json.loads((folder / "config.json").read_text())
    cfg = DetectorConfig(**{**meta["config"], "channels": tuple(meta["config"]["channels"])})
    model = Detector(cfg)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval()


@torch.no_grad()
def detect(images: list[Image.Image], detector: Detector | None = None) -> list[dict[str, float | bool]]:
    """Per image: the probability of each attribute, ``clean_score`` and the decision ``clean``."""
    detector = detector if detector is not None else load_detector()
    arr = np.stack([np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    probs = torch.sigmoid(detector(x)).tolist()
    out = []
    for p in probs:
        record: dict[str, float | bool] = {name: round(v, 4) for name, v in zip(BINARY, p)}
        record["clean_score"] = round(p[-1], 4)
        record["clean"] = p[-1] >= 0.5
        out.append(record)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Collateral: what a negative prompt changed besides the attribute it names, measured against the row's baseline.
# scripts/choose_examples.py chooses the app's examples with these measures and bounds; tests/test_examples.py and
# tests/test_readme_commands.py check them with the same.

SURE = 0.9  # a lesson's attribute: present at probability >= SURE, absent at <= 1 - SURE (decisions with a margin)
MAX_OUTSIDE = 2.0  # mean change outside the attribute's region, percent of full scale
MAX_PATCH = 12.0  # change of the most changed 8x8 patch outside the region, percent of full scale
REGION_MARGIN = 2  # pixels added around where the drawing code can put an attribute
PATCH = 8  # side of the patches of MAX_PATCH
_COLOUR_SETS = ({"hat_color": "red", "hair": "black", "skin": "light", "background": "blue"},
                {"hat_color": "white", "hair": "blond", "skin": "dark", "background": "green"},
                {"hat_color": "black", "hair": "gray", "skin": "tan", "background": "yellow"})


@functools.lru_cache(maxsize=None)
def _drawn(part: str) -> np.ndarray:
    """Where ``draw_portrait`` can draw ``part`` (an attribute of BINARY, or "skin" or "hair" of a portrait with no
    attribute) at any head offset and size: the union, over every geometry and three colour sets, of the pixels that
    drawing it changes (64x64 bool)."""
    bare = Portrait(*([False] * len(BINARY)), hat_color="red", hair="black", skin="light", background="blue",
                    shirt=0, dx=0, dy=0, size=0)
    union = np.zeros((64, 64), bool)
    for dx, dy, size in itertools.product(range(-2, 3), repeat=3):
        for colours in _COLOUR_SETS:
            p = replace(bare, dx=dx, dy=dy, size=size, **colours)
            if part in BINARY:
                on, off = replace(p, **{part: True}), p
            else:  # the same portrait with that part's colour changed shows where the part is visible
                key, table = ("skin", SKIN_TONES) if part == "skin" else ("hair", HAIR_COLORS)
                other = next(name for name in table if name != colours[key])
                on, off = p, replace(p, **{key: other})
            a, b = (np.asarray(draw_portrait(q), np.int16) for q in (on, off))
            union |= np.abs(a - b).max(axis=2) > 0
    return union


def attribute_region(*attributes: str, margin: int = REGION_MARGIN) -> np.ndarray:
    """Where the portraits' drawing code can put any of ``attributes``, grown by ``margin`` pixels (64x64 bool)."""
    region = np.zeros((64, 64), bool)
    for attribute in attributes:
        region |= _drawn(attribute)
    grown = np.pad(region, margin)
    for dy, dx in itertools.product(range(-margin, margin + 1), repeat=2):
        region |= np.roll(grown, (dy, dx), axis=(0, 1))[margin:-margin or None, margin:-margin or None]
    return region


def _colour_of(image: Image.Image, probe: np.ndarray, palette: dict, distractors: list, min_votes: int = 6):
    """The ``palette`` name most pixels of ``probe`` are nearest to (among palette and distractor colours); None
    when fewer than ``min_votes`` pixels vote for any palette name."""
    pixels = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), np.float32)[probe]
    colours = np.array([*palette.values(), *distractors], np.float32)
    nearest = ((pixels[:, None, :] - colours[None]) ** 2).sum(axis=2).argmin(axis=1)
    votes = np.bincount(nearest, minlength=len(colours))[:len(palette)]
    return list(palette)[int(votes.argmax())] if votes.max() >= min_votes else None


def _distractors() -> list:
    facial = [tuple(int(c * 0.65) for c in rgb) for rgb in HAIR_COLORS.values()]
    marks = [(20, 20, 20), (150, 30, 40), (250, 200, 0), (230, 120, 20)]  # eyes and frames, mouth, earrings, scarf
    return [*BACKGROUNDS.values(), *HAT_COLORS.values(), *SHIRTS, *facial, *marks]


def skin_of(image: Image.Image, exclude: np.ndarray | None = None) -> str | None:
    """The skin tone (a key of SKIN_TONES) most face pixels show, outside ``exclude``; None if unreadable."""
    probe = _drawn("skin") & (True if exclude is None else ~exclude)
    return _colour_of(image, probe, SKIN_TONES, [*HAIR_COLORS.values(), *_distractors()])


def hair_of(image: Image.Image, exclude: np.ndarray | None = None) -> str | None:
    """The hair colour (a key of HAIR_COLORS) most hair pixels show, outside ``exclude``; None if unreadable (e.g.
    under a hat)."""
    probe = _drawn("hair") & (True if exclude is None else ~exclude)
    return _colour_of(image, probe, HAIR_COLORS, [*SKIN_TONES.values(), *_distractors()])


def collateral(image: Image.Image, baseline: Image.Image, attributes, record: dict | None = None,
               baseline_record: dict | None = None) -> dict:
    """What ``image`` changed against ``baseline`` outside the region of ``attributes`` (those a negative names):

    ``outside`` the mean change there and ``patch`` that of its most changed 8x8 patch (percent of full scale; a
    patch counts the pixels of it outside the region, if at least half are), ``inside`` the mean change in the
    region (how visible the removal is), ``others`` the other attributes the
    detector reads differently (from the two records, when given), and the background, skin and hair colours of
    both images (``portraits.background_of``, ``skin_of``, ``hair_of``), each as (baseline, image)."""
    attributes = [attributes] if isinstance(attributes, str) else list(attributes)
    region = attribute_region(*attributes)
    difference = pixel_differences(image.resize((64, 64)), baseline.resize((64, 64))) * 100
    outside = ~region
    patches = []
    for top, left in itertools.product(range(0, 64 - PATCH + 1, PATCH // 2), repeat=2):
        keep = outside[top:top + PATCH, left:left + PATCH]
        if keep.sum() >= PATCH * PATCH // 2:
            patches.append(float(difference[top:top + PATCH, left:left + PATCH][keep].mean()))
    out = {"outside": round(float(difference[outside].mean()), 2), "patch": round(max(patches), 2),
           "inside": round(float(difference[region].mean()), 2),
           "background": (background_of(baseline), background_of(image)),
           "skin": (skin_of(baseline, region), skin_of(image, region)),
           "hair": (hair_of(baseline, region), hair_of(image, region))}
    if record is not None and baseline_record is not None:
        out["others"] = [a for a in BINARY if a not in attributes
                         and (record[a] >= 0.5) != (baseline_record[a] >= 0.5)]
    return out


def collateral_faults(measured: dict) -> list[str]:
    """Each collateral bound ``measured`` (from ``collateral``) breaks, said with its numbers; [] when none."""
    faults = []
    if measured["outside"] > MAX_OUTSIDE:
        faults.append(f"changed {measured['outside']:.2f}% outside the attribute's region (at most {MAX_OUTSIDE})")
    if measured["patch"] > MAX_PATCH:
        faults.append(f"changed an 8x8 patch outside the region by {measured['patch']:.2f}% (at most {MAX_PATCH})")
    if measured.get("others"):
        faults.append(f"the detector reads {', '.join(measured['others'])} differently")
    for part in ("background", "skin", "hair"):
        before, after = measured[part]
        if before != after:
            faults.append(f"{part} {before} -> {after}")
    return faults


def removal_faults(record: dict, baseline_record: dict, attribute: str) -> list[str]:
    """Why a cell does not show the lesson "the negative named after ``attribute`` removed it" against its baseline;
    [] when it does: both clean portraits, the baseline showing it at >= SURE and the cell at <= 1 - SURE."""
    faults = []
    if not baseline_record["clean"] or not record["clean"]:
        faults.append(f"not a clean portrait (clean score baseline {baseline_record['clean_score']:.2f}, "
                      f"cell {record['clean_score']:.2f})")
    if baseline_record[attribute] < SURE:
        faults.append(f"the baseline shows {attribute} at {baseline_record[attribute]:.2f} (at least {SURE} needed)")
    if record[attribute] > 1 - SURE:
        faults.append(f"the cell still shows {attribute} at {record[attribute]:.2f} (at most {1 - SURE:.1f})")
    return faults


def removal_row_faults(images: list, records: list[dict], negatives) -> tuple[list[str], float]:
    """Why a row (its baseline, then one cell per negative, each named after the attribute it should remove) does
    not show "each negative removes its attribute with little collateral"; and the largest change outside a region
    among its negative cells (percent)."""
    faults, worst = [], 0.0
    for i, attribute in enumerate(negatives, start=1):
        measured = collateral(images[i], images[0], attribute, records[i], records[0])
        worst = max(worst, measured["outside"])
        faults += [f"- {attribute}: {f}" for f in removal_faults(records[i], records[0], attribute)
                   + collateral_faults(measured)]
    return faults, worst


def unchanged_row_faults(images: list, records: list[dict], attribute: str) -> tuple[list[str], float]:
    """Why a row whose baseline lacks ``attribute`` (its baseline, then the negative named after it) is not kept by
    that negative, as the detector reads it: both clean, neither showing it (at most 1 - SURE), every other attribute
    and the background kept; and the change outside the attribute's region (percent). The pixel bounds of a removal
    do not apply here: on the embedded model a negative on a portrait without its attribute rarely leaves the
    colours alone (the negative "mustache" kept them on 1 of 24 such seeds scanned)."""
    measured = collateral(images[1], images[0], attribute, records[1], records[0])
    faults = [f"- {attribute}: {f}" for f in collateral_faults(measured)
              if not f.startswith(("changed", "skin", "hair"))]
    if not records[0]["clean"] or not records[1]["clean"]:
        faults.append(f"not a clean portrait (clean score baseline {records[0]['clean_score']:.2f}, "
                      f"cell {records[1]['clean_score']:.2f})")
    for k, name in ((0, "the baseline"), (1, "the negative")):
        if records[k][attribute] > 1 - SURE:
            faults.append(f"{name} shows {attribute} at {records[k][attribute]:.2f} (at most {1 - SURE:.1f})")
    return faults, measured["outside"]
