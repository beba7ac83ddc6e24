"""Continuous-time moment metrics: Charades-STA R@{1,5} at IoU thresholds and mIoU, as 2D-TAN's lib/core/eval.py.

Per query the ranked moments pass through 1-D NMS (2D-TAN's charades configs: 0.5 for conv, 0.45 for pool), the
first max(recalls) survivors are kept, R@k,t counts a hit when any of the first k has IoU > t (strict), and mIoU is
the mean IoU of the top-1 moment.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def segment_iou(pred, gt) -> np.ndarray:
    """Pairwise IoU of [start, end] segments: (N, 2) x (M, 2) -> (N, M).

    The union is the hull max(end) - min(start), as 2D-TAN computes it (equal to the true union whenever the
    segments overlap, and the IoU is 0 otherwise). An empty union (two identical points) gives 0.
    """
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    inter = np.maximum(0.0, np.minimum(p[:, None, 1], g[None, :, 1]) - np.maximum(p[:, None, 0], g[None, :, 0]))
    union = np.maximum(0.0, np.maximum(p[:, None, 1], g[None, :, 1]) - np.minimum(p[:, None, 0], g[None, :, 0]))
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms_1d(segments, thresh: float, top_k: int = -1) -> np.ndarray:
    """Greedy NMS over segments already ranked best first; returns the kept rows in rank order.

    Overlap is inter / (len_i + len_j - inter) as in 2D-TAN; a NaN overlap (two zero-length segments at one point)
    compares False against the threshold, so such a duplicate is suppressed as there.
    """
    dets = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    order = np.arange(len(dets))
    keep: list[int] = []
    lengths = dets[:, 1] - dets[:, 0]
    while order.size:
        i = order[0]
        keep.append(int(i))
        if len(keep) == top_k:
            break
        rest = order[1:]
        inter = np.maximum(0.0, np.minimum(dets[i, 1], dets[rest, 1]) - np.maximum(dets[i, 0], dets[rest, 0]))
        with np.errstate(invalid="ignore", divide="ignore"):
            ovr = inter / (lengths[i] + lengths[rest] - inter)
        order = rest[ovr <= thresh]
    return dets[keep]


def charades_metrics(
    ranked: Sequence[np.ndarray],
    gt: np.ndarray,
    durations: np.ndarray | None = None,
    iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    recalls: Sequence[int] = (1, 5),
    nms_thresh: float | None = 0.5,
) -> dict[str, float]:
    """ranked[i]: (K, 2) moments in seconds, best first; gt: (N, 2) (already clipped and valid).

    durations: (N,) clip every predicted moment to [0, duration] first (2D-TAN's proposals lie there by
    construction). nms_thresh None skips NMS. Keys: "R{k}@{t}" and "mIoU".
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    if len(ranked) != len(gt):
        raise ValueError(f"{len(ranked)} ranked lists for {len(gt)} queries")
    if not len(gt):
        raise ValueError("no queries to evaluate")
    max_r = max(recalls)
    overlaps = np.zeros((len(gt), max_r))  # padding (fewer predictions than max_r) never counts as a hit
    for i, seg in enumerate(ranked):
        seg = np.asarray(seg, dtype=np.float64).reshape(-1, 2)
        if durations is not None:
            seg = np.clip(seg, 0.0, durations[i])
        seg = nms_1d(seg, nms_thresh, top_k=max_r) if nms_thresh is not None else seg[:max_r]
        overlaps[i, : len(seg)] = segment_iou(seg, gt[i])[:, 0]
    out = {}
    for k in recalls:
        for t in iou_thresholds:
            out[f"R{k}@{t}"] = float(np.mean((overlaps[:, :k] > t).any(1)))
    out["mIoU"] = float(np.mean(overlaps[:, 0]))
    return out
