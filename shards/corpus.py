"""Reading the raw corpus (docs/contracts.md section 1): the video manifest and caption.json.

caption.json is decoded with `surrogateescape`, so a file holding a few non-UTF-8 bytes still loads: the bad bytes
become lone surrogates, and `clean_segments` counts the captions that hold them instead of failing the whole run.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
from dataclasses import dataclass, field

from common import fsio
from common.errors import UserError
from shards.raw_captions import from_raw, is_raw


class CorpusError(UserError, ValueError):
    """A manifest or caption file that cannot be read as contract 1 (one `error:` line at the CLI)."""


def _read(url: str, what: str) -> bytes:
    try:
        return fsio.read_bytes(url)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise CorpusError(f"{what} [{url}]: not found") from e


@dataclass(frozen=True)
class Video:
    video_id: str
    path: str           # absolute local path or fsspec URL ("" when the manifest row has none)


@dataclass(frozen=True)
class Segment:
    index: int          # position in the video's caption lists (kept so keys trace back to caption.json)
    start: float
    end: float
    text: str


@dataclass
class Failure:
    video_id: str
    reason: str
    detail: str

    def as_dict(self) -> dict:
        return {"video_id": self.video_id, "reason": self.reason, "detail": self.detail}


def _parent(url: str) -> str:
    return posixpath.dirname(url) if not fsio.is_local(url) else os.path.dirname(fsio.filesystem(url)[1])


def resolve(base_dir: str, path: str) -> str:
    if not path:
        return ""
    if "://" in path or path.startswith("/"):
        return path
    return fsio.join(base_dir, path)


def read_manifest(url: str) -> list[Video]:
    return list(iter_manifest(url))


def iter_manifest(url: str):
    """The manifest's videos in file order, read a line at a time (a driver at HowTo100M's size never holds the
    whole CSV or the whole list of videos)."""
    fs, path = fsio.filesystem(url)
    try:
        raw = fs.open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise CorpusError(f"manifest [{url}]: not found") from e
    with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        reader = csv.DictReader(text)
        try:
            fields = reader.fieldnames
        except csv.Error as e:
            raise CorpusError(f"manifest [{url}]: not CSV ({e})") from e
        except UnicodeDecodeError as e:
            raise CorpusError(f"manifest [{url}]: not UTF-8 text ({e.reason} at byte {e.start})") from e
        if not fields or "video_id" not in fields or "path" not in fields:
            raise CorpusError(f"manifest [{url}]: header must hold video_id,path (got {fields})")
        base = _parent(url)
        try:
            for row in reader:
                vid = (row.get("video_id") or "").strip()
                if vid:
                    yield Video(vid, resolve(base, (row.get("path") or "").strip()))
        except UnicodeDecodeError as e:
            raise CorpusError(f"manifest [{url}]: not UTF-8 text ({e.reason} at byte {e.start})") from e
        except csv.Error as e:
            raise CorpusError(f"manifest [{url}]: not CSV ({e})") from e


def default_captions(manifest_url: str) -> str:
    return fsio.join(_parent(manifest_url), "caption.json")


def read_captions(url: str) -> dict:
    raw = _read(url, "captions").decode("utf-8", errors="surrogateescape")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CorpusError(f"captions [{url}]: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise CorpusError(f"captions [{url}]: top level must map video_id -> {{start, end, text}}")
    if is_raw(url):  # HowTo100M's raw_caption.json: rolling ASR lines (shards/raw_captions.py)
        data = {vid: from_raw(entry) for vid, entry in data.items()}
    return data


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _seconds(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        return None
    return float(x)


@dataclass
class CleanCaptions:
    segments: list[Segment] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def clean_segments(video_id: str, entry, duration: float) -> CleanCaptions:
    """The usable ASR segments of one video; every dropped segment becomes a Failure with its reason."""
    out = CleanCaptions()
    if not isinstance(entry, dict) or not entry.get("text"):
        out.failures.append(Failure(video_id, "no_captions", "no caption entry" if entry is None else "empty"))
        return out
    starts, ends, texts = entry.get("start"), entry.get("end"), entry.get("text")
    if not all(isinstance(x, list) for x in (starts, ends, texts)):
        out.failures.append(Failure(video_id, "bad_caption_time", "start, end and text must be lists"))
        return out
    if not (len(starts) == len(ends) == len(texts)):
        out.failures.append(Failure(video_id, "bad_caption_time",
                                    f"start/end/text lengths differ: {len(starts)}/{len(ends)}/{len(texts)}"))
        return out
    index = entry.get("index")  # raw captions: the raw line each segment starts at (shards/raw_captions.py)
    for i, (s, e, t) in enumerate(zip(starts, ends, texts)):
        i = index[i] if isinstance(index, list) and len(index) == len(texts) else i
        s, e = _seconds(s), _seconds(e)
        if s is None or e is None or e < s:
            out.failures.append(Failure(video_id, "bad_caption_time", f"segment {i}: start {starts[i]!r} end {ends[i]!r}"))
        elif not isinstance(t, str) or not _is_utf8(t) or not t.strip():
            shown = t.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace") if isinstance(t, str) else t
            out.failures.append(Failure(video_id, "bad_caption_text", f"segment {i}: {shown!r:.80}"))
        elif s >= duration:
            out.failures.append(Failure(video_id, "caption_past_end", f"segment {i}: starts at {s:.2f}s, video ends at {duration:.2f}s"))
        else:
            out.segments.append(Segment(i, s, e, " ".join(t.split())))
    return out


# ---- caption.json read a video at a time -----------------------------------------------------------------------
# HowTo100M's caption file is gigabytes of JSON: no process parses it whole. One streaming pass records where each
# video's entry lies (CaptionIndex, kept beside the shard set); a sharding task then reads just its videos' entries.

CHUNK = 1 << 20


def iter_caption_spans(url: str):
    """(video id, byte offset, byte length) of every entry of caption.json, in file order, in one streaming pass
    holding one chunk and one entry at a time. CorpusError for a file that is not a JSON object."""
    import codecs

    decoder = json.JSONDecoder()
    dec = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    fs, path = fsio.filesystem(url)
    try:
        f = fs.open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise CorpusError(f"captions [{url}]: not found") from e
    with f:
        buf, base, eof = "", 0, False  # base: byte offset of buf[0]

        def more() -> bool:
            nonlocal buf, eof
            if eof:
                return False
            data = f.read(CHUNK)
            eof = not data
            buf += dec.decode(data, final=eof)
            return bool(data) or bool(buf)

        def skip_ws(i: int) -> int:
            while True:
                while i < len(buf) and buf[i] in " \t\r\n":
                    i += 1
                if i < len(buf) or not more():
                    return i

        def value(i: int):
            while True:
                try:
                    return decoder.raw_decode(buf, i)
                except json.JSONDecodeError as e:
                    if eof or not more():
                        raise CorpusError(f"captions [{url}]: not JSON ({e.msg} near byte {base + len(buf[:e.pos].encode('utf-8', 'surrogateescape'))})") from e

        more()
        if buf.startswith("\ufeff"):
            buf = buf[1:]
            base += 3
        i = skip_ws(0)
        if i >= len(buf) or buf[i] != "{":
            raise CorpusError(f"captions [{url}]: top level must map video_id -> {{start, end, text}}")
        i = skip_ws(i + 1)
        if i < len(buf) and buf[i] == "}":
            return
        while True:
            key, i = value(i)
            if not isinstance(key, str):
                raise CorpusError(f"captions [{url}]: top level must map video_id -> {{start, end, text}}")
            i = skip_ws(i)
            if i >= len(buf) or buf[i] != ":":
                raise CorpusError(f"captions [{url}]: not JSON (expected ':' after {key!r})")
            i = skip_ws(i + 1)
            start = base + len(buf[:i].encode("utf-8", "surrogateescape"))
            _, j = value(i)
            length = len(buf[i:j].encode("utf-8", "surrogateescape"))
            yield key, start, length
            base = start + length  # drop what is consumed: memory stays one chunk plus one entry
            buf = buf[j:]
            i = skip_ws(0)
            if i < len(buf) and buf[i] == "}":
                return
            if i >= len(buf) or buf[i] != ",":
                raise CorpusError(f"captions [{url}]: not JSON (expected ',' or '}}' after the entry of {key!r})")
            i = skip_ws(i + 1)


@dataclass
class CaptionIndex:
    """Where each video's entry lies in caption.json: sorted video ids, byte offsets and lengths."""
    url: str
    size: int
    video_ids: "np.ndarray"
    offsets: "np.ndarray"
    lengths: "np.ndarray"

    def span(self, video_id: str) -> tuple[int, int] | None:
        import numpy as np

        i = int(np.searchsorted(self.video_ids, video_id))
        if i < len(self.video_ids) and self.video_ids[i] == video_id:
            return int(self.offsets[i]), int(self.lengths[i])
        return None


def _size(url: str) -> int:
    fs, path = fsio.filesystem(url)
    return int(fs.size(path))


RUN = 16384  # caption entries per sorted run of the index: what one lookup pass holds at a time


class CaptionRuns:
    """The caption index as sorted runs of RUN entries each, in file order, in one .npz (numpy reads a member only
    when asked): a lookup holds one run at a time, so the sharding driver's memory does not grow with the number
    of videos (issue 32). The price is one pass over the runs per window of videos looked up."""

    def __init__(self, url: str, size: int, cache: str, runs: int):
        self.url, self.size, self.cache, self.runs = url, size, cache, runs

    def _open(self):
        import numpy as np

        fs, path = fsio.filesystem(self.cache)
        f = fs.open(path, "rb")
        return f, np.load(f, allow_pickle=False)

    def spans(self, video_ids: list[str]) -> list[tuple[int, int] | None]:
        """(offset, length) of each video's entry, None when caption.json has none. A video listed twice in the
        file gets its first entry (runs are in file order, each sorted stably)."""
        import numpy as np

        want = np.array(video_ids, dtype=str) if video_ids else np.array([], dtype=str)
        off = np.full(len(want), -1, np.int64)
        n = np.zeros(len(want), np.int64)
        f, z = self._open()
        with f, z:
            for r in range(self.runs):
                todo = np.flatnonzero(off < 0)
                if not len(todo):
                    break
                ids = z[f"ids_{r:05d}"]
                i = np.minimum(np.searchsorted(ids, want[todo]), max(len(ids) - 1, 0))
                hit = (ids[i] == want[todo]) if len(ids) else np.zeros(len(todo), bool)
                off[todo[hit]] = z[f"off_{r:05d}"][i[hit]]
                n[todo[hit]] = z[f"len_{r:05d}"][i[hit]]
        return [None if o < 0 else (int(o), int(k)) for o, k in zip(off.tolist(), n.tolist())]

    def whole(self) -> CaptionIndex:
        """Every run in one CaptionIndex (memory linear in the videos: for small files and tests)."""
        import numpy as np

        f, z = self._open()
        with f, z:
            parts = [(z[f"ids_{r:05d}"], z[f"off_{r:05d}"], z[f"len_{r:05d}"]) for r in range(self.runs)]
        if not parts:
            return CaptionIndex(self.url, self.size, np.array([], dtype=str), np.zeros(0, np.int64),
                                np.zeros(0, np.int64))
        ids = np.concatenate([p[0] for p in parts])
        order = np.argsort(ids, kind="stable")  # stable over file-ordered runs: a repeated id's first entry first
        return CaptionIndex(self.url, self.size, ids[order], np.concatenate([p[1] for p in parts])[order],
                            np.concatenate([p[2] for p in parts])[order])


def caption_runs(url: str, cache: str) -> CaptionRuns:
    """The CaptionRuns of caption.json kept in `cache` (a .npz URL): reused when made from a file of the same URL
    and size, else built in one streaming pass holding one run at a time."""
    import zipfile

    import numpy as np

    try:
        size = _size(url)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise CorpusError(f"captions [{url}]: not found") from e
    if fsio.exists(cache):
        try:
            fs, path = fsio.filesystem(cache)
            with fs.open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                if str(z["url"]) == url and int(z["size"]) == size:
                    return CaptionRuns(url, size, cache, int(z["runs"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # an unreadable or old-layout cache is rebuilt
    with fsio.local_tempdir("stg-capidx-") as tmp:
        local = os.path.join(tmp, "caption_index.npz")
        runs = 0
        with zipfile.ZipFile(local, "w", allowZip64=True) as zf:
            def put(name, arr):
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

            ids, offsets, lengths = [], [], []

            def flush():
                nonlocal runs
                if ids:
                    a = np.array(ids, dtype=str)
                    order = np.argsort(a, kind="stable")
                    put(f"ids_{runs:05d}", a[order])
                    put(f"off_{runs:05d}", np.array(offsets, np.int64)[order])
                    put(f"len_{runs:05d}", np.array(lengths, np.int64)[order])
                    runs += 1
                    ids.clear(), offsets.clear(), lengths.clear()

            for vid, off, n in iter_caption_spans(url):
                ids.append(vid)
                offsets.append(off)
                lengths.append(n)
                if len(ids) >= RUN:
                    flush()
            flush()
            put("url", np.array(url))
            put("size", np.array(size, np.int64))
            put("runs", np.array(runs, np.int64))
        fsio.put_file_atomic(local, cache)
    return CaptionRuns(url, size, cache, runs)


def index_captions(url: str, cache: str = "") -> CaptionIndex:
    """The whole CaptionIndex of caption.json in memory (via `cache`, a .npz URL, when given: see caption_runs).
    Linear in the videos; the sharding driver uses caption_runs instead."""
    if cache:
        return caption_runs(url, cache).whole()
    with fsio.local_tempdir("stg-capidx-") as tmp:
        return caption_runs(url, os.path.join(tmp, "caption_index.npz")).whole()


def read_caption_entries(url: str, spans: list[tuple[int, int] | None]) -> list:
    """The raw caption.json entries at the given byte spans (None where a video has no entry): range reads only."""
    fs, path = fsio.filesystem(url)
    out = []
    with fs.open(path, "rb") as f:
        for span in spans:
            if span is None:
                out.append(None)
                continue
            f.seek(span[0])
            raw = f.read(span[1]).decode("utf-8", errors="surrogateescape")
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError as e:  # the file changed since it was indexed
                raise CorpusError(f"captions [{url}]: entry at byte {span[0]} is not JSON ({e.msg}); the file "
                                  f"changed since its index was made") from e
    return out


def captions_of(url: str, video_ids, index: CaptionIndex | None = None) -> dict:
    """{video id: raw caption.json entry} for the given videos only (absent ids are left out)."""
    index = index or index_captions(url)
    spans = [index.span(v) for v in video_ids]
    return {v: e for v, e, s in zip(video_ids, read_caption_entries(url, spans), spans) if s is not None}
