"""The Gradio app, launched on a free loopback port and called through gradio_client like any API user would.

It runs the embedded model when assets/portrait-model exists, else a tiny random pipeline saved as a folder.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from served_app import serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, model): the app, launched once for this module."""
    with serve(tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def call(client, served_model, **overrides):
    args = dict(prompt="portrait photo of a man", negative_prompts=["mustache", "glasses"], seed=3, steps=3,
                guidance_scale=7.5, size="auto", model=served_model, rows=1, scheduler="Default")
    args.update(overrides)
    return client.predict(**args, api_name="/compare")


def test_only_compare_and_explore_are_public(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(endpoints) == ["/compare", "/explore"], f"Exactly /compare and /explore are public: {list(endpoints)}"
    names = [p["parameter_name"] for p in endpoints["/explore"]["parameters"]]
    assert names[:3] == ["prompt", "negative_prompts", "mode"], names


def test_explore_runs_the_explorer_modes_through_the_api(client, served):
    """/explore: a leave-one-out of a three-term negative, and a timing sweep, each recorded in the manifest."""
    args = dict(prompt="portrait photo of a man", negative_prompts=["hat, glasses, beard"], mode="leave-one-out",
                seed=3, steps=2, guidance_scale=7.5, size="auto", model=served[1], rows=1, scheduler="Default")
    gallery, manifest = client.predict(**args, api_name="/explore")
    captions = [item["caption"].split(" · ")[0] for item in gallery]
    assert captions[0] == "baseline" and captions[1].startswith("full negative"), captions
    assert captions[2:] == ["without hat", "without glasses", "without beard"], captions
    assert manifest["spec"]["mode"] == "leave-one-out"
    assert [t["term"] for t in manifest["terms"]["terms"]] != [], "The manifest ranks the terms."
    gallery, manifest = client.predict(**{**args, "negative_prompts": ["hat"], "mode": "When it acts (timing)"},
                                       api_name="/explore")
    assert [item["caption"].split(" · ")[0] for item in gallery][1:] == ["- hat", "- hat @0.2", "- hat @0.4",
                                                                         "- hat @0.6"]
    assert manifest["spec"]["mode"] == "timing"
    with pytest.raises(Exception, match="Mode"):
        client.predict(**{**args, "mode": "sideways"}, api_name="/explore")


def test_compare_returns_captioned_cells_from_one_latent(client, served):
    gallery, manifest = call(client, served[1])
    captions = [item["caption"] for item in gallery]
    assert len(gallery) == 3, "One baseline plus one image per negative prompt."
    assert captions[0].startswith("baseline"), f"The baseline must come first: {captions}"
    assert captions[1].startswith("- mustache") and captions[2].startswith("- glasses"), captions
    cells = manifest["cells"]
    assert [c["negative_prompt"] for c in cells] == ["", "mustache", "glasses"]
    assert len({c["initial_latent_sha256"] for c in cells}) == 1, "Every cell must start from the same latent."
    for item, cell in zip(gallery, cells):
        image = Image.open(item["image"])
        assert image.format == "PNG", "The gallery must serve PNG so that the infotext survives download."
        assert image.info.get("parameters") == cell["parameters"], "Each PNG must carry its cell's infotext."
    assert "Negative prompt: mustache" in cells[1]["parameters"] and "Seed: 3" in cells[1]["parameters"]


def test_rows_share_a_latent_per_seed(client, served):
    gallery, manifest = call(client, served[1], negative_prompts=["hat"], seed=7, rows=2)
    seeds = [c["seed"] for c in manifest["cells"]]
    hashes = [c["initial_latent_sha256"] for c in manifest["cells"]]
    assert len(gallery) == 4 and seeds == [7, 7, 8, 8], f"Two rows of baseline + one negative: {seeds}"
    assert hashes[0] == hashes[1] and hashes[2] == hashes[3] and hashes[0] != hashes[2], \
        "Cells of a row share their starting latent; different seeds do not."


@pytest.mark.parametrize("overrides, field", [
    (dict(prompt="  "), "Prompt"),
    (dict(steps=0), "Steps"),
    (dict(steps=11), "Steps"),
    (dict(guidance_scale=1), "Guidance scale"),
    (dict(size="huge"), "Size"),
    (dict(seed=-1), "Seed"),
    (dict(negative_prompts=["a", "b", "c", "d", "e"]), "Negative prompts"),
    (dict(model="someone/else"), "Model"),
])
def test_bad_input_names_the_field_and_the_app_keeps_serving(client, served, overrides, field):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        call(client, served[1], **overrides)
    assert str(error.value).startswith(f"{field}:"), f"The error must name the field {field!r}: {error.value}"
    gallery, _ = call(client, served[1], negative_prompts=["hat"], steps=1)
    assert len(gallery) == 2, "After a bad request the next good one must still work."


def _no_progress(*_args, **_kwargs):
    return None


def test_the_button_streams_previews_then_the_results(tiny_sd_folder):
    """The Compare button's handler, in process: previews every step, then the gallery (with the other positive
    prompt beside it), the grid and the zip."""
    import zipfile

    from negprompt.app.form import Form
    from negprompt.app.settings import AppSettings
    from negprompt.app.views import Views

    model = str(tiny_sd_folder)
    views = Views(AppSettings(model=model, models=(model,), preview_every=1))
    form = Form(prompt="portrait photo of a man", negatives=((0, "mustache"), (1, "glasses")), seed=5, steps=3,
                model=model, other="portrait photo of a man without mustache")
    outputs = list(views.run(form, progress=_no_progress))
    previews = [out["gallery"] for out in outputs[:-1] if "gallery" in out]
    assert previews and previews[0][1][1].startswith("step 1/3"), "Previews of every cell must stream while denoising."
    final = {name: value for out in outputs for name, value in out.items()}
    captions = [caption for _, caption in final["gallery"]]
    assert captions[0].startswith("baseline") and captions[1].startswith("- mustache"), captions
    assert captions[3].startswith("+ portrait photo of a man without mustache"), captions
    assert "% changed" in captions[3], f"The other positive's caption must carry its change score: {captions[3]}"
    assert final["grid"].endswith("negprompt-portrait-photo-of-a-man-seed5.png"), \
        f"The grid's download must be named after the prompt and seed: {final['grid']}"
    assert Image.open(final["grid"]).info["parameters"].startswith("portrait photo of a man"), \
        "The grid must carry the infotext."
    assert "- glasses" in final["table"]
    archive = zipfile.ZipFile(final["download"])
    assert "manifest.json" in archive.namelist(), "The zip must hold the manifest."
    cells = json.loads(archive.read("manifest.json"))["cells"]
    other = [c for c in cells if c["kind"] == "positive"]
    assert len(other) == 1 and other[0]["positive_prompt"].endswith("without mustache"), \
        "The other positive prompt must be a cell of the comparison itself, in its manifest and zip."
    assert other[0]["initial_latent_sha256"] == cells[0]["initial_latent_sha256"], \
        "The other positive's cell must start from its row's latent."
    assert any("positive-" in name for name in archive.namelist()), "The zip must hold the other positive's PNG."
    assert final["status"].startswith("**Done: 4 images** (seed 5: baseline + 2 negative prompts + another"), \
        final["status"]


def test_detector_readout_reads_a_detector_module(monkeypatch):
    import sys
    import types

    from negprompt.app.outputs import Detector, seen

    records = [{"mustache": 0.9, "hat": 0.1, "clean_score": 0.8, "clean": True},
               {"mustache": 0.2, "hat": 0.7, "clean_score": 0.3, "clean": False}]
    fake = types.SimpleNamespace(load_detector=lambda path=None: "weights",
                                 detect=lambda images, detector: records[:len(images)])
    monkeypatch.setitem(sys.modules, "negprompt.portrait_model.detector", fake)
    monkeypatch.setattr(sys.modules["negprompt.portrait_model"], "detector", fake, raising=False)
    readout = Detector().readout([None, None])
    assert [seen(r) for r in readout] == [["mustache"], ["hat", "unclear image"]], readout


def test_settings_come_from_the_environment(monkeypatch):
    from negprompt.app.settings import AppSettings

    monkeypatch.setenv("NEGPROMPT_MODEL", "someone/model")
    monkeypatch.setenv("NEGPROMPT_MAX_CELLS", "9")
    monkeypatch.setenv("NEGPROMPT_ALLOW_CUSTOM_MODEL", "off")
    settings = AppSettings.from_env()
    assert settings.model == "someone/model" and settings.models[0] == "someone/model", settings.models
    assert settings.max_cells == 9 and settings.allow_custom_model is False
    monkeypatch.setenv("NEGPROMPT_MAX_STEPS", "lots")
    with pytest.raises(ValueError, match="NEGPROMPT_MAX_STEPS"):
        AppSettings.from_env()


def test_difference_toggle_swaps_in_the_maps(tiny_sd_folder):
    from negprompt.app.form import Form
    from negprompt.app.settings import AppSettings
    from negprompt.app.views import Views

    model = str(tiny_sd_folder)
    views = Views(AppSettings(model=model, models=(model,), preview_every=0))
    final = views.final(Form(prompt="portrait photo of a man", negatives=((0, "hat"),), steps=2, model=model))
    toggled = views.toggle(final["outcome"], True)
    gallery = toggled["gallery"]
    assert len(gallery) == 2 and isinstance(gallery[0][0], str), "The baseline stays an image (its map is empty)."
    assert not isinstance(gallery[1][0], str), "With the toggle on, the other cells show as maps."
    assert toggled["grid"].endswith("-differences.png"), "With the toggle on, the grid shows the difference maps."


def test_an_abandoned_run_stops_at_its_next_step(tiny_sd_folder):
    """Closing the stream (the page went away) cancels the comparison instead of running it to the end."""
    import time

    from negprompt.app.form import Form, build_request
    from negprompt.app.runner import GENERATION_LOCK, Runner
    from negprompt.app.settings import AppSettings

    settings = AppSettings(device="cpu")
    request = build_request(settings, Form(prompt="portrait photo of a man", negatives=((0, "mustache"),), seed=1,
                                           steps=40, guidance=7.0, model=str(tiny_sd_folder)))
    stream = Runner(settings).generate(request)
    first = next(stream)
    assert first.done == 1
    stream.close()
    deadline = time.time() + 30
    while GENERATION_LOCK.locked() and time.time() < deadline:
        time.sleep(0.05)
    assert not GENERATION_LOCK.locked(), "An abandoned run must release the generation lock promptly."


def test_uploads_are_refused(served):
    """The app takes no uploads: a hosted app must not store and serve files for anyone."""
    import httpx

    response = httpx.post(served[0] + "gradio_api/upload", files={"files": ("big.bin", b"0" * 20_000)}, timeout=30)
    assert response.status_code >= 400, f"A 20 KB upload must be refused: {response.status_code} {response.text[:200]}"


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
def test_an_abandoned_api_call_stops_and_frees_the_lock(tmp_path_factory, how):
    """A /compare call that is cancelled, or whose caller goes away, stops within a few steps."""
    import time

    import httpx
    from gradio_client import Client

    from negprompt.app.runner import ABANDONED_AFTER_S, GENERATION_LOCK

    with serve(tmp_path_factory, max_steps=200, budget_s=10_000, preview_every=0) as (url, model):
        client = Client(url, verbose=False)
        call(client, model, steps=1)  # loads the model
        args = dict(prompt="portrait photo of a man", negative_prompts=["hat"], seed=1, steps=200,
                    guidance_scale=7.5, size="auto", model=model, rows=1, scheduler="Default")
        if how == "cancel":
            job = client.submit(**args, api_name="/compare")
        else:
            event = httpx.post(url + "gradio_api/call/compare", json={"data": list(args.values())}).json()
            stream = httpx.Client(timeout=60).stream("GET", url + f"gradio_api/call/compare/{event['event_id']}")
            stream.__enter__()
        start = time.time()
        while not GENERATION_LOCK.locked() and time.time() - start < 60:
            time.sleep(0.05)
        assert GENERATION_LOCK.locked(), "The comparison must have started."
        time.sleep(0.5)
        job.cancel() if how == "cancel" else stream.__exit__(None, None, None)
        stopped = time.time()
        while GENERATION_LOCK.locked() and time.time() - stopped < 60:
            time.sleep(0.05)
        waited = time.time() - stopped
    assert not GENERATION_LOCK.locked(), f"After {how}, the run must stop and free the generation lock."
    assert waited < ABANDONED_AFTER_S + 20, f"After {how}, the run took {waited:.1f} s to stop."
