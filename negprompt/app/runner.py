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
from dataclasses import dataclass, field

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
# Requests let into the generate handlers at once (Gradio's concurrency limit): one run's worth is waiting while
# another runs (a run takes at most the app's cap on images, 36 by default: nine 1+3 requests).
WAITING_REQUESTS = 16


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
    On a guidance-distilled model each negative shows as CFG (labeled inert where no negative branch runs) beside
    NAG; where the model's attention cannot be steered, the guidance-methods mode leaves NAG out
    (``fit_to_model``)."""
    from negprompt.engine import default_baseline
    from negprompt.loading import model_source
    from negprompt.verdicts import fit_to_model

    diffusers_pipe = getattr(pipe, "pipe", pipe)
    spec = request_spec(request, model=model_source(diffusers_pipe), baseline=default_baseline(diffusers_pipe))
    return fit_to_model(spec, diffusers_pipe, optional_methods=True)


# -----------------------------------------------------------------------------------------------------------------
# Cost

# Seconds per cell-step at 512x512 before a model has been measured here (cautious: SD 1.5-sized UNets); sizes above
# the model's own grow quadratically in the pixels (attention), below it linearly.
PRIOR_SECONDS = {"cpu": 2.0, "mps": 0.3, "cuda": 0.03}
EMBEDDED_PRIOR_SECONDS = 0.6  # the embedded model on a CPU: 0.01 s per cell-step at its 64x64
SMALLEST_SIDE = 64  # the smallest size measured on the way up to a large one
COSTS_KEPT = 64  # measured (model, device, size) costs kept


class Costs:
    """Measured costs per (model, device, height, width) (``negprompt.cost.StepCost``), each measured once and never
    changed by what runs later: admission gives the same answer for the same request whatever ran before it.

    A size not measured yet is measured on the way up from ``SMALLEST_SIDE``, halving sides: each measurement is
    allowed only when the bound from the size below says it takes at most ``cap_s``; a size that cannot be measured
    within that gets bounds from the largest size measured below it (linear and quadratic in the pixels)."""

    def __init__(self, cap_s: float):
        self.cap_s = cap_s
        self._known: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, model: str, device: str, height: int, width: int):
        with self._lock:
            return self._known.get((model, device, height, width))

    def below(self, model: str, device: str, height: int, width: int):
        """The measured size of this model and device with the most pixels at most ``height x width``, or None."""
        with self._lock:
            sizes = [(h * w, h, w, c) for (m, d, h, w), c in self._known.items()
                     if m == model and d == device and h * w <= height * width]
        return max(sizes, key=lambda s: s[0]) if sizes else None

    def bounds(self, model: str, device: str, height: int, width: int):
        """(lower, upper) ``StepCost`` at this size: equal when measured; None when nothing below it is."""
        exact = self.known(model, device, height, width)
        if exact is not None:
            return exact, exact
        found = self.below(model, device, height, width)
        if found is None:
            return None
        pixels, _, _, cost = found
        factor = height * width / pixels
        return cost.scaled(factor, 1), cost.scaled(factor, 2)

    def measure_up_to(self, pipe, model: str, device: str, height: int, width: int) -> None:
        """Measure the sizes on the way to ``height x width`` that can be measured within ``cap_s`` (call it holding
        the model: it runs the UNet)."""
        from negprompt.cost import measure
        from negprompt.families import family_of

        pipe = getattr(pipe, "pipe", pipe)  # a loaded record or the pipeline itself
        if family_of(pipe).name != "unet":
            return  # a transformer family (SD3, FLUX): not measured yet, its prior bounds it
        for h, w in ladder(height, width, pipe.vae_scale_factor):
            if self.known(model, device, h, w) is not None:
                continue
            bounds = self.bounds(model, device, h, w)
            if bounds is not None and bounds[1].measured_s > self.cap_s:
                return
            cost = measure(pipe, h, w)
            with self._lock:
                self._known[(model, device, h, w)] = cost
                while len(self._known) > COSTS_KEPT:
                    self._known.popitem(last=False)


def ladder(height: int, width: int, factor: int = 8) -> list[tuple[int, int]]:
    """The sizes measured on the way up to ``height x width``: its sides halved while both stay at least
    ``SMALLEST_SIDE`` pixels (multiples of ``factor``), smallest first, ending with the size itself."""
    sizes = [(height, width)]
    while min(sizes[-1]) // 2 >= SMALLEST_SIDE:
        h, w = sizes[-1]
        sizes.append((h // 2 // factor * factor, w // 2 // factor * factor))
    return sizes[::-1]


def describe_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def units(request: Request, side: int = 512) -> float:
    """cells x steps x pixels (the model's own size counts as ``side`` x ``side``)."""
    return request.cells * request.steps * (request.width or side) * (request.height or side)


def device_name(device: str | None) -> str:
    from negprompt.devices import pick_device

    return pick_device(device).type


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


@dataclass(eq=False)
class _Ticket:
    """One request waiting for, or in, a run: its events go to its own caller only."""

    request: Request
    previews: bool
    events: queue.Queue = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    handed: float | None = None  # when the caller was handed an event it has not come back from (None: it came back)
    taken: bool = False  # a run has taken it (guarded by the runner's waiting lock)

    @property
    def key(self) -> tuple:
        """What every request of one run shares (``negprompt.batching.shared_settings``): the model, the image size
        and the guidance scale. Steps, sampler, reading and previews are each request's own."""
        r = self.request
        return r.model, r.width, r.height, r.guidance_scale

    def abandoned(self) -> bool:
        """Its caller went away: it closed the stream, or has not come back for the next event in a while (Gradio
        stops iterating a cancelled or disconnected request's generator without always closing it)."""
        if self.handed is not None and time.monotonic() - self.handed > ABANDONED_AFTER_S:
            self.stop.set()
        return self.stop.is_set()


@dataclass(eq=False)
class _Entry:
    """One distinct request in a run: the tickets waiting for it, its spec, and what its member of the stream uses."""

    request: Request
    tickets: list[_Ticket]
    spec: object
    recorder: object
    every: int  # previews kept every this many steps (0: none)
    interrupt: Callable[[], None]
    maps: bool
    seconds: float  # its estimate


def _interrupt(group, deadline_s: float) -> Callable[[], None]:
    """Called between and inside steps: stops a run whose callers all went away, or that ran past the deadline."""
    deadline = time.monotonic() + deadline_s

    def interrupt():
        if all(t.abandoned() for t in group):
            log.info("stopping a comparison whose callers all went away")
            raise Cancelled("the request was abandoned")
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"stopped after {describe_seconds(deadline_s)}, the longest this app runs one "
                                   "comparison")

    return interrupt


def _progress(tickets, interrupt: Callable[[], None]):
    """The step callback of one request's cells: checks ``interrupt``, then hands each waiting caller the step."""
    def on_step(done, total, previews):
        interrupt()
        for t in tickets:
            if not t.abandoned():
                t.events.put(Step(done, total, previews))
    return on_step


class Runner:
    """Admits requests and runs them, one run at a time, several compatible requests per run.

    Batching: requests wait in a list, in order of arrival; whoever gets the model next takes the oldest waiting
    request and every later one that shares its model, image size and guidance scale, up to the app's cap on
    images (``max_cells``) and half its deadline (by their estimates), and runs them as a
    ``negprompt.batching.Stream``: their cells in one denoiser batch per step; each request leaves the run when its
    own steps are done. With ``NEGPROMPT_BATCH_JOIN=1`` the run also takes in, between steps, the requests that
    arrived meanwhile, on the same terms (continuous batching: a request that arrives while a run is going joins it
    at its next step instead of waiting for it to end), for as long as the oldest waiting request shares the run's
    settings. Off by default: on a CPU a step's time grows with its rows, so joiners slow the requests already
    running (30 students on a 2-core CPU: the same p95, a worse p50). Each caller gets its own
    ``Comparison`` (cells, manifest, verdicts, previews); identical requests in one run are made once. We collect
    in the runner rather than use Gradio's ``batch=True`` events because those cannot be generators (the app
    streams step counts and previews), would batch across modes and models, and could not join a running batch; a
    collector also works the same for the UI and the API. Gradio's queue lets up to ``WAITING_REQUESTS`` requests
    into the handler at once (``negprompt.app.layout.RUN``), so that requests gather while a run goes. One caller
    going away never stops the others: a request stops early only when every caller waiting for it has gone, or at
    its deadline. Off with ``NEGPROMPT_BATCH=0`` (one request per run) and under ZeroGPU (there each request gets
    its own GPU call)."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.batching = settings.batch_requests and not zero_gpu_available()
        self.join_running = self.batching and settings.batch_join  # join a running batch between steps
        self.costs = Costs(cap_s=min(settings.budget_s, settings.deadline_s) / 4)
        self.sides: dict[str, int] = {}  # each model's own image side, once it has run
        self._run = on_gpu(self._generate, duration=lambda request, *a, **k: zero_gpu_seconds(request))
        # The last few finished comparisons by request: a class that presses the same example gets the first
        # result at once instead of queueing for identical images (a run is a pure function of its request).
        self._finished: OrderedDict[Request, object] = OrderedDict()
        self._finished_lock = threading.Lock()
        self._waiting: list[_Ticket] = []
        self._waiting_lock = threading.Lock()

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

    # -- cost -------------------------------------------------------------------------------------------------------

    def _size(self, request: Request) -> tuple[int, int]:
        side = self.sides.get(request.model, 64 if request.embedded else 512)
        return request.height or side, request.width or side

    def planned(self, request: Request):
        """(the spec the run will make for ``request``, the model's family or None), as far as known without
        loading anything: exactly on a model loaded already (``request_spec_for``: on a guidance-distilled model
        each negative gets a NAG cell beside its CFG cell); else from the model's name alone (``fit_by_name``: a
        Turbo, Lightning, LCM, Hyper-SD or FLUX.1-schnell name gets its NAG cells counted, each with the most rows
        a cell can take). The run checks the cost again on the loaded model before it starts (``_run_group``),
        so what the name did not tell (a model distilled by its configuration alone) is refused there, by the
        same rule, instead of admitted on a guess that would refuse ordinary models too."""
        from negprompt.families import family_of
        from negprompt.loading import loaded_now
        from negprompt.verdicts import fit_by_name

        pipe = loaded_now(request.model)
        if pipe is not None:
            return request_spec_for(request, pipe), family_of(pipe)
        return fit_by_name(request_spec(request)), None

    def _cells(self, request: Request) -> int:
        """The images the run will make for ``request`` (``planned``)."""
        return len(self.planned(request)[0].cells)

    def _work(self, request: Request, previews: bool = True) -> tuple[int, int, int]:
        from negprompt.cost import spec_work

        spec, family = self.planned(request)
        return spec_work(spec, self.settings.kept_every(request.model) if previews else 0, family=family)

    def bounds(self, request: Request, previews: bool = True) -> tuple[float, float]:
        """(at least, at most) seconds the comparison takes on this app's device: equal where its size has been
        measured for its model; from a smaller measured size (linear, quadratic in the pixels) where not; from a
        cautious prior where nothing of the model has been measured."""
        height, width = self._size(request)
        device = device_name(self.settings.device)
        work = self._work(request, previews)
        found = self.costs.bounds(request.model, device, height, width)
        if found is not None:
            return found[0].seconds(*work), found[1].seconds(*work)
        from negprompt.cost import StepCost

        side = 64 if request.embedded else 512
        prior = (EMBEDDED_PRIOR_SECONDS if request.embedded and device == "cpu" else PRIOR_SECONDS.get(device, 2.0))
        base = StepCost(call_s=0.0, row_s=prior / 2 * side * side / 512**2, decode_s=prior * side * side / 512**2)
        factor = height * width / (side * side)
        seconds = base.scaled(factor, 2 if factor > 1 else 1).seconds(*work)
        return seconds, seconds

    def estimate(self, request: Request, previews: bool = True) -> float:
        """Seconds the comparison should take on this app's device (the upper bound where its size is not measured
        yet), with the decodes of its kept previews when ``previews``."""
        return self.bounds(request, previews)[1]

    def admit(self, request: Request, *, measure: bool = True) -> float:
        """The estimate, or ``InputError("cost", ...)`` when it exceeds the app's budget per request. When the model
        is idle (and ``measure``), the sizes it needs are measured first, so an outsized request is refused at once.
        A request no larger than a default one (one seed, baseline + 3 negatives, the default steps, the model's own
        size) is always admitted, however busy the machine: the budget is for outsized requests, the deadline for
        the rest. The estimate counts the images the run will make (``planned``: on a guidance-distilled model, NAG
        beside each CFG cell). The answer depends on the request, on measurements of its model and, for those added
        cells, on whether the model is loaded (before that its name alone tells), never on what else ran."""
        if measure and GENERATION_LOCK.acquire(blocking=False):
            try:
                self._measure(request)
            finally:
                GENERATION_LOCK.release()
        return self._check(request)

    def _measure(self, request: Request, pipe=None) -> None:
        """Measure the sizes ``request`` needs (holding the model). Loads the model when ``pipe`` is None."""
        if request.width is None and request.model not in self.sides:
            return  # its own size is known after its first run; the prior covers it until then
        height, width = self._size(request)
        device = device_name(self.settings.device)
        if self.costs.known(request.model, device, height, width) is not None:
            return
        if pipe is None:
            pipe = load(request.model, self.settings.device, self.settings.preview_decoder(request.model),
                        self.settings.embeddings_for(request.model))
        self.costs.measure_up_to(pipe, request.model, device, height, width)

    def _check(self, request: Request) -> float:
        low, high = self.bounds(request)
        height, width = self._size(request)
        side = self.sides.get(request.model, 64 if request.embedded else 512)
        if (height, width) == (side, side) and units(request, side) <= 4 * self.settings.default_steps * side * side:
            return high
        budget = self.settings.budget_s
        if high <= budget:
            return high
        size = f"{request.width}x{request.height}" if request.width else "the model's size"
        cells = self._cells(request)
        added = f" ({cells - request.cells} of them NAG beside CFG, as on a distilled model)" \
            if cells > request.cells else ""
        what = f"{cells} images{added} x {request.steps} steps at {size}"
        where = f"on this app's {device_name(self.settings.device)}"
        if low == high:
            estimate = f"would take about {describe_seconds(high)} {where}"
        elif low > budget:
            estimate = f"would take at least {describe_seconds(low)} {where}"
        else:  # between: only measuring could tell, and this size cannot be measured quickly
            estimate = (f"would take between {describe_seconds(low)} and {describe_seconds(high)} {where} (a "
                        "size this large cannot be measured quickly)")
        if low <= budget and low != high and self.costs.below(request.model, device_name(self.settings.device),
                                                             height, width) is None:
            return high  # nothing of this model measured yet: the run measures it first and checks again
        raise InputError("cost", round(high, 1), f"{what} {estimate}; it runs at most "
                                                 f"{describe_seconds(budget)} per comparison. Use fewer steps, seeds "
                                                 "or negatives, or a smaller size.")

    # -- running ----------------------------------------------------------------------------------------------------

    def _generate(self, request: Request, *, previews: bool = True) -> Iterator:
        """Yield ``Step``s while denoising, then the finished ``Comparison``. Exceptions reach the caller; closing
        the stream (the caller went away) takes it out of its run (the run stops when nobody is left in it)."""
        ticket = _Ticket(request, previews)
        with self._waiting_lock:
            self._waiting.append(ticket)
        threading.Thread(target=self._serve, args=(ticket,), name="negprompt-compare", daemon=True).start()
        try:
            while True:
                event = ticket.events.get()
                if isinstance(event, BaseException):
                    raise event
                ticket.handed = time.monotonic()
                yield event
                ticket.handed = None
                if not isinstance(event, Step):
                    return
        finally:
            ticket.stop.set()

    def _serve(self, ticket: _Ticket) -> None:
        """Wait for the model; then run the oldest waiting requests (ours, or earlier ones), until ours has run."""
        while True:
            with GENERATION_LOCK:
                with self._waiting_lock:
                    if ticket.taken:
                        return
                    group = self._take()
                if group:
                    self._run_group(group)

    def _take(self) -> list[_Ticket]:
        """The next run's requests (call holding both locks): the oldest live one, and (batching) every later one
        with the same key, up to the cap on images and the budget."""
        live = self._live()
        if not live:
            return []
        group = [live[0]]
        for t in group:
            t.taken = True
        if self.batching:
            group += self._more(live[0].key, self._cells(live[0].request),
                                self.estimate(live[0].request, live[0].previews), {live[0].request}, joining=False)
        return group

    def _live(self) -> list[_Ticket]:
        """The waiting requests whose callers are still there, oldest first (call holding the waiting lock)."""
        live = []
        for t in self._waiting:
            if t.abandoned():
                t.taken = True
            elif not t.taken:
                live.append(t)
        self._waiting = live
        return live

    def _more(self, key: tuple, cells: int, seconds: float, running: set, joining: bool = True) -> list[_Ticket]:
        """Waiting requests to run beside ``running`` (call holding the waiting lock): in order of arrival, each
        with ``key``, while the cells stay within the app's cap on images and the estimated seconds within half
        the deadline; a request identical to one running is made once. ``joining`` (a run that is going): only
        while the oldest waiting request has ``key``, so that one of other settings is not kept waiting by a run
        that never ends."""
        live = self._live()
        if not live or (joining and live[0].key != key):
            return []
        limit = max(self.settings.budget_s, self.settings.deadline_s / 2)  # a run ends well before the deadline
        taken = []
        for t in live:
            if t.key != key:
                continue
            if t.request not in running:
                more, extra = self._cells(t.request), self.estimate(t.request, t.previews)
                if cells + more > self.settings.max_cells or seconds + extra > limit:
                    continue
                running.add(t.request)
                cells, seconds = cells + more, seconds + extra
            t.taken = True
            taken.append(t)
        self._waiting = [t for t in live if not t.taken]
        return taken

    def _run_group(self, group: list[_Ticket]) -> None:
        """Run the requests of ``group`` as a ``negprompt.batching.Stream`` and hand each ticket its own result (or
        the error); with ``join_running``, the stream takes in compatible waiting requests at every step, until it
        is empty."""
        from negprompt.batching import Stream

        try:
            first = group[0].request
            pipe = load(first.model, self.settings.device, self.settings.preview_decoder(first.model),
                        self.settings.embeddings_for(first.model))
        except BaseException as error:  # handed to every caller's thread, which raises it
            for t in group:
                t.events.put(error)
            return
        stream = Stream(pipe)
        entries: dict[Request, _Entry] = {}
        self._join(stream, entries, group, pipe)
        while stream:
            try:
                ended = stream.step()
            except BaseException as error:  # not one member's: every caller in the run gets it
                for entry in entries.values():
                    for t in entry.tickets:
                        t.events.put(error)
                return
            for member, outcome in ended:
                self._hand(entries.pop(member.tag.request), outcome, pipe)
            if self.join_running and stream:
                with self._waiting_lock:
                    seconds = sum(m.tag.seconds * m.steps_left / max(1, m.job.spec.steps) for m in stream.members)
                    more = self._more(group[0].key, stream.cells, seconds, set(entries))
                if more:
                    self._join(stream, entries, more, pipe)

    def _join(self, stream, entries: dict, tickets: list[_Ticket], pipe) -> None:
        """Take ``tickets``' requests into ``stream`` (each admitted on the loaded model first); a ticket whose
        request is running already joins its entry."""
        from negprompt import attention
        from negprompt.explore import PreviewRecorder
        from negprompt.families import family_of

        settings = self.settings
        fresh = []
        for t in tickets:
            if t.request in entries:
                entries[t.request].tickets.append(t)
            else:
                fresh.append(t)
        maps = settings.attention_maps and attention.captures(family_of(pipe).denoiser)
        for request, waiting in self._admitted(fresh, pipe).items():
            try:
                spec = request_spec_for(request, pipe)
                every = settings.kept_every(request.model) if any(t.previews for t in waiting) else 0
                interrupt = _interrupt(waiting, settings.deadline_s)
                # every cell's preview every ``every`` steps is kept for the step scrubber and the curves
                recorder = PreviewRecorder(spec.steps, then=_progress(waiting, interrupt), max_side=PREVIEW_SIDE)
                entry = _Entry(request, waiting, spec, recorder, every, interrupt, maps,
                               self.estimate(request, every > 0))
                stream.add(spec, callback=recorder, preview_every=every, attention_maps=maps, interrupt=interrupt,
                           max_cells=len(spec.cells), tag=entry)
                entries[request] = entry
            except BaseException as error:
                for t in waiting:
                    t.events.put(error)

    def _hand(self, entry: _Entry, outcome, pipe) -> None:
        """Give ``entry``'s callers its result: explained, or the error that stopped it. A comparison that ran out
        of memory beside others runs again alone, in chunks that fit (``negprompt.engine.run``)."""
        import torch

        from negprompt.engine import compare

        if isinstance(outcome, torch.OutOfMemoryError):
            try:
                outcome = compare(pipe, entry.spec, callback=entry.recorder, preview_every=entry.every,
                                  max_cells=len(entry.spec.cells), attention_maps=entry.maps,
                                  interrupt=entry.interrupt)
            except BaseException as error:
                outcome = error
        if not isinstance(outcome, BaseException):
            try:
                outcome = self._explained(entry.request, outcome, pipe, entry.recorder if entry.every else None)
            except BaseException as error:
                outcome = error
        for t in entry.tickets:
            t.events.put(outcome)

    def _admitted(self, group: list[_Ticket], pipe) -> dict[Request, list[_Ticket]]:
        """The group's distinct requests (each with the tickets waiting for it) that pass admission on the loaded
        model: the sizes measured now (the model is ours), then each admitted again on the measurement; the
        tickets of a refused request get the refusal."""
        requests: dict[Request, list[_Ticket]] = {}
        for t in group:
            requests.setdefault(t.request, []).append(t)
        for request in list(requests):
            try:
                self._measure(request, pipe)
                self._check(request)
            except InputError as error:
                for t in requests.pop(request):
                    t.events.put(error)
        return requests

    def _explained(self, request: Request, result, pipe, recorder):
        """A finished comparison with its verdicts, previews and (X-ray) findings; the model's own size learnt."""
        from negprompt.verdicts import explain

        if request.width is None:
            self.sides[request.model] = max(result.settings.width, result.settings.height)
        result = explain(result, pipe, recorder)
        if result.spec.mode == "xray":
            from negprompt.embeddings import xray_findings

            result.explored["xray"] = xray_findings(pipe, request.negatives[0].lower(), request.vectors)
        return result
