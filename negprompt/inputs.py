"""Files a user names (a sweep config, a manifest to replay, a negatives file) and folders negprompt writes, checked
before anything reads or runs: regular files of bounded size, UTF-8, never device, proc or sys files, nested at most
``LIMITS.max_nesting`` deep; an output folder that is a folder.

    text = read_text_file(path, "negatives_file", LIMITS.max_text_file_bytes, inside=config.parent)
    data = load_json_file(path, "--replay", LIMITS.max_manifest_bytes)

Every refusal is an ``InputError`` naming the argument, with a message of one line.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from negprompt.errors import LIMITS, InputError

SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))  # never read as a user's text


def read_text_file(path: str | Path, argument: str, max_bytes: int, *, inside: Path | None = None,
                   allow_outside: bool = False, hint: str = "") -> str:
    """The UTF-8 text of ``path``, a regular file of at most ``max_bytes``. With ``inside``, the file (symlinks
    resolved) must lie in that folder unless ``allow_outside``; ``hint`` names the flag that allows it."""
    path = Path(path)
    where = f"{argument} {str(path)!r}"
    real, size = _regular_file(path, argument, where, None if allow_outside else inside, hint)
    if size > max_bytes:
        raise InputError(argument, str(path), f"{where} is {size:,} bytes; at most {max_bytes:,} are read")
    try:
        with open(real, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as error:
        raise InputError(argument, str(path), f"{where}: {error.strerror}") from None
    if len(data) > max_bytes:  # grew since it was looked at
        raise InputError(argument, str(path), f"{where} is over {max_bytes:,} bytes; at most that many are read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise InputError(argument, str(path), f"{where} is not UTF-8 text (line {line}, byte "
                                              f"{error.start})") from None


def _regular_file(path: Path, argument: str, where: str, inside: Path | None, hint: str) -> tuple[Path, int]:
    """The file ``path`` resolves to and its size in bytes: an existing regular file, not a system file, and in the
    folder ``inside`` (when given); else the ``InputError`` that says which it is not."""
    try:
        real = path.resolve(strict=True)
        info = real.stat()
    except FileNotFoundError:
        raise InputError(argument, str(path), f"{where}: no such file") from None
    except (OSError, RuntimeError) as error:  # a symlink loop, a name too long, a denied folder
        raise InputError(argument, str(path), f"{where}: {getattr(error, 'strerror', None) or error}") from None
    if any(real == folder or folder in real.parents for folder in SYSTEM_FOLDERS):
        raise InputError(argument, str(path), f"{where} is a system file ({real}), not a text file of yours")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(argument, str(path), f"{where} is not a regular file (a folder, device or pipe)")
    folder = None if inside is None else Path(inside).resolve()
    if folder is not None and folder not in real.parents:
        raise InputError(argument, str(path), f"{where} lies outside the config's folder {str(folder)!r}"
                                              f"{f' ({hint})' if hint else ''}")
    return real, info.st_size


def nesting(value) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_nested(text: str, parse: Callable[[str], object], argument: str, what: str):
    """``parse(text)`` with nesting at most ``LIMITS.max_nesting`` deep; ``what`` names the format in messages. A
    parser's own errors (``ValueError``s) become one line naming ``argument``."""
    too_deep = f"{argument} is nested more than {LIMITS.max_nesting} levels deep"
    try:
        data = parse(text)
    except RecursionError:
        raise InputError(argument, "", too_deep) from None
    except ValueError as error:  # JSONDecodeError, TOMLDecodeError, an integer of thousands of digits
        raise InputError(argument, "", f"{argument} is not valid {what}: {str(error)[:200]}") from None
    if nesting(data) > LIMITS.max_nesting:
        raise InputError(argument, "", too_deep)
    return data


def load_json_file(path: str | Path, argument: str, max_bytes: int):
    text = read_text_file(path, argument, max_bytes)
    return parse_nested(text, json.loads, f"{argument} {str(path)!r}", "JSON")


def check_out_folder(out: str | Path, argument: str = "--out", *, empty: bool = False) -> Path:
    """``out`` may be written as a folder: it is one or does not exist yet, and no part of its path is a file. With
    ``empty``, it must not hold anything yet."""
    out = Path(out)
    for part in (out, *out.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                what = "is a file" if part == out else f"lies inside {str(part)!r}, which is a file"
                raise InputError(argument, str(out), f"{argument} {str(out)!r} {what}; name a folder")
            break
    if empty and out.is_dir() and any(out.iterdir()):
        raise InputError(argument, str(out), f"{argument} {str(out)!r} already holds files; name a new or empty "
                                             "folder")
    if out.is_dir() and not os.access(out, os.W_OK):
        raise InputError(argument, str(out), f"{argument} {str(out)!r} is not writable")
    return out
