"""Where a negative prompt acted: cross-attention maps captured during the same run, without changing it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from negprompt.attention import change_inside_outside, overlay
from negprompt.errors import InputError


def test_maps_are_captured_without_changing_any_image(tiny_sd):
    from negprompt.engine import compare

    plain = compare(tiny_sd, "portrait photo of a man", ["hat", "glasses beard"], seeds=[1, 2], steps=3)
    mapped = compare(tiny_sd, "portrait photo of a man", ["hat", "glasses beard"], seeds=[1, 2], steps=3,
                     attention_maps=True)
    for a, b in zip(plain.cells, mapped.cells):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)), "Capturing must not change the images."
    maps = mapped.attention_maps
    assert len(maps) == len(mapped.cells) and plain.attention_maps == []
    for cell, picture in zip(mapped.cells, maps):
        if cell.spec.negative:
            assert picture.shape == (8, 8) and picture.min() == 0.0 and picture.max() == 1.0, cell.spec
        else:
            assert picture is None, "The baseline has no negative tokens: no map."
    assert not np.array_equal(maps[1], maps[2]), "Different negatives attend differently."


def test_a_window_captures_only_while_the_negative_acts(tiny_sd):
    from negprompt.engine import compare
    from negprompt.plan import timing_spec

    spec = timing_spec("portrait photo of a man", ["hat"], [1], [0.0, 1.0], model="tiny", steps=4)
    result = compare(tiny_sd, spec, attention_maps=True)
    starts = [cell.spec.window[0] if cell.spec.negative else None for cell in result.cells]
    maps = dict(zip(starts, result.attention_maps))
    assert maps[0.0] is not None and maps[1.0] is None, "A negative that never acts was never attended to."


def test_a_pipeline_without_the_capture_is_refused(tiny_sd_folder):
    from diffusers import StableDiffusionPipeline

    from negprompt.engine import compare

    raw = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    with pytest.raises(InputError, match="load it with negprompt.loading.load") as caught:
        compare(raw, "portrait photo of a man", ["hat"], steps=2, attention_maps=True)
    assert caught.value.argument == "attention_maps"


def test_change_splits_into_the_attended_region_and_the_rest():
    reference = Image.new("RGB", (16, 16), (0, 0, 0))
    image = reference.copy()
    image.paste((255, 255, 255), (0, 0, 8, 8))  # changed only in the top-left quarter
    attended = np.zeros((4, 4), dtype=np.float32)
    attended[:2, :2] = 1.0
    inside, outside = change_inside_outside(image, reference, attended, share=0.25)
    assert inside > 90 and outside < 5, (inside, outside)
    assert change_inside_outside(image, reference, None) is None
    shown = overlay(reference, attended)
    assert shown.getpixel((1, 1))[0] > 100 and shown.getpixel((14, 14)) == (0, 0, 0)


def test_the_command_line_writes_overlays_and_the_split_change(tmp_path, tiny_sd_folder):
    import json

    from negprompt.cli import main

    code = main(["--model", str(tiny_sd_folder), "--prompt", "portrait photo of a man", "--negative", "hat",
                 "--steps", "2", "--attention-maps", "--out", str(tmp_path)])
    assert code == 0
    folder = next(p.parent for p in tmp_path.rglob("manifest.json"))
    overlays = sorted(p.name for p in folder.glob("attention-*.png"))
    assert len(overlays) == 1 and "hat" in overlays[0], overlays
    cells = json.loads((folder / "manifest.json").read_text())["cells"]
    assert cells[0].get("attention") is None
    split = cells[1]["attention"]
    assert set(split) == {"change_inside", "change_outside", "region_share"} and split["region_share"] == 0.2


def test_the_wrapped_processors_still_count_as_scaled_dot_product_attention(tiny_sd_folder):
    from negprompt.attention import installed
    from negprompt.loading import load
    from negprompt.speedups import attention_processors, uses_sdpa

    unet = load(tiny_sd_folder, device="cpu").pipe.unet
    assert installed(unet)
    assert "CaptureProcessor" not in attention_processors(unet) and uses_sdpa(unet), attention_processors(unet)
