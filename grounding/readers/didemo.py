"""DiDeMo annotations (LisaAnne/LocalizingMoments data/{train,val,test}_data.json)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grounding.readers.common import InputError, read_json

NUM_CHUNKS = 6  # 5-second chunks 0..5; the 21 candidate moments are [s, e] with 0 <= s <= e <= 5


@dataclass(frozen=True)
class DidemoQuery:
    key: str  # str(annotation_id): the prediction file's key
    video: str
    description: str
    times: np.ndarray  # (A, 2) int, inclusive chunk indices, one row per annotator


def candidate_moments() -> list[tuple[int, int]]:
    return [(s, e) for s in range(NUM_CHUNKS) for e in range(s, NUM_CHUNKS)]


def read_didemo(url: str) -> list[DidemoQuery]:
    data = read_json(url, "DiDeMo annotation")
    if not isinstance(data, list):
        raise InputError(f"{url}: expected a list of DiDeMo items, got {type(data).__name__}")
    out, seen = [], set()
    for i, item in enumerate(data):
        where = f"{url} item {i}"
        if not isinstance(item, dict) or "annotation_id" not in item or "times" not in item:
            raise InputError(f"{where}: needs 'annotation_id' and 'times'")
        key = str(item["annotation_id"])
        if key in seen:
            raise InputError(f"{where}: duplicate annotation_id {key}")
        seen.add(key)
        times = item["times"]
        if not isinstance(times, list) or not times:
            raise InputError(f"{where} (annotation_id {key}): 'times' must be a non-empty list of [s, e]")
        arr = np.asarray(times)
        if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{where} (annotation_id {key}): 'times' must hold integer [s, e] pairs, got {times!r}")
        if (arr[:, 0] > arr[:, 1]).any() or (arr < 0).any() or (arr >= NUM_CHUNKS).any():
            raise InputError(f"{where} (annotation_id {key}): chunk indices outside 0 <= s <= e <= 5: {times!r}")
        out.append(DidemoQuery(key, str(item.get("video", "")), str(item.get("description", "")),
                               arr.astype(np.int64)))
    return out
