"""LoRA for a whole comparison: fused at load time, equal to diffusers with it loaded; refused inside a prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from negprompt import compare
from negprompt.errors import InputError
from negprompt.loading import load
from negprompt.loras import parse_lora

PROMPT = "portrait photo of a man"
TOLERANCE = 2  # max pixel difference, in 1/255 steps, between a cell and the same image made by diffusers alone


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def plain_pipe(folder):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_lora(tiny_sd_folder, tmp_path_factory):
    """A rank-2 LoRA on the tiny UNet's attention, with random (non-zero) weights, saved as diffusers saves one."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = plain_pipe(tiny_sd_folder).unet
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    folder = tmp_path_factory.mktemp("tiny-lora")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    return folder / "pytorch_lora_weights.safetensors"


def test_a_lora_cell_equals_diffusers_with_that_lora_loaded(tiny_sd_folder, tiny_lora):
    loaded = load(tiny_sd_folder, device="cpu", loras=[(str(tiny_lora), 0.8)])
    result = compare(loaded, PROMPT, ["glasses"], seed=4, steps=3, guidance_scale=6.0)
    reference = plain_pipe(tiny_sd_folder)
    reference.load_lora_weights(str(tiny_lora), adapter_name="test")
    reference.set_adapters(["test"], adapter_weights=[0.8])
    for cell in result.cells:
        image = reference(PROMPT, negative_prompt=cell.negative_prompt, num_inference_steps=3, guidance_scale=6.0,
                          generator=torch.Generator("cpu").manual_seed(4)).images[0]
        assert max_diff(cell.image, image) <= TOLERANCE, (
            f"The cell '{cell.negative_prompt}' must equal diffusers with the LoRA loaded at weight 0.8.")
    without = compare(load(tiny_sd_folder, device="cpu"), PROMPT, ["glasses"], seed=4, steps=3, guidance_scale=6.0)
    assert max_diff(without.cells[0].image, result.cells[0].image) > TOLERANCE, "The LoRA must change the model."
    lora = result.manifest()["model_additions"]["loras"][0]
    assert lora["weight"] == 0.8 and len(lora["sha256"]) == 64, "The manifest must record each LoRA and its hash."
    assert load(tiny_sd_folder, device="cpu").pipe is not loaded.pipe, (
        "A model with a LoRA must be another cache entry than the model alone (the pipeline is never changed).")


@pytest.mark.parametrize("negative", ["blurry, <lora:detail:0.8>", "<LORA:add_detail>"])
def test_a_lora_tag_inside_a_negative_says_a_lora_changes_the_model(tiny_sd, negative):
    with pytest.raises(InputError, match="a LoRA changes the model, not the negative prompt") as error:
        compare(tiny_sd, PROMPT, [negative], seed=1, steps=1)
    assert error.value.argument == "negatives[0]"
    assert "--lora" in str(error.value)


def test_lora_arguments():
    assert parse_lora("./detail.safetensors:0.8") == ("./detail.safetensors", 0.8)
    assert parse_lora("owner/repo") == ("owner/repo", 1.0)
    with pytest.raises(InputError, match="PATH:WEIGHT"):
        parse_lora("detail.safetensors:strong")
    with pytest.raises(InputError, match="not downloaded and no network"):
        load(None, device="cpu", loras=[("someone/some-lora", 1.0)])
