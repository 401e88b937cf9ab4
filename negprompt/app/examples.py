"""The app's built-in examples, read from ``examples.json`` beside this file.

``scripts/choose_examples.py`` writes that file from what the shipped embedded model does (each example's seed is
one where the baseline shows the attribute and the named negative prompt removes it with little else changed, as the
detector and ``negprompt.portrait_model.detector.collateral`` read it), and
``tests/test_examples.py`` checks every example in it; rerun the script whenever the model changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EXAMPLES_FILE = Path(__file__).resolve().parent / "examples.json"
MAX_TITLE = 56  # characters of an example's button: Gradio's example buttons cut labels past about 60


@dataclass(frozen=True)
class Example:
    """A built-in example: a prompt, the negatives it teaches (each named after the attribute it removes), the first
    seed and how many seeds it shows as rows (``seed`` to ``seed + rows - 1``)."""

    label: str  # the lesson, with what was measured; the app lists it under the examples
    prompt: str
    negatives: tuple[str, ...]
    seed: int
    other: str = ""  # another positive prompt shown beside ("... without X"), "" none
    rows: int = 1  # seeds shown as rows: the seed article's lesson ("more X") needs several
    title: str = ""  # the button's text, at most MAX_TITLE characters ("" : the label)

    @property
    def button(self) -> str:
        return self.title or self.label


def load_examples(path: Path = EXAMPLES_FILE) -> list[Example]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return [Example(label=e["label"], prompt=e["prompt"], negatives=tuple(e["negatives"]), seed=e["seed"],
                    other=e.get("other", ""), rows=e.get("rows", 1), title=e.get("title", ""))
            for e in data["examples"]]
