"""What each term of a long negative does on its own, compared against the baseline."""

from negprompt.axes import Axis, over_terms, per_term

AXIS = Axis(
    name="terms-alone", label="Each term alone", order=20, flag="--terms-alone", sweep_name="terms-alone",
    build=over_terms("terms-alone", "terms_alone_spec"), long_negative=True, per_seed=per_term,
    help="each term of the single --negative alone, compared against the baseline",
    explanation=(
        "What does each word do on its own? Each picture uses just one word of the negative prompt, from the same "
        "starting noise as the picture with no negative prompt. Compare each with that first picture."),
)
