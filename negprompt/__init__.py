"""negprompt: see what a negative prompt does to a diffusion model's image.

    from negprompt import load_pipeline, compare
    result = compare(load_pipeline(), "portrait photo of a man", ["mustache", "glasses"], seed=1)
    result.save("outputs/mustache")

The package, by concern: ``loading`` (models), ``engine`` (the comparison), ``guidance`` (the math),
``comparison``/``grid``/``difference``/``infotext`` (results and files), ``cli`` and ``ui`` (front ends),
``portraits``/``train``/``detector`` (the embedded model). Front ends import the engine, never the reverse.
"""

from negprompt.comparison import Cell, Comparison, Settings
from negprompt.engine import compare
from negprompt.infotext import format_infotext, parse_infotext
from negprompt.loading import EMBEDDED_MODEL, load_pipeline
from negprompt.prompts import TokenCount, count_tokens

__version__ = "0.1.0"
__all__ = [
    "EMBEDDED_MODEL", "Cell", "Comparison", "Settings", "TokenCount", "compare", "count_tokens",
    "format_infotext", "load_pipeline", "parse_infotext",
]
