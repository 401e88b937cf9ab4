"""The app's form, in process and without a model: labels from InputError.argument, the embedded model's words,
models that cannot load here, and admission by estimated cost."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import pytest

from negprompt.app.form import Form, build_request, field_label
from negprompt.app.settings import AppSettings
from negprompt.errors import LIMITS, InputError
from negprompt.loading import EMBEDDED_MODEL, EMBEDDED_NAME

needs_model = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")


@pytest.mark.parametrize("argument, boxes, label", [
    ("steps", None, "Steps"),
    ("guidance_scale", None, "Guidance scale"),
    ("negatives[0]", None, "Negative prompt 1"),
    ("negatives[1]", (0, 3), "Negative prompt 4"),  # the second negative came from the fourth box
    ("negatives", None, "Negative prompts"),
    ("cells[2].negative", (0, 1, 2), "Negative prompt 3"),
    ("height", None, "Size"),
    ("cost", None, "Steps"),
    ("something_new", None, "Input"),
])
def test_an_error_argument_maps_to_its_form_label(argument, boxes, label):
    assert field_label(argument, boxes) == label


def test_empty_boxes_are_skipped_but_errors_name_the_box_they_came_from():
    from negprompt.app.layout import form_from_widgets

    values = {"prompt": "portrait photo of a man", "count": 3, "negative_0": "hat", "negative_1": "",
              "negative_2": "\u200b", "negative_3": "never shown", "seed": 0, "rows": 1, "steps": 20,
              "guidance": 7.5, "size": "auto", "scheduler": "Default", "model": "", "other": ""}
    with pytest.raises(InputError) as error:
        build_request(AppSettings(), form_from_widgets(values))
    assert field_label(error.value.argument) == "Negative prompt 3", error.value.argument
    values["negative_2"] = "glasses"
    request = build_request(AppSettings(), form_from_widgets(values))
    assert request.negatives == ("hat", "glasses") and request.boxes == (0, 2), request


def test_numbers_are_refused_not_clamped_or_rounded():
    settings = AppSettings()
    for field, value in (("steps", 0), ("steps", 2.5), ("seed", "3"), ("seed", LIMITS.max_seed + 1),
                         ("guidance", 1), ("rows", True)):
        with pytest.raises(InputError):
            build_request(settings, Form(prompt="a man", negatives=((0, "hat"),), **{field: value}))
    request = build_request(settings, Form(prompt="a man", negatives=((0, "hat"),), seed=3.0, steps=20.0))
    assert request.seeds == (3,) and request.steps == 20, "A JSON whole number (3.0) is a whole number."


def test_a_comparison_needs_a_negative_prompt():
    with pytest.raises(InputError) as error:
        build_request(AppSettings(), Form(prompt="portrait photo of a man", negatives=()))
    assert field_label(error.value.argument) == "Negative prompt 1"


def test_the_caps_stay_within_the_library_limits():
    with pytest.raises(ValueError, match="LIMITS"):
        AppSettings(max_steps=LIMITS.max_steps + 1)
    with pytest.raises(ValueError, match="LIMITS"):
        AppSettings(max_size=LIMITS.max_side * 2)


@needs_model
def test_the_embedded_model_names_the_words_it_does_not_know():
    from negprompt.app.views import Views

    line = Views.token_counter("blurry, watermark, extra fingers, hat", EMBEDDED_NAME)
    assert "does not know" in line and "watermark" in line and "fingers" in line, line
    assert "hat" not in line.split("does not know")[1], f"'hat' is a word the model knows: {line}"
    known = Views.known_words()
    assert {"hat", "glasses", "mustache", "beard"} <= set(known), known
    assert "watermark" not in known


def test_an_offline_hub_model_is_refused_at_once(monkeypatch):
    from negprompt.app.models import check_available
    from negprompt.app.views import Views

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(InputError, match="not downloaded and there is no network"):
        check_available("stable-diffusion-v1-5/stable-diffusion-v1-5")
    line = Views.token_counter("portrait photo of a man", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert time.perf_counter() - start < 5, "An offline Hub model must be refused without waiting on the network."
    assert "/" not in line and "not downloaded" in line, f"No limit that is not the model's may show: {line}"


def test_models_that_cannot_load_are_refused_with_the_reason(tmp_path):
    from negprompt.app.models import check_available

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"0")
    with pytest.raises(InputError, match="is a file"):
        check_available(str(weights))
    other = tmp_path / "sd3"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    with pytest.raises(InputError, match="PixArtSigmaPipeline"):
        check_available(str(other))
    (other / "model_index.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        check_available(str(other))
    with pytest.raises(InputError, match="without model_index.json"):
        check_available(str(tmp_path))


def test_a_request_over_the_budget_is_refused_with_its_estimate():
    from negprompt.app.runner import Runner

    runner = Runner(AppSettings(budget_s=60, device="cpu"))
    small = build_request(runner.settings, Form(prompt="a man", negatives=((0, "hat"),), model=EMBEDDED_NAME))
    assert runner.admit(small) < 60
    big = build_request(runner.settings, Form(prompt="a man", negatives=tuple(enumerate("abcdefg")), rows=4,
                                              steps=50, size="1024x1024", model=EMBEDDED_NAME))
    with pytest.raises(InputError) as error:
        runner.admit(big)
    assert error.value.argument == "cost" and re.search(r"would take about \d+(\.\d)? (min|h) ", str(error.value)), \
        f"The refusal must give the estimate: {error.value}"
    runner.speed.record(EMBEDDED_NAME, "cpu", units=1e6, seconds=1e6)  # a measured, far slower device
    assert runner.admit(small) > 60, "A default-sized request is admitted however busy the machine is."
    two_rows = build_request(runner.settings, Form(prompt="a man", negatives=tuple(enumerate("abc")), rows=2,
                                                   model=EMBEDDED_NAME))
    with pytest.raises(InputError):
        runner.admit(two_rows)


def test_a_run_past_its_deadline_stops(tiny_sd_folder):
    from negprompt.app.runner import GENERATION_LOCK, DeadlineExceeded, Runner

    settings = AppSettings(deadline_s=0.001, device="cpu")
    request = build_request(settings, Form(prompt="a man", negatives=((0, "hat"),), steps=30,
                                           model=str(tiny_sd_folder)))
    with pytest.raises(DeadlineExceeded, match="longest this app runs"):
        list(Runner(settings).generate(request))
    assert not GENERATION_LOCK.locked()


def test_an_identical_request_gets_the_finished_result_without_queueing(tiny_sd_folder):
    """A class pressing the same example: the second identical request is answered from the first one's result,
    even while another comparison holds the model; any difference (here the seed) runs anew."""
    from negprompt.app.form import Form, build_request
    from negprompt.app.runner import GENERATION_LOCK, Reused, Runner, Step
    from negprompt.app.settings import AppSettings

    settings = AppSettings(device="cpu", preview_every=2)
    runner = Runner(settings)
    form = Form(prompt="portrait photo of a man", negatives=((0, "hat"),), seed=4, steps=4, model=str(tiny_sd_folder))
    first = [e for e in runner.generate(build_request(settings, form)) if not isinstance(e, Step)]
    with GENERATION_LOCK:  # the model is busy with someone else's comparison
        again = list(runner.generate(build_request(settings, form)))
    assert len(again) == 1 and isinstance(again[0], Reused) and again[0].result is first[0], \
        "An identical request must get the finished result at once, without waiting for the model."
    other = list(runner.generate(build_request(settings, replace(form, seed=5))))
    assert not any(isinstance(e, Reused) for e in other), "Another seed is another comparison."
    assert other[-1].cells[0].seed == 5


# -----------------------------------------------------------------------------------------------------------------
# Compare is never silent: every refusal, at its field or in the status line


def _form(**changes) -> Form:
    return Form(**{"prompt": "portrait photo of a man", "negatives": ((0, "hat"),), **changes})


@pytest.mark.parametrize("field, value, label, words", [
    ("steps", 0, "Steps", "from 1 to 50"),
    ("steps", 51, "Steps", "from 1 to 50"),
    ("steps", -3, "Steps", "from 1 to 50"),
    ("guidance", 1, "Guidance scale", "above 1"),
    ("guidance", 0.5, "Guidance scale", "above 1"),
    ("guidance", LIMITS.max_guidance + 1, "Guidance scale", f"at most {LIMITS.max_guidance:g}"),
    ("rows", 0, "Seeds (rows)", "from 1 to 4"),
    ("rows", 5, "Seeds (rows)", "from 1 to 4"),
    ("seed", -1, "Seed", f"from 0 to {LIMITS.max_seed}"),
    ("seed", LIMITS.max_seed + 1, "Seed", f"from 0 to {LIMITS.max_seed}"),
    ("size", "4x4", "Size", "from 8 to 1024"),
    ("size", "2048x64", "Size", "from 8 to 1024"),
    ("steps", None, "Steps", "not a number"),  # an emptied number box
])
def test_every_out_of_range_number_is_refused_at_its_field(field, value, label, words):
    with pytest.raises(InputError) as error:
        build_request(AppSettings(), _form(**{field: value}))
    assert field_label(error.value.argument) == label and words in str(error.value), \
        f"{field}={value!r} must be refused at {label!r} saying {words!r}, not clamped: {error.value.argument}: " \
        f"{error.value}"


@pytest.mark.parametrize("field", ["prompt", "other", "negative"])
def test_long_text_is_refused_with_one_short_message(field):
    text = "a" * 3000
    form = _form(negatives=((0, text),)) if field == "negative" else _form(**{field: text})
    with pytest.raises(InputError) as error:
        build_request(AppSettings(), form)
    assert str(error.value) == f"3,000 characters; at most {LIMITS.max_text_chars:,}", \
        f"One short message, without the text: {str(error.value)[:200]}"
    assert field_label(error.value.argument) == {"prompt": "Prompt", "other": "Another positive prompt",
                                                 "negative": "Negative prompt 1"}[field]


@pytest.mark.parametrize("field", ["prompt", "other", "negative", "model"])
def test_a_lone_surrogate_is_refused_at_its_field(field):
    text = "portrait \ud800 of a man"
    form = _form(negatives=((0, text),)) if field == "negative" else _form(**{field: text})
    with pytest.raises(InputError) as error:
        build_request(AppSettings(), form)
    assert "lone surrogate" in str(error.value) and "\\ud800" in str(error.value), str(error.value)
    str(error.value).encode("utf-8")  # the message itself can be sent as JSON and shown


def test_the_token_counter_answers_a_lone_surrogate():
    from negprompt.app.views import Views

    line = Views.token_counter("portrait \ud800 of a man", EMBEDDED_NAME)
    assert "lone surrogate" in line, line


def test_no_text_box_lets_the_browser_cut_text_and_no_number_is_clamped():
    """A textbox with max_length makes the browser cut a pasted text unseen; a slider clamps what is typed into
    its box (steps 0 became 1). The app's own checks refuse both, so neither widget may do it first."""
    import gradio as gr

    from negprompt.app.layout import build_demo

    demo = build_demo(AppSettings())
    blocks = list(demo.blocks.values())
    cut = [b.label for b in blocks if isinstance(b, gr.Textbox) and b.max_length is not None]
    assert not cut, f"These boxes cut long text in the browser: {cut}"
    sliders = {b.label for b in blocks if isinstance(b, gr.Slider)}
    assert not sliders & {"Steps", "Guidance scale", "Seeds (rows)"}, f"Form numbers must not be sliders: {sliders}"


def test_every_form_label_is_a_field_that_shows_or_opens():
    """A refusal is pointed at its field when that field shows; one about a field in the closed Advanced options
    opens them and shows in the status line; every other refusal shows in the status line."""
    from negprompt.app.form import LABELS
    from negprompt.app.layout import ADVANCED, build_demo

    demo = build_demo(AppSettings())
    assert demo is not None
    visible = {"Prompt", "Negative prompts", "Negative prompt {n}", "Seed", "Mode"}
    for label in set(LABELS.values()):
        assert label in visible or label in ADVANCED, f"{label!r} is neither in the form nor in Advanced options"


def test_a_refusal_about_a_hidden_field_shows_in_the_status_line():
    """The seed article's example (with another positive prompt), then Leave one out: the refusal names the field
    and where it is, in the status line, and opens Advanced options."""
    from negprompt.app.views import Views

    form = _form(negatives=((0, "mustache"),), other="portrait photo of a man without mustache", mode="Leave one out")
    view = next(Views(AppSettings()).run(form))
    assert "Another positive prompt" in view["errors"] and "Another positive prompt" in view["status"], view


def test_a_cut_prompt_warns_in_one_short_line(tiny_sd_folder):
    from negprompt.app.views import Views

    settings = AppSettings(device="cpu", model=str(tiny_sd_folder), preview_every=0, detector=False)
    text = ", ".join(["portrait photo of a man with a hat"] * 50)[:1900]
    view = Views(settings).final(_form(prompt=text, steps=2))
    assert "Done" in view["status"] and "cut" in view["status"], view["status"]
    warning = view["status"].split("⚠️", 1)[1]
    assert len(warning) < 300, f"A cut prompt's warning must stay short in the status line: {len(warning)} chars"


def test_the_embedded_model_keeps_every_step_for_the_plot():
    settings = AppSettings(preview_every=5)
    assert settings.kept_every(EMBEDDED_NAME) == 1, "The step plot must show every step of the embedded model."
    assert settings.kept_every("stable-diffusion-v1-5/stable-diffusion-v1-5") == 5
    assert AppSettings(preview_every=0).kept_every(EMBEDDED_NAME) == 0, "No previews means none kept."


# -----------------------------------------------------------------------------------------------------------------
# Hostile inputs: folder models that need code or lack components; raw calls with the wrong number of items


def _folder(tmp_path, index: dict):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(folder)


SD_INDEX = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]}


@pytest.mark.parametrize("index, words", [
    ({**SD_INDEX, "unet": ["my_unet", "MyUNet"]}, "needs custom code: unet (my_unet.MyUNet)"),
    ({**SD_INDEX, "_class_name": ["my_pipeline", "MyPipeline"]}, "custom pipeline (my_pipeline.MyPipeline)"),
    ({**SD_INDEX, "auto_map": {"unet": "my_unet.MyUNet"}}, "needs custom code"),
    ({"_class_name": "StableDiffusionPipeline"}, "has no unet, vae, text_encoder, tokenizer, scheduler"),
    ({**SD_INDEX, "vae": [None, None]}, "has no vae"),
    ({"unet": ["diffusers", "UNet2DConditionModel"]}, "names no pipeline class"),
    ([1, 2], "not a JSON object"),
])
def test_a_folder_model_that_needs_code_or_lacks_parts_is_refused_at_the_model_field(tmp_path, index, words):
    from negprompt.app.models import check_available
    from negprompt.loading import load

    folder = _folder(tmp_path, index)
    with pytest.raises(InputError) as error:
        check_available(folder)
    assert error.value.argument == "model" and words in str(error.value), str(error.value)
    with pytest.raises(InputError) as error:  # the library refuses it before importing anything
        load(folder, device="cpu")
    assert error.value.argument == "model" and words in str(error.value), str(error.value)


def test_a_folder_model_that_needs_code_is_refused_in_the_app(tmp_path):
    from negprompt.app.views import Views

    folder = _folder(tmp_path, {**SD_INDEX, "unet": ["my_unet", "MyUNet"]})
    view = next(Views(AppSettings(device="cpu")).run(_form(model=folder)))
    assert "Model" in view["errors"] and "custom code" in view["status"], view


@pytest.mark.parametrize("name, count", [("compare", 2), ("compare", 10), ("explore", 9), ("explore", 0)])
def test_a_raw_call_with_the_wrong_number_of_items_is_refused_by_count(name, count):
    from negprompt.app.calls import ENDPOINTS, count_problem

    expected = len(ENDPOINTS[name])
    problem = count_problem(name, json.dumps({"data": ["x"] * count}).encode())
    assert problem == (f"/{name} takes {expected} data items ({', '.join(ENDPOINTS[name])}), in this order; "
                       f"got {count}"), problem
    assert count_problem(name, json.dumps({"data": ["x"] * expected}).encode()) is None
    assert count_problem(name, b"not json") is None, "A body that is not JSON is left to Gradio's own check."

@needs_model
def test_the_xray_mode_names_a_loaded_embedding_and_makes_one_cell_per_vector():
    from negprompt.embeddings import vector_count
    from negprompt.loading import EMBEDDED_EMBEDDINGS

    name, path = EMBEDDED_EMBEDDINGS[0]
    form = Form(prompt="portrait photo of a man", negatives=((0, name.upper()),), mode="X-ray an embedding")
    request = build_request(AppSettings(), form)
    vectors = vector_count(str(path))
    assert request.vectors == vectors and request.cells == 2 + vectors, (
        "X-ray makes the baseline, the whole embedding and one cell per vector.")
    with pytest.raises(InputError, match="not a negative embedding of this model") as error:
        build_request(AppSettings(), replace(form, negatives=((1, "mustache"),)))
    assert field_label(error.value.argument, (1,)) == "Negative prompt 2"


def test_a_lora_tag_in_a_negative_is_explained_at_its_field():
    form = Form(prompt="portrait photo of a man", negatives=((0, "hat"), (2, "blurry, <lora:detail:0.8>")))
    with pytest.raises(InputError, match="a LoRA changes the model, not the negative prompt") as error:
        build_request(AppSettings(), form)
    assert field_label(error.value.argument) == "Negative prompt 3"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from served_app import serve

    with serve(tmp_path_factory) as (url, model):
        yield url, model


def _raw_call(url: str, name: str, body: bytes):
    """POST /call/NAME as any HTTP client can: (status code, the JSON answer or the event stream's last event)."""
    import httpx

    answer = httpx.post(url + f"gradio_api/call/{name}", content=body, timeout=60,
                        headers={"content-type": "application/json"})
    if answer.status_code != 200:
        return answer.status_code, answer.json()
    text = httpx.get(url + f"gradio_api/call/{name}/{answer.json()['event_id']}", timeout=120).text
    return 200, text.split("event: ")[-1]


@pytest.mark.slow
def test_raw_calls_with_too_few_or_too_many_items_are_refused_naming_the_count(served):
    from negprompt.app.calls import ENDPOINTS

    url, model = served
    good = {"compare": ["portrait photo of a man", ["hat"], 0, 0, 7.5, "auto", model, 1, "Default"]}
    good["explore"] = [*good["compare"][:2], "leave-one-out", *good["compare"][2:]]
    for name, data in good.items():
        for items in (data[:2], [], [*data, "extra"], [*data, 1, 2, 3]):
            status, answer = _raw_call(url, name, json.dumps({"data": items}).encode())
            assert status == 422 and f"takes {len(ENDPOINTS[name])} data items" in answer["detail"] \
                and f"got {len(items)}" in answer["detail"], f"/{name} with {len(items)} items: {status} {answer}"
        status, stream = _raw_call(url, name, json.dumps({"data": data}).encode())  # steps 0: the right count
        assert status == 200 and stream.startswith("error") and "Steps" in stream and "from 1 to" in stream, \
            f"With the right count the app's own check must answer: {stream[:300]}"


@pytest.mark.slow
def test_a_lone_surrogate_through_the_api_is_refused_at_its_field(served):
    url, model = served
    body = ('{"data": ["portrait \\ud800 of a man", ["hat"], 0, 3, 7.5, "auto", "%s", 1, "Default"]}' % model)
    status, stream = _raw_call(url, "compare", body.encode())
    assert status == 200 and stream.startswith("error") and "Prompt" in stream and "lone surrogate" in stream, \
        stream[:300]
