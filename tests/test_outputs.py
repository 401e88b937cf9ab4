"""What a comparison gives back: infotext, files, grid, difference maps, token counts, loading."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from negprompt import compare, count_tokens, load_pipeline, parse_infotext
from negprompt.comparison import Settings
from negprompt.devices import pick_device, pick_dtype
from negprompt.difference import change_score, difference_map
from negprompt.infotext import format_infotext
from negprompt.loading import ModelNotFoundError

PROMPT = "portrait photo of a man"


@pytest.fixture(scope="module")
def result(tiny_sd):
    return compare(tiny_sd, PROMPT, ["mustache", "a hat, with: \"quotes\"\nand a newline"], seeds=[3, 4], steps=3)


SETTINGS = Settings(prompt="portrait photo of a man, detailed", negatives=("mustache",), seeds=(1,), steps=25,
                    guidance_scale=7.5, height=512, width=768, scheduler="DPM++ 2M Karras",
                    model="stable-diffusion-v1-5/stable-diffusion-v1-5", baseline="empty")


@pytest.mark.parametrize("negative", ["", "mustache", "blurry, lowres: bad", "two\nlines"])
def test_infotext_round_trips(negative):
    parsed = parse_infotext(format_infotext(SETTINGS, 123456789, negative))
    assert parsed["prompt"] == SETTINGS.prompt
    assert parsed["negative_prompt"] == negative
    assert (parsed["Steps"], parsed["Seed"], parsed["CFG scale"]) == (25, 123456789, 7.5)
    assert (parsed["width"], parsed["height"]) == (768, 512)
    assert parsed["Sampler"] == "DPM++ 2M Karras"
    assert parsed["Model"] == SETTINGS.model


def test_infotext_reads_an_a1111_example():
    text = ("a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, "
            "Size: 512x512, Model: v1-5-pruned-emaonly")
    parsed = parse_infotext(text)
    assert parsed["prompt"] == "a cat" and parsed["negative_prompt"] == "dog" and parsed["Seed"] == 965400086


def test_save_writes_grid_cells_with_infotext_and_manifest(result, tmp_path):
    folder = result.save(tmp_path / "run")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["cells"]) == 6 and (folder / "grid.png").is_file()
    for entry, cell in zip(manifest["cells"], result.cells):
        png = Image.open(folder / entry["file"])
        assert png.text["parameters"] == cell.parameters, "Each cell PNG must carry its infotext."
        assert parse_infotext(png.text["parameters"])["negative_prompt"] == cell.negative_prompt
        assert entry["initial_latent_sha256"] == cell.initial_latent_sha256
    assert manifest["settings"]["seeds"] == [3, 4] and manifest["settings"]["steps"] == 3
    assert {"torch", "diffusers", "python"} <= set(manifest["versions"])
    assert manifest["timings"]["total_s"] > 0
    assert [e["change_score"] for e in manifest["cells"]][0] == 0.0


def test_grid_has_a_band_per_row_and_difference_maps_add_bands(result):
    plain, with_maps = result.grid(), result.grid(differences=True)
    assert with_maps.height > plain.height and plain.width >= 3 * 256, "Cells are enlarged to a readable size."


def test_long_captions_wrap_instead_of_overflowing(tiny_sd):
    long = "ugly, " * 30 + "supercalifragilisticexpialidocious" * 3
    short = compare(tiny_sd, PROMPT, ["hat"], seed=1, steps=1).grid()
    tall = compare(tiny_sd, PROMPT, [long], seed=1, steps=1).grid()
    assert tall.width == short.width and tall.height > short.height + 40


def test_difference_map_and_change_score():
    black, white = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 255, 255))
    assert change_score(black, black) == 0 and change_score(white, black) == pytest.approx(100)
    assert difference_map(black, black).getextrema() == ((0, 0),) * 3
    assert difference_map(white, black).getpixel((0, 0)) == (255, 255, 255)


def test_token_counter(tiny_sd):
    count = count_tokens(tiny_sd.tokenizer, "portrait photo of a man")
    assert (count.used, count.limit, count.truncated, str(count)) == (5, 75, "", "5/75")
    over = count_tokens(tiny_sd.tokenizer, "hat " * 75 + "red glasses")
    assert not over.fits and over.truncated == "red glasses"


def test_load_pipeline_caches_and_picks_float32_on_cpu(tiny_sd_folder):
    pipe = load_pipeline(tiny_sd_folder, device="cpu")
    assert load_pipeline(tiny_sd_folder, device="cpu") is pipe, "A loaded pipeline must be reused."
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) in (torch.float16, torch.bfloat16) or not torch.cuda.is_available()
    assert pick_device().type in ("cuda", "mps", "cpu")


def test_a_request_never_mutates_the_loaded_pipeline(tiny_sd):
    scheduler = tiny_sd.scheduler
    config = dict(scheduler.config)
    compare(tiny_sd, PROMPT, ["mustache"], seed=1, steps=2, scheduler="Euler a")
    assert tiny_sd.scheduler is scheduler and dict(scheduler.config) == config


def test_only_safetensors_weights_are_read(tmp_path):
    from negprompt.architectures import tiny_sd_pipeline

    tiny_sd_pipeline().save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(ModelNotFoundError, match="only safetensors"):
        load_pipeline(tmp_path)


def test_loading_errors_are_clear(tmp_path, tiny_sd_folder):
    with pytest.raises(ModelNotFoundError, match="without model_index.json"):
        load_pipeline(tmp_path)
    with pytest.raises(ModelNotFoundError, match="not downloaded and no network"):
        load_pipeline("nobody/no-such-model")
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ValueError, match="KandinskyPipeline"):
        load_pipeline(other)
