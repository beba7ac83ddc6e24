"""Embedding a data shard (contract 2) with a pretrain export (contract 3) into an embedding shard (contract 4).

Per clip: the video vector is the mean of the frame-level global embeddings over its valid frames, L2-normalised;
the text vector is the caption's global embedding, L2-normalised. This module knows the model only through
`pretrain.export_ref.Export` (the export's model) and its encoder API; cluster/index.py runs it inside Ray actors.
"""
from __future__ import annotations

import collections
import time

import numpy as np

from common import fsio
from index import embshards
from index.errors import IndexInputError
from shards import reader


def _to(x, device):
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


class ShardEmbedder:
    def __init__(self, checkpoint: str, batch_size: int = 32, device: str = "cpu"):
        from pretrain.export_ref import Export

        self.checkpoint, self.batch_size, self.device = checkpoint, batch_size, device
        self.model = Export.of(checkpoint).load_model().to(device).eval()

    def encode_clips(self, frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(B, U, H, W, 3) uint8 frames -> (B, d) normalised mean over each clip's valid frames."""
        import torch

        with torch.no_grad():
            x = self.model.preprocess_frames(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))
            g = self.model.encode_frames(x)[0].float().cpu().numpy()  # (B, U, d)
        mask = (np.arange(g.shape[1])[None, :] < valid[:, None]).astype(np.float32)
        mean = (g * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        return embshards.l2_normalise(mean)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            tokens = _to(self.model.tokenize(texts), self.device)
            return embshards.l2_normalise(self.model.encode_text(tokens)[0].float().cpu().numpy())

    def embed_shard(self, shards_url: str, shard: str, emb_dir: str, model_tag: str, export: str = "") -> dict:
        """Embed one data shard into its embedding shard; `export` is the export's key (pretrain.export_key)."""
        t0 = time.time()
        name = embshards.name_for(shard)
        keys, vids, times, captions, video, text = [], [], [], [], [], []
        failures: collections.Counter = collections.Counter()
        failed: list[dict] = []
        batch: list[dict] = []

        def flush():
            if not batch:
                return
            frames = np.stack([b["frames"] for b in batch])
            valid = np.array([int(b["json"].get("valid_frames", frames.shape[1])) for b in batch])
            video.append(self.encode_clips(frames, valid))
            text.append(self.encode_texts([b["json"]["caption"] for b in batch]))
            for b in batch:
                keys.append(b["key"])
                vids.append(b["json"]["video_id"])
                times.append([b["json"]["window_start"], b["json"]["window_end"]])
                captions.append(b["json"]["caption"])
            batch.clear()

        for sample in reader.read_samples([fsio.join(shards_url, shard)], failures, failed):
            if batch and sample["frames"].shape != batch[0]["frames"].shape:
                flush()  # frames of another size cannot share a batch
            batch.append(sample)
            if len(batch) >= self.batch_size:
                flush()
        flush()
        d = video[0].shape[1] if video else 0
        out = embshards.EmbShard(
            name, np.array(keys, dtype=str), np.array(vids, dtype=str), np.array(times, np.float32).reshape(-1, 2),
            np.concatenate(video) if video else np.zeros((0, d), np.float32),
            np.concatenate(text) if text else np.zeros((0, d), np.float32), np.array(captions, dtype=str))
        stats = {"shard": shard, "model_tag": model_tag, "checkpoint": self.checkpoint, "export": export,
                 "device": self.device, "failures": dict(failures), "failed": failed[:100],
                 "wall_seconds": round(time.time() - t0, 3)}
        embshards.write_shard(emb_dir, out, stats)
        return {**stats, "samples": len(out), "dim": d}


def encode_texts(checkpoint: str, texts: list[str]) -> np.ndarray:
    return ShardEmbedder(checkpoint).encode_texts(texts)


def recorded_checkpoint(emb_dir: str) -> str:
    """The checkpoint an embedding dir was made with (from its first stats marker)."""
    complete, _ = embshards.list_shards(emb_dir)
    for _, stats in complete:
        if stats.get("checkpoint"):
            return stats["checkpoint"]
    raise IndexInputError(f"embeddings [{emb_dir}]: no stats marker records a checkpoint; give "
                          f"embed.checkpoint=<export dir>")
