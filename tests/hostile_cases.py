"""Bad input for the app's /compare endpoint, as a table: (overrides of a good call, the form label the refusal must
start with). Every refusal names its field; nothing is coerced (no rounding, no parsing of numbers given as text).

The served test app (tests/served_app.py) takes at most 4 negatives, 4 seeds (rows), 10 steps and sides of 1024.
"""

from __future__ import annotations

GOOD = dict(prompt="portrait photo of a man", negative_prompts=["mustache", "glasses"], seed=3, steps=3,
            guidance_scale=7.5, size="auto", rows=1, scheduler="Default")

INVISIBLE = ["", " ", "\t", "\n", "\r\n", "\u00a0", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e",
             "\u2028", "\u2029", "\u3000", "\u180e", "\u200b \u200b", " \t\n ", "\x00", "\x07"]
NOT_TEXT = [None, 0, 1.5, True, [], ["portrait"], {"text": "portrait"}]
NOT_WHOLE_NUMBERS = [1.5, "3", "three", [3], {"value": 3}, True, None, float("nan"), float("inf"), float("-inf"),
                     "1e3", 2.000001]
TOO_LONG = ["x" * 2001, "word " * 500, "y" * 100_000, "z" * 1_000_000]

CASES: list[tuple[str, dict, str]] = []


def case(name: str, label: str, **overrides) -> None:
    CASES.append((name, overrides, label))


# Prompt: text, visible, within LIMITS.max_text_chars
for i, text in enumerate(INVISIBLE):
    case(f"prompt-invisible-{i}", "Prompt", prompt=text)
    case(f"prompt-invisible-padded-{i}", "Prompt", prompt=text * 3)
for i, value in enumerate(NOT_TEXT):
    case(f"prompt-not-text-{i}", "Prompt", prompt=value)
for i, text in enumerate(TOO_LONG):
    case(f"prompt-too-long-{i}", "Prompt", prompt=text)

# Negative prompts: a list of visible texts, at most 4 here
for i, text in enumerate(INVISIBLE):
    case(f"negative-invisible-{i}", "Negative prompt 2", negative_prompts=["hat", text])
for i, value in enumerate([None, 0, 1.5, True, ["hat"], {"text": "hat"}]):
    case(f"negative-not-text-{i}", "Negative prompt 1", negative_prompts=[value])
for i, value in enumerate([5, 1.5, True, {"0": "hat"}]):
    case(f"negatives-not-a-list-{i}", "Negative prompts", negative_prompts=value)
for i, text in enumerate(TOO_LONG):
    case(f"negative-too-long-{i}", "Negative prompt 3", negative_prompts=["hat", "glasses", text])
for n in (5, 8, 50, 1000):
    case(f"negatives-too-many-{n}", "Negative prompts", negative_prompts=[f"word{i}" for i in range(n)])

# Whole numbers: seed (0 to 2**32-1), steps (1 to 10 here), rows (1 to 4 here)
for name, label in (("seed", "Seed"), ("steps", "Steps"), ("rows", "Seeds (rows)")):
    for i, value in enumerate(NOT_WHOLE_NUMBERS):
        case(f"{name}-not-a-whole-number-{i}", label, **{name: value})
for i, value in enumerate([-1, -(2**31), 2**32, 2**63, 10**400, -(10**400)]):
    case(f"seed-out-of-range-{i}", "Seed", seed=value)
case("seeds-past-the-largest", "Seed", seed=2**32 - 2, rows=3)
for i, value in enumerate([0, -1, 11, 200, 201, 10**9, 10**400]):
    case(f"steps-out-of-range-{i}", "Steps", steps=value)
for i, value in enumerate([0, -1, 5, 64, 10**400]):
    case(f"rows-out-of-range-{i}", "Seeds (rows)", rows=value)

# Guidance scale: a finite number above 1 and at most 100
for i, value in enumerate([1, 1.0, 0, -5, 0.999, 100.5, 1e9, 10**400, float("nan"), float("inf"), float("-inf"),
                           "7.5", [7.5], {"g": 7.5}, True, None]):
    case(f"guidance-{i}", "Guidance scale", guidance_scale=value)

# Size: "WxH" with sides from 8 to 1024 here, or "auto"
for i, value in enumerate(["huge", "512", "512x", "x512", "512x512x3", "-64x64", "0x0", "4x4", "7x512",
                           "2048x2048", "100000x100000", "1e3x1e3", "512 by 512", "٥١٢x٥١٢", 512, [512, 512],
                           None, {"w": 512}, "512x512" + "0" * 50]):
    case(f"size-{i}", "Size", size=value)

# Model: only the offered one here
for i, value in enumerate(["someone/else", "../../etc", "/etc/passwd", "/etc", "stabilityai/stable-diffusion-3",
                           "x" * 3000, 5, ["negprompt-portraits"], {"name": "m"}, "\u200b"]):
    case(f"model-{i}", "Model", model=value)

# Scheduler: one of the offered names
for i, value in enumerate(["bogus", "euler a", "Euler a ", 5, ["Euler"], {"s": 1}, True, "x" * 3000]):
    case(f"scheduler-{i}", "Scheduler", scheduler=value)

# Cost: inside every cap, but far over the per-request budget on a CPU
case("cost-over-budget", "Steps", steps=10, rows=4, size="1024x1024", negative_prompts=["a", "b"])
case("cost-over-budget-one-row", "Steps", steps=10, size="1024x1024", negative_prompts=["a", "b", "c"])
case("cost-over-budget-wide", "Steps", steps=10, rows=2, size="1024x768", negative_prompts=["a", "b", "c"])
