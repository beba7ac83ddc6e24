"""STVG batches: a video's linked tubes (tubes.pipeline.VideoTubes) as a VideoBatch with its TubeGeometry, the
raw sentences with their word spans, and, for a supervised head only, the rows' StvgTargets. End to end
(features.end_to_end, FSM), the rows also carry their frames' pixels and the sentences' token ids: the module
recomputes the region and word features with the live encoder.

The Batcher of finetune/batches.py draws the rows (the same seeded (seed, step) draw, so a resume needs no data
state); this subclass only changes what a row holds. A weak finetune builds it without `truth`, and nothing in it
then holds a truth span or box: the videos are proposals, features and tubes, the samples (key, video, sentence).
"""
from __future__ import annotations

import numpy as np
import torch

from finetune.heads.base import TextBatch, TrainBatch, VideoBatch
from finetune.heads.stvg import StvgTargets, TubeGeometry
from finetune.stvg_features import token_spans
from finetune.batches import Batcher, subsample


def tube_ids(vt) -> np.ndarray:
    """(F, N) long: the tube each proposal of each frame lies on, -1 none."""
    out = np.full(vt.proposals.valid.shape, -1, np.int64)
    for m, t in enumerate(vt.tubes):
        on = np.flatnonzero(t.index >= 0)
        out[on, t.index[on]] = m
    return out


def video_batch(videos: list, max_frames: int = 0, tubes: int = 1) -> VideoBatch:
    """Rows of VideoTubes (None: an all-padding row) padded to the longest (frames) and widest (regions); frames
    evenly subsampled to at most max_frames (0: all). The multi-scale regions and the pixels come along when every
    row has them."""
    real = [v for v in videos if v is not None]
    idx = [None if v is None else subsample(len(v.proposals.frames), max_frames) for v in videos]
    t = max(len(i) for i in idx if i is not None)
    n = max(v.proposals.valid.shape[1] for v in real)
    d = real[0].regions.shape[-1]
    m = max([tubes] + [len(v.tubes) for v in real])
    b = len(videos)
    multiscale = all(v.regions_mid is not None for v in real)
    with_pixels = all(v.pixels is not None for v in real)
    frames = np.zeros((b, t, d), np.float32)
    regions_mid = np.zeros((b, t, n, d), np.float32) if multiscale else None
    pixels = np.zeros((b, t, *real[0].pixels.shape[1:]), np.uint8) if with_pixels else None
    mask = np.zeros((b, t), bool)
    regions = np.zeros((b, t, n, d), np.float32)
    rmask = np.zeros((b, t, n), bool)
    boxes = np.zeros((b, t, n, 4), np.float32)
    scores = np.zeros((b, t, n), np.float32)
    frame_ids = np.zeros((b, t), np.int64)
    times = np.zeros((b, t), np.float32)
    ids = np.full((b, t, n), -1, np.int64)
    act = np.zeros((b, t, n), np.float32)
    tmask = np.zeros((b, m), bool)
    fps = np.zeros(b, np.float32)
    size = np.zeros((b, 2), np.float32)
    for r, (v, i) in enumerate(zip(videos, idx)):
        if v is None:
            continue
        p, k, w = v.proposals, len(i), v.proposals.valid.shape[1]
        frames[r, :k], mask[r, :k] = v.frames[i], True
        regions[r, :k, :w], rmask[r, :k, :w] = v.regions[i], p.valid[i]
        if multiscale:
            regions_mid[r, :k, :w] = v.regions_mid[i]
        if with_pixels:   # with_pixels may have kept only the sampled frames already
            pixels[r, :k] = v.pixels if len(v.pixels) == k else v.pixels[i]
        boxes[r, :k, :w], scores[r, :k, :w] = p.boxes[i], p.scores[i]
        frame_ids[r, :k], times[r, :k] = p.frames[i], p.frames[i] / p.fps
        ids[r, :k, :w] = np.where(p.valid[i], tube_ids(v)[i], -1)
        act[r, :k, :w] = np.where(p.valid[i], v.region_activity[i], 0.0)
        tmask[r, :len(v.tubes)] = True
        fps[r], size[r] = p.fps, v.size
    T = torch.from_numpy
    geo = TubeGeometry(T(boxes), T(scores), T(frame_ids), T(times), T(ids), T(tmask), T(fps), T(size), T(act))
    opt = (lambda x: None if x is None else T(x))  # noqa: E731
    return VideoBatch(T(frames), T(mask), T(regions), T(rmask), geo, opt(regions_mid), opt(pixels))


def targets(truths: list, frame_ids: torch.Tensor) -> StvgTargets:
    """Rows' truth (finetune.datasets_stvg.TrainTruth) at the batch's feature frames."""
    b, t = frame_ids.shape
    boxes = np.zeros((b, t, 4), np.float32)
    on = np.zeros((b, t), bool)
    for r, tr in enumerate(truths):
        for j, f in enumerate(frame_ids[r].tolist()):
            box = tr.tube.box_at(f) if tr.sted[0] <= f < tr.sted[1] else None
            if box is not None:
                boxes[r, j], on[r, j] = box, True
    sted = torch.tensor([list(tr.sted) for tr in truths], dtype=torch.long)
    return StvgTargets(sted, torch.from_numpy(boxes), torch.from_numpy(on))


def text_batch(tf, sentences: list[str], tokenizer, prep=None) -> TextBatch:
    """The sentences' features, the raw sentences and each word row's characters; `prep` (the head spec's
    text_prep, or None) parses them into TextBatch.parsed here, once per batch, not in the head's every step."""
    k = tf.words.shape[1]
    spans = [token_spans(tokenizer, s, k) for s in sentences]
    mask = torch.from_numpy(tf.word_mask)
    return TextBatch(torch.from_numpy(tf.sentence), torch.from_numpy(tf.words), mask, list(sentences), spans,
                     None if prep is None else prep(list(sentences), spans, mask))


class StvgBatcher(Batcher):
    """`videos`: {vid: VideoTubes}; `truth`: {sample key: TrainTruth}, given only for a supervised head; `prep`:
    the head spec's text_prep (TextBatch.parsed), or None; `said`: also every training sentence of each batch
    video, parsed by `prep` (TrainBatch.said; the head spec's `said`)."""

    def __init__(self, cfg, samples, videos: dict, text_of, tokenizer, truth: dict | None = None, tokenize=None,
                 prep=None, said: bool = False):
        super().__init__(cfg, samples, videos, text_of)
        self.tokenizer = tokenizer
        self.prep = prep
        self.said = said   # the batch carries every training sentence of each of its videos (TrainBatch.said)
        self.truth = truth
        self.encoder_tokenize = tokenize   # end to end: the module encodes these token ids with the live text tower

    def _pad(self, vids) -> VideoBatch:
        return video_batch([self.videos[v] if v is not None else None for v in vids], self.cfg.features.max_frames,
                           self.cfg.tubes.tubes)

    def batch(self, step: int):
        batch, samples, _ = super().batch(step)
        sentences = [s.sentence for s in samples]
        text = text_batch(self.text_of(sentences), sentences, self.tokenizer, self.prep)
        tg = None
        if self.truth is not None:
            missing = [s.key for s in samples if s.key not in self.truth]
            if missing:
                raise KeyError(f"no training truth for sample(s) {missing[:3]}")
            tg = targets([self.truth[s.key] for s in samples], batch.video.geometry.frame_ids)
        tokens = None if self.encoder_tokenize is None else self.encoder_tokenize(sentences)
        said = self._said(samples, batch.groups) if self.said and self.prep is not None else None
        return (TrainBatch(batch.video, text, batch.positive, batch.positive_gate, batch.groups, tg, said), samples,
                tokens)

    def _said(self, samples, groups: torch.Tensor):
        """Every training sentence of each batch video (its weak labels: sentences, never spans or boxes), parsed
        by the head's text_prep, with its video's group."""
        from finetune.heads.when_score import SaidSentences

        video_of = {}
        for s, g in zip(samples, groups.tolist()):
            video_of.setdefault(g, s.video)
        sentences, owners = [], []
        for g, v in video_of.items():
            for s in self.by_video[v]:
                sentences.append(s.sentence)
                owners.append(g)
        return SaidSentences(self.prep(sentences, None, None), torch.tensor(owners, dtype=torch.long))


__all__ = ["StvgBatcher", "targets", "text_batch", "tube_ids", "video_batch"]
