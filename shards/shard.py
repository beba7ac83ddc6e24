"""Building one shard: decode each of its videos once, write one sample per video (each frame once, its caption
segments), write a tar, commit. The windows are cut by the reader (shards.reader), not here.

Commit order (docs/contracts.md section 2): the tar is published first, the stats JSON last, so a shard counts as
finished only when its stats file exists; a run killed in between leaves a tar without stats, which is rebuilt.
Bad input is never raised: every video or segment that cannot be used becomes a counted, logged Failure.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import resource
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from common import fsio
from shards.config import ShardConfig
from shards.corpus import Failure, Video, clean_segments, read_caption_entries
from shards.decode import DecodedVideo, DecodeError, decode_video
from shards.tarwriter import FORMAT, TarWriter, frame_name, video_key

log = logging.getLogger(__name__)


@dataclass
class ShardTask:
    index: int
    videos: list[Video]
    captions: str = ""                      # caption.json URL
    spans: list = field(default_factory=list)  # per video: (byte offset, length) of its entry, or None

    def with_captions(self):
        """(video, its raw caption.json entry or None): only these videos' entries are read (range reads)."""
        return zip(self.videos, read_caption_entries(self.captions, self.spans) if self.captions
                   else [None] * len(self.videos))

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def tar_url(output: str, index: int) -> str:
    return fsio.join(output, shard_name(index) + ".tar")


def stats_url(output: str, index: int) -> str:
    return fsio.join(output, shard_name(index) + ".stats.json")


def _jpeg_encoder(quality: int):
    def encode(rgb) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    return encode


def _local_copy(video: Video, workdir: str) -> str:
    """A local path ffmpeg can open; remote videos are downloaded once (mp4 needs seeking). Raises DecodeError."""
    if not video.path:
        raise DecodeError("missing_file", "manifest row has no path")
    try:
        fs, path = fsio.filesystem(video.path)
        if not fs.exists(path):
            raise DecodeError("missing_file", video.path)
        if fs.isdir(path):
            raise DecodeError("missing_file", f"{video.path} is a directory")
        if fs.size(path) == 0:
            raise DecodeError("zero_length", f"{video.path} is empty (0 bytes)")
        if fsio.is_local(video.path):
            return path
        local = os.path.join(workdir, "input" + os.path.splitext(path)[1])
        fs.get_file(path, local)
        return local
    except DecodeError:
        raise
    except (OSError, ValueError) as e:
        raise DecodeError("missing_file", f"{video.path}: {e}") from e


def _video_json(video: Video, segments, dec: DecodedVideo, cfg: ShardConfig, duration: float) -> bytes:
    meta = {
        "format": FORMAT, "video_id": video.video_id, "fps": cfg.fps, "size": cfg.size,
        "window_frames": cfg.window_frames, "frame_times": dec.times, "video_duration": duration,
        "video_width": dec.width, "video_height": dec.height,
        "segments": [{"segment": seg.index, "start": seg.start, "end": seg.end, "caption": seg.text}
                     for seg in segments],
    }
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def process_video(video: Video, entry, cfg: ShardConfig, writer: TarWriter, workdir: str,
                  failures: list[Failure]) -> tuple[int, float]:
    """Write the sample of one video; returns (windows it holds: its segments, seconds of video decoded)."""
    # captions first: a video without a usable caption is not worth decoding
    precheck = clean_segments(video.video_id, entry, math.inf)
    if not precheck.segments:
        failures.extend(precheck.failures)
        return 0, 0.0
    local = None
    try:
        local = _local_copy(video, workdir)
        dec = decode_video(local, cfg.fps, cfg.size, cfg.ffmpeg_threads, transform=_jpeg_encoder(cfg.jpeg_quality))
    except DecodeError as e:
        failures.append(Failure(video.video_id, e.reason, e.detail))
        return 0, 0.0
    finally:
        if local and local.startswith(workdir):  # a downloaded copy: a shard of long videos must not fill the disk
            os.remove(local)
    period = 1.0 / cfg.fps
    decoded_end = dec.times[-1] + period
    duration = dec.duration if dec.duration > 0 else decoded_end
    clean = clean_segments(video.video_id, entry, duration)
    failures.extend(clean.failures)
    segments = clean.segments
    if dec.damage:
        # a damaged or truncated file: keep what decoded, drop only the segments that start past it
        kept = [seg for seg in segments if seg.start < decoded_end]
        failures.append(Failure(video.video_id, "decode_error",
                                f"damaged: decoded {decoded_end:.1f}s of {duration:.1f}s, {len(kept)} segments kept, "
                                f"{len(segments) - len(kept)} dropped; {dec.damage[0]}"))
        segments = kept
    if not segments:
        return 0, min(duration, decoded_end)
    members = {frame_name(i): frame for i, frame in enumerate(dec.frames)}
    members["json"] = _video_json(video, segments, dec, cfg, duration)
    writer.write(video_key(video.video_id), members)
    return len(segments), min(duration, decoded_end)


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_shard(cfg: ShardConfig, task: ShardTask) -> dict:
    """Build, publish and mark one shard; returns its stats. Raises only for infrastructure errors (retried)."""
    t0, c0 = time.time(), _cpu_seconds()
    failures: list[Failure] = []
    samples, videos, seconds = 0, 0, 0.0
    with tempfile.TemporaryDirectory(prefix=f"stg-{task.name}-") as tmp:
        local_tar = os.path.join(tmp, task.name + ".tar")
        with open(local_tar, "wb") as f:
            writer = TarWriter(f)
            for video, entry in task.with_captions():
                workdir = tempfile.mkdtemp(dir=tmp)
                n, secs = process_video(video, entry, cfg, writer, workdir, failures)
                samples += n
                videos += n > 0
                seconds += secs
            writer.close()
        size = os.path.getsize(local_tar)
        fsio.put_file_atomic(local_tar, tar_url(cfg.output, task.index))
    for f in failures:
        log.warning("%s %s: %s (%s)", task.name, f.video_id, f.reason, f.detail)
    stats = {
        "shard": task.name + ".tar", "format": FORMAT, "videos": len(task.videos), "video_samples": videos,
        "samples": samples, "bytes": size,
        "seconds_decoded": round(seconds, 3), "wall_seconds": round(time.time() - t0, 3),
        "cpu_seconds": round(_cpu_seconds() - c0, 3),
        "failures": dict(sorted(Counter(f.reason for f in failures).items())),
        "failed": [f.as_dict() for f in failures], "config_hash": cfg.output_hash(),
    }
    fsio.write_json_atomic(stats_url(cfg.output, task.index), stats)
    return stats
