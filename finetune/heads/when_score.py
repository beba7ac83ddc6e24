"""The when-score: per region and frame, is the sentence's action being done to this region's object now?

A logit per region from the region's unit feature and its change from its tube's rest appearance (tube_rest_delta)
against an embedding of the sentence's parsed verb (plus, with words=target, the grounded entity's noun and
attributes). FSM trains it from the truth (fsm.when, binary cross-entropy on the truth's tube); a weak head trains
it by multiple-instance contrast (`mil_loss`, winner.when): the sentence's video must hold regions where it scores
high, the batch's other videos (where that sentence was not said) must not. The span is then decoded along a chosen
tube (`tube_segment`). docs/stvg.md section 7 says why a verb-aware score, docs/winner.md how the weak one is trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads.stvg import tube_rest_delta
from finetune.query_parse import CachedParser, hashed_ids


@dataclass
class ParsedVerbs:
    """TextBatch.parsed for a when-score: each sentence's main verb lemma as a hashed id (0: none parsed), and with
    words=target the grounded entity's noun and attributes (0: padding)."""
    ids: torch.Tensor                          # (Q,) long
    words: torch.Tensor | None = None          # (Q, W) long

    def to(self, device) -> "ParsedVerbs":
        return ParsedVerbs(self.ids.to(device), None if self.words is None else self.words.to(device))


def as_verbs(parsed) -> ParsedVerbs:
    """The parsed verbs a batch's `parsed` carries: itself, or its `verbs` (a head whose text_prep parses more than
    the verbs, e.g. VCMA's phrases, attaches them there)."""
    return parsed if isinstance(parsed, ParsedVerbs) or parsed is None else getattr(parsed, "verbs", parsed)


@dataclass
class WeakWhenOptions:
    """A weak head's when-score switch (winner.when, vcma.when; ours, off by default): a config section's fields,
    inherited by the head's config dataclass. docs/winner.md "The weak when-score" says how it is trained and why."""
    when: bool = False               # a weak when-score beside the paper's losses (ours, heads/when_score.py): per
                                     # region, is the sentence's verb being done to it now, learnt by multiple-
                                     # instance contrast across the batch's videos; span.rule=when decodes the span
                                     # along the chosen tube with it, span.tube_weight chooses the tube with its peak
    w_when: float = 1.0              # its loss weight
    when_words: str = "target"       # its text: verb (the parsed verb) | target (plus the grounded entity's words)
    when_vocab: int = 1024           # hashed lemmas (finetune/query_parse.py hashed_ids)
    when_dim: int = 64               # its hidden width
    when_topk: float = 0.125         # the share of a video's frames its multiple-instance score pools (soft top-k)
    when_prior: float = 0.0          # each region's activity (TubeGeometry.activity) x this added to its logit
    when_lr: float = 0.003           # its learning rate (0: optim.lr): it learns from scratch, the head's own parts
                                     # at the head's rate


def check_weak_when(section: WeakWhenOptions, head: str) -> None:
    """The switch's ranges, one ConfigError naming `head`.key."""
    from common.config import ConfigError

    for name, ok, rule in (("w_when", section.w_when >= 0, ">= 0"),
                           ("when_words", section.when_words in ("verb", "target"), "verb or target"),
                           ("when_vocab", section.when_vocab >= 3, ">= 3"),
                           ("when_dim", section.when_dim >= 1, ">= 1"),
                           ("when_topk", 0 < section.when_topk <= 1, "in (0, 1]"),
                           ("when_prior", section.when_prior >= 0, ">= 0"),
                           ("when_lr", section.when_lr >= 0, ">= 0")):
        if not ok:
            raise ConfigError(f"{head}.{name} must be {rule}, not {getattr(section, name)!r}")


def weak_when_lr_groups(section: WeakWhenOptions) -> tuple:
    """HeadSpec.lr_groups of a head with the switch: the score at its own rate."""
    return (("when_score.", section.when_lr),) if section.when and section.when_lr > 0 else ()


def weak_when_score(section: WeakWhenOptions, dim: int) -> "WhenScore":
    """The switch's score over `dim`-wide regions, its weights from a forked generator: every other weight of the
    head starts as it would without the switch."""
    with torch.random.fork_rng(devices=[]):
        return WhenScore(dim, section.when_dim, section.when_vocab, section.when_words == "target",
                         section.when_prior)


class VerbIds:
    """A head spec's text_prep for a when-score: each distinct sentence parsed once (finetune/query_parse.py) to
    its main verb's lemma, hashed into `when_vocab` ids; with when_words=target also the grounded entity's words.
    `section`: a head config with when_vocab, when_words (and optionally parser, spacy_model)."""

    def __init__(self, section):
        self.vocab = section.when_vocab
        self.target = section.when_words == "target"
        self.parsed = CachedParser(getattr(section, "parser", "rules"), getattr(section, "spacy_model", ""))

    def __call__(self, sentences: list[str], token_spans, word_mask) -> ParsedVerbs:
        parses = [self.parsed(s) for s in sentences]
        ids = torch.tensor([hashed_ids([p.action], self.vocab)[0] if p.action else 0 for p in parses],
                           dtype=torch.long)
        if not self.target:
            return ParsedVerbs(ids)
        words = [target_words(p) for p in parses]
        out = torch.zeros(len(words), max([len(w) for w in words] + [1]), dtype=torch.long)
        for i, w in enumerate(words):
            out[i, :len(w)] = torch.tensor(hashed_ids(w, self.vocab), dtype=torch.long)
        return ParsedVerbs(ids, out)


def target_words(p) -> list[str]:
    """The grounded entity's parsed noun and attributes ("what red thing": ["red"]), lower case, without the
    wh-word; [] when the parse found no target."""
    if p.target is None:
        return []
    e = p.entities[p.target]
    return [w.lower() for w in e.attributes + ([e.noun] if e.noun else [])]


def when_logits(vis: nn.Module, verb: nn.Embedding, target: nn.Embedding | None, bias: torch.Tensor,
                regions: torch.Tensor, tube_ids: torch.Tensor, m: int, parsed: ParsedVerbs,
                pairs: bool = False) -> torch.Tensor:
    """The when-score logits: `vis` maps [unit region, its change from its tube's rest] (2 x dim) to d, the text is
    the verb's embedding plus, with `target`, the sum of the target words' embeddings. (B, T, N) for row b's
    sentence in video b; with `pairs`, (Q, B, T, N) for every sentence against every video."""
    v = region_vectors(vis, regions, tube_ids, m)
    e = text_vectors(verb, target, parsed)
    if pairs:
        return torch.einsum("btnd,qd->qbtn", v, e) / math.sqrt(v.shape[-1]) + bias
    return torch.einsum("btnd,bd->btn", v, e) / math.sqrt(v.shape[-1]) + bias


def region_vectors(vis: nn.Module, regions: torch.Tensor, tube_ids: torch.Tensor, m: int) -> torch.Tensor:
    """(B, T, N, d): each region's [unit feature, change from its tube's rest] through `vis`."""
    r = F.normalize(regions, dim=-1)
    return vis(torch.cat([r, tube_rest_delta(regions, tube_ids, m)], -1))


def text_vectors(verb: nn.Embedding, target: nn.Embedding | None, parsed: ParsedVerbs,
                 ids: torch.Tensor | None = None) -> torch.Tensor:
    """(Q, d) the parsed verb's embedding (or that of `ids` (Q, ...) instead) plus, with `target`, the sum of the
    target words' embeddings (broadcast over `ids`' extra axes)."""
    if not isinstance(parsed, ParsedVerbs):
        raise ValueError("the when-score: the batch carries no parsed verbs (the head spec's text_prep)")
    e = verb(parsed.ids if ids is None else ids)
    if target is not None:
        if parsed.words is None:
            raise ValueError("when_words=target: the batch carries no parsed target words")
        t = target(parsed.words).sum(1)
        e = e + t.reshape(t.shape[0], *([1] * (e.dim() - 2)), t.shape[-1])
    return e


class WhenScore(nn.Module):
    """A when-score of its own (a weak head's): regions of `dim` features, text and hidden width `d`; `prior`: the
    weight of each region's activity (TubeGeometry.activity) added to its logit (0: none)."""

    def __init__(self, dim: int, d: int, vocab: int, target: bool, prior: float = 0.0):
        super().__init__()
        self.prior = prior
        self.vis = nn.Sequential(nn.Linear(2 * dim, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.verb = nn.Embedding(vocab, d)
        self.bias = nn.Parameter(torch.zeros(1))
        self.target = nn.Embedding(vocab, d, padding_idx=0) if target else None

    def forward(self, regions, tube_ids, m: int, parsed: ParsedVerbs, pairs: bool = False,
                activity: torch.Tensor | None = None) -> torch.Tensor:
        out = when_logits(self.vis, self.verb, self.target, self.bias, regions, tube_ids, m, parsed, pairs)
        return out + self._prior(activity)

    def _prior(self, activity):
        if not self.prior:
            return 0.0
        if activity is None:
            raise ValueError("the when-score's activity prior: the batch carries no region activity")
        return self.prior * activity

    def on_video(self, video, parsed) -> torch.Tensor:
        """(B, T, N) logits of each row's sentence over its own video (a VideoBatch with its geometry)."""
        geo = video.geometry
        return self(video.regions, geo.tube_ids, geo.tube_mask.shape[1], as_verbs(parsed), activity=geo.activity)

    def weak_loss(self, video, parsed, groups, topk: float, said: "SaidSentences | None" = None
                  ) -> tuple[torch.Tensor, dict]:
        """mil_loss over a VideoBatch: its regions on a linked tube in its valid frames."""
        geo = video.geometry
        region_ok = (geo.tube_ids >= 0) & video.region_mask & video.mask[..., None]
        if said is not None:
            said = SaidSentences(as_verbs(said.parsed), said.groups)
        return self.mil_loss(video.regions, geo.tube_ids, geo.tube_mask.shape[1], region_ok, video.mask, groups,
                             as_verbs(parsed), topk, geo.activity, said)

    def mil_loss(self, regions, tube_ids, m: int, region_ok, frame_ok, groups, parsed: ParsedVerbs, topk: float,
                 activity: torch.Tensor | None = None, said: "SaidSentences | None" = None
                 ) -> tuple[torch.Tensor, dict]:
        """The weak loss of a batch whose rows are videos (equal `groups`: the same video) and the texts said of
        them: every sentence said of each batch video (`said`, its weak labels) when given, else the rows' own
        sentences (`parsed`: row q's said of its video). Every text against every video, and, with target words,
        each text's target words under the other verbs against its own video (swapped_verbs): mil_loss."""
        said = said if said is not None else SaidSentences(parsed, groups)
        v = region_vectors(self.vis, regions, tube_ids, m)
        scale = math.sqrt(v.shape[-1])
        prior = self._prior(activity)
        pair = (torch.einsum("btnd,sd->sbtn", v, text_vectors(self.verb, self.target, said.parsed)) / scale
                + self.bias + prior)                                                                # (S, B, T, N)
        swap = None
        if self.target is not None:
            verbs, label, used = swapped_verbs(said.parsed, said.groups)
            if bool(used.any()):
                row = first_row(said.groups, groups)                                                # (S,)
                e = text_vectors(self.verb, self.target, said.parsed, verbs[None].expand(len(row), -1))
                logits = (torch.einsum("stnd,sud->ustn", v[row], e) / scale + self.bias
                          + (prior[row] if torch.is_tensor(prior) else prior))                     # (U, S, T, N)
                swap = (mil_scores(logits, region_ok[row], frame_ok[row], topk).T, label, used)
        return mil_loss(pair, region_ok, frame_ok, groups, said, topk, swap)


@dataclass
class SaidSentences:
    """TrainBatch.said: every training sentence said of each batch video (a weak head's video-level labels),
    parsed by the head spec's text_prep, with the group (TrainBatch.groups) of the video it was said of."""
    parsed: ParsedVerbs
    groups: torch.Tensor                       # (S,) long

    def to(self, device) -> "SaidSentences":
        return SaidSentences(self.parsed.to(device), self.groups.to(device))


def first_row(owners: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(S,) the first batch row of each text's video (`owners` (S,): group ids among the rows' `groups` (B,))."""
    hit = owners[:, None] == groups[None, :]
    return torch.where(hit.any(1), hit.to(torch.int8).argmax(1), torch.zeros_like(owners))


def same_words(a: ParsedVerbs, b: ParsedVerbs) -> torch.Tensor:
    """(A, B) bool: the same target word ids, in any order (0 is padding); all True when either has none."""
    if a.words is None or b.words is None:
        return torch.ones(len(a.ids), len(b.ids), dtype=torch.bool, device=a.ids.device)
    w = max(a.words.shape[1], b.words.shape[1])
    pad = lambda x: F.pad(x, (0, w - x.shape[1])).sort(1).values                  # noqa: E731
    return (pad(a.words)[:, None, :] == pad(b.words)[None, :, :]).all(-1)


def sentence_keys(a: ParsedVerbs, b: ParsedVerbs | None = None) -> torch.Tensor:
    """(A, B) bool: texts a and b ask the when-score the same thing (same verb id and the same target word ids, in
    any order): the same text embedding, so a video where one was said is a positive of the other."""
    b = a if b is None else b
    return (a.ids[:, None] == b.ids[None, :]) & same_words(a, b)


def swapped_verbs(parsed: ParsedVerbs, groups: torch.Tensor):
    """The verb-swapped texts of the texts said of a batch's videos (`parsed`, said of video `groups`): each text's
    target words under each verb among them (U verbs, (U,)), whether that (verb, target words) was said of the
    text's video (S, U), and which pairs are used (S, U): another verb than the text's, and target words to keep
    (without them the text is the verb alone, which a video may well hold). A video's sentences are its weak labels:
    an unsaid (verb, object) is taken as not done there, the multiple-instance assumption; with only part of a
    video's sentences (the batch rows) a said one may be taken as unsaid."""
    ids = parsed.ids
    verbs = torch.unique(ids[ids > 0])
    same_video = groups[:, None] == groups[None, :]
    has_verb = (ids[:, None] == verbs[None, :]).to(torch.float32)                           # (S, U)
    said = ((same_words(parsed, parsed) & same_video).to(torch.float32) @ has_verb) > 0
    used = (ids[:, None] != verbs[None, :]) & (parsed.words > 0).any(1)[:, None]
    return verbs, said, used


def mil_scores(logits: torch.Tensor, region_ok: torch.Tensor, frame_ok: torch.Tensor, topk: float) -> torch.Tensor:
    """Multiple-instance pooling of (Q, V, T, N) logits to (Q, V): log sum exp over video v's regions on a tube
    (`region_ok` (V, T, N)) in its valid frames (`frame_ok` (V, T)), minus log k, k = `topk` x the frames with such
    a region (at least 1). When k regions sit at logit a far above the others, the score is about a: a soft mean of
    the video's best k regions, the share of the frames an action covers. Soft, not a hard top-k: every region gets
    a gradient, so an action whose regions start below the rest is still reached (under a hard max over a frame's
    regions and a top-k mean over frames it never is). 0 for a video without such a region."""
    ok = region_ok & frame_ok[..., None]
    x = logits.masked_fill(~ok[None], -1e4).flatten(2)    # (Q, V, T x N); finite: no NaN gradient where none is
    n = ok.any(-1).sum(-1).to(logits.dtype)                                             # (V,)
    x = torch.cat([x, torch.full_like(x[..., :1], -1e4)], -1) if x.shape[-1] == 0 else x
    s = torch.logsumexp(x, -1) - (n * topk).clamp_min(1.0).log()[None]
    return torch.where((n > 0)[None], s, torch.zeros_like(s))


def mil_loss(logits: torch.Tensor, region_ok: torch.Tensor, frame_ok: torch.Tensor, groups: torch.Tensor,
             said: SaidSentences, topk: float, swap=None) -> tuple[torch.Tensor, dict]:
    """The weak when-score's loss from (S, B, T, N) logits of the texts said of the batch's videos (`said`) against
    every batch row's video (`groups` (B,): rows of equal value share a video): binary cross-entropy of the MIL score
    (mil_scores), 1 where the text (or one asking the same, sentence_keys) was said of the row's video, 0 elsewhere.
    `swap` (scores (S, U), said (S, U), used (S, U)): the verb-swapped texts on each text's own video
    (swapped_verbs), 1 where said, else 0. The mean over the positives, plus the mean over the other videos'
    negatives, plus the mean over the swapped negatives: each kind weighs the same however many there are. A video
    without a region on a tube is neither. (the loss, {"margin": the positives' mean score minus the other videos',
    "swap_margin": minus the swapped texts'})."""
    s = mil_scores(logits, region_ok, frame_ok, topk)                               # (S, B)
    of_video = (said.groups[:, None] == groups[None, :]).to(s.dtype)               # (S, B): text s said of row b's
    label = (sentence_keys(said.parsed).to(s.dtype) @ of_video) > 0                # one asking the same, said there
    has = region_ok.flatten(1).any(-1)                                             # (B,)
    usable = has[None, :].expand_as(label)
    mean = lambda x, on: (x * on).sum() / on.sum().clamp_min(1)                     # noqa: E731
    bce = lambda x, y: F.binary_cross_entropy_with_logits(x, y.to(x.dtype), reduction="none")   # noqa: E731
    pos_s, pos_b = [s[label & usable]], [bce(s, label)[label & usable]]
    neg = ~label & usable
    loss_neg = mean(bce(s, label), neg)
    out = {}
    if swap is not None:
        ss, sl, used = swap
        used = used & has[first_row(said.groups, groups)][:, None]
        pos_s.append(ss[sl & used])
        pos_b.append(bce(ss, sl)[sl & used])
        swapped = ~sl & used
        loss_neg = loss_neg + mean(bce(ss, sl), swapped)
        out["swap_margin"] = (torch.cat(pos_s).mean() - mean(ss, swapped)).detach()
    positives, scores = torch.cat(pos_b), torch.cat(pos_s)
    loss = (positives.mean() if len(positives) else positives.sum()) + loss_neg
    out["margin"] = (scores.mean() - mean(s, neg)).detach() if len(scores) else s.new_zeros(())
    return loss, out


def along_tube(w: torch.Tensor, ids: torch.Tensor, m: int) -> torch.Tensor:
    """(T,) the when-score of linked tube m's region at each frame of w (T, N), the tube's least score where it has
    no region (a missed detection may sit inside a span); -inf throughout when the tube is nowhere."""
    s = w.masked_fill(ids != m, float("-inf")).amax(1)
    ok = torch.isfinite(s)
    return torch.where(ok, s, s[ok].min()) if bool(ok.any()) else s


def tube_segment(w: torch.Tensor, ids: torch.Tensor, m: int, decode: str) -> tuple[int, int]:
    """[a, b] feature frames of the span of the when-score logits w (T, N) along linked tube m (frames where the
    tube is absent at its least score: a missed detection may sit inside a span): with decode iou the run of
    largest expected tIoU under the logits' sigmoid (tubes.activity.expected_iou_segment), with segment the best
    segment of the standardised score (tubes.activity.best_segment)."""
    from tubes.activity import best_segment, expected_iou_segment, standardise

    s = along_tube(w, ids, m)
    if not bool(torch.isfinite(s).any()):
        return 0, len(s) - 1
    s = s.double().cpu()
    return expected_iou_segment(torch.sigmoid(s).numpy()) if decode == "iou" else best_segment(standardise(s.numpy()))


__all__ = ["ParsedVerbs", "SaidSentences", "WeakWhenOptions", "along_tube", "as_verbs", "check_weak_when", "VerbIds",
           "WhenScore", "weak_when_lr_groups", "weak_when_score", "first_row", "mil_loss", "mil_scores",
           "region_vectors", "same_words", "sentence_keys", "swapped_verbs", "target_words", "text_vectors",
           "tube_segment", "when_logits"]
