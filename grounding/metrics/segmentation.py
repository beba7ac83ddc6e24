"""Frame-wise temporal segmentation: IoU (Jaccard) and IoD (intersection over detection), as used for MiningYouTube
alignment (Kuehne et al.; the per-class form of e.g. TASL's compute_IoU_IoD).

Per video and per class c present in the ground truth: IoU = |G_c & D_c| / |G_c | D_c|, IoD = |G_c & D_c| / |D_c|
(0 when c is never predicted); the per-video means are averaged over videos.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def frame_iou_iod(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray], background: int = 0) -> dict[str, float]:
    """gt[v], pred[v]: integer label per frame (same length). Returns IoU, IoD and the same without background.

    A video whose ground truth is only background contributes to IoU/IoD but not to the no-background means.
    """
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth videos for {len(pred)} predicted")
    if not len(gt):
        raise ValueError("no videos to evaluate")
    iou, iod, iou_nb, iod_nb = [], [], [], []
    for g, p in zip(gt, pred):
        g = np.asarray(g)
        p = np.asarray(p)
        if g.shape != p.shape or g.ndim != 1:
            raise ValueError(f"label arrays differ in shape: {g.shape} vs {p.shape}")
        if not len(g):
            raise ValueError("a video with no frames")
        classes = np.unique(g)
        gm = g[None, :] == classes[:, None]  # (C, T)
        pm = p[None, :] == classes[:, None]
        inter = (gm & pm).sum(1).astype(np.float64)
        union = (gm | pm).sum(1)
        det = pm.sum(1)
        c_iou = inter / union  # union >= |G_c| > 0
        c_iod = np.divide(inter, det, out=np.zeros_like(inter), where=det > 0)
        iou.append(c_iou.mean())
        iod.append(c_iod.mean())
        fg = classes != background
        if fg.any():
            iou_nb.append(c_iou[fg].mean())
            iod_nb.append(c_iod[fg].mean())
    return {
        "IoU": float(np.mean(iou)),
        "IoD": float(np.mean(iod)),
        "IoU_no_bg": float(np.mean(iou_nb)) if iou_nb else 0.0,
        "IoD_no_bg": float(np.mean(iod_nb)) if iod_nb else 0.0,
    }
