"""The mechanism explorer on a real (tiny) pipeline: term modes through the engine and the command line, verdicts,
previews kept across chunks, divergence curves in the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from negprompt.engine import compare
from negprompt.explore import PreviewRecorder, leave_one_out_spec, split_terms
from negprompt.plan import CellSpec, ComparisonSpec
from negprompt.verdicts import INERT, explain, model_facts

PROMPT = "portrait photo of a man"
A1111_NEGATIVE = ("(worst quality:1.4), (low quality:1.4), (normal quality:1.4), lowres, bad anatomy, bad hands, "
                  "((extra fingers)), missing fingers, text, error, cropped, jpeg artifacts, signature, watermark, "
                  "username, blurry, EasyNegative, ng_deepnegative_v1_75t, (bad hands, extra limbs:1.2), "
                  "[deformed:ugly:10]")


def cli(*args, capsys):
    from negprompt.cli import main

    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.slow
def test_cli_leave_one_out_of_a_pasted_a1111_negative_ranks_its_twenty_terms(tiny_sd_folder, tmp_path, capsys):
    status, stdout, stderr = cli("--model", tiny_sd_folder, "--prompt", PROMPT, "--negative", A1111_NEGATIVE,
                                 "--leave-one-out", "--seed", "0", "--steps", "2", "--out", tmp_path, capsys=capsys)
    assert status == 0, stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    cells = manifest["cells"]
    assert len(cells) == 22 and manifest["spec"]["mode"] == "leave-one-out"
    assert [c["term"] for c in cells[2:]] == split_terms(A1111_NEGATIVE)
    assert all(c["reference"] == 1 for c in cells[2:]), "Leave-out cells are compared against the full negative."
    assert cells[0]["verdict"] is None and cells[1]["verdict"]["status"] in ("acts", INERT)
    assert any("literal characters" in r for r in cells[2]["verdict"]["reasons"]), "(worst quality:1.4) is A1111."
    assert manifest["preview_steps"][-1] == 2 and len(cells[1]["divergence"]) == len(manifest["preview_steps"])
    ranking = manifest["terms"]
    assert ranking["kind"] == "leave-out" and len(ranking["terms"]) == 20
    changes = [t["mean_change"] for t in ranking["terms"]]
    assert changes == sorted(changes, reverse=True)
    assert f"trimmed negative: {ranking['trimmed_negative']}" in stdout


def test_cli_term_modes_take_exactly_one_negative(tiny_sd_folder, tmp_path, capsys):
    status, _, stderr = cli("--model", tiny_sd_folder, "--prompt", PROMPT, "--negative", "hat", "--negative",
                            "glasses", "--terms-alone", "--out", tmp_path, capsys=capsys)
    assert status == 2 and "exactly one negative" in stderr
    with pytest.raises(SystemExit) as exit_:
        cli("--prompt", PROMPT, "--negative", "hat, glasses", "--leave-one-out", "--timing", "0", capsys=capsys)
    assert exit_.value.code == 2, "Term modes and --timing are different modes: one at a time."


def test_cli_terms_alone_compares_each_term_with_the_baseline(tiny_sd_folder, tmp_path, capsys):
    status, stdout, stderr = cli("--model", tiny_sd_folder, "--prompt", PROMPT, "--negative", "hat, glasses",
                                 "--terms-alone", "--steps", "2", "--preview-every", "0", "--out", tmp_path,
                                 capsys=capsys)
    assert status == 0, stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(c["kind"], c["negative_prompt"], c["reference"]) for c in manifest["cells"][:4]] == [
        ("baseline", "", None), ("negative", "hat, glasses", 0), ("term-alone", "hat", 0),
        ("term-alone", "glasses", 0)]
    assert [c["seed"] for c in manifest["cells"][::4]] == [0, 1, 2], "Term modes rank over three seeds by default."
    assert "[" in stdout and "seeds, lowest to highest seed in brackets" in stdout, "The per-seed spread is shown."
    assert "preview_steps" not in manifest and manifest["cells"][2]["divergence"] is None
    assert manifest["terms"]["kind"] == "term-alone"


def test_an_empty_window_does_almost_nothing_and_the_verdict_says_why(tiny_sd):
    cells = (CellSpec(3, PROMPT, "", kind="baseline"), CellSpec(3, PROMPT, "hat", reference=0),
             CellSpec(3, PROMPT, "hat", window=(0.9, 0.95), reference=0))
    spec = ComparisonSpec(model="tiny", cells=cells, steps=4, guidance_scale=6.0)
    result = explain(compare(tiny_sd, spec), tiny_sd)
    assert result.verdicts[0] is None
    empty = result.verdicts[2]
    assert result.change_scores[2] == 0.0 and empty.status == INERT
    assert any("holds none of the 4 steps" in r for r in empty.reasons)


def test_previews_are_kept_for_every_cell_whatever_the_chunk_size(tiny_sd):
    spec = leave_one_out_spec(PROMPT, "hat, glasses, red", [1, 2], model="tiny", steps=4, guidance_scale=6.0)
    kept = []
    for max_batch in (None, 3):
        recorder = PreviewRecorder(spec.steps)
        result = explain(compare(tiny_sd, spec, max_batch=max_batch, callback=recorder, preview_every=2), tiny_sd,
                         recorder)
        assert result.preview_steps == [2, 4] and all(len(p) == len(spec.cells) for p in result.previews)
        kept.append([np.asarray(image) for image in result.previews[0]])
    for whole, chunked in zip(*kept):
        assert np.abs(whole.astype(int) - chunked.astype(int)).max() <= 2, (
            "A cell's preview must not depend on how the engine chunks the batch.")
    curves = result.manifest()["cells"]
    assert curves[0]["divergence"] is None and len(curves[1]["divergence"]) == 2
    assert curves[2]["divergence"][-1] == pytest.approx(result.change_scores[2], abs=1e-3), (
        "The curve's last point is the final change score against the reference.")


def test_model_facts_of_ordinary_pipelines_predict_no_distillation(tiny_sd, tiny_sdxl):
    from negprompt.verdicts import distillation

    for pipe in (tiny_sd, tiny_sdxl):
        facts = model_facts(pipe, "some-model")
        assert facts.time_cond_proj_dim is None and facts.token_limit == 75 and distillation(facts) is None
    assert model_facts(tiny_sd, "negprompt-portraits").vocabulary, "The embedded model's vocabulary is known."


@pytest.mark.slow
def test_cli_timing_on_the_embedded_model_reports_what_each_start_removed(tmp_path, capsys):
    status, stdout, stderr = cli("--prompt", PROMPT, "--negative", "hat", "--timing", "0,0.5", "--seeds", "1,2",
                                 "--steps", "4", "--out", tmp_path, capsys=capsys)
    assert status == 0, stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    starts = manifest["timing"]["hat"]["starts"]
    assert [r["start"] for r in starts] == [0.0, 0.5] and all(r["cells"] == 2 for r in starts)
    assert all(r["present"] + r["absent"] == 2 for r in starts)
    assert "negative 'hat' by start" in stdout and "latest start that still removes it" in stdout
