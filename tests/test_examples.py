"""Every example the app offers shows its lesson on the shipped embedded model, as the attribute detector reads it:
the baseline shows the attribute, the negative prompt named after it removes it, and "... without X" (the seed
article's other positive) still shows it. scripts/choose_examples.py picks the seeds; rerun it when the model changes.
"""

from __future__ import annotations

import pytest

from negprompt.app.examples import load_examples
from negprompt.loading import EMBEDDED_MODEL

EXAMPLES = load_examples()
needs_model = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")


def test_the_app_offers_examples():
    assert EXAMPLES, "examples.json must offer at least one example (run scripts/choose_examples.py)."
    for example in EXAMPLES:
        assert example.negatives, f"{example.label}: an example teaches at least one negative prompt."


@needs_model
@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.label for e in EXAMPLES])
def test_every_offered_example_shows_its_lesson(example):
    from negprompt.app.settings import AppSettings
    from negprompt.difference import image_statistics
    from negprompt.engine import compare
    from negprompt.loading import load_pipeline
    from negprompt.portrait_model.detector import detect
    from negprompt.portrait_model.portraits import BINARY

    pipe = load_pipeline(device="cpu")
    steps = AppSettings().default_steps  # what the form runs when an example is picked
    result = compare(pipe, example.prompt, list(example.negatives), seed=example.seed, steps=steps,
                     guidance_scale=7.5)
    records = detect([c.image for c in result.cells])
    for i, attribute in enumerate(example.negatives, start=1):
        if attribute not in BINARY:  # a negative embedding (portrait-bad): its lesson is a sharper, cleaner image
            sharpness = [image_statistics(result.cells[j].image)["sharpness"] for j in (0, i)]
            assert sharpness[1] > sharpness[0], \
                f"{example.label}: the negative {attribute!r} must sharpen seed {example.seed}: {sharpness}"
            assert all((records[0][y] >= 0.5) == (records[i][y] >= 0.5) for y in BINARY), \
                f"{example.label}: the negative {attribute!r} must leave every attribute of seed {example.seed}"
            continue
        assert records[0][attribute] >= 0.5, \
            f"{example.label}: the baseline of seed {example.seed} must show {attribute!r}: {records[0]}"
        assert records[i][attribute] < 0.5, \
            f"{example.label}: the negative {attribute!r} must remove it on seed {example.seed}: {records[i]}"
    if example.other:
        other = compare(pipe, example.other, [], seed=example.seed, steps=steps, guidance_scale=7.5)
        record = detect([other.cells[0].image])[0]
        attribute = example.negatives[0]
        assert record[attribute] >= 0.5, \
            f"{example.label}: '{example.other}' must still show {attribute!r} on seed {example.seed}: {record}"
