"""Spatio-temporal video grounding (VidSTG, HC-STVG): m_tIoU, m_vIoU, vIoU@R as TubeDETR's evaluators.

- Frames: from the evaluated span [start_frame, end_frame), keep the first frame of each 1/fps bucket
  (floor(frame * fps / video_fps) increases), starting with start_frame; above max_frames keep
  frames[j * n // max_frames] for j < max_frames.
- Tubes are half-open frame intervals [start, end).
- tIoU = |inter| / (|gt| + |pred| - |inter|) on frame counts, 0 when they do not overlap.
- vIoU = sum of box IoUs over sampled frames inside both tubes / number of sampled frames inside
  [min(starts), max(ends)) (TubeDETR's "union" is that hull), at least 1.
- vIoU@R counts queries with vIoU > R (strict).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from grounding.metrics.boxes import box_iou_aligned


def sample_frame_ids(start_frame: int, end_frame: int, video_fps: float, fps: float = 5,
                     max_frames: int = 200) -> np.ndarray:
    rate = fps / video_fps
    start_frame, end_frame = int(start_frame), int(end_frame)
    frames = np.arange(start_frame, max(end_frame, start_frame + 1), dtype=np.int64)
    bucket = np.floor(frames * rate)
    new = np.ones(len(frames), dtype=bool)
    new[1:] = bucket[1:] > bucket[:-1]
    ids = frames[new]
    if len(ids) > max_frames:
        ids = ids[(np.arange(max_frames) * len(ids)) // max_frames]
    return ids


def temporal_iou(gt: Sequence[int], pred: Sequence[int]) -> float:
    max_start, min_end = max(gt[0], pred[0]), min(gt[1], pred[1])
    if min_end <= max_start:
        return 0.0
    inter = min_end - max_start
    return float(inter / ((gt[1] - gt[0]) + (pred[1] - pred[0]) - inter))


def stvg_query_metrics(
    frame_ids: np.ndarray,
    gt_sted: Sequence[int],
    pred_sted: Sequence[int],
    gt_boxes: Mapping[int, np.ndarray] | None = None,
    pred_boxes: Mapping[int, np.ndarray] | None = None,
) -> dict[str, float]:
    """One query: {"tIoU"} and, when gt_boxes is given, {"vIoU"}.

    gt_boxes must cover every sampled frame inside the ground-truth tube; pred_boxes every sampled frame inside
    both tubes (KeyError names the first missing frame otherwise).
    """
    out = {"tIoU": temporal_iou(gt_sted, pred_sted)}
    if gt_boxes is None:
        return out
    f = np.asarray(frame_ids)
    max_start, min_end = max(gt_sted[0], pred_sted[0]), min(gt_sted[1], pred_sted[1])
    hull = (f >= min(gt_sted[0], pred_sted[0])) & (f < max(gt_sted[1], pred_sted[1]))
    both = f[(f >= gt_sted[0]) & (f < gt_sted[1]) & (f >= max_start) & (f < min_end)]
    if len(both):
        missing_gt = [int(x) for x in both if int(x) not in gt_boxes]
        if missing_gt:
            raise ValueError(f"the annotation has no box for frame {missing_gt[0]} inside its tube")
        missing = [int(x) for x in both if int(x) not in (pred_boxes or {})]
        if missing:
            raise KeyError(f"no predicted box for frame {missing[0]} "
                           f"({len(missing)} sampled frames inside both tubes lack one)")
        gb = np.stack([gt_boxes[int(x)] for x in both])
        pb = np.stack([pred_boxes[int(x)] for x in both])
        total = float(box_iou_aligned(pb, gb).sum())
    else:
        total = 0.0
    out["vIoU"] = total / max(int(hull.sum()), 1)
    return out


def summarize_stvg(per_query: Iterable[Mapping[str, float]], thresholds: Sequence[float] = (0.3, 0.5),
                   ) -> dict[str, float]:
    """Means over queries: m_tIoU, and with vIoU present m_vIoU and vIoU@R (fraction with vIoU > R)."""
    rows = list(per_query)
    if not rows:
        raise ValueError("no queries to summarize")
    tiou = np.array([r["tIoU"] for r in rows])
    out = {"m_tIoU": float(tiou.mean())}
    if all("vIoU" in r for r in rows):
        viou = np.array([r["vIoU"] for r in rows])
        out["m_vIoU"] = float(viou.mean())
        for t in thresholds:
            out[f"vIoU@{t}"] = float(np.mean(viou > t))
    return out
