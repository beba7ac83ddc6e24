"""The one reader of a shard set (docs/contracts.md section 2, format 2): video samples in, windows out.

A shard sample holds one video: each frame once (`f00000.jpg` ...) and a json with the frame times and the video's
caption segments. The windows that training, the embedding job, tests and benchmarks use (the U frames centred on
each segment, shards.windows) are cut here, from one decode of the frames they share. What cannot be used is
skipped and counted under one of `REASONS` (a Counter the caller passes in); nothing here raises for bad data
except a shard set of another format version (`ShardFormatError`: one line saying what to re-run).

- `raw_samples(url, counts)`: the grouped tar members of one shard (one video each), undecoded (pretraining
  fast-forwards over these on resume without decoding); shard-level faults are counted,
- `check_json(raw)`: the checked video json; `plan_clips(raw, meta)`: its windows (`Clip`), no frame decoded,
- `VideoFrames(raw).cut(clip)`: a window's (U, H, W, 3) frames; each frame is decoded once however many windows
  of the video hold it, and dropped when the last of them has been cut,
- `read_samples(urls, counts)`: every window of many shards, in order, as {"key", "url", "frames", "json"} where
  "json" is the window's description (the per-segment sample json of format 1, so consumers see windows as before).
"""
from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_iterator

from common import fsio
from common.errors import UserError
from shards.jpeg import JpegError, decode_jpegs
from shards.tarwriter import FORMAT, frame_name, sample_key
from shards.windows import plan_window

log = logging.getLogger(__name__)


# The failure reasons of a shard reader, as documented in docs/contracts.md section 2 (keep the two in step).
# Faults of a whole video sample count once for it; faults of one window count once for that window.
REASONS = {
    "unreadable_shard": "the tar cannot be opened (absent object, no permission, storage error)",
    "corrupt_shard": "the tar breaks off (truncated or garbled); the samples before the break are kept",
    "short_shard": "the tar ends cleanly with fewer video samples than manifest.json lists",
    "missing_json": "a video sample without its json member",
    "bad_json": "json that does not parse, is not an object, or lacks video_id / frame_times / segments / fps",
    "no_caption": "a segment whose caption is missing, not a string or blank (that window only)",
    "missing_frames": "a frame of a window is absent from its video sample (that window only)",
    "frame_count": "frame members beyond len(frame_times), or window_frames < 1",
    "bad_jpeg": "a frame of a window does not decode as an image (that window only)",
    "bad_shape": "frames of one window (or of one training batch) that differ in size",
}


class ShardFormatError(UserError):
    """A shard set or sample of another format version: refused with what to re-run (one line at the CLI)."""


def format_error(where: str, version) -> ShardFormatError:
    return ShardFormatError(
        f"{where}: shard format {version} (one sample per ASR segment); this reader needs format {FORMAT} (one "
        f"sample per video): re-run the sharder into a new output (python -m cluster.shard manifest=... output=...)")


class SampleError(ValueError):
    """A sample that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_warned: set = set()


def warn_once(what, msg: str, *args) -> None:
    """Warn the first time a bad shard or sample is met in this process (a resampling loader meets it again)."""
    if what not in _warned:
        _warned.add(what)
        log.warning(msg, *args)


def read_manifest(output: str) -> dict:
    """`<output>/manifest.json`, refused (ShardFormatError) unless it is of this reader's format."""
    url = fsio.join(output, "manifest.json")
    manifest = fsio.read_json(url)
    if not isinstance(manifest, dict) or manifest.get("format", 1) != FORMAT:
        raise format_error(url, manifest.get("format", 1) if isinstance(manifest, dict) else "?")
    return manifest


def shard_urls(output: str) -> list[tuple[str, int]]:
    """(absolute URL, video samples in its tar) of every shard listed in `<output>/manifest.json`."""
    manifest = read_manifest(output)
    return [(fsio.join(output, s["url"]), int(s["videos"])) for s in manifest["shards"]]


def raw_samples(url: str, counts: Counter, expected: int | None = None,
                failed: list | None = None) -> Iterator[dict]:
    """The grouped members of each video sample of one shard tar ({"__key__", "__url__", ext: bytes}), in tar order.

    A shard that cannot be opened, breaks off, or (given `expected` video samples) holds fewer than that is counted
    once in `counts` (and appended to `failed` as {"key": "<shard>:end", "reason", "detail"})."""
    got = 0

    def fault(reason: str, detail: str) -> None:
        counts[reason] += 1
        if failed is not None:
            failed.append({"key": f"{posixpath.basename(url)}:end", "reason": reason, "detail": detail})
        warn_once(url, "shard %s: %s (%s)", url, REASONS[reason], detail)

    try:
        fs, path = fsio.filesystem(url)
        stream = fs.open(path, "rb")
    except Exception as exc:  # noqa: BLE001 - missing object, permissions, fsspec/s3 errors
        fault("unreadable_shard", f"{type(exc).__name__}: {exc}")
        return
    try:
        with stream:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
            for sample in group_by_keys(files):
                got += 1
                yield sample
    except Exception as exc:  # noqa: BLE001 - tarfile/zlib/OSError of a truncated or garbled tar
        fault("corrupt_shard", f"after {got} samples: {exc}")
        return
    if expected is not None and got < expected:  # tarfile ends quietly when a tar is cut at a header
        fault("short_shard", f"{got} of its {expected} video samples")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_json(raw: dict) -> dict:
    """The video sample's json, checked against contract 2 (no frame is decoded), or SampleError; a sample of
    format 1 raises ShardFormatError (a whole shard set of the old format, not one bad sample)."""
    key = raw.get("__key__", "?")
    if "json" not in raw:
        raise SampleError("missing_json", key)
    try:
        meta = json.loads(raw["json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError("bad_json", f"{key}: {exc}") from None
    if not isinstance(meta, dict):
        raise SampleError("bad_json", f"{key}: not an object")
    if meta.get("format", 1) != FORMAT:
        raise format_error(f"{raw.get('__url__', '?')} sample {key}", meta.get("format", 1))
    times, segments = meta.get("frame_times"), meta.get("segments")
    if not isinstance(meta.get("video_id"), str) or not isinstance(times, list) or not times \
            or not all(_number(t) for t in times):
        raise SampleError("bad_json", f"{key}: needs video_id (str) and frame_times (non-empty list of seconds)")
    if not _number(meta.get("fps")) or not meta["fps"] > 0 or not _number(meta.get("video_duration")):
        raise SampleError("bad_json", f"{key}: needs fps > 0 and video_duration")
    if not isinstance(segments, list) or not all(
            isinstance(s, dict) and isinstance(s.get("segment"), int) and _number(s.get("start"))
            and _number(s.get("end")) for s in segments):
        raise SampleError("bad_json", f"{key}: needs segments [{{segment, start, end, caption}}]")
    u = meta.get("window_frames")
    if not isinstance(u, int) or u < 1:
        raise SampleError("frame_count", f"{key}: window_frames {u!r}")
    extra = [n for n in raw if n.endswith(".jpg") and not (n[1:-4].isdigit() and int(n[1:-4]) < len(times))]
    if extra:
        raise SampleError("frame_count", f"{key}: {len(extra)} frame member(s) beyond the {len(times)} frame_times")
    return meta


@dataclass(frozen=True)
class Clip:
    """One window of a video sample: the training sample of one ASR segment."""

    key: str                        # <vid>__s<segment:04d>, the key embeddings and pseudo-positives use
    meta: dict                      # the window's description (format 1's per-segment sample json)
    indices: tuple[int, ...]        # U frame indices into the video's frames (the last repeats when valid < U)
    error: SampleError | None = None


def plan_clips(raw: dict, meta: dict, window_frames: int = 0) -> list[Clip]:
    """The windows of a checked video sample, one per caption segment, in segment order; `window_frames` 0 takes
    the shard set's U. A segment without a usable caption is a Clip whose `error` says so (counted when cut)."""
    times = [float(t) for t in meta["frame_times"]]
    u = window_frames or meta["window_frames"]
    clips = []
    for seg in meta["segments"]:
        win = plan_window(times, float(seg["start"]), float(seg["end"]), u, meta["fps"],
                          video_end=meta["video_duration"])
        key = sample_key(meta["video_id"], seg["segment"])
        caption = seg.get("caption")
        window = {
            "video_id": meta["video_id"], "segment": seg["segment"], "caption": caption,
            "asr_start": seg["start"], "asr_end": seg["end"], "window_start": win.start, "window_end": win.end,
            "frame_times": [times[i] for i in win.indices], "valid_frames": win.valid, "fps": meta["fps"],
            "size": meta.get("size"), "video_duration": meta["video_duration"],
            "video_width": meta.get("video_width"), "video_height": meta.get("video_height")}
        error = None if isinstance(caption, str) and caption.strip() else SampleError("no_caption", key)
        clips.append(Clip(key, window, win.indices, error))
    return clips


class VideoFrames:
    """The frames of one video sample, decoded lazily: each frame once however many windows hold it, and freed
    when the last window that holds it (`hold`) has been cut. `device`: see decode_jpegs."""

    def __init__(self, raw: dict, clips: Iterable[Clip] = (), device=None):
        self.raw, self.device = raw, device
        self._frames: dict[int, object] = {}
        self._held: Counter = Counter()
        for c in clips:
            self.hold(c)

    def hold(self, clip: Clip) -> None:
        self._held.update(set(clip.indices))

    def release(self, clip: Clip) -> None:
        """Drop the clip's hold on its frames (cut does it; a window skipped without cutting must)."""
        for i in set(clip.indices):
            self._held[i] -= 1
            if self._held[i] <= 0:
                self._held.pop(i, None)
                self._frames.pop(i, None)

    def frames(self, clip: Clip) -> list:
        """The window's U frames, (H, W, 3) uint8 each (numpy, or tensors on `device`), or SampleError."""
        try:
            if clip.error is not None:
                raise clip.error
            need = sorted(i for i in set(clip.indices) if i not in self._frames)
            missing = [frame_name(i) for i in need if frame_name(i) not in self.raw]
            if missing:
                raise SampleError("missing_frames", f"{clip.key}: {missing[:3]}")
            try:
                self._frames.update(zip(need, decode_jpegs([self.raw[frame_name(i)] for i in need], self.device)))
            except JpegError as exc:
                detail = str(exc).split(": ", 1)[-1]
                raise SampleError("bad_jpeg", f"{clip.key}/{frame_name(need[exc.index])}: {detail}") from None
            frames = [self._frames[i] for i in clip.indices]
            shapes = {tuple(f.shape) for f in frames}
            if len(shapes) > 1:
                raise SampleError("bad_shape", f"{clip.key}: frames of sizes {sorted(shapes)}")
            return frames
        finally:
            self.release(clip)

    def cut(self, clip: Clip):
        """The window's (U, H, W, 3) uint8 frames (numpy, or a tensor on `device`), or SampleError."""
        frames = self.frames(clip)
        if self.device is None:
            return np.stack(frames)
        import torch

        return torch.stack(frames)


def video_clips(raw: dict, counts: Counter, failed: list | None = None, window_frames: int = 0) -> list[Clip]:
    """check_json + plan_clips of one raw video sample; a sample that cannot be used is counted and gives none."""
    try:
        return plan_clips(raw, check_json(raw), window_frames)
    except SampleError as e:
        note(counts, failed, raw.get("__url__"), raw.get("__key__", "?"), e)
        return []


def note(counts: Counter, failed: list | None, url, key: str, e: SampleError) -> None:
    counts[e.reason] += 1
    if failed is not None:
        failed.append({"key": key, "reason": e.reason, "detail": str(e)})
    warn_once((url, key), "skipping sample of %s: %s", url, e)


def read_samples(urls: Iterable[str], counts: Counter | None = None, failed: list | None = None,
                 expected: dict[str, int] | None = None, device=None, window_frames: int = 0) -> Iterator[dict]:
    """Every usable window of the given shard URLs, in order, as {"key", "url", "frames", "json"} (the window's
    description); each video's frames are decoded once. The rest are counted in `counts` and, when `failed` is
    given, listed there as {"key", "reason", "detail"}. `expected`: {url: video samples}."""
    counts = Counter() if counts is None else counts
    for url in urls:
        for raw in raw_samples(url, counts, (expected or {}).get(url), failed):
            clips = video_clips(raw, counts, failed, window_frames)
            frames = VideoFrames(raw, clips, device)
            for clip in clips:
                try:
                    yield {"key": clip.key, "url": url, "frames": frames.cut(clip), "json": clip.meta}
                except SampleError as e:
                    note(counts, failed, url, clip.key, e)
