"""The pseudo-positive table on disk (docs/contracts.md section 4, format 3): written by `index.mining`, read by
`pretrain.pseudo_positives` and `index.mining.read_table`. It lives here, below both, so neither imports the other.

A table is a folder:
  table.json                the manifest, written last (it commits the table): settings, counts, and per part its
                            file, embedding shard, clips, pairs, size and sha256
  part-emb-000003.npz       one part per embedding shard: the clips of that shard that have pseudo-positives
                            (`keys`, `offsets` (clips + 1) into the pair arrays) and per pair the neighbour's key, index
                            score, caption cosine and caption (`neighbours`, `scores`, `tcos`, `captions`)
  videos.npy, video_parts.npy   sorted video ids of the clips with entries, and the part each one's clips are in
A reader opens the manifest and the video index (memory-mapped) and reads a part only when a clip of it is asked
for, keeping at most `cache_parts` parts; a process that trains on some shards reads only their parts.
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import tempfile
import zipfile

import numpy as np

from common import fsio
from common.errors import UserError

FORMAT = 3  # 3: a folder of columnar parts; 1 and 2 were one JSON file
MANIFEST = "table.json"
VIDEOS, VIDEO_PARTS = "videos.npy", "video_parts.npy"
REMINE = "re-run `cluster.index mine mine.overwrite=true`"


class TableError(UserError, ValueError):
    """A pseudo-positive table that cannot be read as format 3 (one `error:` line at the CLI)."""


class UnknownTableKeys(TableError):
    """A table made from another shard set than the one it is used with."""


def part_name(shard: str) -> str:
    return f"part-{shard}.npz"


def write_part(url: str, shard: str, rows: list[tuple[str, list[tuple[str, float, float, str]]]]) -> dict:
    """Write one part (rows: [(clip key, [(neighbour key, score, caption cosine, caption), ...])]); its entry."""
    pairs = [p for _, pos in rows for p in pos]
    arrays = {"keys": np.array([k for k, _ in rows], dtype=str),
              "offsets": np.cumsum([0] + [len(pos) for _, pos in rows], dtype=np.int64),
              "neighbours": np.array([p[0] for p in pairs], dtype=str),
              "scores": np.array([p[1] for p in pairs], dtype=np.float32),
              "tcos": np.array([p[2] for p in pairs], dtype=np.float32),
              "captions": np.array([p[3] for p in pairs], dtype=str)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    name = part_name(shard)
    fsio.write_bytes_atomic(fsio.join(url, name), data)
    return {"name": name, "shard": shard, "clips": len(rows), "pairs": len(pairs), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(url: str, manifest: dict, parts: list[dict], videos: list[list[str]]) -> None:
    """Commit a table: the video index (videos[i]: the videos of parts[i]'s clips), then the manifest."""
    vid = np.array([v for vs in videos for v in vs], dtype=str)
    where = np.array([i for i, vs in enumerate(videos) for _ in vs], dtype=np.int32)
    order = np.argsort(vid, kind="stable")
    for name, arr in ((VIDEOS, vid[order]), (VIDEO_PARTS, where[order])):
        buf = io.BytesIO()
        np.save(buf, arr)
        fsio.write_bytes_atomic(fsio.join(url, name), buf.getvalue())
    fsio.write_json_atomic(fsio.join(url, MANIFEST), {**manifest, "format": FORMAT, "parts": parts})


def read_manifest(url: str) -> dict:
    """The manifest of a format-3 table; TableError in one line for anything else (older formats name the fix)."""
    side = fsio.join(url, MANIFEST)
    if not fsio.exists(side):
        if fsio.exists(url) and not url.rstrip("/").endswith(MANIFEST):
            try:
                fs, path = fsio.filesystem(url)
                is_file = fs.isfile(path)
            except OSError:
                is_file = False
            if is_file:
                raise TableError(f"pseudo-positive table [{url}]: one JSON file (format 1 or 2), no longer read; "
                                 f"{REMINE} (it writes a table folder)")
        raise TableError(f"pseudo-positive table [{url}]: not found (no {MANIFEST}); run `cluster.index mine`")
    try:
        raw = fsio.read_json(side)
    except (ValueError, UnicodeDecodeError) as e:
        raise TableError(f"{side}: not a pseudo-positive table manifest ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("parts"), list):
        got = raw.get("format") if isinstance(raw, dict) else None
        raise TableError(f"{side}: format {got!r}, this reader needs format {FORMAT}; {REMINE}")
    return raw


class Table:
    """Lazy reader of a format-3 table. `opened` lists the part files read, in order (a part read twice, after
    falling out of the cache, appears twice)."""

    def __init__(self, url: str, cache_parts: int = 8):
        self.url = url
        self.manifest = read_manifest(url)
        self.parts = self.manifest["parts"]
        self.cache_parts = max(1, cache_parts)
        self._cache: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self.opened: list[str] = []
        self._videos, self._video_parts = self._video_index()

    def _local(self, name: str) -> str:
        if fsio.is_local(self.url):
            return os.path.join(fsio.filesystem(self.url)[1], name)
        folder = getattr(self, "_download", None) or tempfile.mkdtemp(prefix="stg-pp-")
        self._download = folder
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(fsio.read_bytes(fsio.join(self.url, name)))
        return path

    def _video_index(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            videos = np.load(self._local(VIDEOS), mmap_mode="r")
            parts = np.load(self._local(VIDEO_PARTS), mmap_mode="r")
        except (OSError, ValueError) as e:
            raise TableError(f"pseudo-positive table [{self.url}]: unreadable video index ({e}); {REMINE}") from e
        if len(videos) != len(parts):
            raise TableError(f"pseudo-positive table [{self.url}]: video index lengths differ; {REMINE}")
        return videos, parts

    def part_of(self, video_id: str) -> int | None:
        i = int(np.searchsorted(self._videos, video_id))
        if i < len(self._videos) and str(self._videos[i]) == video_id:
            return int(self._video_parts[i])
        return None

    def read_part(self, i: int) -> dict[str, list[tuple[str, float, float, str]]]:
        """One part as {clip key: [(neighbour key, score, caption cosine, caption), ...]}, checked against the
        manifest (a truncated or altered part is refused naming its file)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        entry = self.parts[i]
        where = fsio.join(self.url, entry["name"])
        try:
            data = fsio.read_bytes(where)
        except FileNotFoundError as e:
            raise TableError(f"{where}: missing (named by {MANIFEST}); {REMINE}") from e
        self.opened.append(entry["name"])
        if len(data) != entry["size"]:
            raise TableError(f"{where}: {len(data)} bytes, {MANIFEST} says {entry['size']} (truncated?); {REMINE}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise TableError(f"{where}: checksum differs from {MANIFEST} (corrupt part); {REMINE}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                a = {k: z[k] for k in ("keys", "offsets", "neighbours", "scores", "tcos", "captions")}
        except (KeyError, OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise TableError(f"{where}: unreadable part ({e}); {REMINE}") from e
        off = a["offsets"].tolist()
        nb, sc, tc, cap = a["neighbours"].tolist(), a["scores"].tolist(), a["tcos"].tolist(), a["captions"].tolist()
        part = {k: [(nb[j], sc[j], tc[j], cap[j]) for j in range(off[r], off[r + 1])]
                for r, k in enumerate(a["keys"].tolist())}
        self._cache[i] = part
        if len(self._cache) > self.cache_parts:
            self._cache.popitem(last=False)
        return part

    def entries(self, key: str, video_id: str) -> list[tuple[str, float, float, str]]:
        """The pseudo-positives of one clip (empty when it has none), reading its part if not cached."""
        i = self.part_of(video_id)
        if i is None:
            return []
        return self.read_part(i).get(key, [])

    def __iter__(self):
        """(clip key, pairs) over the whole table, a part at a time."""
        for i in range(len(self.parts)):
            yield from self.read_part(i).items()

    def summary(self) -> dict:
        return {k: v for k, v in self.manifest.items() if k != "parts"}


def remove_parts_except(url: str, keep: set[str]) -> None:
    """Drop part files a previous table left that the new manifest does not name (after it is committed)."""
    for name in fsio.listdir(url) if fsio.exists(url) else []:
        if name.startswith("part-") and name.endswith(".npz") and name not in keep:
            fsio.remove(fsio.join(url, name))
