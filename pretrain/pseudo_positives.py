"""Pseudo-positive captions for the cross-video term (L_crov, pretrain/losses.py).

The table is the output of `cluster.index mine` (docs/contracts.md section 4): {sample key: [[neighbour key, index
score, caption cosine], ...]}. Pretraining needs the caption *text* of the neighbours, which neither the table nor
the index holds; it comes from the shard set itself: one pass over the tars' headers and JSON members (no JPEG is
read or decoded), which also gives the set of keys the table is checked against (`index.mining.read_table`: keys
of another corpus are an error, or with data.pseudo_positives_strict=false counted and dropped).

Which neighbour a sample gets is a pure function of the sample's seed (pretrain.data: seed, epoch, rank, stream and
the sample's position in its stream), so every draw of a clip may pick another of its k neighbours while a resumed
run picks exactly what the uninterrupted one did.
"""
from __future__ import annotations

import json
import logging
import posixpath
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field

from common import fsio

log = logging.getLogger(__name__)
_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key.extension split


def scan_captions(urls: tuple[str, ...] | list[str]) -> tuple[dict[str, str], Counter]:
    """{sample key: caption} of every sample of the shard tars at `urls`, and counts of what could not be read.

    The tar is opened seekable, so member data other than the JSON is skipped, not read."""
    captions: dict[str, str] = {}
    counts: Counter = Counter()
    for url in urls:
        try:
            fs, path = fsio.filesystem(url)
            with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for m in tar:
                    parsed = _MEMBER.match(m.name)
                    if not m.isfile() or not parsed or parsed.group(2) != "json":
                        continue
                    try:
                        meta = json.loads(tar.extractfile(m).read())
                        caption = meta["caption"]
                        if not isinstance(caption, str) or not caption.strip():
                            raise ValueError("empty caption")
                    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                        counts["bad_json"] += 1
                        continue
                    captions[parsed.group(1)] = caption
        except (OSError, EOFError, tarfile.TarError) as exc:  # the training loader counts these shards too
            counts["unreadable_shard"] += 1
            log.warning("pseudo-positives: cannot scan %s for captions (%s); its keys count as unknown",
                        posixpath.basename(url), exc)
    return captions, counts


@dataclass
class PseudoPositives:
    neighbours: dict[str, list[str]]        # sample key -> its pseudo-positive keys, best first
    captions: dict[str, str]                # caption of every neighbour key
    counts: dict = field(default_factory=dict)

    @classmethod
    def load(cls, url: str, shard_urls, strict: bool = True) -> "PseudoPositives":
        from index.mining import read_table  # the contract's reader (docs/contracts.md section 4)

        captions, scan_counts = scan_captions(shard_urls)
        table, dropped = read_table(url, set(captions), strict=strict)
        neighbours = {k: [p[0] for p in pos] for k, pos in table.items()}
        needed = {n for pos in neighbours.values() for n in pos}
        counts = {"clips": len(neighbours), "pairs": sum(map(len, neighbours.values())),
                  "shard_samples": len(captions), **dropped, **{f"scan_{k}": v for k, v in scan_counts.items()}}
        if dropped:
            log.warning("pseudo-positives %s: dropped keys not in the shard set %s", url, dropped)
        return cls(neighbours, {k: captions[k] for k in needed}, counts)

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
        from pretrain.data import read_manifest

        pp = PseudoPositives.load(url, read_manifest(shards_url).urls, strict)
        log.info("pseudo-positives %s: %s", url, pp.counts)
        _cache[key] = pp
    return _cache[key]
