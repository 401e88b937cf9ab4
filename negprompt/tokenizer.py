"""Build a CLIP tokenizer from a word list, offline.

Stable Diffusion pipelines expect a ``CLIPTokenizer`` (byte-level BPE with ``</w>`` word endings, 77 tokens).
Nothing can be downloaded here, so the embedded model and the test pipelines build their own: a byte-level BPE
trained with the ``tokenizers`` library on the words they use, laid out like OpenAI's CLIP vocabulary (256 byte
symbols, the same 256 with ``</w>``, the learned merges, then ``<|startoftext|>`` and ``<|endoftext|>``). Every word
of the list becomes exactly one token; any other text still tokenizes, byte by byte.

    from negprompt.tokenizer import build_clip_tokenizer
    tok = build_clip_tokenizer(["portrait", "photo", "of", "a", "man"])
    tok.save_pretrained("my-model/tokenizer")
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def _byte_alphabet() -> list[str]:
    return sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda s: s.encode("utf-8"))


def build_clip_tokenizer(words: Iterable[str], *, model_max_length: int = 77) -> CLIPTokenizer:
    """Return a ``CLIPTokenizer`` in which every word of ``words`` (lower-cased) is a single token."""
    pieces = sorted({p for w in words for p in _WORD.findall(w.lower())})
    alphabet = _byte_alphabet()
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, min_frequency=1, show_progress=False,
        initial_alphabet=alphabet, end_of_word_suffix="</w>",
    )
    bpe.train_from_iterator(pieces, trainer=trainer)
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in _merges_of(bpe)]
    vocab: dict[str, int] = {}
    for symbol in alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]:
        vocab.setdefault(symbol, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tokenizer.model_max_length = model_max_length
    return tokenizer


def _merges_of(bpe: Tokenizer) -> list:
    import json

    return json.loads(bpe.to_str())["model"]["merges"]


def build_t5_tokenizer(words: Iterable[str], *, model_max_length: int = 512):
    """Return a ``T5TokenizerFast`` (SentencePiece-style unigram, ``</s>`` appended, ``<pad>`` 0) in which every
    word of ``words`` (lower-cased) is a single token; any other text still tokenizes, letter by letter. For the
    T5 text encoders of SD3 and FLUX pipelines built here."""
    import string

    from transformers import T5TokenizerFast

    pieces = sorted({p for w in words for p in _WORD.findall(w.lower())})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + p, -1.0) for p in pieces]
    vocab += [("\u2581", -5.0)] + [(c, -10.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
