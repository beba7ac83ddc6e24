"""Small shard sets in the docs/contracts.md section 2 format (format 2), written directly (no video decoding), for the
pretraining tests. Frames are patterned so that captions are learnable: each action has its own colour and a
square that moves in its own direction."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

ACTIONS = [("cut", "red", (220, 40, 40), (1, 0)), ("pour", "green", (40, 200, 60), (0, 1)),
           ("stir", "blue", (40, 60, 220), (-1, 0)), ("crack", "yellow", (230, 220, 40), (0, -1)),
           ("peel", "purple", (150, 40, 180), (1, 1)), ("wash", "cyan", (40, 210, 210), (-1, 1))]


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def clip(rng: np.random.Generator, action: int, frames: int, size: int) -> np.ndarray:
    _, _, colour, (dx, dy) = ACTIONS[action]
    out = np.empty((frames, size, size, 3), np.uint8)
    x, y = rng.integers(size // 4, 3 * size // 4, 2)
    s = max(4, size // 4)
    for i in range(frames):
        img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        cx, cy = (x + dx * i * 2) % (size - s), (y + dy * i * 2) % (size - s)
        img[cy:cy + s, cx:cx + s] = colour
        out[i] = img
    return out


def write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))


def video_members(rng, vid: str, segments: list[int], frames: int, size: int, corrupt: tuple[int, ...] = ()
                  ) -> list[tuple[str, bytes]]:
    """One video sample of contract 2 (format 2): its segments one after the other, each an action of its own on
    `frames` frames at 1 fps, so each segment's window is exactly its own frames. Frames listed in `corrupt` are
    not JPEG."""
    arrs, segs = [], []
    for j, seg in enumerate(segments):
        action = int(rng.integers(len(ACTIONS)))
        verb, colour, _, _ = ACTIONS[action]
        arrs.append(clip(rng, action, frames, size))
        segs.append({"segment": seg, "start": float(j * frames), "end": float(j * frames + frames),
                     "caption": f"{verb} the {colour} cube"})
    video = np.concatenate(arrs)
    meta = {"format": 2, "video_id": vid, "fps": 1.0, "size": size, "window_frames": frames,
            "frame_times": [float(i) for i in range(len(video))], "video_duration": float(len(video)),
            "video_width": size, "video_height": size, "segments": segs}
    members = [(f"{vid}.f{i:05d}.jpg", b"not a jpeg" if i in corrupt else _jpeg(video[i]))
               for i in range(len(video))]
    members.append((f"{vid}.json", json.dumps(meta).encode()))
    return members


def write_manifest(out: str, entries: list[dict], frames: int, size: int) -> None:
    manifest = {"format": 2, "shards": entries, "total_samples": sum(e["samples"] for e in entries),
                "total_videos": sum(e["videos"] for e in entries), "window_frames": frames,
                "config": {"window_frames": frames, "size": size}}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def make_shards(out: str, *, shards: int = 4, per_shard: int = 16, frames: int = 4, size: int = 32,
                seed: int = 0, bad_samples: int = 0, truncated_shards: int = 0, missing_shards: int = 0) -> str:
    """Write a shard set of `per_shard` windows per shard, 4 per video; optionally with windows whose second frame
    is garbage (the first `bad_samples` of each shard), shards cut in the middle (the last `truncated_shards`),
    and manifest entries whose tar is absent."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for s in range(shards):
        members: list = []
        for v in range(0, per_shard, 4):
            segs = list(range(v, min(v + 4, per_shard)))
            corrupt = tuple(j * frames + 1 for j, seg in enumerate(segs) if seg < bad_samples)
            members += video_members(rng, f"v{s:03d}{v // 4:02d}", segs, frames, size, corrupt)
        name = f"shard-{s:06d}.tar"
        path = os.path.join(out, name)
        write_tar(path, members)
        if s >= shards - truncated_shards:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2 + 100)
        videos = -(-per_shard // 4)
        stats = {"shard": name, "format": 2, "videos": videos, "video_samples": videos, "samples": per_shard,
                 "bytes": os.path.getsize(path), "seconds_decoded": 0.0, "wall_seconds": 0.0, "failures": {},
                 "failed": [], "config_hash": "test"}
        with open(os.path.join(out, f"shard-{s:06d}.stats.json"), "w") as f:
            json.dump(stats, f)
        entries.append({"url": name, "videos": videos, "samples": per_shard})
    for m in range(missing_shards):
        entries.append({"url": f"shard-{shards + m:06d}.tar", "videos": -(-per_shard // 4), "samples": per_shard})
    write_manifest(out, entries, frames, size)
    return out


def tiny_export(out: str, seed: int = 0) -> str:
    """A randomly initialised stg-micro export (model.pt + model_config.json) written by the project's own
    save_export: the model the grounding tests load."""
    import torch

    from pretrain.model import ModelConfig, build_model, save_export

    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone="stg-micro", embed_dim=32, local_heads=2, frames_in=4,
                                    frames_selected=2, max_words=8))
    save_export(model, out)
    return out
