"""A small preview decoder (diffusers' AutoencoderTiny, the TAESD architecture) decodes the step previews; the
final images still come from the full VAE."""

from __future__ import annotations

import numpy as np
import pytest

from negprompt.errors import InputError


@pytest.fixture(scope="module")
def tiny_decoder_folder(tmp_path_factory):
    """An AutoencoderTiny for 4-channel latents that upsamples 2x (the tiny pipeline's VAE upsamples 8x), so a
    preview's size tells which decoder made it."""
    from diffusers import AutoencoderTiny

    folder = tmp_path_factory.mktemp("tiny-taesd")
    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=4).save_pretrained(folder)
    return folder


def _run(loaded):
    from negprompt.engine import compare
    from negprompt.explore import PreviewRecorder

    recorder = PreviewRecorder(4)
    result = compare(loaded, "portrait photo of a man", ["hat", "glasses"], seed=3, steps=4, callback=recorder,
                     preview_every=1)
    return result, recorder.frames([c.image for c in result.cells])


def test_previews_come_from_the_preview_decoder_and_the_images_do_not_change(tiny_sd_folder, tiny_decoder_folder):
    from negprompt.loading import load

    plain, (steps, plain_frames) = _run(load(tiny_sd_folder, device="cpu"))
    fast, (_, fast_frames) = _run(load(tiny_sd_folder, device="cpu", preview_decoder=tiny_decoder_folder))
    assert steps == [1, 2, 3, 4]
    assert {im.size for frame in plain_frames[:-1] for im in frame} == {(64, 64)}, "The VAE's previews: 64 px."
    assert {im.size for frame in fast_frames[:-1] for im in frame} == {(16, 16)}, \
        "Every preview (all three cells, each kept step) must come from the preview decoder."
    for a, b in zip(plain.cells, fast.cells):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)), "The final images come from the full VAE."


def test_a_preview_decoder_for_other_latents_is_refused(tiny_sd_folder, tmp_path):
    from diffusers import AutoencoderTiny

    from negprompt.loading import load

    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=16).save_pretrained(tmp_path)
    with pytest.raises(InputError, match="16-channel latents; this model's have 4") as caught:
        load(tiny_sd_folder, device="cpu", preview_decoder=tmp_path)
    assert caught.value.argument == "preview_decoder"


def test_a_hub_preview_decoder_without_network_fails_fast(tiny_sd_folder, monkeypatch, tmp_path):
    from negprompt.loading import ModelNotFoundError, load

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not downloaded and no network"):
        load(tiny_sd_folder, device="cpu", preview_decoder="madebyollin/taesd")


def test_the_app_reads_one_preview_decoder_per_model(monkeypatch):
    from negprompt.app.settings import AppSettings

    monkeypatch.setenv("NEGPROMPT_PREVIEW_DECODERS", "org/sd15=madebyollin/taesd, org/sdxl = madebyollin/taesdxl")
    settings = AppSettings.from_env()
    assert settings.preview_decoder("org/sd15") == "madebyollin/taesd"
    assert settings.preview_decoder("org/sdxl") == "madebyollin/taesdxl"
    assert settings.preview_decoder("negprompt-portraits") is None, "Other models decode previews with their VAE."
    monkeypatch.setenv("NEGPROMPT_PREVIEW_DECODERS", "madebyollin/taesd")
    with pytest.raises(ValueError, match="is not MODEL=DECODER"):
        AppSettings.from_env()
