"""Frame-selection benchmark: batched log-domain Sinkhorn selection vs a per-sample loop shaped like the paper's
public code (per clip: word-frame similarity matmul, exp-domain Sinkhorn, top-T). Same inputs, same threads, same
run; the selected frames of both are compared. Prints one JSON object. The gather of the selected frames' patch
features (a memory copy of B*T*N*d floats, the same in both) is timed separately, not in the speedup.

  .venv/bin/python -m benchmarks.speed.sinkhorn                  # batch 256, K=20, U=16, T=8, 49 patches x 512-d
  .venv/bin/python -m benchmarks.speed.sinkhorn --threads 1 --device cuda

Target: speedup >= 50x with the same selected frames (same_selection = 1.0; float32 may flip an exact near-tie).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from pretrain import sinkhorn


def inputs(batch, words, frames, patches, dim, seed, device):
    gen = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(batch, words, dim, generator=gen), dim=-1)
    # frames share a clip-level direction so similarities have structure, as real neighbouring frames do
    clip = torch.randn(batch, 1, dim, generator=gen)
    video = F.normalize(clip + torch.randn(batch, frames, dim, generator=gen), dim=-1)
    text = F.normalize(text + 0.5 * clip, dim=-1)
    local = torch.randn(batch, frames, patches, dim, generator=gen)
    lengths = torch.randint(3, words + 1, (batch,), generator=gen)
    mask = torch.arange(words).unsqueeze(0) < lengths.unsqueeze(1)
    return [x.to(device) for x in (text, mask, video, local)]


def batched(text, mask, video, t, iters, eps):
    sim, m = sinkhorn.word_frame_similarity(None, text, mask, video, None, "local", "global")
    return sinkhorn.select_frames(sim, m, t, "sinkhorn", iters, eps)


def similarity(text, mask, video):
    return sinkhorn.word_frame_similarity(None, text, mask, video, None, "local", "global")


def batched_from_p(sim, m, t, iters, eps):
    return sinkhorn.select_frames(sim, m, t, "sinkhorn", iters, eps)


def per_sample_from_p(sim, m, t, iters, eps):
    """The per-sample loop on the same precomputed P (selection cost alone)."""
    return sinkhorn.select_frames_reference(sim, m, t, iters, eps)


def gather_batched(local, idx):
    return local[torch.arange(idx.shape[0], device=idx.device).unsqueeze(1), idx]


def gather_loop(local, idx):
    return torch.stack([torch.index_select(local[i], 0, idx[i]) for i in range(idx.shape[0])])


def per_sample(text, mask, video, t, iters, eps):
    """One clip at a time, like the public code's `for i in range(batch_size)` around its Sinkhorn: the word-frame
    similarity per clip, then the per-sample exp-domain reference (pretrain.sinkhorn.select_frames_reference)."""
    picked = []
    for i in range(video.shape[0]):
        p = (text[i] @ video[i].t()).unsqueeze(0)                 # (1, K, U)
        picked.append(sinkhorn.select_frames_reference(p, mask[i:i + 1], t, iters, eps)[0])
    return torch.stack(picked)


def timed(fn, args, repeats, device):
    fn(*args)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = fn(*args)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--selected", type=int, default=8)
    p.add_argument("--patches", type=int, default=49)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    text, mask, video, local = inputs(a.batch, a.words, a.frames, a.patches, a.dim, a.seed, a.device)
    extra = (a.selected, a.iters, a.eps)
    with torch.no_grad():
        t_loop, idx_loop = timed(per_sample, (text, mask, video, *extra), a.repeats, a.device)
        t_fast, idx_fast = timed(batched, (text, mask, video, *extra), a.repeats, a.device)
        sim, m = similarity(text, mask, video)
        t_sim, _ = timed(similarity, (text, mask, video), a.repeats, a.device)
        s_loop, idx_sloop = timed(per_sample_from_p, (sim, m, *extra), a.repeats, a.device)
        s_fast, idx_sfast = timed(batched_from_p, (sim, m, *extra), a.repeats, a.device)
        g_loop, feat_loop = timed(gather_loop, (local, idx_loop), a.repeats, a.device)
        g_fast, feat_fast = timed(gather_batched, (local, idx_fast), a.repeats, a.device)
    same = (idx_loop == idx_fast).all(dim=1)
    print(json.dumps({
        "benchmark": "sinkhorn_frame_selection", "device": a.device, "threads": torch.get_num_threads(),
        "batch": a.batch, "words": a.words, "frames": a.frames, "selected": a.selected, "patches": a.patches,
        "dim": a.dim, "iters": a.iters,
        "per_sample_ms": round(t_loop * 1e3, 3), "batched_ms": round(t_fast * 1e3, 3),
        "speedup": round(t_loop / t_fast, 1), "target_speedup": 50.0,
        "similarity_ms": round(t_sim * 1e3, 3),
        "selection_only_per_sample_ms": round(s_loop * 1e3, 3), "selection_only_batched_ms": round(s_fast * 1e3, 3),
        "selection_only_speedup": round(s_loop / s_fast, 1),
        "selection_only_same": (idx_sloop == idx_sfast).all(dim=1).float().mean().item(),
        "same_selection": same.float().mean().item(),
        "same_features": bool(torch.equal(feat_loop[same], feat_fast[same])),
        "gather_per_sample_ms": round(g_loop * 1e3, 3), "gather_batched_ms": round(g_fast * 1e3, 3),
        "meets_target": bool(t_loop / t_fast >= 50.0 and same.float().mean().item() >= 0.99),
    }))


if __name__ == "__main__":
    main()
