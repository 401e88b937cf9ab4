"""The app's event handlers, independent of the layout: each takes a ``Form`` (or an ``Outcome``) and yields
``View``s, dicts keyed by the names of the outputs they change (``"status"``, ``"gallery"``, ...). The layout maps
names to components, so no handler depends on the order of an inputs or outputs list.

    views = Views(AppSettings())
    for view in views.run(Form(prompt="portrait photo of a man", negatives=((0, "mustache"),))):
        print(view.get("status"))

A bad form or request yields one view with ``"errors"`` ({form label: message}) and a status line, and leaves the
previous results on screen; it never raises. The API handler (``api``) raises ``FormError`` instead, whose text
starts with the form label ("Steps: ...").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from negprompt.app.form import (
    SURROGATE,
    Form,
    Request,
    build_request,
    field_label,
    known_words,
    request_spec,
    unknown_words,
)
from negprompt.app.models import check_available, tokenizer_for
from negprompt.app.outputs import (
    Detector,
    Outcome,
    divergence_frame,
    explored,
    frame_count,
    frame_items,
    gallery_items,
    output_folder,
    output_root,
    status,
    table,
    write_bundle,
    write_cells,
)
from negprompt.app.runner import Cancelled, DeadlineExceeded, Reused, Runner, Step
from negprompt.app.settings import AppSettings
from negprompt.errors import InputError
from negprompt.loading import EMBEDDED_NAME

log = logging.getLogger(__name__)

View = dict  # output name -> new value
# An API call hands control back to Gradio this often while it runs (a chance to cancel it). Each beat is a message
# through Gradio's queue to the caller: with many calls running together (a class, batched) beats every 0.5 s cost
# the model a sixth of its time on a 2-core CPU (benchmarks/classroom.py: p95 52 s, and 43 s with 5 s beats).
API_BEAT_S = 2.0


def shorten(text: str, limit: int = 240) -> str:
    """A warning for the status line: at most ``limit`` characters (a cut prompt's whole tail would flood it)."""
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


class FormError(Exception):
    """A refusal for API users: "Label: message"."""

    def __init__(self, label: str, message: str):
        super().__init__(f"{label}: {message}")
        self.label = label


class Views:
    """Handlers bound to the app's settings; module state is shared by all users, per-session state is the
    ``Outcome`` the layout keeps in ``gr.State``."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.runner = Runner(settings)
        self.detector = Detector()
        self.files = output_root()  # fixed at build time: Gradio serves from the temp folder it started with

    # -- checking ---------------------------------------------------------------------------------------------------

    def request(self, form: Form) -> Request:
        """The checked request, admitted by cost; raises ``InputError``."""
        request = build_request(self.settings, form)
        check_available(request.model)
        self.runner.admit(request)
        return request

    @staticmethod
    def refusal(error: InputError, request: Request | None = None) -> tuple[str, str]:
        """(form label, message) for an ``InputError``."""
        return field_label(error.argument, request.boxes if request is not None else None), str(error)

    # -- the Compare button -----------------------------------------------------------------------------------------

    def run(self, form: Form, differences: bool = False, progress: Callable | None = None,
            attended: bool = False) -> Iterator[View]:
        """Stream step counts and previews, then the gallery, grid, files and readouts; or the errors."""
        try:
            request = self.request(form)
        except InputError as error:
            yield self._error_view(*self.refusal(error))
            return
        started = time.perf_counter()
        try:
            result = yield from self._previews(request, progress)
            reused = isinstance(result, Reused)
            outcome = self.finish(request, result.result if reused else result)
        except InputError as error:
            yield self._error_view(*self.refusal(error, request))
            return
        except DeadlineExceeded as error:
            yield {"status": f"**Stopped:** {error}. Use fewer steps, seeds or negatives.", "errors": {}}
            return
        except Cancelled:
            return
        except Exception:
            log.exception("comparison failed")
            yield {"status": "**The comparison failed** (an internal error, logged for the app's maintainer). "
                             "Try again, or another model or size.", "errors": {}}
            return
        view = self.show(outcome, differences, attended)
        view["status"] = self._status(outcome, time.perf_counter() - started, reused)
        view["errors"] = {}
        yield view  # the images first; the grid and the zip follow
        outcome = self.bundle(outcome)
        yield {"grid": self.grid(outcome, differences), "download": str(outcome.archive), "outcome": outcome}

    def _previews(self, request: Request, progress: Callable | None):
        """Yield the gallery of previews as the run keeps them (and report its steps to ``progress``); return the
        finished comparison (or its ``Reused`` result)."""
        labels = [cell.label for cell in request_spec(request).cells]
        columns = len(labels) // len(request.seeds)  # images per seed: one row each
        every = max(self.settings.preview_every, 1)  # the plot may keep every step; the gallery shows these
        result = None
        for event in self.runner.generate(request):
            if not isinstance(event, Step):
                result = event
                continue
            if progress is not None:
                progress((event.done, event.total), desc="denoising", unit="steps")
            if event.previews is not None and (event.done % every == 0 or event.done == event.total):
                yield {"gallery": [(image, f"step {event.done}/{event.total} · {label}")
                                   for image, label in zip(event.previews, labels)], "columns": columns}
        return result

    def _status(self, outcome: Outcome, seconds: float, reused: bool) -> str:
        """The status line of a finished comparison, with its warnings."""
        line = status(outcome, seconds)
        if reused:
            line += " The same request had just run: these are its images (the same seed gives the same images)."
        warnings = list(outcome.result.warnings)
        if outcome.readout is None and outcome.request.embedded and self.settings.detector:
            warnings.append("No attribute detector installed: no detector readout.")
        if warnings:
            line += "\n\n" + "\n".join(f"⚠️ {shorten(w)}" for w in warnings)
        return line

    def final(self, form: Form, differences: bool = False) -> View:
        """Everything ``run`` shows once it is done (its views merged), for callers that do not stream."""
        merged: View = {}
        for view in self.run(form, differences):
            merged.update(view)
        return merged

    def _error_view(self, label: str, message: str) -> View:
        return {"status": f"**Check the input:** {label}: {message}", "errors": {label: message}}

    def finish(self, request: Request, result) -> Outcome:
        """The cells' files and the detector readout for a finished comparison: what the session keeps."""
        files = write_cells(result, output_folder(self.files))
        readout = None
        if self.settings.detector and request.embedded:
            readout = self.detector.readout([c.image for c in result.cells])
        return Outcome(request=request, result=result, files=files, readout=readout)

    @staticmethod
    def bundle(outcome: Outcome) -> Outcome:
        """The outcome with its grid file and zip written (beside its cells)."""
        grid, differences, archive = write_bundle(outcome.request, outcome.result, outcome.files[0].parent.parent)
        return replace(outcome, grid_file=grid, differences_file=differences, archive=archive)

    def show(self, outcome: Outcome, differences: bool, attended: bool = False) -> View:
        """What the results column shows for a finished comparison, before its grid and zip are written."""
        found, trimmed = explored(outcome)
        last = frame_count(outcome) - 1
        return {"gallery": gallery_items(outcome, differences, attended), "columns": len(outcome.result.rows[0]),
                "table": table(outcome), "outcome": outcome,
                "infotext": "", "explored": found, "trimmed": trimmed, "scrubber": last,
                "scrubber_steps": list(getattr(outcome.result, "preview_steps", None) or []),
                "frames": frame_items(outcome, last), "curves": divergence_frame(outcome)}

    @staticmethod
    def frame(outcome: Outcome | None, index: int) -> View:
        """Every cell's preview at the ``index``-th kept step (the step scrubber)."""
        return {"frames": frame_items(outcome, index)}

    @staticmethod
    def grid(outcome: Outcome, differences: bool):
        """The grid's file (its download keeps the name and the infotext), or the image before it is written."""
        written = outcome.differences_file if differences else outcome.grid_file
        return str(written) if written is not None else outcome.result.grid(differences=differences)

    def toggle(self, outcome: Outcome | None, differences: bool, attended: bool = False) -> View:
        if outcome is None:
            return {}
        return {"gallery": gallery_items(outcome, differences, attended), "grid": self.grid(outcome, differences)}

    @staticmethod
    def select(outcome: Outcome | None, index: int) -> str:
        """The infotext of the gallery item at ``index``."""
        if outcome is None:
            return ""
        cells = outcome.result.cells
        return cells[index].parameters if 0 <= index < len(cells) else ""

    # -- the /compare API -------------------------------------------------------------------------------------------

    def api(self, form: Form) -> Iterator[tuple[list, dict] | None]:
        """Run one comparison for an API caller, without previews. Yields None every ``API_BEAT_S`` seconds (so that
        a cancelled or disconnected caller stops the run soon after), then (captioned images, manifest). Raises
        ``FormError``."""
        try:
            request = self.request(form)
        except InputError as error:
            raise FormError(*self.refusal(error)) from None
        try:
            last = time.monotonic()
            for event in self.runner.generate(request, previews=False):
                if not isinstance(event, Step):
                    result = event.result if isinstance(event, Reused) else event
                elif time.monotonic() - last > API_BEAT_S:
                    last = time.monotonic()
                    yield None
            outcome = self.finish(request, result)
        except InputError as error:
            raise FormError(*self.refusal(error, request)) from None
        except DeadlineExceeded as error:
            raise FormError("Steps", str(error)) from None
        except Cancelled:
            return
        except Exception:
            log.exception("comparison failed")
            raise FormError("Error", "the comparison failed (an internal error, logged for the app's maintainer)") \
                from None
        manifest = outcome.result.manifest()
        if outcome.readout is not None:
            manifest["detector"] = outcome.readout
        manifest["warnings"] = list(outcome.result.warnings)
        yield gallery_items(outcome, differences=False), manifest

    # -- token counters and the words the embedded model knows --------------------------------------------------------

    @staticmethod
    def token_counter(text, model) -> str:
        """The "12/75 tokens" line under a prompt box; a warning when the text will be cut, and, for the embedded
        model, the words it does not know."""
        from negprompt.prompts import count_tokens

        text = text if isinstance(text, str) else ""
        if SURROGATE.search(text):  # no tokenizer takes half a UTF-16 pair; Compare refuses it at the field
            return "⚠️ a lone surrogate character (half of a UTF-16 pair): retype the text"
        model = model or EMBEDDED_NAME
        tokenizer = tokenizer_for(model) if isinstance(model, str) else None
        if tokenizer is None:
            return f"{len(text.split())} words (this model's tokenizer is not downloaded: no token count)"
        count = count_tokens(tokenizer, text)
        line = f"{count} tokens" if count.fits else \
            f"⚠️ {count} tokens: the encoder reads {count.limit}; cut: *{count.truncated[:200]}*"
        if model == EMBEDDED_NAME:
            unknown = unknown_words(tokenizer, text)
            if unknown:
                line += f" · ⚠️ the portrait model does not know: *{', '.join(unknown[:12])}*"
        return line

    @staticmethod
    def known_words(model=EMBEDDED_NAME) -> list[str]:
        """The words the embedded model was trained on and its tokenizer holds whole."""
        from negprompt.portrait_model.portraits import ALL_WORDS

        tokenizer = tokenizer_for(model) if model == EMBEDDED_NAME else None
        return known_words(tokenizer, ALL_WORDS) if tokenizer is not None else []
