"""Spatio-temporal inference of the global-local model (paper Sec. 3.5, Fig. 3).

Temporal: per-frame global similarity to every action description of a pool; frames whose best similarity falls
below tau are background; each other frame takes its best action; runs of equal labels form segments.
Spatial: the local branch's attention heatmap for the frame's predicted action; its peak is the point, and the box
is the bounding box of the connected region around the peak above `box_threshold` x peak.

Pure torch/numpy over decoded frames: knows nothing of shards, Ray or files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


SCORE_SOURCES = ("global", "word_region", "both")


@dataclass
class InferenceConfig:
    tau: float = 0.0                 # background threshold on the per-frame best score (after `normalize`)
    normalize: str = "query"         # none | zscore: the video's scores standardised together, so tau transfers
                                     # across models | query: each description's scores standardised over the
                                     # video's frames (removes a description's constant bias; a frame is
                                     # background when no description rises above tau of its own spread)
    box_threshold: float = 0.5       # box = region around the peak above this fraction of the peak
    box_upsample: bool = False       # take that region on the heatmap bilinearly upsampled to the crop's pixels
                                     # (as the paper's 3D mask at frame resolution) instead of on whole cells of
                                     # the patch grid; the point stays the peak cell's centre. Off: the boxes of
                                     # every figure before it
    batch_frames: int = 64           # frames per encoder call
    min_segment: int = 1             # drop segments shorter than this many frames
    smooth: int = 1                  # mean of each description's scores over this many consecutive frames
                                     # (centred, odd) before the argmax: actions last seconds, so a one-frame
                                     # flip is noise; 1 = off (the paper's per-frame decision)
    decode: str = "frame"            # frame: each frame takes its best description (the paper) | once: each
                                     # description of the pool is one contiguous run (or absent), the runs
                                     # tiling the video, chosen to maximise the summed scores (segment_once);
                                     # tau then marks background inside the runs. A prior of instructional
                                     # videos (a step is done once); pools over once_max_pool fall back to frame
    once_max_pool: int = 6           # the search is over the pool's orders: pool! * pool * frames^2
    scores: str = "global"           # what a frame's score for a description is: global (the paper's Sec. 3.5:
                                     # f(CLS) . g(EOT)) | word_region (mean over the words of each word's best
                                     # region, the score the word-region term of L_local trains) | both (the sum
                                     # of the two, each standardised per description over the video's frames)

    def validate(self, prefix: str = "inference.") -> "InferenceConfig":
        from common.config import ConfigError

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"PredictConfig [{prefix}{key}]: {what}, got {getattr(self, key)!r}")

        need(np.isfinite(self.tau), "tau", "must be a finite number")
        need(self.normalize in ("none", "zscore", "query"), "normalize", "must be none, zscore or query")
        need(0 < self.box_threshold <= 1, "box_threshold", "must be in (0, 1]")
        need(self.batch_frames >= 1, "batch_frames", "must be >= 1")
        need(self.min_segment >= 1, "min_segment", "must be >= 1")
        need(self.smooth >= 1 and self.smooth % 2 == 1, "smooth", "must be an odd number of frames >= 1")
        need(self.decode in ("frame", "once"), "decode", "must be frame or once")
        need(1 <= self.once_max_pool <= 8, "once_max_pool", "must be in 1..8")
        need(self.scores in SCORE_SOURCES, "scores", f"must be one of {', '.join(SCORE_SOURCES)}")
        return self


@dataclass
class FramePrediction:
    time: float                      # seconds
    step: str                        # action description or "background"
    score: float
    point: tuple[float, float] | None = None   # (x, y) in source-video pixels
    box: tuple[float, float, float, float] | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)  # (gh, gw) in [0, 1]


@dataclass
class CropGeometry:
    """Maps crop coordinates back to the source video: short side resized to `size`, centre crop."""
    width: int
    height: int
    size: int

    def _scale_offset(self) -> tuple[float, float, float]:
        scale = self.size / min(self.width, self.height)
        return scale, (self.width * scale - self.size) / 2, (self.height * scale - self.size) / 2

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        scale, ox, oy = self._scale_offset()
        return (x + ox) / scale, (y + oy) / scale

    def to_crop(self, x: float, y: float) -> tuple[float, float]:
        scale, ox, oy = self._scale_offset()
        return x * scale - ox, y * scale - oy


def _encode_frames(model, frames: np.ndarray, batch: int, keep_regions: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(global (n, d), regions (n, N, d) or None) of every frame, one encoder pass per chunk (regions are kept
    only when asked: n x N x d floats)."""
    glob, regions = [], []
    for i in range(0, len(frames), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch]))[None]  # (1, n, H, W, 3)
        g, local, _ = model.encode_frames(model.preprocess_frames(chunk))
        glob.append(g[0])
        if keep_regions:
            regions.append(local[0])
    return torch.cat(glob, 0), (torch.cat(regions, 0) if keep_regions else None)


@torch.no_grad()
def temporal_scores(model, frames: np.ndarray, pool: list[str], batch: int = 64, source: str = "global"
                    ) -> np.ndarray:
    """(num_frames, len(pool)) score of each frame for each description (InferenceConfig.scores): the cosine of
    the frame's global feature and the description's (global), the word-region score (word_region), or both."""
    from pretrain.losses import word_region_scores

    if source not in SCORE_SOURCES:
        raise ValueError(f"inference scores must be one of {SCORE_SOURCES}, got {source!r}")
    fg, regions = _encode_frames(model, frames, batch, keep_regions=source != "global")
    tg, words, mask = model.encode_text(model.tokenize(pool))
    out = {}
    if source in ("global", "both"):
        out["global"] = model.frame_scores(fg, tg).float().cpu().numpy()
    if source in ("word_region", "both"):
        out["word_region"] = word_region_scores(words, mask, regions).t().float().cpu().numpy()
    if source != "both":
        return out[source]
    return normalize_scores(out["global"], "query") + normalize_scores(out["word_region"], "query")


def label_frames(scores: np.ndarray, cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray]:
    """Best action index per frame (-1 = background) and its score."""
    s = smooth_scores(normalize_scores(scores, cfg.normalize), cfg.smooth)
    best = s.argmax(1)
    if cfg.decode == "once" and 1 < s.shape[1] <= cfg.once_max_pool:
        best = segment_once(s)
    best_score = s[np.arange(len(s)), best]
    labels = np.where(best_score >= cfg.tau, best, -1)
    return labels, best_score


def segment_once(scores: np.ndarray) -> np.ndarray:
    """Labels (frames,) that split the frames into contiguous runs, at most one per description (column), in
    the order and with the boundaries that maximise the sum of each frame's score for its run's description.
    Exhaustive over the orders of the descriptions (a run may be empty; pools above once_max_pool are not decoded
    this way), for each order dynamic programming over boundaries in O(frames)."""
    import itertools

    n, p = scores.shape
    if n == 0:
        return np.zeros(0, dtype=int)
    csum = np.vstack([np.zeros((1, p)), np.cumsum(scores, axis=0)])           # csum[t] = sum of frames < t
    best_total, best_cuts, best_order = -np.inf, None, None
    for order in itertools.permutations(range(p)):
        # value[t]: best sum covering frames [0, t) with the runs placed so far; cut[j][t]: where run j starts
        value = np.full(n + 1, -np.inf)
        value[0] = 0.0
        cuts = []
        for q in order:
            gain = csum[:, q]                                                   # run [s, t): gain[t] - gain[s]
            # value'[t] = gain[t] + max over s <= t of (value[s] - gain[s]): a running maximum, O(n)
            a = value - gain
            run = np.maximum.accumulate(a)
            rises = np.r_[True, a[1:] > run[:-1]]                               # the first s holding each max
            start = np.maximum.accumulate(np.where(rises, np.arange(n + 1), 0))
            value = run + gain
            cuts.append(start)
        if value[n] > best_total:
            best_total, best_cuts, best_order = value[n], cuts, order
    labels = np.empty(n, dtype=int)
    t = n
    for q, start in zip(reversed(best_order), reversed(best_cuts)):
        s = int(start[t])
        labels[s:t] = q
        t = s
    return labels


def normalize_scores(s: np.ndarray, mode: str) -> np.ndarray:
    """InferenceConfig.normalize applied to a video's (frames, descriptions) scores."""
    if mode == "zscore":
        return (s - s.mean()) / (s.std() + 1e-8)
    if mode == "query":
        return (s - s.mean(0, keepdims=True)) / (s.std(0, keepdims=True) + 1e-8)
    if mode != "none":
        raise ValueError(f"inference normalize must be none|zscore|query, got {mode!r}")
    return s


def smooth_scores(scores: np.ndarray, window: int) -> np.ndarray:
    """Centred moving mean over frames (axis 0) of `window` frames (odd; clipped at the video's ends, where the
    mean is over the frames that exist)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"inference smooth must be an odd number of frames >= 1, got {window}")
    if window == 1 or len(scores) < 2:
        return scores
    half = window // 2
    c = np.concatenate([np.zeros((1, scores.shape[1])), np.cumsum(scores, axis=0)])
    idx = np.arange(len(scores))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(scores))
    return (c[hi] - c[lo]) / (hi - lo)[:, None]


def calibrate_tau(scores: list[np.ndarray], truth: list[np.ndarray], cfg: InferenceConfig,
                  candidates: np.ndarray | None = None) -> tuple[float, float]:
    """(tau, accuracy): the background threshold that maximises per-frame accuracy, background included, over
    videos whose per-frame scores (n_i, P_i) and true labels (n_i,: pool index, -1 background) are given. Meant
    for the train split's hidden truth (never the test split's): decoding, not training."""
    best_scores, labels = [], []
    for s, t in zip(scores, truth):
        lab, best = label_frames(s, InferenceConfig(tau=-np.inf, normalize=cfg.normalize, smooth=cfg.smooth))
        best_scores.append(best)
        labels.append((lab, np.asarray(t)))
    allbest = np.concatenate(best_scores)
    if candidates is None:
        candidates = np.unique(np.quantile(allbest, np.linspace(0, 1, 101)))
    hits = []
    for tau in candidates:
        ok = sum(int(np.sum(np.where(b >= tau, lab, -1) == t)) for b, (lab, t) in zip(best_scores, labels))
        hits.append(ok)
    i = int(np.argmax(hits))
    return float(candidates[i]), hits[i] / max(1, len(allbest))


def calibrate_box_threshold(heats: list[np.ndarray], geometries: list, boxes: list,
                            candidates: tuple = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                            upsample: bool = False) -> tuple[float, float]:
    """(box_threshold, mean IoU): the threshold whose heatmap boxes (locate) best overlap the true boxes, over
    frames given as heatmaps (gh, gw) with their crop geometry and true box (x1, y1, x2, y2, source pixels). Meant
    for the train split's hidden boxes of the true step (never the test split's): decoding, not training."""
    from grounding.metrics.boxes import box_iou_aligned

    truth = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    means = []
    for thr in candidates:
        pred = np.asarray([locate(h, g, thr, upsample)[1] for h, g in zip(heats, geometries)],
                          dtype=np.float64).reshape(-1, 4)
        means.append(float(box_iou_aligned(pred, truth).mean()) if len(truth) else 0.0)
    i = int(np.argmax(means))
    return float(candidates[i]), means[i]


def segments_from_labels(labels: np.ndarray, times: np.ndarray, step_s: float, min_len: int = 1
                         ) -> list[tuple[int, float, float]]:
    """Runs of equal non-background labels -> (label, start_s, end_s); end is the last frame's time + step."""
    segs = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if labels[start] >= 0 and i - start >= min_len:
                segs.append((int(labels[start]), float(times[start]), float(times[i - 1] + step_s)))
            start = i
    return segs


def peak_and_box(heat: np.ndarray, threshold: float) -> tuple[tuple[float, float], tuple[float, float, float, float]]:
    """Peak (x, y) and the box of the 4-connected region around it above threshold*peak, in heatmap pixel units
    (continuous coordinates: cell (r, c) spans [c, c+1) x [r, r+1))."""
    from scipy import ndimage

    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    regions, _ = ndimage.label(heat >= threshold * heat[r, c])     # default structure: 4-connected
    ys, xs = np.nonzero(regions == regions[r, c])
    return (c + 0.5, r + 0.5), (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


@torch.no_grad()
def spatial_heatmaps(model, frames: np.ndarray, text: str, batch: int = 64) -> np.ndarray:
    """(num_frames, gh, gw) local-branch heatmaps for one description, normalised to [0, 1] per frame. Each frame
    is its own clip (T = 1): the word-over-region softmax then runs over that frame's regions only, so a frame's
    point and box do not depend on which other frames were grounded with it (predicted with the same step, or
    sharing a batch)."""
    tokens = model.tokenize([text])
    maps = []
    for i in range(0, len(frames), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch]))[:, None]     # (n, 1, H, W, 3)
        maps.append(model.heatmap(model.preprocess_frames(chunk), tokens)[:, 0].float())
    h = torch.cat(maps, 0)
    h = h - h.flatten(1).min(1).values[:, None, None]
    h = h / (h.flatten(1).max(1).values[:, None, None] + 1e-8)
    return h.cpu().numpy()


def ground_video(model, frames: np.ndarray, times: np.ndarray, pool: list[str], geometry: CropGeometry,
                 cfg: InferenceConfig | None = None) -> list[FramePrediction]:
    """Per-frame action, score, point and box for an untrimmed video given as (n, S, S, 3) uint8 frames."""
    cfg = cfg or InferenceConfig()
    pool = [p for p in pool if p != "background"]
    if not pool:
        raise ValueError("the action pool is empty (besides 'background')")
    scores = temporal_scores(model, frames, pool, cfg.batch_frames, cfg.scores)
    return decode_video(scores, times, geometry, cfg,
                        lambda lab, idx: spatial_heatmaps(model, frames[idx], pool[lab], cfg.batch_frames), pool)


def decode_video(scores: np.ndarray, times: np.ndarray, geometry: CropGeometry, cfg: InferenceConfig,
                 heatmaps, pool: list[str]) -> list[FramePrediction]:
    """ground_video after the encoder: (frames, pool) scores -> labels, segments, and for every frame of a
    segment the point and box of its description's heatmap. heatmaps(label, frame indices) -> (len, gh, gw); a
    caller that holds every frame's heatmap for every description (grounding.calibrate) decodes many
    InferenceConfigs from one encoding."""
    labels, best = label_frames(scores, cfg)
    step_s = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    keep = np.full(len(labels), -1)
    for lab, s, e in segments_from_labels(labels, times, step_s, cfg.min_segment):
        keep[(times >= s) & (times < e)] = lab
    preds = [FramePrediction(time=float(t), step="background", score=float(b)) for t, b in zip(times, best)]
    for lab in sorted(set(keep.tolist()) - {-1}):
        idx = np.nonzero(keep == lab)[0]
        for j, h in zip(idx, heatmaps(lab, idx)):
            p = preds[j]
            p.step = pool[lab]
            p.point, p.box = locate(h, geometry, cfg.box_threshold, cfg.box_upsample)
            p.heatmap = h
    return preds


def locate(heat: np.ndarray, geometry: CropGeometry, threshold: float, upsample: bool = False):
    """Heatmap (gh, gw) of a crop -> (point, box) in source-video pixels (see peak_and_box). The point is the peak
    cell's centre; with `upsample` the box is taken on the heatmap bilinearly upsampled to the crop's pixels
    (InferenceConfig.box_upsample) instead of on whole cells."""
    (px, py), (x1, y1, x2, y2) = peak_and_box(heat, threshold)
    sx, sy = geometry.size / heat.shape[1], geometry.size / heat.shape[0]
    if upsample:   # the box in crop pixels: scale 1
        _, (x1, y1, x2, y2) = peak_and_box(upsample_heatmap(heat.astype(np.float32), geometry.size), threshold)
        bx, by = 1.0, 1.0
    else:
        bx, by = sx, sy
    return (geometry.to_source(px * sx, py * sy),
            (*geometry.to_source(x1 * bx, y1 * by), *geometry.to_source(x2 * bx, y2 * by)))


def segments_of(preds: list[FramePrediction], step: str, period: float) -> list[tuple[float, float]]:
    """Maximal runs of consecutive frames predicted as `step` -> [(start_s, end_s)]."""
    segs: list[list[float]] = []
    for p in preds:
        if p.step != step:
            continue
        if segs and p.time - segs[-1][1] < 0.5 * period:
            segs[-1][1] = p.time + period
        else:
            segs.append([p.time, p.time + period])
    return [(s, e) for s, e in segs]


def upsample_heatmap(heat: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(heat)[None, None].float()
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
