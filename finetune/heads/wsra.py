"""WSRA head: the referring attention phi(v, t) = Sigmoid(FC(Cat(v, t))) (Eq. 2) trained with Eq. 11,
alpha L_bg + beta L_crov + gamma L_vas + delta L_ins-vas (finetune/losses_wsra.py), plus, when wsra.epsilon > 0,
epsilon times our video-query NCE on attention-pooled scores (losses_wsra.loss_video_query_nce).

FC is two layers (Linear -> ReLU -> Linear): with a single linear layer, w . Cat(v, t) = w_v . v + w_t . t, the
query would only add a constant to every frame's score, and the softmax of Eq. 2 would rank the frames of a video
the same way for every query. The first layer is applied as W_v v + W_t t (the same map as W Cat(v, t)), so all
(video, query) pairs of a batch are scored without building the concatenations. `fuse: cat_mul` adds v * t to the
input (Cat(v, t, v * t)), an explicit interaction the paper does not use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError
from finetune import losses_wsra as L
from finetune.heads.base import GroundingHead, TextBatch, TrainBatch, VideoBatch
from finetune.heads.spec import TEMPORAL, HeadSpec


@dataclass
class WsraConfig:
    """Weights and margins of Eq. 11 (alpha L_bg + beta L_crov + gamma L_vas + delta L_ins-vas); a weight of 0
    switches its term off (paper Table 1). Defaults: the paper's DiDeMo setting (delta = 1, the others 0.1)."""
    alpha: float = 0.1               # L_bg, Eq. 3
    beta: float = 0.1                # L_crov, Eq. 9 (also off when no pseudo-positive table is given)
    gamma: float = 0.1               # L_vas, Eq. 5
    delta: float = 1.0               # L_ins-vas, Eq. 6
    margin: float = 0.2              # m of Eqs. 3, 5, 6 (phi lies in (0, 1))
    bg_temperature: float = 10.0     # gamma of Eq. 3 (the "temperature factor")
    crov_margin: float = 0.2         # m of Eq. 9 (cosine units)
    crov_tau: float = 0.9            # tau of Eq. 10: caption cosine a pseudo-positive pair must exceed
    top_k: int = 3                   # Sec. 3.2.1: most similar queries removed (pseudo-positives)
    last_k: int = 2                  # least similar queries removed (easy negatives); Fig. 5's best is 3 / 2
    attention_temperature: float = 1.0  # Eq. 2 as softmax(phi / this); 1 is the paper (see heads/wsra.py)
    hidden: int = 256                # width of phi's hidden layer
    fuse: str = "cat"                # phi input: cat = Cat(v, t) (Eq. 2) | cat_mul = Cat(v, t, v*t)
    dropout: float = 0.1
    moment_score: str = "contrast"   # how frame scores rank a candidate moment: mean | contrast (in - out)
    epsilon: float = 0.0             # our addition: weight of the video-query NCE (losses_wsra.loss_video_query_nce)
    nce_temperature: float = 0.05    # its logit temperature (phi lies in (0, 1))


class WSRAHead(GroundingHead):
    name = "wsra"
    needs_regions = False

    def __init__(self, dim: int, cfg: WsraConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.fc_v = nn.Linear(dim, h)
        self.fc_t = nn.Linear(dim, h, bias=False)
        self.fc_m = nn.Linear(dim, h, bias=False) if cfg.fuse == "cat_mul" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, 1)
        # the encoders' features are L2-normalised (entries ~ 1/sqrt(d)); nn.Linear's init assumes entries ~ 1
        self.scale = dim ** 0.5

    def phi(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """phi(v, t) in (0, 1) for broadcastable v (..., d), t (..., d) -> (...)."""
        v, t = v * self.scale, t * self.scale
        h = self.fc_v(v) + self.fc_t(t)
        if self.fc_m is not None:
            h = h + self.fc_m(v * t)
        return torch.sigmoid(self.out(self.drop(F.relu(h))).squeeze(-1))

    def pair_scores(self, frames: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """(B, T, d) x (Q, d) -> (B, Q, T): phi of every query on every frame of every video."""
        return self.phi(frames.unsqueeze(1), sentence[None, :, None, :])

    def frame_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        return self.phi(video.frames, text.sentence.unsqueeze(1))

    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        v, mask, t = batch.video.frames, batch.video.mask, batch.text.sentence
        n = v.shape[0]
        idx = torch.arange(n, device=v.device)
        need_pairs = cfg.delta > 0 or cfg.epsilon > 0
        if need_pairs:
            phi_all = self.pair_scores(v, t)                                 # (N, N, T): [video, query, frame]
            alpha_all = L.referring_attention(phi_all / cfg.attention_temperature, mask.unsqueeze(1))
            alpha = alpha_all[idx, idx]
        else:
            alpha = L.referring_attention(self.phi(v, t.unsqueeze(1)) / cfg.attention_temperature, mask)
        v_f, v_b = L.foreground_background(v, alpha, mask)
        s_p = self.phi(v_f, t)
        parts: dict[str, torch.Tensor] = {}
        total = v.new_zeros(())
        if cfg.alpha > 0:
            parts["loss_bg"] = L.loss_bg(s_p, self.phi(v_b, t), cfg.margin, cfg.bg_temperature)
            total = total + cfg.alpha * parts["loss_bg"]
        if cfg.gamma > 0 or cfg.delta > 0:
            sim = F.normalize(t, dim=-1) @ F.normalize(t, dim=-1).t()
            negatives = L.top_last_k_negatives(sim.detach(), cfg.top_k, cfg.last_k)
            parts["negatives_per_query"] = negatives.sum(1).float().mean()
            if cfg.gamma > 0:
                s_neg = self.phi(v_f.unsqueeze(1), t.unsqueeze(0))            # (N, N): [i, j] = phi(v_f^i, t^j)
                parts["loss_vas"] = L.loss_vas(s_p, s_neg, negatives, cfg.margin)
                total = total + cfg.gamma * parts["loss_vas"]
            if cfg.delta > 0:
                parts["loss_ins_vas"] = L.loss_ins_vas(alpha_all, phi_all, negatives, mask, cfg.margin)
                total = total + cfg.delta * parts["loss_ins_vas"]
        if cfg.epsilon > 0:
            pooled = (alpha_all * phi_all).sum(-1)   # each query's frame scores pooled by Eq. 2's weights: a soft max
            parts["loss_nce"] = L.loss_video_query_nce(pooled, cfg.nce_temperature, batch.groups)
            total = total + cfg.epsilon * parts["loss_nce"]
        gate = batch.positive_gate
        if cfg.beta > 0 and batch.positive is not None and gate is not None and bool(gate.any()):
            u_f, u_b = L.cross_video_attention(batch.positive.frames, batch.positive.mask, v_f)
            parts["loss_crov"] = L.loss_crov(u_f, u_b, v_f, gate, cfg.crov_margin)
            parts["crov_rows"] = gate.sum()
            total = total + cfg.beta * parts["loss_crov"]
        out = {"loss": total}
        out.update({k: p.detach() for k, p in parts.items()})
        return out


def _validate(w: WsraConfig, cfg) -> None:
    err = ConfigError
    weights = (w.alpha, w.beta, w.gamma, w.delta, w.epsilon)
    if min(weights) < 0 or sum(weights) == 0:
        raise err("wsra.alpha/beta/gamma/delta/epsilon must be >= 0 and not all 0")
    if w.nce_temperature <= 0:
        raise err("wsra.nce_temperature must be > 0")
    if w.top_k < 0 or w.last_k < 0:
        raise err("wsra.top_k and wsra.last_k must be >= 0")
    if w.attention_temperature <= 0:
        raise err("wsra.attention_temperature must be > 0")
    if w.fuse not in ("cat", "cat_mul"):
        raise err(f"wsra.fuse must be cat or cat_mul, not {w.fuse!r}")
    if w.moment_score not in ("mean", "contrast"):
        raise err(f"wsra.moment_score must be mean or contrast, not {w.moment_score!r}")


SPEC = HeadSpec(name="wsra", head=WSRAHead, config=WsraConfig, family=TEMPORAL, end_to_end=True, validate=_validate,
                # L_crov's pairs (Eq. 9) only when its weight is on; Eq. 10's tau gates them
                pseudo_positives=lambda w: w.crov_tau if w.beta > 0 else None,
                predict_options=lambda w: {"mode": w.moment_score})
