"""Library chatter off, for the command-line tools (``negprompt``, ``negprompt sweep``, the benchmarks): one place
they all import, so that none of them imports another to get it."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Keep library chatter (loading bars, optional-dependency notices) out of a command-line tool's output."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
