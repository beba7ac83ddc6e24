"""Shared reader helpers: one error type that names the file and key, fsspec-backed reads, label spelling."""
from __future__ import annotations

import json
import re
from typing import Any

from common import fsio
from common.errors import UserError

BACKGROUND = "background"


class InputError(UserError, ValueError):
    """A malformed annotation or prediction file; the message names the file and the offending key."""


def read_json(url: str, what: str) -> Any:
    if not fsio.exists(url):
        raise InputError(f"{what} file not found: {url}")
    try:
        return json.loads(fsio.read_bytes(url))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} file {url} is not valid JSON: {e}") from None


def read_text(url: str, what: str) -> str:
    if not fsio.exists(url):
        raise InputError(f"{what} file not found: {url}")
    return fsio.read_bytes(url).decode("utf-8-sig")


def is_dir(url: str) -> bool:
    fs, path = fsio.filesystem(url)
    return fs.isdir(path)


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


def norm_label(text: Any) -> str:
    """One spelling per action: lower case, underscores as spaces (MiningYouTube writes crack_eggs), single spaces."""
    return re.sub(r"\s+", " ", str(text).replace("_", " ")).strip().lower()


def as_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: expected a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def as_pair(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"{where}: expected [start, end], got {value!r}")
    return as_number(value[0], f"{where}[0]"), as_number(value[1], f"{where}[1]")


def as_box(value: Any, where: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise InputError(f"{where}: expected [x1, y1, x2, y2], got {value!r}")
    return [as_number(v, f"{where}[{i}]") for i, v in enumerate(value)]


def as_ordered_box(value: Any, where: str) -> list[float]:
    """A box a prediction can mean: finite, x1 <= x2 and y1 <= y2 (a zero-width box is allowed)."""
    b = as_box(value, where)
    if b[2] < b[0] or b[3] < b[1]:
        raise InputError(f"{where}: box {value!r} has x2 < x1 or y2 < y1 (boxes are [x1, y1, x2, y2])")
    return b


def as_point(value: Any, where: str) -> tuple[float, float]:
    """A pixel position: finite and not left of or above the frame."""
    x, y = as_pair(value, where)
    if x < 0 or y < 0:
        raise InputError(f"{where}: point {value!r} lies outside the frame (negative pixel coordinate)")
    return x, y


def as_int_key(key: Any, where: str) -> int:
    try:
        return int(str(key))
    except ValueError:
        raise InputError(f"{where}: key {key!r} is not an integer") from None
