"""Guidance methods side by side: each negative through several ways of using it (CFG, Perp-Neg, NAG, ...)."""

from negprompt.axes import Axis, Values, listed
from negprompt.errors import InputError


def method(argument, value):
    """A guidance method: command-line text (``"cfg-rescale:0.7"``, ``negprompt.guidance.parse_method``), a name,
    or a config object (``{"method": "nag", "scale": 3}``)."""
    from negprompt.guidance import GuidanceMethod, method_from_dict, parse_method

    if isinstance(value, GuidanceMethod):
        return value
    return parse_method(value, argument) if isinstance(value, str) else method_from_dict(value, argument)


def build(prompt, negatives, seeds, *, values=(), windows=None, other_positive=None, **settings):
    from negprompt.plan import methods_spec

    if not values:
        raise InputError("methods", [], "name at least one guidance method")
    methods = [method(f"methods[{i}]", v) for i, v in enumerate(values)]
    return methods_spec(prompt, negatives, seeds, methods, windows=windows, other_positive=other_positive,
                        **settings)


AXIS = Axis(
    name="methods", label="Guidance methods", order=50, flag="--guidance-methods", sweep_name="methods",
    build=build,
    # NAG only where the model's attention can be steered (``negprompt.verdicts.fit_to_model`` leaves it out)
    values=Values(config_key="methods", metavar="M1,M2,...", parse=listed(method, "guidance_methods"),
                  check=method, app=("cfg", "perp-neg", "cfg-rescale:0.7", "nag")),
    help="one cell per guidance method for each negative: cfg, perp-neg, cfg-rescale, neg-strength, nag; "
         "NAME:VALUE sets the method's parameter (e.g. cfg-rescale:0.5)",
    explanation=(
        "Different recipes for using the negative prompt. Ordinary guidance pushes the picture away from the "
        "negative prompt; Perp-Neg only pushes away from the part of it that does not overlap with your prompt; "
        "rescaling tames colors that get too strong; NAG pushes away inside the model's attention, which also "
        "works on fast few-step models. Same noise, same words, different recipe."),
)
