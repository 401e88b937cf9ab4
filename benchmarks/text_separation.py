"""How far naming each attribute moves the text encoder's output: can the UNet tell the words apart at all?

For each attribute X it encodes "portrait photo of a man with a X" and "portrait photo of a man" with the model's own
text encoder and reports the distance between the two 77-token outputs (the sum over positions of the L2 norm of
the difference), and the norm of X's token embedding. A word whose output barely differs from the plain prompt's
gives the UNet nothing to bind, whatever it learns; a word whose token embedding has a function word's norm was
treated as carrying no information during training.

    python benchmarks/text_separation.py                       # the shipped model
    python benchmarks/text_separation.py --model runs/portrait/model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from negprompt.portrait_model.portraits import BINARY

ROOT = Path(__file__).resolve().parent.parent
PLAIN = "portrait photo of a man"
FUNCTION_WORDS = ("a", "with", "man")


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description="Distance a word moves the text encoder's output, per attribute.")
    parser.add_argument("--model", default=str(ROOT / "assets" / "portrait-model"), help="diffusers folder")
    args = parser.parse_args()
    tokenizer = CLIPTokenizer.from_pretrained(Path(args.model) / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(Path(args.model) / "text_encoder").eval()

    def encode(text: str) -> torch.Tensor:
        ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return encoder(ids)[0][0]

    embeddings = encoder.get_input_embeddings().weight

    def norm(word: str) -> float:
        return float(embeddings[tokenizer.convert_tokens_to_ids(word + "</w>")].norm())

    plain = encode(PLAIN)
    result = {name: {"output_distance": float((encode(f"{PLAIN} with a {name}") - plain).norm(dim=-1).sum()),
                     "embedding_norm": norm(name)} for name in BINARY}
    result["function words"] = {"embedding_norm": sum(map(norm, FUNCTION_WORDS)) / len(FUNCTION_WORDS)}
    print(f'| word | output distance from "{PLAIN}" | token embedding norm |\n| --- | --- | --- |')
    for name, row in result.items():
        distance = f"{row['output_distance']:.1f}" if "output_distance" in row else "-"
        print(f"| {name} | {distance} | {row['embedding_norm']:.2f} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
