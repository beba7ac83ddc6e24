"""Spatio-temporal grounding in untrimmed videos (GroundingYouTube, paper Sec. 5.3 (i)): IoU+Point and video mAP.

The official repository ships no code for these two; docs/evaluation.md states the definitions implemented here.
Time runs on a 1 fps grid of integer seconds. Labels are small integers per video: 0 background, -1 "not
evaluable" (inside an annotated action but without a box), >0 an action class.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from grounding.metrics.boxes import box_area, box_intersection_aligned
from grounding.tube import Tube

IGNORE = -1


def iou_plus_point(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray], hit: Sequence[np.ndarray]) -> float:
    """Per video, per ground-truth action class c: |{g=c, p=c, point in box}| / |{g=c} | {p=c}| over evaluable
    seconds; mean over the classes of a video, then over videos that have any action.

    gt[v], pred[v], hit[v]: aligned arrays over the same seconds (gt may hold IGNORE; hit is the pointing-game
    result at each second, meaningful where gt > 0).
    """
    per_video = []
    for g, p, h in zip(gt, pred, hit, strict=True):
        g, p, h = np.asarray(g), np.asarray(p), np.asarray(h, dtype=bool)
        valid = g != IGNORE
        classes = np.unique(g[g > 0])
        if not len(classes):
            continue
        gm = (g[None] == classes[:, None]) & valid
        pm = (p[None] == classes[:, None]) & valid
        inter = (gm & pm & h[None]).sum(1)
        union = (gm | pm).sum(1)
        per_video.append(np.mean(inter / union))
    if not per_video:
        raise ValueError("no video with an annotated action")
    return float(np.mean(per_video))


def label_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of one non-background label: [(label, start_index, end_index_exclusive)]."""
    lab = np.asarray(labels)
    if not len(lab):
        return []
    cuts = np.flatnonzero(np.diff(lab)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(lab)]])
    return [(int(lab[s]), int(s), int(e)) for s, e in zip(starts, ends) if lab[s] > 0]


def tube_iou(pred: Tube, gt: Tube) -> float:
    """3-D IoU of two box tubes on a grid of integer seconds (grounding.tube.Tube, one box per second): sum over
    seconds of box intersections / sum of box unions. Seconds where the ground truth has a NaN box are left out for
    both tubes."""
    g_ok = ~np.isnan(gt.boxes).any(1)
    ignored = gt.frames[~g_ok]
    g_sec, g_box = gt.frames[g_ok], gt.boxes[g_ok]
    p_ok = ~np.isin(pred.frames, ignored)
    p_sec, p_box = pred.frames[p_ok], pred.boxes[p_ok]
    _, ip, ig = np.intersect1d(p_sec, g_sec, assume_unique=True, return_indices=True)
    inter = box_intersection_aligned(p_box[ip], g_box[ig]).sum() if len(ip) else 0.0
    union = (box_area(p_box).sum() if len(p_box) else 0.0) + (box_area(g_box).sum() if len(g_box) else 0.0) - inter
    return float(inter / union) if union > 0 else 0.0


def average_precision(tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP (PASCAL VOC 2010+) of detections already sorted by descending score."""
    tp = np.asarray(tp, dtype=np.float64)
    if n_gt <= 0:
        raise ValueError("AP needs at least one ground-truth instance")
    if not len(tp):
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def video_map(
    detections: Sequence[tuple[Hashable, Hashable, float, Tube]],
    ground_truth: Sequence[tuple[Hashable, Hashable, Tube]],
    thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
) -> dict[float, float]:
    """Video mAP (Gkioxari & Malik's protocol with 3-D box IoU): per class, detections (class, video, score, tube)
    in descending score each take the unmatched ground-truth tube of the same class and video with the highest
    IoU; a true positive when that IoU exceeds the threshold (strict). AP per class with any ground truth; mean over
    those classes. Detections of classes without ground truth are ignored."""
    by_class_gt: dict = {}
    for cls, vid, tube in ground_truth:
        by_class_gt.setdefault(cls, []).append((vid, tube))
    if not by_class_gt:
        raise ValueError("no ground-truth tubes")
    by_class_det: dict = {}
    for cls, vid, score, tube in detections:
        if cls in by_class_gt:
            by_class_det.setdefault(cls, []).append((vid, float(score), tube))
    aps = {t: [] for t in thresholds}
    for cls, gts in by_class_gt.items():
        dets = sorted(by_class_det.get(cls, []), key=lambda d: -d[1])  # stable: ties keep input order
        gt_vids = np.array([v for v, _ in gts], dtype=object)
        ious = np.zeros((len(dets), len(gts)))
        for i, (vid, _, tube) in enumerate(dets):
            for j in np.flatnonzero(gt_vids == vid):
                ious[i, j] = tube_iou(tube, gts[j][1])
        same_video = np.array([[vid == gv for gv in gt_vids] for vid, _, _ in dets], dtype=bool)
        same_video = same_video.reshape(len(dets), len(gts))
        for t in thresholds:
            taken = np.zeros(len(gts), dtype=bool)
            tp = np.zeros(len(dets))
            for i in range(len(dets)):
                cand = np.where(same_video[i] & ~taken, ious[i], -1.0)
                j = int(np.argmax(cand))
                if cand[j] > t:
                    taken[j] = True
                    tp[i] = 1.0
            aps[t].append(average_precision(tp, len(gts)))
    return {t: float(np.mean(v)) for t, v in aps.items()}
