"""Synthetic embeddings with cluster structure, for tests and the benchmark (no model needed).

Clips of `videos` videos each show one of `actions` actions: a clip's video vector is its action's centre plus a
per-video offset and noise; its caption vector is the action's caption centre plus a little noise, so captions of
one action agree (cosine well above 0.9) and captions of different actions do not.
"""
from __future__ import annotations

import numpy as np

from index import embshards


def clustered(n: int, d: int, clusters: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around `clusters` random centres (spread = noise norm relative to the centre)."""
    rng = np.random.default_rng(seed)
    centres = embshards.l2_normalise(rng.standard_normal((clusters, d), dtype=np.float32))
    labels = rng.integers(0, clusters, size=n)
    noise = rng.standard_normal((n, d), dtype=np.float32) * (spread / np.sqrt(d))
    return embshards.l2_normalise(centres[labels] + noise), labels


def corpus(videos: int, clips_per_video: int, d: int, actions: int, seed: int = 0, video_spread: float = 0.6,
           text_spread: float = 0.2) -> dict:
    rng = np.random.default_rng(seed)
    act_v = embshards.l2_normalise(rng.standard_normal((actions, d)))
    act_t = embshards.l2_normalise(rng.standard_normal((actions, d)))
    per_video = embshards.l2_normalise(rng.standard_normal((videos, d))) * 0.5
    n = videos * clips_per_video
    vid = np.repeat(np.arange(videos), clips_per_video)
    act = rng.integers(0, actions, size=n)
    noise = rng.standard_normal((n, d)) / np.sqrt(d)
    video = embshards.l2_normalise(act_v[act] + per_video[vid] + video_spread * noise)
    text = embshards.l2_normalise(act_t[act] + text_spread * rng.standard_normal((n, d)) / np.sqrt(d))
    seg = np.tile(np.arange(clips_per_video), videos)
    return {
        "keys": np.array([f"vid{v:05d}__s{s:04d}" for v, s in zip(vid, seg)]),
        "video_ids": np.array([f"vid{v:05d}" for v in vid]),
        "times": np.stack([seg * 8.0, seg * 8.0 + 8.0], axis=1).astype(np.float32),
        "video": video, "text": text, "action": act,
    }


def write_shards(emb_dir: str, data: dict, clips_per_shard: int, first_shard: int = 0,
                 stats: dict | None = None) -> list[str]:
    names = []
    n = len(data["keys"])
    for i, lo in enumerate(range(0, n, clips_per_shard)):
        sl = slice(lo, lo + clips_per_shard)
        name = f"emb-{first_shard + i:06d}"
        captions = np.array([f"caption of action {a}" for a in data["action"][sl]]) if "action" in data else None
        shard = embshards.EmbShard(name, data["keys"][sl], data["video_ids"][sl], data["times"][sl],
                                   data["video"][sl], data["text"][sl], captions)
        embshards.write_shard(emb_dir, shard, {"shard": f"shard-{first_shard + i:06d}.tar", **(stats or {})})
        names.append(name)
    return names
