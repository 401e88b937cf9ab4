"""The a1111 prompt reading: A1111's documented syntax as a table, and cells that equal the same embeddings built by
hand and run through plain diffusers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from negprompt import compare
from negprompt.infotext import parse_infotext
from negprompt.plan import CellSpec, ComparisonSpec, negatives_spec
from negprompt.reading import BREAK, CHUNK, attention, chunks, describe, schedule, terms, text_at

PROMPT = "portrait photo of a man"
TOLERANCE = 2  # max pixel difference, in 1/255 steps, between a cell and the same embeddings run by diffusers
W = 1.1  # A1111's emphasis factor


def close(pieces, expected):
    return len(pieces) == len(expected) and all(
        a[0] == b[0] and (a[1] is None and b[1] is None or a[1] is not None and b[1] is not None
                          and abs(a[1] - b[1]) < 1e-9) for a, b in zip(pieces, expected))


# A1111 wiki, "Features": attention/emphasis and BREAK.
ATTENTION_CASES = [
    ("a (word) b", [("a ", 1.0), ("word", W), (" b", 1.0)]),
    ("((word))", [("word", W * W)]),
    ("[word]", [("word", 1 / W)]),
    ("[[word]]", [("word", 1 / W / W)]),
    ("(word:1.5)", [("word", 1.5)]),
    ("(word:0.25)", [("word", 0.25)]),
    ("((word:1.5) more)", [("word", 1.5 * W), (" more", W)]),
    ("(worst quality:1.4), blurry", [("worst quality", 1.4), (", blurry", 1.0)]),
    (r"\(word\)", [("(word)", 1.0)]),
    (r"\[word\]", [("[word]", 1.0)]),
    ("(unclosed", [("unclosed", W)]),
    ("[unclosed", [("unclosed", 1 / W)]),
    ("unmatched) here]", [("unmatched) here]", 1.0)]),
    ("a: b", [("a: b", 1.0)]),
    ("hat BREAK glasses", [("hat", 1.0), (BREAK, None), ("glasses", 1.0)]),
    ("(a BREAK b)", [("a BREAK b", W)]),  # BREAK inside brackets is a word
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize("text, expected", ATTENTION_CASES, ids=[c[0] or "empty" for c in ATTENTION_CASES])
def test_attention_follows_a1111s_documented_emphasis(text, expected):
    assert close(attention(text), expected), f"{text!r} must read as {expected}, not {attention(text)}"


# A1111 wiki, "Features": prompt editing and alternating words. (text, steps, step (0-based), what it reads)
EDITING_CASES = [
    ("a [fantasy:cyberpunk:16] landscape", 30, 16, "a fantasy landscape"),
    ("a [fantasy:cyberpunk:16] landscape", 30, 17, "a cyberpunk landscape"),
    ("[a:b:0.4]", 10, 4, "a"),
    ("[a:b:0.4]", 10, 5, "b"),
    ("[x:0.3]", 20, 6, ""),  # "added from 30%": after step int(0.3 * 20) = 6
    ("[x:0.3]", 20, 7, "x"),
    ("[x::0.6]", 20, 12, "x"),  # removed after step 12
    ("[x::0.6]", 20, 13, ""),
    ("[x:10]", 20, 10, ""),  # a number without a decimal point is a step number
    ("[x:10]", 20, 11, "x"),
    ("[x:1.0]", 20, 19, ""),  # a fraction of 1 never switches
    ("[cow|horse] in a field", 10, 0, "cow in a field"),
    ("[cow|horse] in a field", 10, 1, "cow in a field"),
    ("[cow|horse] in a field", 10, 2, "horse in a field"),
    ("[cow|horse] in a field", 10, 3, "cow in a field"),
    ("(x:1.3) and [y]", 10, 5, "(x:1.3) and [y]"),  # emphasis is left to the attention reading
    ("([hat:glasses:0.5]:1.2)", 10, 6, "(glasses:1.2)"),
    ("[a:b]", 10, 5, "[a:b]"),  # not prompt editing: read as it is
    ("[a:[b:c:0.8]:0.2]", 10, 9, "c"),
]


@pytest.mark.parametrize("text, steps, step, expected", EDITING_CASES)
def test_prompt_editing_follows_a1111s_documented_schedule(text, steps, step, expected):
    assert text_at(text, step, steps) == expected, (
        f"{text!r} at step {step} of {steps} must read {expected!r}, not {text_at(text, step, steps)!r}")


def test_schedule_lists_each_text_with_its_last_step():
    assert schedule("[a:b:0.5]", 10) == [(5, "a"), (9, "b")], "[a:b:0.5] of 10 steps reads a to step 5, then b."
    assert schedule("hat", 10) == [(9, "hat")], "A text without editing reads the same at every step."


def test_terms_keep_weights_with_their_term_and_split_weighted_groups():
    negative = "(worst quality:1.4), (low quality:1.4), EasyNegative, (bad hands, extra fingers:1.2) BREAK blurry"
    assert terms(negative) == ["(worst quality:1.4)", "(low quality:1.4)", "EasyNegative", "(bad hands:1.2)",
                               "(extra fingers:1.2)", "blurry"], "Each term must carry its own weight."
    assert describe("(worst quality:1.4)") == "worst quality (weight 1.4)"
    assert describe("blurry") == "blurry"


# ---------------------------------------------------------------------------------------------------------------
# Chunks


def test_a_short_text_is_one_chunk_tokenized_as_diffusers_does(tiny_sd):
    tokenizer = tiny_sd.tokenizer
    [chunk] = chunks(tokenizer, "mustache, red hat")
    expected = tokenizer("mustache, red hat", padding="max_length", max_length=77, truncation=True).input_ids
    assert list(chunk.ids) == expected, "An unweighted short text must give diffusers' own 77 token ids."
    assert set(chunk.weights) == {1.0}


def test_long_text_break_and_comma_backtrack_make_chunks(tiny_sd):
    tokenizer = tiny_sd.tokenizer
    long = chunks(tokenizer, " ".join(["hat"] * 100))
    assert [c.used for c in long] == [CHUNK, 25], "100 tokens read as a full chunk and one of 25."
    assert all(len(c.ids) == 77 for c in long)
    assert [c.used for c in chunks(tokenizer, "hat BREAK glasses")] == [1, 1], "BREAK starts a new chunk."
    backtrack = chunks(tokenizer, " ".join(["hat"] * 70) + ", " + " ".join(["glasses"] * 10))
    assert [c.used for c in backtrack] == [71, 10], (
        "A term cut by the chunk end moves to the next chunk when the last comma is at most 20 tokens back.")


# ---------------------------------------------------------------------------------------------------------------
# Cells against embeddings made by hand


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_diff(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def embeddings_call(pipe, prompt_embeds, negative_embeds, seed, **kwargs):
    single = type(pipe)(**pipe.components)
    single.set_progress_bar_config(disable=True)
    return single(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                  generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images[0]


@torch.no_grad()
def encode_ids(pipe, ids):
    return pipe.text_encoder(torch.tensor([ids]))[0]


@pytest.fixture(scope="module")
def offset_sd():
    """A tiny SD pipeline whose text encoder's outputs have a non-zero mean, as real CLIP's do (the tiny one's final
    layer norm centres every token, so the mean-restoring step would divide by zero)."""
    from negprompt.architectures import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    with torch.no_grad():
        pipe.text_encoder.final_layer_norm.bias.fill_(0.3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_weighted_cell_equals_the_weights_applied_by_hand(offset_sd):
    tok = offset_sd.tokenizer
    spec = negatives_spec(PROMPT, ["(mustache:4), red hat"], [3], model="tiny", steps=4, guidance_scale=9.0,
                          reading="a1111")
    result = compare(offset_sd, spec)
    cell = result.cells[1]
    ids = tok("mustache, red hat", padding="max_length", max_length=77).input_ids
    z = encode_ids(offset_sd, ids)
    weights = torch.ones(77)
    weights[1:1 + len(tok("mustache", add_special_tokens=False).input_ids)] = 4.0
    weighted = z * weights[None, :, None]
    weighted = weighted * (z.mean() / weighted.mean())
    assert not torch.allclose(weighted, z), "The weight must change the embeddings."
    positive, _ = offset_sd.encode_prompt(PROMPT, "cpu", 1, False)
    reference = embeddings_call(offset_sd, positive, weighted, 3, num_inference_steps=4, guidance_scale=9.0)
    unweighted = embeddings_call(offset_sd, positive, z, 3, num_inference_steps=4, guidance_scale=9.0)
    assert max_diff(cell.image, unweighted) > TOLERANCE, "The weighted cell must differ from the unweighted one."
    assert max_diff(cell.image, reference) <= TOLERANCE, (
        "A weighted negative must equal its embeddings with each token's output multiplied by its weight and "
        "scaled back to the unweighted mean, run through diffusers.")


def test_a_chunked_long_negative_equals_the_hand_concatenated_embeddings(tiny_sd):
    tok = tiny_sd.tokenizer
    negative = " ".join(["glasses", "hat", "beard", "blurry"] * 25)  # 100 tokens, no commas
    spec = negatives_spec(PROMPT, [negative], [4], model="tiny", steps=4, guidance_scale=6.0, reading="a1111")
    cell = compare(tiny_sd, spec).cells[1]
    words = tok(negative, add_special_tokens=False).input_ids
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    first = [bos, *words[:75], eos]
    second = [bos, *words[75:], eos] + [pad] * (75 - len(words[75:]))
    negative_embeds = torch.cat([encode_ids(tiny_sd, first), encode_ids(tiny_sd, second)], dim=1)
    positive, _ = tiny_sd.encode_prompt(PROMPT, "cpu", 1, False)
    empty, _ = tiny_sd.encode_prompt("", "cpu", 1, False)
    positive_embeds = torch.cat([positive, empty], dim=1)  # the positive padded to two chunks with an empty one
    reference = embeddings_call(tiny_sd, positive_embeds, negative_embeds, 4, num_inference_steps=4,
                                guidance_scale=6.0)
    assert negative_embeds.shape[1] == 154
    assert max_diff(cell.image, reference) <= TOLERANCE, (
        "A 100-token negative read a1111 must equal its two 77-token chunks encoded apart and concatenated.")


@pytest.mark.parametrize("steps, same_as", [(8, "hat@0.3"), (10, "hat@0.4")])
def test_prompt_editing_equals_the_window_of_the_same_steps(tiny_sd, steps, same_as):
    """[hat:0.3] adds hat after step int(0.3 x steps): at 8 steps that is the window hat@0.3 (from step 3); at 10
    steps, where 0.3 x 10 is whole, it comes one step later than hat@0.3, like hat@0.4."""
    from negprompt.plan import parse_window

    text, window = parse_window(same_as)
    spec = negatives_spec(PROMPT, ["[hat:0.3]", text], [2], model="tiny", steps=steps, guidance_scale=6.0,
                          windows=[(0.0, 1.0), window], reading="a1111")
    result = compare(tiny_sd, spec)
    assert max_diff(result.cells[1].image, result.cells[2].image) == 0, (
        f"[hat:0.3] must equal the window {same_as} bit for bit at {steps} steps.")
    plain_hat = compare(tiny_sd, replace(spec, cells=spec.cells[:1] + (replace(spec.cells[1], negative="hat"),)))
    assert max_diff(result.cells[1].image, plain_hat.cells[1].image) > 0, "The edited negative must act later."


def test_a_negative_without_syntax_reads_the_same_under_both_readings(tiny_sd):
    spec = negatives_spec(PROMPT, ["mustache, red hat"], [5], model="tiny", steps=3, guidance_scale=6.0)
    plain, a1111 = compare(tiny_sd, spec), compare(tiny_sd, replace(spec, reading="a1111"))
    for p, a in zip(plain.cells, a1111.cells):
        assert max_diff(p.image, a.image) <= TOLERANCE, "Text without A1111 syntax must read the same both ways."


def test_sdxl_reads_a1111_through_both_encoders(tiny_sdxl):
    spec = negatives_spec(PROMPT, ["mustache"], [5], model="tiny", steps=3, guidance_scale=5.0, baseline="zeros")
    plain, a1111 = compare(tiny_sdxl, spec), compare(tiny_sdxl, replace(spec, reading="a1111"))
    for p, a in zip(plain.cells, a1111.cells):
        assert max_diff(p.image, a.image) <= TOLERANCE, (
            "SDXL text without syntax must read as diffusers encodes it (both encoders, pooled from the first).")
    weighted = compare(tiny_sdxl, replace(spec, reading="a1111", cells=(
        spec.cells[0], replace(spec.cells[1], negative="(mustache:1.6) " + " ".join(["hat"] * 80)))))
    assert max_diff(weighted.cells[1].image, a1111.cells[1].image) > 0


def test_plain_and_a1111_cells_share_one_comparison_and_each_equals_its_own_run(tiny_sd):
    long = ", ".join(["glasses"] * 50)
    spec = negatives_spec(PROMPT, [long], [6], model="tiny", steps=3, guidance_scale=6.0)
    mixed = replace(spec, cells=spec.cells + (replace(spec.cells[1], reading="a1111", label="a1111"),))
    result = compare(tiny_sd, mixed)
    alone_plain = compare(tiny_sd, spec)
    alone_a1111 = compare(tiny_sd, replace(spec, reading="a1111"))
    assert max_diff(result.cells[1].image, alone_plain.cells[1].image) == 0, "The plain cell must not change."
    assert max_diff(result.cells[2].image, alone_a1111.cells[1].image) == 0, "The a1111 cell must not change."
    assert any("cut" in w for w in result.warnings), "The plain cell's cut text must be warned about."


# ---------------------------------------------------------------------------------------------------------------
# Records


def test_the_reading_round_trips_through_the_manifest_and_infotext(tiny_sd):
    spec = negatives_spec(PROMPT, ["(mustache:1.3)"], [1], model="tiny", steps=2, reading="a1111")
    spec = replace(spec, cells=spec.cells + (replace(spec.cells[1], reading="plain"),))
    result = compare(tiny_sd, spec)
    manifest = result.manifest()
    again = ComparisonSpec.from_dict(manifest["spec"])
    assert again == result.spec, "The manifest must replay the reading of the comparison and of each cell."
    assert [c["reading"] for c in manifest["cells"]] == ["a1111", "a1111", "plain"]
    assert parse_infotext(result.cells[1].parameters)["Prompt reading"] == "a1111"
    assert "Prompt reading" not in parse_infotext(result.cells[2].parameters)
    old = dict(manifest["spec"])
    del old["reading"]
    assert ComparisonSpec.from_dict(old).reading == "plain", "A manifest from before readings reads plain."


def test_an_unknown_reading_is_refused():
    from negprompt.errors import InputError

    spec = negatives_spec(PROMPT, ["hat"], [1], model="tiny", reading="compel")
    with pytest.raises(InputError, match="reading='compel' must be one of plain, a1111"):
        spec.validate()


# ---------------------------------------------------------------------------------------------------------------
# The readings axis, explanations and the ranking


def test_readings_spec_puts_each_negative_read_both_ways_side_by_side():
    from negprompt.plan import readings_spec

    spec = readings_spec(PROMPT, ["(hat:1.3)", "glasses"], [1, 2], model="m", steps=4)
    row = [c for c in spec.cells if c.row == 0]
    assert [(c.kind, c.negative, c.reading, c.reference) for c in row] == [
        ("baseline", "", "plain", None), ("baseline", "", "a1111", None),
        ("negative", "(hat:1.3)", "plain", 0), ("negative", "(hat:1.3)", "a1111", 1),
        ("negative", "glasses", "plain", 0), ("negative", "glasses", "a1111", 1)], (
        "Each negative must be read plain against the plain baseline and a1111 against the a1111 baseline.")
    assert spec.mode == "readings" and len(spec.cells) == 12
    assert ComparisonSpec.from_json(spec.to_json()) == spec


def test_reading_notes_say_cut_read_as_characters_and_unknown_embedding(tiny_sd):
    from negprompt.verdicts import reading_notes

    tok = tiny_sd.tokenizer
    long = ", ".join(["hat"] * 40 + ["glasses"])
    cells = (CellSpec(1, PROMPT, "", kind="baseline"), CellSpec(1, PROMPT, "(hat:1.3), EasyNegative", reference=0),
             CellSpec(1, PROMPT, long, reference=0), CellSpec(1, PROMPT, "(hat:1.3), EasyNegative", reference=0,
                                                              reading="a1111"),
             CellSpec(1, PROMPT, long, reference=0, reading="a1111"))
    spec = ComparisonSpec(model="m", cells=cells, steps=4)
    assert reading_notes(spec, 1, tok) == ["A1111 syntax read as characters", "no embedding 'EasyNegative' loaded"]
    assert reading_notes(spec, 2, tok) == ["cut at 75 tokens"]
    assert reading_notes(spec, 3, tok) == ["no embedding 'EasyNegative' loaded"], "a1111 reads the weight."
    assert reading_notes(spec, 4, tok) == [], "The a1111 reading cuts nothing: it reads 75-token chunks."


def test_identical_term_images_are_grouped_and_the_spread_is_per_seed():
    from negprompt.explore import leave_one_out_spec, rank_terms
    from negprompt.verdicts import ranking_lines

    spec = leave_one_out_spec(PROMPT, "(worst quality:1.4), EasyNegative, text, hat", [1, 2], model="m",
                              reading="a1111")
    same, other = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 9, np.uint8)
    # per row: baseline, full, then one cell per term; EasyNegative and text give the full negative's image
    images = [other, same, other, same, same, other] * 2
    changes = [0, 20, 3.0, 0.0, 0.0, 5.0, 0, 20, 1.0, 0.0, 0.0, 7.0]
    ranking = rank_terms(spec, changes, images=images)
    assert ranking.identical == (("worst quality (weight 1.4)", "hat"), ("EasyNegative", "text")), (
        "Terms whose cells are the same image on every seed must be grouped.")
    assert [t.label for t in ranking.terms] == ["hat", "worst quality (weight 1.4)", "EasyNegative", "text"]
    assert ranking.unchanged == ("EasyNegative", "text"), "Terms whose cell is the full negative's image did nothing."
    assert ranking.terms[0].spread == (5.0, 7.0)
    lines = ranking_lines(ranking.to_dict(), 2)
    assert any(line.startswith("these 2 terms did the same thing") and "EasyNegative, text" in line
               for line in lines), lines
    assert any("[5.00-7.00%]  hat" in line for line in lines), "Each term shows its lowest and highest seed."
    assert ranking.trimmed == "(worst quality:1.4), hat", "The trimmed negative keeps A1111 syntax to copy."


def test_cli_compare_readings_runs_both_readings_and_checks_its_flags(tiny_sd_folder, tmp_path, capsys):
    import json

    from negprompt.cli import main

    status = main(["--model", str(tiny_sd_folder), "--prompt", PROMPT, "--negative", "(hat:1.3), glasses",
                   "--compare-readings", "--steps", "2", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert status == 0, out.err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["spec"]["mode"] == "readings"
    assert [c["reading"] for c in manifest["cells"]] == ["plain", "a1111", "plain", "a1111"]
    assert "A1111 syntax read as characters" in out.out, "The plain cell must say its weight was read as text."
    assert "Prompt reading: a1111" in manifest["cells"][3]["parameters"]
    status = main(["--prompt", PROMPT, "--negative", "hat", "--compare-readings", "--reading", "a1111"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "give no --reading" in err, err
    with pytest.raises(SystemExit) as exit_:
        main(["--prompt", PROMPT, "--negative", "hat", "--reading", "compel"])
    assert exit_.value.code == 2


def test_terms_cut_off_by_the_plain_reading_are_grouped_as_doing_the_same_thing(tiny_sd):
    from negprompt.explore import leave_one_out_spec
    from negprompt.verdicts import explain, summary_lines

    negative = " ".join(["red"] * 74) + ", glasses, beard, hat, blurry"  # everything after the 75th token is cut
    spec = leave_one_out_spec(PROMPT, negative, [1, 2], model="tiny", steps=2)
    result = explain(compare(tiny_sd, spec), tiny_sd)
    ranking = result.manifest()["terms"]
    assert ranking["identical_groups"] == [["glasses", "beard", "hat", "blurry"]], ranking["identical_groups"]
    assert ranking["same_as_reference"] == ["glasses", "beard", "hat", "blurry"]
    assert all("cut at 75 tokens" in t["notes"] for t in ranking["terms"] if t["term"] != spec.cells[2].term)
    lines = summary_lines(result)
    assert "these 4 terms did the same thing (identical images on every seed): glasses, beard, hat, blurry" in lines
    a1111 = explain(compare(tiny_sd, replace(spec, reading="a1111")), tiny_sd).manifest()["terms"]
    assert a1111["identical_groups"] == [] and a1111["same_as_reference"] == [], (
        "Read in 75-token chunks, every term acts: none is cut.")


def test_the_app_form_reads_the_reading_and_refuses_an_unknown_one():
    from negprompt.app.form import Form, build_request, field_label, request_spec
    from negprompt.app.settings import AppSettings
    from negprompt.errors import InputError

    settings = AppSettings(model="tiny", models=("tiny",))
    form = Form(prompt=PROMPT, negatives=((0, "(hat:1.3), glasses"),), mode="Plain vs A1111 reading",
                reading="A1111 ((x:1.3), BREAK, [a:b:0.4], 75-token chunks)", steps=4)
    request = build_request(settings, form)
    assert request.reading == "a1111" and request.mode == "readings"
    assert [c.reading for c in request_spec(request).cells] == ["plain", "a1111", "plain", "a1111"]
    leave = build_request(settings, Form(prompt=PROMPT, negatives=((0, "(hat:1.3), EasyNegative"),),
                                         mode="leave-one-out", reading="a1111", steps=4))
    assert request_spec(leave).reading == "a1111"
    assert [c.label for c in request_spec(leave).cells][2:] == ["without hat (weight 1.3)", "without EasyNegative"]
    with pytest.raises(InputError) as refused:
        build_request(settings, Form(prompt=PROMPT, negatives=((0, "hat"),), reading="compel"))
    assert field_label(refused.value.argument) == "Prompt reading" and "plain, a1111" in str(refused.value)


def test_a_loaded_embedding_reads_the_same_under_both_readings(tiny_sd_folder, tmp_path):
    """A multi-vector textual-inversion name (any case) is written out as its tokens by both readings; under a1111
    its weight applies to all of them, and it is no longer called an unknown embedding."""
    from negprompt.loading import load
    from negprompt.verdicts import reading_notes

    dim = load(tiny_sd_folder, device="cpu").pipe.text_encoder.config.hidden_size
    path = tmp_path / "badthing.pt"
    torch.save({"string_to_token": {"*": 265}, "name": "badthing",
                "string_to_param": {"*": torch.randn(3, dim, generator=torch.Generator().manual_seed(0)) * 2}}, path)
    loaded = load(tiny_sd_folder, device="cpu", embeddings=[("BadHandV4", str(path))])
    spec = negatives_spec(PROMPT, ["blurry, BadHandV4", "blurry, (badhandv4:1.5)"], [3], model="tiny", steps=3,
                          guidance_scale=6.0)
    plain, a1111 = compare(loaded, spec), compare(loaded, replace(spec, reading="a1111"))
    assert max_diff(plain.cells[1].image, a1111.cells[1].image) <= TOLERANCE, (
        "An embedding without syntax must read the same under both readings.")
    assert max_diff(a1111.cells[1].image, a1111.cells[2].image) > 0, "Its weight must change the a1111 cell."
    assert reading_notes(replace(spec, reading="a1111"), 1, loaded.pipe.tokenizer) == [], (
        "A loaded embedding is not an unknown one.")
    assert reading_notes(replace(spec, reading="a1111"), 1) == ["no embedding 'BadHandV4' loaded"]


def test_attention_maps_follow_the_a1111_tokens(tiny_sd_folder):
    """Under the a1111 reading a cell's attention map is taken over its text tokens in every chunk (weights and
    brackets are not tokens); the images do not change."""
    from negprompt.loading import load
    from negprompt.reading import token_positions

    loaded = load(tiny_sd_folder, device="cpu")
    negative = "(hat:1.2) " + " ".join(["glasses"] * 80)
    assert token_positions(loaded.pipe.tokenizer, negative) == [*range(1, 76), *range(78, 84)], (
        "81 tokens of text: 75 in the first chunk, 6 in the second, after its start token.")
    spec = negatives_spec(PROMPT, [negative], [1], model="tiny", steps=3, reading="a1111")
    with_maps = compare(loaded, spec, attention_maps=True)
    without = compare(loaded, spec)
    assert with_maps.attention_maps[1] is not None and with_maps.attention_maps[0] is None
    assert max_diff(with_maps.cells[1].image, without.cells[1].image) == 0, "Maps must not change the images."
