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
    try:
        text = _read(url, "manifest").decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"manifest [{url}]: not UTF-8 text ({e.reason} at byte {e.start})") from e
    reader = csv.DictReader(io.StringIO(text))
    try:
        fields = reader.fieldnames
    except csv.Error as e:
        raise CorpusError(f"manifest [{url}]: not CSV ({e})") from e
    if not fields or "video_id" not in fields or "path" not in fields:
        raise CorpusError(f"manifest [{url}]: header must hold video_id,path (got {fields})")
    base = _parent(url)
    videos = []
    for row in reader:
        vid = (row.get("video_id") or "").strip()
        if not vid:
            continue
        videos.append(Video(vid, resolve(base, (row.get("path") or "").strip())))
    return videos


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
