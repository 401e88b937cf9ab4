"""The Gradio app, launched on a free loopback port and called through gradio_client like any API user would.

It runs the embedded model when assets/portrait-model exists, else a tiny random pipeline saved as a folder.
"""

from __future__ import annotations

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


def test_only_compare_is_public(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(endpoints) == ["/compare"], f"Exactly one public endpoint, /compare, must be listed: {list(endpoints)}"


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


def test_the_button_streams_previews_then_the_results(tiny_sd_folder):
    """The Compare button's handler, in process: previews every step, then the gallery (with the other positive
    prompt beside it), the grid and the zip."""
    import zipfile

    from negprompt.config import AppSettings
    from negprompt.ui import _Handlers

    model = str(tiny_sd_folder)
    handlers = _Handlers(AppSettings(model=model, models=(model,), preview_every=1))
    outputs = list(handlers.run("portrait photo of a man", 5, 1, 3, 7.5, "auto", "Default", model,
                                "portrait photo of a man without mustache", False, 2, "mustache", "glasses", "",
                                progress=lambda *a, **k: None))
    previews = [out[1] for out in outputs[:-1] if isinstance(out[1], list)]
    assert previews and previews[0][1][1].startswith("step 1/3"), "Previews of every cell must stream while denoising."
    status, gallery, grid, archive, table, outcome, _ = outputs[-1]
    captions = [caption for _, caption in gallery]
    assert captions[0].startswith("baseline") and captions[1].startswith("- mustache"), captions
    assert captions[3].startswith("positive: portrait photo of a man without mustache"), captions
    assert grid.width > 0 and "- glasses" in table
    assert "manifest.json" in zipfile.ZipFile(archive).namelist(), "The zip must hold the manifest."


def test_detector_readout_reads_a_detector_module(monkeypatch):
    import sys
    import types

    from negprompt import service

    records = [{"mustache": 0.9, "hat": 0.1, "clean_score": 0.8, "clean": True},
               {"mustache": 0.2, "hat": 0.7, "clean_score": 0.3, "clean": False}]
    fake = types.SimpleNamespace(load_detector=lambda path=None: "weights",
                                 detect=lambda images, detector: records[:len(images)])
    monkeypatch.setitem(sys.modules, "negprompt.portrait_model.detector", fake)
    service._detector_state.clear()
    readout = service.detector_readout([None, None])
    assert [service.seen(r) for r in readout] == [["mustache"], ["hat", "unclear image"]], readout
    service._detector_state.clear()


def test_settings_come_from_the_environment(monkeypatch):
    from negprompt.config import AppSettings

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
    from negprompt.config import AppSettings
    from negprompt.ui import _Handlers

    model = str(tiny_sd_folder)
    handlers = _Handlers(AppSettings(model=model, models=(model,), preview_every=0))
    *_, final = handlers.run("portrait photo of a man", 0, 1, 2, 7.5, "auto", "Default", model, "", False, 1, "hat",
                             progress=lambda *a, **k: None)
    outcome = final[5]
    gallery, grid = handlers.toggle(outcome, True)
    assert len(gallery) == 2 and not isinstance(gallery[0][0], str), "With the toggle on, cells show as maps."
    assert grid.height > final[2].height, "The grid gains a row of difference maps."


def test_an_abandoned_run_stops_at_its_next_step(tiny_sd_folder):
    """Closing the stream (the page went away) cancels the comparison instead of running it to the end."""
    import time

    from negprompt import service
    from negprompt.config import AppSettings

    settings = AppSettings.from_env()
    request = service.build_request(settings, "portrait photo of a man", ["mustache"], seed=1, steps=40,
                                    guidance=7.0, model=str(tiny_sd_folder))
    stream = service._generate(request, device="cpu")
    first = next(stream)
    assert first.done == 1
    stream.close()
    deadline = time.time() + 30
    while service._run_lock.locked() and time.time() < deadline:
        time.sleep(0.05)
    assert not service._run_lock.locked(), "An abandoned run must release the generation lock promptly."
