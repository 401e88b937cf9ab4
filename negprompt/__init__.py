"""negprompt: see what a negative prompt does to a diffusion model's image.

    from negprompt import load_pipeline, compare
    result = compare(load_pipeline(), "portrait photo of a man", ["mustache", "glasses"], seed=1)
    result.save("outputs/mustache")

    from negprompt import ComparisonSpec
    spec = ComparisonSpec.from_dict(json.load(open("outputs/mustache/manifest.json"))["spec"])
    again = compare(load_pipeline(), spec)      # the same images again

The package, by concern: ``plan`` (comparison specs as data), ``engine`` (running a spec), ``guidance`` (the
math, one class per method), ``loading``/``devices``/``speedups``/``schedulers`` (models), ``comparison``/``grid``/
``difference``/``infotext`` (results and files), ``errors`` (bad input as data), ``cli`` and the app (front ends),
``portrait_model`` (the embedded model's data, detector and training). Front ends import the engine, never the reverse.
"""

__version__ = "0.1.0"

# Public names, imported on first use so that `import negprompt` (and the command line's --help) stays instant.
_EXPORTS = {
    "Cell": "negprompt.comparison", "Comparison": "negprompt.comparison", "Settings": "negprompt.comparison",
    "compare": "negprompt.engine", "run": "negprompt.engine",
    "format_infotext": "negprompt.infotext", "parse_infotext": "negprompt.infotext",
    "EMBEDDED_MODEL": "negprompt.loading", "load_pipeline": "negprompt.loading", "load": "negprompt.loading",
    "CellSpec": "negprompt.plan", "ComparisonSpec": "negprompt.plan", "InputError": "negprompt.errors",
    "TokenCount": "negprompt.prompts", "count_tokens": "negprompt.prompts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'negprompt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
