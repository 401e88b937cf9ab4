"""Caption wrapping in the grid takes time linear in the text: a long unbroken word (a pasted hash, a URL) must not
hold the interpreter for seconds. A font that counts the characters it measures makes the check exact."""

from __future__ import annotations

import pytest

from negprompt.grid import wrap


class CountingFont:
    """7 pixels per character; counts every character measured."""

    def __init__(self):
        self.measured = 0

    def getlength(self, text: str) -> float:
        self.measured += len(text)
        return 7.0 * len(text)


@pytest.mark.parametrize("text", ["x" * 10_000, "word " * 2_000, ("y" * 300 + " ") * 30, "a\n" * 3_000])
def test_wrapping_measures_each_character_a_bounded_number_of_times(text):
    font = CountingFont()
    lines = wrap(text, font, 100)
    assert all(7 * len(line) <= 100 for line in lines), "Every line must fit the width."
    assert "".join(lines).replace(" ", "") == text.replace(" ", "").replace("\n", ""), "No character may be lost."
    assert font.measured <= 6 * len(text) + 100, \
        f"Wrapping {len(text)} characters measured {font.measured}: the work must grow linearly with the text."


def test_a_character_wider_than_the_cell_still_gets_its_own_line():
    assert wrap("WWW", CountingFont(), 5) == ["W", "W", "W"]
