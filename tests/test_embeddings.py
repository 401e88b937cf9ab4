"""Negative embeddings (textual inversion): loaded with the model, read as their authors meant, equal to diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import save_file

from negprompt import compare
from negprompt.embeddings import parse_embedding, parse_embedding_list
from negprompt.errors import InputError
from negprompt.explore import leave_one_out_spec, split_terms
from negprompt.loading import EMBEDDED_EMBEDDINGS, load

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


def test_xray_gives_one_cell_per_vector_each_that_vector_alone_and_its_nearest_words(tiny_sd_folder, tmp_path):
    from negprompt.embeddings import find, xray_findings, xray_spec

    path = write_a1111(tmp_path, "safetensors", 32, seed=5)
    loaded = load(tiny_sd_folder, device="cpu", embeddings=[("badthing", str(path))])
    embedding = find(loaded.embeddings, "BadThing")
    spec = xray_spec(PROMPT, embedding.name, embedding.vectors, [2], model="tiny", steps=2, guidance_scale=6.0)
    result = compare(loaded, spec)
    xray = [c for c in result.cells if c.kind == "xray"]
    assert len(xray) == 1 + VECTORS, "X-ray must show the whole embedding, then one cell per vector."
    assert [c.negative_prompt for c in xray[1:]] == ["badthing#1", "badthing#2", "badthing#3"]
    table = loaded.pipe.text_encoder.get_input_embeddings().weight
    tokenizer = loaded.pipe.tokenizer
    inner = tokenizer.convert_tokens_to_ids(["badthing", "badthing_1", "badthing_2"])
    alone = tokenizer.convert_tokens_to_ids(list(embedding.xray_tokens))
    assert torch.equal(table[inner], table[alone]), "Each X-ray token must hold exactly one vector of the embedding."
    assert loaded.pipe.maybe_convert_prompt("badthing#2", tokenizer) == "badthing#2", (
        "An X-ray token must stand for its one vector, not be expanded into the whole embedding.")
    reference = plain_pipe(StableDiffusionPipeline, tiny_sd_folder)
    reference.load_textual_inversion(vectors(32, 5)[1], token="onlysecond")
    assert max_diff(xray[2].image, plain_image(reference, "onlysecond", 2, steps=2)) <= TOLERANCE, (
        "The cell of vector 2 must equal diffusers with that vector alone loaded as an embedding.")
    findings = xray_findings(loaded.pipe, embedding.name, embedding.vectors, k=3)
    assert len(findings["vectors"]) == VECTORS and all(len(v["nearest_words"]) == 3 for v in findings["vectors"])
    words = {w["word"] for v in findings["vectors"] for w in v["nearest_words"]}
    assert not any(w.startswith("badthing") or w.startswith("<|") for w in words), (
        "Nearest words must come from the model's own vocabulary, not embedding or special tokens.")


def run_cli(*args, cwd):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "negprompt", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


@pytest.mark.slow
def test_cli_embedding_xray_and_replay_check(tiny_sd_folder, tmp_path):
    import json

    path = write_a1111(tmp_path, "pt", 32, seed=6)
    out = tmp_path / "xray"
    done = run_cli("--model", str(tiny_sd_folder), "--embedding", f"badthing={path}", "--prompt", PROMPT, "--xray",
                   "badthing", "--steps", "2", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [v["token"] for v in manifest["xray"]["vectors"]] == ["badthing#1", "badthing#2", "badthing#3"]
    assert "vector 2 (badthing#2)" in done.stdout, "The command line must list each vector's nearest words."
    assert manifest["model_additions"]["embeddings"][0]["name"] == "badthing"
    again = run_cli("--replay", str(out / "manifest.json"), "--out", str(tmp_path / "again"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    write_a1111(tmp_path, "pt", 32, seed=7)  # the same file, other vectors
    changed = run_cli("--replay", str(out / "manifest.json"), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert changed.returncode == 2 and "another file hash" in changed.stderr.strip().splitlines()[-1], (
        "A replay must refuse, in one line, an embedding whose file changed since the recorded run.")
    lora = run_cli("--model", str(tiny_sd_folder), "--prompt", PROMPT, "--negative", "<lora:detail:0.8>",
                   cwd=tmp_path)
    assert lora.returncode == 2 and "a LoRA changes the model" in lora.stderr.strip().splitlines()[-1]


def test_the_shipped_embedding_loads_with_the_embedded_model_and_is_one_leave_one_out_term():
    name, path = EMBEDDED_EMBEDDINGS[0]
    assert path.is_file(), f"The embedded model's negative embedding must ship at {path}."
    loaded = load(None, device="cpu")
    names = [e.name for e in loaded.embeddings]
    assert names == [name], "The embedded model must load its shipped embedding under its name by default."
    vectors = loaded.embeddings[0].vectors
    tokenizer = loaded.pipe.tokenizer
    assert loaded.pipe.maybe_convert_prompt(name, tokenizer).split() == [name] + [f"{name}_{i}"
                                                                                for i in range(1, vectors)]
    negative = f"blurry, {name}, lowres"
    assert split_terms(negative) == ["blurry", name, "lowres"], (
        "Leave-one-out must read an embedding's name as one term, never its vectors' tokens apart.")
    spec = leave_one_out_spec(PROMPT, negative, [1], model="negprompt-portraits")
    left_out = [c.negative for c in spec.cells if c.kind == "leave-out"]
    assert f"blurry, {name}" in left_out and "blurry, lowres" in left_out
    assert not any(f"{name}_" in (c.negative or "") for c in spec.cells), (
        "No cell may hold a multi-vector embedding's inner tokens: the name stands for all of them.")
    weighted = leave_one_out_spec(PROMPT, f"(worst quality:1.4), {name}, blurry", [1], model="negprompt-portraits",
                                  reading="a1111")
    assert [c.term for c in weighted.cells if c.kind == "leave-out"] == ["(worst quality:1.4)", name, "blurry"], (
        "Under the a1111 reading too, an embedding's name is one term.")
    assert json.loads(json.dumps(loaded.additions()))["embeddings"][0]["name"] == name
