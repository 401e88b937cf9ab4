"""Continuous batching: several comparisons denoised together, one denoiser call per step for all of them, each one
joining and leaving between steps.

    from negprompt.batching import Stream, run_many
    stream = Stream(pipe)
    stream.add(spec_a)                          # checked, encoded, its noise drawn (``engine.prepare``)
    while stream:
        for member, outcome in stream.step():   # one step of every comparison in it; those that ended at this step
            ...                                 # outcome: its Comparison, or the exception that stopped it
        stream.add(spec_b)                      # joins at the next step: its step 0 beside the others' step k

    results = run_many(pipe, [spec_a, spec_b])  # all from the start to the end, in one call per step

A server that collects waiting requests and runs them as one batch makes a request that arrives while a batch runs
wait for the whole batch; a stream takes it in at the next step, so the denoiser always runs the largest batch the
waiting work allows. Every member keeps its own sampler, timesteps, texts, starting noise, guidance, attention maps,
previews and interrupt (``engine.Denoising``); a step stacks the members' batch rows, each with its own timestep,
into one denoiser call per text length. A cell's image is the image it gets alone up to the rounding of another
batch size (see ``engine.run``); a stream of one member makes exactly what ``run`` makes.

Members share the image size and the guidance scale (a distilled model's denoiser reads the scale itself); their
steps, samplers, prompt readings and baselines may differ. Why by hand: diffusers' pipelines run one request's batch
from its first step to its last, and no library batches diffusion requests at different steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch

from negprompt import attention
from negprompt.comparison import Comparison
from negprompt.engine import (
    MAX_CELLS,
    Denoising,
    Job,
    StepCallback,
    StepInput,
    _call_by_length,
    _Chunk,
    _interrupting,
    _Progress,
    finish,
    prepare,
)
from negprompt.errors import InputError
from negprompt.families import family_of
from negprompt.loading import Loaded
from negprompt.plan import ComparisonSpec


@dataclass(eq=False)
class Member:
    """One comparison in a stream. ``tag`` is the caller's (the stream never reads it); ``most_cells`` the most
    cells denoised in one call with its own (its ``Comparison.max_batch_used``)."""

    job: Job
    denoising: Denoising
    interrupt: Callable[[], None] | None = None
    tag: object = None
    most_cells: int = 0

    @property
    def cells(self) -> int:
        return len(self.job.spec.cells)

    @property
    def steps_left(self) -> int:
        return len(self.denoising.timesteps) - self.denoising.step


def shared_settings(spec: ComparisonSpec) -> tuple:
    """What every member of one stream shares: the image size and the guidance scale."""
    return spec.height, spec.width, spec.guidance_scale


class Stream:
    """Comparisons denoised together on one loaded pipeline (see the module doc). Not thread-safe: one thread adds
    and steps."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.members: list[Member] = []
        self.separate = False  # set after running out of memory: each member gets its own call from then on
        self._calls: dict[int, Callable] = {}  # rows -> the denoiser call for that many rows

    def __len__(self) -> int:
        return len(self.members)

    @property
    def cells(self) -> int:
        return sum(m.cells for m in self.members)

    def add(self, spec: ComparisonSpec, *, callback: StepCallback | None = None, preview_every: int = 0,
            attention_maps: bool = False, interrupt: Callable[[], None] | None = None, max_cells: int = MAX_CELLS,
            tag: object = None) -> Member:
        """Check and prepare ``spec`` (``InputError`` as ``run`` gives it) and take it in at the next step."""
        if interrupt is not None and not callable(interrupt):
            raise InputError("interrupt", interrupt, "interrupt must be callable")
        job = prepare(self.pipe, spec, max_cells=max_cells, callback=callback, preview_every=preview_every,
                      attention_maps=attention_maps)
        if self.members and shared_settings(job.spec) != shared_settings(self.members[0].job.spec):
            raise InputError("spec", shared_settings(job.spec),
                             f"a stream runs one size and guidance scale {shared_settings(self.members[0].job.spec)}"
                             f"; this spec has {shared_settings(job.spec)}")
        chunk = _Chunk(job.spec.cells, job.seed_latents, job.family.pipe._execution_device)
        member = Member(job, Denoising(job, chunk, _Progress(callback, job.spec.steps, preview_every)), interrupt,
                        tag)
        self.members.append(member)
        return member

    @torch.no_grad()
    def step(self) -> list[tuple[Member, Comparison | Exception]]:
        """One step of every member, in one denoiser call per text length (a member whose texts differ in length
        at this step, or every member after an out-of-memory error, gets its own). Returns the members that ended:
        finished (their ``Comparison``, decoded), or stopped by their interrupt, their callback or an error."""
        ended: list[tuple[Member, Comparison | Exception]] = []
        live = []
        for member in self.members:
            try:
                if member.interrupt is not None:
                    member.interrupt()
                live.append((member, member.denoising.inputs()))
            except Exception as error:  # its caller went away, its deadline passed, or it could not go on
                ended.append((member, error))
        for bunch in self._bunches(live):
            for (member, _), (out, together) in zip(bunch, self._outputs(bunch, ended)):
                if out is None:
                    continue
                try:
                    member.denoising.advance(out)
                    member.most_cells = max(member.most_cells, together)
                    if member.denoising.done:
                        ended.append((member, self._finished(member)))
                except Exception as error:
                    ended.append((member, error))
        gone = {id(member) for member, _ in ended}
        self.members = [m for m in self.members if id(m) not in gone]
        return ended

    def _bunches(self, live: list[tuple[Member, StepInput]]) -> list[list[tuple[Member, StepInput]]]:
        """The members that share one call: those whose rows read texts of one length, by length; the rest (and
        all after running out of memory) alone."""
        if self.separate:
            return [[pair] for pair in live]
        together: dict[tuple, list] = {}
        alone = []
        for member, step in live:
            if len(step.groups) == 1:
                _, text, pooled = step.groups[0]
                together.setdefault((text.shape[1], pooled is None), []).append((member, step))
            else:
                alone.append([(member, step)])
        return [*together.values(), *alone]

    def _outputs(self, bunch, ended: list) -> list[tuple[torch.Tensor | None, int]]:
        """For each member of ``bunch``: the denoiser's output for its rows (None for a member that ended, added to
        ``ended``) and the cells of the call that made it."""
        try:
            with _interrupting(self._pipe(), _together([m.interrupt for m, _ in bunch])):
                together = sum(member.cells for member, _ in bunch)
                return [(out, together) for out in self._call(bunch)]
        except torch.OutOfMemoryError as error:
            if len(bunch) == 1:
                ended.append((bunch[0][0], error))
                return [(None, 0)]
            self.separate = True
            if torch.device(self._pipe()._execution_device).type == "cuda":
                torch.cuda.empty_cache()
            return [out for pair in bunch for out in self._outputs([pair], ended)]
        except Exception as error:  # every member's own interrupt's error where it has one, else this error
            for member, _ in bunch:
                ended.append((member, _own_error(member, error)))
            return [(None, 0)] * len(bunch)

    def _call(self, bunch) -> list[torch.Tensor]:
        if len(bunch) == 1:
            member, step = bunch[0]
            job = member.job
            with attention.capturing(job.capture) if job.capture is not None else nullcontext(), \
                    attention.steering(job.steer) if job.steer is not None else nullcontext():
                return [_call_by_length(self._denoiser_call(job, member.denoising.rows), step.groups,
                                        step.denoiser_input, step.t, job.capture, step.watched, job.steer,
                                        step.steered)]
        job = bunch[0][0].job
        sizes = [member.denoising.rows for member, _ in bunch]
        device = bunch[0][1].denoiser_input.device
        model_input = torch.cat([step.denoiser_input for _, step in bunch])
        t = torch.cat([torch.as_tensor(step.t, device=device, dtype=torch.float32).reshape(1).expand(n)
                       for (_, step), n in zip(bunch, sizes)])
        text = torch.cat([step.groups[0][1] for _, step in bunch])
        pooled = None if bunch[0][1].groups[0][2] is None else torch.cat([step.groups[0][2] for _, step in bunch])
        captures = _Captures(bunch)
        steer = _merged_steering(bunch, text.shape[1])
        with attention.capturing(captures) if captures.parts else nullcontext(), \
                attention.steering(steer) if steer is not None else nullcontext():
            out = self._denoiser_call(job, len(model_input))(model_input, t, text, pooled)
        return list(out.split(sizes))

    def _denoiser_call(self, job: Job, rows: int) -> Callable:
        if rows not in self._calls:
            spec = job.spec
            self._calls[rows] = job.family.denoiser_call(spec.height, spec.width, rows, spec.guidance_scale,
                                                         job.table.dtype, job.family.pipe._execution_device,
                                                         buckets=job.runtime.buckets)
        return self._calls[rows]

    def _pipe(self):
        return self.pipe.pipe if isinstance(self.pipe, Loaded) else self.pipe

    @staticmethod
    def _finished(member: Member) -> Comparison:
        result = finish(member.job, member.denoising.latents, member.cells, member.denoising.twins, member.interrupt)
        return replace(result, max_batch_used=member.most_cells)


@dataclass
class _Captures:
    """The attention-map captures of a joint call's members, each fed its own rows (a ``Capture`` to the wrapper)."""

    bunch: list
    parts: list = field(default_factory=list)  # (capture, first row, rows)

    def __post_init__(self):
        start = 0
        for member, step in self.bunch:
            capture, rows = member.job.capture, member.denoising.rows
            if capture is not None:
                capture.watch(step.watched)
                self.parts.append((capture, start, rows))
            start += rows

    def add(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        for capture, start, rows in self.parts:
            if capture.rows:
                capture.add(attn, hidden_states[start:start + rows], encoder_hidden_states[start:start + rows])


def _merged_steering(bunch, text_tokens: int) -> attention.Steering | None:
    """One steering for a joint call: every member's steered rows, renumbered to the joint batch."""
    rows, start = {}, 0
    for member, step in bunch:
        for row, (method, negative) in step.steered.items():
            rows[start + row] = (method, start + negative if isinstance(negative, int) else negative)
        start += member.denoising.rows
    if not any(member.job.steer is not None for member, _ in bunch):
        return None
    steer = attention.Steering()
    steer.watch(rows, text_tokens)
    return steer


def _together(interrupts: Sequence[Callable[[], None] | None]) -> Callable[[], None] | None:
    """An interrupt for a call that several members share: it stops the call only when every member's own
    interrupt would (the others' rows are still wanted); None when no member has one."""
    if any(interrupt is None for interrupt in interrupts):
        return None

    def interrupt():
        first = None
        for own in interrupts:
            try:
                own()
            except Exception as error:
                first = first or error
            else:
                return
        raise first

    return interrupt


def _own_error(member: Member, error: Exception) -> Exception:
    """The exception that ended ``member`` in a failed call: its own interrupt's, where it has one that raises."""
    if member.interrupt is not None:
        try:
            member.interrupt()
        except Exception as own:
            return own
    return error


def run_many(pipe, specs: Sequence[ComparisonSpec], *, max_cells: int = MAX_CELLS,
             callbacks: Sequence[StepCallback | None] | None = None, preview_every: int = 0,
             attention_maps: bool = False, interrupt: Callable[[], None] | None = None) -> list[Comparison]:
    """Run ``specs`` (one image size and guidance scale) together in one ``Stream``, all from the start: one
    ``Comparison`` per spec, as ``run`` would return it for that spec alone (its own cells, order, rows,
    references, settings, infotexts, warnings, attention maps and previews) up to the rounding of a larger batch;
    only its timings and ``max_batch_used`` (the cells of all specs) tell that it ran with others. ``callbacks[k]``
    gets spec k's steps and previews; ``max_cells`` caps the cells of all specs together; the first error of any
    spec is raised."""
    specs = list(specs)
    if not specs or not all(isinstance(s, ComparisonSpec) for s in specs):
        raise InputError("specs", specs, "run_many needs a list of one or more ComparisonSpecs")
    if callbacks is not None and len(callbacks) != len(specs):
        raise InputError("callbacks", len(callbacks), f"{len(callbacks)} callbacks for {len(specs)} specs")
    total = sum(len(s.cells) for s in specs)
    if total > max_cells:
        raise InputError("specs", total, f"{total} cells in all; at most max_cells={max_cells} run together")
    side = family_of(pipe.pipe if isinstance(pipe, Loaded) else pipe).default_side()
    specs = [replace(s, height=s.height or side, width=s.width or side) for s in specs]
    stream = Stream(pipe)
    members = [stream.add(spec, callback=callbacks[k] if callbacks else None, preview_every=preview_every,
                          attention_maps=attention_maps, interrupt=interrupt, max_cells=max_cells)
               for k, spec in enumerate(specs)]
    outcomes: dict[int, Comparison] = {}
    while stream:
        for member, outcome in stream.step():
            if isinstance(outcome, Exception):
                raise outcome
            outcomes[id(member)] = outcome
    return [outcomes[id(m)] for m in members]
