"""Bad input for the command line, ``--replay`` manifests and sweep configs, as tables: each case is refused with one
line on stderr and exit status 2, before any model loads and before anything is written.

A case is (name, arguments, files, expected): ``arguments`` follow ``negprompt`` (``sweep`` first for a sweep);
``{tmp}`` stands for the case's own folder, where ``files`` (name -> text, bytes, or a special file: ``FIFO``,
``("link", target)``, ``("dir",)``) are made first; ``expected`` is a piece of the one error line. The model named
by every case does not exist, so a case that got past the checks would fail on it instead ("no such folder").
"""

from __future__ import annotations

import json

NO_MODEL = "{tmp}/no-such-model"
BASE = ["--model", NO_MODEL, "--prompt", "portrait photo of a man", "--out", "{tmp}/out"]
FIFO = ("fifo",)
DIR = ("dir",)


def link(target: str) -> tuple[str, str]:
    return ("link", target)


def manifest(spec: dict | None = None, **cell) -> str:
    """A replayable manifest: a good one-cell spec with ``spec`` fields and ``cell`` fields replaced."""
    good = {"seed": 1, "positive": "portrait photo of a man", "negative": "hat", "guidance": {"method": "cfg"},
            "window": [0.0, 1.0], "label": "- hat", "reference": None, "row": 0, "kind": "negative", "term": ""}
    data = {"version": 1, "model": NO_MODEL, "steps": 2, "guidance_scale": 7.5, "height": None, "width": None,
            "sampler": "Default", "baseline": "empty", "mode": "negatives", "cells": [{**good, **cell}]}
    return json.dumps({"spec": {**data, **(spec or {})}})


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


CLI_CASES: list[tuple[str, list[str], dict, str]] = []
SWEEP_CASES: list[tuple[str, list[str], dict, str]] = []


def cli(name: str, args: list[str], expected: str, files: dict | None = None, base: bool = True) -> None:
    CLI_CASES.append((name, (BASE if base else []) + args, files or {}, expected))


def replay(name: str, text: str | bytes, expected: str) -> None:
    CLI_CASES.append((name, ["--replay", "{tmp}/manifest.json", "--out", "{tmp}/out"], {"manifest.json": text},
                      expected))


# Seeds: counted before any range is expanded
cli("seeds-range-of-every-seed", ["--seeds", "0-4294967295"], "--seeds")
cli("seeds-range-past-the-largest", ["--seeds", "4294967290-4294967300"], "4294967295")
cli("seeds-too-many-listed", ["--seeds", ",".join(map(str, range(100_000)))], "--seeds")
cli("seeds-not-numbers", ["--seeds", "a,b"], "--seeds")
cli("seeds-negative", ["--seeds", "-5"], "--seeds")
cli("seeds-reversed-range", ["--seeds", "9-3"], "--seeds")
cli("seeds-repeated", ["--seeds", "1,1"], "twice")
cli("seed-huge", ["--seed", str(10**30)], "seed")
cli("seed-not-a-number", ["--seed", "1.5"], "--seed")

# Numbers given as text that is no number
cli("steps-not-a-number", ["--steps", "abc"], "--steps")
cli("guidance-not-a-number", ["--guidance", "abc"], "--guidance")
cli("guidance-nan", ["--guidance", "nan"], "guidance")
cli("guidance-infinite", ["--guidance", "inf"], "guidance")
cli("size-not-a-size", ["--size", "axb"], "--size")
cli("size-zero", ["--size", "0x0"], "height=0")
cli("size-huge", ["--size", "99999999999999999999x64"], "width")
cli("max-batch-not-a-number", ["--max-batch", "x"], "--max-batch")
cli("threads-of-a-sweep-negative", ["sweep", "{tmp}/sweep.toml", "--out", "{tmp}/out", "--threads", "-1"],
    "--threads", {"sweep.toml": 'prompts = ["a man"]\nnegatives = ["hat"]\n'}, base=False)
cli("scheduler-unknown", ["--scheduler", "bogus"], "--scheduler")
cli("baseline-unknown", ["--baseline", "none"], "--baseline")
cli("flag-unknown", ["--bogus"], "--bogus")
cli("timing-not-numbers", ["--negative", "hat", "--timing", "a,b"], "--timing")
cli("timing-nan", ["--negative", "hat", "--timing", "nan"], "starts[0]")
cli("timing-empty", ["--negative", "hat", "--timing", ","], "start")

# Guidance methods
cli("method-a-number", ["--negative", "hat", "--guidance-methods", "5"], "'5'")
cli("method-empty-list", ["--negative", "hat", "--guidance-methods", ",,"], "method")
cli("method-value-nan", ["--negative", "hat", "--guidance-methods", "cfg-rescale:nan"], "finite")
cli("method-value-text", ["--negative", "hat", "--guidance-methods", "cfg-rescale:abc"], "not a number")
cli("method-value-for-cfg", ["--negative", "hat", "--guidance-methods", "cfg:1"], "takes no value")
cli("method-name-huge", ["--negative", "hat", "--guidance-methods", "m" * 100_000], "guidance method")

# Texts
cli("prompt-a-megabyte", ["--prompt", "x" * 1_000_000], "prompt")
cli("negative-a-megabyte", ["--negative", "y" * 1_000_000], "negatives[0]")
cli("negative-invisible", ["--negative", "\u200b"], "negatives[0]")
cli("negative-window-twice", ["--negative", "hat@0.5@0.6"], "negatives[0]")
cli("other-positive-a-megabyte", ["--negative", "hat", "--other-positive", "z" * 1_000_000], "other_positive")
cli("model-a-null-byte", ["--negative", "hat", "--model", "a\x00b"], "model")
cli("negatives-too-many", [x for i in range(100) for x in ("--negative", f"word{i}")], "64")

# Explorer modes: one negative, visible terms
cli("leave-one-out-two-negatives", ["--negative", "hat, glasses", "--negative", "blurry", "--leave-one-out"],
    "exactly one negative")
cli("terms-alone-two-negatives", ["--negative", "hat, glasses", "--negative", "blurry", "--terms-alone"],
    "exactly one negative")
cli("terms-alone-invisible-term", ["--negative", "hat, \u200b", "--terms-alone"], "negatives[0]")
cli("leave-one-out-invisible-term", ["--negative", "hat, \u2060, glasses", "--leave-one-out"], "negatives[0]")
cli("leave-one-out-no-terms", ["--negative", " , , ", "--leave-one-out"], "negatives[0]")
cli("leave-one-out-too-many-terms", ["--negative", ", ".join(f"t{i}" for i in range(100)), "--leave-one-out"],
    "64")

# Files named on the command line
cli("negatives-file-missing", ["--negatives-file", "{tmp}/none.txt"], "--negatives-file")
cli("negatives-file-a-folder", ["--negatives-file", "{tmp}/folder"], "regular file", {"folder": DIR})
cli("negatives-file-dev-zero", ["--negatives-file", "/dev/zero"], "system file")
cli("negatives-file-proc", ["--negatives-file", "/proc/self/environ"], "--negatives-file")
cli("negatives-file-fifo", ["--negatives-file", "{tmp}/pipe"], "regular file", {"pipe": FIFO})
cli("negatives-file-link-to-proc", ["--negatives-file", "{tmp}/env.txt"], "--negatives-file",
    {"env.txt": link("/proc/self/environ")})
cli("negatives-file-too-large", ["--negatives-file", "{tmp}/big.txt"], "bytes", {"big.txt": "hat\n" * 100_000})
cli("negatives-file-not-utf8", ["--negatives-file", "{tmp}/latin.txt"], "UTF-8", {"latin.txt": b"h\xe4t\n"})
cli("negatives-file-binary", ["--negatives-file", "{tmp}/bin.txt"], "UTF-8", {"bin.txt": bytes(range(256))})
cli("out-is-a-file", ["--negative", "hat", "--out", "{tmp}/file.txt"], "--out", {"file.txt": "x"})
cli("out-inside-a-file", ["--negative", "hat", "--out", "{tmp}/file.txt/out"], "--out", {"file.txt": "x"})

# --replay: the manifest file, its JSON, its spec and its cells
replay("replay-deeply-nested-json", '{"spec": ' + nested(100_000) + "}", "nested")
replay("replay-deeply-nested-spec", manifest({"mode": json.loads(nested(60))}), "nested")
replay("replay-not-utf8", b'{"spec": "\xff"}', "UTF-8")
replay("replay-not-json", "{ not json", "not valid JSON")
replay("replay-a-list", "[1, 2]", "manifest")
replay("replay-guidance-a-number", manifest(guidance=5), "guidance")
replay("replay-guidance-null", manifest(guidance=None), "guidance")
replay("replay-guidance-list-name", manifest(guidance={"method": ["cfg"]}), "guidance")
replay("replay-guidance-huge-name", manifest(guidance="g" * 1_000_000), "guidance")
replay("replay-label-a-megabyte", manifest(label="L" * 1_000_000), "cells[0].label")
replay("replay-term-a-megabyte", manifest(term="T" * 1_000_000), "cells[0].term")
replay("replay-kind-a-megabyte", manifest(kind="K" * 1_000_000), "cells[0].kind")
replay("replay-label-not-text", manifest(label=5), "cells[0].label")
replay("replay-too-many-cells", manifest({"cells": [json.loads(manifest())["spec"]["cells"][0]] * 1000}), "cells")
replay("replay-cell-not-an-object", manifest({"cells": [5]}), "cells")
replay("replay-cell-unknown-field", manifest(bogus=1), "bogus")
replay("replay-seed-text", manifest(seed="1"), "cells[0].seed")
replay("replay-window-text", manifest(window="all"), "cells[0].window")
replay("replay-window-nan", manifest(window=[0, "nan"]), "cells[0].window")
replay("replay-reference-self", manifest(reference=0), "cells[0].reference")
replay("replay-row-huge", manifest(row=10**30), "cells[0].row")
replay("replay-steps-text", manifest({"steps": "abc"}), "steps")
replay("replay-sampler-a-number", manifest({"sampler": 5}), "sampler")
replay("replay-sampler-unknown", manifest({"sampler": "bogus"}), "sampler")
replay("replay-mode-a-megabyte", manifest({"mode": "M" * 1_000_000}), "mode")
replay("replay-model-a-list", manifest({"model": ["a"]}), "model")
replay("replay-version-text", manifest({"version": "1"}), "version")
replay("replay-huge-integer", manifest({"steps": 0}).replace('"steps": 0', '"steps": ' + "9" * 5000), "JSON")
replay("replay-additions-a-list", manifest()[:-1] + ', "model_additions": [1]}', "model_additions")
replay("replay-additions-too-many", manifest()[:-1] + ', "model_additions": {"loras": ['
       + ", ".join(['{"source": "x", "weight": 1, "sha256": "0"}'] * 1000) + "]}}", "model_additions")
CLI_CASES.append(("replay-dev-zero", ["--replay", "/dev/zero", "--out", "{tmp}/out"], {}, "system file"))
CLI_CASES.append(("replay-a-fifo", ["--replay", "{tmp}/pipe", "--out", "{tmp}/out"], {"pipe": FIFO},
                  "regular file"))
CLI_CASES.append(("replay-too-large", ["--replay", "{tmp}/big.json", "--out", "{tmp}/out"],
                  {"big.json": " " * 20_000_000 + manifest()}, "bytes"))
CLI_CASES.append(("replay-out-is-a-file", ["--replay", "{tmp}/manifest.json", "--out", "{tmp}/file.txt"],
                  {"manifest.json": manifest(), "file.txt": "x"}, "--out"))
CLI_CASES.append(("replay-out-holds-files", ["--replay", "{tmp}/manifest.json", "--out", "{tmp}/full"],
                  {"manifest.json": manifest(), "full": DIR, "full/keep.txt": "mine"}, "--out"))


# Sweep configs
def sweep(name: str, config: str, expected: str, files: dict | None = None, args: list[str] | None = None) -> None:
    SWEEP_CASES.append((name, ["sweep", "{tmp}/sweep.toml", "--out", "{tmp}/out", *(args or [])],
                        {"sweep.toml": config, **(files or {})}, expected))


GOOD_SWEEP = (f'model = "{NO_MODEL}"\nsteps = 2\nprompts = ["portrait photo of a man"]\n'
              'negatives = ["hat", "glasses"]\n')


def with_keys(**keys) -> str:
    """The good config with ``keys`` (TOML value texts) set."""
    lines = [ln for ln in GOOD_SWEEP.splitlines() if ln.split(" = ")[0] not in keys]
    return "\n".join([*lines, *(f"{k} = {v}" for k, v in keys.items())]) + "\n"


sweep("sweep-seeds-every-seed", with_keys(seeds='"0-4294967295"'), "seeds")
sweep("sweep-seeds-hundred-million", with_keys(seeds='"0-99999999"'), "seeds")
sweep("sweep-seeds-ranges-adding-up", with_keys(seeds="[" + ", ".join(f'"{i * 10**6}-{i * 10**6 + 999999}"'
                                                                      for i in range(50)) + "]"), "seeds")
sweep("sweep-seeds-past-the-largest", with_keys(seeds='"4294967290-4294967299"'), "4294967295")
sweep("sweep-seeds-negative", with_keys(seeds="-1"), "seeds")
sweep("sweep-seeds-float", with_keys(seeds="1.5"), "seeds")
sweep("sweep-seeds-nested", with_keys(seeds="[[1]]"), "seeds")
sweep("sweep-guidance-text", with_keys(guidance='"abc"'), "guidance")
sweep("sweep-guidance-list", with_keys(guidance="[1]"), "guidance")
sweep("sweep-guidance-nan", with_keys(guidance="nan"), "guidance")
sweep("sweep-steps-text", with_keys(steps='"abc"'), "steps")
sweep("sweep-steps-float", with_keys(steps="2.5"), "steps")
sweep("sweep-size-bad", with_keys(size='"0x0"'), "size")
sweep("sweep-size-a-number", with_keys(size="512"), "size")
sweep("sweep-sampler-unknown", with_keys(sampler='"bogus"'), "sampler")
sweep("sweep-sampler-a-number", with_keys(sampler="5"), "sampler")
sweep("sweep-baseline-unknown", with_keys(baseline='"none"'), "baseline")
sweep("sweep-detector-text", with_keys(detector='"yes"'), "detector")
sweep("sweep-model-a-number", with_keys(model="5"), "model")
sweep("sweep-model-a-megabyte", with_keys(model='"' + "m" * 900_000 + '"'), "model")
sweep("sweep-model-empty", with_keys(model='""'), "model")
sweep("sweep-timing-text", with_keys(axes='["timing"]', timing='["a"]'), "timing")
sweep("sweep-timing-a-string", with_keys(axes='["timing"]', timing='"0.5"'), "timing")
sweep("sweep-timing-a-number", with_keys(axes='["timing"]', timing="5"), "timing")
sweep("sweep-timing-too-many", with_keys(axes='["timing"]', timing="[" + ", ".join(["0.5"] * 1000) + "]"),
      "timing")
sweep("sweep-method-a-number", with_keys(axes='["methods"]', methods="[5]"), "methods")
sweep("sweep-methods-a-string", with_keys(axes='["methods"]', methods='"cfg"'), "methods")
sweep("sweep-method-a-list", with_keys(axes='["methods"]', methods="[[1]]"), "methods")
sweep("sweep-method-unknown-table", with_keys(axes='["methods"]', methods='[{method = ["cfg"]}]'), "guidance method")
sweep("sweep-axes-a-string", with_keys(axes='"plain"'), "axes")
sweep("sweep-axes-a-list-in-a-list", with_keys(axes="[[1]]"), "axis")
sweep("sweep-axes-repeated", with_keys(axes='["plain", "plain"]'), "axes")
sweep("sweep-prompts-a-string", with_keys(prompts='"a man"'), "prompts")
sweep("sweep-prompt-a-megabyte", with_keys(prompts='["' + "p" * 900_000 + '"]'), "prompt")
sweep("sweep-prompts-too-many", with_keys(prompts="[" + ", ".join(f'"p{i}"' for i in range(20_000)) + "]"),
      "prompts")
sweep("sweep-negative-a-megabyte", with_keys(negatives='["' + "n" * 900_000 + '"]'), "negatives")
sweep("sweep-negative-invisible", with_keys(negatives='["\\u200b"]'), "negatives[0]")
sweep("sweep-negatives-too-many", with_keys(negatives="[" + ", ".join(f'"n{i}"' for i in range(20_000)) + "]"),
      "negatives")
sweep("sweep-negatives-too-many-for-a-row", with_keys(negatives="[" + ", ".join(f'"n{i}"' for i in range(80))
                                                      + "]"), "negatives")
sweep("sweep-negatives-file-a-number", with_keys(negatives_file="5"), "negatives_file")
sweep("sweep-negatives-file-etc-passwd", with_keys(negatives_file='"/etc/passwd"'), "negatives_file")
sweep("sweep-negatives-file-outside", with_keys(negatives_file='"../outside.txt"'), "negatives_file")
sweep("sweep-negatives-file-proc", with_keys(negatives_file='"/proc/self/environ"'), "negatives_file")
sweep("sweep-negatives-file-dev-zero", with_keys(negatives_file='"/dev/zero"'), "negatives_file")
sweep("sweep-negatives-file-link-out", with_keys(negatives_file='"list.txt"'), "negatives_file",
      {"list.txt": link("/etc/passwd")})
sweep("sweep-negatives-file-fifo", with_keys(negatives_file='"pipe"'), "negatives_file", {"pipe": FIFO})
sweep("sweep-negatives-file-too-large", with_keys(negatives_file='"big.txt"'), "bytes", {"big.txt": "hat\n" * 100_000})
sweep("sweep-negatives-file-not-utf8", with_keys(negatives_file='"latin.txt"'), "UTF-8", {"latin.txt": b"h\xe4t\n"})
sweep("sweep-groups-a-string", with_keys(groups='"x"'), "groups")
sweep("sweep-groups-of-numbers", with_keys(groups="[5]"), "groups")
sweep("sweep-group-unknown-key", GOOD_SWEEP + '[[groups]]\nprompts = ["a woman"]\nnegativs = ["hat"]\n', "negativs")
sweep("sweep-groups-too-many", GOOD_SWEEP + '[[groups]]\nprompts = ["a woman"]\n' * 2000, "groups")
sweep("sweep-unknown-key", with_keys(stepz="3"), "stepz")
sweep("sweep-deeply-nested", with_keys(seeds=nested(100_000)), "nested")
sweep("sweep-nested-table", GOOD_SWEEP + f"[{'.'.join(['t'] * 1000)}]\n", "nested")
sweep("sweep-images-over-the-cap", with_keys(seeds='"0-999999"', negatives="[" + ", ".join(f'"n{i}"'
                                                                                         for i in range(60)) + "]"),
      "images")
sweep("sweep-seeds-per-block-zero", with_keys(seeds_per_block="0"), "seeds_per_block")
sweep("sweep-seeds-per-block-huge", with_keys(seeds_per_block=str(2**62)), "seeds_per_block")
SWEEP_CASES.append(("sweep-config-not-utf8", ["sweep", "{tmp}/sweep.toml", "--out", "{tmp}/out"],
                    {"sweep.toml": b'prompts = ["\xff"]\n'}, "UTF-8"))
SWEEP_CASES.append(("sweep-config-not-toml", ["sweep", "{tmp}/sweep.toml", "--out", "{tmp}/out"],
                    {"sweep.toml": "prompts = [\n"}, "TOML"))
SWEEP_CASES.append(("sweep-config-a-folder", ["sweep", "{tmp}/folder", "--out", "{tmp}/out"], {"folder": DIR},
                    "regular file"))
SWEEP_CASES.append(("sweep-config-dev-zero", ["sweep", "/dev/zero", "--out", "{tmp}/out"], {}, "system file"))
SWEEP_CASES.append(("sweep-config-too-large", ["sweep", "{tmp}/sweep.toml", "--out", "{tmp}/out"],
                    {"sweep.toml": GOOD_SWEEP + "#" * 2_000_000 + "\n"}, "bytes"))
sweep("sweep-out-broken-record", GOOD_SWEEP, "sweep.json", {"out/sweep.json": "{ not json"})
sweep("sweep-out-deep-record", GOOD_SWEEP, "sweep.json", {"out/sweep.json": nested(100_000)})
sweep("sweep-out-is-a-file", GOOD_SWEEP, "--out", {"file.txt": "x"}, ["--out", "{tmp}/file.txt"])
sweep("sweep-stop-after-negative", GOOD_SWEEP, "--stop-after", args=["--stop-after", "-1"])
sweep("sweep-threads-text", GOOD_SWEEP, "--threads", args=["--threads", "many"])
SWEEP_CASES.append(("sweep-missing-config", ["sweep", "{tmp}/none.toml", "--out", "{tmp}/out"], {}, "none.toml"))
SWEEP_CASES.append(("report-not-a-sweep", ["report", "{tmp}"], {}, "sweep.json"))
SWEEP_CASES.append(("report-broken-record", ["report", "{tmp}"], {"sweep.json": "{ not json"}, "sweep.json"))
SWEEP_CASES.append(("report-deep-record", ["report", "{tmp}"], {"sweep.json": nested(100_000)}, "sweep.json"))

ALL_CASES = CLI_CASES + SWEEP_CASES
