"""The one reader of a shard set (docs/contracts.md section 2): raw samples of a tar, checked and decoded.

Every consumer (pretraining's resampling loader, the embedding job, tests and benchmarks) reads shards through this
module, so a fault has one name wherever it is met. What cannot be used is skipped and counted under one of
`REASONS` (a Counter the caller passes in); nothing here raises for bad data:

- `raw_samples(url, counts)`: the grouped tar members of one shard, undecoded (pretraining fast-forwards over
  these on resume without decoding); shard-level faults are counted,
- `decode_sample(raw)`: the checked JSON and the (U, H, W, 3) uint8 frames of one raw sample, or `SampleError`,
- `read_samples(urls, counts)`: both, over many shards, in order.
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
from collections import Counter
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_iterator

from common import fsio

log = logging.getLogger(__name__)

# The failure reasons of a shard reader, as documented in docs/contracts.md section 2 (keep the two in step).
REASONS = {
    "unreadable_shard": "the tar cannot be opened (absent object, no permission, storage error)",
    "corrupt_shard": "the tar breaks off (truncated or garbled); the samples before the break are kept",
    "short_shard": "the tar ends cleanly with fewer samples than manifest.json lists",
    "missing_json": "a sample without its json member",
    "bad_json": "json that does not parse, is not an object, or lacks video_id / frame_times / window times",
    "no_caption": "json whose caption is missing, not a string or blank",
    "missing_frames": "one of f00.jpg .. f{U-1}.jpg is absent (U = len(frame_times))",
    "frame_count": "frame members beyond U, or valid_frames outside 1..U",
    "bad_jpeg": "a frame that does not decode as an image",
    "bad_shape": "frames of one sample (or of one training batch) that differ in size",
}


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


def shard_urls(output: str) -> list[tuple[str, int]]:
    """(absolute URL, samples) of every shard listed in `<output>/manifest.json`."""
    manifest = fsio.read_json(fsio.join(output, "manifest.json"))
    return [(fsio.join(output, s["url"]), int(s["samples"])) for s in manifest["shards"]]


def raw_samples(url: str, counts: Counter, expected: int | None = None,
                failed: list | None = None) -> Iterator[dict]:
    """The grouped members of each sample of one shard tar ({"__key__", "__url__", ext: bytes}), in tar order.

    A shard that cannot be opened, breaks off, or (given `expected`) holds fewer samples than that is counted
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
        fault("short_shard", f"{got} of its {expected} samples")


def check_json(raw: dict) -> dict:
    """The sample's json, checked against contract 2 (no frame is decoded), or SampleError."""
    key = raw.get("__key__", "?")
    if "json" not in raw:
        raise SampleError("missing_json", key)
    try:
        meta = json.loads(raw["json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError("bad_json", f"{key}: {exc}") from None
    if not isinstance(meta, dict):
        raise SampleError("bad_json", f"{key}: not an object")
    caption = meta.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise SampleError("no_caption", key)
    times = meta.get("frame_times")
    if not isinstance(meta.get("video_id"), str) or not isinstance(times, list) or not times:
        raise SampleError("bad_json", f"{key}: needs video_id (str) and frame_times (non-empty list)")
    if not all(isinstance(meta.get(k), (int, float)) for k in ("window_start", "window_end")):
        raise SampleError("bad_json", f"{key}: needs numeric window_start and window_end")
    valid = meta.get("valid_frames", len(times))
    if not isinstance(valid, int) or not 1 <= valid <= len(times):
        raise SampleError("frame_count", f"{key}: valid_frames {valid!r} with {len(times)} frame_times")
    return meta


def decode_sample(raw: dict) -> dict:
    """{"key", "url", "frames": (U, H, W, 3) uint8 RGB, "json": meta} of one raw sample, or SampleError."""
    key = raw.get("__key__", "?")
    meta = check_json(raw)
    count = len(meta["frame_times"])
    names = [f"f{i:02d}.jpg" for i in range(count)]
    missing = [n for n in names if n not in raw]
    if missing:
        raise SampleError("missing_frames", f"{key}: {missing[:3]}")
    extra = sorted(n for n in raw if n.endswith(".jpg") and n not in names)
    if extra:
        raise SampleError("frame_count", f"{key}: {len(extra)} frame(s) beyond the {count} frame_times")
    frames = []
    for n in names:
        try:
            with Image.open(io.BytesIO(raw[n])) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for broken data
            raise SampleError("bad_jpeg", f"{key}/{n}: {exc}") from None
        if frames and arr.shape != frames[0].shape:
            raise SampleError("bad_shape", f"{key}/{n}: {arr.shape} vs {frames[0].shape}")
        frames.append(arr)
    return {"key": key, "url": raw.get("__url__"), "frames": np.stack(frames), "json": meta}


def read_samples(urls: Iterable[str], counts: Counter | None = None, failed: list | None = None,
                 expected: dict[str, int] | None = None) -> Iterator[dict]:
    """Every usable sample of the given shard URLs, in order (see decode_sample); the rest are counted in `counts`
    and, when `failed` is given, listed there as {"key", "reason", "detail"}. `expected`: {url: samples}."""
    counts = Counter() if counts is None else counts
    for url in urls:
        for raw in raw_samples(url, counts, (expected or {}).get(url), failed):
            try:
                yield decode_sample(raw)
            except SampleError as e:
                counts[e.reason] += 1
                if failed is not None:
                    failed.append({"key": raw.get("__key__", "?"), "reason": e.reason, "detail": str(e)})
                warn_once((url, raw.get("__key__")), "skipping sample of %s: %s", url, e)
