"""The speed levers (negprompt.speedups) must not change what a comparison shows: each one, alone, keeps the
UNet's output and the comparison's images equal (up to float rounding) on a tiny pipeline, and batch padding
drops cleanly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negprompt import speedups
from negprompt.loading import Loaded, Runtime
from negprompt.speedups import Levers, apply_speedups, bucket, bucketed_unet, pad_batch


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny pipelines gain nothing from threads; one thread keeps these tests quick on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pipe(kind="sd"):
    from negprompt.architectures import tiny_sd_pipeline, tiny_sdxl_pipeline

    pipe = (tiny_sd_pipeline if kind == "sd" else tiny_sdxl_pipeline)()
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    return pipe


@torch.no_grad()
def _unet_out(pipe, n=3, seed=0):
    torch.manual_seed(seed)
    sample, t, text, kwargs = speedups.example_unet_inputs(pipe, n, 64, 64)
    return bucketed_unet(pipe.unet, sample, t, text, buckets=None, **kwargs), (sample, t, text, kwargs)


def _images(pipe, report=None):
    from negprompt.engine import compare

    loaded = Loaded(pipe, Runtime(speedups=report)) if report else pipe
    result = compare(loaded, "portrait photo of a man", ["mustache", "glasses"], seed=3, steps=3)
    return [np.asarray(cell.image, dtype=np.int16) for cell in result.cells]


@pytest.mark.parametrize("n, expected", [(1, 1), (2, 2), (3, 4), (17, 18), (18, 18), (19, 24), (100, 128),
                                         (129, 256), (300, 384)])
def test_bucket_rounds_up_to_a_fixed_size(n, expected):
    assert bucket(n) == expected, f"bucket({n}) must be the smallest bucket >= {n}"


def test_bucket_covers_one_to_eight_negatives_without_padding():
    for negatives in range(1, 9):
        samples = 2 * (negatives + 1)
        assert bucket(samples) == samples, "1 to 8 negatives with guidance must not pay for padding"


def test_bucket_rejects_nonsense():
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n="):
            bucket(n)
    with pytest.raises(ValueError, match="buckets="):
        Levers(buckets=(4, 2))
    with pytest.raises(ValueError, match="compile_mode="):
        Levers(compile_mode="fast")


def test_pad_batch_repeats_the_last_row():
    x = torch.arange(6.0).view(3, 2)
    padded = pad_batch(x, 5)
    assert padded.shape == (5, 2)
    assert torch.equal(padded[:3], x) and torch.equal(padded[3:], x[-1:].expand(2, 2)), \
        "Padding must keep the rows and repeat the last one."
    assert pad_batch(None, 5) is None and pad_batch(x, 3) is x


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_padded_unet_batch_gives_the_unpadded_rows(kind):
    pipe = _pipe(kind)
    reference, (sample, t, text, kwargs) = _unet_out(pipe, n=3)
    with torch.no_grad():
        padded = bucketed_unet(pipe.unet, sample, t, text, buckets=(2, 8), **kwargs)
    assert padded.shape == reference.shape, "The padding rows must be dropped."
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-4,
                               msg="Padding a UNet batch must not change the real rows.")


@pytest.mark.parametrize("lever", ["channels_last", "fuse_qkv"])
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_each_lever_keeps_outputs_equal(lever, kind):
    pipe = _pipe(kind)
    reference, inputs = _unet_out(pipe)
    images = _images(pipe)
    report = apply_speedups(pipe, Levers(**{lever: True}))
    assert any(name.startswith(lever) for name in report["applied"]), f"{lever} must be applied: {report}"
    with torch.no_grad():
        out = bucketed_unet(pipe.unet, *inputs[:3], buckets=None, **inputs[3])
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4, msg=f"{lever} must not change the UNet output.")
    for before, after in zip(images, _images(pipe)):
        assert np.abs(before - after).max() <= 1, f"{lever} must keep every image within 1/255."


def test_levers_are_off_on_the_cpu_and_applied_once(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert Levers.for_device("cpu") == Levers(), "No lever is on by default on the CPU."
    monkeypatch.delenv("NEGPROMPT_COMPILE", raising=False)
    gpu = Levers.for_device("cuda")
    assert gpu.channels_last and gpu.fuse_qkv and not gpu.compile, "Layout levers on CUDA; compile is opt-in."
    monkeypatch.setenv("NEGPROMPT_COMPILE", "1")
    assert Levers.for_device("cuda").compile, "NEGPROMPT_COMPILE=1 turns torch.compile on for CUDA."
    pipe = _pipe()
    report = apply_speedups(pipe)
    assert report["applied"] == [] and report["buckets"] is None, "apply_speedups on the CPU must be a no-op."
    again = apply_speedups(pipe, Levers(fuse_qkv=True), report)
    assert again["applied"] == ["fuse_qkv:unet", "fuse_qkv:vae"]
    assert apply_speedups(pipe, Levers(fuse_qkv=True), report)["applied"] == ["fuse_qkv:unet", "fuse_qkv:vae"], \
        "A lever must be applied once, not again on a second call."
    assert not any(name.startswith("_negprompt") for name in vars(pipe)), \
        "Runtime facts are kept in the report, not on the diffusers object."


def test_sdpa_is_verified():
    pipe = _pipe()
    report = apply_speedups(pipe, Levers())
    assert report["sdpa"], f"diffusers must run attention through SDPA by default: {report['attention']}"


def test_zero_gpu_turns_compile_off(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.setenv("NEGPROMPT_COMPILE", "1")
    assert not Levers.for_device("cuda").compile, "ZeroGPU does not allow torch.compile."
    pipe = _pipe()
    report = apply_speedups(pipe, Levers(compile=True))
    assert "compile" in report["skipped"] and report["buckets"] is None, "compile must be skipped on ZeroGPU."


def test_warmup_runs_each_bucket_once():
    pipe = _pipe()
    seconds = speedups.warmup(pipe, [3, 4, 18], 64, 64)
    assert sorted(seconds) == [3, 4, 18], "Without compile, warm-up runs the sizes as given."


@pytest.mark.slow
def test_compiled_unet_with_buckets_keeps_outputs_equal(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    pipe = _pipe()
    reference, inputs = _unet_out(pipe, n=3)
    images = _images(pipe)
    report = apply_speedups(pipe, Levers(compile=True, compile_mode="default", buckets=(4, 6)))
    assert report["buckets"] == [4, 6]
    assert sorted(speedups.warmup(pipe, [3, 6], 64, 64, buckets=report["buckets"])) == [4, 6], \
        "Warm-up compiles the buckets."
    with torch.no_grad():
        out = bucketed_unet(pipe.unet, *inputs[:3], buckets=report["buckets"], **inputs[3])
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-3,
                               msg="The compiled, padded UNet must give the eager output.")
    for before, after in zip(images, _images(pipe, report)):
        assert np.abs(before - after).max() <= 1, "torch.compile must keep every image within 1/255."
