"""Reading a shard set back (docs/contracts.md section 2): samples as decoded uint8 frames plus their JSON.

`read_samples` skips what it cannot use and counts why in `counts` (a Counter the caller may pass in): a shard that
cannot be opened or is cut short, a sample without JSON or with bad JSON, missing frames, an undecodable JPEG, a frame
of the wrong shape. Training builds its own resampling loader on the same pieces.
"""
from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_iterator

from common import fsio

log = logging.getLogger(__name__)
_FRAME = re.compile(r"^f(\d+)\.jpg$")


class SampleError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def shard_urls(output: str) -> list[tuple[str, int]]:
    """(absolute URL, samples) of every shard listed in `<output>/manifest.json`."""
    manifest = fsio.read_json(fsio.join(output, "manifest.json"))
    return [(fsio.join(output, s["url"]), int(s["samples"])) for s in manifest["shards"]]


def decode_sample(raw: dict) -> dict:
    """{"key", "url", "frames": (U, H, W, 3) uint8, "json": meta} from one grouped tar sample; or SampleError."""
    key = raw.get("__key__", "?")
    if "json" not in raw:
        raise SampleError("no_json", key)
    try:
        meta = json.loads(raw["json"])
        count = len(meta["frame_times"])
    except (ValueError, KeyError, TypeError) as e:
        raise SampleError("bad_json", f"{key}: {e}") from e
    names = [f"f{i:02d}.jpg" for i in range(count)]
    missing = [n for n in names if n not in raw]
    if not count or missing:
        raise SampleError("missing_frames", f"{key}: {missing[:3] or 'no frame'}")
    frames = []
    for n in names:
        try:
            img = Image.open(io.BytesIO(raw[n]))
            img.load()
            arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for broken data
            raise SampleError("bad_jpeg", f"{key}.{n}: {e}") from e
        if frames and arr.shape != frames[0].shape:
            raise SampleError("bad_shape", f"{key}.{n}: {arr.shape} vs {frames[0].shape}")
        frames.append(arr)
    return {"key": key, "url": raw.get("__url__"), "frames": np.stack(frames), "json": meta}


def _tar_samples(url: str, counts: Counter) -> Iterator[dict]:
    def stop(exn: Exception) -> bool:
        counts["truncated_shard"] += 1
        log.warning("shard %s is damaged, reading stops there: %s", url, exn)
        return False

    fs, path = fsio.filesystem(url)
    with fs.open(path, "rb") as f:
        files = (dict(entry, __url__=url) for entry in tar_file_iterator(f, handler=stop))
        yield from group_by_keys(files, handler=stop)


def read_samples(urls: Iterable[str], counts: Counter | None = None) -> Iterator[dict]:
    """Every usable sample of the given shard URLs, in order; unusable ones are counted in `counts` and skipped."""
    counts = Counter() if counts is None else counts
    for url in urls:
        try:
            for raw in _tar_samples(url, counts):
                try:
                    yield decode_sample(raw)
                except SampleError as e:
                    counts[e.reason] += 1
                    log.warning("skipping sample: %s", e)
        except Exception as e:  # noqa: BLE001 - missing object, tarfile.TarError, fsspec errors: skip the shard
            counts["unreadable_shard"] += 1
            log.warning("cannot read shard %s: %s", url, e)
