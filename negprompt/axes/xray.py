"""What is inside a negative embedding: the whole embedding, then each of its vectors alone."""

from negprompt.axes import Axis, no_other_positive
from negprompt.errors import InputError


def build(prompt, negatives, seeds, *, values=(), windows=None, other_positive=None, **settings):
    """``values``: (embedding name, its vector count). The count is known once the model has loaded; before that
    (None) the spec holds the name as the one negative, so every other setting is checked first."""
    from negprompt.embeddings import xray_spec
    from negprompt.plan import negatives_spec

    name, vectors = values
    if negatives:
        raise InputError("xray", name, "--xray makes its own cells: give no --negative with it")
    no_other_positive(AXIS, other_positive)
    if vectors is None:
        return negatives_spec(prompt, [name], seeds, **settings)
    return xray_spec(prompt, name, vectors, seeds, **settings)


AXIS = Axis(
    name="xray", label="X-ray an embedding", order=30, flag="--xray", takes_name=True, build=build,
    help="X-ray a loaded negative embedding: the whole embedding, then each of its vectors alone as the negative "
         "(one cell per vector), and each vector's nearest vocabulary words",
    explanation=(
        "What is inside a negative embedding? An embedding such as EasyNegative is not a word but a few learned "
        "vectors that a name stands for. The first picture has no negative prompt, the next uses the whole "
        "embedding, and each other picture uses one of its vectors alone. Below, each vector's nearest words in "
        "the model's vocabulary."),
)
