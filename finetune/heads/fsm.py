"""The supervised FSM head (shared/papers/fsm_stvg.txt): cross-modal feature matching (Eqs. 1-6), a DETR-style
decoder with N queries and time-aware self-attention, tube sequence matching (Eq. 8), MRCL (Eq. 10), KL start/end
loss, and inference by Eqs. 12-13 with the joint start/end distribution.

Visual tokens per frame are the cached region features (B, T, N, d); the anchor decoder (Eq. 9), the guided
attention loss and the multi-scale (earlier layer) input are not implemented yet (docs/fsm.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from finetune.config import FsmConfig
from finetune.heads.base import GroundingHead, TextBatch, TrainBatch, VideoBatch
from finetune.heads.stvg import TubeOutput


def _ffn(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))


def gated_correlation(x, y, y_mask, ffn_c, ffn_s, ffn_g, ffn_a, gate: bool):
    """Eqs. 1-3 on one frame's tokens x (F, n, d) and words y (F, K, d): self- and text-correlated tokens, mutually
    gated, then self-gated with a residual to x."""
    d = x.shape[-1]
    xs = torch.softmax(x @ x.transpose(1, 2) / math.sqrt(d), -1) @ x
    logits = (x @ y.transpose(1, 2) / math.sqrt(d)).masked_fill(~y_mask[:, None, :], -1e4)
    xc = torch.softmax(logits, -1) @ y
    if not gate:
        return xs + xc + x
    xa = torch.sigmoid(ffn_c(xc)) * xs + torch.sigmoid(ffn_s(xs)) * xc
    return torch.sigmoid(ffn_g(xa)) * ffn_a(xa) + x


def video_fusion(xg, xe, ye, gamma):
    """Eqs. 4-5: xg (B, T, n, d) scaled per frame by sigmoid(x_e y_e / sqrt d) and alpha_t = tanh(gamma_t) + 1."""
    d = xg.shape[-1]
    sim = torch.sigmoid((xe * ye[:, None, :]).sum(-1) / math.sqrt(d))      # (B, T)
    alpha = torch.tanh(gamma) + 1.0                                          # (T,)
    return xg * (sim * alpha[None, :])[..., None, None]


def decode_span(start_logits, end_logits, mask):
    """(B, 2) feature-frame indices [s, e] (inclusive, e >= s) maximising p_s(s) p_e(e) over valid pairs."""
    neg = torch.finfo(start_logits.dtype).min / 4
    ls = torch.log_softmax(start_logits.masked_fill(~mask, neg), -1)
    le = torch.log_softmax(end_logits.masked_fill(~mask, neg), -1)
    joint = ls[:, :, None] + le[:, None, :]
    t = joint.shape[-1]
    ok = torch.ones(t, t, dtype=torch.bool, device=joint.device).triu() & mask[:, :, None] & mask[:, None, :]
    joint = joint.masked_fill(~ok, float("-inf")).flatten(1)
    best = joint.argmax(-1)
    return torch.stack([best // t, best % t], -1)


def mrcl(gt, pos, neg, mask, tau):
    """Eq. 10: gt, pos (T, d), neg (N-1, T, d), mask (T,) the true tube's frames."""
    gt, pos, neg = F.normalize(gt, dim=-1), F.normalize(pos, dim=-1), F.normalize(neg, dim=-1)
    lp = (gt * pos).sum(-1) / tau                                             # (T,)
    ln = (gt[None] * neg).sum(-1) / tau                                       # (N-1, T)
    m = mask.to(lp.dtype)
    all_logits = torch.cat([lp[mask], ln[:, mask].flatten()])
    denom = torch.logsumexp(all_logits, 0)
    return -((lp - denom) * m).sum() / m.sum().clamp_min(1.0)


def match_query(prob_logits, boxes, t_boxes, t_mask, cfg: FsmConfig) -> int:
    """Eq. 8 for one video: the query (of N) whose tube costs least against the truth (focal + L1 + GIoU)."""
    n = prob_logits.shape[0]
    target = t_mask.to(prob_logits.dtype)[None].expand(n, -1)
    cls = sigmoid_focal_loss(prob_logits, target, reduction="none").mean(-1)
    m = t_mask
    l1 = (boxes[:, m] - t_boxes[None, m]).abs().sum(-1).mean(-1) if m.any() else cls * 0
    giou = torch.stack([1 - generalized_box_iou(boxes[i, m], t_boxes[m]).diagonal().mean() if m.any()
                        else cls[0] * 0 for i in range(n)])
    cost = cfg.w_cls * cls + cfg.w_l1 * l1 + cfg.w_giou * giou
    # one truth tube per query: the Hungarian assignment of an N x 1 cost is its argmin (scipy is not in the
    # project's environment, and linear_sum_assignment would return the same row)
    return int(cost.detach().argmin())


class FsmHead(GroundingHead):
    name = "fsm"
    needs_regions = True
    supervised = True

    def __init__(self, dim: int, cfg: FsmConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.pv, self.pt = nn.Linear(dim, d), nn.Linear(dim, d)
        self.ffn_c, self.ffn_s, self.ffn_g, self.ffn_a = _ffn(d), _ffn(d), _ffn(d), _ffn(d)
        self.gamma = nn.Parameter(torch.zeros(cfg.max_frames))               # alpha_t = 1 at start
        self.queries = nn.Parameter(torch.randn(cfg.queries, d) * 0.1)
        self.cross = nn.MultiheadAttention(d, 4, batch_first=True)
        self.time_attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.box = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))
        self.prob, self.sted = nn.Linear(d, 1), nn.Linear(d, 2)

    def _forward(self, video: VideoBatch, text: TextBatch):
        b, t, n, _ = video.regions.shape
        x = self.pv(video.regions)
        y = self.pt(text.words)
        ym = text.word_mask
        k = y.shape[1]
        yf = y[:, None].expand(b, t, k, -1).reshape(b * t, k, -1)
        ymf = ym[:, None].expand(b, t, k).reshape(b * t, k)
        xf = x.reshape(b * t, n, -1)
        if self.cfg.frame_fusion:
            xf = gated_correlation(xf, yf, ymf, self.ffn_c, self.ffn_s, self.ffn_g, self.ffn_a, self.cfg.gate)
        xg = xf.view(b, t, n, -1)
        if self.cfg.video_fusion:
            rm = video.region_mask.to(xg.dtype)[..., None]
            xe = (xg * rm).sum(2) / rm.sum(2).clamp_min(1.0)
            w = ym.to(y.dtype)[..., None]
            ye = (y * w).sum(1) / w.sum(1).clamp_min(1.0)
            # prediction uses every frame of a video, which may exceed max_frames: later frames share the last gamma
            frames = torch.arange(t, device=xg.device).clamp_max(self.gamma.shape[0] - 1)
            xg = video_fusion(xg, xe, ye, self.gamma[frames])
        mem = torch.cat([xg.reshape(b * t, n, -1), yf], 1)                   # Eq. 6
        mem_pad = ~torch.cat([video.region_mask.reshape(b * t, n), ymf], 1)
        mem_pad[:, 0] = False                                                # a padded frame still attends somewhere
        q = self.queries[None].expand(b * t, -1, -1)
        nq = q.shape[1]
        h = self.norm1(q + self.cross(q, mem, mem, key_padding_mask=mem_pad)[0])
        h = h.view(b, t, nq, -1).transpose(1, 2).reshape(b * nq, t, -1)     # time-aware self-attention
        fpad = ~video.mask[:, None].expand(b, nq, t).reshape(b * nq, t)
        fpad[:, 0] = False
        h = self.norm2(h + self.time_attn(h, h, h, key_padding_mask=fpad)[0]).view(b, nq, t, -1)
        size = video.geometry.size                                           # (B, 2) w, h
        cx, cy, bw, bh = torch.sigmoid(self.box(h)).unbind(-1)
        sc = size[:, None, None, :]
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        boxes = boxes * torch.cat([sc, sc], -1)
        se = self.sted(h)
        frame_emb = xg.mean(2)                                               # (B, T, d): x^gt of Eq. 10
        return boxes, self.prob(h).squeeze(-1), se[..., 0], se[..., 1], h, frame_emb

    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        video, tg, cfg = batch.video, batch.targets, self.cfg
        boxes, prob, ls, le, h, frame_emb = self._forward(video, batch.text)
        b, nq, t, _ = boxes.shape
        scale = torch.cat([video.geometry.size, video.geometry.size], -1)[:, None, :]
        fid = video.geometry.frame_ids
        total, parts = boxes.new_zeros(()), {"cls": 0.0, "box": 0.0, "sted": 0.0, "mrcl": 0.0}
        for i in range(b):
            m = tg.box_mask[i] & video.mask[i]
            nb, tb = boxes[i] / scale[i], tg.boxes[i] / scale[i]
            j = match_query(prob[i], nb, tb, m, cfg)
            cls = sigmoid_focal_loss(prob[i, j][video.mask[i]], m.to(prob.dtype)[video.mask[i]], reduction="mean")
            box = boxes.new_zeros(())
            if m.any():
                box = cfg.w_l1 * (nb[j, m] - tb[m]).abs().sum(-1).mean() + \
                    cfg.w_giou * (1 - generalized_box_iou(nb[j, m], tb[m]).diagonal()).mean()
            inside = (fid[i] >= tg.sted[i, 0]) & (fid[i] < tg.sted[i, 1]) & video.mask[i]
            idx = inside.nonzero().flatten()
            s, e = (idx[0], idx[-1]) if len(idx) else (torch.tensor(0), torch.tensor(0))
            valid = video.mask[i]
            neg = torch.finfo(ls.dtype).min / 4
            sted = -torch.log_softmax(ls[i, j].masked_fill(~valid, neg), -1)[s] - \
                torch.log_softmax(le[i, j].masked_fill(~valid, neg), -1)[e]
            loss_i = cfg.w_cls * cls + box + cfg.w_sted * sted
            if cfg.mrcl and nq > 1 and m.any():
                others = torch.cat([h[i, :j], h[i, j + 1:]])
                r = mrcl(frame_emb[i], h[i, j], others, m, cfg.tau)
                loss_i = loss_i + cfg.w_mrcl * r
                parts["mrcl"] += float(r.detach()) / b
            total = total + loss_i / b
            parts["cls"] += float(cls.detach()) / b
            parts["box"] += float(box.detach()) / b
            parts["sted"] += float(sted.detach()) / b
        return {"loss": total, **{k: torch.tensor(v) for k, v in parts.items()}}

    def frame_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        _, prob, *_ = self._forward(video, text)
        return torch.sigmoid(prob).amax(1)

    def tube_output(self, video: VideoBatch, text: TextBatch) -> TubeOutput:
        boxes, prob, ls, le, _, _ = self._forward(video, text)
        m = video.mask.to(prob.dtype)[:, None]
        score = (torch.sigmoid(prob) * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # Eq. 12
        sel = score.argmax(1)                                                  # Eq. 13
        ar = torch.arange(len(sel), device=sel.device)
        span = decode_span(ls[ar, sel], le[ar, sel], video.mask)
        fid = video.geometry.frame_ids
        sted = torch.stack([fid[ar, span[:, 0]], fid[ar, span[:, 1]] + 1], -1)
        return TubeOutput(frame_scores=torch.sigmoid(prob[ar, sel]), sted=sted, boxes=boxes[ar, sel])
