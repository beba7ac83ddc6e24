"""The pseudo-positive table's reader (docs/contracts.md section 4): `index` mines and writes the table
(index/mining.py), pretraining reads it (pretrain/pseudo_positives.py), and so does finetuning (WSRA's beta term).
A contract two stages share has its reader in the lower of them, so it lives here and the writer imports it."""
from __future__ import annotations

import collections

from common import fsio
from common.errors import UserError

TABLE_FORMAT = 2  # 2: the table carries the neighbours' captions ("captions"); 1 held keys only
READABLE_FORMATS = (1, 2)


class TableError(UserError, ValueError):
    """A pseudo-positive table that cannot be read or used (a UserError: one `error:` line and exit 2 at the CLI)."""


class UnknownTableKeys(TableError):
    """Keys of the table that the data it is used with does not hold (another corpus, shard set or model tag)."""


def load_table(url: str) -> dict:
    """The whole table file (format 1 or 2), checked for shape; TableError naming the file otherwise."""
    try:
        raw = fsio.read_json(url)
    except FileNotFoundError as e:
        raise TableError(f"pseudo-positive table [{url}]: not found; run `cluster.index mine`") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise TableError(f"{url}: not a pseudo-positive table ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") not in READABLE_FORMATS or not isinstance(raw.get("table"), dict):
        raise TableError(f"{url}: not a pseudo-positive table (format {TABLE_FORMAT} with a 'table' mapping)")
    if raw.get("captions") is not None and not isinstance(raw["captions"], dict):
        raise TableError(f"pseudo-positive table [{url}]: 'captions' must map sample keys to captions")
    return raw


def read_table(url: str, known_keys: set[str] | None = None, strict: bool = True,
               raw: dict | None = None) -> tuple[dict, dict]:
    """(table, counts). Keys (clips or neighbours) absent from `known_keys` raise UnknownTableKeys when strict;
    otherwise those entries are dropped and counted. `raw`: the file as load_table read it (not read again)."""
    raw = load_table(url) if raw is None else raw
    table: dict[str, list] = {}
    counts = collections.Counter()
    unknown: list[str] = []
    for key, pos in raw["table"].items():
        if not isinstance(pos, list) or not all(isinstance(p, list) and len(p) == 3 for p in pos):
            raise TableError(f"{url}: entry {key!r} is not a list of [key, score, caption cosine]")
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
        raise UnknownTableKeys(f"{url}: {len(unknown)} key(s) not in the shard set, e.g. {unknown[:3]} "
                          f"(table from another corpus or model tag?)")
    return table, dict(counts)
