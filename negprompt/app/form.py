"""The form: what a user typed, checked against the app's caps, as a ``Request``; and the one table that turns an
``InputError.argument`` into the form label it concerns.

    from negprompt.app.form import Form, build_request, field_label
    request = build_request(AppSettings(), Form(prompt="portrait photo of a man", negatives=("mustache",)))

Nothing is coerced: a seed of 3.5, "3" or True is refused, never rounded or parsed, and every refusal is an
``InputError`` whose ``argument`` names the field the way the library does (``"steps"``, ``"negatives[1]"``).
Values arrive as JSON from the API and from the form's widgets alike, so the checks are the same for both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from negprompt import axes
from negprompt.app.settings import AppSettings
from negprompt.errors import LIMITS, InputError, base_argument
from negprompt.loading import EMBEDDED_NAME
from negprompt.loras import check_prompt
from negprompt.plan import check_text
from negprompt.schedulers import scheduler_names

# InputError.argument (without its index) -> the form's label. "{n}" is the 1-based box number.
LABELS = {
    "prompt": "Prompt",
    "positive": "Prompt",
    "negatives": "Negative prompt {n}",
    "negative": "Negative prompt {n}",
    "negative_prompts": "Negative prompts",
    "max_cells": "Negative prompts",
    "other_positive": "Another positive prompt",
    "seed": "Seed",
    "seeds": "Seed",
    "rows": "Seeds (rows)",
    "steps": "Steps",
    "cost": "Steps",
    "guidance_scale": "Guidance scale",
    "size": "Size",
    "height": "Size",
    "width": "Size",
    "scheduler": "Scheduler",
    "model": "Model",
    "mode": "Mode",
    "timing": "Mode",
    "methods": "Mode",
    "reading": "Prompt reading",
}

# The app's modes, one per comparison axis (``negprompt.axes``): the label a user picks -> the spec mode. The first
# is the default.
MODES = {axis.label: axis.name for axis in axes.ALL}
READINGS = {  # the Prompt reading radio: label -> the spec's reading (``negprompt.reading``)
    "plain (the text as it is)": "plain",
    "A1111 ((x:1.3), BREAK, [a:b:0.4], 75-token chunks)": "a1111",
}


def field_label(argument: str, boxes: tuple[int, ...] | None = None) -> str:
    """The form label for an ``InputError.argument``: ``"steps"`` -> ``"Steps"``, ``"negatives[1]"`` -> ``"Negative
    prompt 2"`` (``boxes`` maps a request's negatives back to the boxes they came from, which may skip empty ones).
    """
    name, index = base_argument(argument)
    label = LABELS.get(name, "Input")
    if "{n}" not in label:
        return label
    if index is None:
        return "Negative prompts"
    box = boxes[index] if boxes is not None and index < len(boxes) else index
    return label.format(n=box + 1)


@dataclass(frozen=True)
class Form:
    """The form's values as they arrive (JSON types); ``negatives`` holds (box index, text) pairs."""

    prompt: object = ""
    negatives: tuple = ()
    seed: object = 0
    rows: object = 1
    steps: object = 20
    guidance: object = 7.5
    size: object = "auto"
    scheduler: object = "Default"
    model: object = ""
    other: object = ""
    mode: object = "negatives"  # a value of MODES (or its label)
    reading: object = "plain"  # a value of READINGS (or its label)


@dataclass(frozen=True)
class Request:
    """One comparison, as the app will run it."""

    prompt: str
    negatives: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    width: int | None  # None: the model's own size
    height: int | None
    scheduler: str
    model: str  # a Hub id, a folder, or EMBEDDED_NAME
    other_positive: str = ""  # another positive prompt shown beside, with no negative ("" none)
    boxes: tuple[int, ...] = field(default=())  # the form box each negative came from (for error labels)
    mode: str = "negatives"  # a value of MODES
    reading: str = "plain"  # a value of READINGS: how the prompts are read
    vectors: int = 0  # in the X-ray mode: the vectors of the embedding named by the first negative

    @property
    def cells(self) -> int:
        """Images the comparison makes (every cell of its spec)."""
        return len(request_spec(self).cells)

    @property
    def embedded(self) -> bool:
        return self.model == EMBEDDED_NAME


SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no text encoder, file or JSON takes it alone
SIZE_PATTERN = re.compile(r"([0-9]{1,5}) *[x×*] *([0-9]{1,5})")


def parse_size(text) -> tuple[int | None, int | None]:
    """"512x512" -> (512, 512) as (width, height); "" or "auto" -> (None, None), the model's own size."""
    if not isinstance(text, str):
        raise InputError("size", text, f"{text!r} must be a text like 512x512 (width x height), or 'auto'")
    text = text.strip().lower()
    if text in ("", "auto"):
        return None, None
    match = SIZE_PATTERN.fullmatch(text)
    if not match:
        raise InputError("size", text[:40], f"{text[:40]!r} must look like 512x512 (width x height), or 'auto'")
    return int(match[1]), int(match[2])


def whole_number(argument: str, value, low: int, high: int, *, hint: str = "") -> int:
    """``value`` as an int if it is a whole number in [low, high]; a JSON 3.0 counts, 3.5, "3" and True do not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(argument, value, f"{_show(value)} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(argument, value, f"{_show(value)} must be a finite number")
    if value != int(value):
        raise InputError(argument, value, f"{_show(value)} must be a whole number")
    if not low <= value <= high:
        raise InputError(argument, value, f"{_show(value)} must be from {low} to {high}{hint}")
    return int(value)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def negatives_from_list(value) -> tuple[tuple[int, str], ...]:
    """The API's ``negative_prompts``: a list of strings, every one kept (an empty one is an error)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InputError("negative_prompts", value, f"{_show(value)} must be a list of texts")
    return tuple(enumerate(value))


def negatives_from_boxes(texts, count) -> tuple[tuple[int, str], ...]:
    """The form's negative-prompt boxes: the first ``count`` (the visible ones), empty boxes skipped."""
    shown = texts[:count] if isinstance(count, int) and not isinstance(count, bool) else texts
    return tuple((i, t) for i, t in enumerate(shown) if not (isinstance(t, str) and not t.strip()))


def form_from_api(prompt="", negative_prompts=(), seed=0, steps=20, guidance_scale=7.5, size="auto", model="",
                  rows=1, scheduler="Default", mode="negatives") -> Form:
    """The ``Form`` of a /compare (or, with ``mode``, /explore) call, its values as they arrived; raises
    ``InputError`` for a negative_prompts that is not a list."""
    return Form(prompt=prompt, negatives=negatives_from_list(negative_prompts), seed=seed, rows=rows, steps=steps,
                guidance=guidance_scale, size=size, scheduler=scheduler, model=model, mode=mode)


def check_form_text(argument: str, value, *, allow_empty: bool = False) -> None:
    """``negprompt.plan.check_text`` with messages written for a form (the label is shown beside them)."""
    if not isinstance(value, str):
        raise InputError(argument, value, f"{_show(value)} is not text")
    if len(value) > LIMITS.max_text_chars:  # the boxes set no maxlength: a browser never cuts a text unseen
        raise InputError(argument, len(value), f"{len(value):,} characters; at most {LIMITS.max_text_chars:,}")
    lone = SURROGATE.search(value)
    if lone:
        raise InputError(argument, lone[0].encode("unicode_escape").decode(),
                         f"character {lone.start() + 1} is a lone surrogate "
                         f"({lone[0].encode('unicode_escape').decode()}), not a character: retype the text")
    check_prompt(argument, value)  # a <lora:...> tag: a LoRA changes the model, not this prompt
    try:
        check_text(argument, value, allow_empty=allow_empty)
    except InputError:
        raise InputError(argument, value, "has no visible text (only spaces or invisible characters)") from None


def request_spec(request: Request, *, model: str | None = None, baseline: str = "empty"):
    """The comparison spec of ``request`` in its mode (pure: nothing loads). Term modes read the first negative box
    as the long negative, whose terms are separated by commas. ``model`` and ``baseline`` as the loaded pipeline
    names them (defaults: the request's model, the empty prompt). A term mode with a second negative is refused
    at that box, never run on the first alone."""
    axis = axes.get(request.mode)
    if axis.takes_name:  # the X-ray: the embedding named in the first box, its vectors counted by build_request
        negatives, values = [], (request.negatives[0].lower(), request.vectors)
    else:
        negatives, values = list(request.negatives), axis.values.app if axis.values is not None else ()
    return axis.build(request.prompt, negatives, list(request.seeds), values=values, model=model or request.model,
                      steps=request.steps, guidance_scale=request.guidance_scale, height=request.height,
                      width=request.width, sampler=request.scheduler, baseline=baseline,
                      other_positive=request.other_positive or None, reading=request.reading)


def check_mode(mode) -> str:
    """A mode's spec name from a value or a label of ``MODES``."""
    mode = MODES.get(mode, mode) if isinstance(mode, str) else mode
    if mode in (None, ""):
        return "negatives"
    if mode not in MODES.values():
        raise InputError("mode", mode, f"{_show(mode)} is not one of {', '.join(MODES)} (or, by name: "
                                       f"{', '.join(MODES.values())})")
    return mode


def check_reading(reading) -> str:
    """A reading's spec name from a value or a label of ``READINGS``."""
    reading = READINGS.get(reading, reading) if isinstance(reading, str) else reading
    if reading in (None, ""):
        return "plain"
    if reading not in READINGS.values():
        raise InputError("reading", reading, f"{_show(reading)} is not one of {', '.join(READINGS.values())}")
    return reading


def build_request(settings: AppSettings, form: Form) -> Request:
    """Check the form against the app's caps and return the request; raises ``InputError``."""
    check_form_text("prompt", form.prompt)
    negatives = form.negatives
    if len(negatives) > settings.max_negatives:
        raise InputError("negative_prompts", len(negatives), f"{len(negatives)} given; this app compares at most "
                                                             f"{settings.max_negatives}")
    for box, text in negatives:
        check_form_text(f"negatives[{box}]", text)
    other = form.other if form.other is not None else ""
    check_form_text("other_positive", other, allow_empty=True)
    other = other.strip()
    if not negatives and not other:
        raise InputError("negatives[0]", "", "type a negative prompt to compare with the baseline")
    seed = whole_number("seed", form.seed, 0, LIMITS.max_seed)
    rows = whole_number("rows", form.rows, 1, settings.max_seeds)
    if seed + rows - 1 > LIMITS.max_seed:
        raise InputError("seed", seed, f"seeds {seed} to {seed + rows - 1} go past {LIMITS.max_seed}")
    steps = whole_number("steps", form.steps, 1, settings.max_steps, hint=" on this app")
    guidance = _guidance(form.guidance)
    width, height = _size(settings, form.size)
    scheduler = form.scheduler if form.scheduler not in (None, "") else "Default"
    if scheduler not in scheduler_names():
        raise InputError("scheduler", scheduler, f"{_show(scheduler)} is not one of {', '.join(scheduler_names())}")
    model = _check_model(settings, form.model)
    texts = tuple(text.strip() for _, text in negatives)
    mode = check_mode(form.mode)
    vectors = _xray_vectors(settings, model, texts, negatives) if mode == "xray" else 0
    request = Request(prompt=form.prompt.strip(), negatives=texts, seeds=tuple(range(seed, seed + rows)),
                      steps=steps, guidance_scale=float(guidance), width=width, height=height, scheduler=scheduler,
                      model=model, other_positive=other, boxes=tuple(box for box, _ in negatives), mode=mode,
                      reading=check_reading(form.reading), vectors=vectors)
    if mode != "negatives" and request.cells > settings.max_cells:
        first = f"negatives[{request.boxes[0]}]" if request.boxes else "negatives[0]"
        raise InputError(first if axes.get(mode).long_negative else "max_cells", request.cells,
                         f"{rows} seed(s) x this mode's images per seed = {request.cells} images; this app makes at "
                         f"most {settings.max_cells}. Use fewer seeds, terms or negatives.")
    if request.cells > settings.max_cells:
        raise InputError("max_cells", request.cells,
                         f"{rows} seed(s) x ({len(texts)} negatives + baseline{' + other positive' if other else ''})"
                         f" = {request.cells} images; this app makes at most {settings.max_cells}")
    return request


def _guidance(guidance) -> float:
    """The form's guidance scale: a finite number above 1 (where negative prompts act) and at most the cap."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) \
            or (isinstance(guidance, float) and not math.isfinite(guidance)):
        raise InputError("guidance_scale", guidance, f"{_show(guidance)} is not a finite number")
    if not 1 < guidance <= LIMITS.max_guidance:
        raise InputError("guidance_scale", guidance,
                         f"{_show(guidance)} must be above 1 (at 1 or below, classifier-free guidance is off and "
                         f"negative prompts do nothing; 5 to 9 is usual) and at most {LIMITS.max_guidance:g}")
    return float(guidance)


def _size(settings: AppSettings, size) -> tuple[int | None, int | None]:
    """(width, height) of the form's size; (None, None) for the model's own. Each side from 8 to the app's cap."""
    width, height = parse_size(size)
    for value in (width, height):
        if value is not None and not 8 <= value <= settings.max_size:
            raise InputError("size", f"{width}x{height}", f"{width}x{height}: each side must be from 8 to "
                                                          f"{settings.max_size} pixels on this app")
    return width, height


def _xray_vectors(settings: AppSettings, model: str, texts, negatives) -> int:
    """The X-ray mode's embedding (named in the first negative box) must be one the model loads with here."""
    from negprompt.embeddings import vector_count

    files = settings.embedding_files(model)
    name = texts[0].lower() if texts else ""
    argument = f"negatives[{negatives[0][0]}]" if negatives else "negatives[0]"
    if name not in files:
        raise InputError(argument, name, f"{_show(name)} is not a negative embedding of this model; X-ray one of: "
                                         f"{', '.join(files) or 'none (set NEGPROMPT_EMBEDDINGS)'}")
    return vector_count(files[name])


def _check_model(settings: AppSettings, model) -> str:
    if model is None or model == "":
        return settings.model
    if not isinstance(model, str):
        raise InputError("model", model, f"{_show(model)} must be a model name")
    check_form_text("model", model)
    model = model.strip()
    if model not in settings.models and not settings.allow_custom_model:
        raise InputError("model", model, f"{_show(model)} is not offered here; choose one of "
                                         f"{', '.join(settings.models)}")
    return model


# -----------------------------------------------------------------------------------------------------------------
# What the embedded model's tokenizer knows


WORD = re.compile(r"[A-Za-z]+")


def known_words(tokenizer, candidates) -> list[str]:
    """The candidate words the tokenizer holds as one token each (for the embedded model: the words it was trained
    on; any other word is spelled out in pieces the model never learned)."""
    return [w for w in candidates if w.isalpha() and _one_token(tokenizer, w)]


def unknown_words(tokenizer, text: str) -> list[str]:
    """The words of ``text`` that the tokenizer has no single token for, in order, once each."""
    words = dict.fromkeys(w.lower() for w in WORD.findall(text or ""))
    return [w for w in words if not _one_token(tokenizer, w)]


def _one_token(tokenizer, word: str) -> bool:
    return len(tokenizer(word.lower(), add_special_tokens=False).input_ids) == 1
