"""Box helpers shared by the spatial metrics. Boxes are [x1, y1, x2, y2] in pixels, areas continuous."""
from __future__ import annotations

import numpy as np


def _as_boxes(b) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 coordinates, got shape {b.shape}")
    return b


def box_area(b) -> np.ndarray:
    b = _as_boxes(b)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_intersection_aligned(a, b) -> np.ndarray:
    a, b = _as_boxes(a), _as_boxes(b)
    wh = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    return wh[:, 0] * wh[:, 1]


def box_iou_aligned(a, b) -> np.ndarray:
    """IoU of a[i] with b[i] (TubeDETR's np_box_iou on the diagonal); 0 where the union is empty."""
    inter = box_intersection_aligned(a, b)
    union = box_area(a) + box_area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def point_in_box(points, boxes) -> np.ndarray:
    """Pointing-game hit test, borders inclusive (x1 <= x <= x2 and y1 <= y <= y2), as GroundingYouTube's code."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    b = _as_boxes(boxes)
    return (p[:, 0] >= b[:, 0]) & (p[:, 0] <= b[:, 2]) & (p[:, 1] >= b[:, 1]) & (p[:, 1] <= b[:, 3])
