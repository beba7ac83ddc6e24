"""The supervised FSM head (shared/papers/fsm_stvg.txt; docs/fsm.md): cross-modal feature matching (Eqs. 1-6), a
DETR-style decoder with N queries and time-aware self-attention, tube sequence matching by the Hungarian algorithm
on the Eq. 8 cost, the anchor decoder over the true tube's region features (Eq. 9, the same weights), MRCL (Eq. 10),
KL start/end and guided attention losses (Eq. 11), inference by Eqs. 12-13 with the joint start/end distribution.

Visual tokens per frame are the cached region features (B, T, N, d) of the proposals, each with an embedding of
its box (the tokens' position, as DETR's memory carries one) and each frame with a sinusoidal embedding of its time
in seconds. Multi-scale (fsm.multiscale): each proposal also has its region feature over an earlier visual block,
projected to d on its own and summed into the proposal's token; backbone finetuning (features.end_to_end) feeds
the same inputs computed by the live encoder (finetune/train.py). docs/fsm.md says why and how.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from common.config import ConfigError
from finetune.heads.base import GroundingHead, TextBatch, TrainBatch, VideoBatch
from finetune.heads.spec import STVG, HeadSpec
from finetune.heads.stvg import TubeOutput, mean_unit_words, native_spans, tube_rest_delta
from finetune.heads.when_score import ParsedVerbs, VerbIds, tube_segment, when_logits


@dataclass
class FsmConfig:
    """The supervised FSM head (finetune/heads/fsm.py, docs/stvg.md section 4): switches for the paper's ablations."""
    dim: int = 64                    # model width d after the input projection
    queries: int = 5                 # N learnable object queries (paper: 5; ablation 1, 3, 10)
    heads: int = 4                   # attention heads of the decoder (paper: 8)
    ffn: int = 0                     # decoder FFN width; 0: 2 x dim (paper: 2048)
    frame_fusion: bool = True        # Eqs. 1-3 (Table III)
    video_fusion: bool = True        # Eqs. 4-5 (Table III)
    gate: bool = True                # the sigmoid FFN gates of Eqs. 2-3 (Table IV); off: plain sums
    mrcl: bool = True                # Eq. 10
    tau: float = 0.1                 # MRCL temperature
    max_frames: int = 256            # gamma_t of Eq. 5 per frame; later frames share the last one
    anchor: bool = True              # Eq. 9 anchor decoder for MRCL's x^gt; off: the true box's pooled tokens
    share_decoder: bool = True       # the anchor decoder shares the first decoder's weights (Table VIII)
    positions: bool = True           # region box and frame time embeddings (ours: region tokens carry no grid)
    box_ref: bool = True             # boxes refine the attention-weighted mean of the region boxes (ours)
    pointer: bool = True             # box_ref's weights from a pointer over the frame's proposals, not the
                                     # cross-attention: query-region logits + prior_scale x the pretrained
                                     # word-region cosine (ours, docs/fsm.md); needs box_ref
    proposal_boxes: bool = True      # prediction: each frame's box is the proposal the pointer ranks first (without
                                     # the pointer: the query's cross-attention), not the regressed box (ours)
    prior_scale: float = 10.0        # initial weight of the pretrained cosine in the pointer (learnt); 0: no prior
    w_pointer: float = 1.0           # cross-entropy of the matched query's pointer to the proposal that best
                                     # overlaps the true box (ours); 0: the pointer learns through the box terms only
    pointer_queries: str = "all"     # which queries' pointers that cross-entropy trains: matched (the Hungarian
                                     # match, as the box terms) | all (one truth object per video: every query's
                                     # pointer can learn it; the class term still tells the queries apart)
    sted_sigma: float = 1.0          # start/end targets: Gaussian of this many frames (TubeDETR); 0: one-hot
    w_cls: float = 0.2               # Eq. 11 lambdas, the paper's HC-STVG setting (VidSTG: w_mrcl 2); lambda_box
    w_l1: float = 1.0                # = 1 on both box terms, lambda_t 10, lambda_att 1; a weight of 0 is a term off
    w_giou: float = 1.0
    w_sted: float = 10.0
    w_att: float = 1.0               # guided attention loss on the time self-attention
    w_mrcl: float = 1.0
    multiscale: bool = False         # a second scale: the proposals over an earlier visual block (tubes.mid_layer)
    activity: bool = False           # each region token carries its tube's activity at that frame, and the start/end
                                     # and relevance heads the activity of the proposals the pointer picks (ours:
                                     # TubeGeometry.activity, tubes/activity.py; docs/stvg.md "The span rule")
    delta: bool = False              # each region token carries how it differs from its tube's rest appearance (a
                                     # vector: which change, so which verb), and the start/end and relevance heads
                                     # the fused tokens the pointer picks (ours; docs/fsm.md, tube_rest_delta)
    when: bool = False               # the span from a learnt when-score: each region's look and its change from its
                                     # tube's rest against an embedding of the sentence's parsed verb, trained on the
                                     # truth tube's frames; the span is its best segment along the tube the boxes
                                     # follow, instead of Eqs. 12-13 (ours; docs/fsm.md "The when-score")
    w_when: float = 1.0              # its loss weight
    when_scope: str = "tube"         # tube: the when-score trained along the truth's tube only, its span decoded on
                                     # the tube the boxes follow | video: trained on every tube's regions (1 on the
                                     # truth's tube inside the span, 0 on every other region and frame), so it says
                                     # *where* as well; decoded on the tube where it peaks, the boxes that tube's
                                     # (ours; docs/fsm.md)
    when_decode: str = "iou"         # its span along the chosen tube: iou (the run of largest expected tIoU, each
                                     # frame inside with the score's sigmoid) | segment (the best segment of the
                                     # standardised score; docs/fsm.md)
    when_words: str = "verb"         # the when-score's text: verb (the parsed verb's embedding) | target (plus the
                                     # grounded entity's parsed noun and attributes: which object, with when_scope
                                     # video)
    when_vocab: int = 1024           # hashed verb lemmas (finetune/query_parse.py hashed_ids)
    parser: str = "rules"            # the verb's parser: rules | spacy (fsm.when only)
    spacy_model: str = ""


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


def pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes a and b (..., 4) x1, y1, x2, y2, elementwise after broadcasting (0 for empty boxes)."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda z: (z[..., 2:] - z[..., :2]).clamp_min(0).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)


def time_encoding(times: torch.Tensor, d: int) -> torch.Tensor:
    """(B, T) seconds -> (B, T, d) sines and cosines at periods from 0.5 s to ~500 s: seconds, not frame indices,
    so training's subsampled frames and prediction's every frame share one code."""
    k = d // 2
    freq = 2 * math.pi / (0.5 * (1000.0 ** (torch.arange(k, device=times.device, dtype=times.dtype) / max(k - 1, 1))))
    ang = times[..., None] * freq
    return torch.cat([ang.sin(), ang.cos()], -1)


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


def guided_attention(attn, inside, valid):
    """TubeDETR's guided attention loss on the decoder's time self-attention attn (T, T) (query frame, key frame):
    for each query frame inside the true span, -sum over valid key frames outside it of log(1 - a); mean over the
    span's frames (0 when the span or its outside is empty)."""
    out_keys = (valid & ~inside).to(attn.dtype)
    per_query = -(torch.log1p(-attn.clamp(max=1 - 1e-6)) * out_keys[None, :]).sum(-1)
    m = inside.to(attn.dtype)
    return (per_query * m).sum() / m.sum().clamp_min(1.0)


def sted_targets(s: int, e: int, valid: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end target distributions over T frames: a Gaussian of sigma frames around the true boundary
    frame (TubeDETR's smoothing; sigma 0: one-hot), over the valid frames only."""
    t = torch.arange(valid.shape[0], device=valid.device, dtype=torch.float32)
    out = []
    for c in (s, e):
        p = torch.exp(-0.5 * ((t - c) / sigma) ** 2) if sigma > 0 else (t == c).float()
        p = p * valid.float()
        out.append(p / p.sum().clamp_min(1e-12))
    return out[0], out[1]


def kl_to(target: torch.Tensor, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) over the valid frames."""
    neg = torch.finfo(logits.dtype).min / 4
    logp = torch.log_softmax(logits.masked_fill(~valid, neg), -1)
    on = target > 0
    return (target[on] * (target[on].log() - logp[on])).sum()


def tube_costs(prob_logits, boxes, t_boxes, t_mask, cfg: FsmConfig) -> torch.Tensor:
    """Eq. 8's cost (N,) of each query's tube against one truth tube: focal over the video's frames (target 1 on
    the truth's boxed frames) + L1 + GIoU over the truth's frames, each a mean so videos of any length compare."""
    n = prob_logits.shape[0]
    target = t_mask.to(prob_logits.dtype)[None].expand(n, -1)
    cls = sigmoid_focal_loss(prob_logits, target, reduction="none").mean(-1)
    m = t_mask
    if not m.any():
        return cfg.w_cls * cls
    l1 = (boxes[:, m] - t_boxes[None, m]).abs().sum(-1).mean(-1)
    giou = generalized_box_iou_loss(boxes[:, m], t_boxes[None, m].expand(n, -1, -1), reduction="none").mean(-1)
    return cfg.w_cls * cls + cfg.w_l1 * l1 + cfg.w_giou * giou


def hungarian(cost: torch.Tensor) -> list[tuple[int, int]]:
    """The assignment (query, truth) of least total cost of a (N queries, G truths) matrix, N >= G."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: rc[1])


def match_query(prob_logits, boxes, t_boxes, t_mask, cfg: FsmConfig) -> int:
    """The query matched to a video's one truth tube (Eq. 8 through the Hungarian algorithm)."""
    return hungarian(tube_costs(prob_logits, boxes, t_boxes, t_mask, cfg)[:, None])[0][0]


class Decoder(nn.Module):
    """One decoder layer: queries cross-attend each frame's memory, then self-attend across the frames of their
    own query (time-aware), then an FFN; post-norm as DETR. Called by both streams of the two-stream decoder."""

    def __init__(self, d: int, heads: int = 4, ffn: int = 0):
        super().__init__()
        self.cross = nn.MultiheadAttention(d, heads, batch_first=True)
        self.time_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn or 2 * d), nn.ReLU(), nn.Linear(ffn or 2 * d, d))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, q, mem, mem_pad, time_pos, frame_pad):
        """q (B, nq, d) queries, mem (B, T, n, d), mem_pad (B, T, n) True = ignore, time_pos (B, T, d), frame_pad
        (B, T) True = ignore -> (h (B, nq, T, d), time attention (B, nq, T, T) and cross-attention (B, nq, T, n),
        both averaged over heads)."""
        b, t, n, d = mem.shape
        nq = q.shape[1]
        qf = q[:, None].expand(b, t, nq, d).reshape(b * t, nq, d)
        pad = mem_pad.reshape(b * t, n).clone()
        pad[:, 0] &= pad.all(-1).logical_not()    # a frame with no token still attends somewhere (its output unused)
        ca, cw = self.cross(qf, mem.reshape(b * t, n, d), mem.reshape(b * t, n, d), key_padding_mask=pad,
                            need_weights=True, average_attn_weights=True)
        h = self.norm1(qf + ca)
        h = h.view(b, t, nq, d).transpose(1, 2) + time_pos[:, None]           # (B, nq, T, d)
        h = h.reshape(b * nq, t, d)
        fpad = frame_pad[:, None].expand(b, nq, t).reshape(b * nq, t).clone()
        fpad[:, 0] &= fpad.all(-1).logical_not()
        att, w = self.time_attn(h, h, h, key_padding_mask=fpad, need_weights=True, average_attn_weights=True)
        h = self.norm2(h + att)
        h = self.norm3(h + self.ffn(h))
        return h.view(b, nq, t, d), w.view(b, nq, t, t), cw.view(b, t, nq, n).transpose(1, 2)


class FsmHead(GroundingHead):
    name = "fsm"
    needs_regions = True
    supervised = True

    def __init__(self, dim: int, cfg: FsmConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.pv, self.pt = nn.Linear(dim, d), nn.Linear(dim, d)
        # multi-scale: the earlier block's region features get their own projection to d (the paper projects each
        # level), drawn from a forked generator so every other weight starts as the single-scale head's
        with torch.random.fork_rng(devices=[]):
            self.pv_mid = nn.Linear(dim, d) if cfg.multiscale else None
        self.box_pos = nn.Sequential(nn.Linear(4, d), nn.ReLU(), nn.Linear(d, d))  # region box -> token position
        self.ffn_c, self.ffn_s, self.ffn_g, self.ffn_a = _ffn(d), _ffn(d), _ffn(d), _ffn(d)
        self.gamma = nn.Parameter(torch.zeros(cfg.max_frames))               # alpha_t = 1 at start
        self.queries = nn.Parameter(torch.randn(cfg.queries, d) * 0.1)
        self.decoder = Decoder(d, cfg.heads, cfg.ffn)
        self.q_gt = nn.Parameter(torch.randn(1, d) * 0.1)                    # q^gt of Eq. 9
        # Table VIII's unshared variant: the anchor stream gets its own copy of the decoder
        self.anchor_decoder = None if cfg.share_decoder else copy.deepcopy(self.decoder)
        self.box = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))
        if cfg.box_ref:   # start at the reference box itself
            nn.init.zeros_(self.box[-1].weight)
            nn.init.zeros_(self.box[-1].bias)
        self.prob = nn.Linear(d, 1)
        self.sted = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 2))  # the paper's 2-layer MLPs
        if cfg.activity:   # from forked generators: every other weight starts as without the switch
            with torch.random.fork_rng(devices=[]):
                self.act_token = nn.Linear(1, d)
                self.act_time = nn.Linear(1, d)
        if cfg.delta:
            with torch.random.fork_rng(devices=[]):
                self.pv_delta = nn.Linear(dim, d)
                self.pick_time = nn.Linear(d, d)
        if cfg.when:
            with torch.random.fork_rng(devices=[]):
                self.when_vis = nn.Sequential(nn.Linear(2 * dim, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
                self.when_verb = nn.Embedding(cfg.when_vocab, d)
                self.when_bias = nn.Parameter(torch.zeros(1))
                # the grounded entity's noun and attributes (when_words=target), summed into the verb's embedding
                self.when_target = (nn.Embedding(cfg.when_vocab, d, padding_idx=0)
                                    if cfg.when_words == "target" else None)
        if cfg.pointer:   # the reference box's pointer over the frame's proposals (ours, docs/fsm.md)
            self.ptr_q, self.ptr_k = nn.Linear(d, d), nn.Linear(d, d)
            self.prior_scale = nn.Parameter(torch.tensor([float(cfg.prior_scale)]))  # 1-d: DeepSpeed broadcasts views

    # --- the upper stream ---------------------------------------------------------------------------------------
    def _memory(self, video: VideoBatch, text: TextBatch):
        """Fused visual tokens (B, T, n, d) (Eqs. 1-5), the word tokens (B, K, d) and their mask."""
        b, t, n, _ = video.regions.shape
        geo = video.geometry
        x = self.pv(video.regions)
        if self.pv_mid is not None:
            # both scales pool the same box: one token per proposal, the sum of the projected scales (= a
            # projection of their channel concatenation, Eq. 14's X_t per box); Eq. 9's anchor reads these tokens
            if video.regions_mid is None:
                raise ValueError("fsm.multiscale: the batch carries no regions_mid (the earlier block's features)")
            x = x + self.pv_mid(video.regions_mid)
        if self.cfg.positions:
            wh = geo.size[:, None, None, :].repeat(1, 1, 1, 2).clamp_min(1.0)
            x = x + self.box_pos(geo.boxes / wh)
        if self.cfg.activity:
            x = x + self.act_token(self._activity(video)[..., None])
        if self.cfg.delta:
            x = x + self.pv_delta(tube_rest_delta(video.regions, geo.tube_ids, geo.tube_mask.shape[1]))
        y = self.pt(text.words)
        ym = text.word_mask
        k = y.shape[1]
        if self.cfg.frame_fusion:
            yf = y[:, None].expand(b, t, k, -1).reshape(b * t, k, -1)
            ymf = ym[:, None].expand(b, t, k).reshape(b * t, k)
            x = gated_correlation(x.reshape(b * t, n, -1), yf, ymf, self.ffn_c, self.ffn_s, self.ffn_g, self.ffn_a,
                                  self.cfg.gate).view(b, t, n, -1)
        if self.cfg.video_fusion:
            rm = video.region_mask.to(x.dtype)[..., None]
            xe = (x * rm).sum(2) / rm.sum(2).clamp_min(1.0)
            w = ym.to(y.dtype)[..., None]
            ye = (y * w).sum(1) / w.sum(1).clamp_min(1.0)
            # prediction uses every frame of a video, which may exceed max_frames: later frames share the last gamma
            frames = torch.arange(t, device=x.device).clamp_max(self.gamma.shape[0] - 1)
            x = video_fusion(x, xe, ye, self.gamma[frames])
        return x, y, ym

    def _activity(self, video: VideoBatch) -> torch.Tensor:
        if video.geometry.activity is None:
            raise ValueError("fsm.activity: the batch carries no region activity (TubeGeometry.activity)")
        return video.geometry.activity

    def _when(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        """(B, T, N) logits that the sentence's action is being done to region n's object at frame t (heads/
        when_score.py when_logits: the region's look and its change from its tube's rest against the parsed verb's
        embedding). The verb's own embedding, not the pooled words: the export's contextual word features hardly
        tell one verb from another in a sentence (docs/results/stvg.md)."""
        if not isinstance(text.parsed, ParsedVerbs):
            raise ValueError("fsm.when: the batch carries no parsed verbs (the fsm spec's text_prep)")
        geo = video.geometry
        return when_logits(self.when_vis, self.when_verb, self.when_target, self.when_bias, video.regions,
                           geo.tube_ids, geo.tube_mask.shape[1], text.parsed)

    def _when_loss(self, video: VideoBatch, when: torch.Tensor, tg, i: int, inside: torch.Tensor) -> torch.Tensor:
        """Row i's when-score loss: binary cross-entropy along the linked tube that follows the truth (the most
        mean IoU with the true box over the span's frames), 1 on its regions inside the span, 0 outside: the
        truth's boxes exist only inside the span, and the tube carries the object to the frames around it."""
        geo = video.geometry
        iou = pair_iou(geo.boxes[i], tg.boxes[i][:, None, :]) * (video.region_mask[i] & inside[:, None])
        m = geo.tube_mask.shape[1]
        ids = geo.tube_ids[i]
        on = (ids[..., None] == torch.arange(m, device=ids.device)) & video.region_mask[i][..., None]  # (T, N, M)
        per = (iou[..., None] * on).sum((0, 1)) / (on & inside[:, None, None]).sum((0, 1)).clamp_min(1)
        if not bool((per > 0).any()):
            return when.new_zeros(())
        truth = on[..., int(per.argmax())] & video.mask[i][:, None]
        if self.cfg.when_scope == "video":   # every tube's regions: the truth's inside the span are the positives
            keep = (ids >= 0) & video.region_mask[i] & video.mask[i][:, None]
            label = (truth & inside[:, None])[keep].to(when.dtype)
        else:
            keep = truth
            label = inside[:, None].expand_as(keep)[keep].to(when.dtype)
        return F.binary_cross_entropy_with_logits(when[i][keep], label)

    def _when_span(self, video: VideoBatch, when: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        """(B, 2) feature-frame [first, last] of each row's span: the when-score's span (_tube_segment) along the
        linked tube the chosen query's boxes follow most (its picked proposals' tubes, by count)."""
        geo = video.geometry
        out = []
        for b in range(when.shape[0]):
            n = int(video.mask[b].sum())
            ids = geo.tube_ids[b, :n]
            picked = ids.gather(1, pick[b, :n, None])[:, 0]
            picked = picked[picked >= 0]
            out.append(tube_segment(when[b, :n], ids, int(torch.mode(picked).values), self.cfg.when_decode)
                       if len(picked) else (0, n - 1))
        return torch.tensor(out, dtype=torch.long, device=when.device)

    def _when_tube_span(self, video: VideoBatch, when: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """when_scope=video: (B, 2) feature-frame [first, last] and (B,) tube of each row: the tube of the region
        where the when-score peaks (which object the sentence is about, and when it is most so), the span the
        score's along that tube (_tube_segment), as when_scope=tube decodes it. Not the joint (tube, segment) with
        the largest logit sum: trained with one positive tube among many, the logits sit below 0 nearly everywhere and
        that sum's best segment is a frame or two (docs/fsm.md "The when-score")."""
        geo = video.geometry
        spans, tubes = [], []
        for b in range(when.shape[0]):
            n = int(video.mask[b].sum())
            ids = geo.tube_ids[b, :n]
            valid = (ids >= 0) & video.region_mask[b, :n]
            if not bool(valid.any()):
                spans.append((0, n - 1))
                tubes.append(-1)
                continue
            w = when[b, :n]
            m = int(ids.reshape(-1)[int(w.masked_fill(~valid, float("-inf")).argmax())])
            spans.append(tube_segment(w, ids, m, self.cfg.when_decode))
            tubes.append(m)
        dev = when.device
        return torch.tensor(spans, dtype=torch.long, device=dev), torch.tensor(tubes, dtype=torch.long, device=dev)

    def _time_pos(self, video: VideoBatch, d: int):
        if not self.cfg.positions:
            return video.regions.new_zeros(*video.mask.shape, d)
        return time_encoding(video.geometry.times, d)

    def _prior(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        """(B, T, N) the pretrained model's query-to-region score: the mean over the sentence's words of
        cos(region, g'(word)), the zero-shot row of tubes/zero_shot.py (regions are cached L2-normalised)."""
        q = mean_unit_words(text.words, text.word_mask)
        return torch.einsum("btnd,bd->btn", F.normalize(video.regions, dim=-1), q)

    def _pointer(self, video: VideoBatch, text: TextBatch, h, x) -> torch.Tensor:
        """(B, nq, T, N) logits of each query's choice among each frame's proposals: a query-region dot product
        plus the pretrained word-region cosine scaled by a learnt weight (starting at fsm.prior_scale, so an
        untrained pointer already points where the zero-shot baseline does); padding at a large negative."""
        d = h.shape[-1]
        logits = torch.einsum("bqtd,btnd->bqtn", self.ptr_q(h), self.ptr_k(x)) / math.sqrt(d)
        logits = logits + self.prior_scale * self._prior(video, text)[:, None]
        return logits.masked_fill(~video.region_mask[:, None], torch.finfo(logits.dtype).min / 4)

    def _forward(self, video: VideoBatch, text: TextBatch):
        b, t, n, _ = video.regions.shape
        x, y, ym = self._memory(video, text)
        d = x.shape[-1]
        k = y.shape[1]
        mem = torch.cat([x, y[:, None].expand(b, t, k, d)], 2)              # Eq. 6
        mem_pad = ~torch.cat([video.region_mask, ym[:, None].expand(b, t, k)], 2)
        h, attn, cross = self.decoder(self.queries[None].expand(b, -1, -1), mem, mem_pad, self._time_pos(video, d),
                                      ~video.mask)
        size = video.geometry.size                                           # (B, 2) w, h
        sc = size[:, None, None, :]
        out = self.box(h)
        ptr = self._pointer(video, text, h, x) if self.cfg.pointer else None
        # what each query picks among each frame's proposals: its pointer, else its cross-attention
        pick = torch.softmax(ptr, -1) if ptr is not None else cross[..., :n]
        if self.cfg.box_ref:
            # the reference box: the query's cross-attention (fsm.pointer: its pointer) over the frame's regions,
            # averaging their boxes (cx, cy, w, h in [0, 1]); the MLP regresses a correction in logit space
            # (DAB-/Deformable-DETR's reference boxes; here the references are the proposals the cache's region
            # tokens come from)
            wts = pick * video.region_mask[:, None].to(pick.dtype)
            wts = wts / wts.sum(-1, keepdim=True).clamp_min(1e-9)
            g = video.geometry.boxes / torch.cat([size, size], -1)[:, None, None].clamp_min(1.0)  # (B, T, N, 4) in [0, 1]
            cxcywh = torch.stack([(g[..., 0] + g[..., 2]) / 2, (g[..., 1] + g[..., 3]) / 2,
                                  g[..., 2] - g[..., 0], g[..., 3] - g[..., 1]], -1).clamp(1e-4, 1 - 1e-4)
            ref = torch.einsum("bqtn,btnk->bqtk", wts, cxcywh).clamp(1e-4, 1 - 1e-4)
            out = out + torch.logit(ref)
        cx, cy, bw, bh = torch.sigmoid(out).unbind(-1)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        boxes = boxes * torch.cat([sc, sc], -1)
        if self.cfg.activity:
            # what the start/end and relevance heads see of *when*: the activity of the proposals each query
            # picks in each frame, i.e. whether the referred object is acted on now
            a = torch.einsum("bqtn,btn->bqt", pick, self._activity(video))
            ht = h + self.act_time(a[..., None])   # MRCL keeps the decoder's own h
        else:
            ht = h
        if self.cfg.delta:
            # the start/end and relevance heads also read the fused tokens each query picks in each frame: the
            # referred object's change (its delta) against the sentence (fused by Eqs. 1-3)
            ht = ht + self.pick_time(torch.einsum("bqtn,btnd->bqtd", pick, x))
        se = self.sted(ht)
        # each frame's ranking of its proposals: the pointer's logits, or without it the cross-attention weights
        choice = ptr if ptr is not None else cross[..., :n].masked_fill(~video.region_mask[:, None], -1.0)
        when = self._when(video, text) if self.cfg.when else None
        return boxes, self.prob(ht).squeeze(-1), se[..., 0], se[..., 1], h, attn, x, choice, when

    # --- the lower stream (training only) -----------------------------------------------------------------------
    def _anchor(self, video: VideoBatch, x, t_boxes, t_mask):
        """x^gt of Eq. 9 (B, T, d) and the frames it exists on (B, T): the learnable q^gt decoded over the true
        box's region tokens. Region tokens stand in for RoIAlign over a patch grid (the cache holds regions):
        a frame's memory is its fused tokens of the proposals with IoU >= 0.5 with the true box (at least the
        best one); a frame where no proposal touches the true box has no anchor."""
        b, t, n, d = x.shape
        iou = pair_iou(video.geometry.boxes, t_boxes[:, :, None, :]) * video.region_mask
        best = iou.amax(-1, keepdim=True)
        keep = ((iou >= 0.5) | (iou == best)) & (best > 0) & video.region_mask
        on = t_mask & video.mask & (best[..., 0] > 0)
        dec = self.decoder if self.anchor_decoder is None else self.anchor_decoder
        h, _, _ = dec(self.q_gt[None].expand(b, -1, -1), x, ~keep, self._time_pos(video, d), ~on)
        return h[:, 0], on

    def _anchor_plain(self, video: VideoBatch, x, t_boxes, t_mask):
        """fsm.anchor=false: x^gt is the frame's fused tokens of the true box's proposals, pooled, no decoder."""
        b, t, n, d = x.shape
        iou = pair_iou(video.geometry.boxes, t_boxes[:, :, None, :]) * video.region_mask
        w = iou / iou.sum(-1, keepdim=True).clamp_min(1e-6)
        return (x * w[..., None]).sum(2), t_mask & video.mask & (iou.amax(-1) > 0)

    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        video, tg, cfg = batch.video, batch.targets, self.cfg
        boxes, prob, ls, le, h, attn, x, ptr, when = self._forward(video, batch.text)
        ptr = ptr if cfg.pointer else None
        b, nq, t, _ = boxes.shape
        use_mrcl = cfg.mrcl and nq > 1
        if use_mrcl:
            anchor, anchor_on = (self._anchor if cfg.anchor else self._anchor_plain)(video, x, tg.boxes, tg.box_mask)
        scale = torch.cat([video.geometry.size, video.geometry.size], -1)[:, None, :]
        fid = video.geometry.frame_ids
        total = boxes.new_zeros(())
        parts = {"cls": 0.0, "box": 0.0, "sted": 0.0, "att": 0.0, "mrcl": 0.0, "pointer": 0.0}
        if when is not None:
            parts["when"] = 0.0
        if ptr is not None and cfg.w_pointer > 0:
            # the pointer's target on each truth frame: the proposal that overlaps the true box best
            iou = pair_iou(video.geometry.boxes, tg.boxes[:, :, None, :]) * video.region_mask
            best_iou, best = iou.max(-1)                                      # (B, T)
            ptr_on = tg.box_mask & video.mask & (best_iou > 0)
        for i in range(b):
            valid = video.mask[i]
            m = tg.box_mask[i] & valid
            nb, tb = boxes[i] / scale[i], tg.boxes[i] / scale[i]
            j = match_query(prob[i][:, valid], nb[:, valid], tb[valid], m[valid], cfg)   # padding is no frame
            # the matched query learns the truth's frames, the others the no-object label (the paper's footnote 1)
            target = torch.zeros_like(prob[i])
            target[j] = m.to(prob.dtype)
            cls = sigmoid_focal_loss(prob[i][:, valid], target[:, valid], reduction="none").mean(-1).sum()
            box = boxes.new_zeros(())
            if m.any():
                box = cfg.w_l1 * (nb[j, m] - tb[m]).abs().sum(-1).mean() + \
                    cfg.w_giou * generalized_box_iou_loss(nb[j, m], tb[m], reduction="none").mean()
            inside = (fid[i] >= tg.sted[i, 0]) & (fid[i] < tg.sted[i, 1]) & valid
            idx = inside.nonzero().flatten()
            sted = boxes.new_zeros(())
            if len(idx):  # a span between two sampled frames has no boundary frame to learn
                ps, pe = sted_targets(int(idx[0]), int(idx[-1]), valid, cfg.sted_sigma)
                sted = kl_to(ps, ls[i, j], valid) + kl_to(pe, le[i, j], valid)
            loss_i = cfg.w_cls * cls + box + cfg.w_sted * sted
            if cfg.w_att > 0 and len(idx):
                att = guided_attention(attn[i, j], inside, valid)
                loss_i = loss_i + cfg.w_att * att
                parts["att"] += float(att.detach()) / b
            if ptr is not None and cfg.w_pointer > 0 and ptr_on[i].any():
                f = ptr_on[i]
                if cfg.pointer_queries == "all":
                    pl = F.cross_entropy(ptr[i][:, f].flatten(0, 1), best[i, f].repeat(nq))
                else:
                    pl = F.cross_entropy(ptr[i, j, f], best[i, f])
                loss_i = loss_i + cfg.w_pointer * pl
                parts["pointer"] += float(pl.detach()) / b
            if use_mrcl and anchor_on[i].any():
                others = torch.cat([h[i, :j], h[i, j + 1:]])
                r = mrcl(anchor[i], h[i, j], others, anchor_on[i], cfg.tau)
                loss_i = loss_i + cfg.w_mrcl * r
                parts["mrcl"] += float(r.detach()) / b
            if when is not None and len(idx):
                wl = self._when_loss(video, when, tg, i, inside)
                loss_i = loss_i + cfg.w_when * wl
                parts["when"] += float(wl.detach()) / b
            total = total + loss_i / b
            parts["cls"] += float(cls.detach()) / b
            parts["box"] += float(box.detach()) / b
            parts["sted"] += float(sted.detach()) / b
        return {"loss": total, **{k: torch.tensor(v) for k, v in parts.items()}}

    # --- inference ----------------------------------------------------------------------------------------------
    def frame_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        _, prob, *_ = self._forward(video, text)
        return torch.sigmoid(prob).amax(1)

    def tube_output(self, video: VideoBatch, text: TextBatch) -> TubeOutput:
        boxes, prob, ls, le, *_, choice, when = self._forward(video, text)
        if self.cfg.proposal_boxes:
            # each frame's box is the proposal the pointer (or the attention) ranks first: the detector's box, not
            # the regression
            pick = choice.argmax(-1)                                           # (B, nq, T)
            g = video.geometry.boxes[:, None].expand(-1, pick.shape[1], -1, -1, -1)
            boxes = torch.gather(g, 3, pick[..., None, None].expand(*pick.shape, 1, 4))[..., 0, :]
        m = video.mask.to(prob.dtype)[:, None]
        score = (torch.sigmoid(prob) * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # Eq. 12
        sel = score.argmax(1)                                                  # Eq. 13
        ar = torch.arange(len(sel), device=sel.device)
        if when is not None and self.cfg.when_scope == "video":
            # the when-score's (tube, segment); the boxes are that tube's wherever it has a region
            span, tube = self._when_tube_span(video, when)
            ids = video.geometry.tube_ids
            on = (ids == tube[:, None, None]) & (tube[:, None, None] >= 0) & video.region_mask      # (B, T, N)
            tube_box = (video.geometry.boxes * on[..., None].to(boxes.dtype)).sum(2)           # one region a frame
            boxes = boxes.clone()
            boxes[ar, sel] = torch.where(on.any(-1)[..., None], tube_box, boxes[ar, sel])
        elif when is not None:   # fsm.when: the when-score's best segment on the object the boxes follow
            span = self._when_span(video, when, choice[ar, sel].argmax(-1))
        else:
            span = decode_span(ls[ar, sel], le[ar, sel], video.mask)
        sted = native_spans(video.geometry.frame_ids, span[:, 0], span[:, 1], video.mask.sum(1))
        return TubeOutput(frame_scores=torch.sigmoid(prob[ar, sel]), sted=sted, boxes=boxes[ar, sel], when=when)


def _validate(f: FsmConfig, cfg) -> None:
    for name, ok, rule in (("heads", f.heads >= 1, ">= 1"), ("ffn", f.ffn >= 0, ">= 0"),
                           ("dim", f.dim > 0 and f.dim % max(f.heads, 1) == 0 and f.dim % 2 == 0,
                            f"a positive multiple of fsm.heads ({f.heads}), and even (sine/cosine time code)"),
                           ("queries", f.queries >= 1, ">= 1"), ("tau", f.tau > 0, "> 0"),
                           ("max_frames", f.max_frames >= 1, ">= 1"),
                           ("sted_sigma", f.sted_sigma >= 0, ">= 0"),
                           ("pointer_queries", f.pointer_queries in ("matched", "all"), "matched or all"),
                           ("when_vocab", f.when_vocab >= 3, ">= 3"),
                           ("parser", f.parser in ("rules", "spacy"), "rules or spacy"),
                           ("when_scope", f.when_scope in ("tube", "video"), "tube or video"),
                           ("when_words", f.when_words in ("verb", "target"), "verb or target"),
                           ("when_decode", f.when_decode in ("iou", "segment"), "iou or segment"),
                           *((k, f.when or getattr(f, k) == v, f"{v} (the default) unless fsm.when is true")
                             for k, v in (("when_scope", "tube"), ("when_words", "verb"), ("when_decode", "iou"))),
                           ("pointer", f.box_ref or not f.pointer, "false when fsm.box_ref is false (it sets the "
                                                                    "reference box's weights)"),
                           *((w, getattr(f, w) >= 0, ">= 0") for w in ("w_cls", "w_l1", "w_giou", "w_sted", "w_att",
                                                                        "w_mrcl", "w_pointer", "prior_scale",
                                                                        "w_when"))):
        if not ok:
            raise ConfigError(f"fsm.{name} must be {rule}")
    weights = ("w_cls", "w_l1", "w_giou", "w_sted", "w_att", "w_mrcl", "w_pointer") + (("w_when",) if f.when else ())
    if not any(getattr(f, w) > 0 for w in weights):
        raise ConfigError(f"fsm.{'/'.join(weights)} are all 0: nothing would be trained")


def _check_io(cfg) -> None:
    """fsm.when with parser=spacy: the installed spaCy model, one error line before any feature work."""
    if cfg.fsm.when and cfg.fsm.parser == "spacy":
        from finetune.query_parse import spacy_parser

        spacy_parser(cfg.fsm.spacy_model, key="fsm.parser")


def _text_prep(cfg: FsmConfig):
    return VerbIds(cfg) if cfg.when else None


# end to end: the only STVG head that may train the encoder (its boxes are per frame, not a tube chosen among
# those linked once from the cached region features)
SPEC = HeadSpec(name="fsm", head=FsmHead, config=FsmConfig, family=STVG, end_to_end=True,
                mid_layer=lambda section: section.multiscale, validate=_validate, check_io=_check_io,
                text_prep=_text_prep)
