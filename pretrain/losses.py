"""Contrastive losses of Eq. 1 (L_local, L_global) with negatives gathered from all ranks.

Notation: s(x, y) = x . y on L2-normalised features, tau the (learnable) temperature, delta the margin of Eq. 1.
Eq. 1 as printed subtracts delta from every term, which cancels in the ratio; we read it (as MIL-NCE / CoMMA do)
as a margin on the positive only:

    nce(l) = -log  e^{(s_ll - delta)/tau} / ( e^{(s_ll - delta)/tau} + sum_{k != l} e^{s_lk / tau} ).

L_global (Sec. 3.4): symmetric nce on the global clip features V_l (mean of the selected frames' f(CLS)) and
S_l = g(EOT), over all B_global = world * B clips: each rank scores its B local rows against the gathered columns.

L_local (Eq. 1, imposters from CoMMA, Tan et al. 2021): the local branch is cross-modal, so its pooled features
depend on the pair it is run on. For video i and sentence j let (V_{i|j}, S_{j|i}) be the pooled outputs of the
local branch applied to the pair (i, j), and m(i, j) = V_{i|j} . S_{j|i}. An *imposter* is the branch applied to a
mismatched pair: S^imp_k for video l is sentence k attended with video l (score m(l, k)), V^imp_k for sentence l
is video k attended with sentence l (score m(k, l)). L_local is

    L_local = 1/2 [nce_rows(A) + nce_cols(A)]                                          (first term of Eq. 1)
            + w_imp/2 * (-1/B) sum_l [ log e^{(m_ll-d)/tau} / (e^{(m_ll-d)/tau} + sum_{k in I_l} e^{m(l,k)/tau})
                                     + log e^{(m_ll-d)/tau} / (e^{(m_ll-d)/tau} + sum_{k in I_l} e^{m(k,l)/tau}) ]

with A_lk = V_{l|l} . S_{k|k} (each clip attended with its own caption; gathered across ranks like L_global) and
I_l the imposter set of clip l. Running the branch on all B^2 pairs is quadratic in its self-attention cost, so
I_l = {l+1, ..., l+n} (mod B) within the rank's batch: n = `imposters` rolled pairings (all B-1 when B <= n+1).
The imposter term is therefore rank-local; only the A term and L_global use gathered negatives.

The word-region term of L_local (model.word_region_weight, on by default): the A term above can be won without
the text, because S_{l|l} has absorbed video l's own tokens through the cross-attention; measured at demo scale,
the pooled L_local alone left test pointing at chance (the branch's attention never found the named object).
So L_local adds Eq. 1 on word-region scores of the projected, un-mixed tokens (word_region_scores): caption i
and clip j score the mean over i's words of each word's best region of j, over all world * B pairs. This is the
word-region matching of the paper's ref. [1] (Akbari et al. 2019), whose heatmaps the paper follows (Sec. 3.5),
and the heatmap of inference is the same word-over-region attention (model.heatmap = word_region).

L_crov, the cross-video term (pseudo-positives mined from the FAISS index, WSRA Sec. 3.3): clip l of the set M of
clips that have a pseudo-positive caption P_l (the caption of a clip of *another* video whose caption agrees, WSRA
Eq. 10) gets P_l as a second positive next to its own caption S_l, in the MIL-NCE form over the global features:

    L_crov = -1/|M| sum_{l in M} log  (e^{(V_l.S_l - d)/tau} + e^{(V_l.P_l - d)/tau})
                                    / (e^{(V_l.S_l - d)/tau} + e^{(V_l.P_l - d)/tau} + sum_{k != l} e^{V_l.S_k/tau})

with k over all world * B captions (gathered like L_global) and |M| counted over all ranks, so clips without a
pseudo-positive add nothing and the ranks' mean equals the single-process loss. WSRA's own Eq. 9 is a hinge on
foreground/background features of the two videos; this model has no background branch, so the pseudo-positive
enters the contrastive objective it already has. The model adds w * L_crov (w = model.pseudo_positive_weight).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all ranks along dim 0, keeping gradients (identity when not distributed)."""
    rank, size = world()
    if size == 1:
        return x
    import torch.distributed.nn as dist_nn

    return _ContiguousGrad.apply(torch.cat(dist_nn.all_gather(x.contiguous()), dim=0))


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: all_gather's backward sends the gradient
    slices through gloo's all_to_all, which reads a strided slice (einsum's gradients are permuted views) as if
    it were dense and hands back wrong numbers without an error."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def nce(logits: torch.Tensor, targets: torch.Tensor, margin: float, scale: torch.Tensor | float) -> torch.Tensor:
    """Mean over rows of -log softmax(scale * (logits - margin * onehot(target)))[target]."""
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(scale * (logits - margin * onehot), targets)


def contrastive(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float, margin: float,
                gather: bool = True, hard_text: torch.Tensor | None = None,
                hard_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric nce of Eq. 1 on matching rows of video (B, d) and text (B, d), negatives from all ranks.

    Each rank scores its own B rows against the world*B gathered columns (open_clip's local-loss layout); the
    per-rank mean, averaged over ranks by data-parallel gradient averaging, equals the single-process loss on the
    concatenated batch, gradients included (all_gather sends gradients back to the rank that owns the rows)."""
    rank, size = world() if gather else (0, 1)
    all_video = gather_with_grad(video) if size > 1 else video
    all_text = gather_with_grad(text) if size > 1 else text
    targets = torch.arange(video.shape[0], device=video.device) + rank * video.shape[0]
    logits = video @ all_text.t()
    if hard_text is not None:
        # one more column per row: its own hard negative caption (pretrain/hard_negatives.py). Where a row has
        # none the column is a cosine of -1e4, which exp() turns into an exact 0 (-inf would too, but the scale's
        # gradient multiplies it by its zero softmax weight: 0 * inf = NaN)
        hard = (video * hard_text).sum(-1, keepdim=True)
        logits = torch.cat([logits, hard.masked_fill(~hard_mask.view(-1, 1).bool(), -1e4)], dim=1)
    v2t = nce(logits, targets, margin, scale)
    t2v = nce(text @ all_video.t(), targets, margin, scale)
    return 0.5 * (v2t + t2v)


def frame_max_contrastive(frames: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float, margin: float,
                          gather: bool = True, hard_text: torch.Tensor | None = None,
                          hard_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`contrastive` with each (clip, caption) pair scored by the clip's best frame: max_t <frames[i, t], text[j]>
    on frames (B, T, d) and text (B, d), both L2-normalised (model.frame_pool=max). Inference scores single frames;
    with the mean of T frames a caption's gradient lifts every frame of the window alike, the scene's objects
    included, while the best frame is the one that shows what the caption says."""
    rank, size = world() if gather else (0, 1)
    all_frames = gather_with_grad(frames) if size > 1 else frames
    all_text = gather_with_grad(text) if size > 1 else text
    targets = torch.arange(frames.shape[0], device=frames.device) + rank * frames.shape[0]
    logits = torch.einsum("itd,jd->ijt", frames, all_text).amax(-1)
    if hard_text is not None:
        hard = torch.einsum("itd,id->it", frames, hard_text).amax(-1, keepdim=True)
        logits = torch.cat([logits, hard.masked_fill(~hard_mask.view(-1, 1).bool(), -1e4)], dim=1)
    v2t = nce(logits, targets, margin, scale)
    t2v = nce(torch.einsum("id,jtd->ijt", text, all_frames).amax(-1), targets, margin, scale)
    return 0.5 * (v2t + t2v)


def imposter_pairs(batch: int, imposters: int) -> list[int]:
    """Shifts s of the pairs (clip i, caption i + s mod B): 0 is the positive, then the imposters."""
    return list(range(0, min(imposters, batch - 1) + 1))


def imposter_nce(pair_scores: torch.Tensor, scale: torch.Tensor | float, margin: float) -> torch.Tensor:
    """Imposter term of L_local from m(i, i + s) laid out as pair_scores (B, 1 + n) for shifts s = 0..n.

    Row l of the video side is [m(l,l), m(l,l+1), ..., m(l,l+n)]; the sentence side of clip l needs m(l-s, l),
    which is pair_scores[(l - s) mod B, s]."""
    b, cols = pair_scores.shape
    if cols < 2:
        return pair_scores.new_zeros(())
    targets = torch.zeros(b, dtype=torch.long, device=pair_scores.device)
    video_side = nce(pair_scores, targets, margin, scale)
    rows = (torch.arange(b, device=pair_scores.device)[:, None] - torch.arange(cols, device=pair_scores.device)) % b
    text_side_scores = pair_scores[rows, torch.arange(cols, device=pair_scores.device)[None, :].expand(b, cols)]
    text_side = nce(text_side_scores, targets, margin, scale)
    return 0.5 * (video_side + text_side)


def multi_positive_nce(video: torch.Tensor, text: torch.Tensor, extra: torch.Tensor, mask: torch.Tensor,
                       scale: torch.Tensor | float, margin: float, gather: bool = True) -> torch.Tensor:
    """L_crov (module docstring): rows l of video (B, d) with mask[l] have two positives, text[l] and extra[l];
    negatives are the other captions of all ranks. Rows without mask add nothing; no masked row anywhere: 0."""
    rank, size = world() if gather else (0, 1)
    all_text = gather_with_grad(text) if size > 1 else text
    b = video.shape[0]
    targets = torch.arange(b, device=video.device) + rank * b
    onehot = F.one_hot(targets, all_text.shape[0]).to(video.dtype)
    logits = scale * (video @ all_text.t() - margin * onehot)                  # (B, world*B), margin on S_l
    extra_logit = scale * ((video * extra).sum(-1) - margin)                    # (B,)
    positives = torch.stack([logits.gather(1, targets[:, None])[:, 0], extra_logit], dim=1)
    per_row = torch.logsumexp(torch.cat([logits, extra_logit[:, None]], dim=1), dim=1) - positives.logsumexp(1)
    mask = mask.to(device=video.device, dtype=torch.bool)
    count = mask.sum().to(torch.float32)
    if size > 1:  # normalise by the clips with a pseudo-positive on all ranks (gradients are averaged over ranks)
        count = count.clone()
        dist.all_reduce(count)
    return per_row.masked_fill(~mask, 0.0).sum() * size / count.clamp_min(1.0)


def word_region_scores(words: torch.Tensor, mask: torch.Tensor, regions: torch.Tensor,
                       chunk_elements: int = 1 << 26) -> torch.Tensor:
    """s(i, j) = mean over the valid words k of caption i of max over the regions r of clip j of words[i, k] .
    regions[j, r]: words (Bt, K, d), mask (Bt, K), regions (Bv, M, d) -> (Bt, Bv).

    The (Bt, Bv, K, M) similarity is built in chunks of captions so its size stays under `chunk_elements`
    (ViT-B/32 with 8 frames has M = 392 regions per clip); max keeps only its argmax for the backward pass."""
    bt, k = mask.shape
    bv, m = regions.shape[:2]
    step = max(1, chunk_elements // max(1, bv * k * m))
    weight = mask.to(words.dtype)
    weight = weight / weight.sum(1, keepdim=True).clamp_min(1.0)
    rows = []
    for i in range(0, bt, step):
        sim = torch.einsum("ikd,jmd->ijkm", words[i:i + step], regions)
        rows.append((sim.amax(-1) * weight[i:i + step, None, :]).sum(-1))
    return torch.cat(rows, 0)


def word_region_contrastive(regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor,
                            scale: torch.Tensor | float, margin: float, gather: bool = True) -> torch.Tensor:
    """Symmetric nce of Eq. 1 on word-region scores (word_region_scores), negatives from all ranks.

    The pooled local features of Sec. 3.3 let a caption match its clip through the video content the
    cross-attention mixed into it; scoring each word by its best-matching region of the *other* modality's
    un-mixed tokens (the word-region matching of Akbari et al. 2019, ref. [1] of the paper) leaves no such
    shortcut, so the words have to find their regions. regions (B, M, d) and words (B, K, d) L2-normalised."""
    rank, size = world() if gather else (0, 1)
    all_regions = gather_with_grad(regions) if size > 1 else regions
    all_words = gather_with_grad(words) if size > 1 else words
    all_mask = _gather_plain(mask) if size > 1 else mask
    targets = torch.arange(regions.shape[0], device=regions.device) + rank * regions.shape[0]
    t2v = nce(word_region_scores(words, mask, all_regions), targets, margin, scale)
    v2t = nce(word_region_scores(all_words, all_mask, regions).t(), targets, margin, scale)
    return 0.5 * (v2t + t2v)


def _gather_plain(x: torch.Tensor) -> torch.Tensor:
    """all_gather without gradients; bool travels as uint8 (gloo has no bool all_gather)."""
    y = x.to(torch.uint8) if x.dtype == torch.bool else x
    out = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(out, y.contiguous())
    return torch.cat(out, 0).to(x.dtype)


def neighbour_mask(video_ids: torch.Tensor, spans: torch.Tensor, all_ids: torch.Tensor, all_spans: torch.Tensor,
                   shift: float, offset: int = 0) -> torch.Tensor:
    """(B, world*B) bool: column k holds another ASR window of row l's video whose span lies within `shift`
    seconds of l's span (gap = max(0, start_k - end_l, start_l - end_k)); the row's own column (offset + l) is
    never set. video_ids (B,) long, spans (B, 2) [asr_start, asr_end]; all_* the gathered columns."""
    gap = torch.maximum(all_spans[None, :, 0] - spans[:, None, 1], spans[:, None, 0] - all_spans[None, :, 1])
    near = (video_ids[:, None] == all_ids[None, :]) & (gap.clamp_min(0.0) <= shift)
    own = torch.arange(video_ids.shape[0], device=near.device) + offset
    near[torch.arange(video_ids.shape[0], device=near.device), own] = False
    return near


def mil_contrastive(video: torch.Tensor, text: torch.Tensor, bag: torch.Tensor, bag_mask: torch.Tensor,
                    scale: torch.Tensor | float, margin: float, video_ids: torch.Tensor | None = None,
                    spans: torch.Tensor | None = None, shift: float = 0.0, gather: bool = True,
                    hard_text: torch.Tensor | None = None, hard_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_global in the MIL-NCE form (Miech et al. 2020) over neighbouring ASR windows (model.mil_windows).

    Narration is shifted against the action by up to asr_shift seconds, so the caption of clip l may describe a
    neighbouring moment while a neighbouring window's caption describes what l shows. Clip l's positives are its
    own caption S_l and the captions N_l = bag[l, bag_mask[l]] of its video's neighbouring ASR windows:

        v2t(l) = -log ( e^{(V_l.S_l - d)/tau} + sum_{n in N_l} e^{(V_l.n - d)/tau} )
                      / ( that + sum_{k != l, k not near l} e^{V_l.S_k/tau} [+ e^{V_l.H_l/tau}] )
        t2v(l) = -log e^{(S_l.V_l - d)/tau} / ( e^{(S_l.V_l - d)/tau} + sum_{k != l, k not near l} e^{S_l.V_k/tau} )

    with k over all world * B clips (gathered); "near" (neighbour_mask, given video_ids and spans) drops the
    in-batch windows of l's video within `shift` seconds from the negatives: their captions are l's positives (or
    could be), so they must not also be pushed away. Without neighbours (bag_mask all false, nothing near) this
    is `contrastive` exactly. bag (B, n, d), bag_mask (B, n); H_l the optional verb-swapped hard negative."""
    rank, size = world() if gather else (0, 1)
    all_video = gather_with_grad(video) if size > 1 else video
    all_text = gather_with_grad(text) if size > 1 else text
    b = video.shape[0]
    targets = torch.arange(b, device=video.device) + rank * b
    onehot = F.one_hot(targets, all_text.shape[0]).to(video.dtype)
    drop = torch.zeros_like(onehot, dtype=torch.bool)
    if video_ids is not None:
        all_ids = _gather_plain(video_ids) if size > 1 else video_ids
        all_spans = _gather_plain(spans) if size > 1 else spans
        drop = neighbour_mask(video_ids, spans, all_ids, all_spans, shift, rank * b)
    # dropped columns get a cosine of -1e4: exp() makes them an exact 0 without the NaN gradient of -inf
    v2t_logits = scale * (video @ all_text.t() - margin * onehot).masked_fill(drop, -1e4)
    bag_logits = scale * (torch.einsum("bd,bnd->bn", video, bag) - margin).masked_fill(~bag_mask.bool(), -1e4)
    negatives = [v2t_logits, bag_logits]
    if hard_text is not None:
        hard = (video * hard_text).sum(-1, keepdim=True).masked_fill(~hard_mask.view(-1, 1).bool(), -1e4)
        negatives.append(scale * hard)
    own = v2t_logits.gather(1, targets[:, None])
    v2t = (torch.logsumexp(torch.cat(negatives, 1), 1) - torch.logsumexp(torch.cat([own, bag_logits], 1), 1))
    t2v_logits = scale * (text @ all_video.t() - margin * onehot).masked_fill(drop, -1e4)
    t2v = F.cross_entropy(t2v_logits, targets, reduction="none")
    return 0.5 * (v2t.mean() + t2v.mean())
