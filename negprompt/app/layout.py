"""The Gradio layout and its wiring: one prompt, several negative prompts, one seed, a labeled grid beside the
no-negative baseline.

    from negprompt.app import build_demo, launch_options
    demo = build_demo()
    demo.queue(max_size=64, default_concurrency_limit=1).launch(**launch_options())

Layout (inputs left, results right; one column on a phone): prompt and negative-prompt rows with token counters, the
words the embedded model knows, seed, examples, advanced options; a status line (queue position and step progress
show there, so previews never hide), the gallery (baseline first, PNG with infotext), the selected image's infotext,
per-cell change scores and what the embedded model's detector sees, the grid and a zip. The Mode radio under the
negative prompts picks a way to explore them (``negprompt.app.form.MODES``), its explanation shown beneath it; the
ranked terms, the trimmed negative and the timing table show under the results.

One public API endpoint, ``/compare``; every other event is private. Handlers live in ``negprompt.app.views`` and
receive their inputs by name (``inputs_kwargs``), never by position.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass

import gradio as gr

from negprompt import axes
from negprompt.app.calls import ENDPOINTS, CountDataItems
from negprompt.app.examples import load_examples
from negprompt.app.form import MODES, READINGS, Form, field_label, form_from_api, negatives_from_boxes
from negprompt.app.runner import WAITING_REQUESTS
from negprompt.app.settings import AppSettings, on_spaces
from negprompt.app.views import FormError, Views
from negprompt.errors import LIMITS, InputError
from negprompt.loading import EMBEDDED_NAME
from negprompt.schedulers import scheduler_names

# The fields inside the Advanced options accordion (closed at start): a refusal about one opens it.
ADVANCED = ("Model", "Steps", "Guidance scale", "Size", "Scheduler", "Seeds (rows)", "Another positive prompt",
            "Prompt reading")
# The step plot's line colors (Tableau 10); its legend is ours, as HTML that wraps on a phone and cuts no name.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
SIZES = ("auto", "64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024", "768x512", "512x768")
PRIVATE = dict(api_visibility="private")
QUICK = dict(queue=False, show_progress="hidden", trigger_mode="always_last", **PRIVATE)
# Up to WAITING_REQUESTS requests at a time leave the queue for the handler: the comparisons run one at a time
# (negprompt.app.runner.GENERATION_LOCK), each run taking every waiting request it can batch with the first.
RUN = dict(concurrency_id="generate", concurrency_limit=WAITING_REQUESTS)

DESCRIPTION = """# negprompt: what does a negative prompt do?
Type one prompt and a few negative prompts. Every image starts from **the same noise** (the same seed); the first
is the **baseline** with no negative prompt, so each other image shows what its negative prompt changed."""

HOW_IT_WORKS = r"""
**Classifier-free guidance.** At every step the model predicts the noise twice: once for your prompt
(\(\epsilon_{pos}\)) and once for the negative prompt (\(\epsilon_{neg}\); the empty prompt when there is none).
The step follows

$$\epsilon = \epsilon_{neg} + g\,(\epsilon_{pos} - \epsilon_{neg})$$

so the image is pushed **towards** the prompt and **away from** the negative prompt, \(g\) (the guidance scale)
times as hard. At \(g \le 1\) the push is gone and negative prompts do nothing; this app keeps \(g\) above 1.

**The baseline** is the same seed with no negative prompt (the empty prompt; zero embeddings for SDXL). Same noise,
same steps: whatever differs from it was done by the negative prompt. The difference maps show where.

**Why "without X" fails.** The text encoder has no good notion of negation: "a man without mustache" puts
*mustache* into the prompt, and you tend to get more mustaches. Try the seed-article example: the positive
"portrait photo of a man" with a negative prompt, beside the positive "portrait photo of a man without ...".
If you see something you do not want, name it in the negative prompt.
"""

STEPS_HELP = """Each image here is the clean picture the model was heading for at that step (its estimate of
the final image). Drag the slider to watch every image form from the same noise. The plot shows, for each image, how
far it is from its reference (the baseline; in *Leave one out*, the full negative prompt) at each step: where a line
leaves zero is when that negative prompt started to matter."""

CSS = """
.token-count p {font-size: 0.8em; opacity: 0.75; margin: -6px 0 4px 4px}
#run {min-height: 48px}
/* The galleries: one row per seed (the layout sets the columns), each caption under its image, never over it. */
.rows .grid-wrap {max-height: none !important; height: auto !important; min-height: 0 !important}
.rows .grid-container {grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; gap: 8px 6px !important}
.rows .thumbnail-item.thumbnail-lg {aspect-ratio: auto !important; height: auto !important; display: flex;
  flex-direction: column; overflow: visible !important}
.rows .thumbnail-item.thumbnail-lg img {aspect-ratio: 1 / 1; width: 100%; height: auto !important;
  object-fit: contain}
.rows .thumbnail-item.thumbnail-lg .caption-label {position: static !important; max-width: 100% !important;
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important; border: none;
  border-radius: 0; opacity: 1 !important; font-size: 0.75em; line-height: 1.25; padding: 3px 2px;
  overflow-wrap: anywhere}
#curves-legend .legend {display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.85em; padding: 0 8px}
#curves-legend .swatch {display: inline-block; width: 18px; height: 3px; margin: 0 6px 3px 0; vertical-align: middle}
#table table {word-break: normal; overflow-wrap: normal} #table {overflow-x: auto}
#known-words .row, #known-words .form {flex-wrap: wrap !important; gap: 6px !important}
#known-words button {flex: 0 0 auto !important; width: auto !important; min-width: 0 !important;
  padding: 2px 10px; white-space: nowrap}
@media (max-width: 640px) {
  .rows .thumbnail-item.thumbnail-lg .caption-label {font-size: 0.68em}
  #table td, #table th {padding: 2px 4px; font-size: 0.85em}
}
"""


READING_HELP = ("plain: brackets, weights and BREAK are characters and text past 75 tokens is cut, as diffusers "
                "reads it; A1111: read as the Stable Diffusion web UI reads it (weights, emphasis, BREAK, prompt "
                "editing, 75-token chunks). The mode 'Plain vs A1111 reading' shows both.")
TERM_SEEDS = 3  # the seeds a term mode starts with, so that its ranking shows each term's spread


def mode_help(label) -> str:
    """What the mode picked in the form shows, in words a teacher can read aloud (its axis's explanation)."""
    axis = axes.get(MODES.get(label, "negatives"))
    text = axis.explanation
    if axis.long_negative:
        text += " This mode uses the first negative prompt box: paste your whole negative prompt there."
    if axis.takes_name:
        text += " Write the embedding's name (e.g. portrait-bad) in the first negative prompt box."
    return text


def legend_html(colors: dict[str, str]) -> str:
    """The step plot's legend: a colored line and the image's name per curve."""
    items = "".join(f'<span class="item"><span class="swatch" style="background:{color}"></span>{html.escape(name)}'
                    f'</span>' for name, color in colors.items())
    return f'<div class="legend">{items}</div>'


def launch_options(settings: AppSettings | None = None) -> dict:
    """What ``demo.launch()`` needs besides Gradio's own variables: the CSS, the upload limit (the app takes no
    uploads, so a hosted app cannot be used to store files) and the check of raw calls' data counts
    (``negprompt.app.calls``)."""
    from starlette.middleware import Middleware

    settings = settings or AppSettings.from_env()
    return dict(css=CSS, max_file_size=settings.max_upload, app_kwargs={"middleware": [Middleware(CountDataItems)]})


@dataclass
class Fields:
    """The form's widgets, by name: what the handlers read (``inputs_kwargs``) and where their errors show."""

    prompt: gr.Textbox
    seed: gr.Number
    rows: gr.Number
    steps: gr.Number
    guidance: gr.Number
    size: gr.Dropdown
    scheduler: gr.Dropdown
    model: gr.Dropdown
    other: gr.Textbox
    count: gr.Number
    boxes: list
    mode: gr.Radio
    reading: gr.Radio

    def kwargs(self) -> dict:
        named = {name: getattr(self, name) for name in
                 ("prompt", "seed", "rows", "steps", "guidance", "size", "scheduler", "model", "other", "count",
                  "mode", "reading")}
        return {**named, **{f"negative_{i}": box for i, box in enumerate(self.boxes)}}

    def by_label(self) -> dict[str, gr.components.Component]:
        """Form label -> widget (what ``field_label`` names)."""
        found = {"Prompt": self.prompt, "Seed": self.seed, "Seeds (rows)": self.rows, "Steps": self.steps,
                 "Guidance scale": self.guidance, "Size": self.size, "Scheduler": self.scheduler, "Model": self.model,
                 "Another positive prompt": self.other, "Negative prompts": self.boxes[0], "Mode": self.mode,
                 "Prompt reading": self.reading}
        found.update({f"Negative prompt {i + 1}": box for i, box in enumerate(self.boxes)})
        return found


def form_from_widgets(values: dict) -> Form:
    """The ``Form`` from the widgets' values, passed by name."""
    boxes = [values[f"negative_{i}"] for i in range(sum(k.startswith("negative_") for k in values))]
    count = values.get("count")
    count = int(count) if isinstance(count, (int, float)) and not isinstance(count, bool) else len(boxes)
    return Form(prompt=values.get("prompt"), negatives=negatives_from_boxes(boxes, count), seed=values.get("seed"),
                rows=values.get("rows"), steps=values.get("steps"), guidance=values.get("guidance"),
                size=values.get("size"), scheduler=values.get("scheduler"), model=values.get("model"),
                other=values.get("other"), mode=values.get("mode"), reading=values.get("reading"))


def _negative_rows(settings: AppSettings, shown: int):
    """A fixed pool of negative-prompt rows (textbox, remove button, token counter); the first ``shown`` visible."""
    groups, boxes, removes, counters = [], [], [], []
    for i in range(settings.max_negatives):
        with gr.Group(visible=i < shown) as group:
            with gr.Row(equal_height=True):
                boxes.append(gr.Textbox(label=f"Negative prompt {i + 1}", scale=8, max_lines=3,
                                        placeholder="something you don't want to see, e.g. hat",
                                        elem_classes="negative"))
                removes.append(gr.Button("✕", scale=0, min_width=44, size="sm", elem_classes="remove"))
            counters.append(gr.Markdown(elem_classes="token-count"))
        groups.append(group)
    return groups, boxes, removes, counters


def _advanced(settings: AppSettings):
    models = list(dict.fromkeys([settings.model, *settings.models]))
    model = gr.Dropdown(models, value=settings.model, label="Model", allow_custom_value=settings.allow_custom_model,
                        info=f"{EMBEDDED_NAME}: the small embedded portrait model (64x64)"
                             + ("; or type a Hub id or a local folder" if settings.allow_custom_model else ""))
    steps = gr.Number(min(settings.default_steps, settings.max_steps), label="Steps", elem_id="steps-number",
                      info=f"a whole number from 1 to {settings.max_steps}")
    guidance = gr.Number(7.5, label="Guidance scale", elem_id="guidance",
                         info=f"above 1, at most {LIMITS.max_guidance:g} (5 to 9 is usual): at 1 or below guidance is "
                              "off and negative prompts do nothing")
    size = gr.Dropdown([s for s in SIZES if s == "auto" or max(map(int, s.split("x"))) <= settings.max_size],
                       value="auto", label="Size", allow_custom_value=True,
                       info="width x height; auto: the model's own size")
    scheduler = gr.Dropdown(scheduler_names(), value="Default", label="Scheduler")
    rows = gr.Number(1, label="Seeds (rows)", elem_id="rows",
                     info=f"1 to {settings.max_seeds}: one row per seed (seed, seed+1, ...)")
    other = gr.Textbox(label="Another positive prompt",
                       info="shown beside, with no negative prompt",
                       placeholder="e.g. portrait photo of a man without hat")
    gr.Markdown(embeddings_help(settings), elem_id="embeddings")
    return model, steps, guidance, size, scheduler, rows, other


def embeddings_help(settings: AppSettings) -> str:
    """The negative embeddings each offered model loads with, to write by name in a negative prompt."""
    from negprompt.embeddings import vector_count

    lines = []
    for model in dict.fromkeys([settings.model, *settings.models]):
        files = settings.embedding_files(model)
        if files:
            names = ", ".join(f"`{name}` ({vector_count(path)} vectors)" for name, path in files.items())
            lines.append(f"{model}: {names}")
    if not lines:
        return ("**Negative embeddings**: none loaded (a Space sets NEGPROMPT_EMBEDDINGS=NAME=PATH,...).")
    return ("**Negative embeddings** (write the name in a negative prompt; the X-ray mode shows each vector): "
            + "; ".join(lines) + ". A LoRA changes the model, not a negative prompt: load one with "
            "`negprompt --lora PATH:WEIGHT`.")


def _pool_handlers(settings: AppSettings):
    """Add and remove negative-prompt rows: the count says how many of the pool show."""
    n = settings.max_negatives

    def add(count):
        if int(count) >= n:
            gr.Warning(f"This app compares at most {n} negative prompts.")
            return gr.skip()
        return int(count) + 1

    def remove(index):
        def handler(count, *values):
            kept = [v for i, v in enumerate(values) if i != index] + [""]
            return max(int(count) - 1, 1), *kept
        return handler

    def show(count):
        return [gr.update(visible=i < int(count)) for i in range(n)]

    return add, remove, show


def _known_words(views: Views, settings: AppSettings, boxes, count):
    """The words the embedded model knows, as buttons: a click puts the word into the first empty negative box."""
    words = views.known_words() if EMBEDDED_NAME in settings.models else []
    if not words:
        return
    with gr.Accordion("Words the portrait model knows (click one to add it as a negative prompt)", open=False,
                      elem_id="known-words"):
        gr.Markdown("The embedded model learned only these words; any other word reaches it as noise.")
        with gr.Row(equal_height=True):
            for word in words:
                button = gr.Button(word, size="sm", scale=0, min_width=0)

                def put(count, *texts, word=word):
                    shown = list(texts[:int(count)])
                    if word in shown:
                        return gr.skip(), *([gr.skip()] * len(texts))
                    empty = next((i for i, t in enumerate(shown) if not t.strip()), None)
                    if empty is None and int(count) >= len(texts):
                        gr.Warning(f"This app compares at most {len(texts)} negative prompts.")
                        return gr.skip(), *([gr.skip()] * len(texts))
                    target = empty if empty is not None else int(count)
                    updates = [gr.skip()] * len(texts)
                    updates[target] = word
                    return max(int(count), target + 1), *updates

                button.click(put, [count, *boxes], [count, *boxes], **QUICK)


def _examples(views: Views, settings: AppSettings, examples, fields: Fields, shown: dict) -> None:
    """The built-in examples. On a Space, Gradio caches each one's result the first time it is picked (lazily), so
    a visitor sees it at once; elsewhere picking one fills the form."""
    n = settings.max_negatives
    first_mode = next(iter(MODES))  # an example teaches in the plain mode, at the app's default settings
    rows = [[e.prompt, e.other, e.seed, getattr(e, "rows", 1), EMBEDDED_NAME, first_mode, settings.default_steps,
             7.5, "auto", "Default", len(e.negatives), *(list(e.negatives) + [""] * n)[:n]] for e in examples]
    inputs = [fields.prompt, fields.other, fields.seed, fields.rows, fields.model, fields.mode, fields.steps,
              fields.guidance, fields.size, fields.scheduler, fields.count, *fields.boxes]

    def result(prompt, other, seed, rows, model, mode, steps, guidance, size, scheduler, count, *boxes):
        form = Form(prompt=prompt, negatives=negatives_from_boxes(list(boxes), int(count)), seed=seed, rows=rows,
                    steps=steps, guidance=guidance, size=size, scheduler=scheduler, model=model, other=other,
                    mode=mode)
        view = views.final(form)
        return tuple(view.get(name, gr.skip()) for name in shown)

    cache = on_spaces()
    chosen = gr.Examples(rows, inputs, example_labels=[e.button for e in examples], api_visibility="private",
                         label="Examples: pick one, then press Compare (each shows its lesson on its seeds)",
                         fn=result if cache else None, outputs=list(shown.values()) if cache else None,
                         cache_examples=cache, cache_mode="lazy")
    lessons = [f"- **{e.button}**: {e.label.removeprefix(e.button).lstrip(':, ')}" for e in examples
               if e.label != e.button]
    if lessons:  # a button shows a short title; what each example shows, as measured, is listed here
        gr.Markdown("\n".join(lessons), elem_id="example-lessons")
    if cache and "gallery" in shown:  # a cached result skips Compare, which sets the columns: one row per seed
        per_seed = [1 + len(e.negatives) + bool(e.other) for e in examples]

        def columns(event: gr.SelectData):
            return gr.update(columns=per_seed[event.index])

        chosen.dataset.select(columns, None, shown["gallery"], **QUICK)


def _api_endpoints(views: Views, settings: AppSettings) -> None:
    """The two public endpoints, on hidden components so that their signatures are plain for API users:

    - /compare: one positive prompt, several negatives, one cell each beside the baseline;
    - /explore: the same arguments after a ``mode`` (a value or label of ``MODES``: "leave-one-out",
      "terms-alone", "timing", "methods" or "negatives"), the explorer's modes. A separate endpoint, so that
      /compare keeps its signature: a raw HTTP caller sends its arguments as a positional list.

    Values reach the handlers unprocessed (``preprocess=False``), so that every check, and every refusal's wording,
    is the app's own."""
    with gr.Column(visible=False):
        named = {
            "prompt": gr.Textbox(label="prompt"),
            "negative_prompts": gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                            label="negative_prompts"),
            "seed": gr.Number(0, label="seed"),
            "steps": gr.Number(min(settings.default_steps, settings.max_steps), label="steps"),
            "guidance_scale": gr.Number(7.5, label="guidance_scale"),
            "size": gr.Textbox("auto", label="size"),
            "model": gr.Textbox(settings.model, label="model"),
            "rows": gr.Number(1, label="rows"),
            "scheduler": gr.Textbox("Default", label="scheduler"),
        }
        outputs = [gr.Gallery(format="png", label="images"), gr.JSON(label="manifest")]
        button = gr.Button()
        explore_named = {"prompt": named["prompt"], "negative_prompts": named["negative_prompts"],
                         "mode": gr.Textbox("leave-one-out", label="mode"),
                         **{k: v for k, v in named.items() if k not in ("prompt", "negative_prompts")}}
        explore_button = gr.Button()

    def answer(form_of):
        try:
            form = form_of()
            for result in views.api(form):
                yield (gr.skip(), gr.skip()) if result is None else result
        except InputError as error:  # raised while reading the form
            raise gr.Error(f"{field_label(error.argument)}: {error}", title="Check the input") from None
        except FormError as error:
            raise gr.Error(str(error), title="Check the input") from None

    def compare(prompt="", negative_prompts=(), seed=0, steps=settings.default_steps, guidance_scale=7.5,
                size="auto", model="", rows=1, scheduler="Default"):
        """Compare negative prompts from one seed; returns captioned images (baseline first) and the manifest."""
        yield from answer(lambda: form_from_api(prompt, negative_prompts, seed, steps, guidance_scale, size, model,
                                                rows, scheduler))

    def explore(prompt="", negative_prompts=(), mode="leave-one-out", seed=0, steps=settings.default_steps,
                guidance_scale=7.5, size="auto", model="", rows=1, scheduler="Default"):
        """Explore a negative prompt in one of the explorer's modes (leave-one-out, terms-alone, timing, methods,
        readings: each negative read plain and as A1111 reads it, negatives); returns captioned images (baseline
        first) and the manifest, with each cell's term, window or method, reading, reference, change score and
        verdict."""
        yield from answer(lambda: form_from_api(prompt, negative_prompts, seed, steps, guidance_scale, size, model,
                                                rows, scheduler, mode))

    button.click(compare, None, outputs, inputs_kwargs=named, api_name="compare", preprocess=False,
                 api_description="Compare negative prompts from one seed; returns captioned images (baseline "
                                 "first) and the manifest.", **RUN)
    assert tuple(named) == ENDPOINTS["compare"] and tuple(explore_named) == ENDPOINTS["explore"], \
        "negprompt.app.calls counts the endpoints' parameters in this order"
    explore_button.click(explore, None, outputs, inputs_kwargs=explore_named, api_name="explore",
                         preprocess=False, api_description="One negative prompt explored: leave-one-out, "
                         "terms-alone, timing or methods (the app's modes); returns captioned images and the "
                         "manifest.", **RUN)


def _components(view: dict, outputs: dict) -> dict:
    """A handler's view (``negprompt.app.views``: values by output name) as Gradio updates of ``outputs`` (output
    name -> component)."""
    status, advanced, gallery = outputs["status"], outputs["advanced"], outputs["gallery"]
    shown = {outputs[name]: value for name, value in view.items() if name in outputs}
    hidden = [label for label in view.get("errors", {}) if label in ADVANCED]
    if hidden:  # a refusal about a field in the closed accordion: open it, and say where it is
        label = hidden[0]
        shown[status] = f"**Check the input:** {label} (under Advanced options): {view['errors'][label]}"
        shown[advanced], shown[outputs["advanced_open"]] = gr.Accordion(open=True), True
    if "columns" in view:  # one row per seed: as many columns as images per seed
        shown[gallery] = gr.update(value=view["gallery"], columns=view["columns"]) if "gallery" in view \
            else gr.update(columns=view["columns"])
    if "trimmed" in view:
        shown[outputs["trimmed"]] = gr.update(value=view["trimmed"], visible=bool(view["trimmed"]))
    if "scrubber" in view:  # the index of the last kept step (the final images); hidden with nothing to scrub
        last, steps = view["scrubber"], view.get("scrubber_steps") or []
        kept = f"kept steps {', '.join(map(str, steps))}" if steps else ""
        shown[outputs["scrubber"]] = gr.update(maximum=max(last, 1), value=max(last, 0), visible=last >= 1, info=kept)
    if "curves" in view:  # shown from the first run that kept previews on; its legend wraps beneath it
        shown.update(_curves(view, outputs))
    return shown


def _curves(view: dict, outputs: dict) -> dict:
    names = list(dict.fromkeys(view["curves"]["image"]))
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    return {outputs["curves"]: gr.update(value=view["curves"], visible=bool(names), color_map=colors),
            outputs["legend"]: gr.update(value=legend_html(colors), visible=bool(names)),
            outputs["frames"]: gr.update(value=view["frames"], visible=bool(view["frames"]),
                                         columns=view.get("columns", 4))}


def _validator(views: Views, fields: Fields, others: list):
    """The check run before a comparison is queued: it points at the field a refusal concerns when that field shows;
    a refusal about a field in the closed Advanced options (or about no field) passes here, and the run shows it in
    the status line and opens the accordion. ``others``: the run's other inputs, never refused."""
    labelled = fields.by_label()

    def validate(differences=False, attended=False, advanced_open=False, **values):
        bad = {}
        try:
            views.request(form_from_widgets(values))
        except InputError as error:
            label, message = views.refusal(error)
            if label in labelled and (advanced_open or label not in ADVANCED):
                bad = {labelled[label]: message}
        return [gr.validate(component not in bad, bad.get(component, "")) for component in
                [*fields.kwargs().values(), *others]]

    return validate


def _token_counters(demo: gr.Blocks, views: Views, model, texts: list, counters: list) -> None:
    """Each text box's token count under it, updated as it is typed, when the model changes and at page load."""

    def counter_line(text, model_name):
        return views.token_counter(text, model_name)

    def every_line(model_name, *values):
        return [views.token_counter(t, model_name) for t in values]

    for box, counter in zip(texts, counters):
        box.change(counter_line, [box, model], counter, **QUICK)
    model.change(every_line, [model, *texts], counters, **QUICK)
    demo.load(every_line, [model, *texts], counters, **PRIVATE)


def build_demo(settings: AppSettings | None = None) -> gr.Blocks:
    """The whole app; loads no model (the first request does, or ``runner.load`` at launch)."""
    settings = settings or AppSettings.from_env()
    views = Views(settings)
    add, remove, show = _pool_handlers(settings)
    examples = [e for e in load_examples() if e.rows <= settings.max_seeds] if EMBEDDED_NAME in settings.models else []
    with gr.Blocks(title="negprompt: what does a negative prompt do?") as demo:
        gr.Markdown(DESCRIPTION)
        examples_slot = gr.Column(elem_id="examples")  # filled once the form exists: the examples come first
        outcome = gr.State(None)
        advanced_open = gr.State(False)  # whether the Advanced options show (where a refusal can be pointed at)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(label="Prompt", value="portrait photo of a man", lines=2, max_lines=4)
                prompt_tokens = gr.Markdown(elem_classes="token-count")
                count = gr.Number(1, precision=0, visible=False)
                groups, boxes, removes, counters = _negative_rows(settings, shown=1)
                add_button = gr.Button("+ Add a negative prompt", size="sm", elem_id="add-negative")
                mode = gr.Radio(list(MODES), value=next(iter(MODES)), label="Mode", elem_id="mode",
                                info="what to show about the negative prompt")
                mode_text = gr.Markdown(mode_help(next(iter(MODES))), elem_id="mode-help")
                _known_words(views, settings, boxes, count)
                with gr.Row(equal_height=True):
                    seed = gr.Number(0, label="Seed", scale=4, elem_id="seed",
                                     info=f"a whole number from 0 to {LIMITS.max_seed}")
                    randomize = gr.Button("Random seed", scale=0, min_width=120, elem_id="randomize")
                run_button = gr.Button("Compare", variant="primary", elem_id="run")
                with gr.Accordion("Advanced options", open=False, elem_id="advanced") as advanced:
                    model, steps, guidance, size, scheduler, rows, other = _advanced(settings)
                    reading = gr.Radio(list(READINGS), value=next(iter(READINGS)), label="Prompt reading",
                                       elem_id="reading", info=READING_HELP)
            with gr.Column(scale=3, min_width=320):
                status = gr.Markdown("Press **Compare**. The first run loads the model.", elem_id="status")
                gallery = gr.Gallery(label="Baseline first, then one image per negative prompt", format="png",
                                     columns=4, object_fit="contain", height="auto", elem_id="gallery",
                                     elem_classes="rows", show_label=False)
                differences = gr.Checkbox(label="Show difference maps (where each negative prompt changed the "
                                                "baseline)", elem_id="differences")
                attended = gr.Checkbox(label="Show where each negative prompt was attended to (red: where the "
                                             "model looked for its words)", elem_id="attended",
                                       visible=settings.attention_maps)
                infotext = gr.Textbox(label="Infotext of the selected image (select an image)", lines=3,
                                      buttons=["copy"], interactive=False)
                table = gr.Markdown(elem_id="table")
                found = gr.Markdown(elem_id="explored")
                trimmed = gr.Textbox(label="Trimmed negative prompt (without the terms that do almost nothing), to "
                                           "copy", buttons=["copy"], interactive=False, visible=False,
                                     elem_id="trimmed")
                # Open: a plot updated inside a closed accordion is not drawn when the accordion opens.
                with gr.Accordion("Step by step: when each negative prompt starts to matter", open=True,
                                  elem_id="steps"):
                    gr.Markdown(STEPS_HELP)
                    scrubber = gr.Slider(0, 1, value=1, step=1, label="Kept step (drag to see every image at that "
                                                                      "step; the last is the final image)",
                                         visible=False, elem_id="scrubber")
                    frames = gr.Gallery(format="png", columns=4, object_fit="contain", height="auto",
                                        show_label=False, elem_id="frames", elem_classes="rows", visible=False)
                    curves = gr.LinePlot(x="step", y="change", color="image", y_title="change against its "
                                         "reference (%)", x_title="step", elem_id="curves", show_label=False,
                                         colors_in_legend=[], visible=False)
                    legend = gr.HTML(elem_id="curves-legend", visible=False)
                gr.Markdown("**Labeled grid** (download it with the button on the image)")
                grid = gr.Image(format="png", type="filepath", interactive=False, show_label=False, elem_id="grid")
                download = gr.File(label="Download: grid, cells (PNG with infotext), manifest", interactive=False)
        fields = Fields(prompt=prompt, seed=seed, rows=rows, steps=steps, guidance=guidance, size=size,
                        scheduler=scheduler, model=model, other=other, count=count, boxes=boxes, mode=mode,
                        reading=reading)
        if examples:
            with examples_slot:
                _examples(views, settings, examples, fields, {"status": status, "gallery": gallery, "grid": grid,
                                                              "download": download, "table": table})
        with gr.Accordion("How it works", open=False):
            gr.Markdown(HOW_IT_WORKS, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                        {"left": "\\(", "right": "\\)", "display": False}])
        _api_endpoints(views, settings)

        # Wiring: everything but /compare is private.
        named_outputs = {"status": status, "gallery": gallery, "grid": grid, "download": download, "table": table,
                         "outcome": outcome, "infotext": infotext, "explored": found, "trimmed": trimmed,
                         "scrubber": scrubber, "frames": frames, "curves": curves, "legend": legend,
                         "advanced": advanced,
                         "advanced_open": advanced_open}
        def to_components(view: dict) -> dict:
            return _components(view, named_outputs)

        def run(differences=False, attended=False, advanced_open=False, progress=gr.Progress(), **values):
            for view in views.run(form_from_widgets(values), bool(differences), progress, bool(attended)):
                yield to_components(view)

        validate = _validator(views, fields, [differences, attended, advanced_open])
        run_kwargs = {**fields.kwargs(), "differences": differences, "attended": attended,
                      "advanced_open": advanced_open}
        for trigger in (run_button.click, prompt.submit):
            trigger(run, None, list(named_outputs.values()), inputs_kwargs=run_kwargs, validator=validate,
                    preprocess=False, show_progress_on=[status], **RUN, **PRIVATE)

        _token_counters(demo, views, model, [prompt, *boxes], [prompt_tokens, *counters])
        add_button.click(add, count, count, **QUICK)
        for i, button in enumerate(removes):
            button.click(remove(i), [count, *boxes], [count, *boxes], **QUICK)
        count.change(show, count, groups, **QUICK)
        mode.change(mode_help, mode, mode_text, **QUICK)
        mode.change(lambda label: min(TERM_SEEDS, settings.max_seeds)
                    if axes.get(MODES.get(label, "negatives")).long_negative else 1,
                    mode, rows, **QUICK)  # term modes rank over three seeds unless told otherwise
        advanced.expand(lambda: True, None, advanced_open, **QUICK)
        advanced.collapse(lambda: False, None, advanced_open, **QUICK)
        randomize.click(lambda: random.randint(0, LIMITS.max_seed), None, seed, **QUICK)
        for box in (differences, attended):
            box.change(lambda o, d, a: to_components(views.toggle(o, d, a)), [outcome, differences, attended],
                       [gallery, grid], **PRIVATE)

        def select(outcome_value, event: gr.SelectData):
            return views.select(outcome_value, event.index)

        gallery.select(select, outcome, infotext, **PRIVATE)
        scrubber.input(lambda o, k: to_components(views.frame(o, k)), [outcome, scrubber], frames, **QUICK)
    return demo
