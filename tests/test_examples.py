"""Every example the app offers shows its lesson on the shipped embedded model, with little collateral, run as the
app runs it (the example's seeds as rows, the app's default steps, guidance 7.5), as the attribute detector and the
collateral measures of ``negprompt.portrait_model.detector`` read it:

- a removal: on the row's baseline (a clean portrait) the attribute shows at probability >= SURE, the negative named
  after it leaves it at <= 1 - SURE; outside the region where the drawing code can put that attribute the mean
  change is at most MAX_OUTSIDE percent and no 8x8 patch changes more than MAX_PATCH; the detector reads every other
  attribute the same; background, skin and hair colours read the same;
- the seed article's example ("... without X" as another positive prompt): over its rows "... without X" draws X on
  more rows than the plain prompt, the negative on none; each row whose baseline shows X is a clean removal, each row
  whose baseline lacks X is kept by the negative (same bounds) while "... without X" draws X; the label's counts
  are the measured ones.

scripts/choose_examples.py picks the seeds with the same functions and bounds; rerun it when the model changes.
"""

from __future__ import annotations

import pytest

from negprompt.app.examples import load_examples
from negprompt.loading import EMBEDDED_MODEL, EMBEDDED_NAME
from negprompt.portrait_model.detector import MAX_OUTSIDE, MAX_PATCH, SURE
from negprompt.portrait_model.portraits import BINARY

EXAMPLES = load_examples()
ATTRIBUTE_EXAMPLES = [e for e in EXAMPLES if set(e.negatives) <= set(BINARY)]
GUIDANCE = 7.5  # the form's default guidance scale
needs_model = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")


def test_the_app_offers_examples():
    assert EXAMPLES, "examples.json must offer at least one example (run scripts/choose_examples.py)."
    for example in EXAMPLES:
        assert example.negatives, f"{example.label}: an example teaches at least one negative prompt."
        assert 1 <= example.rows <= 4, f"{example.label}: {example.rows} rows; the app shows 1 to 4 seeds."


def test_every_example_button_shows_its_whole_title():
    from negprompt.app.examples import MAX_TITLE

    for example in EXAMPLES:
        assert len(example.button) <= MAX_TITLE, \
            f"Gradio cuts an example's button text past about 60 characters: give {example.label!r} a short title"


def test_the_seed_articles_example_is_offered_with_several_rows():
    article = [e for e in EXAMPLES if e.other == f"{e.prompt} without mustache" and e.negatives == ("mustache",)]
    assert article, "The seed article's example (negative 'mustache' beside '... without mustache') must be offered."
    assert article[0].prompt == "portrait photo of a man", article[0]
    assert article[0].rows >= 2, \
        f"One seed cannot show 'more mustaches' and a removal at once: {article[0].rows} row(s)."
    assert EXAMPLES[0] == article[0], "The seed article's example comes first."


def _run(example):
    from negprompt.app.settings import AppSettings
    from negprompt.engine import compare
    from negprompt.loading import load_pipeline
    from negprompt.plan import negatives_spec
    from negprompt.portrait_model.detector import detect

    steps = AppSettings().default_steps  # what the form runs when an example is picked
    spec = negatives_spec(example.prompt, list(example.negatives), range(example.seed, example.seed + example.rows),
                          model=EMBEDDED_NAME, steps=steps, guidance_scale=GUIDANCE,
                          other_positive=example.other or None)
    images = [c.image for c in compare(load_pipeline(device="cpu"), spec).cells]
    records = detect(images)
    width = len(images) // example.rows
    return [(example.seed + r, images[r * width:(r + 1) * width], records[r * width:(r + 1) * width])
            for r in range(example.rows)]


@needs_model
@pytest.mark.slow
@pytest.mark.parametrize("example", ATTRIBUTE_EXAMPLES, ids=[e.label for e in ATTRIBUTE_EXAMPLES])
def test_every_offered_example_shows_its_lesson_with_little_collateral(example):
    from negprompt.portrait_model.detector import removal_row_faults, unchanged_row_faults

    rows = _run(example)
    if not example.other:
        for seed, images, records in rows:
            faults, _ = removal_row_faults(images, records, example.negatives)
            assert not faults, (f"{example.label}: on seed {seed} each negative must remove its attribute "
                                f"(baseline >= {SURE}, cell <= {1 - SURE:.1f}) with little collateral (outside the "
                                f"region <= {MAX_OUTSIDE}%, any patch <= {MAX_PATCH}%, other attributes, "
                                f"background, skin and hair kept): {faults}")
        return
    attribute = example.negatives[0]
    plain = sum(records[0][attribute] >= 0.5 for _, _, records in rows)
    negative = sum(records[1][attribute] >= 0.5 for _, _, records in rows)
    without = sum(records[2][attribute] >= 0.5 for _, _, records in rows)
    assert without > plain and negative == 0, \
        (f"{example.label}: over seeds {example.seed}-{example.seed + example.rows - 1}, '{example.other}' must draw "
         f"{attribute} on more rows than the plain prompt and the negative on none: without {without}, plain "
         f"{plain}, negative {negative}")
    assert f"on {without} of {example.rows}, the plain prompt on {plain}, the negative '{attribute}' on {negative}" \
        in example.label, f"The label must state the measured counts ({without}, {plain}, {negative}): {example.label}"
    removals = 0
    for seed, images, records in rows:
        assert records[2][attribute] >= SURE, \
            f"{example.label}: '{example.other}' must draw {attribute} on seed {seed} (>= {SURE}): {records[2]}"
        if records[0][attribute] >= 0.5:
            removals += 1
            faults, _ = removal_row_faults(images[:2], records[:2], [attribute])
            what = "remove it"
        else:
            faults, _ = unchanged_row_faults(images[:2], records[:2], attribute)
            what = "keep the image (the baseline has none)"
        assert not faults, (f"{example.label}: on seed {seed} the negative '{attribute}' must {what} with little "
                            f"collateral (outside the region <= {MAX_OUTSIDE}%, any patch <= {MAX_PATCH}%, other "
                            f"attributes, background, skin and hair kept): {faults}")
    assert removals, f"{example.label}: at least one row's baseline must show {attribute} for the negative to remove."


EMBEDDING_EXAMPLES = [e for e in EXAMPLES if e not in ATTRIBUTE_EXAMPLES]


@needs_model
@pytest.mark.slow
@pytest.mark.parametrize("example", EMBEDDING_EXAMPLES, ids=[e.label for e in EMBEDDING_EXAMPLES])
def test_the_negative_embedding_example_sharpens_and_keeps_every_attribute(example):
    from negprompt.difference import image_statistics

    for seed, images, records in _run(example):
        for i, name in enumerate(example.negatives, start=1):
            sharpness = [image_statistics(images[j])["sharpness"] for j in (0, i)]
            assert sharpness[1] > sharpness[0], \
                f"{example.label}: the negative {name!r} must sharpen seed {seed}: {sharpness}"
            assert all((records[0][y] >= 0.5) == (records[i][y] >= 0.5) for y in BINARY), \
                f"{example.label}: the negative {name!r} must leave every attribute of seed {seed}"
