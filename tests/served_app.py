"""Launch the app for tests: on a free loopback port, offline, its files under a temporary folder, with the
embedded model when assets/portrait-model exists, else a tiny random pipeline saved as a folder."""

from __future__ import annotations

import contextlib
import socket

import pytest
from conftest import session_gradio_temp

from negprompt.app.settings import AppSettings
from negprompt.loading import EMBEDDED_MODEL, EMBEDDED_NAME

# The served app's caps: small, so that tests run fast and hostile_cases.py can name its limits.
SERVED_OPTIONS = dict(allow_custom_model=False, max_negatives=4, max_seeds=4, max_cells=12, max_steps=10,
                      max_size=1024, default_steps=3, preview_every=1, queue_size=64)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_model(tmp_path_factory) -> str:
    """The embedded model when it is there, else a tiny pipeline folder."""
    if (EMBEDDED_MODEL / "model_index.json").is_file():
        return EMBEDDED_NAME
    from negprompt.architectures import tiny_sd_pipeline

    folder = tmp_path_factory.mktemp("tiny-app-model")
    tiny_sd_pipeline().save_pretrained(folder)
    return str(folder)


@contextlib.contextmanager
def serve(tmp_path_factory, **overrides):
    """Yield (url, model) while the app runs."""
    import gradio as gr

    from negprompt.app import build_demo, launch_options

    home = tmp_path_factory.mktemp("app-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HOME", str(home / "hf-home"))
        env.setenv("GRADIO_TEMP_DIR", str(session_gradio_temp(tmp_path_factory)))
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        model = app_model(tmp_path_factory)
        settings = AppSettings(**{"model": model, "models": (model,), **SERVED_OPTIONS, **overrides})
        demo = build_demo(settings)
        demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True, **launch_options(settings))
        try:
            yield url, model
        finally:
            demo.close()
            gr.close_all()
