"""The temporal family's training batches (the WSRA Batcher) and the padding helpers every family's batches use.

Step s's batch is drawn with a generator seeded by (seed, s), so a resume needs no data state; the STVG batcher
(finetune/stvg_batches.py) subclasses this one and only changes what a row holds.
"""
from __future__ import annotations

import numpy as np
import torch

from finetune.datasets import WeakSample
from finetune.features import VideoFeatures
from finetune.heads.base import TextBatch, TrainBatch, VideoBatch


def subsample(n: int, most: int) -> np.ndarray:
    """Indices of at most `most` of n frames, evenly spread (all of them when most <= 0)."""
    if most <= 0 or n <= most:
        return np.arange(n)
    return np.round(np.linspace(0, n - 1, most)).astype(np.int64)


def stack(rows: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, ...) zero-padded and its (B, T) validity mask from arrays of T_i rows (None: an empty row)."""
    ref = next(r for r in rows if r is not None)
    t = max(len(r) for r in rows if r is not None)
    out = np.zeros((len(rows), t, *ref.shape[1:]), dtype=ref.dtype)
    mask = np.zeros((len(rows), t), dtype=bool)
    for i, r in enumerate(rows):
        if r is not None:
            out[i, :len(r)] = r
            mask[i, :len(r)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


class Batcher:
    """Step s's batch: batch_size distinct videos drawn with a generator seeded by (seed, s), each with up to
    queries_per_video of its weak queries (one row per query; with more than one, a video's other queries are
    negatives for it too), and, when a pseudo-positive table is given, one gated pseudo-positive video per row
    (Eq. 10's lambda from the table's caption cosine)."""

    def __init__(self, cfg, samples: list[WeakSample], videos: dict[str, VideoFeatures],
                 text_of, table: dict | None = None, tokenize=None, regions: bool = False, gate: float = 1.0):
        self.cfg = cfg
        self.gate = gate   # a pseudo-positive pair counts when its caption cosine exceeds this (Eq. 10's tau)
        self.regions = regions
        self.videos = videos
        self.text_of = text_of
        self.tokenize = tokenize
        self.by_video: dict[str, list[WeakSample]] = {}
        for s in samples:
            if s.video in videos:
                self.by_video.setdefault(s.video, []).append(s)
        self.vids = sorted(self.by_video)
        if len(self.vids) < 2:
            raise ValueError(f"{len(self.vids)} training video(s) with features and weak queries; need >= 2")
        self.video_of_key = {s.key: s.video for s in samples}
        self.table = table or {}

    def _positive(self, rng, sample: WeakSample) -> str | None:
        gated = [n for n, _, cos in self.table.get(sample.key, ())
                 if cos > self.gate and self.video_of_key.get(n) in self.videos
                 and self.video_of_key[n] != sample.video]
        return self.video_of_key[gated[int(rng.integers(len(gated)))]] if gated else None

    def _pad(self, vids: list[str | None]) -> VideoBatch:
        """Rows padded to the longest video (a None row is all padding); pixels instead of features end to end;
        region features too when the head asks for them."""
        pixels = self.cfg.features.end_to_end
        rows, regions = [], []
        for v in vids:
            f = self.videos[v] if v is not None else None
            idx = subsample(len(f.times), self.cfg.features.max_frames) if f is not None else None
            rows.append(None if f is None else f.pixels[idx] if pixels else f.frames[idx].astype(np.float32))
            regions.append(None if f is None or not self.regions else f.regions[idx].astype(np.float32))
        out, mask = stack(rows)
        if not self.regions:
            return VideoBatch(out, mask)
        reg, _ = stack(regions)
        return VideoBatch(out, mask, reg, mask.unsqueeze(-1).expand(*reg.shape[:3]))

    def batch(self, step: int) -> tuple[TrainBatch, list[WeakSample], torch.Tensor | None]:
        rng = np.random.default_rng([self.cfg.seed, step])
        n = min(self.cfg.batch_size, len(self.vids))
        picked = [self.vids[i] for i in rng.choice(len(self.vids), size=n, replace=False)]
        chosen, samples, groups = [], [], []
        for g, v in enumerate(picked):
            own = self.by_video[v]
            for i in rng.choice(len(own), size=min(self.cfg.queries_per_video, len(own)), replace=False):
                chosen.append(v)
                samples.append(own[int(i)])
                groups.append(g)
        video = self._pad(chosen)
        sentences = [s.sentence for s in samples]
        tokens = None
        if self.tokenize is not None:  # end to end: the module encodes the text itself
            tokens = self.tokenize(sentences)
            text = TextBatch(torch.zeros(len(samples), 0))
        else:
            tf = self.text_of(sentences)
            text = TextBatch(torch.from_numpy(tf.sentence), torch.from_numpy(tf.words),
                             torch.from_numpy(tf.word_mask))
        positive, gate = None, None
        if self.table:
            pos = [self._positive(rng, s) for s in samples]
            if any(p is not None for p in pos):
                positive = self._pad(pos)
                gate = torch.tensor([p is not None for p in pos], dtype=torch.float32)
        return TrainBatch(video, text, positive, gate, torch.tensor(groups)), samples, tokens


__all__ = ["Batcher", "stack", "subsample"]
