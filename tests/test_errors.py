"""Every bad input to the engine and the loader raises InputError naming its argument; nothing runs first."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from negprompt import compare, load_pipeline
from negprompt.errors import LIMITS, InputError, base_argument
from negprompt.guidance import CFG
from negprompt.loading import Loaded, ModelNotFoundError, Runtime, load, runtime_of
from negprompt.plan import CellSpec, ComparisonSpec, parse_window

PROMPT = "portrait photo of a man"


@pytest.mark.parametrize(("kwargs", "argument"), [
    (dict(prompt="  "), "prompt"),
    (dict(prompt=3), "prompt"),
    (dict(prompt="x" * (LIMITS.max_text_chars + 1)), "prompt"),
    (dict(prompt="\u200b"), "prompt"),
    (dict(negatives=[""]), "negatives[0]"),
    (dict(negatives=["ok", 3]), "negatives[1]"),
    (dict(negatives=["ok", "y" * (LIMITS.max_text_chars + 1)]), "negatives[1]"),
    (dict(other_positive=" "), "other_positive"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(steps=LIMITS.max_steps + 1), "steps"),
    (dict(guidance_scale=math.nan), "guidance_scale"),
    (dict(guidance_scale=-1), "guidance_scale"),
    (dict(guidance_scale="7"), "guidance_scale"),
    (dict(height=60), "height"),
    (dict(height=0), "height"),
    (dict(width=-8), "width"),
    (dict(width=LIMITS.max_side + 8), "width"),
    (dict(seed=-1), "seed"),
    (dict(seed=LIMITS.max_seed + 1), "seed"),
    (dict(seed=True), "seed"),
    (dict(seeds=[1, -2]), "seeds[1]"),
    (dict(seeds=[]), "seeds"),
    (dict(seed=1, seeds=[2]), "seeds"),
    (dict(seeds=[1, 1]), "seeds"),
    (dict(negatives=["a"] * 3, max_cells=3), "max_cells"),
    (dict(max_cells=0), "max_cells"),
    (dict(scheduler="Heun++"), "scheduler"),
    (dict(baseline="none"), "baseline"),
    (dict(max_batch=0), "max_batch"),
    (dict(max_batch=-1), "max_batch"),
    (dict(preview_every=-1), "preview_every"),
    (dict(callback="print"), "callback"),
])
def test_every_bad_argument_of_compare_is_named(tiny_sd, kwargs, argument):
    call = dict(prompt=PROMPT, negatives=["mustache"], steps=2)
    call.update(kwargs)
    with pytest.raises(InputError) as error:
        compare(tiny_sd, call.pop("prompt"), call.pop("negatives"), **call)
    assert error.value.argument == argument, f"{kwargs} must be blamed on {argument!r}, got {error.value}"
    assert isinstance(error.value, ValueError)


def _cells(**changes):
    cells = [CellSpec(1, PROMPT, ""), CellSpec(1, PROMPT, "hat", reference=0)]
    cells[1] = CellSpec(**{**cells[1].__dict__, **changes})
    return tuple(cells)


@pytest.mark.parametrize(("spec", "argument"), [
    (dict(cells=_cells(window=(0.8, 0.2))), "cells[1].window"),
    (dict(cells=_cells(window=(0.0, math.nan))), "cells[1].window"),
    (dict(cells=_cells(reference=1)), "cells[1].reference"),
    (dict(cells=_cells(reference=5)), "cells[1].reference"),
    (dict(cells=_cells(seed=-3)), "cells[1].seed"),
    (dict(cells=_cells(positive="")), "cells[1].positive"),
    (dict(cells=_cells(negative=7)), "cells[1].negative"),
    (dict(cells=_cells(guidance="cfg")), "cells[1].guidance"),
    (dict(cells=()), "cells"),
    (dict(sampler="Heun++"), "sampler"),
    (dict(baseline="nothing"), "baseline"),
    (dict(steps=0), "steps"),
    (dict(model=""), "model"),
])
def test_every_bad_field_of_a_spec_is_named(tiny_sd, spec, argument):
    fields = dict(model="tiny", cells=_cells(), steps=2)
    fields.update(spec)
    with pytest.raises(InputError) as error:
        compare(tiny_sd, ComparisonSpec(**fields))
    assert error.value.argument == argument, f"{spec} must be blamed on {argument!r}, got {error.value}"


@pytest.mark.parametrize(("data", "argument"), [
    ({"version": 99, "model": "m", "cells": []}, "spec"),
    ({"model": "m", "cells": [], "colour": "red"}, "spec"),
    ({"model": "m", "cells": "all"}, "cells"),
    ({"model": "m", "cells": [{"seed": 1, "positive": "a", "negative": "", "guidance": "perp-negg"}]},
     "cells[0].guidance"),
    ({"model": "m", "cells": [{"seed": 1, "positive": "a", "negative": "", "window": 0.5}]}, "cells[0].window"),
    ({"model": "m", "cells": [{"seed": 1, "positive": "a"}]}, "cells[0]"),
    ({"model": "m", "cells": [{"seed": 1, "positive": "a", "negative": "", "colour": 1}]}, "cells[0]"),
])
def test_a_bad_spec_file_is_named(data, argument):
    with pytest.raises(InputError) as error:
        ComparisonSpec.from_json(json.dumps(data))
    assert error.value.argument == argument


def test_a_malformed_window_names_the_negative():
    for text in ("hat@", "hat@x", "@0.3", "hat@0.9-0.2", "hat@1.5", "a@b@0.2"):
        with pytest.raises(InputError) as error:
            parse_window(text, "negatives[2]")
        assert error.value.argument == "negatives[2]" and text in str(error.value)
    assert base_argument("negatives[2]") == ("negatives", 2)


def test_a_spec_with_convenience_arguments_is_refused(tiny_sd):
    spec = ComparisonSpec(model="tiny", cells=_cells(), steps=1)
    with pytest.raises(InputError) as error:
        compare(tiny_sd, spec, ["hat"])
    assert error.value.argument == "negatives"


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _folder(tmp_path, name, text):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model_index.json").write_text(text)
    return folder


@pytest.mark.parametrize(("make", "argument", "message"), [
    (lambda tmp: _folder(tmp, "pixart", json.dumps({"_class_name": "PixArtSigmaPipeline"})), "model",
     "PixArt's transformer is not one of negprompt's families"),
    (lambda tmp: _folder(tmp, "sana", json.dumps({"_class_name": "SanaPipeline"})), "model", "SanaPipeline"),
    (lambda tmp: _folder(tmp, "other", json.dumps({"_class_name": "KandinskyPipeline"})), "model",
     "KandinskyPipeline"),
    (lambda tmp: _folder(tmp, "broken", "{not json"), "model", "not valid JSON"),
    (lambda tmp: tmp, "model", "without model_index.json"),
    (lambda tmp: (tmp / "notes.txt").write_text("hi") and tmp / "notes.txt", "model", "is a file"),
    (lambda tmp: (tmp / "w.safetensors").write_bytes(b"junk") and tmp / "w.safetensors", "model", "is a file"),
    (lambda tmp: tmp / "missing" / "folder", "model", "no such folder or file"),
    (lambda tmp: "nobody/not-in-the-cache", "model", "not downloaded and no network"),
])
def test_every_bad_model_is_named_with_its_reason(tmp_path, make, argument, message):
    with pytest.raises(InputError, match=message) as error:
        load_pipeline(make(tmp_path), device="cpu")
    assert error.value.argument == argument


def test_not_downloaded_and_offline_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="not downloaded and no network"):
        load_pipeline("stabilityai/stable-diffusion-xl-base-1.0")
    assert time.perf_counter() - start < 5, "An offline miss must not wait for the network."


@pytest.mark.parametrize(("kwargs", "argument"), [
    (dict(device="bogus"), "device"),
    (dict(device="cuda:99"), "device"),
    (dict(device="cpu", dtype="int8"), "dtype"),
])
def test_bad_devices_and_dtypes_are_named(tiny_sd_folder, kwargs, argument):
    with pytest.raises(InputError) as error:
        load_pipeline(tiny_sd_folder, **kwargs)
    assert error.value.argument == argument


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_named(tiny_sd_folder):
    with pytest.raises(InputError, match="no CUDA GPU") as error:
        load_pipeline(tiny_sd_folder, device="cuda")
    assert error.value.argument == "device"


# ---------------------------------------------------------------------------------------------------------------
# Runtime facts live with the pipeline, and the cache is bounded


def test_out_of_memory_halves_the_batch_and_the_safe_size_is_kept_with_the_pipeline(tiny_sd, monkeypatch):
    from negprompt.families import unet as unet_family  # where the UNet family calls the UNet

    whole = compare(tiny_sd, PROMPT, ["mustache", "glasses", "hat"], seed=2, steps=2)
    real = unet_family.bucketed_unet

    def small_memory(unet, sample, *args, **kwargs):
        if sample.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(unet, sample, *args, **kwargs)

    monkeypatch.setattr(unet_family, "bucketed_unet", small_memory)
    loaded = Loaded(tiny_sd)
    result = compare(loaded, PROMPT, ["mustache", "glasses", "hat"], seed=2, steps=2)
    assert result.max_batch_used == 2 and loaded.runtime.safe_batch == {(64, 64): 2}
    for a, b in zip(whole.cells, result.cells):
        difference = np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16)).max()
        assert difference <= 2, "Halving the batch after an out-of-memory error must not change any image."
    assert not any(k.startswith("_negprompt") for k in vars(tiny_sd)), "Nothing is kept on the diffusers object."


def test_the_cache_keeps_few_pipelines_and_knows_their_runtime(tiny_sd_folder, tiny_sdxl_folder, monkeypatch):
    from negprompt import loading

    monkeypatch.setitem(loading.CACHE_SIZE, "cpu", 1)
    first = load(tiny_sd_folder, device="cpu")
    assert load(tiny_sd_folder, device="cpu") is first, "A loaded pipeline must be reused."
    assert runtime_of(first.pipe) is first.runtime
    other = load(tiny_sdxl_folder, device="cpu")
    assert runtime_of(first.pipe) is not first.runtime, "The least recently used pipeline must be evicted."
    assert load(tiny_sd_folder, device="cpu") is not first
    assert isinstance(runtime_of(object()), Runtime) and other.runtime.speedups["applied"] == []
    loading.clear_cache()


def test_cfg_is_the_default_method():
    assert CellSpec(1, PROMPT, "hat").guidance == CFG()
