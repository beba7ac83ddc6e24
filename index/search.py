"""Searching a built index: vectors in, (sample key, video, window, score) out."""
from __future__ import annotations

import dataclasses

import faiss
import numpy as np

from index import embshards, store
from index.errors import DimensionMismatch, UnknownKeys
from index.factory import is_ivf


@dataclasses.dataclass
class Hit:
    key: str
    video_id: str
    start: float
    end: float
    score: float   # inner product of L2-normalised vectors = cosine similarity


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    if is_ivf(index):
        faiss.extract_index_ivf(index).nprobe = int(nprobe)


def as_queries(x: np.ndarray, dim: int, where: str = "queries") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise DimensionMismatch(f"{where} have shape {tuple(x.shape)}; the index holds {dim}-d vectors")
    if not np.isfinite(x).all():
        raise ValueError(f"{where} contain non-finite values")
    return embshards.l2_normalise(np.ascontiguousarray(x))


class Searcher:
    def __init__(self, url: str, nprobe: int | None = None, verify: bool = True):
        self.url = url
        self.index, self.meta = store.load(url, verify=verify)
        set_nprobe(self.index, nprobe or self.meta.nprobe)
        self.columns = store.columns(url, self.meta)  # per-vector data, read by id (index.columns)

    @property
    def dim(self) -> int:
        return self.meta.dim

    def search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(as_queries(queries, self.dim), k)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        scores, ids = self.search_raw(queries, k)
        found = ids[ids >= 0]
        keys = dict(zip(found.tolist(), self.columns.take_strings("keys", found)))
        vids = dict(zip(found.tolist(), self.columns.take_strings("video_ids", found)))
        times = dict(zip(found.tolist(), self.columns.take("times", found).tolist())) if len(found) else {}
        out = []
        for srow, irow in zip(scores, ids):
            out.append([Hit(keys[i], vids[i], float(times[i][0]), float(times[i][1]), float(s))
                        for s, i in zip(srow.tolist(), irow.tolist()) if i >= 0])
        return out

    def id_of(self, key: str) -> int:
        """The id of a sample key: a scan of the key column, a chunk at a time (one lookup per search command)."""
        for first, keys in self.columns.chunks("keys"):
            if key in keys:
                return first + keys.index(key)
        raise UnknownKeys(f"sample key {key!r} is not in the index at {self.url}")

    def clip_vector(self, key: str, which: str | None = None) -> np.ndarray:
        """The stored embedding of an indexed clip (exact, read from its embedding shard)."""
        i = self.id_of(key)
        for s in self.meta.shards:
            if s["first_id"] <= i < s["first_id"] + s["count"]:
                shard = embshards.read_shard(self.meta.embeddings, s["name"])
                return shard.vectors(which or self.meta.vectors)[i - s["first_id"]]
        raise RuntimeError(f"id {i} is in no shard of {self.url}")


def format_hits(hits: list[Hit]) -> str:
    lines = [f"{'rank':>4}  {'score':>6}  {'video':<24} {'time (s)':<15} key"]
    for r, h in enumerate(hits, 1):
        lines.append(f"{r:>4}  {h.score:6.3f}  {h.video_id:<24} {h.start:6.1f}-{h.end:<8.1f} {h.key}")
    return "\n".join(lines)
