"""The guidance math, checked against its definitions."""

from __future__ import annotations

import pytest
import torch

from negprompt.guidance import classifier_free_guidance, guidance_is_active, predicted_original


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
