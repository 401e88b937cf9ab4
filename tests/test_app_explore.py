"""The app's explorer modes through the Compare button's handler, in process, on a tiny pipeline folder."""

from __future__ import annotations

import json
import zipfile

import pytest

from negprompt.app.form import Form, build_request
from negprompt.app.settings import AppSettings
from negprompt.errors import InputError

TWENTY_TERMS = ("worst quality, low quality, normal quality, lowres, blurry, jpeg artifacts, watermark, signature, "
                "text, username, (bad anatomy:1.2), bad hands, extra fingers, missing fingers, cropped, "
                "out of frame, deformed, ugly, duplicate, mutated")


def _no_progress(*_args, **_kwargs):
    pass


def _run(model: str, **form):
    from negprompt.app.views import Views

    views = Views(AppSettings(model=model, models=(model,), preview_every=0))
    outputs = list(views.run(Form(prompt="portrait photo of a man", seed=5, steps=2, model=model, **form),
                             progress=_no_progress))
    return {name: value for out in outputs for name, value in out.items()}


@pytest.mark.slow
def test_leave_one_out_shows_each_left_out_term_and_a_ranking(tiny_sd_folder):
    model = str(tiny_sd_folder)
    final = _run(model, negatives=((0, "hat, glasses, beard"),), rows=2, mode="Leave one out")
    assert not final.get("errors"), final.get("status")
    captions = [caption for _, caption in final["gallery"]]
    assert len(captions) == 2 * 5, f"Per seed: baseline + full negative + one cell per term: {captions}"
    assert captions[1].startswith("full negative"), captions
    assert [c.split(" · ")[0] for c in captions[2:5]] == ["without hat", "without glasses", "without beard"], captions
    ranked = final["explored"]
    assert "| rank | term | change |" in ranked and all(t in ranked for t in ("hat", "glasses", "beard")), ranked
    assert isinstance(final["trimmed"], str)
    manifest = json.loads(zipfile.ZipFile(final["download"]).read("manifest.json"))
    assert manifest["spec"]["mode"] == "leave-one-out", "The zip's manifest must record the mode."
    assert "terms" in json.dumps(manifest), "The manifest must hold the ranked terms."


@pytest.mark.slow
def test_timing_makes_one_cell_per_start(tiny_sd_folder):
    model = str(tiny_sd_folder)
    final = _run(model, negatives=((0, "hat"),), mode="When it acts (timing)")
    assert not final.get("errors"), final.get("status")
    captions = [caption for _, caption in final["gallery"]]
    assert len(captions) == 1 + 4, f"The baseline and one cell per start (0, 0.2, 0.4, 0.6): {captions}"
    assert captions[1].split(" · ")[0] == "- hat", "Start 0 is the plain negative."
    assert [c.split(" · ")[0] for c in captions[2:]] == ["- hat @0.2", "- hat @0.4", "- hat @0.6"], captions
    assert "When it acts (timing): 5 images per seed" in final["status"], final["status"]


def test_a_pasted_twenty_term_negative_is_accepted_in_leave_one_out():
    settings = AppSettings()
    form = Form(prompt="portrait photo of a man", negatives=((0, TWENTY_TERMS),), mode="Leave one out")
    request = build_request(settings, form)
    assert request.mode == "leave-one-out" and request.cells == 22, \
        "A 20-term negative in one box: baseline + full + 20 leave-outs, within the app's cell cap."


def test_the_cell_cap_counts_the_mode_cells_and_names_the_box():
    form = Form(prompt="portrait photo of a man", negatives=((0, TWENTY_TERMS),), rows=2, mode="Leave one out")
    with pytest.raises(InputError) as caught:
        build_request(AppSettings(), form)
    assert caught.value.argument == "negatives[0]" and "44 images" in str(caught.value)


def test_each_mode_counts_its_cells():
    base = dict(prompt="portrait photo of a man", negatives=((0, "hat"), (1, "glasses")))
    counts = {mode: build_request(AppSettings(), Form(**base, mode=mode)).cells for mode in
              ("Compare negatives", "When it acts (timing)", "Guidance methods")}
    terms = Form(prompt=base["prompt"], negatives=((0, "hat, glasses"),), mode="Each term alone")
    counts["Each term alone"] = build_request(AppSettings(), terms).cells
    assert counts == {"Compare negatives": 3, "When it acts (timing)": 9, "Guidance methods": 9,
                      "Each term alone": 4}, counts


def test_a_term_mode_refuses_a_second_negative_at_its_box():
    form = Form(prompt="portrait photo of a man", negatives=((0, "hat"), (1, "glasses")), mode="Each term alone")
    with pytest.raises(InputError) as caught:
        build_request(AppSettings(), form)
    assert caught.value.argument == "negatives[1]", "The refusal must point at the extra box, not drop it silently."


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(InputError) as caught:
        build_request(AppSettings(), Form(prompt="a", negatives=((0, "hat"),), mode="everything"))
    assert caught.value.argument == "mode"


def test_a_caption_says_when_its_negative_does_almost_nothing():
    from types import SimpleNamespace

    from negprompt.app.outputs import badge
    from negprompt.verdicts import ACTS, INERT, Verdict

    result = SimpleNamespace(verdicts=[None, Verdict(INERT, 0.2, ("it changed 0.20% of the image", "guidance <= 1")),
                                       Verdict(ACTS, 9.0, ("it changed 9.00% of the image",))])
    assert badge(result, SimpleNamespace(index=1)) == "⚠️ does almost nothing: it changed 0.20% of the image"
    assert badge(result, SimpleNamespace(index=2)) == "" and badge(result, SimpleNamespace(index=0)) == ""


def test_the_cost_estimate_counts_every_image_of_the_mode():
    from negprompt.app.runner import Runner

    runner = Runner(AppSettings())
    base = dict(prompt="portrait photo of a man", negatives=((0, "hat"), (1, "glasses")))
    plain, timing = (runner.estimate(build_request(AppSettings(), Form(**base, mode=mode)))
                     for mode in ("Compare negatives", "When it acts (timing)"))
    assert timing == pytest.approx(plain * 9 / 3), "Timing makes 9 images (baseline + 4 starts x 2), not 3."


def test_step_scrubber_shows_every_cell_at_each_kept_step_and_the_curves_end_at_the_change(tiny_sd_folder):
    """After a run, the scrubber's last position shows the final images, an earlier one every cell at that step,
    and the plot has one curve per cell with a reference, ending at the change score shown in the gallery."""
    from negprompt.app.views import Views

    model = str(tiny_sd_folder)
    views = Views(AppSettings(model=model, models=(model,), preview_every=2))
    final = views.final(Form(prompt="portrait photo of a man", seed=5, steps=6, model=model,
                             negatives=((0, "hat"), (1, "glasses"))))
    assert not final.get("errors"), final.get("status")
    outcome = final["outcome"]
    assert final["scrubber"] == 2, "Kept steps 2, 4 and the final 6: the slider runs over indices 0-2."
    assert final["scrubber_steps"] == [2, 4, 6], "The slider names the steps it runs over."
    assert [caption.split(" · ")[0] for _, caption in final["frames"]] == ["step 6/6"] * 3
    early = views.frame(outcome, 0)["frames"]
    assert [caption for _, caption in early] == ["step 2/6 · baseline", "step 2/6 · - hat", "step 2/6 · - glasses"]
    assert views.frame(outcome, 99)["frames"] == final["frames"], "An index past the end shows the last step."
    assert views.frame(None, 0)["frames"] == [], "Before any run there is nothing to scrub."
    curves = final["curves"]
    assert sorted(set(curves["image"])) == ["- glasses", "- hat"], "No curve for the baseline (no reference)."
    assert list(curves[curves["image"] == "- hat"]["step"]) == [2, 4, 6]
    last = curves[(curves["image"] == "- hat") & (curves["step"] == 6)]["change"].item()
    assert last == pytest.approx(outcome.result.change_scores[1], abs=0.01)


def test_the_gallery_can_show_where_each_negative_was_attended_to(tiny_sd_folder):
    """The attention toggle swaps in each negative cell's overlay; the baseline stays its image; the manifest in
    the zip holds each cell's change inside and outside the attended region."""
    from negprompt.app.views import Views

    model = str(tiny_sd_folder)
    views = Views(AppSettings(model=model, models=(model,), preview_every=0))
    final = views.final(Form(prompt="portrait photo of a man", seed=5, steps=3, model=model,
                             negatives=((0, "hat"),)))
    outcome = final["outcome"]
    plain = views.toggle(outcome, False, False)["gallery"]
    shown = views.toggle(outcome, False, True)["gallery"]
    assert isinstance(plain[1][0], str) and not isinstance(shown[1][0], str), "The negative's cell shows its overlay."
    assert shown[0][0] == plain[0][0], "The baseline has no negative: it stays its image."
    manifest = json.loads(zipfile.ZipFile(final["download"]).read("manifest.json"))
    assert manifest["cells"][0]["attention"] is None and "change_inside" in manifest["cells"][1]["attention"]
