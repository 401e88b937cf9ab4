"""What a negative prompt changed: a difference map against the row's baseline and a single change score.

The change score is the mean absolute pixel difference from the baseline, as a percentage of full scale
(0 = identical, 100 = every channel of every pixel flipped from black to white). The map shows where the change is:
per-pixel mean absolute difference over the channels, on a fixed scale (not stretched per image, so maps of
different cells compare), through a black-red-yellow-white heat palette.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Differences at or above this fraction of full scale are drawn at the top of the palette.
MAP_FULL_SCALE = 0.3

_PALETTE_STOPS = np.array([
    [0.00, 0, 0, 0],
    [0.35, 180, 20, 0],
    [0.70, 255, 190, 0],
    [1.00, 255, 255, 255],
])


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def pixel_differences(image: Image.Image, baseline: Image.Image) -> np.ndarray:
    """Per pixel, the mean absolute difference from ``baseline`` over the channels, in [0, 1] (height x width)."""
    return np.abs(_pixels(image) - _pixels(baseline)).mean(axis=2)


def change_score(image: Image.Image, baseline: Image.Image) -> float:
    """Mean absolute difference from ``baseline``, in percent of full scale."""
    return float(np.abs(_pixels(image) - _pixels(baseline)).mean() * 100.0)


def difference_map(image: Image.Image, baseline: Image.Image) -> Image.Image:
    """A heat map, the size of ``image``, of where it differs from ``baseline``."""
    level = np.clip(pixel_differences(image, baseline) / MAP_FULL_SCALE, 0.0, 1.0)
    channels = [np.interp(level, _PALETTE_STOPS[:, 0], _PALETTE_STOPS[:, k]) for k in (1, 2, 3)]
    return Image.fromarray(np.stack(channels, axis=2).astype(np.uint8), "RGB")


def image_statistics(image: Image.Image) -> dict[str, float]:
    """Pixel statistics of one image, for what a negative embedding cleans up: ``sharpness`` (the 95th percentile of
    the gray image's gradient magnitude, 0-255 per pixel: blur lowers it), ``noise`` (the mean absolute difference
    between the gray image and its 3x3 median, 0-255: pixel noise raises it, while flat areas and clean edges
    survive a median filter), ``contrast`` (the gray image's standard deviation, 0-255: washing out lowers it) and
    ``saturation`` (the mean of (max - min) / max over the color channels, 0-1)."""
    from PIL import ImageFilter

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    gy, gx = np.gradient(gray)
    median = np.asarray(image.convert("L").filter(ImageFilter.MedianFilter(3)), dtype=np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    return {"sharpness": float(np.percentile(np.hypot(gx, gy), 95)), "noise": float(np.abs(gray - median).mean()),
            "contrast": float(gray.std()), "saturation": float(((high - low) / np.maximum(high, 1)).mean())}
