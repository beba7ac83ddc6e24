"""The WSRA losses (Weak Supervision and Referring Attention, Sec. 3), as pure tensor functions.

Notation: N videos in a batch, video i has T_i valid frames v_t^i (padded to T) and its weak query t^i;
phi(v, t) in (0, 1) is the learned referring score (Eq. 2's scoring function); psi of Eqs. 5-6 is the same phi.

Readings of the text, where it leaves room:
- Eq. 3 sums over the batch inside the log (as printed): one log(1 + sum_i exp(gamma (s_n - s_p + m))).
- Eq. 5 / Eq. 6 are averaged over the (i, j) pairs the top/last-K sampling keeps (and, for Eq. 6, over valid
  frames), so the term's scale does not grow with the batch; a batch with no kept pair contributes 0.
- Eq. 9 as printed, max(0, m + cos(u_f, v_f) - cos(u_b, v_f)), would push the pseudo-positive's foreground *away*
  from v_f, the opposite of what the text and Fig. 4 say the term does ("making their foreground representations
  closer and enlarging the divergence of foreground with background"). We use max(0, m + cos(u_b, v_f) -
  cos(u_f, v_f)); the mean is over the rows whose gate lambda_i is 1.
- u_b of Eq. 9 is not written out; "the soft aggregation over all segments" is taken as Eq. 1's background form
  with the weights of Eq. 8: u_b = 1/(M - 1) sum_i (1 - gamma_i) u_i.
- Eq. 4's snippet-level weight beta is defined in the paper but no loss of Eq. 11 uses it, so it is not here.

`loss_video_query_nce` is not in the paper (config `wsra.epsilon`, 0 = off): see its docstring and docs/finetune.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax over `dim` where mask is True; 0 elsewhere (and 0 for a row with nothing valid)."""
    x = x.masked_fill(~mask, float("-inf"))
    out = torch.softmax(x, dim=dim)
    return torch.nan_to_num(out, nan=0.0) * mask


def referring_attention(phi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 2: alpha_t = exp(phi(v_t, t)) / sum_i exp(phi(v_i, t)) over the valid frames (last dim)."""
    return masked_softmax(phi, mask, dim=-1)


def foreground_background(v: torch.Tensor, alpha: torch.Tensor, mask: torch.Tensor):
    """Eq. 1: v_f = sum_t alpha_t v_t, v_b = 1/(T - 1) sum_t (1 - alpha_t) v_t over the T valid frames.
    v (..., T, d), alpha and mask (..., T) -> (..., d), (..., d)."""
    m = mask.to(v.dtype)
    fg = (alpha.unsqueeze(-1) * v).sum(-2)
    count = m.sum(-1, keepdim=True)
    bg = (((1.0 - alpha) * m).unsqueeze(-1) * v).sum(-2) / (count - 1.0).clamp_min(1.0)
    return fg, bg


def loss_bg(s_p: torch.Tensor, s_n: torch.Tensor, margin: float, gamma: float) -> torch.Tensor:
    """Eq. 3: log[1 + sum_i exp(gamma (s_n^i - s_p^i + m))], with s_p = phi(v_f, t), s_n = phi(v_b, t)."""
    x = gamma * (s_n - s_p + margin)
    return torch.logsumexp(torch.cat([x.new_zeros(1), x.reshape(-1)]), dim=0)


def top_last_k_negatives(sim: torch.Tensor, top_k: int, last_k: int,
                         candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Sec. 3.2.1: for row i, sort the other queries j by sim[i, j] (descending), drop the top K (likely
    pseudo-positives: near-synonyms of t^i) and the last K (easy negatives); the rest are i's negatives.
    (N, N) -> (N, N) bool. `candidates` (N, N) bool limits who may be a negative (default: j != i).

    With few candidates the cut is shrunk so that one negative survives: the last-K cut gives way first (easy
    negatives cost time but do no harm, per the paper), then the top-K cut. Ties keep index order."""
    n = sim.shape[0]
    if candidates is None:
        candidates = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    out = torch.zeros(n, n, dtype=torch.bool, device=sim.device)
    order = torch.sort(sim.masked_fill(~candidates, float("-inf")), dim=1, descending=True, stable=True).indices
    for i in range(n):
        avail = int(candidates[i].sum())
        if avail == 0:
            continue
        top, last = top_k, last_k
        while avail - top - last < 1 and last > 0:
            last -= 1
        while avail - top - last < 1 and top > 0:
            top -= 1
        out[i, order[i, top:avail - last]] = True
    return out


def loss_vas(s_pos: torch.Tensor, s_neg: torch.Tensor, negatives: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 5: mean over kept pairs (i, j) of max(0, m + psi(t^j, v_f^i) - psi(t^i, v_f^i)).
    s_pos (N,) = psi(t^i, v_f^i); s_neg (N, N) with s_neg[i, j] = psi(t^j, v_f^i); negatives (N, N) bool."""
    hinge = F.relu(margin + s_neg - s_pos.unsqueeze(1))
    w = negatives.to(hinge.dtype)
    return (hinge * w).sum() / w.sum().clamp_min(1.0)


def loss_ins_vas(alpha: torch.Tensor, phi: torch.Tensor, negatives: torch.Tensor, frame_mask: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """Eq. 6: mean over kept pairs (i, j) and valid frames t of
    max(0, m + alpha_{t-} psi(t^j, v_t^i) - alpha_{t+} psi(t^i, v_t^i)).
    alpha, phi (N, N, T): [i, j, t] = Eq. 2's weight / the score of query j on frame t of video i;
    negatives (N, N) bool; frame_mask (N, T) bool."""
    idx = torch.arange(alpha.shape[0], device=alpha.device)
    scaled = alpha * phi
    pos = scaled[idx, idx]                                                   # (N, T)
    hinge = F.relu(margin + scaled - pos.unsqueeze(1))                      # (N, N, T)
    w = (negatives.unsqueeze(-1) & frame_mask.unsqueeze(1)).to(hinge.dtype)
    return (hinge * w).sum() / w.sum().clamp_min(1.0)


def cross_video_attention(u: torch.Tensor, u_mask: torch.Tensor, v_f: torch.Tensor):
    """Eqs. 7-8: gamma_i = softmax_i cos(u_i, v_f) over the M valid segments of the pseudo-positive video u;
    u_f = sum_i gamma_i u_i and u_b = 1/(M - 1) sum_i (1 - gamma_i) u_i. u (N, M, d), u_mask (N, M), v_f (N, d)."""
    cos = F.normalize(u, dim=-1) @ F.normalize(v_f, dim=-1).unsqueeze(-1)   # (N, M, 1)
    gamma = masked_softmax(cos.squeeze(-1), u_mask, dim=-1)
    return foreground_background(u, gamma, u_mask)


def loss_crov(u_f: torch.Tensor, u_b: torch.Tensor, v_f: torch.Tensor, gate: torch.Tensor,
              margin: float) -> torch.Tensor:
    """Eq. 9 (direction as the text describes it, see the module note) gated by Eq. 10's lambda_i:
    mean over rows with gate 1 of max(0, m + cos(u_b, v_f) - cos(u_f, v_f))."""
    hinge = F.relu(margin + F.cosine_similarity(u_b, v_f, dim=-1) - F.cosine_similarity(u_f, v_f, dim=-1))
    g = gate.to(hinge.dtype)
    return (hinge * g).sum() / g.sum().clamp_min(1.0)


def crov_gate(caption_cosine: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 10: lambda = 1 where the two captions' cosine exceeds tau, else 0."""
    return (caption_cosine > tau).to(torch.float32)


def loss_video_query_nce(pooled: torch.Tensor, temperature: float, groups: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Multiple-instance NCE in both directions (our addition to Eq. 11). pooled (N, N): [i, j] = the
    score of query j in video i, its frame scores phi pooled by Eq. 2's weights; row i's positive is query i. Each query
    must find its own video among the batch's videos (cross-entropy over a column) and each video its own query
    (over a row). Eqs. 5-6 ask only the second (which query fits this video, by hinges on phi); on the synthetic
    corpus those terms alone leave the head no better than untrained, and adding this one makes it learn
    (docs/finetune.md has the figures).
    `groups` (N,): rows of the same video (several of its queries in one batch) are not negatives of each other."""
    n = pooled.shape[0]
    logits = pooled / temperature
    if groups is not None:
        same = (groups[:, None] == groups[None, :]) & ~torch.eye(n, dtype=torch.bool, device=pooled.device)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(n, device=pooled.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
