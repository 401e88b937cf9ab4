"""Sweeps: many prompts x negatives x seeds as comparison specs, on one process or many, resumable, one table.

    python -m negprompt.sweep benchmarks/sweeps/smoke.toml --out runs/smoke              # one process
    accelerate launch --multi_gpu --num_processes 8 -m negprompt.sweep big.toml --out runs/big   # 8 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m negprompt.sweep smoke.toml --out runs/smoke  # 2 CPU processes
    python -m negprompt.report runs/smoke                                                  # report.html, report.md

A config file (TOML) names the model and the shared settings, the prompts, the negatives and the seeds:

    model = "negprompt-portraits"     # Hub id, diffusers folder (relative to this file or absolute), or the embedded
    steps = 20                        # model's name; also: sampler, guidance, size = "64x64", baseline = "empty"
    guidance = 5.0
    prompts = ["portrait photo of a man"]
    negatives = ["hat", "glasses"]    # or negatives_file = "negatives.txt" (one per line, # comments)
    seeds = "0-63"                    # or a list: [0, 1, "10-19"]
    seeds_per_block = 8               # seeds per comparison: one comparison spec per (prompt, axis, seed block)
    axes = ["plain"]                  # also "timing" (timing = [0, 0.3]), "methods" (methods = ["cfg", "perp-neg"]),
                                      # "scales" (scales = [1, 3, 7.5]), "readings", "leave-one-out" and
                                      # "terms-alone" (each negative's comma-separated terms): negprompt.axes
    # [[groups]] tables with their own prompts and negatives run in the same sweep (negatives = [] for baselines)

It expands into ``ComparisonSpec``s (``negprompt.plan``), each with a stable id (a hash of its JSON). Processes
share the pending specs through accelerate's ``PartialState.split_between_processes``; each loads the pipeline once
on its own device. A finished spec is a folder ``specs/<id>/`` (grid, cell PNGs with infotext, manifest, one row per
cell), written under ``specs/<id>.partial/`` and renamed in one step, so a folder that exists is complete: a rerun
skips it and redoes whatever an interrupted run left half written. No two processes write the same file: a spec
belongs to one process, and each process appends its rows to its own ``rows/process-<rank>.jsonl``. The config's hash
is recorded on the first run (``sweep.json``) and a changed config is refused. At the end the main process merges
every finished spec's rows, in spec order, into ``results.csv`` and ``results.jsonl``.

On a CPU, ``accelerate launch --cpu --num_processes N`` starts ONE process (accelerate runs several CPU processes
only under MPI); ``--multi_gpu --num_processes N`` starts N through torchrun, and on a machine without a GPU the sweep
joins them over gloo on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from negprompt import axes
from negprompt._assets import EMBEDDED_NAME
from negprompt.errors import LIMITS, InputError, shown
from negprompt.inputs import check_out_folder, load_json_file, parse_nested, read_text_file
from negprompt.plan import BASELINES, ComparisonSpec, check_int, check_text, parse_seeds

log = logging.getLogger("negprompt.sweep")

NO_CHANGE_PERCENT = 1.0  # a cell whose change score is below this (percent) "does almost nothing"
TIMING_COLUMNS = ("seconds_spec", "seconds_cell", "process")  # row fields that differ between two identical runs

CONFIG_KEYS = {"model", "sampler", "steps", "guidance", "size", "baseline", "prompts", "negatives", "negatives_file",
               "groups", "seeds", "seeds_per_block", "axes", "detector",
               *(a.values.config_key for a in axes.ALL if a.values is not None)}  # each axis's values: "timing", ...
LEGACY_VALUE_KEYS = ("timing", "methods")  # always in the config's hash, so that older sweeps keep theirs


class SweepInterrupted(RuntimeError):
    """Raised by ``--stop-after``: the sweep stopped with a comparison half written, as a killed run leaves it."""


# ---------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class Group:
    prompts: tuple[str, ...]  # positive prompts, each run against every negative of the group
    negatives: tuple[str, ...]  # negatives compared (empty: baselines only)


@dataclass(frozen=True)
class SweepConfig:
    """What a config file says, with ranges expanded and files read."""

    model: str  # Hub id, diffusers folder, or the embedded model's name
    groups: tuple[Group, ...]  # prompts x negatives
    seeds: tuple[int, ...]  # every seed, in order
    sampler: str = "Default"  # sampler name (negprompt.schedulers)
    steps: int = 20  # denoising steps
    guidance: float = 7.5  # guidance scale
    size: tuple[int, int] | None = None  # (width, height); None: the model's own size
    baseline: str = "empty"  # the baseline negative: "empty" prompt or "zeros" embeddings (SDXL's own default)
    seeds_per_block: int = 8  # seeds per comparison spec
    axes: tuple[str, ...] = ("plain",)  # comparison axes by their sweep names (negprompt.axes)
    values: tuple[tuple[str, tuple], ...] = ()  # (config key, values as written) of the axes that take values
    detector: bool | None = None  # run the portrait detector on every cell (None: for the embedded model only)

    def values_of(self, axis) -> tuple:
        """The values ``axis`` (a ``negprompt.axes.Axis``) varies over, as written in the config."""
        return dict(self.values).get(axis.values.config_key, ()) if axis.values is not None else ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        written = dict(out.pop("values"))
        out.update({key: list(written.get(key, ())) for key in LEGACY_VALUE_KEYS})
        out.update({key: list(v) for key, v in written.items() if key not in LEGACY_VALUE_KEYS and v})
        return out

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def uses_detector(self) -> bool:
        return self.detector if self.detector is not None else self.model == EMBEDDED_NAME


GROUP_KEYS = {"prompts", "negatives", "negatives_file"}  # what a [[groups]] table may hold


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise InputError("config", str(path), "reading a TOML config needs Python 3.11 or the tomli "
                                                  "package") from None
    text = read_text_file(path, "config", LIMITS.max_config_bytes)
    return parse_nested(text, tomllib.loads, f"config {str(path)!r}", "TOML")


def _strings(data: dict, key: str, where: str, allow_empty: bool = False) -> list[str]:
    """A list of visible texts, at most ``LIMITS.max_list_items``, each within ``LIMITS.max_text_chars``."""
    value = data.get(key, [])
    name = f"{where}{key}"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(name, shown(value), f"{name} must be a list of texts")
    if len(value) > LIMITS.max_list_items:
        raise InputError(name, len(value), f"{name} names {len(value):,}; at most {LIMITS.max_list_items:,}")
    if not value and not allow_empty:
        raise InputError(name, value, f"{name} must name at least one")
    for i, text in enumerate(value):
        check_text(f"{name}[{i}]", text)
    return [text.strip() for text in value]


def _negatives_file(data: dict, folder: Path, where: str, allow_outside: bool) -> list[str]:
    name = f"{where}negatives_file"
    value = data[name.rsplit(".", 1)[-1]]
    if not isinstance(value, str) or not value.strip():
        raise InputError(name, shown(value), f"{name}={shown(value)} must be a file name")
    text = read_text_file(folder / value, name, LIMITS.max_text_file_bytes, inside=folder,
                          allow_outside=allow_outside, hint="--allow-outside-files reads it anyway")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for i, line in enumerate(lines):
        check_text(f"{name} line {i + 1}", line)
    return lines


def _group(data, folder: Path, where: str, allow_outside: bool) -> Group:
    if not isinstance(data, dict):
        raise InputError(where.rstrip("."), shown(data), f"{where.rstrip('.')} must be a table ([[groups]])")
    if where:
        unknown = sorted(set(data) - GROUP_KEYS)
        if unknown:
            raise InputError(f"{where}{unknown[0]}", shown(data[unknown[0]]), f"{where}{unknown[0]} is not one of "
                                                                             f"{', '.join(sorted(GROUP_KEYS))}")
    negatives = _strings(data, "negatives", where, allow_empty=True)
    if "negatives_file" in data:
        negatives += _negatives_file(data, folder, where, allow_outside)
    unique = list(dict.fromkeys(" ".join(n.split()) for n in negatives))  # one negative, one count
    if len(unique) != len(negatives):
        repeated = sorted({n for n in unique if [" ".join(m.split()) for m in negatives].count(n) > 1})
        log.warning("note: %snegatives name %s more than once; each runs once", where, ", ".join(map(repr, repeated)))
    if len(unique) > LIMITS.max_list_items:
        raise InputError(f"{where}negatives", len(unique), f"{where}negatives names {len(unique):,}; at most "
                                                           f"{LIMITS.max_list_items:,}")
    return Group(prompts=tuple(_strings(data, "prompts", where)), negatives=tuple(unique))


def _number(data: dict, key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InputError(key, shown(value), f"{key}={shown(value)} must be a number from {low:g} to {high:g}")
    return float(value)


def _names(data: dict, key: str, allowed) -> tuple:
    """A config list of at most ``LIMITS.max_axis_values`` entries, each passing ``allowed`` (which raises)."""
    value = data.get(key, [])
    if not isinstance(value, list):
        raise InputError(key, shown(value), f"{key}={shown(value)} must be a list")
    if len(value) > LIMITS.max_axis_values:
        raise InputError(key, len(value), f"{key} names {len(value):,}; at most {LIMITS.max_axis_values}")
    for i, item in enumerate(value):
        allowed(f"{key}[{i}]", item)
    if len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
        raise InputError(key, shown(value), f"{key}={shown(value)} names one twice")
    return tuple(value)


def _axis(argument: str, axis) -> None:
    names = axes.sweep_axes()
    if not isinstance(axis, str) or axis not in names:
        raise InputError(argument, shown(axis), f"axis {shown(axis)} is not one of {', '.join(names)}")


def _count_images(config: SweepConfig, wheres: list[str]) -> None:
    """Refuse a config whose comparisons hold more than ``LIMITS.max_cells`` images per seed, or whose sweep makes
    more than ``LIMITS.max_sweep_images``: counted before anything is expanded. ``wheres``: each group's key prefix."""
    total = 0
    for where, group in zip(wheres, config.groups):
        for name in config.axes:
            axis = axes.by_sweep_name(name)
            per_seed = axis.images_per_seed(group.negatives, config.values_of(axis))
            if per_seed and max(per_seed) > LIMITS.max_cells:
                raise InputError(f"{where}negatives", len(group.negatives), f"{where}negatives: the {name} axis makes "
                                 f"{max(per_seed):,} images per seed, more than {LIMITS.max_cells} in one comparison; "
                                 "split them into [[groups]]")
            total += sum(per_seed) * len(group.prompts) * len(config.seeds)
    if total > LIMITS.max_sweep_images:
        raise InputError("seeds", total, f"the config makes {total:,} images; at most {LIMITS.max_sweep_images:,} "
                                         "per sweep")


def _model(data: dict, folder: Path) -> str:
    """The config's model: a Hub id, the embedded model's name, or a folder (relative to the config's, made
    absolute)."""
    model = data.get("model", EMBEDDED_NAME)
    check_text("model", model)
    try:
        if (folder / model).is_dir():  # a folder named relative to the config file
            return str((folder / model).resolve())
    except (OSError, ValueError) as error:  # a name too long, a null character
        raise InputError("model", shown(model), f"model={shown(model)}: {error}") from None
    return model


def _size(data: dict) -> tuple[int, int] | None:
    """The config's ``size = "WxH"`` as (width, height); None for the model's own."""
    if "size" not in data:
        return None
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", data["size"].lower()) if isinstance(data["size"], str) else None
    if not match:
        raise InputError("size", shown(data["size"]), f"size={shown(data['size'])} must look like \"512x512\"")
    size = (int(match[1]), int(match[2]))
    for name, side in zip(("width", "height"), size):
        check_int(f"size ({name})", side, 1, LIMITS.max_side)
    return size


def _axes(data: dict) -> tuple[tuple[str, ...], tuple[tuple[str, tuple], ...]]:
    """(axes named, (config key, values) of every axis that takes values): each axis's values are checked whether
    or not the axis is named, and a named axis needs at least one."""
    named = _names(data, "axes", _axis) if "axes" in data else ("plain",)
    if not named:
        raise InputError("axes", [], "axes must name at least one axis")
    values = []
    for axis in axes.ALL:
        if axis.values is None:
            continue
        key = axis.values.config_key
        written = _names(data, key, axis.values.check)
        if axis.sweep_name in named and not written:
            raise InputError(key, [], f"the {axis.sweep_name} axis needs {key} = [...] (at least one)")
        values.append((key, tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                                  for v in written)))
    return named, tuple(values)


def load_config(path: str | Path, *, allow_outside_files: bool = False) -> SweepConfig:
    """Read and check a sweep config before anything runs; raises ``InputError`` naming the bad key. A
    ``negatives_file`` must lie in the config's folder unless ``allow_outside_files``."""
    from negprompt.schedulers import scheduler_names

    path = Path(path)
    data = _read_toml(path)
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise InputError(unknown[0], shown(data[unknown[0]]), f"config key {shown(unknown[0])} is not one of "
                                                              f"{', '.join(sorted(CONFIG_KEYS))}")
    extra = data.get("groups", [])
    if not isinstance(extra, list) or len(extra) > LIMITS.max_list_items:
        raise InputError("groups", shown(extra), f"groups must be [[groups]] tables, at most "
                                                 f"{LIMITS.max_list_items:,}")
    wheres = ([""] if "prompts" in data else []) + [f"groups[{i}]." for i in range(len(extra))]
    tables = ([data] if "prompts" in data else []) + extra
    groups = [_group(table, path.parent, where, allow_outside_files) for where, table in zip(wheres, tables)]
    if not groups:
        raise InputError("prompts", None, "a sweep needs prompts (or [[groups]] with prompts)")
    model = _model(data, path.parent)
    size = _size(data)
    sampler = data.get("sampler", "Default")
    if not isinstance(sampler, str) or sampler not in scheduler_names():
        raise InputError("sampler", shown(sampler), f"sampler={shown(sampler)} is not one of "
                                                    f"{', '.join(scheduler_names())}")
    steps = data.get("steps", 20)
    check_int("steps", steps, 1, LIMITS.max_steps)
    baseline = data.get("baseline", "empty")
    if baseline not in BASELINES:
        raise InputError("baseline", shown(baseline), f"baseline={shown(baseline)} must be 'empty' or 'zeros'")
    detector = data.get("detector")
    if detector is not None and not isinstance(detector, bool):
        raise InputError("detector", shown(detector), f"detector={shown(detector)} must be true or false")
    seeds_per_block = data.get("seeds_per_block", 8)
    check_int("seeds_per_block", seeds_per_block, 1, LIMITS.max_cells)
    axes_named, values = _axes(data)
    config = SweepConfig(
        model=model, groups=tuple(groups), seeds=parse_seeds(data.get("seeds", 0), "seeds", LIMITS.max_sweep_seeds),
        sampler=sampler, steps=steps, guidance=_number(data, "guidance", 7.5, 0, LIMITS.max_guidance), size=size,
        baseline=baseline, seeds_per_block=seeds_per_block, axes=axes_named, values=values,
        detector=detector,
    )
    _count_images(config, wheres)
    return config


# ---------------------------------------------------------------------------------------------------------------
# Config -> specs


def _axis_specs(name: str, prompt: str, negatives: tuple[str, ...], seeds: list[int], config: SweepConfig,
                common: dict) -> list[ComparisonSpec]:
    """The specs of one axis for one prompt and block of seeds: one (none without negatives, except for the plain
    comparison of baselines), or one per negative for an axis over the terms of a long negative."""
    axis = axes.by_sweep_name(name)
    values = config.values_of(axis)
    if axis.name == "negatives":
        return [axis.build(prompt, list(negatives), seeds, values=values, **common)]
    if not negatives:
        return []
    if axis.long_negative:
        return [axis.build(prompt, [negative], seeds, values=values, **common) for negative in negatives]
    return [axis.build(prompt, list(negatives), seeds, values=values, **common)]


def expand(config: SweepConfig) -> list[ComparisonSpec]:
    """One spec per (group, prompt, axis, block of ``seeds_per_block`` seeds), in that order, each validated."""
    width, height = config.size or (None, None)
    common = dict(model=config.model if not Path(config.model).is_absolute() else Path(config.model).name,
                  steps=config.steps, guidance_scale=config.guidance, height=height, width=width,
                  sampler=config.sampler, baseline=config.baseline)
    per = config.seeds_per_block
    blocks = [list(config.seeds[i:i + per]) for i in range(0, len(config.seeds), per)]
    specs = []
    for group in config.groups:
        for prompt in group.prompts:
            for axis in config.axes:
                for block in blocks:
                    for spec in _axis_specs(axis, prompt, group.negatives, block, config, common):
                        try:
                            specs.append(spec.validate())
                        except InputError as error:
                            if error.argument == "max_cells":
                                raise InputError("seeds_per_block", per, f"seeds_per_block={per} makes comparisons "
                                                 f"of {len(spec.cells)} images, more than {LIMITS.max_cells}: lower "
                                                 "it") from None
                            raise
    ids = [spec_id(s) for s in specs]
    if len(set(ids)) != len(ids):
        raise InputError("prompts", None, "the config makes the same comparison twice (a prompt, negative or group "
                                          "repeated)")
    return specs


def spec_id(spec: ComparisonSpec) -> str:
    """A stable name for a spec: the first 16 hex digits of its JSON's SHA-256."""
    return hashlib.sha256(spec.to_json().encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Files: atomic writes, done-ness, the sweep record


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary name beside ``path``, then rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def spec_folder(out: Path, sid: str) -> Path:
    return out / "specs" / sid


def is_done(out: Path, sid: str) -> bool:
    return (spec_folder(out, sid) / "done.json").is_file()


LOCK = "sweep.lock"  # in --out while a sweep runs there: {"pid", "host", "started"} of the launch's main process


def _lock_holder(lock: Path) -> dict | None:
    try:
        holder = json.loads(lock.read_text())
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _running(holder: dict) -> bool:
    """Whether the process that wrote a lock still runs (one on another host is taken to be running)."""
    if holder.get("host") != socket.gethostname():
        return True
    if holder["pid"] == os.getpid():  # this process, whose earlier sweep ended without removing it
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def take_lock(out: Path) -> str | None:
    """Create ``out/sweep.lock`` for this process, or refuse (``InputError``) while the sweep that holds it runs.
    A lock left by a process that no longer runs is taken over; returns a note saying so (else None)."""
    lock, note = out / LOCK, None
    tmp = out / f".{LOCK}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)  # atomic: the lock appears with its content, or not at all
                return note
            except FileExistsError:
                holder = _lock_holder(lock)
                if holder is None and time.time() - lock.stat().st_mtime < 10:
                    time.sleep(0.2)  # being written right now by a sweep that takes it
                    continue
                if holder is not None and _running(holder):
                    raise InputError("out", str(out), f"{out} is in use by another sweep (process {holder['pid']} "
                                     f"on {holder.get('host')}, since {holder.get('started')}); wait for it to end "
                                     f"or use another --out (if none runs, delete {lock})") from None
                who = f"process {holder['pid']}" if holder else "a process"
                note = f"took over {lock}, left by {who} that no longer runs"
                lock.unlink(missing_ok=True)
        raise InputError("out", str(out), f"{out}: could not take {lock}; another sweep is starting there")
    finally:
        tmp.unlink(missing_ok=True)


def release_lock(out: Path) -> None:
    """Remove ``out/sweep.lock`` if this process holds it."""
    holder = _lock_holder(out / LOCK)
    if holder is not None and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
        (out / LOCK).unlink(missing_ok=True)


def _lock_launch(out: Path, state) -> None:
    """Only the launch as a whole takes the lock: its main process does and tells every process what it found, so
    all of a refused launch's processes stop together."""
    from accelerate.utils import broadcast_object_list

    found = [None]
    if state.is_main_process:
        try:
            note = take_lock(out)
            if note:
                log.warning("note: %s", note)
        except InputError as error:
            found = [str(error)]
    if state.num_processes > 1:
        broadcast_object_list(found)
    if found[0] is not None:
        raise InputError("out", str(out), found[0])


def check_record(out: Path, config: SweepConfig, ids: list[str], is_main: bool) -> None:
    """Refuse a config that differs from the one this folder's first run recorded; record it on the first run."""
    record = out / "sweep.json"
    digest = config.sha256()
    if record.is_file():
        previous = load_json_file(record, "sweep.json", LIMITS.max_manifest_bytes)
        if not isinstance(previous, dict) or not {"config_sha256", "config", "specs"} <= set(previous) \
                or not isinstance(previous["config"], dict):
            raise InputError("config", str(out), f"{record} is not a sweep's record; use a new --out folder")
        if previous["config_sha256"] != digest:
            now = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as the record holds them
            changed = sorted(k for k, v in now.items() if previous["config"].get(k) != v)
            raise InputError("config", str(out), f"{out} holds a sweep of another config (changed: "
                             f"{', '.join(changed) or 'unknown'}); finished results would mix with new ones. Use a "
                             "new --out folder, or restore the config")
        if previous["specs"] != ids:
            raise InputError("config", str(out), f"{out} was started by a negprompt that made other comparison specs "
                             "from this config (another version); use a new --out folder")
        return
    if is_main:
        write_atomic(record, json.dumps({"config_sha256": digest, "config": config.to_dict(), "specs": ids},
                                        indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Running one spec


def run_spec(pipe, spec: ComparisonSpec):
    """Run one spec and return the engine's ``Comparison`` (cells in the spec's order), with a verdict per cell where
    this negprompt has the explorer's verdicts (``negprompt.verdicts``)."""
    from negprompt.engine import compare

    result = compare(pipe, spec)
    try:
        from negprompt.verdicts import explain
    except ImportError:
        return result
    return explain(result, pipe)


def cell_rows(spec: ComparisonSpec, sid: str, changes: list[float], files: list[str], verdicts: list | None,
              detections: list[dict] | None) -> list[dict]:
    """One row per cell: what it is, how much it changed against its reference (``changes``, percent), the verdict,
    and what the detector saw."""
    rows = []
    for i, cell in enumerate(spec.cells):
        change = None if cell.reference is None else round(float(changes[i]), 4)
        if verdicts is not None:  # the explorer's verdict: status, then the measurement and the predicted causes
            verdict = "" if verdicts[i] is None else getattr(verdicts[i], "status", str(verdicts[i]))
            why = "" if verdicts[i] is None else "; ".join(getattr(verdicts[i], "reasons", ())[1:])
        else:
            verdict = "" if change is None else ("does almost nothing" if change < NO_CHANGE_PERCENT else "acts")
            why = ""
        row = {"spec": sid, "cell": i, "row": cell.row, "prompt": cell.positive,
               "negative": "" if cell.negative is None else cell.negative, "label": cell.label, "kind": cell.kind,
               "seed": cell.seed, "axis": spec.mode, "method": cell.guidance.name,
               "guidance_scale": spec.scale_of(cell), "window_start": cell.window[0],
               "window_stop": cell.window[1], "term": cell.term, "reference": cell.reference, "change": change,
               "verdict": verdict, "causes": why, "image": f"specs/{sid}/{files[i]}"}
        if detections is not None:
            row.update({f"det_{k}": v for k, v in detections[i].items()})
        rows.append(row)
    return rows


def _cell_files(folder: Path, n: int) -> list[str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    files = [c.get("file") for c in manifest.get("cells", [])]
    if len(files) != n or not all(files):
        raise RuntimeError(f"{folder}/manifest.json does not list one file per cell")
    return files


def run_one(pipe, spec: ComparisonSpec, sid: str, out: Path, detector, rank: int,
            interrupt: bool = False) -> list[dict]:
    """Run ``spec`` and write its folder atomically; returns its rows. With ``interrupt``, stop before the rename."""
    final, partial = spec_folder(out, sid), out / "specs" / f"{sid}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted run of this spec left
    start = time.perf_counter()
    result = run_spec(pipe, spec)
    images = [c.image for c in result.cells]
    detections = None
    if detector is not None:
        from negprompt.portrait_model.detector import detect

        detections = detect(images, detector)
    result.save(partial, differences=False)
    files = _cell_files(partial, len(images))
    rows = cell_rows(spec, sid, result.change_scores, files, getattr(result, "verdicts", None), detections)
    seconds = time.perf_counter() - start
    for row in rows:
        row.update(seconds_spec=round(seconds, 4), seconds_cell=round(seconds / len(rows), 4), process=rank)
    (partial / "spec.json").write_text(result.spec.to_json() + "\n")  # replayable: compare(pipe, spec)
    (partial / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if interrupt:
        raise SweepInterrupted(f"stopped with {partial} half written (--stop-after)")
    timings = {k: round(v, 4) for k, v in result.timings.items()}
    (partial / "done.json").write_text(json.dumps({"spec": sid, "process": rank, "seconds": round(seconds, 4),
                                                   "timings": timings, "cells": len(rows)}) + "\n")
    if final.exists():  # only an earlier run's incomplete folder (no done.json) can be here
        shutil.rmtree(final)
    os.replace(partial, final)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The results table


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def csv_cell(value):
    """A text that a spreadsheet would run as a formula, neutralised with a leading ``'`` (OWASP's advice on CSV
    injection: a negative "- hat" becomes "'- hat"); results.jsonl keeps every text as it is."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def merge(out: str | Path) -> list[dict]:
    """Every finished spec's rows, in spec order, written to ``results.jsonl`` and ``results.csv``.

    Rows come from the per-process files, and from a spec's own ``rows.jsonl`` where a process stopped between
    finishing a spec and appending its rows; only finished specs count. In ``results.csv`` a text that starts like
    a spreadsheet formula is neutralised (``csv_cell``)."""
    out = Path(out)
    ids = json.loads((out / "sweep.json").read_text())["specs"]
    by_spec: dict[str, dict[int, dict]] = {}
    for path in sorted((out / "rows").glob("process-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a process killed while appending
                continue
            by_spec.setdefault(row["spec"], {})[row["cell"]] = row
    rows = []
    for sid in ids:
        if not is_done(out, sid):
            continue
        cells = by_spec.get(sid, {})
        if len(cells) != json.loads((spec_folder(out, sid) / "done.json").read_text())["cells"]:
            lines = (spec_folder(out, sid) / "rows.jsonl").read_text().splitlines()
            cells = {r["cell"]: r for r in map(json.loads, lines)}
        rows += [cells[i] for i in sorted(cells)]
    write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[csv_cell(c) for c in columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows({csv_cell(k): csv_cell(v) for k, v in r.items()} for r in rows)
    write_atomic(out / "results.csv", buffer.getvalue())
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The sweep


@dataclass
class RunStats:
    """What one process did in one run."""

    rank: int
    specs: int = 0
    cells: int = 0
    load_s: float = 0.0  # loading the pipeline (and the detector)
    busy_s: float = 0.0  # running and writing specs
    skipped: int = 0  # specs already done before this run
    per_spec_s: list[float] = field(default_factory=list)


def _round_robin(items: list, n: int) -> list:
    """Reorder so that ``split_between_processes``' contiguous split hands out ``items`` round robin: process r
    gets items r, r + n, ... (neighbouring specs often differ in size: a config's groups, its axes)."""
    return [x for r in range(n) for x in items[r::n]]


def _no_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def run_sweep(config: SweepConfig | str | Path, out: str | Path, *, device: str | None = None,
              stop_after: int | None = None) -> dict:
    """Run every pending spec of ``config`` (a ``SweepConfig`` or a config file) across the launched processes;
    returns this run's summary (on the main process; an empty dict on the others)."""
    from accelerate import PartialState

    started = time.perf_counter()
    out = Path(out)
    config = config if isinstance(config, SweepConfig) else load_config(config)
    specs = expand(config)
    ids = [spec_id(s) for s in specs]
    check_out_folder(out)
    state = PartialState(cpu=device == "cpu" or (device is None and _no_accelerator()))
    out.mkdir(parents=True, exist_ok=True)
    _lock_launch(out, state)
    try:
        return _run_locked(config, out, specs, ids, state, device, stop_after, started)
    finally:
        if state.is_main_process:
            release_lock(out)


def _run_locked(config: SweepConfig, out: Path, specs: list[ComparisonSpec], ids: list[str], state, device,
                stop_after: int | None, started: float) -> dict:
    from accelerate.utils import gather_object

    check_record(out, config, ids, state.is_main_process)
    (out / "specs").mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(exist_ok=True)
    if state.is_main_process:  # temporary files of the main process's atomic writes, left by a killed run
        for leftover in out.glob(".*.tmp-*"):
            leftover.unlink()
    pending = [i for i, sid in enumerate(ids) if not is_done(out, sid)]
    state.wait_for_everyone()  # every process has listed the same pending specs before any starts writing

    stats = RunStats(rank=state.process_index, skipped=len(ids) - len(pending))
    with state.split_between_processes(_round_robin(pending, state.num_processes)) as mine:
        if mine:
            stats.load_s, pipe, detector = _load(config, device or state.device)
            rows_file = out / "rows" / f"process-{state.process_index}.jsonl"
            if rows_file.is_file() and not rows_file.read_bytes().endswith(b"\n"):
                with rows_file.open("a") as f:  # end the partial line a killed run left
                    f.write("\n")
            for done, index in enumerate(mine):
                start = time.perf_counter()
                interrupt = stop_after is not None and done >= stop_after
                rows = run_one(pipe, specs[index], ids[index], out, detector, state.process_index, interrupt)
                with rows_file.open("a") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in rows))
                stats.per_spec_s.append(time.perf_counter() - start)
                stats.specs, stats.cells = stats.specs + 1, stats.cells + len(rows)
                stats.busy_s += stats.per_spec_s[-1]
                log.info("process %d/%d: %d/%d specs, %d cells", state.process_index + 1, state.num_processes,
                         stats.specs, len(mine), stats.cells)
    everyone = gather_object([asdict(stats)])
    state.wait_for_everyone()
    summary: dict = {}
    if state.is_main_process:
        rows = merge(out)
        wall = time.perf_counter() - started
        cells = sum(s["cells"] for s in everyone)
        busy = max((s["busy_s"] for s in everyone), default=0.0)
        summary = {"processes": state.num_processes, "device": str(state.device), "specs_total": len(ids),
                   "specs_run": sum(s["specs"] for s in everyone), "cells_run": cells, "rows_in_table": len(rows),
                   "wall_s": round(wall, 3), "cells_per_s": round(cells / wall, 4) if wall else None,
                   "cells_per_busy_s": round(cells / busy, 4) if busy else None, "per_process": everyone}
        with (out / "runs.jsonl").open("a") as f:
            f.write(json.dumps(summary) + "\n")
    state.wait_for_everyone()
    return summary


def _end_process_group() -> None:
    """Tear down the launched processes' group before the interpreter exits: left to exit, a gloo group can abort
    one process ("terminate called without an active exception") after all its work is written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _load(config: SweepConfig, device):
    """Load the pipeline (once per process) and, where the config wants it, the portrait detector."""
    import torch

    from negprompt.loading import load_pipeline

    start = time.perf_counter()
    device = torch.device(device)
    pipe = load_pipeline(None if config.model == EMBEDDED_NAME else config.model,
                         device="cpu" if device.type == "cpu" else device)
    detector = None
    if config.uses_detector:
        from negprompt.portrait_model.detector import load_detector

        detector = load_detector()
    return time.perf_counter() - start, pipe, detector


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number, 0 or more")
    return value


def default_threads(device: str | None) -> int:
    """Torch CPU threads per process when ``--threads`` is not given (0: leave torch's default). On an accelerator:
    torch's default. On a CPU: 1 per process when several processes share it (a launched sweep), else one per
    core that other work leaves idle (the 1-minute load average), at least 1: threads that wait for a busy core
    cost more than they give."""
    if device not in (None, "cpu") or (device is None and not _no_accelerator()):
        return 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this system
        return 0
    return max(1, min(cores, round(cores - busy)))


def build_parser() -> argparse.ArgumentParser:
    from negprompt.quiet import OneLineParser

    parser = OneLineParser(prog="negprompt sweep", description="Run many comparisons from a config file, on one "
                           "process or many (accelerate launch), resumable.")
    parser.add_argument("config", type=Path, help="the sweep's TOML file")
    parser.add_argument("--out", type=Path, required=True, help="results folder (rerun with the same one to resume; "
                        "a second sweep on a folder in use is refused)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: each process's own device)")
    parser.add_argument("--threads", type=_count, default=None,
                        help="torch CPU threads per process (0: torch's default; default on a CPU: 1 per process "
                             "when several run, else the cores other work leaves idle)")
    parser.add_argument("--allow-outside-files", action="store_true",
                        help="read a negatives_file outside the config's folder (refused by default)")
    parser.add_argument("--list", action="store_true", help="print the specs the config makes and exit")
    parser.add_argument("--stop-after", type=_count, default=None, metavar="N",
                        help="testing aid: each process finishes N comparisons, writes the next one halfway and exits "
                             "with status 3, as a killed sweep would leave it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from negprompt.quiet import quiet_libraries

    quiet_libraries()
    try:
        config = load_config(args.config, allow_outside_files=args.allow_outside_files)
        if args.list:
            for spec in expand(config):
                print(spec_id(spec), spec.mode, len(spec.cells), "cells", spec.cells[0].positive, list(spec.seeds))
            return 0
        check_out_folder(args.out)
        threads = default_threads(args.device) if args.threads is None else args.threads
        if threads:
            import torch

            torch.set_num_threads(threads)
            log.info("torch threads per process: %d%s", threads, "" if args.threads is not None else
                     " (the default here; --threads N to choose)")
        summary = run_sweep(config, args.out, device=args.device, stop_after=args.stop_after)
    except InputError as error:
        print(f"negprompt sweep: error: {error}", file=sys.stderr)
        return 2
    except SweepInterrupted as error:
        print(f"negprompt sweep: {error}", file=sys.stderr)
        return 3
    finally:
        _end_process_group()
    if summary:
        rate = summary["cells_per_s"]
        print(f"{summary['cells_run']} cells in {summary['wall_s']:.1f} s on {summary['processes']} process(es): "
              f"{rate if rate is not None else math.nan:.2f} cells/s; {summary['rows_in_table']} rows in "
              f"{args.out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
