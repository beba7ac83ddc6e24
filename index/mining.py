"""Pseudo-positive mining (WSRA Sec. 3.3, Eq. 10): for every clip, its nearest clips from *other* videos whose
caption embeddings agree (cosine > tau) become its pseudo-positives.

Neighbours come from the index (video similarity by default); the caption gate uses the exact stored text
embeddings. The table is keyed by sample key: {key: [[neighbour key, index score, caption cosine], ...]}, best
first, at most k each; clips without any pseudo-positive are left out (their count is recorded).
"""
from __future__ import annotations

import collections
import time
from typing import Sequence

import numpy as np

from common import fsio
from index import embshards, store
from index.build import Mapper, _read, local_map
from index.errors import IndexInputError, UnknownKeys
from index.search import set_nprobe

TABLE_FORMAT = 2  # 2: the table carries the neighbours' captions ("captions"); 1 held keys only
READABLE_FORMATS = (1, 2)
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


def load_table(url: str) -> dict:
    """The whole table file (format 1 or 2), checked for shape; IndexInputError naming the file otherwise."""
    try:
        raw = fsio.read_json(url)
    except FileNotFoundError as e:
        raise IndexInputError(f"pseudo-positive table [{url}]: not found; run `cluster.index mine`") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexInputError(f"{url}: not a pseudo-positive table ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") not in READABLE_FORMATS or not isinstance(raw.get("table"), dict):
        raise IndexInputError(f"{url}: not a pseudo-positive table (format {TABLE_FORMAT} with a 'table' mapping)")
    if raw.get("captions") is not None and not isinstance(raw["captions"], dict):
        raise IndexInputError(f"pseudo-positive table [{url}]: 'captions' must map sample keys to captions")
    return raw


def read_table(url: str, known_keys: set[str] | None = None, strict: bool = True,
               raw: dict | None = None) -> tuple[dict, dict]:
    """(table, counts). Keys (clips or neighbours) absent from `known_keys` raise UnknownKeys when strict;
    otherwise those entries are dropped and counted. `raw`: the file as load_table read it (not read again)."""
    raw = load_table(url) if raw is None else raw
    table: dict[str, list] = {}
    counts = collections.Counter()
    unknown: list[str] = []
    for key, pos in raw["table"].items():
        if not isinstance(pos, list) or not all(isinstance(p, list) and len(p) == 3 for p in pos):
            raise IndexInputError(f"{url}: entry {key!r} is not a list of [key, score, caption cosine]")
        if known_keys is not None and key not in known_keys:
            unknown.append(key)
            counts["unknown_clip"] += 1
            continue
        kept = []
        for p in pos:
            if known_keys is not None and p[0] not in known_keys:
                unknown.append(p[0])
                counts["unknown_neighbour"] += 1
            else:
                kept.append((str(p[0]), float(p[1]), float(p[2])))
        if kept:
            table[key] = kept
    if unknown and strict:
        raise UnknownKeys(f"{url}: {len(unknown)} key(s) not in the shard set, e.g. {unknown[:3]} "
                          f"(table from another corpus or model tag?)")
    return table, dict(counts)
