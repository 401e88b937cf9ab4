"""How strongly guidance pushes: the same negatives at several guidance scales, each against its own baseline.

At scale 1, classifier-free guidance is off (``eps = eps_neg + 1 * (eps_pos - eps_neg) = eps_pos``): the negative
does nothing, which is the lesson of the first column. Above it, the push away from the negative grows with the
scale, and so does everything else guidance does (contrast, saturation); each negative is therefore compared
against the baseline at its own scale, never against one at another scale.
"""

from dataclasses import replace

from negprompt.axes import Axis, Values, listed, no_other_positive, number
from negprompt.errors import InputError


def scale(argument, value):
    """A guidance scale from 0 to ``LIMITS.max_guidance`` (a number, or its text)."""
    from negprompt.plan import check_scale

    return check_scale(argument, number(argument, value, "--guidance-scales"))


def scales_spec(prompt, negatives, seeds, scales, *, model, windows=None, **settings):
    """Per seed row, for each scale: the baseline at that scale, then each negative at that scale compared against
    it. The comparison's own ``guidance_scale`` is the first scale's (what a distilled model's guidance embedding
    and the manifest's summary read)."""
    from negprompt.plan import negatives_spec

    if not scales:
        raise InputError("scales", [], "name at least one guidance scale")
    settings.pop("guidance_scale", None)
    base = negatives_spec(prompt, negatives, seeds, model=model, windows=windows, guidance_scale=scales[0],
                          **settings)
    cells = []
    for row in range(len(seeds)):
        members = [c for c in base.cells if c.row == row]
        for g in scales:
            first = len(cells)
            cells.append(replace(members[0], guidance_scale=g, label=f"{members[0].label} (guidance {g:g})"))
            cells += [replace(c, guidance_scale=g, reference=first, label=f"{c.label} (guidance {g:g})")
                      for c in members[1:]]
    return replace(base, cells=tuple(cells), mode="scales")


def build(prompt, negatives, seeds, *, values=(), windows=None, other_positive=None, **settings):
    no_other_positive(AXIS, other_positive)
    return scales_spec(prompt, negatives, seeds, [scale(f"scales[{i}]", v) for i, v in enumerate(values)],
                       windows=windows, **settings)


AXIS = Axis(
    name="scales", label="Guidance scales", order=70, flag="--guidance-scales", sweep_name="scales", build=build,
    values=Values(config_key="scales", metavar="G1,G2,...", parse=listed(scale, "scales"), check=scale,
                  app=(1.0, 3.0, 7.5, 15.0)),
    per_seed=lambda negatives, values: [len(values) * (1 + len(negatives))],
    help="each negative (and the baseline) at several guidance scales, each compared against the baseline at its "
         "own scale (at 1 guidance is off and no negative acts)",
    explanation=(
        "How hard does the negative prompt push? The guidance scale sets how far each step moves away from the "
        "negative prompt and toward yours. At 1 nothing is pushed, so the negative prompt does nothing; higher "
        "scales remove more, and also change colors and contrast. Each picture is compared with the picture "
        "without a negative prompt at the same scale."),
)
