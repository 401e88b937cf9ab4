"""Choose the app's built-in examples from what the shipped embedded model does, measured by the attribute detector.

    python scripts/choose_examples.py                  # writes negprompt/app/examples.json
    python scripts/choose_examples.py --seeds 32       # scan more seeds

An example is a positive prompt, the negative prompts it teaches and, for the seed article's lesson, another positive
prompt ("... without X"). Each negative names an attribute the detector reads. On the embedded model, at the app's
default settings, the script runs every candidate over seeds 0..N-1 and keeps an example only when

- the lesson holds in general: among the seeds whose baseline shows the attribute, the negative prompt removes it in
  at least ``--min-rate`` of them (so a word the model never bound, whose "removals" are chance, is left out), and
  for an article example "... without X" keeps or adds X at least as often;
- a seed shows it: the baseline shows every named attribute, each negative removes its own, and "... without X"
  shows X. The first such seed is the example's seed.

Examples whose lesson the model cannot show are left out with the reason printed, never offered with a false label.
Run it again whenever the embedded model changes; ``tests/test_examples.py`` checks every offered example.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "negprompt" / "app" / "examples.json"
PROMPT = "portrait photo of a man"
CHUNK = 8  # seeds per engine call

# (label, negatives, another positive prompt): each negative is also the detector attribute it should remove.
CANDIDATES = [
    ("Seed article: negative 'mustache' vs. '... without mustache'", ["mustache"], f"{PROMPT} without mustache"),
    ("Seed article with hats: negative 'hat' vs. '... without hat'", ["hat"], f"{PROMPT} without hat"),
    ("Negative 'glasses' vs. '... without glasses'", ["glasses"], f"{PROMPT} without glasses"),
    ("Remove the glasses, or the hat", ["glasses", "hat"], ""),
    ("Remove the beard", ["beard"], ""),
    ("Stop the smile", ["smile"], ""),
    ("Remove the earrings, or the scarf", ["earrings", "scarf"], ""),
]


def present(record: dict, attribute: str) -> bool:
    return record[attribute] >= 0.5


def scan(pipe, detector, negatives: list[str], others: list[str], seeds: list[int], steps: int,
         guidance: float) -> tuple[dict, dict]:
    """Detector records per seed: {negative or "": [record per seed]} and {other prompt: [record per seed]}."""
    from negprompt.engine import compare
    from negprompt.portrait_model.detector import detect

    width = len(negatives) + 1
    by_negative: dict[str, list] = {name: [] for name in ["", *negatives]}
    by_other: dict[str, list] = {other: [] for other in others}
    for start in range(0, len(seeds), CHUNK):
        chunk = seeds[start:start + CHUNK]
        result = compare(pipe, PROMPT, negatives, seeds=chunk, steps=steps, guidance_scale=guidance,
                         max_cells=len(chunk) * width)
        records = detect([c.image for c in result.cells], detector)
        for i, name in enumerate(["", *negatives]):
            by_negative[name] += [records[r * width + i] for r in range(len(chunk))]
        for other in others:
            result = compare(pipe, other, [], seeds=chunk, steps=steps, guidance_scale=guidance, max_cells=len(chunk))
            by_other[other] += detect([c.image for c in result.cells], detector)
        print(f"scanned seeds {chunk[0]}-{chunk[-1]}", flush=True)
    return by_negative, by_other


def judge(label, negatives, other, seeds, by_negative, by_other, min_rate) -> tuple[dict | None, str]:
    """The example with its seed, or None and the reason."""
    baseline = by_negative[""]
    rates = {}
    for attribute in negatives:
        had = [i for i in range(len(seeds)) if present(baseline[i], attribute)]
        if len(had) < 2:
            return None, f"the baseline shows {attribute!r} on {len(had)} of {len(seeds)} seeds"
        removed = sum(not present(by_negative[attribute][i], attribute) for i in had) / len(had)
        rates[attribute] = round(removed, 3)
        if removed < min_rate:
            return None, (f"the negative {attribute!r} removes it on {removed:.0%} of the {len(had)} seeds that "
                          f"show it (at least {min_rate:.0%} needed): the model has not bound the word")
    if other:
        attribute = negatives[0]
        base_rate = sum(present(r, attribute) for r in baseline) / len(seeds)
        other_rate = sum(present(r, attribute) for r in by_other[other]) / len(seeds)
        rates[f"{attribute} with '{other}'"] = round(other_rate, 3)
        if other_rate < base_rate:
            return None, f"'{other}' shows {attribute!r} less often ({other_rate:.0%}) than the baseline"
    for i, seed in enumerate(seeds):
        shown = all(present(baseline[i], a) for a in negatives)
        removed = all(not present(by_negative[a][i], a) for a in negatives)
        kept = not other or present(by_other[other][i], negatives[0])
        if shown and removed and kept:
            example = {"label": label, "prompt": PROMPT, "negatives": negatives, "other": other, "seed": seed,
                       "rates": rates}
            return example, f"seed {seed}"
    return None, "no scanned seed shows the whole lesson at once"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16, help="seeds 0..N-1 to scan")
    parser.add_argument("--min-rate", type=float, default=0.7,
                        help="share of the seeds showing an attribute on which its negative must remove it")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON file the app reads")
    args = parser.parse_args()

    from negprompt.app.settings import AppSettings
    from negprompt.loading import load_pipeline
    from negprompt.portrait_model.detector import load_detector

    settings = AppSettings()
    steps, guidance = settings.default_steps, 7.5  # the app's defaults: an example runs as the form sets it
    pipe, detector = load_pipeline(device="cpu"), load_detector()
    seeds = list(range(args.seeds))
    negatives = list(dict.fromkeys(n for _, names, _ in CANDIDATES for n in names))
    others = [other for _, _, other in CANDIDATES if other]
    by_negative, by_other = scan(pipe, detector, negatives, others, seeds, steps, guidance)

    chosen = []
    for label, names, other in CANDIDATES:
        example, reason = judge(label, names, other, seeds, by_negative, by_other, args.min_rate)
        print(f"{'offered' if example else 'left out'}: {label}: {reason}")
        if example:
            chosen.append(example)
    if args.out.is_file():  # examples chosen elsewhere (e.g. the negative embedding's, by its benchmark) stay
        chosen += [e for e in json.loads(args.out.read_text())["examples"] if e.get("chosen_by")]
    data = {"model": "negprompt-portraits", "steps": steps, "guidance_scale": guidance, "scheduler": "Default",
            "seeds_scanned": args.seeds, "min_rate": args.min_rate, "examples": chosen}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(chosen)} examples to {args.out}")


if __name__ == "__main__":
    main()
