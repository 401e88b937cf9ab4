""""Does this negative do anything here?": one verdict per cell, from what predicts it and what was measured.

    from negprompt.verdicts import model_facts, verdict
    facts = model_facts(pipe, "stabilityai/sdxl-turbo")      # plain data read from the pipeline's configs
    v = verdict(facts, spec, 3, change=0.2, tokenizer=pipe.tokenizer)
    v.status     # "does almost nothing"
    v.reasons    # ["it changed 0.20% of the image against its reference (under 1%)", "the model is ...", ...]

Predicted causes (``predicted_causes``), each a sentence a teacher can read aloud:
- guidance at or below 1: classifier-free guidance is off and diffusers ignores every negative prompt;
- a guidance-distilled model: an LCM-style UNet that takes the guidance scale as an input (``time_cond_proj_dim``:
  diffusers runs no negative branch at all), an LCM or TCD scheduler, or a checkpoint named as a few-step distilled
  model (Turbo, Lightning, Hyper-SD, LCM; FLUX.1-schnell) that keeps its base architecture and was trained to run
  without guidance, so at its usual settings (guidance 0 to 1) no negative acts;
- a window that holds no step: the negative never acts;
- text past the encoder's token limit, which is cut without a warning (and a cell that reads the same as its
  reference once cut);
- A1111 syntax that negprompt passes to the text encoder as literal characters: weights ``(word:1.3)``, emphasis
  ``((word))``, schedules ``[a:b:10]``, alternation ``[a|b]``, ``<lora:...>`` tags, and textual-inversion embedding
  names such as ``easynegative`` (negprompt loads no embeddings, so the name is read as letters);
- words the model never learned (when its vocabulary is known, as for the embedded model).
The measured cause: the cell changed less than ``negprompt.explore.INERT_PERCENT`` of the image against its
reference. The verdict is "does almost nothing" on that measurement alone; predicted causes explain it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from negprompt._assets import EMBEDDED_NAME
from negprompt.explore import (
    INERT_PERCENT,
    PreviewRecorder,
    divergence_curves,
    rank_terms,
    split_terms,
    timing_reports,
)
from negprompt.plan import ComparisonSpec, window_contains
from negprompt.portrait_model.portraits import ALL_WORDS
from negprompt.prompts import count_tokens

ACTS, INERT = "acts", "does almost nothing"
DISTILLED_SCHEDULERS = ("LCMScheduler", "TCDScheduler")
# Name parts of few-step distilled checkpoints: "sdxl-turbo", "DreamShaperXL_Turbo", "SDXL-Lightning",
# "juggernautXL_v9Rdphoto2Lightning", "Hyper-SDXL-8steps", "lcm-lora-sdv1-5", "LCM_Dreamshaper_v7",
# "black-forest-labs/FLUX.1-schnell", "stabilityai/stable-diffusion-3.5-large-turbo".
_DISTILLED_PARTS = {"turbo": "Turbo (adversarial diffusion distillation)", "lightning": "Lightning (progressive "
                    "adversarial distillation)", "lcm": "LCM (latent consistency distillation)",
                    "hypersd": "Hyper-SD (trajectory segmented consistency distillation)",
                    "schnell": "FLUX.1-schnell (latent adversarial diffusion distillation)"}
# Textual-inversion embeddings that A1111 users paste into negatives (lower case, as A1111 matches file names).
KNOWN_EMBEDDINGS = frozenset({
    "easynegative", "easynegativev2", "badhandv4", "bad-hands-5", "bad_prompt", "bad_prompt_version2",
    "bad-artist", "bad-artist-anime", "bad-image-v2-39000", "ng_deepnegative_v1_75t", "verybadimagenegative_v1.3",
    "negative_hand-neg", "fastnegativev2", "unaestheticxl_v13", "unaestheticxlv31", "baddream", "unrealisticdream",
    "epicnegative", "badneganatomyv1-neg", "realisticvision-negative-embedding", "cyberrealistic_negative",
    "negativexl_d", "deepnegative", "bad_pictures", "easynegativev2", "aid28", "an-tiartifact",
})
_WEIGHT = re.compile(r"(?<!\\)\((?:[^()]|\\[()])*:\s*-?\d+(?:\.\d+)?\s*\)")
_EMPHASIS = re.compile(r"(?<!\\)(?:\(+|\[+)[^()\[\]:|]+(?:\)+|\]+)")
_SCHEDULE = re.compile(r"(?<!\\)\[[^\[\]]*:\s*\d+(?:\.\d+)?\s*\]")
_ALTERNATION = re.compile(r"(?<!\\)\[[^\[\]]*\|[^\[\]]*\]")
_EXTRA = re.compile(r"<\s*(lora|lyco|hypernet)\s*:[^>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class ModelFacts:
    """What decides whether negatives can act on a model, as plain data (``model_facts`` reads it from a pipe)."""

    name: str  # Hub id, folder name or the embedded model's name
    time_cond_proj_dim: int | None = None  # set on UNets that take the guidance scale as an input (LCM-style)
    scheduler: str = ""  # the scheduler class the model ships with
    timestep_spacing: str | None = None  # the scheduler's timestep spacing ("trailing" on few-step models)
    token_limit: int = 75  # tokens of text the encoder reads
    vocabulary: frozenset[str] | None = None  # words the text encoder knows as words (None: not known, e.g. CLIP)
    notes: tuple[str, ...] = field(default_factory=tuple)  # anything else worth saying


def model_facts(pipe, name: str, vocabulary: frozenset[str] | None = None) -> ModelFacts:
    """The facts of a loaded pipeline (read only, nothing changes). The embedded model's vocabulary is known: the
    words of its training captions (``negprompt.portrait_model.portraits.ALL_WORDS``)."""
    if vocabulary is None and name == EMBEDDED_NAME:
        vocabulary = frozenset(ALL_WORDS)
    tokenizer = pipe.tokenizer if getattr(pipe, "tokenizer", None) is not None else pipe.tokenizer_2
    config = pipe.scheduler.config
    unet = getattr(pipe, "unet", None)
    return ModelFacts(name=name, time_cond_proj_dim=unet.config.time_cond_proj_dim if unet is not None else None,
                      scheduler=type(pipe.scheduler).__name__, timestep_spacing=config.get("timestep_spacing"),
                      token_limit=tokenizer.model_max_length - 2, vocabulary=vocabulary)


def _name_parts(name: str) -> list[str]:
    """"juggernautXL_v9Rdphoto2Lightning" -> ["juggernaut", "xl", "v", "9", "rdphoto", "2", "lightning"]."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", base)
    return re.findall(r"[a-z]+|\d+", spaced.lower())


def distillation(facts: ModelFacts) -> str | None:
    """Why the model is guidance-distilled, or None when nothing says so.

    Evidence, strongest first: the UNet takes the guidance scale as an input; the scheduler is LCM's or TCD's; the
    checkpoint's name carries "turbo", "lightning", "lcm" or "hyper" followed by "sd" as a word of its own (so
    "hyperrealism" or "turbulence" do not count). A trailing timestep spacing alone is no evidence: ordinary
    models use it too (the embedded model does)."""
    if facts.time_cond_proj_dim is not None:
        return ("the model is guidance-distilled: its UNet takes the guidance scale as an input "
                f"(time_cond_proj_dim={facts.time_cond_proj_dim}), so it runs no negative branch and every "
                "negative is ignored")
    if facts.scheduler in DISTILLED_SCHEDULERS:
        return (f"the model ships with the {facts.scheduler}, made for consistency-distilled models that run at "
                "guidance 0 to 1, where no negative acts")
    parts = _name_parts(facts.name)
    if any(a == "hyper" and b.startswith("sd") for a, b in zip(parts, parts[1:])) \
            or any(p.startswith("hypersd") for p in parts):
        parts.append("hypersd")
    for key, what in _DISTILLED_PARTS.items():
        if key in parts:
            spacing = " with trailing timestep spacing" if facts.timestep_spacing == "trailing" else ""
            return (f"'{facts.name}' reads as a {what} checkpoint{spacing}: a few-step model trained to run "
                    "without classifier-free guidance (guidance 0 to 1), where no negative acts; at higher "
                    "guidance its images overcook")
    return None


def a1111_syntax(text: str) -> list[str]:
    """The pieces of ``text`` written in A1111 prompt syntax, each with what it means there (embedding names
    included; ``embedding_names`` lists those alone)."""
    found = []
    for pattern, what in ((_EXTRA, "an A1111 extra-network tag (LoRA, LyCORIS, hypernetwork)"),
                          (_SCHEDULE, "an A1111 prompt schedule (a term switched in or out at a step)"),
                          (_ALTERNATION, "A1111 alternation (terms swapped every step)"),
                          (_WEIGHT, "an A1111 attention weight")):
        found += [f"'{m.group(0)}' is {what}" for m in pattern.finditer(text)]
        text = pattern.sub(" ", text)
    found += [f"'{m.group(0)}' is A1111 emphasis (brackets raise or lower a term's weight)"
              for m in _EMPHASIS.finditer(text)]
    found += [f"'{name}' looks like the name of a textual-inversion embedding" for name in embedding_names(text)]
    return found


def embedding_names(text: str, loaded=frozenset()) -> list[str]:
    """The terms of ``text`` that look like textual-inversion embedding names (``EasyNegative``, ``badhandv4``),
    without their brackets and weights, leaving out those in ``loaded`` (lower case: the tokenizer's added words)."""
    names = []
    for term in split_terms(_EXTRA.sub(" ", text)):
        bare = re.sub(r":\s*-?[\d.]+$", "", term.strip("()[] ")).strip()
        if (bare.lower() in KNOWN_EMBEDDINGS or _looks_like_embedding(bare.lower())) and bare.lower() not in loaded:
            names.append(bare)
    return names


def loaded_embeddings(tokenizer) -> frozenset[str]:
    """The words a tokenizer was given by ``load_textual_inversion`` (its added words, lower case)."""
    added = getattr(tokenizer, "get_added_vocab", None) if tokenizer is not None else None
    return frozenset(w.lower() for w in (added() if added is not None else {}))


def reading_notes(spec: ComparisonSpec, index: int, tokenizer=None) -> list[str]:
    """Short notes on how cell ``index``'s negative was read, for captions, the command line and the ranking: its
    text (for a term cell, its term) was cut at the token limit, its A1111 syntax was read as characters (plain
    reading), or it names an embedding that is not loaded."""
    cell = spec.cells[index]
    text, own = cell.negative or "", cell.term or cell.negative or ""
    if cell.kind == "leave-out" and cell.reference is not None:  # its term was read as part of the full negative
        text = spec.cells[cell.reference].negative or ""
    notes = []
    if spec.reading_of(cell) == "plain" and text:
        if tokenizer is not None and not count_tokens(tokenizer, text).fits \
                and (not cell.term or cell.term in cut_terms(tokenizer, text)):
            notes.append(f"cut at {tokenizer.model_max_length - 2} tokens")
        if len(a1111_syntax(own)) > len(embedding_names(own)):
            notes.append("A1111 syntax read as characters")
    notes += [f"no embedding '{name}' loaded" for name in embedding_names(own, loaded_embeddings(tokenizer))]
    return notes


def _looks_like_embedding(word: str) -> bool:
    """A single token naming an embedding file: "ng_deepnegative_v1_75t", "badhandv4", "negative_hand-neg"."""
    if " " in word or not re.fullmatch(r"[a-z0-9_.\-]+", word):
        return False
    named = "negative" in word and word != "negative" or re.search(r"(^|[_\-])neg($|[_\-])", word)
    versioned = re.search(r"(bad|neg)[a-z_\-]*v?\d", word)
    return bool(named or versioned)


def _unknown_words(text: str, vocabulary: frozenset[str]) -> list[str]:
    return [w for w in dict.fromkeys(re.findall(r"[a-z]+", text.lower())) if w not in vocabulary]


def predicted_causes(facts: ModelFacts, spec: ComparisonSpec, index: int, tokenizer=None) -> list[str]:
    """Why cell ``index`` of ``spec`` may show little or no effect of its negative, before measuring anything.

    ``tokenizer`` (the pipeline's CLIP tokenizer) enables the checks of the token limit."""
    cell = spec.cells[index]
    causes = []
    scale = spec.scale_of(cell)
    if scale <= 1:
        causes.append(f"guidance scale {scale:g} is at most 1: classifier-free guidance is off and no negative "
                      "acts")
    distilled = distillation(facts)
    if distilled:
        causes.append(distilled)
    if not any(window_contains(cell.window, s, spec.steps) for s in range(spec.steps)):
        causes.append(f"its window {cell.window[0]:g}-{cell.window[1]:g} holds none of the {spec.steps} steps: "
                      "the negative never acts")
    text = cell.negative or ""
    own = cell.term or text
    plain = spec.reading_of(cell) == "plain"
    if tokenizer is not None and text and plain:
        count = count_tokens(tokenizer, text)
        if not count.fits:
            cut = cut_terms(tokenizer, text)
            what = (f"{_listing(cut)} {'is' if len(cut) == 1 else 'are'}" if cut else f"'{count.truncated}' is")
            causes.append(f"its negative has {count.used} tokens and the text encoder reads {count.limit}: "
                          f"{what} cut off without a warning")
        ref = spec.cells[cell.reference] if cell.reference is not None else None
        if ref is not None and ref.negative and ref.window == cell.window and ref.guidance == cell.guidance \
                and _read_part(tokenizer, text) == _read_part(tokenizer, ref.negative):
            causes.append("once cut to the token limit its negative reads the same as its reference's"
                          + (f": '{cell.term}' lies in the part that is cut" if cell.term else ""))
    loaded = loaded_embeddings(tokenizer)
    if plain:
        names = embedding_names(own)
        causes += [f"{piece}, but negprompt reads it as literal characters (the plain reading; the a1111 reading "
                   "reads it as A1111 does)" for piece in a1111_syntax(own)
                   if not any(f"'{n}' looks like" in piece and n.lower() in loaded for n in names)]
    else:
        causes += [f"'{name}' looks like the name of a textual-inversion embedding, but no embedding of that name "
                   "is loaded: the a1111 reading reads it as ordinary text" for name in embedding_names(own, loaded)]
        causes += [f"'{m.group(0)}' is an A1111 extra-network tag: a LoRA changes the model, not the negative; the "
                   "tag is read as text" for m in _EXTRA.finditer(own)]
    if facts.vocabulary is not None:
        unknown = _unknown_words(own, facts.vocabulary)
        if unknown:
            verb = "is not a word" if len(unknown) == 1 else "are not words"
            causes.append(f"{_listing(unknown)} {verb} this model learned")
    return causes


def cut_terms(tokenizer, text: str) -> list[str]:
    """The terms of ``text`` (comma-separated) that reach past the text encoder's token limit, wholly or in part."""
    limit = tokenizer.model_max_length - 2
    terms = split_terms(text)
    return [t for k, t in enumerate(terms) if count_tokens(tokenizer, ", ".join(terms[:k + 1])).used > limit]


def _listing(items: list[str], most: int = 6) -> str:
    shown = ", ".join(repr(i) for i in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _read_part(tokenizer, text: str) -> list[int]:
    limit = tokenizer.model_max_length - 2
    return tokenizer(text, truncation=False, add_special_tokens=False).input_ids[:limit]


@dataclass(frozen=True)
class Verdict:
    """Whether one cell's negative did anything, and why."""

    status: str  # "acts" or "does almost nothing"
    change: float  # the cell's change score against its reference, in percent
    reasons: tuple[str, ...]  # the measurement first, then the predicted causes
    notes: tuple[str, ...] = ()  # how its negative was read, in a few words each (``reading_notes``)

    def to_dict(self) -> dict:
        return {"status": self.status, "change": round(self.change, 4), "reasons": list(self.reasons),
                "notes": list(self.notes)}


def verdict(facts: ModelFacts, spec: ComparisonSpec, index: int, change: float, *, tokenizer=None,
            threshold: float = INERT_PERCENT) -> Verdict | None:
    """The verdict on cell ``index`` given its measured ``change`` against its reference (None for a cell with no
    reference, such as a baseline)."""
    if spec.cells[index].reference is None:
        return None
    inert = change < threshold
    measured = (f"it changed {change:.2f}% of the image against its reference "
                f"({'under' if inert else 'at least'} {threshold:g}%)")
    return Verdict(INERT if inert else ACTS, change, (measured, *predicted_causes(facts, spec, index, tokenizer)),
                   tuple(reading_notes(spec, index, tokenizer)))


def cell_verdicts(facts: ModelFacts, spec: ComparisonSpec, changes, *, tokenizer=None,
                  threshold: float = INERT_PERCENT) -> list[Verdict | None]:
    """``verdict`` for every cell of ``spec``, given each cell's change against its reference (``changes``, as
    ``Comparison.change_scores`` gives them)."""
    return [verdict(facts, spec, i, float(c), tokenizer=tokenizer, threshold=threshold) for i, c in enumerate(changes)]


def fit_to_model(spec: ComparisonSpec, pipe, *, optional_methods: bool = False) -> ComparisonSpec:
    """``spec`` as the model can show it. On a guidance-distilled model whose attention negprompt can steer (a UNet
    or an SD3/FLUX transformer loaded by ``negprompt.loading.load``), every plain negative cell becomes two: the CFG
    cell and the same negative through NAG (``negprompt.guidance.NAG``), which acts inside the one branch such a
    model runs. The CFG cell is labeled inert where the run takes no negative branch at the spec's guidance scale
    (an LCM-style UNet, or any model at a scale of 1 or less, e.g. FLUX.1-schnell without true CFG), so it equals
    the baseline; elsewhere (a model distilled by name, run at a higher scale) it is labeled plain "cfg". With
    ``optional_methods`` (a front end's fixed list of methods, not the user's), cells of attention-level methods
    (NAG) are left out on a model whose attention cannot be steered (a compiled UNet, a pipeline not loaded by
    negprompt); otherwise the engine refuses them by name. Anything else is returned as it is. ``pipe``: the
    pipeline (or an object holding it as ``.pipe``)."""
    from negprompt.attention import installed
    from negprompt.families import family_of
    from negprompt.guidance import steers_attention
    from negprompt.plan import expand_cells

    pipe = getattr(pipe, "pipe", pipe)
    family = family_of(pipe)
    if not installed(family.denoiser):
        if not optional_methods or not any(steers_attention(c.guidance) for c in spec.cells):
            return spec
        return expand_cells(spec, lambda cell: [] if steers_attention(cell.guidance) else [cell])
    if spec.mode not in ("negatives", "negatives+positive") or distillation(model_facts(pipe, spec.model)) is None:
        return spec
    return nag_beside_cfg(spec, lambda cell: not family.guidance_active(spec.scale_of(cell)))


def nag_beside_cfg(spec: ComparisonSpec, inert=lambda cell: False) -> ComparisonSpec:
    """Every plain negative cell (CFG) of ``spec`` as two: the CFG cell, labeled "cfg" (or "cfg, inert here" where
    ``inert(cell)``), and the same negative through NAG (what ``fit_to_model`` does on a guidance-distilled
    model)."""
    from dataclasses import replace

    from negprompt.guidance import CFG, NAG
    from negprompt.plan import expand_cells

    def both(cell):
        if cell.kind != "negative" or cell.guidance != CFG():
            return [cell]
        return [replace(cell, label=f"{cell.label} ({'cfg, inert here' if inert(cell) else 'cfg'})"),
                replace(cell, guidance=NAG(), label=f"{cell.label} (nag)")]

    return expand_cells(spec, both)


def fit_by_name(spec: ComparisonSpec) -> ComparisonSpec:
    """What ``fit_to_model`` makes of ``spec`` on a model that is not loaded, judged from the model's name alone
    (nothing is loaded or downloaded): NAG beside CFG where the name says the model is distilled (Turbo, Lightning,
    LCM, Hyper-SD, FLUX.1-schnell), the spec as it is otherwise. A model distilled by its configuration alone (an
    LCM-style UNet under another name) shows only once loaded."""
    if spec.mode not in ("negatives", "negatives+positive") or distillation(ModelFacts(name=spec.model)) is None:
        return spec
    return nag_beside_cfg(spec)


# ---------------------------------------------------------------------------------------------------------------
# A finished comparison, explained


def explain(result, pipe, recorder: PreviewRecorder | None = None, *, threshold: float = INERT_PERCENT):
    """Give a finished ``Comparison`` its verdict per cell and, when ``recorder`` (a ``PreviewRecorder`` passed as
    ``compare``'s callback) kept previews, every cell's x0 preview per recorded step. A timing sweep on the embedded
    model also gets, per negative that names an attribute, what the detector says each start removed, added and
    changed elsewhere (``negprompt.explore.timing_reports``). Returns ``result``.

    ``pipe``: the pipeline it ran on (or an object holding it as ``.pipe``); only its configs are read."""
    pipe = getattr(pipe, "pipe", pipe)
    tokenizer = pipe.tokenizer if getattr(pipe, "tokenizer", None) is not None else pipe.tokenizer_2
    facts = model_facts(pipe, result.settings.model)
    result.verdicts = cell_verdicts(facts, result.spec, result.change_scores, tokenizer=tokenizer,
                                    threshold=threshold)
    if recorder is not None:
        result.preview_steps, result.previews = recorder.frames([c.image for c in result.cells])
    if result.spec.mode == "timing" and facts.name == EMBEDDED_NAME:
        from negprompt.portrait_model.detector import detect
        from negprompt.portrait_model.portraits import BINARY

        detections = detect([c.image for c in result.cells])
        result.explored["timing"] = timing_reports(result.spec, detections, result.change_scores, BINARY)
    return result


def manifest_fields(result) -> tuple[list[dict], dict]:
    """What the explorer adds to ``manifest.json``: per cell its verdict and divergence curve (its change against
    its reference at each recorded step, percent), and for the whole comparison the recorded steps and, for a
    leave-one-out or terms-alone spec, the ranked terms and the trimmed negative."""
    verdicts = getattr(result, "verdicts", None) or [None] * len(result.cells)
    previews = getattr(result, "previews", None)
    curves = (divergence_curves(previews, [c.reference for c in result.cells]) if previews
              else [None] * len(result.cells))
    cells = [{"verdict": v.to_dict() if v is not None else None, "divergence": curve}
             for v, curve in zip(verdicts, curves)]
    maps = getattr(result, "attention_maps", None)
    if maps:
        from negprompt.attention import REGION_SHARE, change_inside_outside

        for record, cell, picture in zip(cells, result.cells, maps):
            ref = result.reference_of(cell)
            split = change_inside_outside(cell.image, ref.image, picture) if ref is not None else None
            record["attention"] = None if split is None else {
                "change_inside": split[0], "change_outside": split[1], "region_share": REGION_SHARE}
    extra: dict = dict(getattr(result, "explored", None) or {})
    if previews:
        extra["preview_steps"] = list(result.preview_steps)
    if any(c.kind in ("leave-out", "term-alone") for c in result.spec.cells):
        images = [getattr(c, "image", None) for c in result.cells]
        ranking = rank_terms(result.spec, result.change_scores,
                             images=None if None in images else images).to_dict()
        first = result.spec.cells[0].row
        notes = {c.term: list(v.notes) for c, v in zip(result.spec.cells, verdicts)
                 if v is not None and c.row == first and c.kind in ("leave-out", "term-alone")}
        for term in ranking["terms"]:
            term["notes"] = notes.get(term["term"], [])
        extra["terms"] = ranking
    return cells, extra


def ranking_lines(ranking: dict, seeds: int) -> list[str]:
    """A term ranking (``manifest_fields``' "terms") as text: per term its mean change, its spread over the seeds
    and how it was read; then the terms that gave identical images, and the trimmed negative."""
    what = "leaving it out" if ranking["kind"] == "leave-out" else "it alone"
    lines = [f"terms ranked by how much {what} changes the image (mean over {seeds} seed{'s' * (seeds != 1)}, "
             "lowest to highest seed in brackets):"]
    for t in ranking["terms"]:
        low, high = t["spread"]
        flags = (["does almost nothing"] if t["inert"] else []) + t.get("notes", [])
        lines.append(f"{t['mean_change']:>7.2f}%  [{low:.2f}-{high:.2f}%]  {t['label']}"
                     + (f"  ({'; '.join(flags)})" if flags else ""))
    lines += identical_lines(ranking)
    lines.append(f"trimmed negative: {ranking['trimmed_negative']}")
    return lines


def identical_lines(ranking: dict) -> list[str]:
    """The sentences on identical images in a term ranking: the terms that did the same thing, and those whose cell
    is the same image as its reference (the full negative; the baseline for terms alone) on every seed."""
    lines = [f"these {len(g)} terms did the same thing (identical images on every seed): {', '.join(g)}"
             for g in ranking.get("identical_groups", [])]
    same = ranking.get("same_as_reference", [])
    if same:
        reference = "the full negative's" if ranking["kind"] == "leave-out" else "the baseline's"
        what = "leaving out" if ranking["kind"] == "leave-out" else "using"
        lines.append(f"{what} {', '.join(same)} gave {reference} image on every seed, pixel for pixel: "
                     f"{'it' if len(same) == 1 else 'they'} did nothing here")
    return lines


def summary_lines(result) -> list[str]:
    """The command line's report of an explained comparison: per cell its change and verdict; for a term mode, the
    ranked terms and the trimmed negative to copy."""
    verdicts = result.verdicts or [None] * len(result.cells)
    lines = [f"{'seed':>6}  {'change':>7}  {'verdict':<20}  cell"]
    for cell, score, v in zip(result.cells, result.change_scores, verdicts):
        notes = f"  [{'; '.join(v.notes)}]" if v is not None and v.notes else ""
        lines.append(f"{cell.seed:>6}  {score:>6.1f}%  {v.status if v else '':<20}  {result.label(cell)}{notes}")
    _, extra = manifest_fields(result)
    if "terms" in extra:
        lines += ["", *ranking_lines(extra["terms"], len(result.spec.seeds))]
    for negative, report in extra.get("timing", {}).items():
        lines += ["", f"negative '{negative}' by start (the detector's reading, over {len(result.spec.seeds)} "
                      "seed(s)):", "  start  removed   added  other flips  change"]
        lines += [f"{r['start']:>7g}  {r['removed']:>3}/{r['present']:<3} {r['added']:>3}/{r['absent']:<3} "
                  f"{r['other_flips']:>11.2f}  {r['change']:>5.1f}%" for r in report["starts"]]
        lines.append(f"latest start that still removes it (90% as often as the earliest): "
                     f"{report['latest_removing_start']}")
    return lines
