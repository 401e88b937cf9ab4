"""Normalized Attention Guidance: the paper's equations as a pure function, the hooked attention layer against a
hand computation, and whole runs (off: unchanged images; on a guidance-distilled UNet: the one negative that acts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negprompt.guidance import NAG, method_from_dict, normalized_attention_guidance, parse_method

PROMPT = "portrait photo of a man"


def by_hand(z_pos, z_neg, s, tau, alpha):
    """The paper's equations, one token at a time, in float64."""
    out = np.empty_like(z_pos)
    for i in range(z_pos.shape[0]):
        tilde = z_pos[i] + s * (z_pos[i] - z_neg[i])
        ratio = np.abs(tilde).sum() / np.abs(z_pos[i]).sum()
        hat = tilde * min(ratio, tau) / ratio
        out[i] = alpha * hat + (1 - alpha) * z_pos[i]
    return out


def test_nag_is_the_papers_equations_token_by_token():
    generator = torch.Generator().manual_seed(0)
    z_pos, z_neg = torch.randn(2, 6, 8, generator=generator, dtype=torch.float64)
    z_neg[0] = z_pos[0] + 0.01  # a token the negative barely moves: its norm ratio stays under tau
    for s, tau, alpha in [(5.0, 2.5, 0.25), (2.0, 1.2, 0.5), (5.0, 100.0, 1.0)]:
        got = normalized_attention_guidance(z_pos[None], z_neg[None], s, tau, alpha)[0].numpy()
        assert np.allclose(got, by_hand(z_pos.numpy(), z_neg.numpy(), s, tau, alpha), atol=1e-12), (s, tau, alpha)
    capped = normalized_attention_guidance(z_pos, z_neg, 5.0, 2.5, 1.0)
    ratio = capped.abs().sum(-1) / z_pos.abs().sum(-1)
    assert float(ratio.max()) <= 2.5 + 1e-9, "With alpha 1 the output's L1 norm is at most tau times the positive's."
    assert float(ratio[0]) < 2.5, "A token whose pushed norm is under the cap is not rescaled."


def test_nag_leaves_the_positive_alone_when_it_has_nothing_to_do():
    z_pos, z_neg = torch.randn(2, 1, 4, 8)
    assert torch.equal(normalized_attention_guidance(z_pos, z_pos), z_pos), "Z- = Z+ gives Z+."
    assert torch.allclose(normalized_attention_guidance(z_pos, z_neg, scale=0.0), z_pos), "s = 0 gives Z+."
    assert torch.allclose(normalized_attention_guidance(z_pos, z_neg, alpha=0.0), z_pos), "alpha = 0 gives Z+."


def test_nag_in_half_precision_is_the_float32_result_where_its_norms_pass_float16s_range():
    z_pos = torch.full((1, 2, 3072), 30.0)  # an L1 norm of 92,160: past float16's 65,504
    z_neg = z_pos.clone()
    z_neg[..., 0, :] = 25.0
    expected = normalized_attention_guidance(z_pos, z_neg)
    got = normalized_attention_guidance(z_pos.half(), z_neg.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all(), "No overflow to inf or NaN in float16."
    assert torch.allclose(got.float(), expected, rtol=1e-3), "The same result as in float32, rounded to float16."


def test_nag_is_a_guidance_method_with_the_papers_defaults():
    assert NAG() == NAG(scale=5.0, tau=2.5, alpha=0.25)
    assert parse_method("nag:3") == NAG(scale=3.0) and method_from_dict({"method": "nag", "tau": 2}) == NAG(tau=2)


def test_the_hooked_layer_equals_a_hand_computed_nag_layer(tiny_sd):
    from negprompt import attention

    unet = tiny_sd.unet
    processor = unet.attn_processors["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"]
    attn = next(m for name, m in unet.named_modules() if name.endswith("transformer_blocks.0.attn2"))
    assert isinstance(processor, attention.CaptureProcessor), "loading.load wraps every cross-attention layer."
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 16, attn.to_q.in_features, generator=generator)
    text = torch.randn(3, 77, attn.to_k.in_features, generator=generator)
    negative = torch.randn(1, 77, attn.to_k.in_features, generator=generator)
    plain = processor(attn, hidden, text)
    method = NAG(scale=4.0, tau=2.0, alpha=0.5)
    steer = attention.Steering()
    steer.watch({1: (method, negative)})
    with attention.steering(steer):
        steered = processor(attn, hidden, text)

    def attend(queries, context):  # softmax(Q K^T / sqrt(d)) V per head, written out
        q, k, v = attn.to_q(queries), attn.to_k(context), attn.to_v(context)
        heads, d = attn.heads, q.shape[-1] // attn.heads
        q, k, v = (x.view(x.shape[0], -1, heads, d).transpose(1, 2) for x in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
        return (weights @ v).transpose(1, 2).reshape(queries.shape[0], -1, heads * d)

    z_pos, z_neg = attend(hidden[1:2], text[1:2]), attend(hidden[1:2], negative)
    expected = attn.to_out[0](normalized_attention_guidance(z_pos, z_neg, 4.0, 2.0, 0.5))
    assert torch.allclose(steered[1:2], expected, atol=1e-5), "The steered row must be the NAG of its two outputs."
    assert torch.equal(steered[[0, 2]], plain[[0, 2]]), "Rows that are not steered must not change."
    assert torch.equal(processor(attn, hidden, text), plain), "Outside the steering block the layer is unchanged."


def test_a_nag_cell_changes_its_image_and_leaves_the_others_bit_for_bit(tiny_sd):
    from negprompt.engine import compare
    from negprompt.plan import methods_spec

    plain = compare(tiny_sd, PROMPT, ["hat"], seed=3, steps=3)
    spec = methods_spec(PROMPT, ["hat"], [3], [parse_method("cfg"), NAG()], model="tiny", steps=3)
    mixed = compare(tiny_sd, spec)
    baseline, cfg, nag = mixed.cells
    assert np.array_equal(np.asarray(baseline.image), np.asarray(plain.cells[0].image)), (
        "A NAG cell in the batch must not change any other cell.")
    assert np.array_equal(np.asarray(cfg.image), np.asarray(plain.cells[1].image))
    assert not np.array_equal(np.asarray(nag.image), np.asarray(baseline.image)), "NAG must act."
    weak = compare(tiny_sd, methods_spec(PROMPT, ["hat"], [3], [NAG(scale=0.0)], model="tiny", steps=3))
    assert np.abs(np.asarray(weak.cells[1].image, np.int16) - np.asarray(baseline.image, np.int16)).max() <= 2, (
        "NAG with s = 0 is the no-negative baseline.")


@pytest.fixture(scope="module")
def tiny_distilled(tmp_path_factory):
    """A tiny SD pipeline whose UNet takes the guidance scale as an input (LCM-style): no negative branch."""
    from diffusers import UNet2DConditionModel

    from negprompt.architectures import tiny_sd_pipeline
    from negprompt.loading import load_pipeline

    pipe = tiny_sd_pipeline()
    torch.manual_seed(0)
    config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**{**config, "time_cond_proj_dim": 8})
    pipe = type(pipe)(**{**pipe.components, "unet": unet})
    folder = tmp_path_factory.mktemp("tiny-distilled")
    pipe.save_pretrained(folder)
    return load_pipeline(folder, device="cpu")


def test_on_a_distilled_model_cfg_is_inert_and_nag_acts(tiny_distilled):
    from negprompt.engine import compare
    from negprompt.plan import methods_spec

    spec = methods_spec(PROMPT, ["hat"], [4], [parse_method("cfg"), NAG()], model="tiny", steps=3,
                        guidance_scale=7.5)
    baseline, cfg, nag = (np.asarray(c.image, np.int16) for c in compare(tiny_distilled, spec).cells)
    assert np.abs(cfg - baseline).max() <= 2, "A distilled UNet runs no negative branch: CFG gives the baseline."
    assert tiny_distilled.unet.config.time_cond_proj_dim == 8
    assert np.abs(nag - baseline).max() > 2, "NAG acts in the one branch a distilled model runs."


def test_nag_on_a_pipeline_not_wrapped_for_it_is_refused_by_name(tmp_path):
    from negprompt.architectures import tiny_sd3_pipeline
    from negprompt.engine import compare
    from negprompt.errors import InputError
    from negprompt.plan import methods_spec

    with pytest.raises(InputError, match="acts inside attention") as caught:
        compare(tiny_sd3_pipeline(), methods_spec(PROMPT, ["hat"], [1], [NAG()], model="tiny", steps=1))
    assert caught.value.argument == "guidance"


def test_a_distilled_model_gets_cfg_inert_beside_nag_automatically(tiny_distilled, tiny_sd):
    from negprompt.engine import compare
    from negprompt.plan import negatives_spec
    from negprompt.verdicts import fit_to_model

    spec = negatives_spec(PROMPT, ["hat", "glasses"], [4, 5], model="tiny", steps=3)
    assert fit_to_model(spec, tiny_sd) == spec, "A model that runs the negative branch keeps its comparison."
    doubled = fit_to_model(spec, tiny_distilled)
    assert [c.label for c in doubled.cells[:5]] == [
        "baseline: no negative", "- hat (cfg, inert here)", "- hat (nag)", "- glasses (cfg, inert here)",
        "- glasses (nag)"]
    assert [c.reference for c in doubled.cells] == [None, 0, 0, 0, 0, None, 5, 5, 5, 5], (
        "Every cell is still compared against its own row's baseline.")
    result = compare(tiny_distilled, doubled)
    base, cfg, nag = (np.asarray(result.cells[i].image, np.int16) for i in (5, 6, 7))
    assert np.abs(cfg - base).max() <= 2 and np.abs(nag - base).max() > 2, "CFG inert, NAG acting, in row 2."


def test_the_apps_fixed_methods_leave_nag_out_where_attention_cannot_be_steered():
    from negprompt.architectures import tiny_sd3_pipeline
    from negprompt.guidance import CFG
    from negprompt.plan import methods_spec
    from negprompt.verdicts import fit_to_model

    spec = methods_spec(PROMPT, ["hat"], [1, 2], [CFG(), NAG()], model="tiny", steps=1)
    pipe = tiny_sd3_pipeline()  # built here, not loaded by negprompt: its attention is not wrapped
    assert fit_to_model(spec, pipe) == spec, "Methods the user named are kept (and refused by the engine by name)."
    fitted = fit_to_model(spec, pipe, optional_methods=True)
    assert [c.guidance.name for c in fitted.cells] == ["cfg", "cfg", "cfg", "cfg"]
    assert [c.reference for c in fitted.cells] == [None, 0, None, 2], "References follow their cells."


def test_admission_counts_the_nag_cells_of_a_loaded_distilled_unet(tiny_distilled):
    from negprompt.app.form import Form, build_request
    from negprompt.app.runner import Runner
    from negprompt.app.settings import AppSettings
    from negprompt.cost import StepCost

    model = tiny_distilled.name_or_path
    settings = AppSettings(device="cpu", model=model, models=(model,), preview_every=0)
    runner = Runner(settings)
    request = build_request(settings, Form(prompt="a man", negatives=((0, "hat"), (1, "glasses")), steps=3,
                                           size="64x64", model=model))
    with runner.costs._lock:  # a measured cost: one second per row and per decoded image
        runner.costs._known[(model, "cpu", 64, 64)] = StepCost(call_s=0.0, row_s=1.0, decode_s=1.0)
    assert [c.label for c in runner.planned(request)[0].cells][1:3] == ["- hat (cfg, inert here)", "- hat (nag)"]
    assert runner.admit(request, measure=False) == 3 * 5 + 5, (
        "The model its config calls distilled is loaded: 5 cells of one row each (no negative branch; a UNet "
        "steers NAG without a row of its own), 3 steps, 5 decodes.")
