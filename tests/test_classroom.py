"""A classroom: 30 clients each send a 1+3 comparison at the app's defaults within 10 s, against one app on this
machine (loopback only). None may be refused or lost, each must get its own result, and the queue must tell them
their place. benchmarks/classroom.py runs the same and prints the timings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from served_app import serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

pytestmark = pytest.mark.slow


def test_thirty_students_at_once(tmp_path_factory):
    from classroom import classroom

    from negprompt.app.settings import AppSettings

    defaults = AppSettings()
    with serve(tmp_path_factory, max_steps=defaults.max_steps, default_steps=defaults.default_steps,
               preview_every=defaults.preview_every, budget_s=defaults.budget_s) as (url, _model):
        figures = classroom(url, clients=30, within=10)
    print(figures)
    assert figures["refused"] == 0, f"No student may be turned away: {figures}"
    assert figures["lost"] == 0, f"Every student must get a result: {figures}"
    assert figures["cross_talk"] == 0, f"Every result must be its own request's: {figures}"
    assert figures["saw_queue_position"] > 0, f"Waiting students must see their place in the queue: {figures}"

