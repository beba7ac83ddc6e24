"""The similarity STVG head: the zero-shot baseline as a head, plus a tiny trainable version of it.

Region score of query q on region r: the mean over q's words of cos(P r, g'(word)) (`tube_sim.words`, the
zero-shot row of tubes/zero_shot.py) or cos(P r, g(sentence)); frame score: cos(f(frame), g(sentence)). P is a
d x d map initialised to the identity, so the untrained head (`train=false`) is exactly the pretrained model's
query-to-region similarity. Training (weak: video-sentence pairs only) is a video-sentence NCE on
s(V, S) = max over V's tubes of the tube's mean region score, both directions, a video's other queries in the
batch not its negatives (finetune/losses_wsra.loss_video_query_nce). finetune/predict.py then takes the span
from the frame scores and the tube with the best mean region score inside it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError
from finetune.heads.base import GroundingHead, TextBatch, TrainBatch, VideoBatch
from finetune.heads.spec import STVG, HeadSpec
from finetune.heads.stvg import mean_unit_words, tube_pool
from finetune.losses_wsra import loss_video_query_nce


@dataclass
class TubeSimConfig:
    """The similarity STVG head (finetune/heads/tube_sim.py): untrained, the zero-shot baseline as a head; trained,
    a video-sentence contrastive loss on its tube scores."""
    temperature: float = 0.05        # logit temperature of the video-sentence NCE (cosines lie in [-1, 1])
    words: bool = True               # region score: mean word-region cosine (true) or region-sentence cosine


class TubeSimHead(GroundingHead):
    name = "tube_sim"
    needs_regions = True
    supervised = False

    def __init__(self, dim: int, cfg: TubeSimConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim))

    def _regions(self, video: VideoBatch) -> torch.Tensor:
        return F.normalize(self.proj(video.regions), dim=-1)

    def _query(self, text: TextBatch) -> torch.Tensor:
        """(Q, d): the mean of the valid unit word vectors, or the unit sentence vector. The mean word-region cosine
        of a unit region is its dot product with this mean, so the words never need a (..., K) axis."""
        if self.cfg.words and text.words is not None:
            return mean_unit_words(text.words, text.word_mask)
        return F.normalize(text.sentence, dim=-1)

    def pair_region_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        """(B, Q, T, N): every query on every region of every video."""
        return torch.einsum("btnd,qd->bqtn", self._regions(video), self._query(text))

    def region_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        return torch.einsum("btnd,bd->btn", self._regions(video), self._query(text))

    def frame_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        return torch.einsum("btd,bd->bt", F.normalize(video.frames, dim=-1), F.normalize(text.sentence, dim=-1))

    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        video, geo = batch.video, batch.video.geometry
        pair = self.pair_region_scores(video, batch.text)                      # (B, Q, T, N)
        b, q, t, n = pair.shape
        m = geo.tube_mask.shape[1]
        ids = geo.tube_ids[:, None].expand(b, q, t, n).reshape(b * q, t, n)
        tubes, _ = tube_pool(pair.reshape(b * q, t, n), ids, m)
        tubes = tubes.view(b, q, m).masked_fill(~geo.tube_mask[:, None, :], -1.0)
        pooled = tubes.max(-1).values                                          # (B videos, Q queries)
        loss = loss_video_query_nce(pooled, self.cfg.temperature, batch.groups)
        return {"loss": loss, "positive_score": pooled.diagonal().mean().detach()}


def _validate(section: TubeSimConfig, cfg) -> None:
    if section.temperature <= 0:
        raise ConfigError("tube_sim.temperature must be > 0")


SPEC = HeadSpec(name="tube_sim", head=TubeSimHead, config=TubeSimConfig, family=STVG, validate=_validate)
