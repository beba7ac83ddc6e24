"""DiDeMo: R@1, R@5 and mIoU as LocalizingMoments' utils/eval.py.

Moments are inclusive 5-second chunk indices [s, e]. Per query: the IoU of the top-1 moment with every annotator
moment, mIoU takes the mean of the 3 best; the rank of each annotator moment in the ranked list, a query counts for
R@k when the mean of its 3 best ranks is <= k.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def didemo_chunk_iou(pred, gt) -> np.ndarray:
    """IoU on inclusive chunk indices, broadcasting over leading dims: (..., 2) x (..., 2) -> (...)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    inter = np.maximum(0.0, np.minimum(pred[..., 1], gt[..., 1]) + 1 - np.maximum(pred[..., 0], gt[..., 0]))
    union = np.maximum(pred[..., 1], gt[..., 1]) + 1 - np.minimum(pred[..., 0], gt[..., 0])
    return np.divide(inter, union, out=np.zeros(np.broadcast(inter, union).shape), where=union > 0)


def _pad(rows: Sequence[np.ndarray], width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    n = len(rows)
    k = max((len(r) for r in rows), default=0)
    out = np.zeros((n, max(k, 1), width), dtype=np.int64)
    mask = np.zeros((n, max(k, 1)), dtype=bool)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = np.asarray(r, dtype=np.int64).reshape(-1, width)
            mask[i, : len(r)] = True
    return out, mask


def didemo_metrics(ranked: Sequence[np.ndarray], times: Sequence[np.ndarray], top: int = 3) -> dict[str, float]:
    """ranked[i]: (K, 2) moments best first (K may be 0); times[i]: (A, 2) annotator moments.

    A ground-truth moment absent from the ranked list gets rank infinity (the official code would crash).
    """
    if len(ranked) != len(times):
        raise ValueError(f"{len(ranked)} ranked lists for {len(times)} queries")
    if not len(times):
        raise ValueError("no queries to evaluate")
    pred, pmask = _pad(ranked)
    gt, gmask = _pad(times)
    n_ann = gmask.sum(1)
    if (n_ann == 0).any():
        raise ValueError("every query needs at least one annotator moment")
    keep = np.minimum(top, n_ann)  # the official np.sort(x)[-3:] / [:3] takes all when fewer than 3
    cols = np.arange(gt.shape[1])[None, :] < keep[:, None]

    ious = didemo_chunk_iou(pred[:, :1], gt) * pmask[:, :1]  # (N, A); no prediction -> IoU 0
    ious = np.where(gmask, ious, -np.inf)
    best = -np.sort(-ious, axis=1)
    miou = np.where(cols, best, 0.0).sum(1) / keep

    match = (gt[:, :, None, :] == pred[:, None, :, :]).all(-1) & pmask[:, None, :]  # (N, A, K)
    ranks = np.where(match.any(-1), match.argmax(-1) + 1.0, np.inf)
    ranks = np.where(gmask, ranks, np.inf)
    low = np.sort(ranks, axis=1)
    with np.errstate(invalid="ignore"):
        avg_rank = np.where(cols, low, 0.0).sum(1) / keep
    return {
        "R@1": float(np.mean(avg_rank <= 1)),
        "R@5": float(np.mean(avg_rank <= 5)),
        "mIoU": float(np.mean(miou)),
    }
