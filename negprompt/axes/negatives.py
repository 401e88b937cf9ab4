"""The plain comparison: per seed row, the baseline and one cell per negative (and the other positive prompt)."""

from negprompt.axes import Axis


def build(prompt, negatives, seeds, *, values=(), windows=None, other_positive=None, **settings):
    from negprompt.plan import negatives_spec

    return negatives_spec(prompt, negatives, seeds, windows=windows, other_positive=other_positive, **settings)


AXIS = Axis(
    name="negatives", label="Compare negatives", order=0, flag=None, sweep_name="plain", build=build,
    help="",
    explanation=("Each picture uses one of your negative prompts, all from the same starting noise as the first "
                 "picture, which has no negative prompt. Whatever differs from it was done by the negative prompt."),
    per_seed=lambda negatives, values: [1 + len(negatives)],
)
