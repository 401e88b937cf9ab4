"""The Gradio app: one prompt, several negative prompts, one seed, a labeled grid beside the no-negative baseline.

    python app.py                                   # http://127.0.0.1:7860, the embedded model
    NEGPROMPT_MODEL=stable-diffusion-v1-5/stable-diffusion-v1-5 python app.py

    from negprompt.ui import build_demo
    build_demo().queue(max_size=16).launch()

Layout (inputs left, results right): prompt and negative-prompt rows with token counters, seed, examples, and an
accordion of advanced options; a gallery (baseline first, PNG with infotext), the grid, a zip, the selected cell's
infotext, per-cell change scores and what the embedded model's detector sees. One public API endpoint,
``/compare`` (see ``api_compare``); every other event is private. Model work happens in ``negprompt.service``.
"""

from __future__ import annotations

import logging
import random
from functools import lru_cache

import gradio as gr

from negprompt import service
from negprompt.config import AppSettings
from negprompt.loading import EMBEDDED_NAME
from negprompt.schedulers import scheduler_names

log = logging.getLogger(__name__)

SIZES = ("auto", "64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024", "768x512", "512x768")
PRIVATE = dict(api_visibility="private")
RUN = dict(concurrency_id="generate", concurrency_limit=1)  # one generation at a time, UI and API together

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
"portrait photo of a man" with the negative "mustache", beside the positive "portrait photo of a man without
mustache". If you see something you do not want, name it in the negative prompt.
"""

# Passed to launch() (Gradio 6 takes css there, not in Blocks).
CSS = ".token-count p {font-size: 0.8em; opacity: 0.75; margin: -6px 0 4px 4px} #run {min-height: 48px}"


@lru_cache(maxsize=8)
def _tokenizer(model: str):
    """The model's tokenizer alone (no weights); None when it cannot be read."""
    from transformers import CLIPTokenizer

    from negprompt.loading import resolve_model

    try:
        return CLIPTokenizer.from_pretrained(resolve_model(None if model == EMBEDDED_NAME else model),
                                             subfolder="tokenizer")
    except Exception:  # offline, missing, or not a CLIP model: the counter falls back to words
        return None


def token_counter(text: str, model: str) -> str:
    """The "12/75" line under a prompt box, with a warning when the text will be cut."""
    from negprompt.prompts import count_tokens

    tokenizer = _tokenizer(model or EMBEDDED_NAME)
    if tokenizer is None:
        return f"about {len((text or '').split())} words (tokenizer not loaded)"
    count = count_tokens(tokenizer, text or "")
    if count.fits:
        return f"{count} tokens"
    return f"⚠️ {count} tokens: the encoder reads {count.limit}; cut: *{count.truncated}*"


def _caption(result, cell, readout) -> str:
    caption = result.label(cell)
    if len(result.settings.seeds) > 1:
        caption += f" (seed {cell.seed})"
    if not cell.is_baseline:
        caption += f" · change {result.change_scores[cell.index]:.1f}%"
    if readout is not None:
        caption += " · sees: " + (", ".join(service.seen(readout[cell.index])) or "nothing")
    return caption


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(result, readout) -> str:
    """Per cell: seed, negative prompt, change score and (with a detector) what it sees, as a Markdown table."""
    header = "| # | seed | negative prompt | change |" + (" detector sees |" if readout is not None else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for cell in result.cells:
        score = result.change_scores[cell.index]
        line = f"| {cell.index} | {cell.seed} | {_md(result.label(cell))} | {score:.1f}% |"
        if readout is not None:
            line += f" {', '.join(service.seen(readout[cell.index])) or 'nothing'} |"
        lines.append(line)
    if readout is not None:
        lines.append("")
        lines.append(_tally(result, readout))
    return "\n".join(lines)


def _tally(result, readout) -> str:
    """How many images (of the rows) the detector marks with each attribute, per negative prompt: the count a class
    makes to see what each negative prompt removed."""
    columns = ["baseline", *map(_md, result.settings.negatives)]
    counts = {name: [0] * len(columns) for r in readout for name in service.seen(r)}
    for cell in result.cells:
        position = cell.index % len(columns)
        for name in service.seen(readout[cell.index]):
            counts[name][position] += 1
    if not counts:
        return "The detector sees none of its attributes in any image."
    rows = len(result.settings.seeds)
    lines = ["| attribute | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, found in sorted(counts.items()):
        lines.append(f"| {name} | " + " | ".join(f"{n}/{rows}" for n in found) + " |")
    return "\n".join(lines)


def _gallery(outcome, differences: bool) -> list:
    from negprompt.difference import difference_map

    result, files, readout = outcome["result"], outcome["files"], outcome["readout"]
    items = []
    for cell in result.cells:
        image = result.difference_map(cell) if differences else str(files[cell.index])
        items.append((image, _caption(result, cell, readout)))
    for item in outcome.get("extra", []):
        image = difference_map(item["cell"].image, item["baseline"].image) if differences else str(item["path"])
        items.append((image, item["caption"]))
    return items


def _finish(settings: AppSettings, request, result) -> dict:
    """Files, detector readout and captions for a finished comparison: what the session keeps."""
    files, archive = service.write_files(result, service.output_folder())
    wanted = settings.detector and request.embedded
    readout = service.detector_readout([c.image for c in result.cells]) if wanted else None
    return {"request": request, "result": result, "files": files, "zip": archive, "readout": readout}


def _run(settings: AppSettings, request, progress):
    """Yield ("step", text, previews) while denoising, then ("done", outcome)."""
    for event in service.generate(request, settings.preview_every, settings.device):
        if isinstance(event, service.Step):
            progress((event.done, event.total), desc=f"step {event.done}/{event.total}", unit="steps")
            yield "step", event
        else:
            yield "done", _finish(settings, request, event)


def _as_gr_error(error: Exception) -> gr.Error:
    if isinstance(error, (ValueError, FileNotFoundError)):
        return gr.Error(f"{service.field_of(error)}: {error}" if not isinstance(error, service.InputError)
                        else str(error), title="Check the input")
    log.exception("comparison failed")
    return gr.Error(f"The comparison failed: {type(error).__name__}: {error}", title="Error")


def _no_progress(*_args, **_kwargs) -> None:
    return None


class _Handlers:
    """The app's event handlers, bound to its settings (module state is shared by all users; per-session state
    lives in ``gr.State``)."""

    def __init__(self, settings: AppSettings):
        self.settings = settings

    def request(self, prompt, negatives, seed, rows, steps, guidance, size, scheduler, model):
        try:
            return service.build_request(self.settings, prompt, negatives, seed=seed, rows=rows, steps=steps,
                                         guidance=guidance, size=size, scheduler=scheduler, model=model)
        except ValueError as error:
            raise _as_gr_error(error) from None

    def run(self, prompt, seed, rows, steps, guidance, size, scheduler, model, other, differences, count,
            *negatives, progress=gr.Progress()):
        """The Compare button: stream step counts and previews, then the gallery, grid, zip and readouts."""
        request = self.request(prompt, list(negatives[:int(count or 0)]), seed, rows, steps, guidance, size,
                               scheduler, model)
        labels = [label for s in request.seeds for label in ("baseline", *(f"- {n}" for n in request.negatives))]
        skip = (gr.skip(),) * 5
        try:
            for kind, event in _run(self.settings, request, progress):
                if kind == "step":
                    previews = gr.skip() if event.previews is None else [
                        (image, f"step {event.done}/{event.total} · {label}")
                        for image, label in zip(event.previews, labels)]
                    yield (f"Denoising: step {event.done}/{event.total}", previews, *skip)
                else:
                    outcome = event
            if (other or "").strip():
                outcome["extra"] = self.other_positive(outcome, request, other.strip(), progress)
        except gr.Error:
            raise
        except Exception as error:
            raise _as_gr_error(error) from None
        for warning in outcome["result"].warnings:
            gr.Warning(warning)
        yield self.show(outcome, differences)

    def other_positive(self, outcome, request, prompt, progress) -> list[dict]:
        """The same seeds with another positive prompt and no negative (the seed article's "without X" cell)."""
        from dataclasses import replace

        from negprompt.difference import change_score

        other = replace(request, prompt=prompt, negatives=())
        *_, (_, done) = _run(self.settings, other, progress)
        result = outcome["result"]
        extra = []
        for cell, path in zip(done["result"].cells, done["files"]):
            baseline = result.rows[cell.row][0]
            extra.append({"cell": cell, "path": path, "baseline": baseline,
                          "caption": f"positive: {prompt} · change {change_score(cell.image, baseline.image):.1f}%"})
        return extra

    def show(self, outcome, differences):
        """Everything the results column shows for a finished comparison."""
        result = outcome["result"]
        timing = result.timings.get("total_s", 0)
        status = (f"**{len(result.cells)} images** ({len(result.settings.seeds)} seed(s) x "
                  f"{len(result.settings.negatives) + 1}) in {timing:.1f} s · model `{result.settings.model}` · "
                  f"{result.settings.width}x{result.settings.height} · {result.settings.scheduler}. "
                  "Click an image for its infotext.")
        if outcome["readout"] is None and outcome["request"].embedded and self.settings.detector:
            status += " (No attribute detector installed: no detector readout.)"
        return (status, _gallery(outcome, differences), result.grid(differences=differences),
                str(outcome["zip"]), _table(result, outcome["readout"]), outcome, "")

    def toggle(self, outcome, differences):
        if outcome is None:
            return gr.skip(), gr.skip()
        return _gallery(outcome, differences), outcome["result"].grid(differences=differences)

    def select(self, outcome, event: gr.SelectData):
        if outcome is None:
            return ""
        cells = outcome["result"].cells
        if event.index < len(cells):
            return cells[event.index].parameters
        return outcome["extra"][event.index - len(cells)]["cell"].parameters

    def api_compare(self, prompt, negative_prompts, seed, steps, guidance_scale, size, model, rows, scheduler):
        """Run one comparison: returns the images (baseline first, captioned) and the manifest."""
        request = self.request(prompt, negative_prompts, seed, rows, steps, guidance_scale, size, scheduler, model)
        try:
            *_, (_, outcome) = _run(self.settings, request, _no_progress)
        except Exception as error:
            raise _as_gr_error(error) from None
        for warning in outcome["result"].warnings:
            gr.Warning(warning)
        manifest = outcome["result"].manifest()
        if outcome["readout"] is not None:
            manifest["detector"] = outcome["readout"]
        return _gallery(outcome, differences=False), manifest


EXAMPLES = [
    # prompt, negatives, other positive, seed, label
    ("portrait photo of a man", ["mustache"], "portrait photo of a man without mustache", 1,
     "Seed article: negative 'mustache' vs. positive '... without mustache'"),
    ("portrait photo of a man with glasses and a hat", ["glasses", "hat"], "", 2, "Remove glasses, remove a hat"),
    ("portrait photo of a man with a beard", ["beard", "mustache", "beard, mustache"], "", 3, "Beard or mustache"),
    ("portrait photo of a man, red background", ["red background", "blue background", "smile"], "", 4,
     "Backgrounds and smiles"),
]


def _example_rows(max_negatives: int) -> tuple[list[list], list[str]]:
    rows, labels = [], []
    for prompt, negatives, other, seed, label in EXAMPLES:
        boxes = (negatives + [""] * max_negatives)[:max_negatives]
        rows.append([prompt, other, seed, min(len(negatives), max_negatives), *boxes])
        labels.append(label)
    return rows, labels


def _negative_rows(settings: AppSettings, shown: int):
    """A fixed pool of negative-prompt rows (textbox, remove button, token counter); the first ``shown`` visible."""
    groups, boxes, removes, counters = [], [], [], []
    for i in range(settings.max_negatives):
        with gr.Group(visible=i < shown) as group:
            with gr.Row(equal_height=True):
                boxes.append(gr.Textbox(label=f"Negative prompt {i + 1}", scale=8, max_lines=3,
                                        placeholder="something you don't want to see, e.g. mustache",
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
    steps = gr.Slider(1, settings.max_steps, value=min(settings.default_steps, settings.max_steps), step=1,
                      label="Steps")
    guidance = gr.Slider(1.5, 20, value=7.5, step=0.5, label="Guidance scale",
                         info="Starts above 1: at 1 or below guidance is off and negative prompts do nothing")
    size = gr.Dropdown([s for s in SIZES if s == "auto" or max(map(int, s.split("x"))) <= settings.max_size],
                       value="auto", label="Size (width x height)", allow_custom_value=True,
                       info="auto: the model's own size")
    scheduler = gr.Dropdown(scheduler_names(), value="Default", label="Scheduler")
    rows = gr.Slider(1, settings.max_seeds, value=1, step=1, label="Seeds (rows)",
                     info="One row per seed: seed, seed+1, ...")
    other = gr.Textbox(label="Another positive prompt to show beside (no negative)",
                       placeholder="e.g. portrait photo of a man without mustache")
    return model, steps, guidance, size, scheduler, rows, other


def _api_endpoint(handlers: _Handlers, settings: AppSettings) -> None:
    """The one public endpoint, /compare, on hidden components so that its signature is plain for API users."""
    with gr.Column(visible=False):
        inputs = [
            gr.Textbox(label="prompt"),
            gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="negative_prompts"),
            gr.Number(0, precision=0, label="seed"),
            gr.Number(min(settings.default_steps, settings.max_steps), precision=0, label="steps"),
            gr.Number(7.5, label="guidance_scale"),
            gr.Textbox("auto", label="size"),
            gr.Textbox(settings.model, label="model"),
            gr.Number(1, precision=0, label="rows"),
            gr.Textbox("Default", label="scheduler"),
        ]
        outputs = [gr.Gallery(format="png", label="images"), gr.JSON(label="manifest")]
        button = gr.Button()
    button.click(handlers.api_compare, inputs, outputs, api_name="compare",
                 api_description="Compare negative prompts from one seed; returns captioned images (baseline "
                                 "first) and the manifest.", **RUN)


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
            return max(int(count) - 1, 0), *kept
        return handler

    def show(count):
        return [gr.update(visible=i < int(count)) for i in range(n)]

    return add, remove, show


def build_demo(settings: AppSettings | None = None) -> gr.Blocks:
    """The whole app; loads no model (the first request does, or ``service.load`` at launch)."""
    settings = settings or AppSettings.from_env()
    handlers = _Handlers(settings)
    add, remove, show = _pool_handlers(settings)
    with gr.Blocks(title="negprompt: what does a negative prompt do?") as demo:
        gr.Markdown(DESCRIPTION)
        outcome = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2, min_width=340):
                prompt = gr.Textbox(label="Prompt", value="portrait photo of a man", lines=2, max_lines=4)
                prompt_tokens = gr.Markdown(elem_classes="token-count")
                count = gr.Number(1, precision=0, visible=False)
                groups, boxes, removes, counters = _negative_rows(settings, shown=1)
                add_button = gr.Button("+ Add a negative prompt", size="sm", elem_id="add-negative")
                with gr.Row(equal_height=True):
                    seed = gr.Number(0, precision=0, minimum=0, maximum=service.MAX_SEED, label="Seed", scale=4)
                    randomize = gr.Button("Random seed", scale=0, min_width=120, elem_id="randomize")
                run_button = gr.Button("Compare", variant="primary", elem_id="run")
                with gr.Accordion("Advanced options", open=False):
                    model, steps, guidance, size, scheduler, rows, other = _advanced(settings)
            with gr.Column(scale=3):
                status = gr.Markdown("Press **Compare**. The first run loads the model.", elem_id="status")
                gallery = gr.Gallery(label="Baseline first, then one image per negative prompt", format="png",
                                     columns=4, object_fit="contain", height="auto", elem_id="gallery")
                differences = gr.Checkbox(label="Show difference maps (where each negative prompt changed the "
                                                "baseline)", elem_id="differences")
                infotext = gr.Textbox(label="Selected cell's infotext (click an image)", lines=3,
                                      buttons=["copy"], interactive=False)
                table = gr.Markdown()
                grid = gr.Image(label="Labeled grid", format="png", type="pil", interactive=False)
                download = gr.File(label="Download: grid, cells (PNG with infotext), manifest", interactive=False)
        examples, labels = _example_rows(settings.max_negatives)
        gr.Examples(examples, [prompt, other, seed, count, *boxes], example_labels=labels, visible_columns=[0],
                    label="Examples (for the embedded portrait model)", api_visibility="private")
        with gr.Accordion("How it works", open=False):
            gr.Markdown(HOW_IT_WORKS, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                        {"left": "\\(", "right": "\\)", "display": False}])
        _api_endpoint(handlers, settings)

        # Wiring: everything but /compare is private.
        quick = dict(queue=False, show_progress="hidden", trigger_mode="always_last", **PRIVATE)
        prompt.change(token_counter, [prompt, model], prompt_tokens, **quick)
        for box, counter in zip(boxes, counters):
            box.change(token_counter, [box, model], counter, **quick)
        model.change(lambda m, *texts: [token_counter(t, m) for t in texts], [model, prompt, *boxes],
                     [prompt_tokens, *counters], **quick)
        demo.load(lambda m, *texts: [token_counter(t, m) for t in texts], [model, prompt, *boxes],
                  [prompt_tokens, *counters], **PRIVATE)
        add_button.click(add, count, count, **quick)
        for i, button in enumerate(removes):
            button.click(remove(i), [count, *boxes], [count, *boxes], **quick)
        count.change(show, count, groups, **quick)
        randomize.click(lambda: random.randint(0, service.MAX_SEED), None, seed, **quick)
        run_inputs = [prompt, seed, rows, steps, guidance, size, scheduler, model, other, differences, count, *boxes]
        run_outputs = [status, gallery, grid, download, table, outcome, infotext]
        run_button.click(handlers.run, run_inputs, run_outputs, **RUN, **PRIVATE)
        prompt.submit(handlers.run, run_inputs, run_outputs, **RUN, **PRIVATE)
        differences.change(handlers.toggle, [outcome, differences], [gallery, grid], **PRIVATE)
        gallery.select(handlers.select, outcome, infotext, **PRIVATE)
    return demo

