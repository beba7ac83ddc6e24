"""Pseudo-positive captions for the cross-video term (L_crov, pretrain/losses.py).

The table is the output of `cluster.index mine` (docs/contracts.md section 4): {sample key: [[neighbour key, index
score, caption cosine], ...]} plus, since format 2, the caption of every neighbour ("captions", taken at mining time
from the embedding shards, which store the captions they embedded). A training process reads that one file and no
shard tar: at HowTo100M scale on s3 a caption pass over the tars would read the data set again per rank.

The table names the shard set it was mined from ("shards"); one from another shard set is refused (with
data.pseudo_positives_strict=false: warned about, counted and used), and so is a neighbour without a caption
(dropped and counted when not strict). A format-1 table (keys only) is refused with what to re-run.

Which neighbour a sample gets is a pure function of the sample's seed (pretrain.data: seed, epoch, rank, stream and
the sample's position in its stream), so every draw of a clip may pick another of its k neighbours while a resumed
run picks exactly what the uninterrupted one did.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from pretrain.pseudo_positive_table import TableError, UnknownTableKeys, load_table, read_table

log = logging.getLogger(__name__)


def _same_place(a: str, b: str) -> bool:
    def place(u: str) -> str:
        return u.rstrip("/") if "://" in u else os.path.abspath(u)

    return place(a) == place(b)


@dataclass
class PseudoPositives:
    neighbours: dict[str, list[str]]        # sample key -> its pseudo-positive keys, best first
    captions: dict[str, str]                # caption of every neighbour key
    counts: dict = field(default_factory=dict)

    @classmethod
    def load(cls, url: str, shards_url: str, strict: bool = True) -> "PseudoPositives":
        raw = load_table(url)
        captions = raw.get("captions")
        if raw["format"] < 2 or captions is None:
            raise TableError(
                f"pseudo-positive table [{url}]: holds no captions (format {raw['format']}, or mined from embeddings "
                f"made before captions were stored); re-run `cluster.index mine mine.overwrite=true` (after "
                f"`cluster.index embed embed.overwrite=true` for such embeddings)")
        counts: dict = {}
        mined_from = str(raw.get("shards") or "")
        if mined_from and not _same_place(mined_from, shards_url):
            msg = f"pseudo-positive table [{url}]: mined from shard set {mined_from}, data.shards is {shards_url}"
            if strict:
                raise UnknownTableKeys(msg + " (set data.pseudo_positives_strict=false to use it anyway)")
            log.warning("%s; using it (data.pseudo_positives_strict=false)", msg)
            counts["other_shard_set"] = 1
        known = set(captions) | set(raw["table"])  # a neighbour is usable only with its caption
        table, dropped = read_table(url, known, strict=strict, raw=raw)
        neighbours = {k: [p[0] for p in pos] for k, pos in table.items()}
        needed = {n for pos in neighbours.values() for n in pos}
        counts.update({"clips": len(neighbours), "pairs": sum(map(len, neighbours.values())),
                       "captions": len(needed), **dropped})
        if dropped:
            log.warning("pseudo-positives %s: dropped neighbours without a caption in the table %s", url, dropped)
        return cls(neighbours, {k: str(captions[k]) for k in needed}, counts)

    def choose(self, key: str, seed: int) -> str | None:
        """The caption of one pseudo-positive of `key` (None if it has none), picked by `seed`."""
        pos = self.neighbours.get(key)
        if not pos:
            return None
        return self.captions[pos[seed % len(pos)]]

    def attach(self, batch: dict) -> list[str | None]:
        """One pseudo-positive caption (or None) per sample of a loader batch (pretrain.data)."""
        return [self.choose(k, s) for k, s in zip(batch["keys"], batch["sample_seeds"])]


_cache: dict[tuple, PseudoPositives] = {}


def cached(url: str, shards_url: str, strict: bool) -> PseudoPositives:
    """Loaded once per process (a training rank keeps it for the whole run)."""
    key = (url, shards_url, strict)
    if key not in _cache:
        pp = PseudoPositives.load(url, shards_url, strict)
        log.info("pseudo-positives %s: %s", url, pp.counts)
        _cache[key] = pp
    return _cache[key]
