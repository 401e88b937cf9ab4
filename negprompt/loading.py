"""Load diffusion pipelines (Stable Diffusion 1.x, 2.x, SDXL, SD3/SD3.5, FLUX.1: the classes of
``negprompt.families``) from the Hub, a local folder, a single .safetensors file (SD 1.x, SDXL), or the embedded model.

    from negprompt import load_pipeline
    pipe = load_pipeline()                                  # the embedded portrait model in assets/
    pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe = load_pipeline("./my-sdxl-folder", device="cuda")

    from negprompt.loading import load
    loaded = load("./my-sdxl-folder", device="cuda")       # the pipeline and what negprompt knows about it
    loaded.pipe, loaded.runtime.speedups, loaded.runtime.safe_batch
    load(embeddings=[("easynegative", "EasyNegative.safetensors")], loras=[("detail.safetensors", 0.8)])

Negative embeddings (``negprompt.embeddings``) and LoRAs (``negprompt.loras``) are loaded with the model, never per
request: they are part of its cache key and of what ``additions_of`` reports for the manifest. The embedded model
always loads its shipped embedding, ``portrait-bad`` (``assets/portrait-embeddings``).

Only safetensors weights are read and no remote code runs. Loaded pipelines are kept in a small cache per (model,
device, dtype): one on a GPU (loading another frees the first one's memory), a few on the CPU, least recently used
first out. A loaded pipeline is treated as read-only: per-request settings (scheduler, sizes, seeds) never touch it.
What negprompt learns about a pipeline while running it (the speed levers applied, the largest batch that fits in
memory) lives in its ``Runtime``, kept beside it in the cache, not on the diffusers object.

Bad input raises ``InputError`` (``ModelNotFoundError`` for a model that is not there, with ``argument="model"``;
``argument="device"`` for a device that is not there).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from negprompt import attention
from negprompt import embeddings as textual_inversion
from negprompt import loras as lora_weights
from negprompt._assets import EMBEDDED_NAME, asset
from negprompt.devices import keep_freed_memory, pick_device, pick_dtype
from negprompt.errors import InputError
from negprompt.families import family_of, refusal
from negprompt.speedups import apply_speedups, new_report

log = logging.getLogger(__name__)

EMBEDDED_MODEL = asset("portrait-model")
# The embedded model's own negative embeddings, loaded with it: (name, file)
EMBEDDED_EMBEDDINGS = (("portrait-bad", asset("portrait-embeddings") / "degraded.safetensors"),)

PIPELINE_CLASSES = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline,
                                                   StableDiffusion3Pipeline, FluxPipeline)}
CACHE_SIZE = {"cpu": 3, "gpu": 1}  # pipelines kept per kind of device

_cache: OrderedDict[tuple[str, str, torch.dtype], Loaded] = OrderedDict()
_lock = threading.Lock()


class ModelNotFoundError(InputError, FileNotFoundError):
    """The requested model is not a usable local folder or file, nor reachable on the Hub."""

    def __init__(self, value, message: str):
        super().__init__("model", value, message)


@dataclass
class Runtime:
    """What negprompt learns about one loaded pipeline while running it."""

    speedups: dict = field(default_factory=new_report)  # speedups.apply_speedups' report: levers applied, buckets
    safe_batch: dict[tuple[int, int], int] = field(default_factory=dict)  # (height, width) -> cells per UNet batch
    # known to fit in memory, learned from out-of-memory errors
    preview_decoder: object = None  # an AutoencoderTiny that decodes step previews (None: the pipeline's VAE)

    @property
    def buckets(self) -> tuple[int, ...] | None:
        """The batch sizes a compiled UNet was built for (None: not compiled, batches run unpadded)."""
        buckets = self.speedups.get("buckets")
        return tuple(buckets) if buckets else None


@dataclass
class Loaded:
    """A loaded pipeline with its runtime facts; ``compare`` accepts it wherever it accepts a pipeline."""

    pipe: DiffusionPipeline
    runtime: Runtime = field(default_factory=Runtime)
    source: str = ""  # the folder, file or Hub id it was loaded from
    embeddings: tuple[textual_inversion.Embedding, ...] = ()  # negative embeddings loaded with it
    loras: tuple[lora_weights.Lora, ...] = ()  # LoRAs fused into it

    def additions(self) -> dict:
        """What was loaded beside the model, as the manifest records it ({} for nothing)."""
        out = {}
        if self.embeddings:
            out["embeddings"] = [e.to_dict() for e in self.embeddings]
        if self.loras:
            out["loras"] = [lora.to_dict() for lora in self.loras]
        return out


def resolve_model(model: str | Path | None) -> str:
    """The folder, file or Hub id that ``model`` names; ``None`` is the embedded model."""
    if model is None or str(model) in ("", EMBEDDED_NAME):
        if not (EMBEDDED_MODEL / "model_index.json").is_file():
            raise ModelNotFoundError(str(EMBEDDED_MODEL), (
                f"The embedded model is missing: {EMBEDDED_MODEL} has no model_index.json. "
                "Train it from the repository's root with `python -m training.portrait_model --out runs/portrait` "
                "(see its model card), or pass --model."))
        return str(EMBEDDED_MODEL)
    if not isinstance(model, (str, Path)):
        raise InputError("model", model, f"model={model!r} must be a Hub id, a folder or a file")
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelNotFoundError(str(model), (
                f"model={str(model)!r} is a file, not a diffusers pipeline folder; negprompt loads diffusers folders, "
                "Hub ids, and single-file .safetensors checkpoints of Stable Diffusion 1.x or SDXL"))
        return str(path.resolve())
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(str(model), f"model={str(model)!r} is a folder without model_index.json (not a "
                                                 "diffusers pipeline folder)")
        return str(path.resolve())
    text = str(model)
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text or path.is_absolute():
        raise ModelNotFoundError(text, f"model={text!r}: no such folder or file (a Hub id looks like owner/name)")
    return text


def model_label(model: str | Path | None) -> str:
    """A short name for a model in labels and infotext: the Hub id, the folder name, or the embedded model's name."""
    if model is None or str(model) in ("", EMBEDDED_NAME) or Path(str(model)).resolve() == EMBEDDED_MODEL.resolve():
        return EMBEDDED_NAME
    path = Path(str(model))
    return path.name if path.exists() else str(model)


def model_source(pipe) -> str:
    """What a comparison spec records as a pipeline's model, for ``load_pipeline`` to load again: the embedded
    model's name, the Hub id, or the folder or file it was loaded from."""
    name = getattr(pipe, "name_or_path", None) or ""
    if not name:
        return "unnamed pipeline"
    return model_label(name) if model_label(name) == EMBEDDED_NAME else str(name)


def load(model: str | Path | None = None, *, device: str | torch.device | None = None,
         dtype: torch.dtype | str | None = None, preview_decoder: str | Path | None = None,
         embeddings: Sequence[tuple[str, str | Path]] = (),
         loras: Sequence[tuple[str | Path, float]] = ()) -> Loaded:
    """Load (once) and return the pipeline for ``model`` with its runtime facts, ready on ``device`` in ``dtype``.

    ``model``: a Hub id, a local diffusers folder or a single-file .safetensors checkpoint holding a Stable Diffusion
    1.x/2.x or SDXL pipeline; ``None`` for the embedded model. ``device`` defaults to cuda, then mps, then cpu;
    ``dtype`` to half precision on a GPU and float32 on the CPU. ``preview_decoder``: a folder or Hub id of an
    ``AutoencoderTiny`` for the model's latents (TAESD for SD 1.x/2.x, ``madebyollin/taesd``; TAESDXL for SDXL,
    ``madebyollin/taesdxl``) that decodes the step previews in place of the full VAE; the final images always
    come from the full VAE. ``embeddings``: (name, file, folder or Hub id) pairs of negative embeddings to load
    (``negprompt.embeddings``; the embedded model adds its own). ``loras``: (file, folder or Hub id, weight) pairs
    fused into the model (``negprompt.loras``).
    """
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    if device.type == "cpu":
        keep_freed_memory()
    source = resolve_model(model)
    wanted = _wanted_embeddings(source, embeddings)
    lora_files = tuple((str(lora_weights.resolve_file(str(path))), float(weight)) for path, weight in loras)
    key = (source, str(device), dtype, str(preview_decoder or ""), wanted, lora_files)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        kind = "cpu" if device.type == "cpu" else "gpu"
        _evict(kind, keep=CACHE_SIZE[kind] - 1)
        pipe = _load(source, device, dtype)
        fused = lora_weights.install(pipe, [(Path(p), w) for p, w in lora_files])
        added = tuple(textual_inversion.install(pipe, name, path) for name, path in wanted)
        decoder = _load_preview_decoder(str(preview_decoder), pipe, device, dtype) if preview_decoder else None
        speedups = apply_speedups(pipe)
        if speedups.get("buckets") is None:  # a compiled UNet keeps its graph whole: no attention maps
            family = family_of(pipe)
            attention.install(family.denoiser, family.attention_wrapper)
        loaded = Loaded(pipe=pipe, runtime=Runtime(speedups=speedups, preview_decoder=decoder), source=source,
                        embeddings=added, loras=fused)
        _cache[key] = loaded
        return loaded


def loaded_now(model: str | Path | None):
    """The pipeline of ``model`` if one is loaded already (on any device, with any additions), else None; loads
    nothing (what a cost estimate may read without waiting for a load)."""
    try:
        source = resolve_model(model)
    except InputError:
        return None
    with _lock:
        return next((loaded.pipe for key, loaded in reversed(_cache.items()) if key[0] == source), None)


def load_pipeline(model: str | Path | None = None, *, device: str | torch.device | None = None,
                  dtype: torch.dtype | str | None = None, preview_decoder: str | Path | None = None,
                  embeddings: Sequence[tuple[str, str | Path]] = (),
                  loras: Sequence[tuple[str | Path, float]] = ()) -> DiffusionPipeline:
    """``load(...).pipe``: the cached pipeline alone (see ``load``)."""
    return load(model, device=device, dtype=dtype, preview_decoder=preview_decoder, embeddings=embeddings,
                loras=loras).pipe


def runtime_of(pipe) -> Runtime:
    """The runtime facts of a pipeline in the cache; a fresh ``Runtime`` for one built elsewhere (nothing learned
    about it then outlives the call)."""
    with _lock:
        for loaded in _cache.values():
            if loaded.pipe is pipe:
                return loaded.runtime
    return Runtime()


def additions_of(pipe) -> dict:
    """What was loaded beside the model of a cached pipeline (``Loaded.additions``); {} for one built elsewhere."""
    with _lock:
        for loaded in _cache.values():
            if loaded.pipe is pipe:
                return loaded.additions()
    return {}


def _wanted_embeddings(source: str, extra) -> tuple[tuple[str, str], ...]:
    """(name, file) of every embedding to load: the embedded model's own, then ``extra`` (names checked, files
    found); a name given twice is an error."""
    own = [(n, str(p)) for n, p in EMBEDDED_EMBEDDINGS if p.is_file()] if source == str(EMBEDDED_MODEL) else []
    wanted = own + [(textual_inversion.parse_embedding(f"{n}={p}")[0], str(textual_inversion.resolve_file(str(p))))
                    for n, p in extra]
    names = [n for n, _ in wanted]
    for name in names:
        if names.count(name) > 1:
            raise textual_inversion.EmbeddingError(name, f"embedding name {name!r} is given twice (the embedded model "
                                                  f"loads {', '.join(n for n, _ in own) or 'none'} itself)")
    return tuple(wanted)


def _load_preview_decoder(name: str, pipe, device: torch.device, dtype: torch.dtype):
    """The ``AutoencoderTiny`` at ``name`` (a folder or a Hub id), checked against ``pipe``'s latents."""
    from diffusers import AutoencoderTiny

    local = Path(name).expanduser()
    if not local.is_dir():
        _check_downloaded("preview_decoder", name, "config.json")
    try:
        decoder = AutoencoderTiny.from_pretrained(str(local) if local.is_dir() else name, use_safetensors=True)
    except Exception as error:  # the Hub client and diffusers raise several unrelated types for "not there"
        raise ModelNotFoundError(name, f"preview_decoder={name!r} could not be loaded as an AutoencoderTiny: "
                                       f"{error}") from error
    channels = pipe.vae.config.latent_channels
    if decoder.config.latent_channels != channels:
        raise InputError("preview_decoder", name, f"preview_decoder={name!r} decodes {decoder.config.latent_channels}"
                                                  f"-channel latents; this model's have {channels}")
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _evict(kind: str, keep: int) -> None:
    """Drop the least recently used pipelines on ``kind`` devices until ``keep`` remain; frees their GPU memory
    once nothing else holds them."""
    keys = [k for k in _cache if ("cpu" if k[1] == "cpu" else "gpu") == kind]
    for key in keys[:max(0, len(keys) - keep)]:
        log.info("unloading %s from %s", key[0], key[1])
        del _cache[key]
    if len(keys) > keep:
        gc.collect()
        if kind == "gpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES",
                                                                                               "TRUE")


def _check_downloaded(argument: str, name: str, filename: str) -> None:
    """With no network (HF_HUB_OFFLINE), fail at once unless the Hub id ``name`` has ``filename`` in the cache."""
    if not _offline():
        return
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, filename) if name.count("/") == 1 else None
    if not isinstance(cached, str):
        raise ModelNotFoundError(name, f"{argument}={name!r} is not downloaded and no network (HF_HUB_OFFLINE is "
                                       "set): download it first, or pass a local folder")


def _read_config(source: str) -> dict:
    """The pipeline's model_index.json, from a folder, the Hub cache or the Hub."""
    local = Path(source)
    if local.is_dir():
        try:
            return json.loads((local / "model_index.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelNotFoundError(source, f"model={source!r}: its model_index.json is not valid JSON "
                                             f"({error})") from None
    _check_downloaded("model", source, "model_index.json")
    try:
        return DiffusionPipeline.load_config(source)
    except Exception as error:  # the Hub client raises several unrelated types for "not there"
        raise ModelNotFoundError(source, f"model={source!r} is not a local folder and could not be fetched from "
                                         f"the Hub: {error}") from error


def _check_class(source: str, class_name) -> type:
    if isinstance(class_name, str) and class_name in PIPELINE_CLASSES:
        return PIPELINE_CLASSES[class_name]
    if isinstance(class_name, (list, tuple)):  # ["my_pipeline", "MyPipeline"]: a pipeline from a .py of its own
        raise ModelNotFoundError(source, f"model={source!r} names a custom pipeline ({_named(class_name)}); "
                                         "negprompt runs no code from a model folder")
    if not isinstance(class_name, str):
        raise InputError("model", source, f"model={source!r}: its model_index.json names no pipeline class "
                                          "(_class_name)")
    raise refusal(class_name, source)


# The components each pipeline class needs, and the libraries negprompt loads them from (no remote or local code).
COMPONENTS = {
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "StableDiffusionXLPipeline": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                  "scheduler"),
    # SD3 runs without its T5 (text_encoder_3, tokenizer_3), so they are not required
    "StableDiffusion3Pipeline": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                 "scheduler"),
    "FluxPipeline": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                     "scheduler"),
}
LIBRARIES = ("diffusers", "transformers")


def check_model_index(source: str, config) -> type:
    """The pipeline class a ``model_index.json`` (already parsed) names, after checking that it is one negprompt
    runs and that every component it needs is there and comes from diffusers or transformers; raises
    ``ModelNotFoundError`` (``InputError("model", ...)``) naming what is wrong. Nothing is imported or run."""
    if not isinstance(config, dict):
        raise ModelNotFoundError(source, f"model={source!r}: its model_index.json is not a JSON object")
    cls = _check_class(source, config.get("_class_name"))
    missing = [name for name in COMPONENTS[cls.__name__]
               if not (isinstance(config.get(name), (list, tuple)) and len(config[name]) == 2
                       and all(config[name]))]
    if missing:
        raise ModelNotFoundError(source, f"model={source!r} has no {', '.join(missing)} in its model_index.json; "
                                         f"a {cls.__name__} needs {', '.join(COMPONENTS[cls.__name__])}")
    custom = [f"{name} ({_named(config[name])})" for name in COMPONENTS[cls.__name__]
              if config[name][0] not in LIBRARIES]
    if custom or config.get("_custom_pipeline") or config.get("trust_remote_code") or config.get("auto_map"):
        what = ", ".join(custom) or "a custom pipeline"
        raise ModelNotFoundError(source, f"model={source!r} needs custom code: {what}; negprompt loads components "
                                         f"from {' and '.join(LIBRARIES)} only and runs no code from a model folder")
    return cls


def _named(value) -> str:
    """A class name as model_index.json gives it, for a message: "UNet2DConditionModel", "my_unet.MyUNet"."""
    if isinstance(value, (list, tuple)):
        return ".".join(str(part) for part in value if part)[:80]
    return repr(value)[:80] if not isinstance(value, str) else value[:80]


def _single_file_class(path: str) -> type:
    """SDXL or SD 1.x, from the tensor names of a single-file checkpoint (SDXL has a second text encoder)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
    except Exception as error:
        raise ModelNotFoundError(path, f"model={path!r} is a file but not a readable safetensors checkpoint: "
                                       f"{error}") from None
    if not any(n.startswith("model.diffusion_model.") for n in names):
        raise ModelNotFoundError(path, f"model={path!r} is a file but not a Stable Diffusion checkpoint (it has no "
                                       "model.diffusion_model weights)")
    sdxl = any(n.startswith("conditioner.embedders.1.") for n in names)
    return StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline


def _load(source: str, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    if Path(source).is_file():
        cls = _single_file_class(source)
        log.info("loading the single file %s as %s on %s in %s", source, cls.__name__, device, dtype)
        try:
            pipe = cls.from_single_file(source, dtype=dtype)
        except Exception as error:  # from_single_file fetches the matching configs from the Hub
            raise ModelNotFoundError(source, f"model={source!r} is a single-file checkpoint that diffusers could not "
                                             f"load ({error}); convert it to a diffusers folder") from error
    else:
        config = _read_config(source)
        cls = check_model_index(source, config)
        extra = {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionPipeline else {}
        if cls is StableDiffusion3Pipeline:  # SD3 runs without T5 (a folder saved without it lists none)
            extra = {name: None for name in ("text_encoder_3", "tokenizer_3") if not any(config.get(name) or [])}
        log.info("loading %s (%s) on %s in %s", source, cls.__name__, device, dtype)
        try:
            pipe = cls.from_pretrained(source, dtype=dtype, use_safetensors=True, **extra)
        except OSError as error:
            raise ModelNotFoundError(source, f"model={source!r} could not be loaded: {error} (negprompt reads only "
                                             "safetensors weights)") from error
        except (ValueError, TypeError, ImportError, AttributeError, KeyError) as error:  # a broken component config
            log.warning("loading %s failed", source, exc_info=True)
            raise ModelNotFoundError(source, f"model={source!r} could not be loaded as a {cls.__name__}: "
                                             f"{str(error)[:300]}") from error
    pipe.to(device)
    if dtype == torch.float16 and pipe.vae.config.get("force_upcast", False):
        # SDXL's VAE overflows in float16. diffusers upcasts it inside every call (mutating the pipeline); we do
        # it once here, and the engine decodes in the VAE's own dtype.
        pipe.vae.to(torch.float32)
    for module in (family_of(pipe).denoiser, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "text_encoder_3", None)):
        if module is not None:
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clear_cache() -> None:
    """Forget every loaded pipeline (frees their memory once nothing else holds them)."""
    with _lock:
        _cache.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
