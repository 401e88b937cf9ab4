"""Running one request: admission by estimated cost, the one generation lock, the comparison in a worker thread that
streams step counts and previews, cancellation (the caller went away, or the request ran past its deadline), and
ZeroGPU.

    from negprompt.app.runner import Runner
    runner = Runner(AppSettings())
    runner.admit(request)                      # InputError("cost", ...) when it would run past the budget
    for event in runner.generate(request):     # Step(done, total, previews) ..., then the Comparison
        print(event)

Cost: a comparison costs about cells x steps x pixels; ``Speed`` holds the measured seconds per cell-step-pixel
of each loaded model on its device (a cautious prior until the first run), so the estimate is the device's own.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass

from negprompt.app.form import Request, request_spec
from negprompt.app.settings import AppSettings, zero_gpu_available
from negprompt.errors import InputError
from negprompt.loading import EMBEDDED_NAME

log = logging.getLogger(__name__)

GENERATION_LOCK = threading.Lock()  # one comparison at a time per process, UI and API alike
# A caller that has not come back for the next event this long has gone away (Gradio stops iterating a cancelled or
# disconnected request's generator without always closing it): the run stops at its next step.
ABANDONED_AFTER_S = 3.0
REUSED_RESULTS = 8  # finished comparisons kept to answer identical requests
PREVIEW_SIDE = 256  # the step scrubber's previews are kept at most this many pixels a side, per session


@dataclass(frozen=True)
class Step:
    """Progress of a running comparison; ``previews`` (one image per cell) every few steps, else None."""

    done: int
    total: int
    previews: list | None


@dataclass(frozen=True)
class Reused:
    """The finished ``Comparison`` of an identical request that ran a moment ago (same seed, same images)."""

    result: object


class Cancelled(Exception):
    """Raised inside a running comparison (from its step callback) to stop it early."""


class DeadlineExceeded(Cancelled):
    """The comparison ran longer than the app allows one request."""


def request_spec_for(request: Request, pipe):
    """The spec the engine runs for ``request`` on the loaded ``pipe``: the one place that turns a request into an
    engine call (``negprompt.app.form.request_spec`` in the request's mode, named and with the baseline as the
    loaded model has them: zero embeddings for SDXL, the empty prompt otherwise). The other positive prompt (the
    seed article's "without X") is one more cell of each row, in the same batch and from the same starting noise.
    On a guidance-distilled model each negative shows as "CFG (inert here)" beside NAG; where the model's attention
    cannot be steered, the guidance-methods mode leaves NAG out (``fit_to_model``)."""
    from negprompt.engine import default_baseline
    from negprompt.loading import model_source
    from negprompt.verdicts import fit_to_model

    diffusers_pipe = getattr(pipe, "pipe", pipe)
    spec = request_spec(request, model=model_source(diffusers_pipe), baseline=default_baseline(diffusers_pipe))
    return fit_to_model(spec, diffusers_pipe, optional_methods=True)


# -----------------------------------------------------------------------------------------------------------------
# Cost


# Seconds per cell-step at 512x512 before a model has run here (cautious: SD 1.5-sized UNets); replaced by the
# measured figure after the first run of each model on its device.
PRIOR_SECONDS = {"cpu": 2.0, "mps": 0.3, "cuda": 0.03}
EMBEDDED_PRIOR_SECONDS = 0.6  # the embedded model on a CPU: 0.01 s per cell-step at its 64x64


class Speed:
    """Measured seconds per cell-step-pixel, per (model, device)."""

    def __init__(self):
        self._seconds: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def per_unit(self, model: str, device: str) -> float:
        with self._lock:
            known = self._seconds.get((model, device))
        if known is not None:
            return known
        embedded = model == EMBEDDED_NAME and device == "cpu"
        prior = EMBEDDED_PRIOR_SECONDS if embedded else PRIOR_SECONDS.get(device, 2.0)
        return prior / 512**2

    def record(self, model: str, device: str, units: float, seconds: float) -> None:
        if units <= 0 or seconds <= 0:
            return
        measured = seconds / units
        with self._lock:
            old = self._seconds.get((model, device))
            self._seconds[(model, device)] = measured if old is None else 0.5 * old + 0.5 * measured


def units(request: Request, side: int = 512) -> float:
    """cells x steps x pixels (the model's own size counts as ``side`` x ``side``)."""
    return request.cells * request.steps * (request.width or side) * (request.height or side)


def device_name(device: str | None) -> str:
    from negprompt.devices import pick_device

    return pick_device(device).type


def describe_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -----------------------------------------------------------------------------------------------------------------
# Running


def on_gpu(fn: Callable, duration: Callable) -> Callable:
    """``spaces.GPU(duration=duration)(fn)`` where the ``spaces`` package is installed (ZeroGPU); else ``fn``."""
    if not zero_gpu_available():
        return fn
    import spaces

    return spaces.GPU(duration=duration)(fn)


def load(model: str, device: str | None = None, preview_decoder: str | None = None, embeddings=()):
    """The cached pipeline for ``model`` (EMBEDDED_NAME: the embedded model), with its preview decoder and negative
    embeddings if any."""
    from negprompt.loading import load_pipeline

    return load_pipeline(None if model == EMBEDDED_NAME else model, device=device, preview_decoder=preview_decoder,
                         embeddings=embeddings)


def zero_gpu_seconds(request: Request, *_args, **_kwargs) -> int:
    """GPU seconds to ask ZeroGPU for: model transfer plus cells x steps x pixels. An H200 slice runs SD 1.5 at
    512x512 at about 100 cell-steps per second (REFERENCE.md: a batch of 10 in 35 ms per step, both branches);
    ask for 3x that plus 15 s, and at most ZeroGPU's 120 s."""
    cell_steps_512 = units(request, side=1024 if request.width is None else 512) / 512**2
    return int(min(120, math.ceil(15 + 3 * cell_steps_512 / 100)))


class Runner:
    """Admits requests and runs them one at a time."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.speed = Speed()
        self.sides: dict[str, int] = {}  # each model's own image side, once it has run
        self._run = on_gpu(self._generate, duration=lambda request, *a, **k: zero_gpu_seconds(request))
        # The last few finished comparisons by request: a class that presses the same example gets the first
        # result at once instead of queueing for identical images (a run is a pure function of its request).
        self._finished: OrderedDict[Request, object] = OrderedDict()
        self._finished_lock = threading.Lock()

    def generate(self, request: Request, *, previews: bool = True) -> Iterator:
        """Yield ``Step``s while denoising, then the finished ``Comparison``; or only ``Reused(comparison)`` when
        an identical request finished a moment ago (with previews, if ``previews``), without queueing for the
        model or asking for a GPU."""
        with self._finished_lock:
            hit = self._finished.get(request)
            if hit is not None:
                self._finished.move_to_end(request)
        if hit is not None and (hit.previews or not previews or not self.settings.preview_every):
            yield Reused(hit)
            return
        with closing(self._run(request, previews=previews)) as events:
            for event in events:
                if not isinstance(event, Step):
                    with self._finished_lock:
                        self._finished[request] = event
                        self._finished.move_to_end(request)
                        while len(self._finished) > REUSED_RESULTS:
                            self._finished.popitem(last=False)
                yield event

    def estimate(self, request: Request) -> float:
        """Seconds the comparison should take on this app's device, from the measured speed of its model."""
        side = self.sides.get(request.model, 64 if request.embedded else 512)
        device = device_name(self.settings.device)
        return units(request, side) * self.speed.per_unit(request.model, device)

    def admit(self, request: Request) -> float:
        """The estimate, or ``InputError("cost", ...)`` when it exceeds the app's budget per request. A request no
        larger than a default one (one seed, baseline + 3 negatives, the default steps, the model's own size) is
        always admitted, however busy the machine: the budget is for outsized requests, the deadline for the rest."""
        seconds = self.estimate(request)
        side = self.sides.get(request.model, 64 if request.embedded else 512)
        if units(request, side) <= 4 * self.settings.default_steps * side * side:
            return seconds
        if seconds > self.settings.budget_s:
            size = f"{request.width}x{request.height}" if request.width else "the model's size"
            raise InputError("cost", round(seconds, 1),
                             f"{request.cells} images x {request.steps} steps at {size} would take about "
                             f"{describe_seconds(seconds)} on this app's {device_name(self.settings.device)}; "
                             f"it runs at most {describe_seconds(self.settings.budget_s)} per comparison. Use "
                             "fewer steps, seeds or negatives, or a smaller size.")
        return seconds

    def _generate(self, request: Request, *, previews: bool = True) -> Iterator:
        """Yield ``Step``s while denoising, then the finished ``Comparison``. Exceptions reach the caller; closing
        the stream (the caller went away) stops the comparison at its next step and frees the lock."""
        from negprompt import attention
        from negprompt.engine import compare
        from negprompt.explore import PreviewRecorder
        from negprompt.families import family_of
        from negprompt.verdicts import explain

        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        deadline = time.monotonic() + self.settings.deadline_s
        settings = self.settings
        waiting = [None]  # when the caller was handed an event it has not come back from (None: it came back)

        def on_step(done, total, previews):
            since = waiting[0]
            if since is not None and time.monotonic() - since > ABANDONED_AFTER_S:
                stop.set()  # the caller stopped iterating (a cancelled or disconnected request) without closing us
            if stop.is_set():
                log.info("stopping an abandoned comparison at step %d of %d", done, total)
                raise Cancelled("the request was abandoned")
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"stopped after {describe_seconds(settings.deadline_s)}, the longest this "
                                       "app runs one comparison")
            events.put(Step(done, total, previews))

        def work():
            try:
                with GENERATION_LOCK:
                    if stop.is_set():
                        raise Cancelled("the request was abandoned")
                    pipe = load(request.model, settings.device, settings.preview_decoder(request.model),
                                settings.embeddings_for(request.model))
                    spec = request_spec_for(request, pipe)
                    every = settings.kept_every(request.model) if previews else 0
                    # every cell's preview every ``every`` steps is kept for the step scrubber and the curves
                    recorder = PreviewRecorder(spec.steps, then=on_step, max_side=PREVIEW_SIDE)
                    maps = settings.attention_maps and attention.installed(family_of(pipe).denoiser)
                    result = explain(compare(pipe, spec, callback=recorder, preview_every=every,
                                             max_cells=max(len(spec.cells), 1), attention_maps=maps), pipe,
                                     recorder if every else None)
                    if spec.mode == "xray":
                        from negprompt.embeddings import xray_findings

                        result.explored["xray"] = xray_findings(pipe, request.negatives[0].lower(), request.vectors)
                denoise = result.timings.get("denoise_s", 0.0)
                if request.width is None:
                    self.sides[request.model] = max(result.settings.width, result.settings.height)
                self.speed.record(request.model, pipe.device.type,
                                  len(result.cells) * result.settings.steps * result.settings.width
                                  * result.settings.height, denoise)
                events.put(result)
            except BaseException as error:  # handed to the caller's thread, which raises it
                events.put(error)

        threading.Thread(target=work, name="negprompt-compare", daemon=True).start()
        try:
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    raise event
                waiting[0] = time.monotonic()
                yield event
                waiting[0] = None
                if not isinstance(event, Step):
                    return
        finally:
            stop.set()
