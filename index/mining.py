"""Pseudo-positive mining (WSRA Sec. 3.3, Eq. 10): for every clip, its nearest clips from *other* videos whose
caption embeddings agree (cosine > tau) become its pseudo-positives.

Neighbours come from the index (video similarity by default); the caption gate uses the exact caption vectors,
read by id from the index's columns (index.columns), so no process holds them all. Per clip: at most k neighbours,
best first, as (neighbour key, index score, caption cosine, caption); clips without any pseudo-positive are left
out (their count is recorded). Each Ray task writes the table parts of its shards (common.pseudo_table).
"""
from __future__ import annotations

import collections
import time
from typing import Sequence

import numpy as np

from common import fsio, pseudo_table
from index import columns, embshards, store
from index.build import Mapper, _read, local_map
from index.errors import IndexInputError, UnknownKeys
from index.search import set_nprobe

BLOCK = 512  # queries per vectorised caption-gate step (bounds the (BLOCK, search_k, d) gather)
LEGACY_FORMATS = (1, 2)  # one JSON file; still read by read_table (finetune), refused by pretraining


class ArrayColumns:
    """In-memory arrays with the `take` of index.columns.Columns, for callers that hold a small set whole (the
    learning probe)."""

    def __init__(self, **arrays: np.ndarray):
        self.arrays = arrays

    def take(self, column: str, ids: np.ndarray) -> np.ndarray:
        return self.arrays[column][ids]


def mine_block(index, queries: np.ndarray, qtext: np.ndarray, qcodes: np.ndarray, cols, k: int,
               tau: float, search_k: int) -> tuple[list[list[tuple[int, float, float]]], collections.Counter]:
    """Pseudo-positives of one block of query clips (video vectors `queries`, caption vectors `qtext`, video codes
    `qcodes`); the candidates' caption vectors and video codes are read by id from `cols` (index.columns.Columns,
    or ArrayColumns)."""
    counts: collections.Counter = collections.Counter()
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), search_k)
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    codes = cols.take("video_codes", safe.ravel()).reshape(safe.shape)
    other_video = valid & (codes != qcodes[:, None])  # also drops the clip itself
    text = cols.take("text", safe.ravel()).reshape(safe.shape + (qtext.shape[1],))
    tcos = np.einsum("mkd,md->mk", text, qtext)
    gate = other_video & (tcos > tau)
    counts["rejected_same_video"] += int((valid & ~other_video).sum())
    counts["rejected_text_gate"] += int((other_video & ~gate).sum())
    out = []
    for row in range(len(queries)):
        cols_ = np.flatnonzero(gate[row])[:k]  # FAISS returns neighbours best first
        out.append([(int(ids[row, c]), float(scores[row, c]), float(tcos[row, c])) for c in cols_])
        counts["pairs"] += len(cols_)
        counts["with_positives"] += bool(len(cols_))
        counts["fewer_than_k"] += len(cols_) < k
    counts["clips"] += len(queries)
    return out, counts


def mine_task(index_url: str, out: str, group: Sequence[tuple[str, int, int]], k: int, tau: float, search_k: int,
              nprobe: int) -> tuple[list[dict], dict]:
    """Mine the clips of shards [(name, count, first_id)] and write one table part per shard: one Ray task. It
    holds the index (memory-mapped when on disk), one shard's queries and one block's candidates."""
    index, meta = store.load(index_url, verify=False)  # the driver verified this version's checksums
    cols = store.columns(index_url, meta)
    with_captions = cols.has("captions")
    set_nprobe(index, nprobe)
    parts, counts = [], collections.Counter()
    for name, count, first in group:
        shard = _read(meta.embeddings, name, count, meta.dim)
        q = embshards.l2_normalise(shard.vectors(meta.vectors))
        qtext = embshards.l2_normalise(shard.text)
        qcodes = columns.video_codes(shard.video_ids)
        keys, vids = shard.keys.tolist(), shard.video_ids.tolist()
        rows, videos = [], set()
        for lo in range(0, count, BLOCK):
            res, c = mine_block(index, q[lo:lo + BLOCK], qtext[lo:lo + BLOCK], qcodes[lo:lo + BLOCK], cols, k, tau,
                                search_k)
            counts.update(c)
            chosen = np.array([n for pos in res for n, _, _ in pos], dtype=np.int64)
            nkeys = cols.take_strings("keys", chosen)
            ncaps = cols.take_strings("captions", chosen) if with_captions else [""] * len(chosen)
            j = 0
            for r, pos in enumerate(res):
                if pos:
                    rows.append((keys[lo + r], [(nkeys[j + i], s, t, ncaps[j + i]) for i, (_, s, t) in enumerate(pos)]))
                    videos.add(vids[lo + r])
                    j += len(pos)
        parts.append({**pseudo_table.write_part(out, name, rows), "videos": sorted(videos)})
    return parts, dict(counts)


def mine(index_url: str, out: str, k: int, tau: float, search_k: int, clips_per_task: int, nprobe: int | None = None,
         mapper: Mapper = local_map, shards: str = "", max_clips: int = 0) -> dict:
    """Mine the pseudo-positive table of every clip in the index into the table folder `out` (common.pseudo_table):
    each task writes the parts of its shards; the driver keeps counts and part entries only, then commits the
    manifest. Returns the manifest without its part list. `shards` (the shard set the embeddings were made from)
    is recorded for the table's readers. `max_clips` > 0 mines only the first shards holding that many query clips
    (against the whole index): a fixed sample, for measuring memory at sizes where mining everything takes hours."""
    if not 0 < k <= search_k:
        raise IndexInputError(f"need 0 < k <= search_k, got k={k}, search_k={search_k}")
    if not -1.0 <= tau <= 1.0:
        raise IndexInputError(f"tau is a cosine threshold in [-1, 1], got {tau}")
    t0 = time.time()
    meta = store.read_meta(index_url)
    store.load(index_url, meta=meta)  # verify checksums once, before fanning out
    cols = store.columns(index_url, meta)
    groups, cur, size, total = [], [], 0, 0
    for s in meta.shards:
        if max_clips and total >= max_clips:
            break
        total += s["count"]
        cur.append((s["name"], s["count"], s["first_id"]))
        size += s["count"]
        if size >= clips_per_task:
            groups.append(cur)
            cur, size = [], 0
    if cur:
        groups.append(cur)
    fsio.makedirs(out)
    if fsio.exists(fsio.join(out, pseudo_table.MANIFEST)):  # the old table stops being committed before parts change
        fsio.remove(fsio.join(out, pseudo_table.MANIFEST))
    parts, videos, counts = [], [], collections.Counter()
    nprobe = nprobe or meta.nprobe
    for entries, c in mapper(mine_task, [(index_url, out, g, k, tau, search_k, nprobe) for g in groups]):
        counts.update(c)
        for e in entries:
            videos.append(e.pop("videos"))
            parts.append(e)
    manifest = {"index": index_url, "index_version": meta.version, "vectors": meta.vectors,
                "export": meta.extra.get("export", ""), "shards": shards, "k": k, "tau": tau, "search_k": search_k,
                "nprobe": nprobe, "captions": cols.has("captions"), "counts": dict(counts),
                "seconds": round(time.time() - t0, 3)}
    pseudo_table.write_manifest(out, manifest, parts, videos)
    pseudo_table.remove_parts_except(out, {p["name"] for p in parts})
    return {**manifest, "format": pseudo_table.FORMAT, "parts": len(parts),
            "clips_in_table": counts.get("with_positives", 0)}


def load_table(url: str) -> dict:
    """A legacy table file (format 1 or 2, one JSON), checked for shape; IndexInputError naming the file otherwise."""
    try:
        raw = fsio.read_json(url)
    except FileNotFoundError as e:
        raise IndexInputError(f"pseudo-positive table [{url}]: not found; run `cluster.index mine`") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexInputError(f"{url}: not a pseudo-positive table ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") not in LEGACY_FORMATS or not isinstance(raw.get("table"), dict):
        raise IndexInputError(f"{url}: not a pseudo-positive table (format 1 or 2 with a 'table' mapping)")
    if raw.get("captions") is not None and not isinstance(raw["captions"], dict):
        raise IndexInputError(f"pseudo-positive table [{url}]: 'captions' must map sample keys to captions")
    return raw


def read_table(url: str, known_keys: set[str] | None = None, strict: bool = True,
               raw: dict | None = None) -> tuple[dict, dict]:
    """(table, counts) of a table folder (format 3) or a legacy JSON table (format 1 or 2), whole: for small
    readers (finetune's weak samples). Keys (clips or neighbours) absent from `known_keys` raise UnknownKeys when
    strict; otherwise those entries are dropped and counted. `raw`: a legacy file as load_table read it."""
    if raw is None and fsio.exists(fsio.join(url, pseudo_table.MANIFEST)):
        try:
            items = [(k, [list(p[:3]) for p in pos]) for k, pos in pseudo_table.Table(url)]
        except pseudo_table.TableError as e:
            raise IndexInputError(str(e)) from e
    else:
        items = (load_table(url) if raw is None else raw)["table"].items()
    table: dict[str, list] = {}
    counts = collections.Counter()
    unknown: list[str] = []
    for key, pos in items:
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
