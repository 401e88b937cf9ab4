"""Which models the app can run right now, and their tokenizers for the token counters, without waiting on a network
that is not there.

    check_available("stable-diffusion-v1-5/stable-diffusion-v1-5")   # InputError("model", ...) when it cannot load
    tokenizer_for(EMBEDDED_NAME)                                      # a CLIPTokenizer, or None

A Hub model that is not in the local cache loads only with a network: offline (``HF_HUB_OFFLINE=1``) or when the
Hub does not answer within two seconds, the app says "not downloaded and no network" at once instead of retrying.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from functools import lru_cache
from pathlib import Path

from negprompt.errors import InputError
from negprompt.loading import EMBEDDED_MODEL, EMBEDDED_NAME, check_model_index

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
_network: dict[str, tuple[float, bool]] = {}


def hub_reachable(timeout: float = 2.0, remember_s: float = 60.0) -> bool:
    """Whether the Hugging Face Hub can be reached (False at once when ``HF_HUB_OFFLINE`` is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = re.sub(r"^\w+://", "", endpoint).split("/")[0]
    seen = _network.get(host)
    if seen is not None and time.monotonic() - seen[0] < remember_s:
        return seen[1]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            reachable = True
    except OSError:
        reachable = False
    _network[host] = (time.monotonic(), reachable)
    return reachable


def _cached_file(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) else None


def model_index(model: str) -> Path | None:
    """The model's ``model_index.json`` on disk (embedded, folder or Hub cache), or None when not downloaded."""
    if model == EMBEDDED_NAME:
        return EMBEDDED_MODEL / "model_index.json"
    path = Path(model).expanduser()
    if path.exists():
        return path / "model_index.json"
    found = _cached_file(model, "model_index.json")
    return Path(found) if found else None


def check_available(model: str) -> None:
    """Raise ``InputError("model", ...)`` with the reason when ``model`` cannot be loaded here."""
    path = Path(model).expanduser() if model != EMBEDDED_NAME else EMBEDDED_MODEL
    if model != EMBEDDED_NAME and path.is_file():
        raise InputError("model", model, f"{model!r} is a file; this app loads diffusers pipeline folders or Hub ids "
                                         "(single-file checkpoints such as .safetensors are not supported)")
    if model == EMBEDDED_NAME or path.exists():
        index = path / "model_index.json"
        if not index.is_file():
            raise InputError("model", model, f"{model!r} is a folder without model_index.json (not a diffusers "
                                             "pipeline folder)")
        return _check_class(model, index)
    if not HUB_ID.fullmatch(model):
        raise InputError("model", model, f"{model[:60]!r} is neither a folder here nor a Hub id (owner/name)")
    index = model_index(model)
    if index is not None:
        return _check_class(model, index)
    if not hub_reachable():
        raise InputError("model", model, f"{model!r} is not downloaded and there is no network to download it")


def _check_class(model: str, index: Path) -> None:
    """The checks ``negprompt.loading`` makes before loading (class, components, no custom code), from the
    model_index.json alone."""
    try:
        config = json.loads(index.read_text())
    except (OSError, ValueError):
        raise InputError("model", model, f"{model!r} has a model_index.json that is not valid JSON") from None
    try:
        check_model_index(model, config)
    except InputError as error:  # "model='x' is a ...": the form shows its label, then "'x' is a ..."
        raise InputError("model", model, str(error).removeprefix("model=")) from None


@lru_cache(maxsize=8)
def tokenizer_for(model: str):
    """The model's tokenizer alone (no weights), from disk only; None when it is not there or not a CLIP one."""
    from transformers import CLIPTokenizer

    index = model_index(model)
    if index is None:
        return None
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(index.parent), subfolder="tokenizer", local_files_only=True)
    except Exception:  # missing or not a CLIP tokenizer: the counter falls back to words
        log.info("no tokenizer on disk for %s", model)
        return None
    if not 8 <= tokenizer.model_max_length <= 1024:  # a tokenizer without its config: its limit is not the model's
        return None
    return tokenizer
