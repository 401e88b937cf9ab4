"""Where the shipped weights are: the repository's ``assets/`` in a checkout, the package's copy in an installed wheel.

The weights live in ``assets/`` at the repository root; building a wheel maps that folder into the package as
``negprompt/assets`` (see ``setup.py``), so an installed negprompt finds them beside its modules.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parent / "assets"

EMBEDDED_NAME = "negprompt-portraits"  # the embedded model's name, wherever a model is named (light to import)

ASSETS = _CHECKOUT if (_CHECKOUT / "portrait-model").is_dir() else _HERE / "assets"


def asset(name: str) -> Path:
    """The path of ``name`` (e.g. ``"portrait-model"``) under the assets folder in use."""
    return ASSETS / name
