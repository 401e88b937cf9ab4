"""The same negative read two ways: as diffusers reads text (plain) and as the A1111 web UI reads it."""

from negprompt.axes import Axis


def build(prompt, negatives, seeds, *, values=(), windows=None, other_positive=None, **settings):
    from negprompt.plan import readings_spec

    return readings_spec(prompt, negatives, seeds, windows=windows, other_positive=other_positive, **settings)


AXIS = Axis(
    name="readings", label="Plain vs A1111 reading", order=60, flag="--compare-readings", sweep_name="readings",
    build=build,
    per_seed=lambda negatives, values: [2 * (1 + len(negatives))],
    help="each negative read plain (the text as it is, cut at 75 tokens) and read as A1111 reads it (weights, "
         "BREAK, 75-token chunks, prompt editing), side by side from the same noise",
    explanation=(
        "Read as written, or read as A1111 reads it? Negative prompts copied from the web often use the Stable "
        "Diffusion web UI's syntax: (worst quality:1.4) means 'worst quality, 1.4 times as strong', BREAK starts a "
        "new block of words, and text longer than 75 tokens is read in blocks instead of being cut. Each negative "
        "is shown twice from the same noise: read plain (the characters as they are, cut at 75 tokens) and read "
        "as A1111 does."),
)
