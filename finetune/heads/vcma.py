"""VCMA: weakly supervised STVG by variational cross-modal alignment (Jin & Mu, ECCV 2024; docs/vcma.md).

Trained from (video, sentence) pairs only. The sentence is parsed (finetune/query_parse.py) into entity phrases
and relation triplets; each phrase's feature is the mean of the export's word features over its characters.
- Contextual encoding (Sec. 3.3, shared by both networks): spatial self-attention among the regions of a frame and
  temporal self-attention along each linked tube, alternating (`spatial_context`, `temporal_context`: Table 4);
  language self-attention over the entities (q_phi) or the entities and relations (p_theta).
- q_phi (E-step): Eq. 6 spatial softmax over a frame's regions per phrase; Eq. 7 Gaussian temporal assignment
  whose centre and width come from a CLS token cross-attending frames to phrases; the video-sentence contrastive
  loss Eqs. 10-11 with the videos of all ranks as negatives; Eq. 9 cross entropy to p_theta's pseudo-labels.
- p_theta (M-step): the same assignment networks conditioned on relations too, trained towards q_phi's assignment
  (the Eq. 9 analogue) and by relation reconstruction: gated entity features (Eq. 13), subject-object fusion
  (Eq. 14), a causal transformer decoder over the frames that re-generates the predicate's words (Eq. 15).
- EM (Algorithm 1): the optimizer step's phase comes from `at_step` (e_steps E-steps, then m_steps M-steps); the
  E-step freezes theta, the M-step phi (requires_grad off, so no gradient and no optimizer update reaches them).
- Inference (Eq. 16): Z = beta Z_q + (1 - beta) Z_p; frame scores z^T (the span is their best segment), region
  scores z^S of the target phrase (a box per frame, or the best linked tube: `box`).
Ours, off by default: `when`, WINNER's weak when-score beside EM (heads/when_score.py; its own weights, loss and
learning rate, trained in both phases); with `box=tube` its peak helps choose the tube, and `span.rule=when`
decodes the span with it (docs/vcma.md "The weak when-score").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError, check_ranges
from finetune.heads.base import GroundingHead, ParsedQueries, TextBatch, TrainBatch, VideoBatch
from finetune.heads.spec import STVG, HeadSpec
from finetune.heads.stvg import TubeOutput
from finetune.heads.when_score import VerbIds, WeakWhenOptions, check_weak_when, weak_when_lr_groups, weak_when_score
from finetune.query_parse import CachedParser, hashed_ids


@dataclass
class VcmaConfig(WeakWhenOptions):
    """The weak VCMA head (finetune/heads/vcma.py, docs/vcma.md): sizes, the EM schedule and the ablation switches.
    Defaults: the paper's D = 256, 2 blocks x 8 heads, beta = 0.3. The weak when-score's switch (vcma.when, when_*)
    is inherited from heads/when_score.py's WeakWhenOptions."""
    dim: int = 256                   # D
    blocks: int = 2                  # context encoder / temporal cross-attention / reconstruction decoder blocks
    heads: int = 8
    dropout: float = 0.1
    spatial_context: bool = True     # Table 4: self-attention among a frame's regions
    temporal_context: bool = True    # Table 4: self-attention along each linked tube
    losses: str = "both"             # Table 3: both (EM) | contrastive (q_phi alone) | reconstruction (p_theta alone)
    e_steps: int = 1                 # EM schedule: e_steps E-steps, then m_steps M-steps, repeated
    m_steps: int = 1
    reconstruct_from: str = "p"      # Z of Eqs. 13-15: p (p_theta's own, trained by it) | q (Eq. 12: q_phi's, fixed)
    pseudo_label: str = "sample"     # Eq. 9 target: sample (one draw, the paper) | argmax | soft
    similarity: str = "cosine"       # Eqs. 6 / 10 scores: cosine of g_S, g_V (Eq. 6: x a learned scale) | dot
    prior: float = 0.0               # weight of the export's own phrase-region cosine added to those scores (ours)
    temperature: float = 0.1         # tau of Eq. 11
    match_norm: bool = True          # Eq. 10 with z^T normalised over frames and phrases averaged; false: as printed
    gather: bool = True              # Eq. 11 negatives from all ranks
    w_contra: float = 1.0            # weights of L_contra, L_Z (both steps), L_rec
    w_assign: float = 1.0
    w_rec: float = 1.0
    beta: float = 0.3                # Eq. 16 (losses=contrastive uses 1, reconstruction 0)
    box: str = "region"              # region: Eq. 16's best region per frame | tube: the best linked tube in the span
    parser: str = "rules"            # rules (finetune/query_parse.py) | spacy (an installed spaCy model)
    spacy_model: str = ""            # parser=spacy: the model's package name ("": the first en_* installed)
    max_entities: int = 4
    max_relations: int = 3
    max_relation_words: int = 4
    vocab: int = 4096                # hashed word vocabulary of the relation decoder

PAD, BOS = 0, 1


# --- pure pieces (tested on hand cases) ----------------------------------------------------------------------------
def spatial_assignment(phrases: torch.Tensor, regions: torch.Tensor, region_mask: torch.Tensor,
                       scale: float | torch.Tensor = 1.0, prior: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: (softmax over a frame's regions of scale * s (B, E, T, N), the scores s = g_S(w_i).g_V(v_j) (+ prior)).
    phrases (B, E, D) = g_S(w), regions (B, T, N, D) = g_V(v); `prior` (B, E, T, N) is added to the scores
    (vcma.prior); `scale` is the softmax's inverse temperature; a frame without regions gets all zeros."""
    s = torch.einsum("bed,btnd->betn", phrases, regions)
    if prior is not None:
        s = s + prior
    m = region_mask[:, None]
    z = torch.softmax((s * scale).masked_fill(~m, -1e9), dim=-1) * m.any(-1, keepdim=True)
    return z, s


def positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) t / T_b: frame t's relative position in its own video (T_b its valid frames), frame centres."""
    n = mask.sum(1, keepdim=True).clamp_min(1).to(torch.float32)
    t = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None]
    return (t + 0.5) / n


def gaussian_assignment(center: torch.Tensor, width: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Eq. 7 as printed: 1 / sqrt(2 pi sigma) exp(-(t/T - c)^2 / (2 sigma^2)); center, width (...,), pos (..., T)."""
    c, s = center[..., None], width[..., None]
    return torch.exp(-(pos - c) ** 2 / (2 * s ** 2)) / torch.sqrt(2 * math.pi * s)


def match_scores(region_scores: torch.Tensor, region_mask: torch.Tensor, zt: torch.Tensor, entity_mask: torch.Tensor,
                 frame_mask: torch.Tensor, normalise: bool) -> torch.Tensor:
    """Eq. 10 for every (sentence q, video v): sum_t z_t^T sum_i max_j s_{t,i,j}.
    region_scores (Q, E, V, T, N), region_mask (V, T, N), zt (Q, V, T), entity_mask (Q, E), frame_mask (V, T).
    `normalise`: z^T divided by its sum over the frames and the phrases averaged (a weighted mean, so a wider
    Gaussian or a longer sentence does not raise the score by itself); off: Eq. 10 as printed. -> (Q, V)."""
    best = region_scores.masked_fill(~region_mask[None, None], -1e4).max(-1).values      # (Q, E, V, T)
    best = best * region_mask.any(-1)[None, None]                                       # frames without regions: 0
    em = entity_mask.to(best.dtype)[:, :, None, None]
    per_frame = (best * em).sum(1)                                                      # (Q, V, T)
    w = zt * frame_mask[None].to(zt.dtype)
    if normalise:
        per_frame = per_frame / em.sum(1).clamp_min(1.0)
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-6)
    return (w * per_frame).sum(-1)


def contrastive_loss(scores: torch.Tensor, temperature: float, own: torch.Tensor,
                     same_video: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 11: mean over sentences i of -log exp(s(V_i, S_i)/tau) / sum_j exp(s(V_j, S_i)/tau); scores (Q, V), own
    (Q,) the column of each sentence's own video; same_video (Q, V) True where column j is the same video as the
    own one under another row (another query of it: not a negative)."""
    logits = scores / temperature
    if same_video is not None:
        keep = F.one_hot(own, scores.shape[1]).bool()
        logits = logits.masked_fill(same_video & ~keep, -1e9)
    return F.cross_entropy(logits, own)


def sinusoid(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., dim) sinusoidal code of relative positions in [0, 1] (frequencies up to dim/2 cycles per video)."""
    k = torch.arange(dim // 2, device=pos.device, dtype=torch.float32)
    freq = math.pi * torch.pow(torch.tensor(float(dim), device=pos.device), k / max(dim // 2, 1)) / 8
    ang = pos[..., None] * freq
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def _keys(mask: torch.Tensor) -> torch.Tensor:
    """Key padding mask (True = ignore) from validity; a row without any valid key attends to all (its output is
    masked out later) instead of producing NaN."""
    pad = ~mask
    return pad & ~pad.all(-1, keepdim=True)


# --- phrases: parsed once per sentence at batching time, averaged per step ----------------------------------------
class QueryPhrases:
    """VCMA's text_prep (HeadSpec): the batch's sentences parsed (finetune/query_parse.py, each distinct sentence
    once for as long as this object lives: the whole run's batcher or predictor) into a ParsedQueries. Up to
    max_entities entities; the relations whose subject and object are among them, up to max_relations, each with its
    predicate's first max_relation_words words hashed; the target (0 when it was cut). A sentence without an entity
    is its one entity (an empty word selection: the sentence feature). With vcma.when also each sentence's verbs for
    the when-score (ParsedQueries.verbs), and the verbs alone for the sentences said of a batch's videos (called
    without word rows: TrainBatch.said, read by the when-score only)."""

    def __init__(self, cfg: VcmaConfig):
        self.cfg = cfg
        self.parsed = CachedParser(cfg.parser, cfg.spacy_model)
        self.verbs = VerbIds(cfg) if cfg.when else None

    def __call__(self, sentences: list[str], token_spans: list | None, word_mask):
        if word_mask is None and self.verbs is not None:
            return self.verbs(sentences, None, None)
        pq = self._phrases(sentences, token_spans, word_mask)
        if self.verbs is not None:
            pq.verbs = self.verbs(sentences, token_spans, word_mask)
        return pq

    def _phrases(self, sentences: list[str], token_spans: list | None, word_mask) -> ParsedQueries:
        cfg = self.cfg
        e_max, r_max, l_max = cfg.max_entities, cfg.max_relations, cfg.max_relation_words
        valid = torch.as_tensor(word_mask).bool().cpu()
        q, k = valid.shape
        valid = valid.tolist()
        ent_w = torch.zeros(q, e_max, k, dtype=torch.bool)
        rel_w = torch.zeros(q, r_max, k, dtype=torch.bool)
        emask = torch.zeros(q, e_max, dtype=torch.bool)
        rmask = torch.zeros(q, r_max, dtype=torch.bool)
        subj = torch.zeros(q, r_max, dtype=torch.long)
        obj = torch.full((q, r_max), -1, dtype=torch.long)
        pred = torch.zeros(q, r_max, l_max, dtype=torch.long)
        target = torch.zeros(q, dtype=torch.long)
        whole = torch.zeros(q, dtype=torch.bool)

        def select(out, row, start, end):
            for i, (a, z) in enumerate(token_spans[row] if token_spans else []):
                if a < end and z > start and valid[row][i]:
                    out[i] = True

        for row, s in enumerate(sentences):
            p = self.parsed(s)
            ents = p.entities[:e_max]
            if not ents:
                emask[row, 0] = whole[row] = True
                continue
            for i, e in enumerate(ents):
                select(ent_w[row, i], row, e.start, e.end)
                emask[row, i] = True
            target[row] = p.target if p.target is not None and p.target < e_max else 0
            kept = [r for r in p.relations if r.subject < e_max and (r.object is None or r.object < e_max)][:r_max]
            for j, r in enumerate(kept):
                select(rel_w[row, j], row, r.start, r.end)
                rmask[row, j] = True
                subj[row, j], obj[row, j] = r.subject, -1 if r.object is None else r.object
                ids = hashed_ids(r.predicate.split()[:l_max], cfg.vocab)
                pred[row, j, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return ParsedQueries(ent_w, rel_w, emask, rmask, subj, obj, pred, target, whole)


def _phrase_means(words: torch.Tensor, sentence: torch.Tensor, select: torch.Tensor, on: torch.Tensor
                  ) -> torch.Tensor:
    """(Q, P, d): the mean of the word rows words (Q, K, d) that select (Q, P, K) picks, sentence (Q, d) where it
    picks none, 0 where `on` (Q, P) is off. One batched product for all phrases; it sums in another order than a
    per-phrase words[rows].mean(0), so the two may differ in the last float bits (tests/test_vcma.py)."""
    w = select.to(words.dtype)
    n = w.sum(-1, keepdim=True)
    mean = torch.where(n > 0, (w @ words) / n.clamp_min(1), sentence[:, None])
    return mean.masked_fill(~on[..., None], 0.0)


# --- networks -------------------------------------------------------------------------------------------------------
def _layer(d: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(d, heads, 4 * d, dropout, batch_first=True, norm_first=True)


class ContextEncoder(nn.Module):
    """Sec. 3.3: inputs to D, then `blocks` x (spatial self-attention within a frame, temporal self-attention along
    each linked tube); language self-attention over phrase tokens."""

    def __init__(self, d_in: int, d: int, blocks: int, heads: int, dropout: float, spatial: bool, temporal: bool):
        super().__init__()
        self.region_in = nn.Linear(d_in, d)
        self.frame_in = nn.Linear(d_in, d)
        self.text_in = nn.Linear(d_in, d)
        self.kind = nn.Parameter(torch.zeros(2, d))          # entity / relation token type
        self.spatial = nn.ModuleList([_layer(d, heads, dropout) for _ in range(blocks)]) if spatial else None
        self.temporal = nn.ModuleList([_layer(d, heads, dropout) for _ in range(blocks)]) if temporal else None
        self.language = nn.ModuleList([_layer(d, heads, dropout) for _ in range(blocks)])
        self.blocks = blocks

    def video(self, video: VideoBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(regions (B, T, N, D), frames (B, T, D))."""
        x = self.region_in(video.regions)
        b, t, n, d = x.shape
        rmask = video.region_mask
        ids = video.geometry.tube_ids.masked_fill(~rmask, -1) if video.geometry is not None else None
        m = int(ids.max().item()) + 1 if ids is not None and bool((ids >= 0).any()) else 0
        for k in range(self.blocks):
            if self.spatial is not None:
                y = self.spatial[k](x.reshape(b * t, n, d), src_key_padding_mask=_keys(rmask.reshape(b * t, n)))
                x = torch.where(rmask[..., None], y.reshape(b, t, n, d), x)
            if self.temporal is not None and m > 0:
                x = self._along_tubes(self.temporal[k], x, ids, m)
        return x, self.frame_in(video.frames)

    @staticmethod
    def _along_tubes(layer, x, ids, m):
        """Self-attention among the regions of each linked tube (one region per frame), written back in place."""
        b, t, n, d = x.shape
        on = ids >= 0
        bi, ti, ni = on.nonzero(as_tuple=True)
        mi = ids[bi, ti, ni]
        pos = torch.full((b, m, t), -1, dtype=torch.long, device=x.device)
        pos[bi, mi, ti] = ni
        seq = x[torch.arange(b, device=x.device)[:, None, None], torch.arange(t, device=x.device)[None, None],
                pos.clamp_min(0)]                                                       # (B, M, T, D)
        valid = pos >= 0
        y = layer(seq.reshape(b * m, t, d), src_key_padding_mask=_keys(valid.reshape(b * m, t))).reshape(b, m, t, d)
        out = x.clone()
        out[bi, ti, ni] = y[bi, mi, ti]
        return out

    def text(self, tokens: torch.Tensor, mask: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """Phrase tokens (B, K, d_in) with their kind (0 entity, 1 relation) -> (B, K, D)."""
        x = self.text_in(tokens) + self.kind[kinds]
        for layer in self.language:
            x = layer(x, src_key_padding_mask=_keys(mask))
        return x


class Assignment(nn.Module):
    """One assignment network (q_phi, or p_theta's): g_V, g_S (FC + ReLU), Eq. 6, and Eq. 7 from a CLS token that
    self-attends with the frames (positions coded) and cross-attends to the phrase tokens."""

    def __init__(self, d: int, heads: int, dropout: float, layers: int, cosine: bool = True, prior: float = 0.0):
        super().__init__()
        self.g_v = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.g_s = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.pos = nn.Linear(d, d)
        self.cross = nn.ModuleList([nn.TransformerDecoderLayer(d, heads, 4 * d, dropout, batch_first=True,
                                                               norm_first=True) for _ in range(layers)])
        self.out = nn.Linear(d, 2)
        self.cosine = cosine
        self.prior = prior
        # cosine: L2-normalised g_S, g_V times a learned scale (log-parametrised, starting at 10); dot: / sqrt(D)
        self.log_scale = nn.Parameter(torch.full((1,), math.log(10.0))) if cosine else None  # 1-d: DeepSpeed broadcasts no 0-d
        self.dot_scale = 1.0 / math.sqrt(d)

    def embed(self, phrases, regions):
        """(g_S, g_V, Eq. 6's inverse temperature): cosine: unit vectors and the learned scale; dot: the vectors
        with 1/sqrt(D) folded into g_S, and 1."""
        a, b = self.g_s(phrases), self.g_v(regions)
        if self.cosine:
            return F.normalize(a, dim=-1), F.normalize(b, dim=-1), self.log_scale.exp()
        return a * self.dot_scale, b, 1.0

    def prior_scores(self, raw_phrases, raw_regions, pattern: str):
        """vcma.prior x the export's own phrase-region cosine (the zero-shot score), or None."""
        if not self.prior:
            return None
        return self.prior * torch.einsum(pattern, F.normalize(raw_phrases, dim=-1), F.normalize(raw_regions, dim=-1))

    def spatial(self, phrases, regions, region_mask, raw_phrases, raw_regions):
        a, b, k = self.embed(phrases, regions)
        return spatial_assignment(a, b, region_mask, k, self.prior_scores(raw_phrases, raw_regions,
                                                                           "bed,btnd->betn"))

    def temporal(self, frames, frame_mask, text, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(center, width) each (B,) in (0, 1) for B (video, sentence) rows."""
        b, t, d = frames.shape
        x = frames + self.pos(sinusoid(positions(frame_mask), d))
        x = torch.cat([self.cls.expand(b, 1, d), x], dim=1)
        keys = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), frame_mask], 1)
        for layer in self.cross:
            x = layer(x, text, tgt_key_padding_mask=_keys(keys), memory_key_padding_mask=_keys(text_mask))
        c, s = torch.sigmoid(self.out(x[:, 0])).unbind(-1)
        return c, s.clamp_min(0.01)


class Reconstructor(nn.Module):
    """Eqs. 13-15: gated entity features -> W_r[h_s; h_o] + b_r per frame -> causal transformer decoder over the
    predicate's words."""

    def __init__(self, d: int, heads: int, dropout: float, blocks: int, vocab: int):
        super().__init__()
        self.fuse = nn.Linear(2 * d, d)                               # Eq. 14
        self.pos = nn.Linear(d, d)
        self.embed = nn.Embedding(vocab, d, padding_idx=PAD)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, heads, 4 * d, dropout, batch_first=True,
                                                                        norm_first=True), blocks)
        self.word_pos = nn.Parameter(torch.randn(16, d) * 0.02)
        self.vocab_out = nn.Linear(d, vocab)

    def memory(self, regions, zs, zt, subj, obj, frame_mask):
        """regions (B, T, N, D), zs (B, E, T, N), zt (B, T), subj / obj (B, R) entity index (obj -1: none)
        -> {h_t^r} (B, R, T, D)."""
        h = torch.einsum("betn,btnd->betd", zs, regions) * zt[:, None, :, None]        # Eq. 13
        b, r = subj.shape
        take = lambda idx: h[torch.arange(b, device=h.device)[:, None], idx.clamp_min(0)]  # noqa: E731
        hs, ho = take(subj), take(obj) * (obj >= 0)[..., None, None]
        mem = self.fuse(torch.cat([hs, ho], dim=-1))                                   # Eq. 14 (B, R, T, D)
        return mem + self.pos(sinusoid(positions(frame_mask), mem.shape[-1]))[:, None]

    def token_nll(self, memory, frame_mask, tokens) -> torch.Tensor:
        """(rows, L) -log p(r_i | r_<i, memory) of each word (0 at padding); memory (rows, T, D), tokens (rows, L)."""
        rows, length = tokens.shape
        inp = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
        x = self.embed(inp) + self.word_pos[:length]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
        y = self.decoder(x, memory, tgt_mask=causal, memory_key_padding_mask=_keys(frame_mask))
        nll = F.cross_entropy(self.vocab_out(y).transpose(1, 2), tokens, reduction="none", ignore_index=PAD)
        return nll * (tokens != PAD)


class _Net(nn.Module):
    def __init__(self, d, heads, dropout, blocks, cosine, prior, vocab=None):
        super().__init__()
        self.assign = Assignment(d, heads, dropout, blocks, cosine, prior)
        self.rec = Reconstructor(d, heads, dropout, blocks, vocab) if vocab else None


# --- the head -------------------------------------------------------------------------------------------------------
class VcmaHead(GroundingHead):
    name = "vcma"
    needs_regions = True
    supervised = False

    def __init__(self, dim: int, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.encoder = ContextEncoder(dim, d, cfg.blocks, cfg.heads, cfg.dropout, cfg.spatial_context,
                                      cfg.temporal_context)
        cos = cfg.similarity == "cosine"
        self.q = _Net(d, cfg.heads, cfg.dropout, cfg.blocks, cos, cfg.prior)               # phi
        self.p = _Net(d, cfg.heads, cfg.dropout, cfg.blocks, cos, cfg.prior, cfg.vocab)    # theta
        self._prep = QueryPhrases(cfg)          # only for a batch that comes without TextBatch.parsed
        self.phase = "E"
        self.register_buffer("em_phase", torch.zeros((), dtype=torch.long))   # last phase, in head.pt (0 E, 1 M)
        if cfg.when:   # on the export's own region features, beside both networks: EM freezes neither
            self.when_score = weak_when_score(cfg, dim)

    # --- EM schedule -----------------------------------------------------------------------------------------------
    def phase_of(self, step: int) -> str:
        if self.cfg.losses == "contrastive":
            return "E"
        if self.cfg.losses == "reconstruction":
            return "M"
        return "E" if step % (self.cfg.e_steps + self.cfg.m_steps) < self.cfg.e_steps else "M"

    def at_step(self, step: int) -> None:
        """Before optimizer step `step`'s loss: the phase, and which network may learn (E: phi, M: theta; the
        shared encoder in both)."""
        self.phase = self.phase_of(step)
        self.em_phase.fill_(0 if self.phase == "E" else 1)
        for p in self.q.parameters():
            p.requires_grad_(self.phase == "E")
        for p in self.p.parameters():
            p.requires_grad_(self.phase == "M")

    def phi_parameters(self):
        return list(self.q.parameters())

    def theta_parameters(self):
        return list(self.p.parameters())

    # --- text -> phrases ---------------------------------------------------------------------------------------------
    def phrases(self, text: TextBatch) -> dict:
        """Per query: entity and relation features (the mean of the normalised word rows inside each phrase, the
        normalised sentence feature where none is), the target entity, the relations' subject/object and hashed
        predicate words, from the batch's ParsedQueries (parsed at batching time; parsed here only for a batch
        built without it, e.g. by hand)."""
        pq = self._queries(text)
        words = F.normalize(text.words, dim=-1)
        sentence = F.normalize(text.sentence, dim=-1)
        return {"ent": _phrase_means(words, sentence, pq.entity_words, pq.emask), "emask": pq.emask,
                "rel": _phrase_means(words, sentence, pq.relation_words, pq.rmask), "rmask": pq.rmask,
                "subj": pq.subj, "obj": pq.obj, "tokens": pq.predicate, "target": pq.target}

    def _queries(self, text: TextBatch) -> ParsedQueries:
        """The batch's ParsedQueries, parsed here for a batch built without them (e.g. by hand)."""
        pq = text.parsed
        return pq if pq is not None else self._prep(text.sentences, text.token_spans, text.word_mask).to(
            text.words.device)

    def _language(self, ph: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q's entity tokens (B, E, D), p's entity tokens conditioned on relations (B, E, D), p's entity+relation
        tokens (B, E+R, D)) and the latter's mask."""
        e = ph["ent"].shape[1]
        kinds_e = torch.zeros_like(ph["emask"], dtype=torch.long)
        q_text = self.encoder.text(ph["ent"], ph["emask"], kinds_e)
        tokens = torch.cat([ph["ent"], ph["rel"]], 1)
        mask = torch.cat([ph["emask"], ph["rmask"]], 1)
        kinds = torch.cat([kinds_e, torch.ones_like(ph["rmask"], dtype=torch.long)], 1)
        p_all = self.encoder.text(tokens, mask, kinds)
        return q_text, p_all[:, :e], p_all, mask

    # --- assignments -------------------------------------------------------------------------------------------------
    def assignments(self, video: VideoBatch, text: TextBatch) -> dict:
        regions, frames = self.encoder.video(video)
        ph = self.phrases(text)
        q_text, p_ent, p_all, p_mask = self._language(ph)
        out = {"regions": regions, "frames": frames, "ph": ph, "q_text": q_text, "p_all": p_all, "p_mask": p_mask}
        pos = positions(video.mask)
        for name, net, ent, mem, mmask in (("q", self.q, q_text, q_text, ph["emask"]),
                                           ("p", self.p, p_ent, p_all, p_mask)):
            zs, s = net.assign.spatial(ent, regions, video.region_mask, ph["ent"], video.regions)
            c, w = net.assign.temporal(frames, video.mask, mem, mmask)
            out[name] = {"zs": zs, "s": s, "c": c, "w": w, "zt": gaussian_assignment(c, w, pos) * video.mask}
        return out

    # --- losses ------------------------------------------------------------------------------------------------------
    def _contrastive(self, video: VideoBatch, a: dict, groups: torch.Tensor | None) -> torch.Tensor:
        """Eqs. 10-11 over the sentences of this rank against the videos of all ranks."""
        from pretrain.losses import _gather_plain, world

        rank, size = world() if self.cfg.gather else (0, 1)
        regions, frames, rmask, fmask = a["regions"], a["frames"], video.region_mask, video.mask
        raw = video.regions
        b = regions.shape[0]
        local = groups if groups is not None else torch.arange(b, device=regions.device)
        mine = local + rank * (1 << 20)                                        # video ids unique across ranks
        every = mine
        if size > 1:
            regions, frames, rmask, fmask, raw = _pad_gather([regions, frames, rmask, fmask, raw])
            every = _gather_plain(mine)
        v = regions.shape[0]
        q_text, emask = a["q_text"], a["ph"]["emask"]
        net = self.q.assign
        g_s, g_v, _ = net.embed(q_text, regions)                                # (Q, E, D), (V, T, N, D)
        s = torch.einsum("qed,vtnd->qevtn", g_s, g_v)                           # Eq. 6's scores, before its scale
        prior = net.prior_scores(a["ph"]["ent"], raw, "qed,vtnd->qevtn")
        s = s if prior is None else s + prior
        # z^T of every (sentence, video) pair: the CLS of video v's frames attending to sentence q's phrases
        t = frames.shape[1]
        fr = frames[None].expand(b, v, t, -1).reshape(b * v, t, -1)
        fm = fmask[None].expand(b, v, t).reshape(b * v, t)
        tx = q_text[:, None].expand(b, v, *q_text.shape[1:]).reshape(b * v, *q_text.shape[1:])
        tm = emask[:, None].expand(b, v, emask.shape[1]).reshape(b * v, -1)
        c, w = net.temporal(fr, fm, tx, tm)
        zt = gaussian_assignment(c, w, positions(fm)).reshape(b, v, t)
        scores = match_scores(s, rmask, zt, emask, fmask, self.cfg.match_norm)
        own = torch.arange(b, device=s.device) + rank * b
        same = mine[:, None] == every[None, :]
        return contrastive_loss(scores, self.cfg.temperature, own, same)

    def _pseudo_ce(self, student: dict, teacher: dict, emask, fmask) -> torch.Tensor:
        """Eq. 9 (and its M-step analogue): -sum_t target(z_t) log student(z_t), spatial per phrase and frame
        (target: one sample of the teacher's softmax, its argmax or the softmax itself), temporal over the frames
        (both Gaussians normalised over the video's frames); the teacher is detached."""
        zs_t = teacher["zs"].detach()
        has = zs_t.sum(-1) > 0                                                    # (B, E, T) frames with regions
        mode = self.cfg.pseudo_label
        if mode == "soft":
            target = zs_t
        else:
            flat = zs_t.clamp_min(0).reshape(-1, zs_t.shape[-1])
            flat = torch.where(flat.sum(-1, keepdim=True) > 0, flat, torch.ones_like(flat))
            pick = torch.multinomial(flat, 1)[:, 0] if mode == "sample" else flat.argmax(-1)
            target = F.one_hot(pick, zs_t.shape[-1]).to(zs_t.dtype).reshape(zs_t.shape)
        logq = torch.log(student["zs"].clamp_min(1e-8))
        on = has & emask[:, :, None]
        spatial = -(target * logq).sum(-1)[on].mean() if bool(on.any()) else logq.sum() * 0
        norm = lambda z: z / z.sum(-1, keepdim=True).clamp_min(1e-8)               # noqa: E731
        tt = norm(teacher["zt"].detach() * fmask)
        temporal = -(tt * torch.log(norm(student["zt"] * fmask).clamp_min(1e-8))).sum(-1).mean()
        return spatial + temporal

    def _reconstruction(self, video: VideoBatch, a: dict) -> torch.Tensor:
        """Eq. 15 summed over each relation's words, averaged over the batch's relations."""
        ph = a["ph"]
        src = a[self.cfg.reconstruct_from]
        zs, zt = src["zs"], src["zt"]
        if self.cfg.reconstruct_from == "q":                                      # Eq. 12 as written: Z ~ q_phi
            zs, zt = zs.detach(), zt.detach()
        rec = self.p.rec
        mem = rec.memory(a["regions"], zs, zt, ph["subj"], ph["obj"], video.mask)  # (B, R, T, D)
        b, r, t, d = mem.shape
        on = ph["rmask"] & (ph["tokens"] != PAD).any(-1)
        if not bool(on.any()):
            return mem.sum() * 0
        fmask = video.mask[:, None].expand(b, r, t)[on]
        nll = rec.token_nll(mem[on], fmask, ph["tokens"][on])
        return nll.sum(-1).mean()

    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        cfg, video = self.cfg, batch.video
        a = self.assignments(video, batch.text)
        emask = a["ph"]["emask"]
        logs = {}
        if self.phase == "E":
            total = 0.0
            if cfg.losses != "reconstruction":
                contra = self._contrastive(video, a, batch.groups)
                total = total + cfg.w_contra * contra
                logs["contrastive"] = contra.detach()
            if cfg.losses == "both":
                z = self._pseudo_ce(a["q"], a["p"], emask, video.mask)
                total = total + cfg.w_assign * z
                logs["assign_phi"] = z.detach()
        else:
            rec = self._reconstruction(video, a)
            total = cfg.w_rec * rec
            logs["reconstruction"] = rec.detach()
            if cfg.losses == "both":
                z = self._pseudo_ce(a["p"], a["q"], emask, video.mask)
                total = total + cfg.w_assign * z
                logs["assign_theta"] = z.detach()
        if cfg.when:   # every step, E or M: the score is its own part, trained from the weak labels alone
            l_when, parts = self.when_score.weak_loss(video, self._queries(batch.text), batch.groups, cfg.when_topk,
                                                      batch.said)
            total = total + cfg.w_when * l_when
            logs["when_mil"] = l_when.detach()
            logs.update({f"when_{k}": x for k, x in parts.items()})
        return {"loss": total, "m_step": torch.tensor(float(self.phase == "M")), **logs}

    # --- inference (Eq. 16) -----------------------------------------------------------------------------------------
    def beta(self) -> float:
        return {"contrastive": 1.0, "reconstruction": 0.0}.get(self.cfg.losses, self.cfg.beta)

    def _combined(self, video: VideoBatch, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.assignments(video, text)
        beta = self.beta()
        zs = beta * a["q"]["zs"] + (1 - beta) * a["p"]["zs"]
        zt = beta * a["q"]["zt"] + (1 - beta) * a["p"]["zt"]
        target = a["ph"]["target"]
        region = zs[torch.arange(zs.shape[0], device=zs.device), target]             # (B, T, N)
        return zt, region

    def frame_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        return self._combined(video, text)[0]

    def region_scores(self, video: VideoBatch, text: TextBatch) -> torch.Tensor:
        return self._combined(video, text)[1]

    def tube_output(self, video: VideoBatch, text: TextBatch) -> TubeOutput:
        zt, region = self._combined(video, text)
        zt = zt.masked_fill(~video.mask, 0.0)
        when = self.when_score.on_video(video, self._queries(text)) if self.cfg.when else None
        if self.cfg.box == "tube":
            return TubeOutput(frame_scores=zt, region_scores=region.masked_fill(~video.region_mask, 0.0), when=when)
        # Eq. 16 as written: each frame's best region of the target phrase (NaN where a frame has none)
        best = region.masked_fill(~video.region_mask, -1.0).argmax(-1)                 # (B, T)
        boxes = torch.gather(video.geometry.boxes, 2, best[..., None, None].expand(-1, -1, 1, 4))[:, :, 0]
        boxes = boxes.masked_fill(~video.region_mask.any(-1)[..., None], float("nan"))
        return TubeOutput(frame_scores=zt, boxes=boxes, when=when)


def _pad_gather(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """All ranks' rows of (B, T, ...) tensors padded to the longest T (features keep their gradient, masks are
    gathered as they are)."""
    import torch.distributed as dist

    from pretrain.losses import _gather_plain, gather_with_grad

    t = torch.tensor([tensors[0].shape[1]], device=tensors[0].device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    t = int(t.item())
    out = []
    for x in tensors:
        pad = [0, 0] * (x.dim() - 2) + [0, t - x.shape[1]]
        if x.is_floating_point():
            out.append(gather_with_grad(F.pad(x, pad)))
        else:                                            # masks: gloo gathers no bool, F.pad pads no bool
            out.append(_gather_plain(F.pad(x.to(torch.uint8), pad).bool()))
    return out


__all__ = ["QueryPhrases", "VcmaHead", "contrastive_loss", "gaussian_assignment", "hashed_ids", "match_scores", "positions",
           "spatial_assignment"]


def _validate(v: VcmaConfig, cfg) -> None:
    choices = (("losses", v.losses, ("both", "contrastive", "reconstruction")),
               ("reconstruct_from", v.reconstruct_from, ("p", "q")),
               ("pseudo_label", v.pseudo_label, ("sample", "argmax", "soft")), ("box", v.box, ("region", "tube")),
               ("parser", v.parser, ("rules", "spacy")), ("similarity", v.similarity, ("cosine", "dot")))
    for name, value, allowed in choices:
        if value not in allowed:
            raise ConfigError(f"vcma.{name} must be one of {allowed}, not {value!r}")
    check_ranges([
        ("vcma.blocks", v.blocks, v.blocks >= 1, ">= 1"), ("vcma.heads", v.heads, v.heads >= 1, ">= 1"),
        ("vcma.dim", v.dim, v.dim > 0 and v.heads > 0 and v.dim % v.heads == 0 and v.dim % 2 == 0,
         "a positive even multiple of vcma.heads"),
        ("vcma.dropout", v.dropout, 0 <= v.dropout < 1, "in [0, 1)"),
        ("vcma.e_steps", v.e_steps, v.e_steps >= 1, ">= 1"), ("vcma.m_steps", v.m_steps, v.m_steps >= 1, ">= 1"),
        ("vcma.temperature", v.temperature, v.temperature > 0, "> 0"),
        ("vcma.beta", v.beta, 0 <= v.beta <= 1, "in [0, 1]"), ("vcma.prior", v.prior, v.prior >= 0, ">= 0"),
        *((f"vcma.{w}", getattr(v, w), getattr(v, w) >= 0, ">= 0") for w in ("w_contra", "w_assign", "w_rec")),
        ("vcma.max_entities", v.max_entities, v.max_entities >= 1, ">= 1"),
        ("vcma.max_relations", v.max_relations, v.max_relations >= 1, ">= 1"),
        ("vcma.max_relation_words", v.max_relation_words, 1 <= v.max_relation_words <= 16, "in 1..16"),
        ("vcma.vocab", v.vocab, v.vocab >= 16, ">= 16"),
    ])
    check_weak_when(v, "vcma")
    # the weights vcma.losses puts in the loss: all 0 would "train" on a constant (issue 29)
    used = {"both": ("w_contra", "w_assign", "w_rec"), "contrastive": ("w_contra",),
            "reconstruction": ("w_rec",)}[v.losses]
    if not any(getattr(v, w) > 0 for w in used):
        raise ConfigError(f"vcma.{'/'.join(used)} are all 0 with vcma.losses={v.losses}: nothing would be trained")


def _check_io(cfg) -> None:
    """The installed parser model and the DeepSpeed JSON's ZeRO stage: one error line before any feature work."""
    v = cfg.vcma
    if v.parser == "spacy":
        from finetune.query_parse import spacy_parser

        spacy_parser(v.spacy_model)
    if cfg.train:
        from trainer.engine import load_ds_file

        try:
            stage = load_ds_file(cfg.deepspeed).get("zero_optimization", {}).get("stage", 0)
        except OSError:
            return                           # a missing file is reported by the run's own check
        if stage:
            raise ConfigError(f"vcma: EM freezes one network per step (requires_grad off), which ZeRO stage {stage} "
                              f"[{cfg.deepspeed}] is not known to honour (its flat partitions hold every parameter); "
                              "use configs/deepspeed/zero0.json")


SPEC = HeadSpec(name="vcma", head=VcmaHead, config=VcmaConfig, family=STVG, validate=_validate, check_io=_check_io,
                text_prep=QueryPhrases, said=lambda v: v.when, lr_groups=weak_when_lr_groups,
                predict_keys=("box",))
