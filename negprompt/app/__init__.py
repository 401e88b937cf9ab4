"""negprompt's Gradio app, the only part of negprompt that imports gradio.

    from negprompt.app import AppSettings, build_demo, launch_options
    demo = build_demo(AppSettings.from_env())
    demo.queue(max_size=64, default_concurrency_limit=1).launch(**launch_options())

Modules: ``settings`` (environment variables), ``form`` (checking what a user typed; errors to form labels),
``models`` (which models can load here; tokenizers for the counters), ``runner`` (cost, the generation lock,
cancellation, ZeroGPU), ``outputs`` (files, captions, tables), ``views`` (the handlers), ``layout`` (the Blocks).
"""

from negprompt.app.settings import AppSettings


def __getattr__(name):  # gradio loads only when the layout is asked for
    if name in ("build_demo", "launch_options", "CSS"):
        from negprompt.app import layout

        return getattr(layout, name)
    raise AttributeError(name)


__all__ = ["CSS", "AppSettings", "build_demo", "launch_options"]
