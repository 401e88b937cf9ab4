"""Normalized Attention Guidance on the transformer families (SD3/SD3.5's joint attention, FLUX.1's double- and
single-stream attention), on tiny models: wrapped but not steering is the plain diffusers pipeline bit for bit; a
steered layer is the paper's equations on hand-computed joint attention; NAG with nothing to push away from leaves
the positive run; a NAG cell is the same beside other cells as alone; a FLUX.1-schnell-like model gets "CFG (inert
here)" beside NAG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negprompt.guidance import CFG, NAG, normalized_attention_guidance

PROMPT = "portrait photo of a man"
TOLERANCE = 2  # max pixel difference, in 1/255 steps, between two runs that differ only in their batch's rounding
SIZE = {"height": 64, "width": 64}


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    """A tiny SD3 with two joint blocks (the negative's text stream then crosses a block: the last block's text
    output is dropped)."""
    from diffusers import SD3Transformer2DModel

    from negprompt.architectures import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline()
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    torch.manual_seed(1)
    pipe = type(pipe)(**{**pipe.components, "transformer": SD3Transformer2DModel(**{**config, "num_layers": 2})})
    folder = tmp_path_factory.mktemp("tiny-sd3")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    """A tiny FLUX.1 without guidance embedding, in a folder named as FLUX.1-schnell is (one double-stream and one
    single-stream block)."""
    from negprompt.architectures import tiny_flux_pipeline

    folder = tmp_path_factory.mktemp("tiny-flux-schnell")
    tiny_flux_pipeline().save_pretrained(folder)
    return folder


def loaded(folder):
    from negprompt.loading import load_pipeline

    return load_pipeline(folder, device="cpu")


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_wrapped_but_not_steering_is_bit_for_bit_the_plain_pipeline(kind, request):
    """The same pipeline object before and after its attention is wrapped (two copies of a model loaded apart can
    differ in the last bit on a CPU, whose kernels round by the weights' memory alignment)."""
    from diffusers import DiffusionPipeline

    from negprompt.attention import JointProcessor, install, installed
    from negprompt.engine import compare
    from negprompt.families import family_of
    from negprompt.plan import negatives_spec

    folder = request.getfixturevalue(f"{kind}_folder")
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    scale = {"guidance_scale": 4.0} if kind == "sd3" else {"true_cfg_scale": 4.0}
    spec = negatives_spec(PROMPT, ["hat", "glasses"], [3], model="tiny", steps=2, guidance_scale=4.0, **SIZE)

    def both():
        called = pipe(PROMPT, negative_prompt="hat", num_inference_steps=2, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(3), **scale, **SIZE).images
        return called, [np.asarray(c.image) for c in compare(pipe, spec).cells]

    plain_call, plain_cells = both()
    assert not installed(pipe.transformer)
    family = family_of(pipe)
    assert install(pipe.transformer, family.attention_wrapper)
    layers = [p for p in pipe.transformer.attn_processors.values() if isinstance(p, JointProcessor)]
    assert layers and len(layers) == len(pipe.transformer.attn_processors), "Every joint layer is wrapped."
    wrapped_call, wrapped_cells = both()
    assert np.array_equal(plain_call, wrapped_call), "The wrapped transformer must compute exactly what it did."
    for cell, a, b in zip(spec.cells, plain_cells, wrapped_cells):
        assert np.array_equal(a, b), f"{cell.label}: a comparison without NAG must not change when wrapped."


def attend(attn, image, text, *, text_first: bool, joint: bool = True):
    """softmax(Q K^T / sqrt(d)) V per head over the image tokens and the text tokens, written out; the image tokens'
    output, before any output projection. ``joint``: text through the layer's own text projections (``add_*``);
    otherwise one sequence through the same projections (FLUX's single-stream blocks)."""
    heads = attn.heads

    def split(x):
        return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)

    if joint:
        q, k, v = (split(f(image)) for f in (attn.to_q, attn.to_k, attn.to_v))
        tq, tk, tv = (split(f(text)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.norm_added_q is not None:
            tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
        q, k, v = ((torch.cat([t, x] if text_first else [x, t], dim=2)) for x, t in ((q, tq), (k, tk), (v, tv)))
    else:
        sequence = torch.cat([text, image], dim=1)
        q, k, v = (split(f(sequence)) for f in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
    d = q.shape[-1]
    weights = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(image.shape[0], -1, heads * d)
    return out[:, text.shape[1]:] if text_first else out[:, :image.shape[1]]


@pytest.mark.parametrize("layer", ["sd3 joint", "flux double-stream", "flux single-stream"])
def test_a_steered_joint_layer_is_the_papers_equations_on_hand_computed_attention(layer, request):
    from negprompt import attention

    kind, stream = layer.split(" ", 1)
    transformer = loaded(request.getfixturevalue(f"{kind}_folder")).transformer
    blocks = transformer.single_transformer_blocks if stream == "single-stream" else transformer.transformer_blocks
    attn = blocks[0].attn
    processor = attn.processor
    assert isinstance(processor, attention.JointProcessor)
    generator = torch.Generator().manual_seed(2)
    dim = attn.to_q.in_features
    text_dim = attn.add_k_proj.in_features if stream != "single-stream" else dim
    image = torch.randn(1, 16, dim, generator=generator).expand(3, -1, -1).clone()
    image[2] += 0.5  # a row that is not steered, with image tokens of its own
    text = torch.randn(3, 7, text_dim, generator=generator)  # row 0: the positive's text, row 1: the negative's
    method = NAG(scale=4.0, tau=2.0, alpha=0.5)
    steer = attention.Steering()
    steer.watch({0: (method, 1)}, text_tokens=text.shape[1])
    if stream == "single-stream":
        sequence = torch.cat([text, image], dim=1)
        plain = processor(attn, sequence)
        with attention.steering(steer):
            steered = processor(attn, sequence)
        z_pos, z_neg = (attend(attn, image[i:i + 1], text[i:i + 1], text_first=True, joint=False) for i in (0, 1))
        expected = normalized_attention_guidance(z_pos, z_neg, 4.0, 2.0, 0.5)
        got, text_part, plain_text = steered[:, 7:], steered[:, :7], plain[:, :7]
        others = steered[2], plain[2]
    else:
        text_first = kind == "flux"
        plain = processor(attn, image, text)
        with attention.steering(steer):
            steered = processor(attn, image, text)
        z_pos, z_neg = (attend(attn, image[i:i + 1], text[i:i + 1], text_first=text_first) for i in (0, 1))
        expected = attn.to_out[0](normalized_attention_guidance(z_pos, z_neg, 4.0, 2.0, 0.5))
        got, text_part, plain_text = steered[0], steered[1], plain[1]
        others = steered[0][2], plain[0][2]
    assert torch.allclose(got[0:1], expected, atol=1e-5), "The positive row's image tokens must be NAG's output."
    assert torch.allclose(got[1:2], expected, atol=1e-5), (
        "The steering row's image tokens get the same output, so the two rows keep sharing their image tokens.")
    assert not torch.allclose(expected, plain[:, 7:][0:1] if stream == "single-stream" else plain[0][0:1]), (
        "NAG must change the layer's output here.")
    assert torch.equal(text_part, plain_text), "The text tokens' outputs (each row's own text stream) are unchanged."
    assert torch.equal(*others), "A row that is not steered must not change."
    again = processor(attn, sequence) if stream == "single-stream" else processor(attn, image, text)
    assert all(torch.equal(a, b) for a, b in zip(again, plain)) if isinstance(plain, tuple) else torch.equal(again,
                                                                                                            plain)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_nag_with_nothing_to_push_away_from_leaves_the_positive_run(kind, request):
    from negprompt.engine import compare
    from negprompt.plan import methods_spec

    pipe = loaded(request.getfixturevalue(f"{kind}_folder"))
    plain = compare(pipe, PROMPT, [], seed=3, steps=3, guidance_scale=4.0, **SIZE).cells[0].image
    same = methods_spec(PROMPT, [PROMPT], [3], [NAG()], model="tiny", steps=3, guidance_scale=4.0, **SIZE)
    unscaled = methods_spec(PROMPT, ["hat"], [3], [NAG(scale=0.0)], model="tiny", steps=3, guidance_scale=4.0,
                            **SIZE)
    assert max_diff(compare(pipe, same).cells[1].image, plain) <= TOLERANCE, (
        "NAG against the positive prompt itself is the positive run (CFG against the empty prompt).")
    assert max_diff(compare(pipe, unscaled).cells[1].image, plain) <= TOLERANCE, "NAG with s = 0 is the positive run."


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_a_nag_cell_beside_other_cells_equals_the_cell_alone(kind, request):
    from negprompt.engine import compare
    from negprompt.plan import methods_spec

    pipe = loaded(request.getfixturevalue(f"{kind}_folder"))
    settings = dict(model="tiny", steps=3, guidance_scale=4.0, **SIZE)
    mixed = compare(pipe, methods_spec(PROMPT, ["hat", "glasses"], [3, 4], [CFG(), NAG(scale=8.0)], **settings))
    alone = compare(pipe, methods_spec(PROMPT, ["glasses"], [4], [NAG(scale=8.0)], **settings))
    def find(method):
        return next(c for c in mixed.cells
                    if c.seed == 4 and c.spec.negative == "glasses" and c.spec.guidance.name == method)

    cell = find("nag")
    assert max_diff(cell.image, alone.cells[1].image) <= TOLERANCE, "A NAG cell must not depend on its neighbours."
    assert max_diff(alone.cells[1].image, alone.cells[0].image) > TOLERANCE, "NAG must act on this model."
    one_by_one = compare(pipe, alone.spec, max_batch=1)
    assert max_diff(one_by_one.cells[1].image, alone.cells[1].image) <= TOLERANCE, (
        "Split into chunks of one cell, the NAG cell keeps its steering row with it.")
    cfg = find("cfg")
    reference = compare(pipe, PROMPT, ["glasses"], seed=4, **{k: v for k, v in settings.items() if k != "model"})
    assert max_diff(cfg.image, reference.cells[1].image) <= TOLERANCE, "A CFG cell beside NAG cells is plain CFG."


def test_a_schnell_like_flux_gets_cfg_inert_beside_nag_automatically(flux_folder):
    from negprompt.engine import compare
    from negprompt.plan import negatives_spec
    from negprompt.verdicts import fit_to_model

    pipe = loaded(flux_folder)
    spec = negatives_spec(PROMPT, ["hat"], [4], model=str(flux_folder), steps=3, guidance_scale=1.0, **SIZE)
    doubled = fit_to_model(spec, pipe)
    assert [c.label for c in doubled.cells] == ["baseline: no negative", "- hat (cfg, inert here)", "- hat (nag)"], (
        "At true-CFG scale 1 a FLUX.1-schnell model runs no negative branch: CFG is inert, NAG is offered.")
    baseline, cfg, nag = (c.image for c in compare(pipe, doubled).cells)
    assert max_diff(cfg, baseline) == 0, "With no negative branch the CFG cell is the baseline."
    assert max_diff(nag, baseline) > 0, (  # a random tiny FLUX barely reads its text: NAG moves it a little
        "NAG acts in the one branch the model runs.")
    stronger = negatives_spec(PROMPT, ["hat"], [4], model=str(flux_folder), steps=3, guidance_scale=4.0, **SIZE)
    assert [c.label for c in fit_to_model(stronger, pipe).cells][1] == "- hat (cfg)", (
        "At a true-CFG scale above 1 the negative branch runs: the CFG cell is not called inert.")


def test_the_apps_fixed_methods_keep_nag_on_a_loaded_transformer(sd3_folder):
    from negprompt.plan import methods_spec
    from negprompt.verdicts import fit_to_model

    spec = methods_spec(PROMPT, ["hat"], [1], [CFG(), NAG()], model="tiny", steps=1)
    assert fit_to_model(spec, loaded(sd3_folder), optional_methods=True) == spec, (
        "A transformer loaded by negprompt can be steered: the guidance-methods mode keeps its NAG cells.")


def test_admission_counts_the_nag_cells_a_distilled_model_will_get(tmp_path):
    """Before the model is loaded its name is read (FLUX.1-schnell: NAG beside each CFG cell, every NAG cell at the
    most rows a cell can take); once loaded, the run's own spec and rows are counted exactly."""
    from negprompt.app.form import Form, build_request
    from negprompt.app.runner import Runner
    from negprompt.app.settings import AppSettings
    from negprompt.architectures import tiny_flux_pipeline
    from negprompt.cost import StepCost
    from negprompt.loading import load_pipeline, loaded_now

    folder = tmp_path / "tiny-flux-schnell"
    tiny_flux_pipeline().save_pretrained(folder)
    model = str(folder)
    settings = AppSettings(device="cpu", model=model, models=(model,), preview_every=0)
    runner = Runner(settings)
    request = build_request(settings, Form(prompt="a man", negatives=((0, "hat"), (1, "glasses")), steps=3,
                                           guidance=4.0, size="64x64", model=model))
    with runner.costs._lock:  # a measured cost: one second per row and per decoded image
        runner.costs._known[(model, "cpu", 64, 64)] = StepCost(call_s=0.0, row_s=1.0, decode_s=1.0)
    assert loaded_now(model) is None
    spec, family = runner.planned(request)
    assert family is None and [c.guidance.name for c in spec.cells] == ["cfg", "cfg", "nag", "cfg", "nag"], (
        "Not loaded: the name says FLUX.1-schnell, so each negative is counted with its NAG cell.")
    assert runner.admit(request, measure=False) == 3 * 12 + 5, (
        "3 steps x 12 rows (baseline and 2 CFG cells of 2 rows, 2 NAG cells of 3: empty, positive and the "
        "negative's steering row) + 5 decodes.")
    load_pipeline(folder, device="cpu")
    spec, family = runner.planned(request)
    assert family is not None and family.name == "flux" and len(spec.cells) == 5
    assert spec.cells[1].label.endswith("(cfg)"), "Loaded: the run's own spec (true CFG runs at 4: not inert)."
    assert runner.admit(request, measure=False) == 3 * 12 + 5
    plain = build_request(settings, Form(prompt="a man", negatives=((0, "hat"),), steps=3, guidance=4.0,
                                         size="64x64", model=str(tmp_path)))
    assert len(runner.planned(plain)[0].cells) == 2, "A model no name or config calls distilled keeps its cells."


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_nag_runs_the_same_on_fused_qkv_projections(kind, request):
    """A GPU load fuses the QKV projections (SD3 then runs ``FusedJointAttnProcessor2_0``); the steered layer asks
    the wrapped processor itself for its unprojected output, so NAG gives the same images either way."""
    from diffusers import DiffusionPipeline

    from negprompt.attention import install
    from negprompt.engine import compare
    from negprompt.families import family_of
    from negprompt.plan import methods_spec
    from negprompt.speedups import Levers, apply_speedups

    folder = request.getfixturevalue(f"{kind}_folder")
    spec = methods_spec(PROMPT, ["hat"], [3], [NAG(scale=8.0)], model="tiny", steps=2, guidance_scale=4.0, **SIZE)
    images = []
    for fused in (False, True):
        pipe = DiffusionPipeline.from_pretrained(folder)
        if fused:
            applied = apply_speedups(pipe, Levers(channels_last=False, fuse_qkv=True, compile=False))["applied"]
            assert "fuse_qkv:transformer" in applied
        install(pipe.transformer, family_of(pipe).attention_wrapper)
        images.append(compare(pipe, spec).cells[1].image)
    assert max_diff(*images) <= TOLERANCE, "NAG on fused projections must be NAG on the separate ones."
