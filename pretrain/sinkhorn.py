"""Frame selection (Sec. 3.2): pick T of the U window frames that the caption's words can be grounded in.

Word-to-frame similarity P (B, K, U) is computed at a configurable granularity (Table 5): text = words (local) or the
sentence EOT (global); video = frame CLS (global) or the best-matching patch of the frame (local, max over patches).

Sinkhorn selection is optimal transport with a background row. The K valid words together ship mass T/U, each
word an equal share; a background ("dustbin") row ships the remaining (U - T)/U; every frame receives exactly 1/U:

    Q = argmin_Q <Q, -P'/eps> - H(Q),  Q 1 = a,  Q^T 1 = 1/U,
    a_k = T / (U K_valid) for valid words, a_bg = (U - T) / U, a = 0 for padding words,

where P' is P with a constant background row (a constant row adds a constant to the objective, so its value is
irrelevant). A frame holds at most 1/U of mass, so words that match the same frames must spill over to their
next-best frames instead of all saturating one, and the background absorbs the frames no word needs. A frame's
score is the largest share of any one word's mass it receives, max_k Q[k, u] / a_k: a frame is kept when some word
commits to it. Ranking by total word mass instead would let a concept named by many words (or shown in many
near-identical frames) take all T slots; the per-word share keeps frames of every grounded concept (see
tests/test_sinkhorn.py). The T best frames are returned in temporal order. Selection is a data choice, so it runs
without gradients.

Solved batched in the log domain (no loop over samples); the last half-iteration fixes the frame marginals exactly,
as SwAV's Sinkhorn ends on its per-sample normalisation. `select_frames_reference` is the plain per-sample,
exp-domain version the batched one must agree with.
"""
from __future__ import annotations

import torch

MODES = ("sinkhorn", "topk", "none")
NEG = -1.0e4  # log-kernel value that removes a (word, frame) cell without producing inf - inf


def word_frame_similarity(text_global: torch.Tensor, text_local: torch.Tensor, text_mask: torch.Tensor,
                          frames_global: torch.Tensor, frames_local: torch.Tensor | None,
                          text: str = "local", video: str = "global") -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity P (B, K', U) and its valid-row mask (B, K'); inputs are L2-normalised features.

    text_global (B, d), text_local (B, K, d), text_mask (B, K) bool, frames_global (B, U, d),
    frames_local (B, U, N, d). text="global" gives K' = 1 (the sentence); video="local" scores a frame by its
    best-matching patch.
    """
    if text == "global":
        words, mask = text_global.unsqueeze(1), torch.ones_like(text_mask[:, :1])
    elif text == "local":
        words, mask = text_local, text_mask
    else:
        raise ValueError(f"selection text granularity must be local|global, got {text!r}")
    if video == "global":
        sim = torch.einsum("bkd,bud->bku", words, frames_global)
    elif video == "local":
        if frames_local is None:
            raise ValueError("video='local' needs patch tokens")
        sim = torch.einsum("bkd,bund->bkun", words, frames_local).amax(dim=-1)
    else:
        raise ValueError(f"selection video granularity must be local|global, got {video!r}")
    return sim, mask.bool()


def _log_kernel(sim: torch.Tensor, word_mask: torch.Tensor, temperature: float,
                frame_valid: torch.Tensor | None) -> torch.Tensor:
    """(B, K+1, U): words' sim / eps, padding words 0 (their mass is 0 anyway), background row 0 last."""
    logk = (sim / temperature).masked_fill(~word_mask.unsqueeze(-1), 0.0)
    if frame_valid is not None:
        logk = logk.masked_fill(~frame_valid.unsqueeze(1), NEG)
    return torch.cat([logk, torch.zeros_like(logk[:, :1])], dim=1)


def marginals(word_mask: torch.Tensor, frames: int, selected: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row marginals (B, K+1) (words then background) and column marginals (B, U) of the transport problem."""
    m = word_mask.to(torch.float64)
    n_words = m.sum(dim=1, keepdim=True).clamp_min(1.0)
    rows = torch.cat([m * (selected / frames) / n_words,
                      torch.full_like(m[:, :1], (frames - selected) / frames)], dim=1)
    cols = torch.full((m.shape[0], frames), 1.0 / frames, dtype=torch.float64, device=m.device)
    return rows, cols


def sinkhorn_log(log_kernel: torch.Tensor, row_marg: torch.Tensor, col_marg: torch.Tensor,
                 iters: int) -> torch.Tensor:
    """Batched log-domain Sinkhorn-Knopp: log Q (B, R, C) with Q 1 ~= row_marg and Q^T 1 = col_marg exactly.

    The dual potentials f (rows) and g (columns) stay in the log domain; the kernel is exponentiated once, after
    subtracting each row's maximum (r), so every log-sum-exp of an iteration becomes a batched matrix-vector
    product with a max-shift:

        f = log a - log sum_u exp(logK + g)      = log a - r - gmax - log(K' exp(g - gmax))
        g = log b - log sum_k exp(logK + f)      = log b - m    - log(K'^T exp(r + f - m)),  m = max_k (r + f)

    with K' = exp(logK - r) in (0, 1]. This is exact (not an approximation of the log-domain updates) and costs
    one exp of (B, R, C) instead of one per half-iteration. Zero row marginals are allowed (those rows get Q = 0).
    """
    dtype = log_kernel.dtype
    log_a = row_marg.to(dtype).log()
    log_b = col_marg.to(dtype).log()
    r = log_kernel.amax(dim=2, keepdim=True)                      # (B, R, 1)
    kernel = (log_kernel - r).exp()                               # (B, R, C), entries in (0, 1]
    r = r.squeeze(2)
    tiny = torch.finfo(dtype).tiny
    g = torch.zeros_like(log_b)
    f = torch.zeros_like(log_a)
    for _ in range(iters):
        gmax = g.amax(dim=1, keepdim=True)
        kv = torch.bmm(kernel, (g - gmax).exp().unsqueeze(2)).squeeze(2)           # (B, R)
        f = log_a - r - gmax - kv.clamp_min(tiny).log()
        h = r + f
        hmax = h.amax(dim=1, keepdim=True)      # finite: the background row always ships mass
        ku = torch.bmm(kernel.transpose(1, 2), (h - hmax).exp().unsqueeze(2)).squeeze(2)  # (B, C)
        g = log_b - hmax - ku.clamp_min(tiny).log()
    return log_kernel + f.unsqueeze(2) + g.unsqueeze(1)


def transport_plan(sim: torch.Tensor, word_mask: torch.Tensor, selected: int, iters: int = 3,
                   temperature: float = 0.1, frame_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Q (B, K+1, U): word rows then the background row (see the module docstring)."""
    frames = sim.shape[-1]
    if not 1 <= selected < frames:
        raise ValueError(f"transport needs 1 <= T < U, got T={selected} U={frames}")
    rows, cols = marginals(word_mask, frames, selected)
    logq = sinkhorn_log(_log_kernel(sim, word_mask, temperature, frame_valid), rows, cols, iters)
    return logq.exp()


def _ordered(idx: torch.Tensor) -> torch.Tensor:
    return idx.sort(dim=-1).values


def strided(batch: int, frames: int, selected: int, device=None,
            frame_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Evenly strided frames ("none"); with frame_valid, spread over each sample's valid prefix."""
    steps = torch.arange(selected, device=device, dtype=torch.float64)
    if frame_valid is None:
        n = torch.full((batch, 1), float(frames), device=device, dtype=torch.float64)
    else:
        n = frame_valid.sum(dim=1, keepdim=True).clamp_min(1).to(torch.float64)
    return torch.floor((steps + 0.5) * n / selected).long().clamp(max=frames - 1)


@torch.no_grad()
def select_frames(sim: torch.Tensor, word_mask: torch.Tensor, selected: int, mode: str = "sinkhorn",
                  iters: int = 3, temperature: float = 0.1,
                  frame_valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) frame indices in temporal order, from P (B, K, U) and its word mask (B, K)."""
    batch, _, frames = sim.shape
    if mode not in MODES:
        raise ValueError(f"selection must be one of {MODES}, got {mode!r}")
    if selected > frames:
        raise ValueError(f"cannot select T={selected} of U={frames} frames")
    if mode == "none":
        return strided(batch, frames, selected, sim.device, frame_valid)
    if selected == frames:
        return torch.arange(frames, device=sim.device).expand(batch, frames).clone()
    word_mask = word_mask.bool()
    if mode == "topk":
        m = word_mask.unsqueeze(-1).to(sim.dtype)
        score = (sim * m).sum(1) / m.sum(1).clamp_min(1.0)
    else:
        q = transport_plan(sim, word_mask, selected, iters, temperature, frame_valid)
        rows, _ = marginals(word_mask, frames, selected)
        share = q[:, :-1] / rows[:, :-1, None].to(q.dtype).clamp_min(1e-30)
        score = share.masked_fill(~word_mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    if frame_valid is not None:
        score = score.masked_fill(~frame_valid, float("-inf"))
    return _ordered(score.topk(selected, dim=1).indices)


@torch.no_grad()
def select_frames_reference(sim: torch.Tensor, word_mask: torch.Tensor, selected: int, iters: int = 3,
                            temperature: float = 0.1) -> torch.Tensor:
    """Per-sample, exp-domain Sinkhorn selection (the shape of the paper's public code): the ground truth that
    `select_frames` must reproduce, and the baseline of benchmarks/speed/sinkhorn.py."""
    out = []
    frames = sim.shape[-1]
    for b in range(sim.shape[0]):
        p = sim[b][word_mask[b].bool()]                       # (k, U) valid words only
        k = p.shape[0]
        kernel = torch.cat([torch.exp(p / temperature), torch.ones_like(p[:1])], dim=0)
        row = torch.cat([torch.full((k,), selected / frames / max(k, 1), dtype=p.dtype, device=p.device),
                         torch.full((1,), (frames - selected) / frames, dtype=p.dtype, device=p.device)])
        col = torch.full((frames,), 1.0 / frames, dtype=p.dtype, device=p.device)
        v = torch.ones_like(col)
        u = torch.ones_like(row)
        for _ in range(iters):
            u = row / (kernel @ v)
            v = col / (kernel.t() @ u)
        q = u[:, None] * kernel * v[None, :]
        score = (q[:k] / row[:k, None]).max(dim=0).values
        out.append(torch.sort(torch.topk(score, selected).indices).values)
    return torch.stack(out)
