"""Pseudo-positive mining (WSRA Sec. 3.3, Eq. 10): for every clip, its nearest clips from *other* videos whose
caption embeddings agree (cosine > tau) become its pseudo-positives.

Neighbours come from the index (video similarity by default); the caption gate uses the exact stored text
embeddings. The table is keyed by sample key: {key: [[neighbour key, index score, caption cosine], ...]}, best
first, at most k each; clips without any pseudo-positive are left out (their count is recorded). Its reader, shared
with pretraining, is pretrain/pseudo_positive_table.py.
"""
from __future__ import annotations

import collections
import time
from typing import Sequence

import numpy as np

from common import fsio
from index import embshards, store
from index.build import Mapper, _read, local_map
from index.errors import IndexInputError
from index.search import set_nprobe
from pretrain.pseudo_positive_table import TABLE_FORMAT

BLOCK = 512  # queries per vectorised caption-gate step (bounds the (BLOCK, search_k, d) gather)


def shard_vectors(emb_dir: str, name: str, count: int, dim: int, which: str) -> np.ndarray:
    return embshards.l2_normalise(_read(emb_dir, name, count, dim).vectors(which))


def shard_text(emb_dir: str, name: str, count: int, dim: int) -> tuple[np.ndarray, list[str] | None]:
    """Caption vectors and caption texts (None for a shard embedded before texts were stored) of one shard."""
    shard = _read(emb_dir, name, count, dim)
    return embshards.l2_normalise(shard.text), None if shard.captions is None else shard.captions.tolist()


def mine_block(index, queries: np.ndarray, qids: np.ndarray, text: np.ndarray, video_codes: np.ndarray, k: int,
               tau: float, search_k: int) -> tuple[list[list[tuple[int, float, float]]], collections.Counter]:
    """Pseudo-positives of the clips `qids` (ids into text/video_codes) with index queries `queries`."""
    counts: collections.Counter = collections.Counter()
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), search_k)
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    other_video = valid & (video_codes[safe] != video_codes[qids][:, None])  # also drops the clip itself
    tcos = np.einsum("mkd,md->mk", text[safe], text[qids])
    gate = other_video & (tcos > tau)
    counts["rejected_same_video"] += int((valid & ~other_video).sum())
    counts["rejected_text_gate"] += int((other_video & ~gate).sum())
    out = []
    for row in range(len(qids)):
        cols = np.flatnonzero(gate[row])[:k]  # FAISS returns neighbours best first
        out.append([(int(ids[row, c]), float(scores[row, c]), float(tcos[row, c])) for c in cols])
        counts["pairs"] += len(cols)
        counts["with_positives"] += bool(len(cols))
        counts["fewer_than_k"] += len(cols) < k
    counts["clips"] += len(qids)
    return out, counts


def mine_task(index_url: str, group: Sequence[tuple[str, int, int]], text: np.ndarray, video_codes: np.ndarray,
              k: int, tau: float, search_k: int, nprobe: int) -> tuple[list[tuple[int, list]], dict]:
    """Mine the clips of shards [(name, count, first_id)]: one Ray task."""
    index, meta = store.load(index_url, verify=False)  # the driver verified this version's checksums
    set_nprobe(index, nprobe)
    rows, counts = [], collections.Counter()
    for name, count, first in group:
        q = shard_vectors(meta.embeddings, name, count, meta.dim, meta.vectors)
        for lo in range(0, count, BLOCK):
            qids = np.arange(first + lo, first + min(count, lo + BLOCK))
            res, c = mine_block(index, q[lo:lo + BLOCK], qids, text, video_codes, k, tau, search_k)
            rows.extend(zip(qids.tolist(), res))
            counts.update(c)
    return rows, dict(counts)


def mine(index_url: str, k: int, tau: float, search_k: int, clips_per_task: int, nprobe: int | None = None,
         mapper: Mapper = local_map, put=lambda x: x, shards: str = "") -> dict:
    """The pseudo-positive table of every clip in the index (not written; see write_table).

    `put` lets a Ray caller place the shared arrays in the object store once; `shards` (the shard set the
    embeddings were made from) is recorded for the table's readers."""
    if not 0 < k <= search_k:
        raise IndexInputError(f"need 0 < k <= search_k, got k={k}, search_k={search_k}")
    if not -1.0 <= tau <= 1.0:
        raise IndexInputError(f"tau is a cosine threshold in [-1, 1], got {tau}")
    t0 = time.time()
    meta = store.read_meta(index_url)
    store.load(index_url, meta=meta)  # verify checksums once, before fanning out
    texts = mapper(shard_text, [(meta.embeddings, s["name"], s["count"], meta.dim) for s in meta.shards])
    text = np.concatenate([t for t, _ in texts])
    # the neighbours' captions go into the table, so pretraining reads them from there, not from the shard tars
    captions = None if any(c is None for _, c in texts) else [c for _, cs in texts for c in cs]
    _, video_codes = np.unique(np.asarray(meta.video_ids), return_inverse=True)
    groups, cur, size = [], [], 0
    for s in meta.shards:
        cur.append((s["name"], s["count"], s["first_id"]))
        size += s["count"]
        if size >= clips_per_task:
            groups.append(cur)
            cur, size = [], 0
    if cur:
        groups.append(cur)
    text_ref, codes_ref = put(text), put(video_codes.astype(np.int64))
    results = mapper(mine_task, [(index_url, g, text_ref, codes_ref, k, tau, search_k, nprobe or meta.nprobe)
                                 for g in groups])
    table, counts, used = {}, collections.Counter(), set()
    for rows, c in results:
        counts.update(c)
        for qid, pos in rows:
            if pos:
                table[meta.keys[qid]] = [[meta.keys[n], round(s, 6), round(t, 6)] for n, s, t in pos]
                used.update(n for n, _, _ in pos)
    return {"format": TABLE_FORMAT, "index": index_url, "index_version": meta.version, "vectors": meta.vectors,
            "export": meta.extra.get("export", ""), "shards": shards,
            "k": k, "tau": tau, "search_k": search_k, "nprobe": nprobe or meta.nprobe,
            "counts": dict(counts), "seconds": round(time.time() - t0, 3), "table": table,
            "captions": None if captions is None else {meta.keys[i]: captions[i] for i in sorted(used)}}


def write_table(url: str, result: dict) -> None:
    fsio.write_json_atomic(url, result)
