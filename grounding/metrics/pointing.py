"""Pointing game (GroundingYouTube's eval code, after Akbari et al.): a hit when the predicted point lies inside the
ground-truth box, borders included; accuracy = hits / (hits + misses) over every annotated frame."""
from __future__ import annotations

import numpy as np

from grounding.metrics.boxes import point_in_box


def pointing_game(points, boxes, has_point=None) -> float:
    """points: (N, 2) [x, y]; boxes: (N, 4); has_point: (N,) False where no point was predicted (a miss)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        raise ValueError("no annotated frames to evaluate")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) != len(boxes):
        raise ValueError(f"{len(points)} points for {len(boxes)} boxes")
    hits = point_in_box(points, boxes)
    if has_point is not None:
        hits &= np.asarray(has_point, dtype=bool)
    return float(hits.mean())
