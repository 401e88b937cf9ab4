"""Encode prompts under the a1111 reading: 75-token chunks, per-token weights, the chunks concatenated.

    from negprompt.weighting import encode_a1111
    embeds, pooled = encode_a1111(pipe, ["(worst quality:1.4), blurry", ""])
    embeds["(worst quality:1.4), blurry"].shape   # (1, 77 * chunks, dim); pooled is None except for SDXL

Each text is cut into chunks (``negprompt.reading.chunks``); every text of one call is padded with empty chunks to
the largest number of chunks among them (as the web UI pads the prompts of one batch, and a negative to its
positive), so all of them can share one UNet batch. Every chunk goes through the pipeline's own text encoder(s)
the way diffusers' ``encode_prompt`` calls them (SD 1.x/2.x: the last hidden state; SDXL: both encoders' second to
last hidden states, concatenated), then its token outputs are multiplied by their weights and the chunk is scaled
back to its unweighted mean ("Original" emphasis in the web UI; diffusers' ``lpw_stable_diffusion`` community
pipeline computes the same). SDXL's pooled embedding comes from the first chunk, unweighted.
"""

from __future__ import annotations

import torch

from negprompt.reading import Chunk, chunks, empty_chunk


def apply_weights(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``z`` (chunks, 77, dim) with each token's output multiplied by its weight (chunks, 77), then every chunk
    scaled back to its mean before weighting. A chunk whose weights are all 1 is returned unchanged; one whose
    mean is zero or changes sign (an encoder with centred outputs, as in tiny test models) is not rescaled."""
    if bool((weights == 1).all()):
        return z
    before = z.float().mean(dim=(1, 2), keepdim=True)
    weighted = z.float() * weights.to(z.device, torch.float32).unsqueeze(-1)
    after = weighted.mean(dim=(1, 2), keepdim=True)
    ratio = before / after
    ratio = torch.where(torch.isfinite(ratio) & (ratio > 0), ratio, torch.ones_like(ratio))
    return (weighted * ratio).to(z.dtype)


def _encoders(pipe) -> list[tuple]:
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]


@torch.no_grad()
def encode_a1111(pipe, texts: list[str], rewrite=None) -> tuple[dict, dict | None]:
    """text -> embeddings (1, 77 * chunks, dim), and for SDXL text -> pooled embeddings (1, dim). ``rewrite``
    changes each text before it is read (the engine writes loaded embedding names in the case they were loaded
    in); each weighted piece goes through the pipeline's ``maybe_convert_prompt``, which writes a multi-vector
    textual-inversion name out as its tokens."""
    device = pipe._execution_device
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    convert = getattr(pipe, "maybe_convert_prompt", None)
    read = [rewrite(text) if rewrite is not None else text for text in texts]
    per_encoder = [[chunks(tokenizer, text, convert) for text in read] for tokenizer, _ in _encoders(pipe)]
    count = max(len(c) for read in per_encoder for c in read)
    outputs, pooled = [], None
    for (tokenizer, encoder), read in zip(_encoders(pipe), per_encoder):
        padded: list[Chunk] = [c for text_chunks in read
                               for c in text_chunks + [empty_chunk(tokenizer)] * (count - len(text_chunks))]
        ids = torch.tensor([c.ids for c in padded], device=device)
        weights = torch.tensor([c.weights for c in padded])
        if sdxl:
            out = encoder(ids, output_hidden_states=True)
            if out[0].ndim == 2:  # the encoder with a projection gives SDXL's pooled embedding
                pooled = out[0].view(len(texts), count, -1)[:, 0]
            z = out.hidden_states[-2]
        else:
            mask = None
            if getattr(encoder.config, "use_attention_mask", False):  # up to each chunk's end token
                ends = (ids == tokenizer.eos_token_id).int().argmax(dim=1, keepdim=True)
                mask = (torch.arange(ids.shape[1], device=device) <= ends).long()
            z = encoder(ids, attention_mask=mask)[0]
        z = apply_weights(z, weights)
        outputs.append(z.reshape(len(texts), count * z.shape[1], z.shape[2]))
    dtype = _encoders(pipe)[-1][1].dtype
    embeds = torch.cat(outputs, dim=-1).to(dtype=dtype, device=device)
    table = dict(zip(texts, embeds.split(1)))
    if not sdxl:
        return table, None
    return table, dict(zip(texts, pooled.to(dtype=dtype, device=device).split(1)))
