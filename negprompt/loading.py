"""Load Stable Diffusion pipelines (1.x, 2.x, SDXL) from the Hub, a local folder, or the embedded model.

    from negprompt import load_pipeline
    pipe = load_pipeline()                                  # the embedded portrait model in assets/
    pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe = load_pipeline("./my-sdxl-folder", device="cuda")

Only safetensors weights are read and no remote code runs. Loaded pipelines are cached per (model, device, dtype)
and treated as read-only from then on: per-request settings (scheduler, sizes, seeds) never touch them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from negprompt.acceleration import accelerate
from negprompt.devices import pick_device, pick_dtype

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_MODEL = ASSETS / "portrait-model"
EMBEDDED_NAME = "negprompt-portraits"

PIPELINE_CLASSES = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline)}

_cache: dict[tuple[str, str, torch.dtype], DiffusionPipeline] = {}
_lock = threading.Lock()


class ModelNotFoundError(FileNotFoundError):
    """The requested model is neither a local diffusers folder nor reachable on the Hub."""


def resolve_model(model: str | Path | None) -> str:
    """The folder or Hub id that ``model`` names; ``None`` is the embedded model."""
    if model is None or str(model) in ("", EMBEDDED_NAME):
        if not (EMBEDDED_MODEL / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"The embedded model is missing: {EMBEDDED_MODEL} has no model_index.json. "
                "Train it with `python -m negprompt.portrait_model.train --out runs/portrait` (see its model card), "
                "or pass --model."
            )
        return str(EMBEDDED_MODEL)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(f"model={str(model)!r} is a folder without model_index.json (not a diffusers "
                                     "pipeline folder)")
        return str(path.resolve())
    return str(model)


def model_label(model: str | Path | None) -> str:
    """A short name for a model in labels and infotext: the Hub id, the folder name, or the embedded model's name."""
    if model is None or str(model) in ("", EMBEDDED_NAME) or Path(str(model)).resolve() == EMBEDDED_MODEL.resolve():
        return EMBEDDED_NAME
    path = Path(str(model))
    return path.name if path.exists() else str(model)


def load_pipeline(model: str | Path | None = None, *, device: str | torch.device | None = None,
                  dtype: torch.dtype | str | None = None) -> DiffusionPipeline:
    """Load (once) and return a text-to-image pipeline for ``model``, ready to run on ``device`` in ``dtype``.

    ``model``: a Hub id or a local diffusers folder holding a Stable Diffusion 1.x/2.x or SDXL pipeline; ``None``
    for the embedded model. ``device`` defaults to cuda, then mps, then cpu; ``dtype`` to half precision on a GPU and
    float32 on the CPU.
    """
    source = resolve_model(model)
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    key = (source, str(device), dtype)
    with _lock:
        if key not in _cache:
            _cache[key] = _load(source, device, dtype)
        return _cache[key]


def _load(source: str, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    try:
        config = DiffusionPipeline.load_config(source)
    except Exception as error:  # the Hub client raises several unrelated types for "not there"
        raise ModelNotFoundError(f"model={source!r} is not a local folder and could not be fetched from the "
                                 f"Hub: {error}") from error
    class_name = config.get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(f"model={source!r} is a {class_name}; negprompt runs {', '.join(PIPELINE_CLASSES)}")
    cls = PIPELINE_CLASSES[class_name]
    extra = {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionPipeline else {}
    log.info("loading %s (%s) on %s in %s", source, class_name, device, dtype)
    try:
        pipe = cls.from_pretrained(source, dtype=dtype, use_safetensors=True, **extra)
    except OSError as error:
        raise ModelNotFoundError(f"model={source!r} could not be loaded: {error} (negprompt reads only "
                                 "safetensors weights)") from error
    pipe.to(device)
    if dtype == torch.float16 and pipe.vae.config.get("force_upcast", False):
        # SDXL's VAE overflows in float16. diffusers upcasts it inside every call (mutating the pipeline); we do
        # it once here, and the engine decodes in the VAE's own dtype.
        pipe.vae.to(torch.float32)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    accelerate(pipe)  # load-time speed levers (a no-op on the CPU); never changed per request
    return pipe


def clear_cache() -> None:
    """Forget every loaded pipeline (frees their memory once nothing else holds them)."""
    with _lock:
        _cache.clear()
