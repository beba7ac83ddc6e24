"""Tube linking (VCMA Sec. 3.2, Eq. 4): link score s(b_t,i, b_t+1,j) = cos(v_t,i, v_t+1,j) + alpha * IoU(b_t,i,
b_t+1,j); Viterbi finds the path of highest total link score, its boxes are removed and the search repeats until
M tubes are found or no box is left.

Decisions the paper leaves open (docs/stvg.md): a tube may start and end at any frame (longest path in the frame
DAG, paths start at 0); a missed detection is bridged by a skip link over up to `max_gap` frames, worth k times
the link score of the boxes it joins times `gap_discount` per skipped frame (scale-free: it works the same whether
the features or IoU alone carry the score), and the skipped frames get boxes
interpolated between the two ends; a link needs the two boxes to overlap (IoU > `min_iou`, 0.3 by default,
SORT's gating; -1 allows any link, Eq. 4 as written): with Eq. 4 alone a jump to a distant box costs only the lost
IoU term, and weak features let paths hop between objects. Link scores are computed for all frame pairs and box pairs at once (batched
matrix products); the Viterbi recursion loops over frames only.
"""
from __future__ import annotations

import numpy as np

from grounding.tube import Tube

NEG = -1e9


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (..., N, 4) with every box of b (..., M, 4): (..., N, M)."""
    lt = np.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = np.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def link_scores(features: np.ndarray, boxes: np.ndarray, valid: np.ndarray, alpha: float, max_gap: int,
                min_iou: float = 0.0) -> list[np.ndarray]:
    """[S_1, ..., S_{max_gap+1}]: S_k (F-k, N, N) = cos(v_t,i, v_t+k,j) + alpha IoU(b_t,i, b_t+k,j), NEG where either
    box is padding or the boxes overlap by IoU <= min_iou. features (F, N, D), boxes (F, N, 4), valid (F, N)."""
    v = features.astype(np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-8)
    out = []
    for k in range(1, max_gap + 2):
        if k >= len(v):
            break
        iou = pairwise_iou(boxes[:-k], boxes[k:])
        s = np.einsum("fnd,fmd->fnm", v[:-k], v[k:]) + alpha * iou
        ok = valid[:-k, :, None] & valid[k:, None, :] & (iou > min_iou)
        out.append(np.where(ok, s, NEG).astype(np.float32))
    return out


def viterbi(scores: list[np.ndarray], valid: np.ndarray, gap_discount: float) -> tuple[np.ndarray, float]:
    """Best path over the valid boxes: (index (F,) with -1 where the path has no box, total score).
    A path starts anywhere at 0; a k-frame link adds k * S_k * gap_discount ** (k - 1)."""
    F, N = valid.shape
    best = np.full((F, N), NEG, np.float64)
    back_k = np.zeros((F, N), np.int64)      # 0: the path starts here
    back_i = np.zeros((F, N), np.int64)
    for t in range(F):
        cur = np.where(valid[t], 0.0, NEG)
        bk = np.zeros(N, np.int64)
        bi = np.zeros(N, np.int64)
        for k, s in enumerate(scores, start=1):
            if t - k < 0:
                break
            cand = best[t - k][:, None] + k * s[t - k].astype(np.float64) * gap_discount ** (k - 1)  # (N from, N to)
            arg = cand.argmax(0)
            val = cand[arg, np.arange(N)]
            better = valid[t] & (val > cur) & (best[t - k][arg] > NEG / 2) & (s[t - k][arg, np.arange(N)] > NEG / 2)
            cur = np.where(better, val, cur)
            bk = np.where(better, k, bk)
            bi = np.where(better, arg, bi)
        best[t], back_k[t], back_i[t] = cur, bk, bi
    path = np.full(F, -1, np.int64)
    if not valid.any():
        return path, float(NEG)
    t, j = np.unravel_index(int(np.argmax(np.where(valid, best, NEG))), best.shape)
    total = float(best[t, j])
    while True:
        path[t] = j
        k = int(back_k[t, j])
        if k == 0:
            break
        t, j = t - k, int(back_i[t, j])
    return path, total


def _tube(frames: np.ndarray, boxes: np.ndarray, path: np.ndarray, score: float) -> Tube:
    """The path as a Tube on all proposal frames: `index` the chosen proposal per frame (-1 outside the tube and in
    a bridged gap), boxes interpolated in gaps and NaN outside the tube's extent, `score` the total link score."""
    on = np.flatnonzero(path >= 0)
    out = np.full((len(frames), 4), np.nan, np.float32)
    chosen = boxes[on, path[on]]
    pos = np.arange(on[0], on[-1] + 1)
    for c in range(4):  # gaps: linear interpolation between the boxes around them
        out[pos, c] = np.interp(pos, on, chosen[:, c])
    return Tube(frames, out, score=score, index=path)


def link_tubes(frames: np.ndarray, features: np.ndarray, boxes: np.ndarray, valid: np.ndarray, m: int = 10,
               alpha: float = 0.5, max_gap: int = 2, gap_discount: float = 0.8, min_iou: float = 0.3) -> list[Tube]:
    """Up to m tubes, best first; each proposal belongs to at most one tube."""
    scores = link_scores(features, boxes, valid, alpha, max_gap, min_iou)
    left = valid.copy()
    tubes = []
    while len(tubes) < m and left.any():
        path, total = viterbi(scores, left, gap_discount)
        tubes.append(_tube(frames, boxes, path, total))
        on = path >= 0
        left[np.flatnonzero(on), path[on]] = False
    return tubes
