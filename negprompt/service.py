"""What the app runs for one request, apart from its layout: input checks against the app's caps, the comparison
in a worker thread that streams step counts and previews, ZeroGPU, the detector readout and the download files.

    from negprompt.config import AppSettings
    from negprompt.service import build_request, generate
    request = build_request(AppSettings(), "portrait photo of a man", ["mustache"], seed=1, steps=20, guidance=7.5)
    for event in generate(request, preview_every=5):   # Step(done, total, previews) ..., then the Comparison
        print(event)

Bad input raises ``InputError`` whose ``field`` is the form label to blame ("Steps", "Negative prompt 2", ...);
the engine's own ``ValueError``s are mapped to the same labels by ``field_of``.
"""

from __future__ import annotations

import importlib
import logging
import math
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from negprompt.config import AppSettings, zero_gpu_available
from negprompt.loading import EMBEDDED_NAME

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1  # what the form offers (the engine takes up to 2**63 - 1)
_run_lock = threading.Lock()  # one generation at a time per process, whatever the queue settings


class InputError(ValueError):
    """Bad input, with the form field it concerns."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Request:
    """One comparison, as the app will run it."""

    prompt: str
    negatives: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    width: int | None  # None: the model's own size
    height: int | None
    scheduler: str
    model: str  # a Hub id, a folder, or EMBEDDED_NAME

    @property
    def cells(self) -> int:
        return len(self.seeds) * (len(self.negatives) + 1)

    @property
    def embedded(self) -> bool:
        return self.model == EMBEDDED_NAME


@dataclass(frozen=True)
class Step:
    """Progress of a running comparison; ``previews`` (one image per cell) every few steps, else None."""

    done: int
    total: int
    previews: list | None


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """"512x512" -> (512, 512) as (width, height); "" or "auto" -> (None, None), the model's own size."""
    text = (text or "").strip().lower()
    if text in ("", "auto") or text.startswith("model default"):
        return None, None
    match = re.fullmatch(r"(\d+)\s*[x×*]\s*(\d+)", text)
    if not match:
        raise InputError("Size", f"{text!r} must look like 512x512 (width x height), or 'auto'")
    return int(match[1]), int(match[2])


def build_request(settings: AppSettings, prompt: str, negatives, *, seed=0, rows=1, steps=20, guidance=7.5,
                  size="auto", scheduler="Default", model=None) -> Request:
    """Check the form's values against the app's caps and return the request; raises ``InputError``."""
    negatives = [n.strip() for n in ([negatives] if isinstance(negatives, str) else negatives or [])]
    negatives = [n for n in negatives if n]
    if not (prompt or "").strip():
        raise InputError("Prompt", "type a positive prompt")
    if len(negatives) > settings.max_negatives:
        raise InputError("Negative prompts", f"{len(negatives)} given; this app takes at most "
                                             f"{settings.max_negatives}")
    seed, rows, steps = _integer("Seed", seed), _integer("Seeds (rows)", rows), _integer("Steps", steps)
    if not 0 <= seed <= MAX_SEED:
        raise InputError("Seed", f"{seed} must be from 0 to {MAX_SEED}")
    if not 1 <= rows <= settings.max_seeds:
        raise InputError("Seeds (rows)", f"{rows} must be from 1 to {settings.max_seeds}")
    if not 1 <= steps <= settings.max_steps:
        raise InputError("Steps", f"{steps} must be from 1 to {settings.max_steps} on this app")
    guidance = _number("Guidance scale", guidance)
    if guidance <= 1:
        raise InputError("Guidance scale", f"{guidance:g} is at most 1, where classifier-free guidance is off and "
                                           "negative prompts do nothing; use a value above 1 (5 to 9 is usual)")
    width, height = parse_size(size)
    for value in (width, height):
        if value is not None and not 8 <= value <= settings.max_size:
            raise InputError("Size", f"{width}x{height}: each side must be from 8 to {settings.max_size} pixels")
    cells = rows * (len(negatives) + 1)
    if cells > settings.max_cells:
        raise InputError("Negative prompts", f"{rows} seed(s) x ({len(negatives)} negatives + baseline) = {cells} "
                                             f"images; this app makes at most {settings.max_cells}")
    model = _check_model(settings, model)
    seeds = tuple(range(seed, seed + rows))
    return Request(prompt=prompt.strip(), negatives=tuple(negatives), seeds=seeds, steps=steps,
                   guidance_scale=guidance, width=width, height=height, scheduler=scheduler or "Default", model=model)


def _integer(field: str, value) -> int:
    number = _number(field, value)
    if number != int(number):
        raise InputError(field, f"{value!r} must be a whole number")
    return int(number)


def _number(field: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(field, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise InputError(field, f"{value!r} must be a finite number")
    return number


def _check_model(settings: AppSettings, model) -> str:
    model = (model or "").strip() or settings.model
    if model not in settings.models and not settings.allow_custom_model:
        raise InputError("Model", f"{model!r} is not offered here; choose one of {', '.join(settings.models)}")
    return model


_FIELDS = {"prompt": "Prompt", "negatives": "Negative prompt", "seed": "Seed", "seeds": "Seed", "steps": "Steps",
           "guidance_scale": "Guidance scale", "height": "Size", "width": "Size", "model": "Model",
           "scheduler": "Scheduler", "max_cells": "Negative prompts"}


def field_of(error: Exception) -> str:
    """The form field an engine error names ("steps=0 must ..." -> "Steps"; "negatives[1]=..." -> "Negative
    prompt 2"); "Model" for missing models."""
    if isinstance(error, InputError):
        return error.field
    if isinstance(error, FileNotFoundError):
        return "Model"
    found = re.search(r"\b(prompt|negatives|seeds?|steps|guidance_scale|height|width|model|scheduler|max_cells)"
                      r"(?:\[(\d+)\])?=", str(error))
    if not found:
        return "Input"
    if found[1] == "negatives" and found[2] is not None:
        return f"Negative prompt {int(found[2]) + 1}"
    return _FIELDS[found[1]]


# -----------------------------------------------------------------------------------------------------------------
# Running


def estimate_seconds(request: Request, *_args, **_kwargs) -> int:
    """GPU seconds to ask ZeroGPU for: model load plus cells x steps x pixels (SD1.5 at 512x512 runs about 100 cell
    steps per second on a shared H200 slice; 4x headroom), capped at ZeroGPU's usual 120 s."""
    pixels = (request.width or 1024) * (request.height or 1024) / 512**2
    return int(min(120, math.ceil(20 + 0.04 * request.cells * request.steps * pixels)))


def on_gpu(fn: Callable, duration: Callable) -> Callable:
    """``spaces.GPU(duration=duration)(fn)`` where the ``spaces`` package is installed (ZeroGPU); else ``fn``."""
    if not zero_gpu_available():
        return fn
    import spaces

    return spaces.GPU(duration=duration)(fn)


def load(model: str, device: str | None = None):
    """The cached pipeline for ``model`` (EMBEDDED_NAME: the embedded model)."""
    from negprompt.loading import load_pipeline

    return load_pipeline(None if model == EMBEDDED_NAME else model, device=device)


class Cancelled(Exception):
    """Raised inside a running comparison (from its step callback) to stop it early."""


def _generate(request: Request, preview_every: int = 0, device: str | None = None) -> Iterator:
    """Yield ``Step``s while denoising, then the finished ``Comparison``. Exceptions reach the caller."""
    from negprompt.engine import compare

    events: queue.Queue = queue.Queue()
    stop = threading.Event()  # set when the caller goes away (the page closed): the run ends at its next step

    def on_step(done, total, previews):
        if stop.is_set():
            raise Cancelled("the request was abandoned")
        events.put(Step(done, total, previews))

    def work():
        try:
            with _run_lock:
                pipe = load(request.model, device)
                events.put(compare(
                    pipe, request.prompt, list(request.negatives), seeds=list(request.seeds), steps=request.steps,
                    guidance_scale=request.guidance_scale, height=request.height, width=request.width,
                    scheduler=request.scheduler, max_cells=max(request.cells, 1),
                    callback=on_step,
                    preview_every=preview_every))
        except BaseException as error:  # handed to the caller's thread, which raises it
            events.put(error)

    threading.Thread(target=work, name="negprompt-compare", daemon=True).start()
    try:
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if not isinstance(event, Step):
                return
    finally:
        stop.set()


generate = on_gpu(_generate, duration=estimate_seconds)


# -----------------------------------------------------------------------------------------------------------------
# Detector and files


_detector_state: dict = {}


def detector_readout(images) -> list[dict] | None:
    """What the embedded model's attribute detector (``negprompt.detector``) sees in each image: per image, each
    attribute's probability, ``clean_score`` and ``clean``. None when there is no detector (module or weights)."""
    try:
        module = importlib.import_module("negprompt.portrait_model.detector")
        if "detector" not in _detector_state:
            _detector_state["detector"] = module.load_detector()
        found = module.detect(images, _detector_state["detector"])
    except (ImportError, FileNotFoundError):
        return None
    except Exception:  # an optional extra must never break a comparison
        log.exception("the attribute detector failed; showing no detector readout")
        return None
    return [{name: value if isinstance(value, (bool, str)) else float(value) for name, value in r.items()}
            for r in found]


def seen(readout: dict) -> list[str]:
    """The attributes a readout marks present (probability >= 0.5), plus "unclear image" when it is not clean."""
    found = [name for name, value in readout.items()
             if not name.startswith("clean") and not isinstance(value, (bool, str)) and value >= 0.5]
    return found + (["unclear image"] if readout.get("clean") is False else [])


def output_folder(root: str | Path | None = None, keep_hours: float = 6) -> Path:
    """A fresh folder for one comparison's files, under Gradio's temp folder; old ones are removed."""
    import os

    base = Path(root or os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio") / "negprompt"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > keep_hours * 3600:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=base))


def write_files(result, folder: Path) -> tuple[list[Path], Path]:
    """Save the comparison in ``folder`` (grid, cell PNGs with infotext, manifest) and zip it; returns the cell
    files in cell order and the zip."""
    result.save(folder / "comparison")
    manifest = result.manifest()
    cells = [folder / "comparison" / c["file"] for c in manifest["cells"]]
    archive = shutil.make_archive(str(folder / "negprompt-comparison"), "zip", folder / "comparison")
    return cells, Path(archive)
