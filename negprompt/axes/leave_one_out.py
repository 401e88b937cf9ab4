"""Which terms of a long negative matter: each term left out in turn, compared against the full negative."""

from negprompt.axes import Axis, over_terms, per_term

AXIS = Axis(
    name="leave-one-out", label="Leave one out", order=10, flag="--leave-one-out", sweep_name="leave-one-out",
    build=over_terms("leave-one-out", "leave_one_out_spec"), long_negative=True, per_seed=per_term,
    help="rank the terms of the single --negative (split on commas): one cell per term with that term left out, "
         "compared against the full negative",
    explanation=(
        "Which words of my negative prompt matter? We split the negative prompt at its commas. The first picture "
        "uses all of it; each other picture leaves out one word. If leaving a word out changes nothing, that word "
        "was doing nothing, and you can delete it. The words are ranked from the one that matters most."),
)
