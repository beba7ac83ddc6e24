"""The weakly supervised WINNER head (shared/papers/winner_cvpr23.txt; decisions in docs/winner.md).

From (video, sentence) pairs only:
- language structure decomposition (Eqs. 1-4): a soft chart over all spans of the sentence's word features, built
  bottom-up one layer (span length) at a time, every sentence and span of a layer at once (`Chart`, `inside`);
- structure-guided video hierarchical understanding, SVHU (Eqs. 5-14): each node attends over the video's tubes
  with its own correlation plus the mean correlation of its ancestors and descendants, nodes whose correlation
  pattern disagrees with the sentence's mean left out (Eq. 7); the attended tube is injected into the node and the
  chart rebuilt on the fused nodes; a top-down (outside) pass gives every node its context feature r^U; the leaves'
  r^U reconstruct the sentence's words (a word NCE over the batch);
- temporal localisation (the paper's appendix is missing): the root node scores the video's clips (runs of equal
  segments) by cosine with the clip's mean frame feature, trained by a clip NCE across the batch's videos; the best
  clip crops the tubes;
- decomposition structure alignment, DSA (Eqs. 15-21): node-tube similarity on the cropped tubes, max over tubes,
  a word-level NCE over videos and a phrase-level hinge weighted by node existence.
Every sentence of a training batch is paired with every video of it (the tree is multi-modal, so it depends on
the video it is read against); inference grounds the subject's node in its own video.
Ours, off by default: `when`, a weak when-score beside the paper's losses (heads/when_score.py; its own weights,
loss and learning rate), whose peak helps choose the tube and whose logits `span.rule=when` decodes.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError
from finetune.heads.base import GroundingHead, TextBatch, TrainBatch, VideoBatch
from finetune.heads.spec import STVG, HeadSpec
from finetune.heads.stvg import TubeOutput, native_spans, tube_pool
from finetune.heads.when_score import (VerbIds, WeakWhenOptions, check_weak_when, weak_when_lr_groups,
                                         weak_when_score)
from finetune.losses_wsra import masked_softmax


@dataclass
class WinnerConfig(WeakWhenOptions):
    """The weakly supervised WINNER head (finetune/heads/winner.py, docs/winner.md): Eq. 8/10/20/21 weights at the
    paper's values (Sec. 4.1), the interfering-node threshold delta, and switches for Table 3 and our choices."""
    alpha: float = 1.0               # Eq. 8: weight of the node's own tube correlation (learnable, starts here)
    beta: float = 0.5                # Eq. 8: weight of the parent/child context (learnable, starts here)
    gamma: float = 0.5               # Eq. 20: hinge margin
    lam: float = 1.0                 # Eq. 10: lambda, weight of the visual cue injected into a node
    mu: float = 1.0                  # Eq. 21: weight of the word-level NCE (Eq. 18)
    delta: float = 0.0               # Eq. 7: a node whose correlation cosine to the mean is below this interferes
    center_filter: bool = True       # Eq. 7 on tube-centred correlations (false: the raw ones, as printed)
    dsa: bool = True                 # Table 3: false = word-tube NCE only (no phrase hinge, Eqs. 19-20)
    svhu: bool = True                # Table 3: false = no structural attention, backtracking or reconstruction
    temperature: float = 1.0         # Eq. 18 logits s / temperature (the paper: none, i.e. 1)
    recon: float = 1.0               # weight of the sentence reconstruction from the updated leaves (SVHU)
    recon_temperature: float = 0.1   # its word-NCE temperature
    temporal: float = 1.0            # weight of the clip NCE of the temporal localisation
    temporal_temperature: float = 0.1
    segments: int = 8                # a video's valid frames in this many equal segments; clips = runs of them
    subject: str = "noun"            # node grounded at inference: noun (first noun's leaf) | phrase | root
    existence: str = "marginal"      # Eq. 19 weight: marginal = exp(cB + cU - cB_root) <= 1 | product (as printed)
    hidden: int = 64                 # width of the merge MLPs (Eqs. 1, 11)


NEG = -1e4   # a score that never wins (finite, so 0 x NEG stays 0 in sums)


def token_words(sentence: str, spans) -> list[str]:
    return [sentence[a:b].lower() for a, b in spans]


@functools.lru_cache(maxsize=1 << 16)
def _parsed(sentence: str):
    # a sentence is parsed once per process, whatever the step or batch it comes back in
    from finetune.query_parse import parse

    return parse(sentence)


def subject_of(words: list[str], sentence: str | None = None, spans=None) -> tuple[int, int] | None:
    """(first, last) word index of the sentence's subject noun phrase; its last word is the head noun. The shared
    parser's (finetune/query_parse.py) target entity: its words after leading determiners and wh-words, up to its
    head noun (its last word when the noun is a placeholder: "what red thing is cut?" -> "red thing"); None when
    nothing is left ("what is cut left of the blue bowl?": the subject is only the wh-word). `words` are the word
    rows (a head's token words); `sentence` and `spans` (each word's [start, end) characters in it) let the parser
    read the sentence as written, else it reads the words joined by spaces."""
    from finetune.query_parse import DETERMINERS, WH

    if sentence is None or spans is None:
        sentence, spans, at = " ".join(words), [], 0
        for w in words:
            spans.append((at, at + len(w)))
            at += len(w) + 1
    p = _parsed(sentence)
    if p.target is None:
        return None
    e = p.entities[p.target]
    inside = [i for i, (a, b) in enumerate(spans[:len(words)]) if b > a and a >= e.start and b <= e.end]
    while inside and words[inside[0]] in DETERMINERS | WH:
        inside.pop(0)
    if not inside:
        return None
    nouns = [i for i in inside if e.noun is not None and words[i] == e.noun]
    return inside[0], (nouns[-1] if nouns else inside[-1])


class Chart:
    """Index tables of the span chart of K leaves. Spans are stored flat, length-major: span (start i, length l)
    at offset[l] + i, l = 1..K, i = 0..K-l (P = K (K + 1) / 2 spans)."""

    def __init__(self, k: int, device=None):
        self.k = k
        self.offset = [0, 0]
        for length in range(1, k + 1):
            self.offset.append(self.offset[-1] + k - length + 1)
        self.p = self.offset[k + 1]
        flat = lambda i, length: self.offset[length] + i  # noqa: E731
        self.start = torch.tensor([i for length in range(1, k + 1) for i in range(k - length + 1)], device=device)
        self.length = torch.tensor([length for length in range(1, k + 1) for _ in range(k - length + 1)],
                                   device=device)
        # bottom-up (Eq. 1): span (i, l) splits into (i, s) + (i + s, l - s), s = 1..l-1
        self.left, self.right = {}, {}
        # top-down (Eq. 11): span (i, l) under a parent of length L > l, extending right (sibling (i + l, L - l))
        # or left (sibling (i - (L - l), L - l)); `possible` marks candidates that lie inside K leaves
        self.parent, self.sibling, self.possible = {}, {}, {}
        for length in range(1, k + 1):
            n = k - length + 1
            if length > 1:
                self.left[length] = torch.tensor([[flat(i, s) for s in range(1, length)] for i in range(n)],
                                                 device=device)
                self.right[length] = torch.tensor([[flat(i + s, length - s) for s in range(1, length)]
                                                   for i in range(n)], device=device)
            par, sib, ok = [], [], []
            for i in range(n):
                row_p, row_s, row_ok = [], [], []
                for big in range(length + 1, k + 1):
                    extra = big - length
                    right_ok = i + big <= k
                    row_p.append(flat(i, big) if right_ok else 0)
                    row_s.append(flat(i + length, extra) if right_ok else 0)
                    row_ok.append(right_ok)
                    left_ok = i - extra >= 0
                    row_p.append(flat(i - extra, big) if left_ok else 0)
                    row_s.append(flat(i - extra, extra) if left_ok else 0)
                    row_ok.append(left_ok)
                par.append(row_p), sib.append(row_s), ok.append(row_ok)
            self.parent[length] = torch.tensor(par, dtype=torch.long, device=device).reshape(n, -1)
            self.sibling[length] = torch.tensor(sib, dtype=torch.long, device=device).reshape(n, -1)
            self.possible[length] = torch.tensor(ok, dtype=torch.bool, device=device).reshape(n, -1)
        end = self.start + self.length
        # ancestors and descendants of each span (Eq. 8's parent and child nodes), never the span itself
        inside = (self.start[None, :] >= self.start[:, None]) & (end[None, :] <= end[:, None])
        self.related = (inside | inside.T) & ~torch.eye(self.p, dtype=torch.bool, device=device)

    def layer(self, length: int) -> slice:
        return slice(self.offset[length], self.offset[length + 1])

    def valid(self, lengths: torch.Tensor) -> torch.Tensor:
        """(R, P) bool: span inside each row's sentence of `lengths` (R,) words."""
        return (self.start + self.length)[None, :] <= lengths[:, None]

    def root(self, lengths: torch.Tensor) -> torch.Tensor:
        """(R,) flat index of each row's whole-sentence span (length >= 1)."""
        off = torch.tensor(self.offset, device=lengths.device)
        return off[lengths.clamp_min(1)]


class Merge(nn.Module):
    """Eq. 1's MLP([x, y]) as the children's mean plus a learned correction whose last layer starts at 0, so an
    untrained tree composes phrases as the mean of their words (docs/winner.md). The first layer acts on x and y
    apart (`side`), once per node rather than once per split; `forward` = combine(x, y, side(x)[0], side(y)[1])."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.inp = nn.Linear(2 * dim, hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def side(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = x.shape[-1]
        return x @ self.inp.weight[:, :d].T, x @ self.inp.weight[:, d:].T

    def combine(self, x, y, hx, hy) -> torch.Tensor:
        return 0.5 * (x + y) + self.out(torch.relu(hx + hy + self.inp.bias))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.combine(x, y, self.side(x)[0], self.side(y)[1])


def inside(chart: Chart, leaves: torch.Tensor, merge: Merge, w: torch.Tensor, fuse=None):
    """Eqs. 1-4 bottom-up over all spans: leaves (R, K, d) -> node features (R, P, d), scores (R, P). `fuse(l, r)`
    (SVHU, Eqs. 5-10) maps layer l's fresh features (R, n_l, d) to the fused ones the next layers build on."""
    first = leaves if fuse is None else fuse(1, leaves)
    feats, scores = [first], [leaves.new_zeros(leaves.shape[:2])]
    left_h, right_h = map(lambda h: [h], merge.side(first))
    as_left = [first @ w]                                                 # x^T w, once per node
    for length in range(2, chart.k + 1):
        x, c = torch.cat(feats, 1), torch.cat(scores, 1)
        li, ri = chart.left[length], chart.right[length]                  # (n_l, l - 1)
        xl, xr = x[:, li], x[:, ri]                                       # (R, n_l, l - 1, d)
        r_k = merge.combine(xl, xr, torch.cat(left_h, 1)[:, li], torch.cat(right_h, 1)[:, ri])   # Eq. 1
        c_k = (torch.cat(as_left, 1)[:, li] * xr).sum(-1) + c[:, li] + c[:, ri]              # Eq. 2
        weight = torch.softmax(c_k, -1)                                   # Eq. 3
        r = (weight[..., None] * r_k).sum(2)                              # Eq. 4
        r = r if fuse is None else fuse(length, r)
        feats.append(r)
        scores.append((weight * c_k).sum(2))
        hl, hr = merge.side(r)
        left_h.append(hl), right_h.append(hr), as_left.append(r @ w)
    return torch.cat(feats, 1), torch.cat(scores, 1)


def outside(chart: Chart, lengths: torch.Tensor, feats: torch.Tensor, scores: torch.Tensor, merge: Merge,
            w: torch.Tensor, root: torch.Tensor):
    """Eqs. 11-14 top-down: every node's context feature r^U and score c^U from its parents' r^U and its siblings'
    bottom-up r~^B, c^B, over both sides (the paper writes the right one). The whole-sentence node starts from the
    learned `root` (d,) with c^U = 0; nodes outside the sentence get 0. (R, P, d), (R, P)."""
    r_rows, d = feats.shape[0], feats.shape[-1]
    valid = chart.valid(lengths)
    root_at = chart.root(lengths)
    is_root = torch.zeros_like(valid)
    is_root[torch.arange(r_rows, device=feats.device), root_at] = True
    sib_h = merge.side(feats)[1]                                          # siblings are bottom-up nodes
    up, cu, up_h, up_w = {}, {}, {}, {}
    for length in range(chart.k, 0, -1):
        sl = chart.layer(length)
        n = sl.stop - sl.start
        if length < chart.k:
            # the layers above in flat order, zeros below (parents are longer: never gathered there)
            above = range(length + 1, chart.k + 1)
            big, big_c, big_h, big_w = (
                torch.cat([z[above[0]].new_zeros(r_rows, chart.offset[length + 1], *z[above[0]].shape[2:])] +
                          [z[x] for x in above], 1) for z in (up, cu, up_h, up_w))
            pi, si = chart.parent[length], chart.sibling[length]          # (n_l, C)
            ok = chart.possible[length][None] & valid[:, pi] & valid[:, si]
            sb = feats[:, si]
            r_k = merge.combine(big[:, pi], sb, big_h[:, pi], sib_h[:, si])                  # Eq. 11
            c_k = (big_w[:, pi] * sb).sum(-1) + big_c[:, pi] + scores[:, si]                 # Eq. 12
            weight = masked_softmax(c_k, ok, -1)                          # Eq. 13
            r = (weight[..., None] * r_k).sum(2)                          # Eq. 14
            c = (weight * c_k.masked_fill(~ok, 0.0)).sum(2)
        else:
            r = feats.new_zeros(r_rows, n, d)
            c = scores.new_zeros(r_rows, n)
        here = is_root[:, sl]
        r = torch.where(here[..., None], root.expand_as(r), r * valid[:, sl, None])
        c = torch.where(here, torch.zeros_like(c), c * valid[:, sl])
        up[length], cu[length] = r, c
        up_h[length], up_w[length] = merge.side(r)[0], r @ w
    return torch.cat([up[x] for x in range(1, chart.k + 1)], 1), torch.cat([cu[x] for x in range(1, chart.k + 1)], 1)


def interfering(a: torch.Tensor, valid: torch.Tensor, tube_mask: torch.Tensor, delta: float, center: bool):
    """Eqs. 6-7: a (R, P, M) node-tube correlations; a node is interfering when the cosine between its correlations
    and the mean over the sentence's nodes (Eq. 6) is below delta. `center`: both taken relative to their mean over
    the video's tubes (raw correlations of one sentence are all nearly parallel). (R, P) bool, False off-sentence."""
    tm = tube_mask[:, None, :].to(a.dtype)
    v = valid[..., None].to(a.dtype)
    mean = (a * v).sum(1, keepdim=True) / v.sum(1, keepdim=True).clamp_min(1.0)      # Eq. 6, (R, 1, M)
    x, y = a * tm, mean * tm
    if center:
        count = tm.sum(-1, keepdim=True).clamp_min(1.0)
        x = (x - x.sum(-1, keepdim=True) / count) * tm
        y = (y - y.sum(-1, keepdim=True) / count) * tm
    sim = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-8)      # Eq. 7
    return (sim < delta) & valid


def context(chart: Chart, a: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Eq. 8's bracket: the mean correlation (R, P, M) over each node's related (ancestor or descendant) nodes that
    are in the sentence and not interfering (the printed sum of all minus the interfering, over their count)."""
    rel = chart.related.to(a.dtype)
    k = keep.to(a.dtype)
    total = torch.einsum("pq,rqm->rpm", rel, a * k[..., None])
    count = torch.einsum("pq,rq->rp", rel, k)
    return total / count.clamp_min(1.0)[..., None]


@dataclass
class Encoded:
    """One row per (sentence, video) pair."""
    nodes: torch.Tensor          # (R, P, d) r~^B + r^U (Eq. 15's node side); r^B without SVHU
    cb: torch.Tensor             # (R, P) c^B
    cu: torch.Tensor             # (R, P) c^U (0 without SVHU)
    up: torch.Tensor | None      # (R, P, d) r^U (SVHU only)
    valid: torch.Tensor          # (R, P) bool
    lengths: torch.Tensor        # (R,)
    clip_scores: torch.Tensor    # (R, C) mean frame score of each clip (the clip NCE's)
    clip_pick: torch.Tensor      # (R, C) centred sum (the clip choice)
    frame_scores: torch.Tensor   # (R, T)


class WinnerHead(GroundingHead):
    name = "winner"
    needs_regions = True
    supervised = False

    def __init__(self, dim: int, cfg: WinnerConfig):
        super().__init__()
        self.cfg = cfg
        eye = lambda: nn.Parameter(torch.eye(dim))  # noqa: E731  (identity maps: untrained = the export's space)
        self.word_proj, self.tube_proj = eye(), eye()
        self.frame_proj = eye()
        self.root_proj = nn.Parameter(torch.zeros(dim, dim))   # the root's share of the clip query starts at 0
        self.merge_b = Merge(dim, cfg.hidden)
        self.merge_u = Merge(dim, cfg.hidden)
        self.w_b = nn.Parameter(torch.eye(dim))              # Eq. 2's w
        self.w_u = nn.Parameter(torch.eye(dim))              # Eq. 12's w (its own: another pass)
        self.alpha = nn.Parameter(torch.tensor([float(cfg.alpha)]))  # Eq. 8: "learnable hyperparameters"
        self.beta = nn.Parameter(torch.tensor([float(cfg.beta)]))  # (1,): DeepSpeed broadcasts no 0-dim tensor
        self.root = nn.Parameter(torch.zeros(dim))          # r^U of the whole-sentence node
        seg = cfg.segments
        self.clips = [(a, b) for a in range(seg) for b in range(a, seg)]
        self._charts: dict = {}
        if cfg.when:
            self.when_score = weak_when_score(cfg, dim)

    # --- pieces -------------------------------------------------------------------------------------------------
    def chart(self, k: int, device) -> Chart:
        key = (k, str(device))
        if key not in self._charts:
            self._charts[key] = Chart(k, device)
        return self._charts[key]

    def _leaves(self, text: TextBatch):
        lengths = text.word_mask.sum(1).long()
        k = max(int(lengths.max()), 1)
        leaves = F.normalize(text.words[:, :k] @ self.word_proj.T, dim=-1) * text.word_mask[:, :k, None]
        return leaves, lengths

    def _segments(self, video: VideoBatch) -> torch.Tensor:
        """(B, T) segment of each valid frame (equal shares of the video's valid frames), -1 at padding."""
        n = video.mask.sum(1, keepdim=True).clamp_min(1)
        t = torch.arange(video.mask.shape[1], device=n.device)[None]
        seg = (t * self.cfg.segments) // n
        return torch.where(video.mask, seg, torch.full_like(seg, -1))

    def _clip_sums(self, values: torch.Tensor, seg: torch.Tensor, on: torch.Tensor):
        """values (B, T, X, e) with weights on (B, T, X) -> per-clip sums (B, C, X, e) and counts (B, C, X)."""
        b, t, x, e = values.shape
        s = self.cfg.segments
        idx = seg.clamp_min(0)[:, :, None].expand(b, t, x)
        w = on.to(values.dtype) * (seg >= 0)[:, :, None]
        sums = values.new_zeros(b, s, x, e).scatter_add(1, idx[..., None].expand(b, t, x, e), values * w[..., None])
        counts = values.new_zeros(b, s, x).scatter_add(1, idx, w)
        pre = torch.cat([torch.zeros_like(sums[:, :1]), sums.cumsum(1)], 1)
        pre_c = torch.cat([torch.zeros_like(counts[:, :1]), counts.cumsum(1)], 1)
        a = torch.tensor([c[0] for c in self.clips], device=values.device)
        z = torch.tensor([c[1] + 1 for c in self.clips], device=values.device)
        return pre[:, z] - pre[:, a], pre_c[:, z] - pre_c[:, a]

    def _video(self, video: VideoBatch):
        """Whole-video tube features f^v (B, M, d) with their mask, per clip the cropped tube features (B, C, M, d)
        and which tubes reach into it (B, C, M), the frame features (B, T, d) and each frame's segment (B, T)."""
        geo = video.geometry
        m = geo.tube_mask.shape[1]
        tubes, tube_mask = self.tube_features(video)
        seg = self._segments(video)
        # regions -> (video, segment, tube) sums through one scatter over a joint (tube) axis
        onehot = F.one_hot(geo.tube_ids.clamp_min(0), m).to(video.regions.dtype) * (geo.tube_ids >= 0)[..., None]
        per_tube = torch.einsum("btnm,btnd->btmd", onehot, video.regions)        # (B, T, M, d)
        hits = onehot.sum(2)                                                     # (B, T, M)
        every = torch.ones_like(hits, dtype=torch.bool)
        sums, _ = self._clip_sums(per_tube, seg, every)
        cnt = self._clip_sums(hits[..., None], seg, every)[0][..., 0]           # regions per (clip, tube)
        crop = F.normalize((sums / cnt.clamp_min(1.0)[..., None]) @ self.tube_proj.T, dim=-1)
        crop_mask = (cnt > 0) & tube_mask[:, None, :]
        frames = F.normalize(F.normalize(video.frames, dim=-1) @ self.frame_proj.T, dim=-1)
        return tubes, tube_mask, crop, crop_mask, frames, seg

    def encode(self, text: TextBatch, tubes, tube_mask, frames, seg, q_idx, v_idx) -> Encoded:
        """The tree of sentence q_idx[r] read against video v_idx[r], for every row r."""
        cfg = self.cfg
        leaves, lengths = self._leaves(text)
        chart = self.chart(leaves.shape[1], leaves.device)
        language = inside(chart, leaves, self.merge_b, self.w_b)                 # the language tree, per sentence
        leaves, lengths = leaves[q_idx], lengths[q_idx]
        f, fm = tubes[v_idx], tube_mask[v_idx]                                    # (R, M, d), (R, M)
        valid = chart.valid(lengths)
        if cfg.svhu:
            rb0 = language[0][q_idx]
            a0 = torch.einsum("rpd,rmd->rpm", rb0, f)                             # Eq. 5
            bad = interfering(a0, valid, fm, cfg.delta, cfg.center_filter)      # Eqs. 6-7
            ctx = context(chart, a0, valid & ~bad)                               # Eq. 8's context
            alpha, beta = self.alpha, self.beta

            def fuse(length, r):
                sl = chart.layer(length)
                att = alpha * torch.einsum("rnd,rmd->rnm", r, f) + beta * ctx[:, sl]     # Eq. 8
                cue = torch.einsum("rnm,rmd->rnd", masked_softmax(att, fm[:, None, :], -1), f)   # Eq. 9
                return F.normalize(r + cfg.lam * cue, dim=-1)                    # Eq. 10
            rb, cb = inside(chart, leaves, self.merge_b, self.w_b, fuse)
            up, cu = outside(chart, lengths, rb, cb, self.merge_u, self.w_u, self.root)
            nodes = rb + up
        else:
            rb, cb = language[0][q_idx], language[1][q_idx]
            up, cu, nodes = None, torch.zeros_like(cb), rb
        nodes = nodes * valid[..., None]
        root = nodes[torch.arange(nodes.shape[0], device=nodes.device), chart.root(lengths)]
        fs = torch.einsum("rd,rtd->rt", self._clip_query(text, root, q_idx), frames[v_idx])
        return Encoded(nodes, cb, cu, up, valid, lengths, *self._clip_scores(fs, seg[v_idx]))

    def _clip_query(self, text: TextBatch, root: torch.Tensor, q_idx: torch.Tensor) -> torch.Tensor:
        """The query that scores the clips: the sentence feature g(S) (the frames' space) plus the tree's root node
        through a map that starts at 0, so the untrained head's span is the export's sentence-frame similarity."""
        return F.normalize(F.normalize(text.sentence, dim=-1)[q_idx] + root @ self.root_proj.T, dim=-1)

    def _clip_scores(self, fs: torch.Tensor, seg: torch.Tensor):
        """Frame scores fs (R, T) -> per clip their mean (R, C, the NCE's score; NEG for a clip without frames) and
        their sum minus the clip's share of the video's mean (R, C, the choice: the best-segment rule of
        finetune/predict.py on the clip grid), and fs itself."""
        on = seg >= 0
        sums, counts = self._clip_sums(fs[:, :, None, None], seg, on[:, :, None])
        sums, counts = sums[:, :, 0, 0], counts[:, :, 0]
        mean = sums / counts.clamp_min(1.0)
        video_mean = (fs * on).sum(1, keepdim=True) / on.sum(1, keepdim=True).clamp_min(1)
        empty = counts == 0
        return (mean.masked_fill(empty, NEG), (sums - counts * video_mean.detach()).masked_fill(empty, NEG),
                fs.masked_fill(~on, 0.0))

    @staticmethod
    def node_tube_scores(nodes: torch.Tensor, crop: torch.Tensor, crop_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 15: (R, P, M) = f^_m . (r~^B + r^U), NEG at tubes outside the crop."""
        return torch.einsum("rpd,rmd->rpm", nodes, crop).masked_fill(~crop_mask[:, None, :], NEG)

    def _cropped(self, enc: Encoded, v_idx, tubes, tube_mask, crop, crop_mask):
        """The tubes cropped to each row's best clip (whole-video tubes where none reaches into it)."""
        best = enc.clip_pick.detach().argmax(-1)
        cf, cm = crop[v_idx, best], crop_mask[v_idx, best]
        empty = ~cm.any(-1)
        cf = torch.where(empty[:, None, None], tubes[v_idx], cf)
        cm = torch.where(empty[:, None], tube_mask[v_idx], cm)
        return cf, cm, best

    def existence(self, enc: Encoded) -> torch.Tensor:
        """Eq. 19's weight of each node (R, P), detached (docs/winner.md)."""
        chart_root = self.chart(_k_of(enc.nodes.shape[1]), enc.nodes.device).root(enc.lengths)
        rows = torch.arange(enc.cb.shape[0], device=enc.cb.device)
        c_root = enc.cb[rows, chart_root][:, None]
        if self.cfg.existence == "product":
            w = enc.cb * enc.cu / torch.where(c_root.abs() < 1e-6, torch.ones_like(c_root), c_root)
        else:
            w = torch.exp((enc.cb + enc.cu - c_root).clamp(max=0.0))
        return (w * enc.valid).detach()

    # --- training -----------------------------------------------------------------------------------------------
    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        cfg, video, text = self.cfg, batch.video, batch.text
        b = video.frames.shape[0]
        dev = video.frames.device
        tubes, tube_mask, crop, crop_mask, frames, seg = self._video(video)
        q_idx = torch.arange(b, device=dev).repeat_interleave(b)                  # row = q * B + v
        v_idx = torch.arange(b, device=dev).repeat(b)
        enc = self.encode(text, tubes, tube_mask, frames, seg, q_idx, v_idx)
        cf, cm, _ = self._cropped(enc, v_idx, tubes, tube_mask, crop, crop_mask)
        s = self.node_tube_scores(enc.nodes, cf, cm).max(-1).values              # Eq. 17, (R, P)
        p = s.shape[1]
        s = s.view(b, b, p)
        groups = batch.groups if batch.groups is not None else torch.arange(b, device=dev)
        same = groups[:, None] == groups[None, :]
        eye = torch.eye(b, dtype=torch.bool, device=dev)
        negative = ~same                                                          # (q, v): v a negative of q
        allowed = negative | eye
        # a video without tubes (no proposal anywhere) has no tube score: it is neither a positive nor a negative
        # of the tube terms (its NEG scores would otherwise dominate them)
        has = tube_mask.any(-1)
        tube_negative = negative & has[None, :] & has[:, None]
        lengths = enc.lengths.view(b, b)[:, 0]
        k = _k_of(p)
        valid = self.chart(k, dev).valid(lengths)                                 # (B, P) spans of sentence q
        # Eq. 18: each word of sentence q against every video of the batch, its own the positive
        leaf_ok = (valid[:, :k] & has[:, None]).to(s.dtype)
        l_word = word_nce(s[:, :, :k], tube_negative | eye, leaf_ok, cfg.temperature)
        out = {"word_nce": l_word.detach()}
        loss = cfg.mu * l_word
        if cfg.dsa:
            d = s * self.existence(enc).view(b, b, p)                             # Eq. 19, d[q, v, p]
            phrase = valid & (self.chart(k, dev).length >= 2)[None] & has[:, None]  # (q, p)
            l_phrase = phrase_hinge(d, tube_negative, valid, phrase, cfg.gamma)
            loss = loss + l_phrase
            out["phrase_hinge"] = l_phrase.detach()
        if cfg.svhu and cfg.recon > 0:
            l_rec = self._reconstruction(enc, text, b, k)
            loss = loss + cfg.recon * l_rec
            out["reconstruction"] = l_rec.detach()
        if cfg.temporal > 0:
            clip = enc.clip_scores.view(b, b, -1).max(-1).values / cfg.temporal_temperature
            logp = torch.log_softmax(clip.masked_fill(~allowed, NEG), dim=1)
            l_tmp = -logp.diagonal().mean()
            loss = loss + cfg.temporal * l_tmp
            out["clip_nce"] = l_tmp.detach()
        if cfg.when:
            l_when, parts = self.when_score.weak_loss(video, text.parsed, groups, cfg.when_topk, batch.said)
            loss = loss + cfg.w_when * l_when
            out["when_mil"] = l_when.detach()
            out.update({f"when_{k}": x for k, x in parts.items()})
        out["loss"] = loss
        out["positive_score"] = s[torch.arange(b), torch.arange(b), :k].mul(leaf_ok).sum().div(
            leaf_ok.sum().clamp_min(1.0)).detach()
        return out

    def _reconstruction(self, enc: Encoded, text: TextBatch, b: int, k: int) -> torch.Tensor:
        """Each leaf's r^U (its context without the word, read against its own video) picks its own word feature
        among the batch's words (every occurrence of the same token counts as the word: a supervised-contrastive
        word NCE, the reconstruction objective with the batch as the vocabulary)."""
        rows = torch.arange(b, device=enc.up.device) * (b + 1)                    # pairs (q, q)
        pred = F.normalize(enc.up[rows, :k], dim=-1)                              # (B, K, d)
        leaves, _ = self._leaves(text)
        mask = text.word_mask[:, :k]
        flat_w, flat_m = leaves.reshape(b * k, -1), mask.reshape(-1)
        toks = [w for s, sp in zip(text.sentences, text.token_spans) for w in
                (token_words(s, sp)[:k] + [""] * k)[:k]] if text.sentences is not None else None
        logits = (pred.reshape(b * k, -1) @ flat_w.T / self.cfg.recon_temperature).masked_fill(~flat_m[None], NEG)
        if toks is None:
            positive = torch.eye(b * k, dtype=torch.bool, device=logits.device)
        else:
            ids = {t: i for i, t in enumerate(sorted(set(toks)))}
            tid = torch.tensor([ids[t] for t in toks], device=logits.device)
            positive = (tid[:, None] == tid[None, :]) | torch.eye(b * k, dtype=torch.bool, device=logits.device)
        positive = positive & flat_m[None]
        l = torch.logsumexp(logits, -1) - torch.logsumexp(logits.masked_fill(~positive, NEG), -1)
        return (l * flat_m).sum() / flat_m.sum().clamp_min(1)

    # --- inference ----------------------------------------------------------------------------------------------
    def subject_nodes(self, text: TextBatch, lengths: torch.Tensor, k: int) -> torch.Tensor:
        """(B,) flat span index of each sentence's subject node (`winner.subject`; the root when none is found)."""
        chart = self.chart(k, lengths.device)
        roots = chart.root(lengths).tolist()
        out = []
        for row, root in enumerate(roots):
            found = None
            if self.cfg.subject != "root" and text.sentences is not None:
                sentence, spans = text.sentences[row], text.token_spans[row]
                found = subject_of(token_words(sentence, spans)[:int(lengths[row])], sentence, spans)
            if found is None:
                out.append(root)
            elif self.cfg.subject == "noun":
                out.append(chart.offset[1] + found[1])
            else:
                out.append(chart.offset[found[1] - found[0] + 1] + found[0])
        return torch.tensor(out, dtype=torch.long, device=lengths.device)

    def tube_features(self, video: VideoBatch, weight: torch.Tensor | None = None):
        """(B, M, d) tube features f^v over the frames `weight` (B, T) marks (all: None), (B, M) which have regions."""
        geo = video.geometry
        w = None if weight is None else weight[:, :, None].expand_as(geo.tube_ids)
        tubes, counts = tube_pool(video.regions, geo.tube_ids, geo.tube_mask.shape[1], w)
        return F.normalize(tubes @ self.tube_proj.T, dim=-1), geo.tube_mask & (counts > 0)

    def node_scores(self, video: VideoBatch, text: TextBatch, weight: torch.Tensor | None = None):
        """Eq. 15 for every node of each row's own tree (B, P, M) on the tubes cropped to `weight` (B, T), and the
        chart: what benchmarks/experiments/winner_correlation.py follows over training."""
        enc, _, idx = self._own(video, text)
        feats, ok = self.tube_features(video, weight)
        return self.node_tube_scores(enc.nodes, feats, ok), self.chart(_k_of(enc.nodes.shape[1]), feats.device)

    def _own(self, video: VideoBatch, text: TextBatch):
        tubes, tube_mask, crop, crop_mask, frames, seg = self._video(video)
        idx = torch.arange(video.frames.shape[0], device=video.frames.device)
        enc = self.encode(text, tubes, tube_mask, frames, seg, idx, idx)
        return enc, (tubes, tube_mask, crop, crop_mask, seg), idx

    def tube_output(self, video: VideoBatch, text: TextBatch) -> TubeOutput:
        enc, (tubes, tube_mask, crop, crop_mask, seg), idx = self._own(video, text)
        cf, cm, best = self._cropped(enc, idx, tubes, tube_mask, crop, crop_mask)
        k = _k_of(enc.nodes.shape[1])
        subj = self.subject_nodes(text, enc.lengths, k)
        nodes = enc.nodes[idx, subj][:, None]                                    # (B, 1, d)
        scores = self.node_tube_scores(nodes, cf, cm)[:, 0]                       # (B, M)
        a = torch.tensor([c[0] for c in self.clips], device=seg.device)[best]
        z = torch.tensor([c[1] for c in self.clips], device=seg.device)[best]
        inside_clip = (seg >= a[:, None]) & (seg <= z[:, None])                  # (B, T)
        when = self.when_score.on_video(video, text.parsed) if self.cfg.when else None
        return TubeOutput(sted=_sted(inside_clip, video.mask, video.geometry.frame_ids), tube_scores=scores,
                          when=when)

    def frame_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        """(B, T): each frame's score under the clip query (tube_output's span is the best clip of them)."""
        return self._own(video, text)[0].frame_scores


def word_nce(s: torch.Tensor, allowed: torch.Tensor, leaf_ok: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 18: s (Q, V, K) = s^s(V, n_ii) of word i of sentence q in video v (sentence q's own video is v = q);
    -log softmax over the allowed videos (Q, V) of the own one, mean over the valid words leaf_ok (Q, K)."""
    q = s.shape[0]
    logp = torch.log_softmax((s / temperature).masked_fill(~allowed[..., None], NEG), dim=1)
    own = logp[torch.arange(q), torch.arange(q)]                                  # (Q, K)
    return -(own * leaf_ok).sum() / leaf_ok.sum().clamp_min(1.0)


def phrase_hinge(d: torch.Tensor, negative: torch.Tensor, valid: torch.Tensor, phrase: torch.Tensor,
                 gamma: float) -> torch.Tensor:
    """Eq. 20: d (Q, V, P) = d^s(V, n_ij) of node p of sentence q read against video v. For each phrase node of q
    (phrase (Q, P)): the mean hinge over negative videos V' (negative (Q, V)) of d(V', n) - d(V, n) + gamma, plus
    the mean over negative sentences q' that have the span (valid (Q, P)) of d(V, n') - d(V, n) + gamma; mean over
    the phrase nodes (the printed sums, averaged so the scale does not grow with the batch or the sentence)."""
    q = d.shape[0]
    pos = d[torch.arange(q), torch.arange(q)]                                     # (Q, P)
    neg_v = F.relu(d - pos[:, None, :] + gamma) * negative[..., None]
    term_v = neg_v.sum(1) / negative.sum(1).clamp_min(1)[:, None]
    other = d.transpose(0, 1)                                                     # [q, q', p] = d(V_q, n^q')
    ok_n = negative[..., None] & valid[None, :, :]
    neg_n = F.relu(other - pos[:, None, :] + gamma) * ok_n
    term_n = neg_n.sum(1) / ok_n.sum(1).clamp_min(1)
    ph = phrase.to(d.dtype)
    return ((term_v + term_n) * ph).sum() / ph.sum().clamp_min(1.0)


def _k_of(p: int) -> int:
    """K from P = K (K + 1) / 2."""
    return int(round((math.sqrt(8 * p + 1) - 1) / 2))


def _sted(inside_clip: torch.Tensor, mask: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
    """(B, 2) native frames [start, end) of each row's clip (heads/stvg.py's native_spans)."""
    on = inside_clip & mask
    t = torch.arange(on.shape[1], device=on.device)[None].expand_as(on)
    first = torch.where(on, t, torch.full_like(t, on.shape[1])).min(1).values.clamp(max=on.shape[1] - 1)
    last = torch.where(on, t, torch.full_like(t, -1)).max(1).values.clamp_min(0)
    return native_spans(frame_ids, first, last, mask.sum(1))


def _validate(wn: WinnerConfig, cfg) -> None:
    for name, ok, rule in (*((x, getattr(wn, x) >= 0, ">= 0") for x in ("alpha", "beta", "gamma", "lam", "mu",
                                                                          "recon", "temporal")),
                           ("delta", -1 <= wn.delta <= 1, "in [-1, 1] (a cosine)"),
                           ("temperature", wn.temperature > 0, "> 0"),
                           ("recon_temperature", wn.recon_temperature > 0, "> 0"),
                           ("temporal_temperature", wn.temporal_temperature > 0, "> 0"),
                           ("segments", 1 <= wn.segments <= 64, "in [1, 64]"), ("hidden", wn.hidden >= 1, ">= 1"),
                           ("subject", wn.subject in ("noun", "phrase", "root"), "noun, phrase or root"),
                           ("existence", wn.existence in ("marginal", "product"), "marginal or product")):
        if not ok:
            raise ConfigError(f"winner.{name} must be {rule}, not {getattr(wn, name)!r}")
    check_weak_when(wn, "winner")
    # the loss: mu * word NCE + the phrase hinge (dsa) + recon (svhu) + temporal + w_when * the when-score's MIL
    if (wn.mu == 0 and not wn.dsa and (not wn.svhu or wn.recon == 0) and wn.temporal == 0
            and not (wn.when and wn.w_when > 0)):
        raise ConfigError("winner.mu, winner.recon and winner.temporal are all 0, winner.dsa is off and no "
                          "winner.when score is trained: nothing would be trained")


def _text_prep(wn: WinnerConfig):
    return VerbIds(wn) if wn.when else None


SPEC = HeadSpec(name="winner", head=WinnerHead, config=WinnerConfig, family=STVG, validate=_validate,
                text_prep=_text_prep, said=lambda wn: wn.when,
                lr_groups=weak_when_lr_groups)
