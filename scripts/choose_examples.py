"""Choose the app's built-in examples from what the shipped embedded model does, measured by the attribute detector.

    python scripts/choose_examples.py                      # scan seeds 0-511, write negprompt/app/examples.json
    python scripts/choose_examples.py --seeds 1024         # scan more seeds (the cache keeps what was made)
    python scripts/choose_examples.py --scan-only          # make (and cache) the images and say what it would choose

Flags: ``--seeds N`` scans the baselines of seeds 0..N-1; ``--most K`` (default 48) runs a one-row example's
negatives on at most the first K seeds whose baseline shows its attributes (an article example runs on every such
seed and the seeds next to its clean removals, 256 seeds at a time, until it finds its rows); ``--cache DIR``
keeps every image it makes, one PNG strip per seed and comparison, named by the hash of the model's weights and
the comparison, so a rerun (or a stopped run) reuses them (default ``runs/choose-examples``); ``--out FILE`` the
JSON the app reads; ``--threads N`` torch CPU threads (default 1: the scan is many small batches; on a shared CPU
more threads wait on each other); ``--scan-only`` makes the images and prints the choice, writing nothing;
``--min-rate`` the share of the seeds showing an attribute on which its negative must remove it (decisions at
0.5), so that a word the model never bound is left out.

An example is a positive prompt, the negative prompts it teaches and, for the seed article's lesson, another positive
prompt ("... without X"), run as the app runs it when the example is picked: the app's default steps, guidance 7.5,
the model's sampler, seeds ``seed`` to ``seed + rows - 1`` as rows. Each negative names an attribute the detector
reads. Every seed the script considers passes the same checks ``tests/test_examples.py`` makes
(``removal_row_faults`` and ``unchanged_row_faults`` of ``negprompt.portrait_model.detector``):

- the lesson: the baseline is a clean portrait showing the attribute (probability at least ``SURE``), and the
  negative named after it leaves it out (at most ``1 - SURE``);
- little collateral: outside the region where ``portraits.draw_portrait`` can draw that attribute, the cell's mean
  change from the baseline is at most ``MAX_OUTSIDE`` percent and no 8x8 patch changes more than ``MAX_PATCH``; the
  detector reads every other attribute the same; the background, skin and hair colours read the same.

Among the seeds that pass, a one-row example takes the one whose removal is the most visible (the largest mean
change inside the attribute's region: a smile that fades by a few pixels teaches nothing); the README's commands
take the seeds with the least change outside it. A seed article
example ("... without X") needs several rows, because one seed cannot show "more X": its rows are consecutive seeds
on which the plain prompt draws X on fewer rows than "... without X" does, the negative leaves X on none, and the
negative removes X, with little collateral, on at least one row (on the rows whose baseline has no X, the negative
must keep the image: the same collateral bounds). The label says exactly what the rows show, with the counts.

Examples whose lesson the model cannot show on the scanned seeds are left out with the reason printed, never offered
with a false label. Run it again whenever the embedded model changes; ``tests/test_examples.py`` checks every
offered example with the same measures and bounds. The script also prints, per attribute, the seeds where the plain
negative removes it cleanly: the README's commands use such seeds (``tests/test_readme_commands.py`` checks them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's negprompt, whatever is installed

OUT = ROOT / "negprompt" / "app" / "examples.json"
CACHE = ROOT / "runs" / "choose-examples"
PROMPT = "portrait photo of a man"
GUIDANCE = 7.5  # the app's default guidance scale
CHUNK = 8  # seeds per engine call
MAX_ROWS = 4  # rows an article example may use (the app's default cap on seeds)
ARTICLE_BLOCK = 256  # seeds an article example tries at a time
NEIGHBOURS = 2  # seeds on each side of a clean removal tried as further rows of an article example

# (label stem, negatives, another positive prompt): each negative is also the detector attribute it removes.
CANDIDATES = [
    ("Seed article", ["mustache"], f"{PROMPT} without mustache"),
    ("Seed article with hats", ["hat"], f"{PROMPT} without hat"),
    ("Remove the beard", ["beard"], ""),
    ("Remove the glasses, or the hat", ["glasses", "hat"], ""),
    ("Remove the earrings, or the scarf", ["earrings", "scarf"], ""),
    ("Stop the smile", ["smile"], ""),
]


class Rows:
    """The images of example rows on the embedded model, made in batches of seeds and cached one seed at a time."""

    def __init__(self, pipe, cache: Path, steps: int, guidance: float):
        from negprompt.loading import EMBEDDED_MODEL

        self.pipe, self.cache, self.steps, self.guidance = pipe, cache, steps, guidance
        digest = hashlib.sha256()
        for weights in sorted(EMBEDDED_MODEL.rglob("*.safetensors")):
            digest.update(weights.read_bytes())
        self.model = digest.hexdigest()
        cache.mkdir(parents=True, exist_ok=True)

    def spec(self, negatives: list[str], other: str, seeds: list[int]):
        """The comparison the app runs for an example with these seeds as rows."""
        from negprompt.loading import EMBEDDED_NAME
        from negprompt.plan import negatives_spec

        return negatives_spec(PROMPT, negatives, seeds, model=EMBEDDED_NAME, steps=self.steps,
                              guidance_scale=self.guidance, other_positive=other or None)

    def _file(self, negatives: list[str], other: str, seed: int) -> Path:
        key = hashlib.sha256((self.model + self.spec(negatives, other, [seed]).to_json()).encode()).hexdigest()
        return self.cache / f"{key[:20]}.png"

    def get(self, negatives: list[str], other: str, seeds: list[int]) -> dict[int, list]:
        """{seed: [baseline, one image per negative, the other prompt's image if any]}."""
        from PIL import Image

        from negprompt.engine import compare

        width = 1 + len(negatives) + bool(other)
        missing = [s for s in dict.fromkeys(seeds) if not self._file(negatives, other, s).is_file()]
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start:start + CHUNK]
            result = compare(self.pipe, self.spec(negatives, other, chunk))
            for row, seed in enumerate(chunk):
                images = [c.image for c in result.cells[row * width:(row + 1) * width]]
                strip = Image.new("RGB", (64 * width, 64))
                for k, image in enumerate(images):
                    strip.paste(image, (64 * k, 0))
                strip.save(self._file(negatives, other, seed))
            print(f"  made {'+'.join(negatives) or 'baseline'}{' / ' + other if other else ''}: seeds "
                  f"{chunk[0]}..{chunk[-1]} ({start + len(chunk)}/{len(missing)})", flush=True)
        out = {}
        for seed in seeds:
            strip = Image.open(self._file(negatives, other, seed)).convert("RGB")
            out[seed] = [strip.crop((64 * k, 0, 64 * k + 64, 64)) for k in range(width)]
        return out


def read(rows: dict[int, list], detector) -> dict[int, list[dict]]:
    """The detector's records of every image, per seed."""
    from negprompt.portrait_model.detector import detect

    seeds = list(rows)
    flat = detect([image for seed in seeds for image in rows[seed]], detector) if seeds else []
    width = len(rows[seeds[0]]) if seeds else 0
    return {seed: flat[i * width:(i + 1) * width] for i, seed in enumerate(seeds)}


def choose_single(rows: Rows, detector, label: str, negatives: list[str], seeds: list[int],
                  baselines: dict[int, list[dict]], min_rate: float, most: int) -> tuple[dict | None, str, dict]:
    """A one-row example: the seed whose baseline shows every attribute and whose negatives each remove their own
    with the least collateral. Also returns {seed: worst change outside} of every clean seed."""
    from negprompt.portrait_model.detector import removal_row_faults

    showing = [s for s in seeds if all(baselines[s][0][a] >= 0.5 for a in negatives)][:most]
    if not showing:
        return None, "no scanned baseline shows " + " and ".join(negatives), {}
    made = rows.get(negatives, "", showing)
    records = read(made, detector)
    for i, attribute in enumerate(negatives, start=1):  # the lesson in general, not only on the chosen seed
        had = [s for s in showing if baselines[s][0][attribute] >= 0.5]
        if len(had) >= 2 and len(negatives) == 1:
            rate = sum(records[s][i][attribute] < 0.5 for s in had) / len(had)
            if rate < min_rate:
                return None, (f"the negative {attribute!r} removes it on {rate:.0%} of the {len(had)} seeds that "
                              f"show it (at least {min_rate:.0%} needed): the model has not bound the word"), {}
    clean, reasons = {}, {}
    for seed in showing:
        faults, worst = removal_row_faults(made[seed], records[seed], negatives)
        if faults:
            reasons[seed] = faults
        else:
            clean[seed] = worst
    if not clean:
        near = min(reasons, key=lambda s: len(reasons[s]))
        return None, f"no seed of {len(showing)} passes; seed {near}: {'; '.join(reasons[near])}", {}
    seed = max(clean, key=lambda s: visible(made[s], negatives))
    measured = describe(made[seed], records[seed], negatives)
    example = {"label": f"{label} (seed {seed})", "title": f"{label} (seed {seed})", "prompt": PROMPT,
               "negatives": negatives, "other": "",
               "seed": seed, "rows": 1, "measured": measured}
    return example, f"seed {seed} of {len(clean)} clean of {len(showing)} showing it", clean


def visible(images: list, negatives: list[str]) -> float:
    """How visible a row's removals are: the smallest mean change inside an attribute's region among its negative
    cells (percent)."""
    from negprompt.portrait_model.detector import collateral

    return min(collateral(images[i], images[0], attribute)["inside"] for i, attribute in enumerate(negatives, 1))


def describe(images: list, records: list[dict], negatives: list[str]) -> list[dict]:
    """Per negative cell: the attribute's probability on the baseline and on the cell, and its collateral numbers."""
    from negprompt.portrait_model.detector import collateral

    out = []
    for i, attribute in enumerate(negatives, start=1):
        measured = collateral(images[i], images[0], attribute, records[i], records[0])
        out.append({"negative": attribute, "baseline": records[0][attribute], "cell": records[i][attribute],
                    **{k: (list(v) if isinstance(v, tuple) else v) for k, v in measured.items()}})
    return out


def choose_article(rows: Rows, detector, label: str, attribute: str, other: str, seeds: list[int],
                   baselines: dict[int, list[dict]], min_rate: float) -> tuple[dict | None, str, dict]:
    """Several consecutive seeds as rows: "... without X" draws X on more rows than the plain prompt, the negative
    on none, removing it cleanly on at least one row and keeping the image on the rows without X. Tries the seeds
    in blocks of ARTICLE_BLOCK (each block's rows are made only when the blocks before hold no such run)."""
    for limit in range(ARTICLE_BLOCK, len(seeds) + ARTICLE_BLOCK, ARTICLE_BLOCK):
        example, reason, removing = _article(rows, detector, label, attribute, other, seeds[:limit], baselines,
                                             min_rate)
        if example:
            break
    return example, reason, removing


def _article(rows: Rows, detector, label: str, attribute: str, other: str, seeds: list[int],
             baselines: dict[int, list[dict]], min_rate: float) -> tuple[dict | None, str, dict]:
    from negprompt.portrait_model.detector import removal_row_faults, unchanged_row_faults

    showing = [s for s in seeds if baselines[s][0][attribute] >= 0.5]
    if len(showing) < 2:
        return None, f"the baseline shows {attribute!r} on {len(showing)} of {len(seeds)} seeds", {}
    made = rows.get([attribute], other, showing)
    records = read(made, detector)
    rate = sum(records[s][1][attribute] < 0.5 for s in showing) / len(showing)
    if rate < min_rate:
        return None, f"the negative {attribute!r} removes it on {rate:.0%} of the seeds that show it", {}
    removing = _lesson_rows(made, records, showing, attribute,
                            lambda images, found: removal_row_faults(images, found, [attribute]))
    if not removing:
        return None, f"no seed of {len(showing)} removes {attribute!r} cleanly while '{other}' keeps it", {}
    near = sorted({n for s in removing for n in range(s - NEIGHBOURS, s + NEIGHBOURS + 1)
                   if 0 <= n < len(seeds) and n not in showing})
    made.update(rows.get([attribute], other, near))
    records.update(read({n: made[n] for n in near}, detector))
    adding = _lesson_rows(made, records, near, attribute,
                          lambda images, found: unchanged_row_faults(images, found, attribute))
    runs = _neighbour_runs(removing, adding)
    if not runs:
        return None, (f"{len(removing)} seeds remove {attribute!r} cleanly and {len(adding)} rows without it gain it "
                      f"from '{other}', but none stand next to each other"), removing
    _, _, start, k = min(runs)
    example = _article_example(made, records, label, attribute, other, start, k)
    return example, f"seeds {start}-{start + k - 1} ({len(runs)} runs possible)", removing


def _lesson_rows(made: dict, records: dict, seeds: list[int], attribute: str, faults_of) -> dict[int, float]:
    """{seed: worst change outside} of the ``seeds`` whose baseline and negative cell pass ``faults_of`` (the
    removal or the unchanged lesson) and whose other prompt shows ``attribute`` surely."""
    from negprompt.portrait_model.detector import SURE

    out = {}
    for seed in seeds:
        faults, worst = faults_of(made[seed][:2], records[seed][:2])
        if not faults and records[seed][2][attribute] >= SURE:
            out[seed] = worst
    return out


def _neighbour_runs(removing: dict[int, float], adding: dict[int, float]) -> list[tuple]:
    """Runs of 2 to MAX_ROWS neighbouring usable seeds holding at least one of each kind, as (distance from 3 rows,
    worst change outside, first seed, length): the best run is the smallest."""
    usable = {**removing, **adding}
    runs = []
    for start in sorted(usable):
        for k in range(2, MAX_ROWS + 1):
            window = list(range(start, start + k))
            if not all(s in usable for s in window):
                break
            if any(s in removing for s in window) and any(s in adding for s in window):
                runs.append((abs(k - 3), max(usable[s] for s in window), start, k))
    return runs


def _article_example(made: dict, records: dict, label: str, attribute: str, other: str, start: int,
                     k: int) -> dict:
    """The example of ``k`` rows from seed ``start``, its label counting what each prompt drew."""
    window = list(range(start, start + k))
    plain = sum(records[s][0][attribute] >= 0.5 for s in window)
    negative = sum(records[s][1][attribute] >= 0.5 for s in window)
    without = sum(records[s][2][attribute] >= 0.5 for s in window)
    text = (f"{label}, seeds {start}-{start + k - 1}: '... without {attribute}' draws a {attribute} on {without} of "
            f"{k}, the plain prompt on {plain}, the negative '{attribute}' on {negative}")
    if attribute in ("glasses", "earrings"):
        text = text.replace(f"draws a {attribute}", f"draws {attribute}")
    measured = [{"seed": s, **describe(made[s][:2], records[s][:2], [attribute])[0],
                 "without": records[s][2][attribute]} for s in window]
    return {"label": text, "title": f"{label}, seeds {start}-{start + k - 1}", "prompt": PROMPT,
            "negatives": [attribute], "other": other, "seed": start, "rows": k, "measured": measured}


def label_of(example: dict) -> str:
    """The candidate label an example was chosen for (its title without the seeds)."""
    return example["title"].split(" (")[0].split(",")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=512, help="seeds 0..N-1 to scan")
    parser.add_argument("--min-rate", type=float, default=0.7,
                        help="share of the seeds showing an attribute on which its negative must remove it")
    parser.add_argument("--most", type=int, default=48,
                        help="per one-row example, try at most this many seeds whose baseline shows its attributes")
    parser.add_argument("--cache", type=Path, default=CACHE, help="folder keeping every image made")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON file the app reads")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--scan-only", action="store_true", help="make and cache the images, write nothing")
    parser.add_argument("--only", action="append", default=[],
                        help="choose only the example with this label (repeatable); the others stay as written")
    args = parser.parse_args()

    import torch

    from negprompt.app.settings import AppSettings
    from negprompt.loading import load_pipeline
    from negprompt.portrait_model.detector import load_detector

    torch.set_num_threads(args.threads)
    steps = AppSettings().default_steps  # the app's defaults: an example runs as the form sets it
    rows, detector = Rows(load_pipeline(device="cpu"), args.cache, steps, GUIDANCE), load_detector()
    seeds = list(range(args.seeds))
    baselines = read(rows.get([], "", seeds), detector)
    for attribute in dict.fromkeys(a for _, names, _ in CANDIDATES for a in names):
        count = sum(baselines[s][0][attribute] >= 0.5 for s in seeds)
        print(f"the baseline shows {attribute} on {count} of {len(seeds)} seeds")

    chosen, clean_seeds = [], {}
    for label, names, other in CANDIDATES:
        if args.only and label not in args.only:
            continue
        if other:
            example, reason, clean = choose_article(rows, detector, label, names[0], other, seeds, baselines,
                                                    args.min_rate)
        else:
            example, reason, clean = choose_single(rows, detector, label, names, seeds, baselines, args.min_rate,
                                                   args.most)
        if len(names) == 1:
            clean_seeds.setdefault(names[0], {}).update(clean)
        print(f"{'offered' if example else 'left out'}: {label}: {reason}", flush=True)
        if example:
            chosen.append(example)
    if args.scan_only:
        return
    for attribute, clean in clean_seeds.items():
        best = sorted(clean, key=clean.get)[:8]
        print(f"the negative '{attribute}' removes it cleanly on seeds (least change outside first): "
              + ", ".join(f"{s} ({clean[s]:.2f}%)" for s in best))
    if args.out.is_file():  # examples chosen elsewhere (e.g. the negative embedding's, by its benchmark) stay,
        new = {label_of(e): e for e in chosen}  # and with --only every other one, each in its place
        kept = [new.pop(label_of(e), e) for e in json.loads(args.out.read_text())["examples"]
                if e.get("chosen_by") or (args.only and label_of(e) not in args.only) or label_of(e) in new]
        chosen = kept + list(new.values())
    data = {"model": "negprompt-portraits", "steps": steps, "guidance_scale": GUIDANCE, "scheduler": "Default",
            "seeds_scanned": args.seeds, "min_rate": args.min_rate, "examples": chosen}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(chosen)} examples to {args.out}")


if __name__ == "__main__":
    main()
