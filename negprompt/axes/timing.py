"""When a negative acts: each negative switched on from several fractions of the steps."""

import math

from negprompt.axes import Axis, Values, listed, windowed
from negprompt.axes import number as read_number
from negprompt.errors import InputError, shown


def start(argument, value):
    """A start fraction of the steps, from 0 to 1 (a number, or its text)."""
    number = read_number(argument, value, "--timing")
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
            or not 0 <= number <= 1:
        raise InputError(argument, shown(value), f"{argument}={shown(value)} must be a fraction of the steps from "
                                                 "0 to 1")
    return float(number)


def build(prompt, negatives, seeds, *, values=(), windows=None, other_positive=None, **settings):
    from negprompt.plan import timing_spec

    if windowed(windows):
        raise InputError("timing", list(values), "timing sets each negative's start itself: write the negatives "
                                                 "without @windows")
    return timing_spec(prompt, negatives, seeds, list(values), other_positive=other_positive, **settings)


AXIS = Axis(
    name="timing", label="When it acts (timing)", order=40, flag="--timing", sweep_name="timing", build=build,
    values=Values(config_key="timing", metavar="S1,S2,...", parse=listed(start, "starts"), check=start,
                  app=(0.0, 0.2, 0.4, 0.6)),
    help="one cell per start fraction for each negative: the negative acts from that fraction of the steps to the "
         "end (0 = the plain negative)",
    explanation=(
        "When does a negative prompt act? A picture is made in steps, from noise to detail. Here the negative "
        "prompt is switched on only from a later step: 0 means from the start, 0.5 from halfway. Starting late "
        "often still removes the object, and changes less of everything else."),
)
