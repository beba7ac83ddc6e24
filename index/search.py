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
        self.keys, self.video_ids, self.times = store.id_arrays(self.meta)
        self._id_of: dict[str, int] | None = None

    @property
    def dim(self) -> int:
        return self.meta.dim

    def search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(as_queries(queries, self.dim), k)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        scores, ids = self.search_raw(queries, k)
        out = []
        for srow, irow in zip(scores, ids):
            out.append([Hit(str(self.keys[i]), str(self.video_ids[i]), float(self.times[i, 0]),
                            float(self.times[i, 1]), float(s)) for s, i in zip(srow, irow) if i >= 0])
        return out

    def id_of(self, key: str) -> int:
        if self._id_of is None:
            self._id_of = {k: i for i, k in enumerate(self.meta.keys)}
        if key not in self._id_of:
            raise UnknownKeys(f"sample key {key!r} is not in the index at {self.url}")
        return self._id_of[key]

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
