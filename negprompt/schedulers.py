"""The samplers negprompt offers, by the names A1111 users know, built per request from the model's own config.

A request never touches the loaded pipeline's scheduler: ``make_scheduler`` returns a fresh instance configured
from it (schedulers keep per-run state such as the step index, so sharing one between requests would be a bug).
"""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    UniPCMultistepScheduler,
)

DEFAULT = "Default"

# name -> (scheduler class, config overrides)
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "DPM++ 2M": (DPMSolverMultistepScheduler, {}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "UniPC": (UniPCMultistepScheduler, {}),
}

# Schedulers that add fresh noise at every step (drawn from the run's generator).
_STOCHASTIC = (EulerAncestralDiscreteScheduler, DDPMScheduler, KDPM2AncestralDiscreteScheduler)


def scheduler_names() -> list[str]:
    """Names accepted by ``make_scheduler``: the model's own first, then the common ones."""
    return [DEFAULT, *SCHEDULERS]


def make_scheduler(base, name: str = DEFAULT):
    """A new scheduler: ``name``'s class configured from ``base`` (a scheduler or a pipeline's scheduler)."""
    if name == DEFAULT:
        return base.__class__.from_config(base.config)
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not one of {scheduler_names()}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base.config, **overrides)


def sampler_label(scheduler) -> str:
    """The A1111-style name of ``scheduler`` for infotext, or its class name when it has none."""
    for name, (cls, overrides) in SCHEDULERS.items():
        if type(scheduler) is cls and all(scheduler.config.get(k) == v for k, v in overrides.items()):
            if name == "DPM++ 2M" and scheduler.config.get("use_karras_sigmas"):
                continue
            return name
    return type(scheduler).__name__


def is_stochastic(scheduler) -> bool:
    """Whether ``scheduler`` draws noise at every step, so each image needs its own generator to be reproducible."""
    if isinstance(scheduler, _STOCHASTIC):
        return True
    return isinstance(scheduler, DPMSolverMultistepScheduler) and "sde" in scheduler.config.algorithm_type
