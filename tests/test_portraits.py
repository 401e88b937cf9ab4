"""The procedural portrait data: deterministic, never negating, with the priors its docstring promises."""

from __future__ import annotations

import numpy as np
import pytest

from negprompt.portrait_model.portraits import (
    ALL_WORDS,
    BINARY,
    background_of,
    caption_for,
    draw_portrait,
    portrait_array,
    sample_portraits,
)
from negprompt.tokenizer import build_clip_tokenizer

NEGATIONS = {"without", "no", "not", "never", "none", "nor", "lacking", "free"}


def _draw(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    people = sample_portraits(rng, n)
    return people, portrait_array(people), [caption_for(p, rng) for p in people]


def test_same_seed_same_portraits_and_captions():
    a, b = _draw(7), _draw(7)
    assert a[0] == b[0], "Same seed must draw the same attributes."
    assert np.array_equal(a[1], b[1]), "Same seed must draw identical pixels."
    assert a[2] == b[2], "Same seed must give the same captions."
    assert a[1].shape == (200, 64, 64, 3) and a[1].dtype == np.uint8


@pytest.fixture(scope="module")
def many():
    rng = np.random.default_rng(1)
    people = sample_portraits(rng, 4000)
    return people, [caption_for(p, rng) for p in people]


def test_captions_never_negate_and_use_the_vocabulary(many):
    _, captions = many
    words = {w for c in captions for w in c.replace(",", " , ").split()}
    assert not words & NEGATIONS, f"Captions must never negate, found {words & NEGATIONS}."
    assert words <= set(ALL_WORDS), f"Words outside ALL_WORDS: {words - set(ALL_WORDS)}."


def test_caption_priors(many):
    people, captions = many
    empty = np.mean([c == "" for c in captions])
    tags = np.mean([c != "" and "man" not in c for c in captions])
    assert 0.08 < empty < 0.12, f"About 10% of captions must be empty, got {empty:.3f}."
    assert 0.30 < tags < 0.42, f"Tag-style captions should be 35-40%, got {tags:.3f}."
    for name in ("mustache", "glasses", "hat"):
        present = np.mean([getattr(p, name) for p in people])
        assert 0.46 < present < 0.54, f"{name} must be present half the time, got {present:.3f}."
        unnamed = [getattr(p, name) for p, c in zip(people, captions) if "man" in c and name not in c]
        assert 0.29 < np.mean(unnamed) < 0.38, f"P({name} | not named) should be about 1/3, got {np.mean(unnamed):.3f}"
        named = [getattr(p, name) for p, c in zip(people, captions) if name in c]
        assert all(named), f"A caption naming {name} must only describe a portrait that has it."


def test_every_word_is_one_token():
    tok = build_clip_tokenizer(ALL_WORDS)
    for word in ALL_WORDS:
        assert len(tok(word).input_ids) == 3, f"{word!r} must be a single token (plus BOS and EOS)."
    assert set(BINARY) <= set(ALL_WORDS) and "without" in ALL_WORDS


def test_name_prob_names_a_word_more_often_and_never_an_absent_attribute():
    rng = np.random.default_rng(2)
    people = sample_portraits(rng, 4000)
    captions = [caption_for(p, rng, name_prob={"mustache": 0.8}) for p in people]
    named = [getattr(p, "mustache") for p, c in zip(people, captions) if "mustache" in c]
    assert all(named), "Raising a word's naming probability must still never name an absent attribute."
    sentences = [(p, c) for p, c in zip(people, captions) if "man" in c]
    told = np.mean([("mustache" in c) for p, c in sentences if p.mustache])
    assert 0.74 < told < 0.86, f"A present mustache must be named about 80% of the time, got {told:.3f}."
    unnamed = np.mean([p.mustache for p, c in sentences if "mustache" not in c])
    assert 0.13 < unnamed < 0.21, f"P(mustache | not named) must fall to (1 - q) / (2 - q) = 1/6, got {unnamed:.3f}."
    glasses = np.mean([p.glasses for p, c in sentences if "glasses" not in c])
    assert 0.29 < glasses < 0.38, f"Other words must keep P(X | not named) at 1/3, got {glasses:.3f}."


def test_background_of_reads_a_drawn_portraits_background():
    people = sample_portraits(np.random.default_rng(4), 300)
    assert all(background_of(draw_portrait(p)) == p.background for p in people), \
        "The background measure must read every drawn portrait's background color."
