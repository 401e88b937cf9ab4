"""What the command-line tools (``negprompt``, ``negprompt sweep``, ``negprompt report``, the benchmarks) share:
library chatter off, and bad arguments reported in one line. One place they all import, so that none of them
imports another to get it (the command line dispatches to the sweep and the report, never the reverse)."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad argument reported as one line (``negprompt: error: ...``) and exit status 2, like every
    other refusal of the command line (argparse prints its usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def quiet_libraries() -> None:
    """Keep library chatter (loading bars, optional-dependency notices) out of a command-line tool's output."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
