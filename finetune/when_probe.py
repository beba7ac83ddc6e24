"""A learnt when-score as a probe of frozen STVG features (benchmarks/diagnostics/stvg_when_probe.py): trained on the
held-in rows' truth over every tube's regions, it scores each held-out frame without the truth, so its ROC area says
how much *when* the features hold with the spatial half not given. A diagnostic, never a method: it reads the
train split's truth. Rows are dicts of one batch each: regions (B, T, N, d), tube_ids (B, T, N), m (tubes), ok
(B, T, N) the regions it may score, frames (B, T) valid, inside (B, T) in the referred span, pos (B, T, N) the
truth's tube's regions inside the span, parsed (ParsedVerbs)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from finetune.heads.when_score import WhenScore, along_tube
from grounding.metrics.roc import auc


def fit_when_score(rows: list[dict], held: list[torch.Tensor], target: bool, steps: int, seed: int = 0):
    """A WhenScore trained on the held-in rows (`held` per batch: (B,) True where the row's video is held out) by
    binary cross-entropy over every region it may score, the truth's tube inside the span the positives."""
    torch.manual_seed(seed)
    score = WhenScore(rows[0]["regions"].shape[-1], 64, 1024, target)
    opt = torch.optim.AdamW(score.parameters(), 3e-3, weight_decay=1e-2)
    for step in range(steps):
        r, h = rows[step % len(rows)], held[step % len(rows)]
        keep = r["ok"] & ~h[:, None, None]
        if not bool(keep.any()):
            continue
        logit = score(r["regions"], r["tube_ids"], r["m"], r["parsed"])
        loss = F.binary_cross_entropy_with_logits(logit[keep], r["pos"][keep].to(logit.dtype))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return score


def when_score_frames(score, r: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) each frame's best region's logit, and the logit along the tube where the row's score peaks (a frame
    where that tube has no scorable region: its least); a frame without a scorable region gets the row's least."""
    with torch.no_grad():
        w = score(r["regions"], r["tube_ids"], r["m"], r["parsed"]).masked_fill(~r["ok"], float("-inf"))
    ids = r["tube_ids"].masked_fill(~r["ok"], -1)          # along_tube then sees the scorable regions only
    best = w.amax(-1)
    floor = best.masked_fill(~torch.isfinite(best), float("inf")).amin(-1, keepdim=True)
    best = torch.where(torch.isfinite(best), best, floor)
    tube = best.clone()
    for b in range(len(w)):
        flat = int(w[b].argmax())
        if bool(torch.isfinite(w[b].flatten()[flat])):
            tube[b] = along_tube(w[b], ids[b], int(ids[b].flatten()[flat]))
    return best, tube


def per_query_auc(score: torch.Tensor, r: dict, rows: torch.Tensor) -> list[float]:
    """The ROC area of each row in `rows` over its own valid frames (rows without both kinds left out)."""
    out = []
    for b in rows.tolist():
        m = r["frames"][b]
        a = auc(score[b][m].numpy(), r["inside"][b][m].numpy())
        if a == a:
            out.append(a)
    return out


def learnt_when_probe(rows: list[dict], held: list[torch.Tensor], steps: int) -> dict:
    """auc_when_score_{verb,target}_{best_region,peak_tube}_held_out (pooled over held-out frames) and
    ..._per_query (the mean over held-out rows of each row's own ROC area), and the same pooled on held-in rows."""
    out = {}
    for words in ("verb", "target"):
        score = fit_when_score(rows, held, words == "target", steps)
        scored = [when_score_frames(score, r) for r in rows]
        for i, name in enumerate(("best_region", "peak_tube")):
            sc, lab, part, per_q = [], [], [], []
            for r, h, both in zip(rows, held, scored):
                s = both[i]
                m = r["frames"]
                sc.append(s[m].numpy())
                lab.append(r["inside"][m].numpy())
                part.append(h[:, None].expand_as(m)[m].numpy())
                per_q += per_query_auc(s, r, torch.nonzero(h)[:, 0])
            sc, lab, part = np.concatenate(sc), np.concatenate(lab), np.concatenate(part)
            key = f"auc_when_score_{words}_{name}"
            out[f"{key}_held_out"] = round(auc(sc[part], lab[part]), 4)
            out[f"{key}_train"] = round(auc(sc[~part], lab[~part]), 4)
            out[f"{key}_per_query_held_out"] = round(float(np.mean(per_q)), 4)
    return out


__all__ = ["fit_when_score", "learnt_when_probe", "per_query_auc", "when_score_frames"]
