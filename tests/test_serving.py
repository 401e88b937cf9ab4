"""Serving many requests: compatible waiting requests run as one batch and each caller gets its own cells; the cost
of a request is measured at its size, whatever ran before; a deadline stops a run inside a long step."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from negprompt.app.form import Form, build_request
from negprompt.app.settings import AppSettings
from negprompt.errors import InputError

TOLERANCE = 2  # of 255: the rounding of a UNet run at another batch size (see negprompt.engine.run)


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def model_free() -> None:
    """Wait until no run holds the model or waits for it (an earlier test's served app may still be finishing, or
    handing over, a run its caller left): admission measures only a model nobody else is using."""
    from negprompt.app.runner import GENERATION_LOCK

    def busy() -> list[str]:
        runs = [t.name for t in threading.enumerate() if t.name == "negprompt-compare" and t.is_alive()]
        return runs + (["the generation lock"] if GENERATION_LOCK.locked() else [])

    waited = time.time() + 300
    while busy() and time.time() < waited:
        time.sleep(0.05)
    assert not busy(), f"An earlier test's run still holds or waits for the model after 5 minutes: {busy()}"


def finished(events):
    from negprompt.app.runner import Reused, Step

    last = [e for e in events if not isinstance(e, Step)][-1]
    return last.result if isinstance(last, Reused) else last


def test_waiting_requests_run_as_one_batch_and_each_gets_its_own_cells(tiny_sd_folder):
    """Three requests wait while the model is busy; the two with the same model, size and guidance scale run in one
    UNet batch per step (their steps and samplers may differ), the third (another guidance scale) alone; each
    caller gets exactly its own cells, equal to what it gets running alone."""
    from negprompt.app.runner import GENERATION_LOCK, Runner, Step

    model = str(tiny_sd_folder)
    settings = AppSettings(device="cpu", preview_every=1, model=model, models=(model,))
    runner = Runner(settings)
    forms = [Form(prompt="portrait photo of a man", negatives=((0, "hat"), (1, "glasses")), seed=3, steps=3,
                  model=model),
             Form(prompt="portrait photo of a woman", negatives=((0, "glasses"),), seed=7, steps=4, model=model,
                  scheduler="Euler"),
             Form(prompt="portrait photo of a man", negatives=((0, "hat"),), seed=3, steps=4, guidance=5,
                  model=model)]
    requests = [build_request(settings, f) for f in forms]
    got: dict[int, list] = {}

    def client(i):
        got[i] = list(runner.generate(requests[i]))

    with GENERATION_LOCK:  # someone else's comparison holds the model while the three arrive
        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
    for thread in threads:
        thread.join(120)
    results = [finished(got[i]) for i in range(3)]
    assert results[0].max_batch_used == results[1].max_batch_used == 5, \
        "The two requests with the same settings (3 + 2 cells) must run in one batch."
    assert results[2].max_batch_used == 2, "Another guidance scale: another run."
    for i, result in enumerate(results):
        request = requests[i]
        assert [c.spec.negative for c in result.cells] == ["", *request.negatives], f"Client {i} gets its own cells."
        assert {c.seed for c in result.cells} == set(request.seeds)
        assert result.settings.prompt == request.prompt and result.spec.steps == request.steps
        assert [c.index for c in result.cells] == list(range(len(result.cells)))
        assert [c.reference for c in result.cells] == [None] + [0] * len(request.negatives)
        previews = [e.previews for e in got[i] if isinstance(e, Step) and e.previews is not None]
        assert previews and all(len(p) == len(result.cells) for p in previews), "Previews of its own cells only."
        assert len(result.previews[0]) == len(result.cells)
    alone = Runner(replace(settings, batch_requests=False))
    for i in range(3):
        own = finished(alone.generate(requests[i]))
        assert own.max_batch_used == len(own.cells)
        for a, b in zip(results[i].cells, own.cells):
            assert max_diff(a.image, b.image) <= TOLERANCE, "A batched cell is the cell its request makes alone."
        assert [v and v.status for v in results[i].verdicts] == [v and v.status for v in own.verdicts]


def test_one_caller_going_away_does_not_stop_the_others(tiny_sd_folder):
    from negprompt.app.runner import GENERATION_LOCK, Runner

    model = str(tiny_sd_folder)
    settings = AppSettings(device="cpu", preview_every=0, model=model, models=(model,))
    runner = Runner(settings)
    forms = [Form(prompt="portrait photo of a man", negatives=((0, "hat"),), seed=s, steps=6, model=model)
             for s in (1, 2)]
    streams = [runner.generate(build_request(settings, f)) for f in forms]
    kept: list = []
    with GENERATION_LOCK:
        done = threading.Thread(target=lambda: kept.extend(streams[1]))
        done.start()
        gone = threading.Thread(target=lambda: next(streams[0]))
        gone.start()
        time.sleep(1.0)
    gone.join(60)
    streams[0].close()  # the first caller leaves after its first step
    done.join(120)
    result = finished(kept)
    assert [c.seed for c in result.cells] == [2, 2], "The caller who stayed gets its whole result."


@pytest.mark.parametrize("join", [True, False])
def test_a_request_that_arrives_during_a_run_joins_it_only_when_asked(tiny_sd_folder, join):
    """Continuous batching (``NEGPROMPT_BATCH_JOIN=1``): a request that arrives while another runs does not wait for
    that run to end; it joins at the next step (one UNet batch holds both), and ends after its own steps. By default
    it waits for the run to end, and then runs."""
    from negprompt.app.runner import Runner, Step

    model = str(tiny_sd_folder)
    settings = AppSettings(device="cpu", preview_every=0, model=model, models=(model,), batch_join=join)
    runner = Runner(settings)
    long, short = (build_request(settings, Form(prompt="portrait photo of a man", negatives=((0, "hat"),), seed=s,
                                                steps=n, model=model)) for s, n in ((1, 40), (2, 3)))
    model_free()
    events: dict[str, list] = {"long": [], "short": []}

    def client(name, request):
        for event in runner.generate(request):
            events[name].append((time.monotonic(), event))

    first = threading.Thread(target=client, args=("long", long))
    first.start()
    while not any(isinstance(e, Step) for _, e in events["long"]):
        time.sleep(0.01)
    second = threading.Thread(target=client, args=("short", short))
    second.start()
    second.join(120)
    first.join(120)
    steps_then = max(e.done for at, e in events["long"] if isinstance(e, Step) and at <= events["short"][-1][0])
    short_result, long_result = events["short"][-1][1], events["long"][-1][1]
    if join:
        assert steps_then < 40, "The short request finished while the long one was still running."
        assert short_result.max_batch_used == long_result.max_batch_used == 4, "Both ran in one batch per step."
    else:
        assert steps_then == 40, "Without joining, the short request runs after the long one."
        assert short_result.max_batch_used == long_result.max_batch_used == 2, "Each ran in its own batch."
    alone = finished(Runner(replace(settings, batch_requests=False)).generate(short))
    assert all(max_diff(a.image, b.image) <= TOLERANCE for a, b in zip(short_result.cells, alone.cells))


# ---------------------------------------------------------------------------------------------------------------
# Cost


@pytest.mark.slow
def test_a_1024_timing_request_is_refused_at_once_with_an_estimate():
    """One step at 1024x1024 on the embedded model costs thousands of times one at 64x64 on a CPU: measured on the
    way up (64, 128, ... as far as each next size is bounded to measure quickly), the timing request is refused
    before it runs, with its estimate."""
    from negprompt.app.runner import GENERATION_LOCK, Runner
    from negprompt.loading import EMBEDDED_MODEL, EMBEDDED_NAME

    if not (EMBEDDED_MODEL / "model_index.json").is_file():
        pytest.skip("the embedded model is not in this checkout")
    settings = AppSettings(device="cpu", budget_s=60)
    runner = Runner(settings)
    big = build_request(settings, Form(prompt="portrait photo of a man", negatives=((0, "hat"),), steps=1,
                                       size="1024x1024", model=EMBEDDED_NAME, mode="When it acts (timing)"))
    model_free()
    start = time.perf_counter()
    with pytest.raises(InputError) as error:
        runner.admit(big)
    assert time.perf_counter() - start < 60, "Refused at once, not after running."
    assert error.value.argument == "cost" and "would take" in str(error.value), str(error.value)
    # Whether the sizes were measured on the way up (from 64) or the refusal rests on the cautious prior depends on
    # what earlier tests of the same process loaded; either way the request must be refused at once.
    assert not GENERATION_LOCK.locked()


def test_a_large_size_is_refused_on_its_bound_from_a_smaller_measured_one(tiny_sd_folder):
    """Measured at 64x64 only: 1024x1024 costs at least 256 times as much per row (linear in the pixels), so a
    request whose lower bound is over the budget is refused, with "at least"; a linear estimate is never taken
    as an upper bound."""
    from negprompt.app.runner import Runner
    from negprompt.cost import StepCost

    model = str(tiny_sd_folder)
    settings = AppSettings(device="cpu", model=model, models=(model,), budget_s=60)
    runner = Runner(settings)
    runner.sides[model] = 64
    with runner.costs._lock:
        runner.costs._known[(model, "cpu", 64, 64)] = StepCost(call_s=0.01, row_s=0.02, decode_s=0.02)
    big = build_request(settings, Form(prompt="a man", negatives=((0, "hat"),), steps=1, size="1024x1024",
                                       model=model, mode="When it acts (timing)"))
    low, high = runner.bounds(big)
    assert low < high and high >= 200 * low, "Unmeasured: bounds from linear to quadratic growth."
    with pytest.raises(InputError, match="would take at least"):
        runner.admit(big, measure=False)
    small = build_request(settings, Form(prompt="a man", negatives=((0, "hat"),), steps=1, size="64x64",
                                         model=model))
    assert runner.admit(small, measure=False) == pytest.approx(0.01 + 0.02 * 4 + 0.02 * 2), \
        "Measured: one step (one call over 4 rows), 2 images decoded."


def test_admission_does_not_depend_on_what_ran_before(tiny_sd_folder):
    from negprompt.app.runner import Runner

    model = str(tiny_sd_folder)
    settings = AppSettings(device="cpu", model=model, models=(model,), preview_every=0, budget_s=1000,
                           deadline_s=1000)  # measuring up to 128 is always allowed, however loaded the machine
    runner = Runner(settings)
    request = build_request(settings, Form(prompt="a man", negatives=((0, "hat"), (1, "glasses")), steps=30,
                                           size="128x128", model=model))
    model_free()
    first = runner.admit(request)
    assert runner.costs.known(model, "cpu", 128, 128) is not None, "Measured while the model was idle."
    answers = []
    for steps in (2, 2, 20, 20):
        other = build_request(settings, Form(prompt="a man", negatives=((0, "hat"),), steps=steps, seed=steps,
                                             size="128x128", model=model))
        finished(runner.generate(other, previews=False))
        answers.append(runner.admit(request))
    assert answers == [first] * 4, f"The same request must get the same estimate after any history: {answers}"


def test_the_cost_is_measured_at_the_size_and_bounded_above_it(tiny_sd):
    from negprompt.app.runner import Costs, ladder

    assert ladder(1024, 768) == [(128, 96), (256, 192), (512, 384), (1024, 768)]
    costs = Costs(cap_s=1e9)
    costs.measure_up_to(tiny_sd, "tiny", "cpu", 128, 128)
    low, high = costs.bounds("tiny", "cpu", 128, 128)
    assert low == high and costs.known("tiny", "cpu", 64, 64) is not None, "Measured at 64 on the way to 128."
    low, high = costs.bounds("tiny", "cpu", 512, 512)
    assert low.row_s == pytest.approx(high.row_s / 16), "From 128 to 512: at least 16x, at most 256x per row."


def test_the_cost_of_an_sdxl_step_is_measured(tiny_sdxl):
    from negprompt.cost import measure

    cost = measure(tiny_sdxl, 64, 64)
    assert cost.row_s > 0 and cost.decode_s > 0 and cost.seconds(4, 2, 2) > 0


# ---------------------------------------------------------------------------------------------------------------
# Deadline inside a step


def test_a_deadline_stops_a_slow_model_inside_its_step(tiny_sd_folder):
    """A UNet whose every block takes 0.5 s: with a 0.3 s deadline the run stops inside its first step, long before
    the step (and its decode) would end."""
    from negprompt.app.runner import DeadlineExceeded, Runner, load

    model = str(tiny_sd_folder)
    settings = AppSettings(device="cpu", model=model, models=(model,), deadline_s=0.3, preview_every=0)
    pipe = load(model, "cpu")
    calls = []

    def slow(module, args):
        calls.append(type(module).__name__)
        time.sleep(0.5)

    hooks = [block.register_forward_pre_hook(slow) for block in (*pipe.unet.down_blocks, *pipe.unet.up_blocks)]
    try:
        request = build_request(settings, Form(prompt="a man", negatives=((0, "hat"),), steps=2, model=model))
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            list(Runner(settings).generate(request, previews=False))
        took = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    blocks = len(pipe.unet.down_blocks) + len(pipe.unet.up_blocks)
    assert len(calls) < blocks, f"Stopped inside the first step ({len(calls)} of its {blocks} slow blocks ran)."
    assert took < 0.5 * blocks, f"Stopped after {took:.1f} s, before one step's {0.5 * blocks:.1f} s."


def test_an_interrupt_stops_the_engine_before_the_decode(tiny_sd):
    from negprompt.engine import compare

    decodes = []
    hook = tiny_sd.vae.decoder.register_forward_pre_hook(lambda *a: decodes.append(1))
    steps_done = []

    def interrupt():
        if len(steps_done) == 2:
            raise RuntimeError("stop")

    try:
        with pytest.raises(RuntimeError, match="stop"):
            compare(tiny_sd, "a man", ["hat"], seed=1, steps=2, callback=lambda d, *_: steps_done.append(d),
                    interrupt=interrupt)
    finally:
        hook.remove()
    assert steps_done == [1, 2] and not decodes, "Stopped after the last step, before the VAE decode."
    assert torch.is_grad_enabled()
