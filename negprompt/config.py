"""The app's settings, read from environment variables (every one optional).

    NEGPROMPT_MODEL=stable-diffusion-v1-5/stable-diffusion-v1-5 python app.py
    NEGPROMPT_MAX_CELLS=9 NEGPROMPT_MAX_STEPS=30 GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860 python app.py

Gradio reads its own variables (``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``, ``GRADIO_TEMP_DIR``, ...) at
``launch()``; negprompt never overrides them. The README's table lists every ``NEGPROMPT_*`` variable.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from negprompt.loading import EMBEDDED_NAME

# The models the app offers by default: the embedded model, then the published checkpoints by Hub id.
HUB_MODELS = (
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-xl-base-1.0",
)


def _int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} must be an integer") from None
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return value


def _bool(name: str, default: bool) -> bool:
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"{name}={text!r} must be 1/0, true/false, yes/no or on/off")
    return text in ("1", "true", "yes", "on")


def _list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    return tuple(item.strip() for item in text.split(",") if item.strip())


def on_spaces() -> bool:
    """Whether we run on Hugging Face Spaces (which sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def zero_gpu_available() -> bool:
    """Whether the ``spaces`` package (ZeroGPU) is importable."""
    return importlib.util.find_spec("spaces") is not None


@dataclass(frozen=True)
class AppSettings:
    """What the app offers and how much one request may ask for."""

    model: str = EMBEDDED_NAME  # NEGPROMPT_MODEL: the model selected at start (Hub id, folder or the embedded name)
    models: tuple[str, ...] = (EMBEDDED_NAME, *HUB_MODELS)  # NEGPROMPT_MODELS: comma-separated choices
    allow_custom_model: bool = True  # NEGPROMPT_ALLOW_CUSTOM_MODEL: accept any Hub id or folder (off on Spaces)
    max_negatives: int = 8  # NEGPROMPT_MAX_NEGATIVES: negative-prompt rows in the form
    max_seeds: int = 4  # NEGPROMPT_MAX_SEEDS: rows (seeds) per comparison
    max_cells: int = 36  # NEGPROMPT_MAX_CELLS: images per comparison, seeds x (negatives + baseline)
    max_steps: int = 50  # NEGPROMPT_MAX_STEPS: denoising steps
    max_size: int = 1024  # NEGPROMPT_MAX_SIZE: largest width or height in pixels
    default_steps: int = 20  # NEGPROMPT_STEPS: steps selected at start
    preview_every: int = 5  # NEGPROMPT_PREVIEW_EVERY: steps between previews (0: none)
    queue_size: int = 16  # NEGPROMPT_QUEUE_SIZE: requests waiting at most; later ones are turned away
    device: str | None = None  # NEGPROMPT_DEVICE: cuda, mps or cpu (default: the best present)
    warmup: bool = False  # NEGPROMPT_WARMUP: load the default model at launch instead of on the first request
    detector: bool = True  # NEGPROMPT_DETECTOR: list what the embedded model's attribute detector sees

    @classmethod
    def from_env(cls) -> "AppSettings":
        """Settings from the ``NEGPROMPT_*`` variables; defaults for the unset ones."""
        model = os.environ.get("NEGPROMPT_MODEL", "").strip() or EMBEDDED_NAME
        models = _list("NEGPROMPT_MODELS", cls.models)
        if model not in models:
            models = (model, *models)
        preview = os.environ.get("NEGPROMPT_PREVIEW_EVERY", "").strip()
        return cls(
            model=model,
            models=models,
            allow_custom_model=_bool("NEGPROMPT_ALLOW_CUSTOM_MODEL", not on_spaces()),
            max_negatives=_int("NEGPROMPT_MAX_NEGATIVES", cls.max_negatives),
            max_seeds=_int("NEGPROMPT_MAX_SEEDS", cls.max_seeds),
            max_cells=_int("NEGPROMPT_MAX_CELLS", cls.max_cells),
            max_steps=_int("NEGPROMPT_MAX_STEPS", cls.max_steps),
            max_size=_int("NEGPROMPT_MAX_SIZE", cls.max_size),
            default_steps=_int("NEGPROMPT_STEPS", cls.default_steps),
            preview_every=int(preview) if preview.isdigit() else cls.preview_every,
            queue_size=_int("NEGPROMPT_QUEUE_SIZE", cls.queue_size),
            device=os.environ.get("NEGPROMPT_DEVICE", "").strip() or None,
            warmup=_bool("NEGPROMPT_WARMUP", zero_gpu_available()),
            detector=_bool("NEGPROMPT_DETECTOR", True),
        )
