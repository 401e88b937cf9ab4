"""Shared fixtures: every test runs offline with its caches under its own temporary folder, and tiny pipelines are
built once per session, saved with save_pretrained, so tests load them through the real loading code."""

from __future__ import annotations

import os

import pytest

# huggingface_hub reads these once, at import: set them before any test module imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def gradio_temp(tmp_path_factory):
    """One Gradio temp folder for the session: an app launched by a module fixture serves files from the folder it
    started with, so tests must not move it under a running server."""
    return session_gradio_temp(tmp_path_factory)


def session_gradio_temp(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "gradio-session"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, gradio_temp):
    """Keep every path the code writes inside the test's folder (Gradio's: the session's), and the network out of
    reach."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_temp))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A tiny Stable Diffusion 1.x pipeline saved as a diffusers folder."""
    from negprompt.architectures import tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    """A tiny SDXL pipeline saved as a diffusers folder."""
    from negprompt.architectures import tiny_sdxl_pipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_sdxl_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_folder):
    from negprompt.loading import load_pipeline

    return load_pipeline(tiny_sd_folder, device="cpu")


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_sdxl_folder):
    from negprompt.loading import load_pipeline

    return load_pipeline(tiny_sdxl_folder, device="cpu")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (skipped by default; CI runs them: .ci/run)")


def pytest_collection_modifyitems(config, items):
    """Skip the slow tests unless --run-slow is given or a -m expression names them."""
    if config.getoption("--run-slow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (as CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
