"""Prediction files, one JSON object each (formats in docs/evaluation.md). Every check names the key at fault."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from grounding.readers.common import (
    BACKGROUND,
    InputError,
    as_int_key,
    as_number,
    as_ordered_box,
    as_pair,
    as_point,
    norm_label,
    read_json,
)
from grounding.tube import Tube

MAX_SECOND = 24 * 3600  # a per-second key past a day is no video's second (and would size the arrays)


def _top(url: str) -> dict:
    data = read_json(url, "predictions")
    if not isinstance(data, dict):
        raise InputError(f"{url}: predictions must be one JSON object keyed by query/video id, "
                         f"got {type(data).__name__}")
    return data


def check_keys(preds: dict, known: Iterable[str], url: str, what: str) -> list[str]:
    """Unknown keys are an error (a wrong split or id scheme); returns the known keys with no prediction."""
    known = list(known)
    known_set = set(known)
    unknown = [k for k in preds if k not in known_set]
    if unknown:
        raise InputError(f"{url}: {len(unknown)} prediction key(s) are not {what} of the annotations, "
                         f"e.g. {unknown[0]!r}")
    return [k for k in known if k not in preds]


def _ranked_pairs(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a ranked list of [start, end], got {type(value).__name__}")
    rows = [as_pair(v, f"{where}[{i}]") for i, v in enumerate(value)]
    for i, (s, e) in enumerate(rows):
        if s > e:
            raise InputError(f"{where}[{i}]: start {s} is after end {e}")
        if s < 0:
            raise InputError(f"{where}[{i}]: negative start {s}")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def read_moment_predictions(url: str, chunks: int | None = None) -> dict[str, np.ndarray]:
    """{key: [[s, e], ...]} ranked best first, 0 <= s <= e. chunks=N (DiDeMo): whole chunk indices below N."""
    out = {}
    for key, value in _top(url).items():
        where = f"{url} [{key!r}]"
        arr = _ranked_pairs(value, where)
        if chunks is not None:
            if not np.all(arr == np.round(arr)):
                raise InputError(f"{where}: DiDeMo moments are integer chunk indices [s, e], got {value!r}")
            beyond = np.nonzero(arr[:, 1] >= chunks)[0]
            if len(beyond):
                raise InputError(f"{where}[{beyond[0]}]: chunk index {int(arr[beyond[0], 1])} is outside the video "
                                 f"(DiDeMo chunks are 0..{chunks - 1}), got {value[beyond[0]]!r}")
            arr = arr.astype(np.int64)
        out[str(key)] = arr
    return out


def read_stvg_predictions(url: str) -> dict[str, Tube]:
    """{key: {"sted": [start_frame, end_frame], "boxes": {"<frame>": [x1, y1, x2, y2]}}}; sted is half-open.
    Each becomes a grounding.tube.Tube with that sted."""
    out = {}
    for key, value in _top(url).items():
        where = f"{url} [{key!r}]"
        if not isinstance(value, dict) or "sted" not in value:
            raise InputError(f"{where}: expected {{'sted': [start_frame, end_frame], 'boxes': {{frame: box}}}}")
        s, e = as_pair(value["sted"], f"{where}.sted")
        if s != int(s) or e != int(e):
            raise InputError(f"{where}.sted: frame indices must be integers, got {value['sted']!r}")
        if s < 0 or e < s:
            raise InputError(f"{where}.sted: need 0 <= start_frame <= end_frame, got {value['sted']!r}")
        boxes_raw = value.get("boxes", {})
        if not isinstance(boxes_raw, dict):
            raise InputError(f"{where}.boxes: expected {{frame: [x1, y1, x2, y2]}}, got {type(boxes_raw).__name__}")
        boxes = {}
        for f, b in boxes_raw.items():
            frame = as_int_key(f, f"{where}.boxes")
            if frame < 0:
                raise InputError(f"{where}.boxes[{f!r}]: negative frame index")
            boxes[frame] = np.asarray(as_ordered_box(b, f"{where}.boxes[{f!r}]"))
        out[str(key)] = Tube.from_boxes(boxes, (int(s), int(e)))
    return out


@dataclass
class SecondPrediction:
    step: str  # normalised; "background" when absent
    score: float
    point: tuple[float, float] | None
    box: list[float] | None


def read_per_second_predictions(url: str) -> dict[str, dict[int, SecondPrediction]]:
    """{vid: {"<second>": {"step": str, "score": float, "point": [x, y], "box": [x1, y1, x2, y2]}}}; every field
    optional (step defaults to background, score to 1)."""
    return parse_per_second_predictions(_top(url), url)


def parse_per_second_predictions(obj: dict, url: str = "predictions") -> dict[str, dict[int, SecondPrediction]]:
    """read_per_second_predictions on an object already in memory (grounding.calibrate scores many decodings of
    one encoding without writing each to a file)."""
    out = {}
    for vid, per_sec in obj.items():
        where = f"{url} [{vid!r}]"
        if not isinstance(per_sec, dict):
            raise InputError(f"{where}: expected {{second: {{step, score, point, box}}}}, got {type(per_sec).__name__}")
        secs = {}
        for k, v in per_sec.items():
            w = f"{where}[{k!r}]"
            t = as_int_key(k, where)
            if t < 0:
                raise InputError(f"{w}: negative second")
            if t > MAX_SECOND:
                raise InputError(f"{w}: second {t} is past 24 h, no video's second")
            if not isinstance(v, dict):
                raise InputError(f"{w}: expected an object with step/score/point/box, got {v!r}")
            step = v.get("step", BACKGROUND)
            if step is None or not isinstance(step, str):
                raise InputError(f"{w}.step: expected a string, got {step!r}")
            point = as_point(v["point"], f"{w}.point") if v.get("point") is not None else None
            box = as_ordered_box(v["box"], f"{w}.box") if v.get("box") is not None else None
            score = as_number(v["score"], f"{w}.score") if "score" in v else 1.0
            secs[t] = SecondPrediction(norm_label(step) or BACKGROUND, score, point, box)
        out[str(vid)] = secs
    return out
