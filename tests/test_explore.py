"""The mechanism explorer's pure parts: terms of a negative, leave-one-out, ranking, divergence, timing, verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from negprompt.errors import LIMITS, InputError
from negprompt.explore import (
    PreviewRecorder,
    divergence_curves,
    first_divergence,
    latest_removing_start,
    leave_one_out_spec,
    rank_terms,
    split_terms,
    terms_alone_spec,
    timing_table,
)
from negprompt.plan import CellSpec, ComparisonSpec
from negprompt.verdicts import INERT, ModelFacts, a1111_syntax, distillation, predicted_causes, verdict

PROMPT = "portrait photo of a man"
# A typical negative pasted from an A1111 prompt site: 20 terms, weights, emphasis and embedding names.
A1111_NEGATIVE = ("(worst quality:1.4), (low quality:1.4), (normal quality:1.4), lowres, bad anatomy, bad hands, "
                  "((extra fingers)), missing fingers, text, error, cropped, jpeg artifacts, signature, watermark, "
                  "username, blurry, EasyNegative, ng_deepnegative_v1_75t, (bad hands, extra limbs:1.2), "
                  "[deformed:ugly:10]")
TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "portrait-model" / "tokenizer"


@pytest.mark.parametrize(("negative", "terms"), [
    ("hat, glasses", ["hat", "glasses"]),
    ("  hat ,, glasses,  ", ["hat", "glasses"]),
    ("(bad hands, extra fingers:1.2), blurry", ["(bad hands, extra fingers:1.2)", "blurry"]),
    ("[cat, dog:10], <lora:x, y:1>, {a, b}", ["[cat, dog:10]", "<lora:x, y:1>", "{a, b}"]),
    (r"\(hat, glasses\)", [r"\(hat", r"glasses\)"]),
    ("red  hat,\nglasses", ["red hat", "glasses"]),
    ("a), b", ["a)", "b"]),
])
def test_split_terms_keeps_bracketed_groups_whole(negative, terms):
    assert split_terms(negative) == terms


def test_split_terms_reads_a_pasted_a1111_negative_as_its_twenty_terms():
    terms = split_terms(A1111_NEGATIVE)
    assert len(terms) == 20, "Weighted groups with commas inside must stay one term."
    assert terms[18] == "(bad hands, extra limbs:1.2)"


def test_leave_one_out_rows_hold_baseline_full_and_one_cell_per_term():
    spec = leave_one_out_spec(PROMPT, "hat, glasses, blurry", [3, 4], model="m", steps=5)
    assert len(spec.cells) == 2 * 5 and spec.mode == "leave-one-out"
    row = spec.cells[:5]
    assert [c.kind for c in row] == ["baseline", "negative", "leave-out", "leave-out", "leave-out"]
    assert [c.negative for c in row] == ["", "hat, glasses, blurry", "glasses, blurry", "hat, blurry",
                                         "hat, glasses"]
    assert [c.term for c in row[2:]] == ["hat", "glasses", "blurry"]
    assert [c.reference for c in row] == [None, 0, 1, 1, 1], "Leave-out cells compare against the full negative."
    assert [c.reference for c in spec.cells[5:]] == [None, 5, 6, 6, 6]
    assert {c.seed for c in spec.cells[5:]} == {4} and {c.row for c in spec.cells[5:]} == {1}
    assert ComparisonSpec.from_json(spec.to_json()) == spec, "A leave-one-out spec must replay from its manifest."


def test_leaving_out_the_only_term_gives_the_baseline_negative():
    spec = leave_one_out_spec(PROMPT, "hat", [1], model="m", baseline="zeros")
    assert spec.cells[2].negative is None


def test_a_pasted_25_term_negative_fits_one_row_and_validates():
    negative = ", ".join(f"term{k}" for k in range(25))
    spec = leave_one_out_spec(PROMPT, negative, [1], model="m")
    assert len(spec.cells) == 27 <= LIMITS.max_cells
    assert spec.validate() is spec
    with pytest.raises(InputError) as error:
        leave_one_out_spec(PROMPT, negative, [1, 2, 3], model="m").validate()
    assert error.value.argument == "max_cells", "Three rows of 27 cells exceed the cell limit, by name."


def test_terms_alone_compares_each_term_with_the_baseline():
    spec = terms_alone_spec(PROMPT, "hat, (glasses:1.2)", [1], model="m")
    assert [(c.kind, c.negative, c.reference) for c in spec.cells] == [
        ("baseline", "", None), ("negative", "hat, (glasses:1.2)", 0), ("term-alone", "hat", 0),
        ("term-alone", "(glasses:1.2)", 0)]
    assert len(terms_alone_spec(PROMPT, "hat, glasses", [1], model="m", include_full=False).cells) == 3


@pytest.mark.parametrize("negative", ["", " , ,", None])
def test_a_negative_without_terms_is_an_input_error(negative):
    with pytest.raises(InputError) as error:
        leave_one_out_spec(PROMPT, negative, [1], model="m")
    assert error.value.argument == "negative"


def test_rank_terms_orders_by_mean_change_flags_inert_terms_and_trims():
    spec = leave_one_out_spec(PROMPT, "blurry, hat, text, glasses", [1, 2], model="m")
    #          base  full  -blurry -hat -text -glasses
    changes = [0.0, 9.0, 0.2, 6.0, 0.9, 3.0,
               0.0, 8.0, 0.5, 2.0, 1.5, 4.0]
    ranking = rank_terms(spec, changes)
    assert [t.term for t in ranking.terms] == ["hat", "glasses", "text", "blurry"]
    assert ranking.terms[0].changes == (6.0, 2.0) and ranking.terms[0].mean == 4.0
    assert ranking.inert == ["blurry"], "'text' changed 1.5% on one row, so it is not inert."
    assert ranking.trimmed == "hat, text, glasses", "The trimmed negative keeps the original order."
    assert ranking.row_orders == ((1, 3, 2, 0), (3, 1, 2, 0))
    assert ranking.top_share(["hat", "glasses"]) == 1.0
    assert ranking.top_share(["hat"]) == 0.5
    assert ranking.to_dict()["trimmed_negative"] == "hat, text, glasses"


def test_rank_terms_needs_one_change_per_cell():
    spec = leave_one_out_spec(PROMPT, "hat, glasses", [1], model="m")
    with pytest.raises(InputError):
        rank_terms(spec, [1.0, 2.0])


def test_divergence_curves_measure_each_cell_against_its_reference_per_step():
    black, grey, white = (np.full((4, 4, 3), v, np.float32) for v in (0.0, 0.5, 1.0))
    previews = [[black, black, black], [black, grey, white], [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4),
                                                                                            (255, 255, 255)), black]]
    curves = divergence_curves(previews, [None, 0, 1])
    assert curves[0] is None
    assert curves[1] == [0.0, 50.0, 100.0]
    assert curves[2] == [0.0, 50.0, 100.0], "Cell 2 is compared with its reference, cell 1, not the baseline."
    assert first_divergence(curves[1], [5, 10, 15], threshold=10) == 10
    assert first_divergence([0.0, 0.1], [5, 10]) is None


def _timing_spec(starts, seeds):
    cells = []
    for row, seed in enumerate(seeds):
        base = len(cells)
        cells.append(CellSpec(seed, PROMPT, "", row=row, kind="baseline"))
        cells += [CellSpec(seed, PROMPT, "hat", window=(s, 1.0), reference=base, row=row) for s in starts]
    return ComparisonSpec(model="m", cells=tuple(cells), steps=10)


def _det(hat, glasses=0.1, smile=0.1):
    return {"hat": hat, "glasses": glasses, "smile": smile, "clean_score": 0.9, "clean": True}


def test_timing_table_counts_removals_additions_and_collateral_per_start():
    spec = _timing_spec([0.0, 0.5], [1, 2, 3, 4])
    detections = [
        _det(0.9), _det(0.1, glasses=0.9), _det(0.2),  # row 1: hat removed at both starts; start 0 adds glasses
        _det(0.8), _det(0.3), _det(0.7),  # row 2: removed at start 0 only
        _det(0.1), _det(0.9), _det(0.1),  # row 3: no hat in the baseline; start 0 adds one
        _det(0.6), _det(0.2), _det(0.4),  # row 4: removed at both
    ]
    changes = [0.0, 6.0, 2.0] * 4
    table = timing_table(spec, detections, "hat", changes, changes_outside=[0.0, 3.0, 1.0] * 4)
    early, late = table
    assert (early.start, early.present, early.removed, early.absent, early.added) == (0.0, 3, 3, 1, 1)
    assert (late.start, late.removed, late.added) == (0.5, 2, 0)
    assert early.removal_rate == 1.0 and late.removal_rate == pytest.approx(2 / 3)
    assert early.collateral_pp == 25.0 and late.collateral_pp == 0.0, "Glasses appeared in 1 of 4 early cells."
    assert early.other_flips == 0.25 and early.change == 6.0 and early.change_outside == 3.0
    assert latest_removing_start(table) == 0.0
    assert latest_removing_start(table, keep=0.6) == 0.5
    assert early.to_dict()["removal_rate"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Verdicts


@pytest.mark.parametrize(("name", "distilled"), [
    ("stabilityai/sdxl-turbo", True),
    ("stabilityai/sd-turbo", True),
    ("DreamShaperXL_Turbo_v2", True),
    ("ByteDance/SDXL-Lightning", True),
    ("juggernautXL_v9Rdphoto2Lightning", True),
    ("Hyper-SDXL-8steps", True),
    ("/models/HyperSD15/", True),
    ("latent-consistency/lcm-lora-sdxl", True),
    ("SimianLuo/LCM_Dreamshaper_v7", True),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", False),
    ("hyperRealism_v3", False),
    ("turbulence-xl", False),
    ("lightningmcqueen-style", False),
    ("negprompt-portraits", False),
])
def test_distilled_checkpoints_are_recognised_by_name(name, distilled):
    assert (distillation(ModelFacts(name=name)) is not None) is distilled


def test_distillation_from_config_and_not_from_trailing_spacing_alone():
    assert "time_cond_proj_dim=256" in distillation(ModelFacts(name="x", time_cond_proj_dim=256))
    assert distillation(ModelFacts(name="x", scheduler="LCMScheduler")) is not None
    assert distillation(ModelFacts(name="x", scheduler="DDIMScheduler", timestep_spacing="trailing")) is None, (
        "Trailing timestep spacing alone is no evidence: the embedded model uses it and is not distilled.")


@pytest.mark.parametrize(("text", "needle"), [
    ("(worst quality:1.4)", "attention weight"),
    ("((extra fingers))", "emphasis"),
    ("[blurry]", "emphasis"),
    ("((extra fingers))", "((extra fingers))"),
    ("[deformed:ugly:10]", "schedule"),
    ("[hat:5]", "schedule"),
    ("[cat|dog]", "alternation"),
    ("<lora:detail:0.8>", "extra-network"),
    ("EasyNegative", "embedding"),
    ("ng_deepnegative_v1_75t", "embedding"),
    ("badhandv4", "embedding"),
    ("negative_hand-neg", "embedding"),
])
def test_a1111_syntax_is_recognised(text, needle):
    found = a1111_syntax(text)
    assert len(found) == 1 and needle in found[0], found


@pytest.mark.parametrize("text", ["hat", "bad hands", "negative space", "red hat, glasses", r"\(hat\)", "bad"])
def test_plain_words_are_not_a1111_syntax(text):
    assert a1111_syntax(text) == []


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def test_predicted_causes_name_guidance_distillation_windows_and_syntax(tokenizer):
    cells = (CellSpec(1, PROMPT, "", kind="baseline"), CellSpec(1, PROMPT, "(hat:1.3)", reference=0),
             CellSpec(1, PROMPT, "hat", window=(0.55, 0.6), reference=0), CellSpec(1, PROMPT, "hat", reference=0))
    spec = ComparisonSpec(model="m", cells=cells, steps=10, guidance_scale=1.0)
    facts = ModelFacts(name="sdxl-turbo")
    causes = predicted_causes(facts, spec, 1, tokenizer)
    assert any("guidance scale 1 is at most 1" in c for c in causes)
    assert any("Turbo" in c for c in causes)
    assert any("(hat:1.3)" in c and "literal" in c for c in causes)
    assert any("holds none of the 10 steps" in c for c in predicted_causes(facts, spec, 2, tokenizer))
    active = ComparisonSpec(model="m", cells=cells, steps=10, guidance_scale=7.5)
    assert predicted_causes(ModelFacts(name="m"), active, 3, tokenizer) == [], "A plain negative has no caveats."


def test_a_term_past_the_token_limit_is_predicted_to_do_nothing(tokenizer):
    negative = ", ".join(["hat"] * 40 + ["glasses"])  # 81 tokens: 'glasses' is cut off
    spec = leave_one_out_spec(PROMPT, negative, [1], model="m")
    last = len(spec.cells) - 1
    assert spec.cells[last].term == "glasses"
    causes = predicted_causes(ModelFacts(name="m"), spec, last, tokenizer)
    assert any("81 tokens" not in c and "'glasses' lies in the part that is cut" in c for c in causes), causes
    assert any("cut off without a warning" in c for c in predicted_causes(ModelFacts(name="m"), spec, 1, tokenizer))


def test_unknown_words_are_named_when_the_vocabulary_is_known(tokenizer):
    spec = terms_alone_spec(PROMPT, "hat, blurry", [1], model="m")
    facts = ModelFacts(name="m", vocabulary=frozenset({"hat", "glasses"}))
    assert predicted_causes(facts, spec, 2, tokenizer) == []
    assert any("'blurry' is not a word this model learned" in c for c in predicted_causes(facts, spec, 3, tokenizer))


def test_verdict_is_measured_and_explained():
    spec = terms_alone_spec(PROMPT, "hat, (blurry:1.2)", [1], model="m")
    facts = ModelFacts(name="m")
    assert verdict(facts, spec, 0, 0.0) is None, "A baseline gets no verdict."
    acts = verdict(facts, spec, 2, 4.2)
    assert acts.status == "acts" and acts.reasons == ("it changed 4.20% of the image against its reference "
                                                      "(at least 1%)",)
    inert = verdict(facts, spec, 3, 0.3)
    assert inert.status == INERT and "under 1%" in inert.reasons[0] and "literal" in inert.reasons[1]
    assert inert.to_dict()["status"] == "does almost nothing"


def test_preview_recorder_joins_chunks_and_ends_with_the_final_images():
    passed_on = []
    recorder = PreviewRecorder(4, then=lambda done, total, previews: passed_on.append(done))
    for chunk, cells in enumerate((["a", "b"], ["c"])):  # two chunks of 4 steps, previews every 2 steps
        for step in range(1, 5):
            done = chunk * 4 + step
            recorder(done, 8, [f"{c}{step}" for c in cells] if step % 2 == 0 and done < 8 else None)
    steps, previews = recorder.frames(["A", "B", "C"])
    assert steps == [2, 4], "Step 4 of the last chunk gets no preview, so only step 2 has every cell; then the end."
    assert previews == [["a2", "b2", "c2"], ["A", "B", "C"]]
    assert passed_on == list(range(1, 9)), "The chained callback (a progress bar) must still see every step."


def test_preview_recorder_starts_over_when_the_engine_restarts():
    recorder = PreviewRecorder(2)
    recorder(1, 2, ["x1"])
    recorder(1, 4, ["y1"])  # restarted with smaller chunks
    recorder(3, 4, ["z1"])
    assert recorder.frames(["Y", "Z"]) == ([1, 2], [["y1", "z1"], ["Y", "Z"]])


def test_the_terms_cut_at_the_token_limit_are_named(tokenizer):
    from negprompt.verdicts import cut_terms

    negative = ", ".join([f"hat{k}" for k in range(30)])  # each 'hatN' is 2 or 3 tokens plus a comma
    cut = cut_terms(tokenizer, negative)
    assert cut and cut[-1] == "hat29" and "hat0" not in cut
    assert cut_terms(tokenizer, "hat, glasses") == []


def test_cell_verdicts_give_one_verdict_per_cell_and_none_for_baselines():
    from negprompt.verdicts import cell_verdicts

    spec = leave_one_out_spec(PROMPT, "hat, glasses", [1], model="m")
    verdicts = cell_verdicts(ModelFacts(name="m"), spec, [0.0, 5.0, 3.0, 0.1])
    assert verdicts[0] is None
    assert [v.status for v in verdicts[1:]] == ["acts", "acts", INERT]


def test_manifest_fields_carry_verdicts_divergence_and_the_ranked_terms():
    from types import SimpleNamespace

    from negprompt.verdicts import cell_verdicts, manifest_fields

    spec = leave_one_out_spec(PROMPT, "hat, glasses", [1], model="m")
    changes = [0.0, 6.0, 4.0, 0.2]
    cells = [SimpleNamespace(reference=c.reference, kind=c.kind) for c in spec.cells]
    grey = [np.full((2, 2, 3), v, np.float32) for v in (0.0, 0.1, 0.3, 0.1)]
    result = SimpleNamespace(spec=spec, cells=cells, change_scores=changes, preview_steps=[5, 10],
                             previews=[grey, grey], verdicts=cell_verdicts(ModelFacts(name="m"), spec, changes))
    per_cell, extra = manifest_fields(result)
    assert per_cell[0] == {"verdict": None, "divergence": None}
    assert per_cell[1]["divergence"] == [10.0, 10.0] and per_cell[1]["verdict"]["status"] == "acts"
    assert per_cell[3]["verdict"]["status"] == INERT
    assert extra["preview_steps"] == [5, 10]
    assert extra["terms"]["trimmed_negative"] == "hat" and extra["terms"]["inert_terms"] == ["glasses"]
    plain = SimpleNamespace(spec=spec, cells=cells, change_scores=changes)
    assert manifest_fields(plain)[0][1] == {"verdict": None, "divergence": None}, "No verdicts attached: nulls."


def test_timing_reports_cover_the_negatives_that_name_an_attribute():
    from negprompt.explore import timing_reports

    spec = _timing_spec([0.0, 0.5], [1, 2, 3, 4])
    detections = [_det(0.9), _det(0.1), _det(0.8)] * 4
    reports = timing_reports(spec, detections, [0.0, 5.0, 1.0] * 4, ["hat", "glasses"])
    assert list(reports) == ["hat"]
    assert [r["removal_rate"] for r in reports["hat"]["starts"]] == [1.0, 0.0]
    assert reports["hat"]["latest_removing_start"] == 0.0
    assert timing_reports(spec, detections, [0.0] * 12, ["glasses"]) == {}, "'hat' is not a detector attribute here."


def test_every_explorer_mode_has_an_explanation_and_term_modes_check_their_inputs():
    from negprompt import axes
    from negprompt.explore import default_preview_every

    assert all(len(axis.explanation) > 80 for axis in axes.ALL), "Every axis explains itself to a class."
    leave_out, alone = axes.get("leave-one-out"), axes.get("terms-alone")
    spec = leave_out.build(PROMPT, ["hat, glasses"], [1], model="m", steps=20)
    assert spec.mode == "leave-one-out" and default_preview_every(spec) == 2
    with pytest.raises(InputError) as error:
        alone.build(PROMPT, ["hat"], [1], model="m", windows=[(0.5, 1.0)])
    assert error.value.argument == "negatives[0]"
    with pytest.raises(InputError) as error:
        alone.build(PROMPT, ["hat"], [1], model="m", other_positive="a man")
    assert error.value.argument == "other_positive"
