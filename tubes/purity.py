"""Tube purity against known object trajectories (the synthetic STVG truth, or VidOR-style ones)."""
from __future__ import annotations

import numpy as np

from grounding.readers.stvg import xywh
from grounding.tube import Tube
from tubes.linking import pairwise_iou


def purity(tubes: list[Tube], frames: np.ndarray, trajectories: dict) -> tuple[float, float]:
    """(mean purity of all tubes, of the first n_objects tubes): share of the frames from a tube's first to its
    last whose box (interpolated in bridged gaps) matches (IoU >= 0.5) the tube's majority true object."""
    fr = frames
    ids = sorted(trajectories, key=int)
    truth = np.full((len(fr), len(ids), 4), np.nan, np.float32)
    for j, oid in enumerate(ids):
        for k, entry in trajectories[oid].items():
            x, y, w, h = xywh(entry, f"trajectory {oid} frame {k}")
            i = np.searchsorted(fr, int(k))
            if i < len(fr) and fr[i] == int(k):
                truth[i, j] = [x, y, x + w, y + h]
    out = []
    for t in tubes:
        span = np.arange(t.extent[0], t.extent[1] + 1)
        who = np.full(len(span), -1)
        for n, i in enumerate(span):
            iou = pairwise_iou(t.boxes[i][None], np.nan_to_num(truth[i], nan=-1.0))[0]
            if iou.max() >= 0.5:
                who[n] = int(iou.argmax())
        counts = np.bincount(who[who >= 0], minlength=1)
        out.append(counts.max() / len(span) if len(span) else 0.0)
    return float(np.mean(out)), float(np.mean(out[:len(ids)]))
