"""Pseudo-positive captions for the cross-video term (L_crov, pretrain/losses.py).

The table is the output of `cluster.index mine` (docs/contracts.md section 4, format 3, read by
common.pseudo_table): a folder with one part per embedding shard holding, per clip, its neighbours' keys and
captions (taken at mining time from the embedding shards, which store the captions they embedded). A training
process reads the manifest and a small video index at start, then the part of a clip's shard the first time one of
its clips is drawn, keeping at most `cache_parts` parts: it reads only the parts of the shards it trains on, and no
shard tar (at HowTo100M scale a caption pass over the tars would read the data set again per rank).

The table names the shard set it was mined from ("shards"); one from another shard set is refused (with
data.pseudo_positives_strict=false: warned about, counted and used). A table without captions (mined from
embeddings made before captions were stored) and a table of an older format (one JSON file) are refused with
what to re-run; so is a truncated or altered part, when it is first read.

Which neighbour a sample gets is a pure function of the sample's seed (pretrain.data: seed, epoch, rank, stream and
the sample's position in its stream), so every draw of a clip may pick another of its k neighbours while a resumed
run picks exactly what the uninterrupted one did.
"""
from __future__ import annotations

import logging
import os

from common.pseudo_table import Table, TableError, UnknownTableKeys

log = logging.getLogger(__name__)
CACHE_PARTS = 16  # parts kept per process (a part is one embedding shard's clips: a few MB at most)


def _same_place(a: str, b: str) -> bool:
    def place(u: str) -> str:
        return u.rstrip("/") if "://" in u else os.path.abspath(u)

    return place(a) == place(b)


def _video_of(key: str) -> str:
    return key.rsplit("__", 1)[0]  # a sample key is <video id>__s<segment> (contract 2)


class PseudoPositives:
    def __init__(self, table: Table, counts: dict):
        self.table = table
        self.counts = counts

    @classmethod
    def load(cls, url: str, shards_url: str, strict: bool = True, cache_parts: int = CACHE_PARTS) -> "PseudoPositives":
        table = Table(url, cache_parts)
        m = table.manifest
        if not m.get("captions"):
            raise TableError(
                f"pseudo-positive table [{url}]: holds no captions (mined from embeddings made before captions "
                f"were stored); re-run `cluster.index embed embed.overwrite=true`, then `cluster.index mine "
                f"mine.overwrite=true`")
        counts: dict = {"clips": int(m["counts"].get("with_positives", 0)), "pairs": int(m["counts"].get("pairs", 0)),
                        "parts": len(table.parts)}
        mined_from = str(m.get("shards") or "")
        if mined_from and not _same_place(mined_from, shards_url):
            msg = f"pseudo-positive table [{url}]: mined from shard set {mined_from}, data.shards is {shards_url}"
            if strict:
                raise UnknownTableKeys(msg + " (set data.pseudo_positives_strict=false to use it anyway)")
            log.warning("%s; using it (data.pseudo_positives_strict=false)", msg)
            counts["other_shard_set"] = 1
        return cls(table, counts)

    def neighbours(self, key: str) -> list[str]:
        return [p[0] for p in self.table.entries(key, _video_of(key))]

    def choose(self, key: str, seed: int) -> str | None:
        """The caption of one pseudo-positive of `key` (None if it has none), picked by `seed`."""
        pos = self.table.entries(key, _video_of(key))
        if not pos:
            return None
        return pos[seed % len(pos)][3]

    def attach(self, batch: dict) -> list[str | None]:
        """One pseudo-positive caption (or None) per sample of a loader batch (pretrain.data)."""
        return [self.choose(k, s) for k, s in zip(batch["keys"], batch["sample_seeds"])]


_cache: dict[tuple, PseudoPositives] = {}


def cached(url: str, shards_url: str, strict: bool) -> PseudoPositives:
    """Opened once per process (a training rank keeps it, and its part cache, for the whole run)."""
    key = (url, shards_url, strict)
    if key not in _cache:
        pp = PseudoPositives.load(url, shards_url, strict)
        log.info("pseudo-positives %s: %s", url, pp.counts)
        _cache[key] = pp
    return _cache[key]
