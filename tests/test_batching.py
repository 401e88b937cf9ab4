"""Continuous batching (``negprompt.batching``): comparisons that join a running stream between steps get their own
images, the ones they get alone; a stream of one is ``run`` exactly; what one member does never stops another."""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest
import torch

from negprompt.batching import Stream, run_many
from negprompt.engine import run
from negprompt.errors import InputError
from negprompt.guidance import NAG
from negprompt.plan import negatives_spec

TOLERANCE = 2  # of 255: the rounding of a UNet run at another batch size (see negprompt.engine.run)
PROMPT = "portrait photo of a man"


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def spec(negatives, seed, steps=4, **kwargs):
    return negatives_spec(PROMPT, negatives, [seed], model="tiny", steps=steps, guidance_scale=7.5, **kwargs)


def drain(stream: Stream) -> dict:
    """Step ``stream`` to its end; each member's outcome by member id, with the step it ended at."""
    outcomes, step = {}, 0
    while stream:
        step += 1
        for member, outcome in stream.step():
            outcomes[id(member)] = (outcome, step)
    return outcomes


def test_a_stream_of_one_makes_exactly_what_run_makes(tiny_sd):
    alone = run(tiny_sd, spec(["hat", "glasses"], 3))
    stream = Stream(tiny_sd)
    member = stream.add(spec(["hat", "glasses"], 3), attention_maps=True)
    (result, _), = drain(stream).values()
    assert member.most_cells == 3
    for a, b in zip(alone.cells, result.cells):
        assert max_diff(a.image, b.image) == 0, "A stream of one member must make run's images, pixel for pixel."
    assert [c.parameters for c in alone.cells] == [c.parameters for c in result.cells]


def test_a_comparison_that_joins_mid_run_gets_the_images_it_gets_alone(tiny_sd):
    """B joins after A's second step: from then on one call per step holds both, each row at its own timestep;
    B keeps going after A has finished. Each gets its own cells, equal to running alone (another sampler and
    other steps included)."""
    first = spec(["hat"], 5, steps=6)
    second = spec(["glasses", "mustache"], 9, steps=5, sampler="Euler")
    stream = Stream(tiny_sd)
    a = stream.add(first)
    stream.step()
    stream.step()
    b = stream.add(second)
    outcomes = drain(stream)
    (result_a, ended_a), (result_b, ended_b) = outcomes[id(a)], outcomes[id(b)]
    assert (ended_a, ended_b) == (4, 5), "A ends after its 6 steps (4 more), B after its own 5."
    assert a.most_cells == b.most_cells == 5, "While both ran, each step was one call with all 5 cells."
    for joined, own in ((result_a, run(tiny_sd, first)), (result_b, run(tiny_sd, second))):
        assert [c.spec for c in joined.cells] == [c.spec for c in own.cells]
        assert joined.settings == own.settings
        for x, y in zip(joined.cells, own.cells):
            assert max_diff(x.image, y.image) <= TOLERANCE, "A cell that ran beside others is its image alone."


def test_each_member_keeps_its_own_previews_and_attention_maps(tiny_sd):
    seen = {0: [], 1: []}
    specs = [spec(["hat"], 1), spec(["glasses", "hat"], 2)]
    results = run_many(tiny_sd, specs, callbacks=[lambda d, t, p, k=k: seen[k].append((d, t, p)) for k in (0, 1)],
                       preview_every=1, attention_maps=True)
    for k, (s, result) in enumerate(zip(specs, results)):
        assert [d for d, _, _ in seen[k]] == [1, 2, 3, 4] and {t for _, t, _ in seen[k]} == {4}
        assert all(len(p) == len(s.cells) for _, _, p in seen[k][:-1]), "Previews of its own cells only."
        alone = run(tiny_sd, s, attention_maps=True)
        assert len(result.attention_maps) == len(s.cells)
        for mine, own in zip(result.attention_maps, alone.attention_maps):
            assert (mine is None) == (own is None)
            if own is not None:
                assert np.abs(mine - own).max() < 0.02, "Its attention maps are the ones it gets alone."
        assert result.max_batch_used == 5


def test_a_member_whose_caller_left_ends_alone(tiny_sd):
    class Gone(Exception):
        pass

    left = {"now": False}

    def interrupt():
        if left["now"]:
            raise Gone("the caller went away")

    stream = Stream(tiny_sd)
    a = stream.add(spec(["hat"], 1, steps=5), interrupt=interrupt)
    b = stream.add(spec(["hat"], 2, steps=5))
    stream.step()
    left["now"] = True
    ended = stream.step()
    assert [(m, type(o)) for m, o in ended] == [(a, Gone)], "Only the member whose caller left ends."
    outcomes = drain(stream)
    assert [c.seed for c in outcomes[id(b)][0].cells] == [2, 2]


def test_nag_cells_steer_their_own_rows_beside_others(tiny_sd):
    steered = spec(["hat"], 4, guidance=NAG())
    together = run_many(tiny_sd, [spec(["glasses"], 6), steered])
    alone = run(tiny_sd, steered)
    for x, y in zip(together[1].cells, alone.cells):
        assert max_diff(x.image, y.image) <= TOLERANCE, "NAG steers the rows of its own cells, wherever they sit."


def test_members_of_another_size_are_refused_by_name(tiny_sd):
    stream = Stream(tiny_sd)
    stream.add(spec(["hat"], 1))
    with pytest.raises(InputError, match="size and guidance scale"):
        stream.add(negatives_spec(PROMPT, ["hat"], [1], model="tiny", steps=4, guidance_scale=3.0))
    with pytest.raises(InputError, match="max_cells"):
        run_many(tiny_sd, [spec(["hat"], 1), spec(["hat"], 2)], max_cells=3)


def test_out_of_memory_beside_others_runs_each_member_alone(tiny_sd, monkeypatch):
    """A joint call that runs out of memory is made again one member at a time, and every later step too."""
    stream = Stream(tiny_sd)
    a, b = stream.add(spec(["hat"], 1)), stream.add(spec(["glasses"], 2))
    real = Stream._call

    def call(self, bunch):
        if len(bunch) > 1:
            raise torch.OutOfMemoryError("too many rows")
        return real(self, bunch)

    monkeypatch.setattr(Stream, "_call", call)
    outcomes = drain(stream)
    assert stream.separate
    assert a.most_cells == 2 and b.most_cells == 2
    for member, s in ((a, spec(["hat"], 1)), (b, spec(["glasses"], 2))):
        result = outcomes[id(member)][0]
        assert all(max_diff(x.image, y.image) == 0 for x, y in zip(result.cells, run(tiny_sd, s).cells))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_memory_a_step_frees_is_kept_for_the_next_step():
    """On the CPU a batch's activations are blocks of megabytes; once kept, allocating them again a step later
    faults in no new pages (before, every step faulted in each block afresh)."""
    from negprompt.devices import keep_freed_memory

    assert keep_freed_memory(), "On glibc, mallopt takes the settings."
    torch.empty(4 << 20).fill_(1.0)  # the first time, the pages come from the system

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    before = faults()
    for _ in range(20):
        torch.empty(4 << 20).fill_(1.0)  # 16 MB, allocated and freed
    pages = 20 * (16 << 20) // 4096
    assert faults() - before < pages / 10, (  # returned to the system, they faulted in 36,861 pages here
        f"20 allocations of 16 MB ({pages:,} pages) must mostly reuse the kept pages: {faults() - before:,} faults.")


def test_cells_with_guidance_off_are_one_trajectory_made_once(tiny_sd):
    """At guidance scale 1 a cell follows its positive row alone: cells with the same seed and positive prompt get
    one batch row between them and the same image, bit for bit, decoded once."""
    from dataclasses import replace

    from negprompt.engine import Denoising, _Chunk, _Progress, prepare

    base = spec(["hat", "glasses"], 3)
    off = replace(base, cells=tuple(replace(c, guidance_scale=1.0) if c.negative == "hat" else c
                                    for c in base.cells))
    twice = replace(off, cells=(*off.cells, replace(off.cells[1], negative="mustache", label="- mustache")))
    job = prepare(tiny_sd, twice)
    denoising = Denoising(job, _Chunk(job.spec.cells, job.seed_latents, torch.device("cpu")), _Progress(None, 4, 0))
    assert denoising.rows == 2 + 1 + 2, "Baseline and glasses: both branches; hat and mustache at 1: one row."
    assert denoising.twins == [0, 1, 2, 1]
    images = [c.image for c in run(tiny_sd, twice).cells]
    assert max_diff(images[1], images[3]) == 0, "Two cells with guidance off on one seed are one image."
    assert max_diff(images[1], images[0]) > 0, "The baseline at 7.5 is another image."
    assert max_diff(images[1], run(tiny_sd, off).cells[1].image) <= TOLERANCE, "Each is the cell run without twin."
