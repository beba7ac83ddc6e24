"""Embedding shards (contract 4): one `emb-NNNNNN.npz` per data shard under `<shards>/embeddings/<model tag>/`.

The `.stats.json` marker is written after the npz, so a shard counts as embedded only once its marker exists;
a crashed run leaves at most an unmarked npz that the next run rewrites.
"""
from __future__ import annotations

import dataclasses
import io
import re
import zipfile

import numpy as np

from common import fsio
from index.errors import EmbeddingShardError, StaleEmbeddings

ARRAYS = ("keys", "video_ids", "times", "video", "text")
OPTIONAL = ("captions",)  # embedding shards written before captions were stored lack it
_NAME = re.compile(r"^emb-(\d{6})\.npz$")


@dataclasses.dataclass
class EmbShard:
    name: str                 # emb-NNNNNN
    keys: np.ndarray          # (n,) str, sample keys <vid>__sNNNN
    video_ids: np.ndarray     # (n,) str
    times: np.ndarray         # (n, 2) float32, window start/end in seconds
    video: np.ndarray         # (n, d) float32, L2-normalised mean of the frame embeddings
    text: np.ndarray          # (n, d) float32, L2-normalised caption embedding
    captions: np.ndarray | None = None  # (n,) str caption text (read by mining for the pseudo-positive table)

    def __len__(self) -> int:
        return len(self.keys)

    def vectors(self, which: str) -> np.ndarray:
        if which not in ("video", "text"):
            raise ValueError(f"vectors must be video or text, got {which!r}")
        return self.video if which == "video" else self.text


def name_for(data_shard: str) -> str:
    """`shard-000003.tar` -> `emb-000003`."""
    m = re.search(r"shard-(\d{6})\.tar$", data_shard)
    if not m:
        raise ValueError(f"not a data shard name: {data_shard!r}")
    return f"emb-{m.group(1)}"


def npz_url(emb_dir: str, name: str) -> str:
    return fsio.join(emb_dir, f"{name}.npz")


def stats_url(emb_dir: str, name: str) -> str:
    return fsio.join(emb_dir, f"{name}.stats.json")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def write_shard(emb_dir: str, shard: EmbShard, stats: dict) -> None:
    """Commit the arrays, then the stats marker (the marker is what makes the shard count)."""
    _check(shard, emb_dir)
    buf = io.BytesIO()
    np.savez(buf, keys=shard.keys.astype(str), video_ids=shard.video_ids.astype(str),
             times=shard.times.astype(np.float32), video=shard.video.astype(np.float32),
             text=shard.text.astype(np.float32),
             **({} if shard.captions is None else {"captions": shard.captions.astype(str)}))
    fsio.write_bytes_atomic(npz_url(emb_dir, shard.name), buf.getvalue())
    stats = dict(stats, embedding=f"{shard.name}.npz", samples=len(shard),
                 dim=int(shard.video.shape[1]) if shard.video.ndim == 2 else 0)
    fsio.write_json_atomic(stats_url(emb_dir, shard.name), stats)


def read_shard(emb_dir: str, name: str) -> EmbShard:
    url = npz_url(emb_dir, name)
    try:
        data = np.load(io.BytesIO(fsio.read_bytes(url)), allow_pickle=False)
        arrays = {k: data[k] for k in ARRAYS}
        arrays.update({k: data[k] for k in OPTIONAL if k in data.files})
    except FileNotFoundError as e:
        raise EmbeddingShardError(f"{url}: missing (its stats marker exists)") from e
    except KeyError as e:
        raise EmbeddingShardError(f"{url}: lacks array {e}; an embedding shard holds {list(ARRAYS)}") from e
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise EmbeddingShardError(f"{url}: unreadable npz ({e})") from e
    shard = EmbShard(name=name, **arrays)
    _check(shard, url)
    return shard


def _check(s: EmbShard, where: str) -> None:
    n = len(s.keys)
    if s.video.ndim != 2 or s.text.ndim != 2:
        raise EmbeddingShardError(f"{where}: video/text must be 2-D, got {s.video.shape} and {s.text.shape}")
    if s.video.shape[1] != s.text.shape[1] and n:
        raise EmbeddingShardError(f"{where}: video dim {s.video.shape[1]} != text dim {s.text.shape[1]}")
    lengths = {"keys": n, "video_ids": len(s.video_ids), "times": len(s.times), "video": len(s.video),
               "text": len(s.text), **({} if s.captions is None else {"captions": len(s.captions)})}
    if len(set(lengths.values())) != 1:
        raise EmbeddingShardError(f"{where}: arrays disagree in length {lengths}")
    if n and not (np.isfinite(s.video).all() and np.isfinite(s.text).all()):
        raise EmbeddingShardError(f"{where}: non-finite values in the embeddings")
    if len(set(s.keys.tolist())) != n:
        raise EmbeddingShardError(f"{where}: duplicate sample keys")


def list_shards(emb_dir: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """(complete shards as (name, stats) in name order, names of npz files without a stats marker)."""
    names = fsio.listdir(emb_dir)
    marked = {n[: -len(".stats.json")] for n in names if n.endswith(".stats.json") and n.startswith("emb-")}
    complete, unmarked = [], []
    for n in names:
        m = _NAME.match(n)
        if not m:
            continue
        name = n[: -len(".npz")]
        if name in marked:
            complete.append((name, fsio.read_json(stats_url(emb_dir, name))))
        else:
            unmarked.append(name)
    return complete, unmarked


def export_of(complete: list[tuple[str, dict]], where: str) -> str:
    """The export key (pretrain.export_key) that made the complete shards of one embedding dir; "" for none or
    for shards written before the key was recorded. Shards of two exports in one dir are refused."""
    keys = {str(stats.get("export") or "") for _, stats in complete}
    if len(keys) > 1:
        raise StaleEmbeddings(f"embeddings [{where}]: shards of different exports {sorted(keys)} under one tag; "
                              f"re-embed with embed.overwrite=true")
    return keys.pop() if keys else ""
