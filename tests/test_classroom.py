"""A classroom: 30 clients each send a 1+3 comparison at the app's defaults within 10 s, against one app on this
machine (loopback only), which runs waiting requests with the same settings as one batch. None may be refused or
lost, each must get its own result (its manifest, and its images: those its request makes alone), and the queue
must tell them their place. benchmarks/classroom.py runs the same and prints the timings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from served_app import serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

pytestmark = pytest.mark.slow


def test_thirty_students_at_once(tmp_path_factory):
    from classroom import NEGATIVES, PROMPT, classroom, crossed

    from negprompt.app.runner import load
    from negprompt.app.settings import AppSettings
    from negprompt.engine import compare

    defaults = AppSettings()
    assert defaults.batch_requests, "The app batches waiting requests by default."
    with serve(tmp_path_factory, max_steps=defaults.max_steps, default_steps=defaults.default_steps,
               preview_every=defaults.preview_every, budget_s=defaults.budget_s) as (url, model):
        figures = classroom(url, clients=30, within=10)
        records = figures.pop("records")
        print(figures)
        pipe = load(model, "cpu")
        for i in (0, 14, 29):  # three students' requests, alone
            negatives = NEGATIVES[i % 3:] + NEGATIVES[:i % 3]
            alone = compare(pipe, PROMPT, negatives, seed=1000 + i, steps=defaults.default_steps, guidance_scale=7.5)
            reference = {"images": [np.asarray(c.image.convert("RGB"), dtype=np.int16) for c in alone.cells]}
            assert crossed([records[i]], [reference]) == 0, f"Student {i} must get its own request's images."
    assert figures["refused"] == 0, f"No student may be turned away: {figures}"
    assert figures["lost"] == 0, f"Every student must get a result: {figures}"
    assert figures["cross_talk"] == 0, f"Every result must be its own request's: {figures}"
    assert figures["saw_queue_position"] > 0, f"Waiting students must see their place in the queue: {figures}"

