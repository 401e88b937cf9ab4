"""Negative embeddings (textual inversion): learned vectors that a prompt names by a word, loaded with the model.

    from negprompt.loading import load
    loaded = load(embeddings=[("easynegative", "./EasyNegative.safetensors")])
    compare(loaded, "portrait photo of a man", ["EasyNegative, blurry"])

An embedding is loaded once, when its model loads, with diffusers' ``load_textual_inversion``: its name becomes a
token of the tokenizer and its vectors rows of the text encoder's token table; it is part of the loaded model's
identity (``loading.load``'s cache key), so a pipeline is never changed per request. Files read: A1111's ``.pt``
(``string_to_param``) and ``.safetensors`` (``emb_params``), diffusers' ``learned_embeds`` files (one tensor), and
SDXL's two-encoder files (``clip_l`` and ``clip_g``: each encoder gets its own vectors, through its own tokenizer).
A source is a file, a folder holding one such file, or a Hub id (``learned_embeds.safetensors`` in that repository).

A name is matched without regard to case, as CLIP's tokenizer reads text: "EasyNegative" and "easynegative" are the
same word. An embedding of n vectors stands for n tokens (diffusers writes ``name name_1 ... name_{n-1}``), but a
prompt names it with one word, so leave-one-out ranks it as one term.

X-ray: every vector is also loaded alone, under ``name#1`` ... ``name#n`` (``xray_tokens``), so one cell per vector
is an ordinary negative prompt; ``nearest_words`` lists the vocabulary words closest to each vector (cosine
similarity against the text encoder's token table).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from negprompt.errors import InputError

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
FILE_SUFFIXES = (".safetensors", ".pt", ".bin")
HUB_FILE = "learned_embeds.safetensors"


class EmbeddingError(InputError):
    """An embedding that cannot be loaded, named as the argument that gave it."""

    def __init__(self, value, message: str):
        super().__init__("embedding", value, message)


@dataclass(frozen=True)
class Embedding:
    """A loaded embedding, as the manifest records it."""

    name: str  # the word a prompt writes (lower case; matched without regard to case)
    source: str  # the file it was read from (a Hub id's cached file), or the Hub id
    sha256: str  # of the file
    vectors: int  # tokens it stands for
    encoders: tuple[str, ...]  # "clip_l" (SD 1.x/2.x: the one encoder), and "clip_g" for SDXL's second one

    @property
    def xray_tokens(self) -> tuple[str, ...]:
        """One token per vector, holding that vector alone."""
        return xray_tokens(self.name, self.vectors)

    def to_dict(self) -> dict:
        return {**asdict(self), "encoders": list(self.encoders)}


def xray_tokens(name: str, vectors: int) -> tuple[str, ...]:
    return tuple(f"{name}#{i}" for i in range(1, vectors + 1))


def parse_embedding(text: str) -> tuple[str, str]:
    """``NAME=PATH`` (a file, folder or Hub id) -> (name in lower case, path); ``EmbeddingError`` otherwise."""
    name, sep, source = str(text).partition("=")
    name, source = name.strip().lower(), source.strip()
    if not sep or not source:
        raise EmbeddingError(text, f"--embedding {text!r} must look like NAME=PATH (a file, a folder or a Hub id)")
    if not NAME.fullmatch(name):
        raise EmbeddingError(text, f"embedding name {name!r} must be one word: letters, digits, '_', '-' or '.', "
                                   "starting with a letter or digit")
    return name, source


def parse_embedding_list(text: str) -> list[tuple[str, str]]:
    """``NAME=PATH,NAME=PATH`` (the app's environment variable) -> [(name, path), ...]."""
    return [parse_embedding(item) for item in text.split(",") if item.strip()]


def resolve_file(source: str) -> Path:
    """The embedding file ``source`` names: the file, the one embedding file in a folder, or a Hub id's
    ``learned_embeds.safetensors`` (offline: only when already in the cache)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES)
        if len(files) != 1:
            raise EmbeddingError(source, f"embedding folder {source!r} holds {len(files)} embedding files "
                                         f"({', '.join(FILE_SUFFIXES)}); name one file")
        return files[0].resolve()
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise EmbeddingError(source, f"embedding {source!r}: no such file or folder (a Hub id looks like owner/name)")
    from negprompt.loading import _check_downloaded

    try:
        _check_downloaded("embedding", source, HUB_FILE)
    except InputError as error:
        raise EmbeddingError(source, str(error)) from None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, HUB_FILE))
    except Exception as error:  # the Hub client raises several unrelated types for "not there"
        raise EmbeddingError(source, f"embedding {source!r} is not a file or folder here and has no {HUB_FILE} on "
                                     f"the Hub: {error}") from None


def read_vectors(path: Path) -> dict[str, torch.Tensor]:
    """The vectors of an embedding file, per encoder: {"clip_l": (n, dim)} or, for SDXL, also "clip_g"."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise EmbeddingError(str(path), f"embedding {str(path)!r} is not a readable embedding file: {error}") from None
    if not isinstance(data, dict):
        raise EmbeddingError(str(path), f"embedding {str(path)!r} holds a {type(data).__name__}, not named tensors")
    if "clip_l" in data and "clip_g" in data:
        vectors = {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    elif "string_to_param" in data:  # A1111's .pt
        vectors = {"clip_l": data["string_to_param"]["*"]}
    elif "emb_params" in data:  # A1111's .safetensors
        vectors = {"clip_l": data["emb_params"]}
    elif len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor):  # diffusers' learned_embeds
        vectors = {"clip_l": next(iter(data.values()))}
    else:
        raise EmbeddingError(str(path), f"embedding {str(path)!r} has keys {sorted(data)[:6]}; expected A1111's "
                                        "string_to_param or emb_params, one tensor, or SDXL's clip_l and clip_g")
    out = {}
    for key, tensor in vectors.items():
        tensor = tensor.detach().float()
        out[key] = tensor.reshape(1, -1) if tensor.ndim == 1 else tensor.reshape(-1, tensor.shape[-1])
    return out


def _encoders(pipe) -> dict[str, tuple]:
    """Encoder key -> (text encoder, tokenizer) of a pipeline."""
    out = {"clip_l": (pipe.text_encoder, pipe.tokenizer)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        out["clip_g"] = (pipe.text_encoder_2, pipe.tokenizer_2)
    return out


def install(pipe, name: str, source: str) -> Embedding:
    """Load the embedding ``source`` into ``pipe`` under ``name`` (and its X-ray tokens); at load time only."""
    path = resolve_file(source)
    vectors = read_vectors(path)
    encoders = _encoders(pipe)
    if set(vectors) != set(encoders):
        kind = "an SDXL (two-encoder)" if "clip_g" in vectors else "a one-encoder (SD 1.x/2.x)"
        model = "an SDXL model (two text encoders)" if "clip_g" in encoders else "a one-encoder model"
        raise EmbeddingError(source, f"embedding {name}={source!r} is {kind} embedding; this is {model}")
    counts = {len(v) for v in vectors.values()}
    if len(counts) != 1:
        raise EmbeddingError(source, f"embedding {name}={source!r} has a different number of vectors per encoder")
    for key, (encoder, tokenizer) in encoders.items():
        dim = encoder.get_input_embeddings().weight.shape[1]
        if vectors[key].shape[1] != dim:
            raise EmbeddingError(source, f"embedding {name}={source!r} has {vectors[key].shape[1]}-wide vectors for "
                                         f"{key}; this model's text encoder takes {dim}")
        if name in tokenizer.get_vocab() or name in tokenizer.added_tokens_encoder:
            raise EmbeddingError(source, f"embedding name {name!r} is already a word of this model's vocabulary "
                                         "or another embedding's name; choose another name")
    n = counts.pop()
    for key, (encoder, tokenizer) in encoders.items():
        tensor = vectors[key].to(encoder.dtype)
        pipe.load_textual_inversion(tensor, token=name, text_encoder=encoder, tokenizer=tokenizer)
        pipe.load_textual_inversion(list(tensor), token=list(xray_tokens(name, n)), text_encoder=encoder,
                                    tokenizer=tokenizer)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Embedding(name=name, source=str(path), sha256=digest, vectors=n, encoders=tuple(encoders))


def vector_count(source: str) -> int:
    """How many vectors the embedding file, folder or Hub id ``source`` holds (reads the file, loads no model)."""
    return len(next(iter(read_vectors(resolve_file(str(source))).values())))


def canonical_text(text: str, names) -> str:
    """``text`` with every embedding name written as loaded (lower case), so that diffusers' multi-vector expansion
    (which compares the text as written) finds it whatever case the prompt used."""
    for name in names:
        text = re.sub(re.escape(name), name, text, flags=re.IGNORECASE)
    return text


@torch.no_grad()
def nearest_words(pipe, name: str, vectors: int, k: int = 5) -> list[list[tuple[str, float]]]:
    """Per vector of the loaded embedding ``name`` (of ``vectors`` vectors), the ``k`` vocabulary words (of the first
    text encoder) with the highest cosine similarity, with that similarity. Candidates are the vocabulary's words:
    tokens of two or more letters (not byte pieces, punctuation, special tokens or embeddings)."""
    encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
    table = encoder.get_input_embeddings().weight.float()
    added = set(tokenizer.added_tokens_encoder.values())
    vocabulary = tokenizer.get_vocab()
    words = sorted(i for t, i in vocabulary.items() if i < table.shape[0] and i not in added
                   and len(t.replace("</w>", "")) > 1 and t.replace("</w>", "").isalpha())
    ids = tokenizer.convert_tokens_to_ids(list(xray_tokens(name, vectors)))
    candidates = torch.nn.functional.normalize(table[words], dim=1)
    out = []
    for i in ids:
        similarity = candidates @ torch.nn.functional.normalize(table[i], dim=0)
        top = similarity.topk(min(k, len(words)))
        out.append([(tokenizer.convert_ids_to_tokens(words[j]).replace("</w>", ""), round(float(s), 4))
                    for s, j in zip(top.values, top.indices.tolist())])
    return out


def multi_vector_names(tokenizer) -> list[str]:
    """The names of the multi-vector embeddings loaded into ``tokenizer`` (those diffusers expands)."""
    added = tokenizer.added_tokens_encoder
    return [t for t in added if f"{t}_1" in added]


def prompt_text(pipe, text: str | None, expand: bool = False) -> str | None:
    """``text`` ready for the pipeline's ``encode_prompt``: embedding names in the case they were loaded in
    (``canonical_text``); with ``expand``, also written out as the tokens the encoder reads (``name name_1 ...``)."""
    if not text:
        return text
    tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
    text = canonical_text(text, multi_vector_names(tokenizer))
    return pipe.maybe_convert_prompt(text, tokenizer) if expand and hasattr(pipe, "maybe_convert_prompt") else text


def xray_spec(prompt: str, name: str, vectors: int, seeds, *, model: str, **settings):
    """The vectors of the embedding ``name`` one by one: per row, the baseline, the whole embedding as the
    negative, then one cell per vector (its X-ray token alone as the negative), all compared against the row's
    baseline."""
    from dataclasses import replace

    from negprompt.plan import negatives_spec

    tokens = xray_tokens(name, vectors)
    spec = negatives_spec(prompt, [name, *tokens], seeds, model=model, **settings)
    labels = {t: f"vector {i} of {vectors} ({t})" for i, t in enumerate(tokens, 1)}
    labels[name] = f"{name} (all {vectors} vectors)"
    cells = tuple(replace(c, label=labels[c.negative], kind="xray", term=name)
                  if c.negative in labels else c for c in spec.cells)
    return replace(spec, cells=cells, mode="xray")


def find(loaded_embeddings, name: str) -> Embedding:
    """The loaded embedding called ``name`` (any case), else ``EmbeddingError`` listing the loaded ones."""
    for embedding in loaded_embeddings:
        if embedding.name == name.strip().lower():
            return embedding
    names = ", ".join(e.name for e in loaded_embeddings) or "none"
    raise EmbeddingError(name, f"--xray {name!r}: no embedding of that name is loaded (loaded: {names}); load it "
                               "with --embedding NAME=PATH")


def xray_findings(pipe, name: str, vectors: int, k: int = 5) -> dict:
    """What the manifest records of an X-ray: per vector its X-ray token and nearest vocabulary words."""
    return {"embedding": name, "vectors": [
        {"vector": i, "token": token, "nearest_words": [{"word": w, "cosine": c} for w, c in words]}
        for i, (token, words) in enumerate(zip(xray_tokens(name, vectors), nearest_words(pipe, name, vectors, k)), 1)]}


def xray_lines(findings: dict) -> list[str]:
    """The command line's report of an X-ray: one line per vector with its nearest words."""
    lines = ["", f"embedding '{findings['embedding']}', vector by vector (nearest vocabulary words, cosine):"]
    for v in findings["vectors"]:
        words = ", ".join(f"{w['word']} {w['cosine']:.2f}" for w in v["nearest_words"])
        lines.append(f"  vector {v['vector']} ({v['token']}): {words}")
    return lines
