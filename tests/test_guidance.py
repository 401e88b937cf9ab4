"""The guidance math, checked against its definitions."""

from __future__ import annotations

import pytest
import torch

from negprompt.errors import InputError
from negprompt.guidance import (
    BRANCHES,
    CFG,
    GuidanceMethod,
    NegativeStrength,
    PerpNeg,
    RescaledCFG,
    classifier_free_guidance,
    guidance_is_active,
    method_from_dict,
    method_label,
    method_to_dict,
    parse_method,
    perpendicular_negative_guidance,
    predicted_original,
    rescale_guidance,
)


def test_cfg_moves_away_from_the_negative_and_toward_the_positive():
    neg, pos = torch.zeros(4), torch.ones(4)
    assert torch.equal(classifier_free_guidance(neg, pos, 7.5), torch.full((4,), 7.5))
    assert torch.equal(classifier_free_guidance(neg, pos, 1.0), pos), "At scale 1 the negative cancels out."
    assert torch.equal(classifier_free_guidance(pos, pos, 9.0), pos), "A negative equal to the positive cancels."


@pytest.mark.parametrize(("scale", "proj_dim", "active"), [(7.5, None, True), (1.0, None, False),
                                                          (0.5, None, False), (7.5, 256, False)])
def test_guidance_is_off_at_scale_one_or_below_and_on_distilled_models(scale, proj_dim, active):
    assert guidance_is_active(scale, proj_dim) is active


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predicted_original_inverts_the_forward_process(prediction_type):
    torch.manual_seed(0)
    x0, noise, alpha_bar = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor(0.3)
    xt = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    output = {"epsilon": noise, "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0,
              "sample": x0}[prediction_type]
    assert torch.allclose(predicted_original(xt, output, alpha_bar, prediction_type), x0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Guidance methods


def _preds(seed=0, n=3):
    torch.manual_seed(seed)
    return {b: torch.randn(n, 4, 8, 8) for b in ("empty", "positive", "negative")}


def test_rescale_is_diffusers_guidance_rescale():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    p = _preds()
    for rescale in (0.0, 0.3, 0.7, 1.0):
        cfg = classifier_free_guidance(p["negative"], p["positive"], 7.5)
        expected = rescale_noise_cfg(cfg, p["positive"], guidance_rescale=rescale)
        assert torch.equal(rescale_guidance(cfg, p["positive"], rescale), expected), \
            "guidance rescale must be diffusers' rescale_noise_cfg, operation for operation."
        assert torch.equal(RescaledCFG(rescale).combine(p, 7.5), expected)


def test_perp_neg_with_the_negative_equal_to_the_positive_is_cfg_from_the_empty_prompt():
    p = _preds()
    same = {**p, "negative": p["positive"]}
    expected = classifier_free_guidance(p["empty"], p["positive"], 7.5)
    torch.testing.assert_close(PerpNeg().combine(same, 7.5), expected, atol=1e-5, rtol=1e-5)


def test_perp_neg_projects_per_sample_not_over_the_batch():
    p = _preds(n=4)
    batched = perpendicular_negative_guidance(p["empty"], p["positive"], p["negative"], 7.5)
    for i in range(4):
        alone = perpendicular_negative_guidance(*(p[b][i:i + 1] for b in ("empty", "positive", "negative")), 7.5)
        torch.testing.assert_close(batched[i:i + 1], alone, msg="A sample's Perp-Neg must not see its neighbours.")
    # The common reference implementation takes one projection over the whole batch tensor: that one does differ.
    pos, neg = p["positive"] - p["empty"], p["negative"] - p["empty"]
    whole = p["empty"] + 7.5 * (pos - (neg - (neg * pos).sum() / pos.norm() ** 2 * pos))
    assert not torch.allclose(whole, batched, atol=1e-3), "The test must be able to tell the two apart."


def test_perp_neg_removes_only_the_perpendicular_part():
    p = _preds(n=1)
    pos = p["positive"] - p["empty"]
    along = {**p, "negative": p["empty"] + 2.5 * pos}  # a negative pointing along the positive
    expected = classifier_free_guidance(p["empty"], p["positive"], 5.0)
    torch.testing.assert_close(PerpNeg().combine(along, 5.0), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [3.0, 7.5])
def test_negative_strength_g_minus_one_is_cfg_and_zero_is_no_negative(scale):
    """The identity tested: eps_empty + g (eps_pos - eps_empty) - s (eps_neg - eps_empty) equals CFG with the
    negative, eps_neg + g (eps_pos - eps_neg), when s = g - 1; and CFG from the empty prompt when s = 0."""
    p = _preds()
    torch.testing.assert_close(NegativeStrength(scale - 1).combine(p, scale),
                               classifier_free_guidance(p["negative"], p["positive"], scale), atol=1e-5, rtol=1e-5)
    assert torch.equal(NegativeStrength(0.0).combine(p, scale),
                       p["empty"] + scale * (p["positive"] - p["empty"]))


@pytest.mark.parametrize("method", [CFG(), PerpNeg(), PerpNeg(1.5), RescaledCFG(), RescaledCFG(0.3),
                                    NegativeStrength(), NegativeStrength(2.0)])
def test_methods_round_trip_through_dicts_and_text(method):
    assert method_from_dict(method_to_dict(method)) == method
    assert parse_method(method_label(method)) == method, "The text syntax must read its own labels back."
    assert set(method.branches) <= set(BRANCHES) and isinstance(method, GuidanceMethod)


@pytest.mark.parametrize(("call", "argument"), [
    (lambda: method_from_dict("cfgg"), "guidance"),
    (lambda: method_from_dict({"method": "perp-neg", "scale": 2}), "guidance"),
    (lambda: method_from_dict({"method": "perp-neg", "negative_scale": "big"}), "guidance"),
    (lambda: parse_method("cfg:2", "guidance_methods"), "guidance_methods"),
    (lambda: parse_method("perp-neg:x", "guidance_methods"), "guidance_methods"),
])
def test_bad_methods_raise_input_errors(call, argument):
    with pytest.raises(InputError) as error:
        call()
    assert error.value.argument == argument


def test_apg_cfg_zero_star_and_tcfg_follow_their_papers_through_diffusers_formulas():
    """APG with the parallel part kept and no cap is CFG; with ``eta = 0`` the push has no component along
    ``eps_pos``; CFG-Zero* scales the negative by the optimized ``s*``; TCFG equals diffusers' guider. Each acts per
    sample."""
    from negprompt.guidance import APG, TCFG, CFGZeroStar, classifier_free_guidance, method_from_dict, parse_method

    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    preds = {"positive": pos, "negative": neg}
    cfg = classifier_free_guidance(neg, pos, 7.5)
    assert torch.allclose(APG(eta=1.0, norm_threshold=0.0).combine(preds, 7.5), cfg, atol=1e-5)
    push = APG(eta=0.0, norm_threshold=0.0).combine(preds, 7.5) - neg
    assert abs(float((push * pos).sum())) < 1e-3 * float(push.norm() * pos.norm()), "eta 0: orthogonal to eps_pos"
    capped = APG(eta=1.0, norm_threshold=1.0).combine(preds, 2.0) - neg
    assert float(capped.norm()) == pytest.approx(2.0, rel=1e-4), "The push's norm is capped at the threshold."
    star = float((pos * neg).sum() / (neg * neg).sum())
    assert torch.allclose(CFGZeroStar().combine(preds, 5.0), classifier_free_guidance(neg * star, pos, 5.0),
                          atol=1e-5)
    from diffusers.guiders import TangentialClassifierFreeGuidance

    guider = TangentialClassifierFreeGuidance(guidance_scale=5.0)
    assert torch.allclose(TCFG().combine(preds, 5.0), guider.forward(pos, neg).pred, atol=1e-5)
    assert parse_method("apg:0.5") == APG(eta=0.5) and method_from_dict("tcfg") == TCFG()
