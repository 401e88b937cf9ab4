"""The embedded default model: the shipped folder, the detector, the training command and the evaluation script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

import training.portrait_model as train
from negprompt.portrait_model.detector import DEFAULT_PATH, detect, load_detector
from negprompt.portrait_model.portraits import draw_portrait, sample_portraits
from training.detector import evaluate
from training.portrait_model import TINY, TrainConfig, run

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "assets" / "portrait-model"


def test_shipped_folder_is_small_and_standard():
    files = [f for f in MODEL.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20, "The model folder must stay within 20 MB."
    assert max(f.stat().st_size for f in files) <= 10 * 2**20, "No file in the model folder may exceed 10 MB."
    index = json.loads((MODEL / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index and (MODEL / part).is_dir(), f"The folder must hold {part}/."
    assert json.loads((MODEL / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"


def test_shipped_folder_loads_offline_and_generates():
    pipe = StableDiffusionPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32, "The model must load in float32 by default."
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    run_once = lambda: pipe("portrait photo of a man", negative_prompt="mustache", latents=latents.clone(),  # noqa
                            num_inference_steps=8, height=64, width=64, output_type="np").images
    a, b = run_once(), run_once()
    assert a.shape == (1, 64, 64, 3), "The model must generate 64x64 RGB images."
    assert (a == b).all(), "Same starting latents must produce identical output for the same prompt."
    assert a.std() > 0.05, "A generated portrait must not be a flat image."


@pytest.mark.slow
def test_detector_accuracy_on_a_fresh_draw():
    assert sum(f.stat().st_size for f in DEFAULT_PATH.iterdir()) <= 2 * 2**20, "The detector must stay within 2 MB."
    accuracy = evaluate(load_detector(), seed=424242, n=1000)
    for name, value in accuracy.items():
        assert value >= 0.97, f"Detector accuracy for {name} must be at least 97% on fresh portraits, got {value:.3f}."


def test_detect_reports_every_attribute_and_clean():
    people = sample_portraits(__import__("numpy").random.default_rng(3), 2)
    records = detect([draw_portrait(p) for p in people])
    for person, record in zip(people, records):
        assert record["clean"] is True, "A drawn portrait must be judged clean."
        for name, present in person.attributes().items():
            assert (record[name] >= 0.5) == present, f"{name} must be detected on a drawn portrait."


@pytest.mark.slow
def test_tiny_training_run_saves_a_loadable_folder_and_resumes_with_its_own_tokenizer(tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, steps=3, vae_steps=3)
    folder = run(cfg, tmp_path / "run", device="cpu", minutes=1.0)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    image = pipe("mustache", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    assert (tmp_path / "run" / "samples" / "final.png").exists(), "Training must write sample grids."
    assert (tmp_path / "run" / "checkpoint.pt").exists(), "Training must leave a checkpoint to resume from."

    # A resumed run must reload the tokenizer its checkpoint learned with, never build a new one.
    vocab = CLIPTokenizer.from_pretrained(tmp_path / "run" / "tokenizer").get_vocab()
    monkeypatch.setattr(train, "build_clip_tokenizer", lambda *a, **k: pytest.fail("resume rebuilt the tokenizer"))
    folder = run(TrainConfig(**TINY, steps=3, vae_steps=3), tmp_path / "run", device="cpu", minutes=1.0)
    assert CLIPTokenizer.from_pretrained(folder / "tokenizer").get_vocab() == vocab

    # A finished run can be trained further: --extend adds steps, --reinit-token restarts an unbound word.
    run(TrainConfig(**TINY, steps=3, vae_steps=3), tmp_path / "run", device="cpu", minutes=1.0, extend=2,
        reinit=("mustache",))
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 5

    # A checkpoint never resumes under another architecture: a different head count would load and mean nothing.
    with pytest.raises(ValueError, match="another architecture"):
        run(TrainConfig(**{**TINY, "attn_heads": 4}, steps=3, vae_steps=3), tmp_path / "run", device="cpu",
            minutes=1.0)


def test_reinit_token_gives_a_word_a_fresh_direction_and_restarts_its_optimizer_state():
    text = train.build_models(TrainConfig(**TINY), vocab_size=40)[1]
    opt = torch.optim.AdamW(text.parameters(), lr=1e-3)
    # A squared loss: the plain sum of a layer-normed output has a zero gradient, which left the optimizer's
    # moments at zero (or rounding noise) and made this test depend on the random state.
    text(torch.tensor([[38, 5, 7, 9, 39]]))[0].pow(2).sum().backward()
    opt.step()
    ema = train.copy.deepcopy(text)
    others = [7, 9, 11, 12]
    train.reinit_token(5, others, [text, ema], opt, torch.Generator().manual_seed(0))
    weight = text.get_input_embeddings().weight
    assert torch.equal(weight[5], ema.get_input_embeddings().weight[5])
    assert (weight[others] @ weight[5]).abs().max() < 1e-5, \
        "The fresh embedding must share no direction with the others."
    assert torch.isclose(weight[5].norm(), weight[others].norm(dim=1).mean())
    moments = opt.state[weight]
    assert not moments["exp_avg"][5].any() and moments["exp_avg_sq"][5].all()


@pytest.mark.slow
def test_evaluation_script_runs_end_to_end(tmp_path):
    out = tmp_path / "effect.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "negative_effect.py"), "--seeds", "2", "--first-seed", "5",
           "--steps", "2", "--json", str(out), "--grid", str(tmp_path / "grid.png")]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    table = json.loads(out.read_text())
    for name in ("mustache", "beard", "glasses", "hat", "smile", "earrings", "scarf"):
        assert set(table[name]) >= {"plain", "without", "negative", "adherence", "collateral_max", "background_kept"}
        assert 0 <= table[name]["background_kept"] <= 1
    assert (tmp_path / "grid.png").exists()


def test_vae_fidelity_script_reports_every_attribute():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "vae_fidelity.py"), "--n", "16"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert set(report["reconstructions"]) == set(report["originals"]) >= {"mustache", "glasses", "hat"}
    assert report["originals"]["hat"] == 1.0, "The detector must see every hat on drawn portraits."
    assert 0 < report["mean_abs_error"] < 20, "The shipped VAE must reconstruct portraits closely."


@pytest.mark.slow
def test_word_binding_script_measures_what_naming_a_word_does():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "word_binding.py"), "--n", "16"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert set(report) >= {"mustache", "glasses", "hat", "beard"}
    assert all(set(row) == {"300", "500", "700"} for row in report.values())
    # The shipped model has bound "hat" (it draws one for 100% of "with hat" prompts): naming it must help it
    # denoise a portrait with a hat at high noise, where the hat is decided.
    assert report["hat"]["700"] > 0.03, report["hat"]


def test_training_builds_the_attention_heads_it_asks_for():
    # diffusers reads a UNet's attention_head_dim as a head count: the config's attn_heads must be heads.
    for heads, text_heads in ((32, 2), (6, 4)):
        _, text, unet = train.build_models(TrainConfig(attn_heads=heads, text_heads=text_heads), vocab_size=64)
        layers = [m for name, m in unet.named_modules() if name.endswith(("attn1", "attn2"))]
        assert layers and all(m.heads == heads and m.inner_dim == 96 for m in layers)
        assert text.config.num_attention_heads == text_heads


def test_a_warm_start_keeps_the_shipped_model_and_starts_out_equal_to_it():
    """A warm start from the shipped folder with its own architecture (read from the folder) computes exactly what the
    shipped model does; with attention added at a level the folder lacks, those layers are the only new ones."""
    tokenizer = CLIPTokenizer.from_pretrained(MODEL / "tokenizer")
    architecture = train.architecture_of(MODEL)
    cfg = TrainConfig(**architecture, init_from=str(MODEL))
    vae, text, unet, new = train.warm_start(cfg, MODEL, len(tokenizer))
    shipped = StableDiffusionPipeline.from_pretrained(MODEL)
    if not architecture["attn_levels"][0]:  # a model without 16x16 attention: add it
        cfg = TrainConfig(**{**architecture, "attn_levels": (True, True, True), "attn_heads": (3, 32, 32)},
                          init_from=str(MODEL))
        vae, text, unet, new = train.warm_start(cfg, MODEL, len(tokenizer))
        assert new and all(k.startswith(("down_blocks.0.attentions.", "up_blocks.2.attentions.")) for k in new), \
            "Only the 16x16 attention layers may be new."
    else:
        assert not new, "The shipped architecture itself: nothing is new."
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.heads == 3, "16x16 must have 3 heads 16 wide."
    assert vae.config.scaling_factor == shipped.vae.config.scaling_factor, "The latent scale must be the saved one."
    x, t = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([50, 400, 900])
    ids = tokenizer(["portrait photo of a man with a mustache"] * 3, padding="max_length", max_length=77,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        emb = text(ids)[0]
        assert torch.equal(emb, shipped.text_encoder(ids)[0]), "The warm start must keep the text encoder."
        assert torch.equal(unet(x, t, emb).sample, shipped.unet(x, t, emb).sample), \
            "Before training, the warm-started UNet must compute exactly what the shipped one does."


def test_a_warm_started_run_trains_its_new_layers_at_their_own_rate(tmp_path):
    first = run(TrainConfig(**TINY, steps=2, vae_steps=2), tmp_path / "a", device="cpu", minutes=1.0)
    cfg = TrainConfig(**{**TINY, "attn_levels": (True, True, True), "attn_heads": (2, 2, 2)}, steps=2,
                      init_from=str(first), init_lr_scale=0.5, name_prob={"mustache": 0.8})
    folder = run(cfg, tmp_path / "b", device="cpu", minutes=1.0)
    assert not (tmp_path / "b" / "stage_vae.pt").exists(), "A warm start must keep the saved VAE, not train one."
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.unet.config.down_block_types[0] == "CrossAttnDownBlock2D"
    saved = StableDiffusionPipeline.from_pretrained(first)
    assert torch.equal(pipe.vae.decoder.conv_out.weight, saved.vae.decoder.conv_out.weight), "The VAE must stay."
    groups = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["opt"]["param_groups"]
    assert [g["scale"] for g in groups] == [0.5, 1.0], "Loaded weights learn at init_lr_scale, new ones at full rate."

    # --export saves the model of a checkpoint (a run stopped early): at the last step, the model the run saved.
    trained = pipe.unet.state_dict()
    exported = StableDiffusionPipeline.from_pretrained(train.export_checkpoint(cfg, tmp_path / "b")).unet.state_dict()
    assert all(torch.equal(trained[k], exported[k]) for k in trained), "An export must save the checkpoint's EMA."


def test_a_text_encoder_without_layers_or_positions_gives_each_word_one_key_that_cannot_shrink():
    """--text-layers 0 --no-text-positions: a word's output is its own normalised embedding, the same wherever it
    stands, and shrinking its embedding does not silence it (the final layer norm undoes the scale, down to norms
    far below the 0.35 at which the 2-layer encoder's "mustache" ended)."""
    _, text, _ = train.build_models(TrainConfig(text_layers=0, text_positions=False), vocab_size=64)
    positions = train._positions(text)
    assert not positions.requires_grad and torch.count_nonzero(positions) == 0
    ids = torch.tensor([[62, 5, 7, 63, 63], [62, 9, 5, 63, 63]])
    with torch.no_grad():
        out = text(ids)[0]
        assert torch.allclose(out[0, 1], out[1, 2], atol=1e-6), "Word 5 must give the same key at positions 1 and 2."
        word = text.get_input_embeddings().weight[5]
        word *= 0.35 / word.norm()
        before = text(ids)[0][0, 1]
        word *= 0.25
        after = text(ids)[0][0, 1]
        assert torch.cosine_similarity(before, after, dim=0) > 0.999, "Shrinking a word must keep its key's direction."
        assert after.norm() > 0.9 * before.norm(), "Shrinking a word fourfold must keep its key's length."


def test_a_fresh_text_encoder_on_a_warm_started_unet_starts_from_the_unet_without_its_text():
    tokenizer = CLIPTokenizer.from_pretrained(MODEL / "tokenizer")
    cfg = TrainConfig(**{**train.architecture_of(MODEL), "text_layers": 0, "text_positions": False},
                      init_from=str(MODEL), fresh_text=True)
    _, text, unet, new = train.warm_start(cfg, MODEL, len(tokenizer))
    assert text.config.num_hidden_layers == 0
    assert new and all(".attn2." in k for k in new), "Only the cross-attention layers count as new."
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 700])
    ids = tokenizer(["portrait photo of a man with a mustache", "glasses"], padding="max_length", max_length=77,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        emb = text(ids)[0]
        assert torch.equal(unet(x, t, emb).sample, unet(x, t, emb.flip(0)).sample), \
            "With the cross-attention outputs at zero, the warm-started UNet must ignore the text."


def test_the_mouth_weight_raises_the_mouth_cells_and_keeps_the_mean():
    assert train.region_weights(TrainConfig()) is None
    weights = train.region_weights(TrainConfig(mouth_weight=3.0))
    assert weights.shape == (16, 16) and weights.mean().item() == pytest.approx(1.0)
    assert weights[9, 8] / weights[0, 0] == pytest.approx(4.0), "A mouth cell weighs 1 + 3 times a corner cell."
