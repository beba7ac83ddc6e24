"""MiningYouTube temporal annotations: one SubRip (.srt) file per video (hildekuehne/Mining_YouTube_dataset), or
GroundingYouTube's ground_seg.json (integer seconds, inclusive ends) for the same videos or the synthetic corpus.

Both become half-open [start, end) intervals in seconds with a normalised action label; second t carries the
label of the interval containing t (the later one where intervals overlap), background elsewhere.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from common import fsio
from grounding.readers.common import InputError, is_dir, norm_label, read_text
from grounding.readers.groundingyoutube import SEGMENTS, find_annotation_dir, read_groundingyoutube

_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*-->\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")

Interval = tuple[float, float, str]


def _seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000.0


def parse_srt(text: str, where: str = "srt") -> list[Interval]:
    out = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff").strip()):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        idx = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if idx is None:
            raise InputError(f"{where}: subtitle block without a 'start --> end' line: {block[:80]!r}")
        m = _TIME.search(lines[idx])
        if not m:
            raise InputError(f"{where}: bad time line {lines[idx]!r}")
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
        label = norm_label(" ".join(lines[idx + 1:]))
        if not label:
            raise InputError(f"{where}: subtitle at {lines[idx]!r} has no action label")
        if end < start:
            raise InputError(f"{where}: subtitle ends before it starts: {lines[idx]!r}")
        out.append((start, end, label))
    return out


def read_miningyoutube(url: str) -> dict[str, list[Interval]]:
    if url.endswith(".srt"):
        name = url.rstrip("/").rsplit("/", 1)[-1][:-4]
        return {name: parse_srt(read_text(url, "MiningYouTube srt"), url)}
    if is_dir(url):
        srts = [n for n in fsio.listdir(url) if n.endswith(".srt")]
        if not srts and fsio.exists(fsio.join(url, "srt")):
            return read_miningyoutube(fsio.join(url, "srt"))
        if srts:
            return {n[:-4]: parse_srt(read_text(fsio.join(url, n), "MiningYouTube srt"), fsio.join(url, n))
                    for n in srts}
    find_annotation_dir(url)  # raises a clear error when there is no ground_seg.json either
    videos = read_groundingyoutube(url)
    return {vid: [(float(a), float(b + 1), step) for a, b, step in v.segments] for vid, v in videos.items()}


def labels_per_second(intervals: list[Interval], num_seconds: int, label_id: Callable[[str], int]) -> np.ndarray:
    """Integer label of each second 0..num_seconds-1; label_id maps a name to its id (background to 0)."""
    t = np.arange(num_seconds)
    out = np.zeros(num_seconds, dtype=np.int64)
    for start, end, label in intervals:
        out[(t >= start) & (t < end)] = label_id(label)
    return out


__all__ = ["Interval", "SEGMENTS", "labels_per_second", "parse_srt", "read_miningyoutube"]
