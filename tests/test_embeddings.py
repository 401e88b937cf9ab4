"""Negative embeddings (textual inversion): loaded with the model, read as their authors meant, equal to diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

from negprompt import compare
from negprompt.embeddings import parse_embedding, parse_embedding_list
from negprompt.errors import InputError
from negprompt.loading import load

PROMPT = "portrait photo of a man"
TOLERANCE = 2  # max pixel difference, in 1/255 steps, between a cell and the same image made by diffusers alone
VECTORS = 3


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def vectors(dim: int, seed: int, n: int = VECTORS) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 2


def write_a1111(folder, fmt: str, dim: int, seed: int = 0):
    """An A1111 embedding file: ``.pt`` (string_to_param, as A1111 saves) or ``.safetensors`` (emb_params)."""
    tensor = vectors(dim, seed)
    if fmt == "pt":
        path = folder / "badthing.pt"
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": tensor}, "name": "badthing",
                    "step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None}, path)
    else:
        path = folder / "badthing.safetensors"
        save_file({"emb_params": tensor}, str(path))
    return path


def plain_pipe(cls, folder):
    pipe = cls.from_pretrained(folder, **({"safety_checker": None, "requires_safety_checker": False}
                                          if cls is StableDiffusionPipeline else {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_image(pipe, negative, seed, steps=3, guidance=6.0):
    return pipe(PROMPT, negative_prompt=negative, generator=torch.Generator("cpu").manual_seed(seed),
                num_inference_steps=steps, guidance_scale=guidance).images[0]


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_an_embedding_negative_cell_equals_diffusers_with_that_embedding_loaded(tiny_sd_folder, tmp_path, fmt):
    dim = plain_pipe(StableDiffusionPipeline, tiny_sd_folder).text_encoder.config.hidden_size
    path = write_a1111(tmp_path, fmt, dim)
    loaded = load(tiny_sd_folder, device="cpu", embeddings=[("BadThing", str(path))])
    result = compare(loaded, PROMPT, ["badthing", "blurry, BadThing"], seed=3, steps=3, guidance_scale=6.0)
    reference = plain_pipe(StableDiffusionPipeline, tiny_sd_folder)
    reference.load_textual_inversion(str(path), token="badthing")
    for cell, negative in zip(result.cells[1:], ["badthing", "blurry, badthing"]):
        assert max_diff(cell.image, plain_image(reference, negative, 3)) <= TOLERANCE, (
            f"The cell '{cell.negative_prompt}' must equal pipe(prompt, negative_prompt={negative!r}) with the "
            f"{fmt} embedding loaded by diffusers' load_textual_inversion (the name read in any case).")
    plain = compare(load(tiny_sd_folder, device="cpu"), PROMPT, ["badthing"], seed=3, steps=3, guidance_scale=6.0)
    assert max_diff(plain.cells[1].image, result.cells[1].image) > TOLERANCE, (
        "Without the embedding loaded, 'badthing' is ordinary text and must give another image.")
    embedding = result.additions["embeddings"][0]
    assert embedding["name"] == "badthing" and embedding["vectors"] == VECTORS and len(embedding["sha256"]) == 64
    assert result.manifest()["model_additions"]["embeddings"][0]["sha256"] == embedding["sha256"], (
        "The manifest must record each loaded embedding's file hash so a replay can check it has the same one.")


def test_a_two_encoder_sdxl_embedding_loads_into_both_encoders_and_equals_diffusers(tiny_sdxl_folder, tmp_path):
    reference = plain_pipe(StableDiffusionXLPipeline, tiny_sdxl_folder)
    dims = (reference.text_encoder.config.hidden_size, reference.text_encoder_2.config.hidden_size)
    path = tmp_path / "xl-bad.safetensors"
    save_file({"clip_l": vectors(dims[0], 1), "clip_g": vectors(dims[1], 2)}, str(path))
    loaded = load(tiny_sdxl_folder, device="cpu", embeddings=[("xlbad", str(path))])
    result = compare(loaded, PROMPT, ["xlbad"], seed=2, steps=3, guidance_scale=5.0)
    from safetensors.torch import load_file

    state = load_file(str(path))
    reference.load_textual_inversion(state["clip_l"], token="xlbad", text_encoder=reference.text_encoder,
                                     tokenizer=reference.tokenizer)
    reference.load_textual_inversion(state["clip_g"], token="xlbad", text_encoder=reference.text_encoder_2,
                                     tokenizer=reference.tokenizer_2)
    assert max_diff(result.cells[1].image, plain_image(reference, "xlbad", 2, guidance=5.0)) <= TOLERANCE, (
        "An SDXL embedding's cell must equal diffusers with clip_l loaded into text_encoder and clip_g into "
        "text_encoder_2, each through its own tokenizer.")
    assert result.additions["embeddings"][0]["encoders"] == ["clip_l", "clip_g"]


def test_an_embedding_for_the_other_family_or_width_is_refused_by_name(tiny_sd_folder, tiny_sdxl_folder, tmp_path):
    path = write_a1111(tmp_path, "safetensors", 7)
    with pytest.raises(InputError, match="7-wide vectors") as error:
        load(tiny_sd_folder, device="cpu", embeddings=[("wrong", str(path))])
    assert error.value.argument == "embedding"
    with pytest.raises(InputError, match="one-encoder"):
        load(tiny_sdxl_folder, device="cpu", embeddings=[("wrong", str(path))])


def test_embedding_arguments_are_checked_before_anything_loads(tmp_path):
    assert parse_embedding("EasyNegative=./x.pt") == ("easynegative", "./x.pt")
    assert parse_embedding_list("a=1.pt, b=owner/repo") == [("a", "1.pt"), ("b", "owner/repo")]
    for bad, message in (("noequals", "NAME=PATH"), ("two words=x.pt", "one word"), ("x=", "NAME=PATH")):
        with pytest.raises(InputError, match=message):
            parse_embedding(bad)
    with pytest.raises(InputError, match="not downloaded and no network"):
        load(None, device="cpu", embeddings=[("hub", "someone/some-embedding")])
    with pytest.raises(InputError, match="no such file"):
        load(None, device="cpu", embeddings=[("gone", str(tmp_path / "missing.pt"))])
