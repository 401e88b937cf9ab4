"""negprompt's Gradio app (a Hugging Face Space entry point): run ``python app.py`` and open http://127.0.0.1:7860.

Settings come from environment variables (NEGPROMPT_MODEL, NEGPROMPT_MAX_CELLS, GRADIO_SERVER_PORT, ...; see the
README). The app lives in ``negprompt/app/``; the model loads on the first request, or at launch with
NEGPROMPT_WARMUP=1 (the default on ZeroGPU).
"""

import logging

from negprompt.app import AppSettings, build_demo, launch_options

settings = AppSettings.from_env()
demo = build_demo(settings)

if __name__ == "__main__":
    from negprompt.app.runner import load

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.warmup:
        load(settings.model, settings.device, settings.preview_decoder(settings.model))
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1).launch(**launch_options(settings))
