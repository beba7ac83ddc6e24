"""Charades-STA annotations (`vid start end##sentence` per line, seconds) and Charades_v1_<split>.csv durations.

As 2D-TAN's dataset: the end is clipped to the video's length, and queries left with start >= end are dropped.
The prediction key of a query is its 0-based line number in the annotation file.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass

from common import fsio
from grounding.readers.common import InputError, parent, read_text


@dataclass(frozen=True)
class CharadesQuery:
    key: str  # 0-based line number
    video: str
    start: float
    end: float  # clipped to duration
    duration: float
    sentence: str


def read_charades_durations(url: str) -> dict[str, float]:
    rows = csv.DictReader(io.StringIO(read_text(url, "Charades durations")))
    if not rows.fieldnames or "id" not in rows.fieldnames or "length" not in rows.fieldnames:
        raise InputError(f"{url}: a Charades CSV needs 'id' and 'length' columns, has {rows.fieldnames}")
    out = {}
    for n, row in enumerate(rows):
        try:
            length = float(row["length"])
        except (TypeError, ValueError):
            raise InputError(f"{url} row {n + 1} (id {row.get('id')!r}): "
                             f"length {row.get('length')!r} is not a number") from None
        if not (math.isfinite(length) and length > 0):
            raise InputError(f"{url} row {n + 1} (id {row.get('id')!r}): length {row['length']!r} is not a "
                             f"positive number of seconds")
        out[row["id"]] = length
    return out


def default_durations_url(annotations_url: str) -> str:
    name = annotations_url.rstrip("/").rsplit("/", 1)[-1]
    m = re.match(r"charades_sta_(\w+)\.txt$", name)
    split = m.group(1) if m else "test"
    return fsio.join(parent(annotations_url), f"Charades_v1_{split}.csv")


def read_charades_sta(url: str, durations_url: str | None = None) -> tuple[list[CharadesQuery], list[tuple[str, str]]]:
    """Returns (queries, dropped) where dropped lists (key, reason) for lines that are not evaluated."""
    durations_url = durations_url or default_durations_url(url)
    if not fsio.exists(durations_url):
        raise InputError(f"Charades-STA needs the video lengths (Charades_v1_<split>.csv) to clip moments: "
                         f"{durations_url} not found; pass --durations PATH")
    durations = read_charades_durations(durations_url)
    queries, dropped = [], []
    for n, line in enumerate(read_text(url, "Charades-STA annotation").splitlines()):
        key = str(n)
        if not line.strip():
            dropped.append((key, "blank line"))
            continue
        if "##" not in line:
            raise InputError(f"{url} line {n}: expected 'vid start end##sentence', got {line!r}")
        anno, sentence = line.split("##", 1)
        parts = anno.split()
        if len(parts) != 3:
            raise InputError(f"{url} line {n}: expected 'vid start end' before '##', got {anno!r}")
        vid = parts[0]
        try:
            start, end = float(parts[1]), float(parts[2])
        except ValueError:
            raise InputError(f"{url} line {n}: start/end are not numbers: {anno!r}") from None
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start <= end):
            raise InputError(f"{url} line {n}: need 0 <= start <= end in seconds, got {anno!r}")
        if vid not in durations:
            dropped.append((key, "no duration for video"))
            continue
        duration = durations[vid]
        end = min(end, duration)
        if not start < end:
            dropped.append((key, "empty after clipping to the video length"))
            continue
        sentence = sentence.strip()
        if sentence.endswith("."):
            sentence = sentence[:-1]
        queries.append(CharadesQuery(key, vid, start, end, duration, sentence))
    if not queries:
        raise InputError(f"{url}: no Charades-STA queries")
    return queries, dropped
