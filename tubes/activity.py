"""*When* from the chosen tube itself: how far its object looks, frame by frame, from how it looks at rest.

An object being acted on looks different from the same object left alone (cut in halves, stirred, poured, lifted;
in real videos a hand on it, motion blur, a changed state), and a linked tube follows one object through the
video. So the cosine distance of a tube's region feature at frame t from the tube's own median feature (its rest
appearance, when the action covers less than half of the tube's frames) is high while the object is acted on and
low otherwise. No sentence, no training and no truth enters: a weakly supervised head may use it. The paper heads'
spans come from frame-level scores (VCMA's Gaussian over frame relevance, WINNER's clip cell, FSM's start/end
distributions); this is the `span.rule` switch of a finetune (finetune/config.py SpanConfig, finetune/predict.py;
docs/stvg.md "The span rule") and the zero-shot baseline's `zero_shot_activity` row.
"""
from __future__ import annotations

import numpy as np


def _rows(tube, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions into `frames`, proposal indices) of the tube's frames that hold a region."""
    pos = np.searchsorted(frames, tube.frames)
    ok = (pos < len(frames)) & (tube.index >= 0)
    ok[ok] &= frames[pos[ok]] == tube.frames[ok]
    return pos[ok], tube.index[ok]


def tube_activity(regions: np.ndarray, tube, frames: np.ndarray) -> np.ndarray:
    """(F,) activity of `tube` at each of the video's feature frames `frames` (F,) native ids: 1 - cos(region
    feature, the tube's L2-normalised elementwise median feature). `regions` (F, N, d) are the video's region
    features at those frames; `tube` a linked tube (grounding.tube.Tube with `index`, the proposal per tube frame).
    Frames inside the tube's extent where it bridged a miss take the value interpolated from their neighbours;
    frames outside it take the tube's least activity (the object is not followed there, so nothing says it is
    acted on). A tube with no region anywhere gives zeros. tubes.pipeline.VideoTubes.tube_activities holds them
    per video, computed once."""
    frames = np.asarray(frames)
    out = np.zeros(len(frames), np.float64)
    if tube.index is None or not len(tube.frames):
        return out
    p, idx = _rows(tube, frames)
    if not len(p):
        return out
    r = np.asarray(regions[p, idx], np.float64)
    r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    rest = np.median(r, 0)
    rest /= max(np.linalg.norm(rest), 1e-12)
    act = 1.0 - r @ rest
    out[:] = act.min()
    inside = np.arange(p[0], p[-1] + 1)
    out[inside] = np.interp(inside, p, act)
    return out


def tube_peak(activity: np.ndarray, share: float = 0.25) -> float:
    """The mean of a tube's highest activities (`activity` (F,), tube_activity's; the top `share` of the video's
    frames): how much its object is acted on at its busiest. A query's object is acted on during the query, so
    among the tubes its words fit about equally, the busier one is the likelier target (docs/stvg.md section 7,
    span.tube_weight)."""
    k = max(1, int(round(share * len(activity))))
    return float(np.sort(activity)[-k:].mean())


def choose_tube(scores: np.ndarray, peaks: np.ndarray, weight: float) -> int:
    """argmax of the standardised tube scores plus `weight` x the standardised peaks (tubes scored -inf, e.g. with
    no region inside the head's span, stay out)."""
    scores = np.asarray(scores, np.float64)
    ok = np.isfinite(scores)
    total = np.full(len(scores), -np.inf)
    total[ok] = standardise(scores[ok]) + weight * standardise(np.asarray(peaks, np.float64)[ok])
    return int(np.argmax(total))


def region_activity(regions: np.ndarray, tubes, frames: np.ndarray, activities=None) -> np.ndarray:
    """(F, N) each region's activity on the linked tube it lies on (tube_activity's value at that frame, before any
    interpolation), standardised over the video's regions on a tube; 0 for a region on no tube. What an STVG batch
    carries (TubeGeometry.activity) for heads that learn *when* from it (fsm.activity). `activities`: the tubes'
    tube_activity rows when already computed."""
    out = np.zeros(regions.shape[:2], np.float64)
    on = np.zeros(regions.shape[:2], bool)
    frames = np.asarray(frames)
    for m, tube in enumerate(tubes):
        if tube.index is None or not len(tube.frames):
            continue
        act = tube_activity(regions, tube, frames) if activities is None else activities[m]
        p, idx = _rows(tube, frames)
        out[p, idx], on[p, idx] = act[p], True
    out[on] = standardise(out[on])
    return out.astype(np.float32)


def best_segment(scores: np.ndarray, centre: float | None = None) -> tuple[int, int]:
    """[a, b] positions of the contiguous run with the largest sum of mean-centred scores (the frames that score
    above the video's average, joined where the dips between them are shallow); parameter-free. The STVG span of
    frame scores (finetune/predict.py) and of a tube's activity. `centre`: subtract this instead of the mean."""
    x = np.asarray(scores, np.float64)
    x = x - (x.mean() if centre is None else centre)
    best, cur, start, out = -np.inf, 0.0, 0, (0, 0)
    for i, v in enumerate(x):
        if cur <= 0:
            cur, start = 0.0, i
        cur += v
        if cur > best:
            best, out = cur, (start, i)
    return out


def otsu_threshold(x: np.ndarray) -> float:
    """The cut between two groups of `x` with the largest between-group variance (Otsu): the midpoint between the
    two sorted values it falls between. One of the cuts of a tube's activity that
    benchmarks/diagnostics/stvg_when_sources.py compares with the mean's (best_segment's `centre`); no span rule uses
    it (docs/results/stvg.md: on the train split it cuts no better than the mean)."""
    xs = np.sort(np.asarray(x, np.float64))
    n = len(xs)
    if n < 2 or xs[0] == xs[-1]:
        return float(xs.mean()) if n else 0.0
    c = np.cumsum(xs)
    i = np.arange(1, n)                                         # the first i values below the cut
    low, high = c[:-1] / i, (c[-1] - c[:-1]) / (n - i)
    k = int(np.argmax(i * (n - i) * (high - low) ** 2))
    return float((xs[k] + xs[k + 1]) / 2)


def expected_iou_segment(probs: np.ndarray) -> tuple[int, int]:
    """[a, b] positions of the contiguous run S that maximises the expected temporal IoU with the true span when
    each frame t is inside it with probability p_t (independently): E|S & G| / E|S | G| = sum_S p / (|S| +
    sum_notS p), the ratio of expectations. Parameter-free and scale-aware: a run of frames at p = 0.1 among frames
    at 0.01 is chosen whole, where the runs with p > 0.5 (each frame's own decision) would be empty. O(T^2)."""
    p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
    c = np.concatenate([[0.0], np.cumsum(p)])
    a, b = np.meshgrid(np.arange(len(p)), np.arange(len(p)), indexing="ij")
    inside = c[b + 1] - c[a]
    score = np.where(b >= a, inside / np.maximum(b - a + 1 + c[-1] - inside, 1e-12), -np.inf)
    i = int(np.argmax(score))                                    # first of equals: the earliest, then shortest
    return i // len(p), i % len(p)


def native_span(frame_ids: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """Native frames [start, end) covered by feature frames a..b of one video (frame_ids (T,) ascending): a feature
    frame stands for the native frames until the next one, the last for itself alone (finetune/heads/stvg.py's
    native_spans, the batched form of the same convention; tested equal)."""
    ids = np.asarray(frame_ids)
    end = int(ids[b + 1]) if b + 1 < len(ids) else int(ids[b]) + 1
    return int(ids[a]), end


def activity_span(activity: np.ndarray, frames: np.ndarray) -> tuple[int, int]:
    """Native frames [start, end) of the best segment of a tube's standardised activity (F,) over `frames`."""
    return native_span(frames, *best_segment(standardise(activity)))


def standardise(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std within one video's frames (0 when flat): activities and head scores on one scale."""
    x = np.asarray(x, np.float64)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x)


def moving_mean(x: np.ndarray, k: int) -> np.ndarray:
    """A centred moving mean over k frames (edges use the frames there are)."""
    if k <= 1 or len(x) < 2:
        return np.asarray(x, np.float64)
    x = np.asarray(x, np.float64)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    lo, hi = np.clip(i - k // 2, 0, len(x)), np.clip(i - k // 2 + k, 0, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


__all__ = ["activity_span", "best_segment", "choose_tube", "expected_iou_segment", "moving_mean", "native_span",
           "otsu_threshold", "region_activity", "standardise", "tube_activity", "tube_peak"]
