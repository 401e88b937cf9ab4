"""LoRA weights for a whole comparison: loaded and fused into the model when it loads, never per request.

    from negprompt.loading import load
    loaded = load("./my-sd15", loras=[("./detail.safetensors", 0.8)])

A LoRA changes the model every cell of a comparison runs, so it is part of the loaded model's identity
(``loading.load``'s cache key) and of the manifest, never of one negative prompt: a ``<lora:name:0.8>`` written into
a prompt (A1111's way) is refused with that explanation (``check_prompt``). Loading uses diffusers'
``load_lora_weights`` (which needs peft), ``set_adapters`` for the weights and ``fuse_lora``, then drops the adapter
layers, so the UNet and text encoders run as plain modules afterwards.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from negprompt.errors import InputError

TAG = re.compile(r"<\s*lora\s*:[^>]*>", re.IGNORECASE)
HUB_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class Lora:
    """A LoRA fused into a loaded model, as the manifest records it."""

    source: str  # the file it was read from (a Hub id's cached file)
    weight: float  # its scale
    sha256: str  # of the file

    def to_dict(self) -> dict:
        return asdict(self)


def check_prompt(argument: str, text: str) -> None:
    """Refuse a prompt holding A1111's ``<lora:name:weight>``: a LoRA changes the model, not one prompt."""
    found = TAG.search(text)
    if found:
        raise InputError(argument, text, f"{argument} holds {found.group(0)!r}: a LoRA changes the model, not the "
                                         "negative prompt, so every cell would change with it. Load it for the whole "
                                         "comparison instead (command line: --lora PATH:WEIGHT; app: the LoRA field) "
                                         "and remove the tag")


def parse_lora(text: str) -> tuple[str, float]:
    """``PATH:WEIGHT`` or ``PATH`` (weight 1) -> (path, weight)."""
    path, sep, weight = str(text).rpartition(":")
    if not sep or not path or "/" in weight or "\\" in weight:
        path, weight = str(text), "1"
    try:
        value = float(weight)
    except ValueError:
        raise InputError("lora", text, f"--lora {text!r} must look like PATH:WEIGHT (e.g. detail.safetensors:0.8)"
                         ) from None
    if not path.strip():
        raise InputError("lora", text, f"--lora {text!r} names no file")
    if not -4 <= value <= 4:
        raise InputError("lora", text, f"--lora {text!r}: the weight {value:g} must be from -4 to 4")
    return path.strip(), value


def resolve_file(source: str) -> Path:
    """The LoRA file ``source`` names: a .safetensors file, a folder with ``pytorch_lora_weights.safetensors``,
    or a Hub id (offline: only when already in the cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / HUB_FILE
    if path.is_file():
        if path.suffix != ".safetensors":
            raise InputError("lora", source, f"lora {source!r} is not a .safetensors file (negprompt reads only "
                                             "safetensors weights)")
        return path.resolve()
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise InputError("lora", source, f"lora {source!r}: no such file or folder (a Hub id looks like owner/name)")
    from negprompt.loading import _check_downloaded

    try:
        _check_downloaded("lora", source, HUB_FILE)
    except InputError as error:
        raise InputError("lora", source, str(error)) from None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, HUB_FILE))
    except Exception as error:  # the Hub client raises several unrelated types for "not there"
        raise InputError("lora", source, f"lora {source!r} is not a file here and has no {HUB_FILE} on the Hub: "
                                         f"{error}") from None


def install(pipe, loras: list[tuple[Path, float]]) -> tuple[Lora, ...]:
    """Load every LoRA into ``pipe`` with its weight and fuse them (at load time only)."""
    if not loras:
        return ()
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except (ValueError, KeyError, OSError) as error:
            raise InputError("lora", str(path), f"lora {str(path)!r} could not be loaded into this model: "
                                                f"{error}") from None
    pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    pipe.fuse_lora(adapter_names=names)
    pipe.unload_lora_weights()
    return tuple(Lora(source=str(path), weight=w, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
                 for path, w in loras)
