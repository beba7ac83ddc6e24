"""One ffmpeg call per video: one frame per 1/fps slot, short-side scale + centre crop, raw rgb24 frames on a pipe.

Frame times are not computed from the frame index: ffmpeg's `showinfo` filter reports the presentation time of
every frame it passes, and we read those reports from stderr. Sampling at `fps` keeps the first source frame of each
slot [k/fps, (k+1)/fps) (a `select` filter, the rule TubeDETR samples VidSTG frames by), so a frame's time is the
presentation time of a real source frame, exactly. The same stderr gives the container duration and the
source size. Frames are handed to `transform` (e.g. a JPEG encoder) as they arrive, so a long video never sits in
memory as raw pixels.

A decode is bounded: `max_bytes` caps the raw frames it may produce (frames x size x size x 3), checked against the
container duration before the frames come and against the frames as they come; over it, ffmpeg is killed and
DecodeError("too_large") raised. The ffmpeg child never outlives its caller: it is killed when the decode stops
early (an exception, Ctrl-C) and, on Linux, the kernel kills it when the calling thread dies (SIGTERM, SIGKILL).
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import ffmpeg
import imageio_ffmpeg
import numpy as np

_SHOWINFO = re.compile(r"\[Parsed_showinfo_\d+ @ [^\]]+\] n:\s*(\d+) pts:\s*(-?\d+) pts_time:(-?[\d.eE+-]+)")
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+\S*: Video: .*?(\d{2,5})x(\d{2,5})")
# raw frames one decode may produce unless the caller says otherwise (4 GiB: an hour at 1 fps and 224 px is 0.5 GiB)
DEFAULT_MAX_BYTES = int(os.environ.get("STG_DECODE_MAX_BYTES", 4 << 30))
# stderr lines that mean the file ended early or held damaged packets: the frames before them are still good
_DAMAGE = ("partial file", "Invalid NAL", "Decoding error", "error while decoding", "Invalid data found",
           "corrupt", "missing picture", "Error splitting")


class DecodeError(Exception):
    """The video could not be decoded at all; `reason` is a failure reason of docs/contracts.md section 2."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedVideo:
    frames: list                    # transform(rgb (size, size, 3) uint8) per frame, in time order
    times: list[float]              # presentation time (s) of each frame, from showinfo
    duration: float                 # container duration (s); 0 when ffmpeg reports none
    width: int                      # source frame size
    height: int
    damage: list[str] = field(default_factory=list)   # ffmpeg's complaints when the file is damaged or cut short


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def build_command(path: str, fps: float, size: int, threads: int = 1) -> list[str]:
    """The ffmpeg argv: decode the first video stream to size x size rgb24 frames at `fps` on stdout."""
    inp = ffmpeg.input(path, threads=threads) if threads > 0 else ffmpeg.input(path)
    v = (inp.video
         # the first source frame of each 1/fps slot, with its own time: the fps filter would keep the last frame
         # before t + 0.5/fps and stamp it t (up to half a slot off; tests/test_howto100m_release.py)
         .filter("select", f"isnan(prev_selected_t)+gt(floor(t*{fps!r}),floor(prev_selected_t*{fps!r}))")
         .filter("scale", size, size, force_original_aspect_ratio="increase")
         .filter("crop", size, size)
         .filter("showinfo"))
    out = ffmpeg.output(v, "pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", an=None, sn=None)
    out = out.global_args("-hide_banner", "-nostats", "-nostdin", "-loglevel", "info")
    return out.compile(cmd=ffmpeg_exe())


def _probe_text(stderr: str) -> tuple[float, int, int]:
    m = _DURATION.search(stderr)
    duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else 0.0
    v = _VIDEO.search(stderr)
    width, height = (int(v.group(1)), int(v.group(2))) if v else (0, 0)
    return duration, width, height


# looked up here, not in the forked child: a child of a threaded process should only call, never load
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the ffmpeg child before exec: SIGKILL when the thread that started it dies."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the caller died before the prctl took effect
        os._exit(1)


def _tail(stderr: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "showinfo" not in ln]
    return " | ".join(lines[-n:])[:400]


def decode_video(path: str, fps: float = 1.0, size: int = 224, threads: int = 1,
                 transform: Callable[[np.ndarray], object] | None = None,
                 max_bytes: int | None = None) -> DecodedVideo:
    """Decode a local video file once. Raises DecodeError when nothing usable comes out, or ("too_large") when
    the raw frames would exceed `max_bytes` (default DEFAULT_MAX_BYTES, env STG_DECODE_MAX_BYTES)."""
    if not (fps > 0 and fps != float("inf")) or size < 1:
        raise DecodeError("decode_error", f"fps must be a positive number and size >= 1, got fps={fps} size={size}")
    if not os.path.isfile(path):
        raise DecodeError("missing_file", f"{path} is not a file")
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    frame_bytes = size * size * 3

    def too_large(frames: float) -> DecodeError:
        return DecodeError("too_large", f"{fps:g} fps at {size}x{size} px would produce {frames:.0f} frames "
                                        f"({frames * frame_bytes / 2**20:.0f} MB), over the limit of "
                                        f"{limit / 2**20:g} MB")

    cmd = build_command(path, fps, size, threads)
    parent = os.getpid()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=(lambda: _die_with_parent(parent)) if _PRCTL is not None else None)
    err_lines: list[bytes] = []
    probed: dict = {}
    header = threading.Event()  # ffmpeg has described its input (or ended): the duration is known if it has one

    def drain() -> None:
        # stderr is drained on its own thread: with both pipes unread ffmpeg would block once one fills; the
        # container duration comes first, before any frame
        for line in proc.stderr:
            err_lines.append(line)
            if "duration" not in probed and line.lstrip().startswith(b"Duration:"):
                probed["duration"] = _probe_text(line.decode("utf-8", "replace"))[0]
            if line.lstrip().startswith((b"Duration:", b"Stream mapping:")):
                header.set()
        header.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    frames = []
    try:
        # the bound is checked against the duration before the first frame is waited for: at an absurd fps
        # ffmpeg may never send one
        header.wait()
        while True:
            expected = probed.get("duration", 0.0) * fps
            if max(expected, len(frames) + 1) * frame_bytes > limit:
                raise too_large(max(expected, len(frames) + 1))
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            arr = np.frombuffer(buf, np.uint8).reshape(size, size, 3)
            frames.append(transform(arr) if transform else arr.copy())
    except BaseException:
        proc.kill()  # stopped early (too large, a failing transform, Ctrl-C): ffmpeg must not run on
        raise
    finally:
        proc.stdout.close()
        rc = proc.wait()
        reader.join()
        proc.stderr.close()
    stderr = b"".join(err_lines).decode("utf-8", "replace")
    duration, width, height = _probe_text(stderr)
    if rc != 0 and not frames:
        if width == 0:
            raise DecodeError("corrupt_video", f"ffmpeg exit {rc}: {_tail(stderr)}")
        raise DecodeError("decode_error", f"ffmpeg exit {rc}: {_tail(stderr)}")
    if width == 0:
        raise DecodeError("corrupt_video", f"no video stream: {_tail(stderr)}")
    times = [float(m.group(3)) for m in _SHOWINFO.finditer(stderr)]
    damage = [ln.strip()[:200] for ln in stderr.splitlines()
              if ln.startswith(("[", "Error")) and "showinfo" not in ln and any(d in ln for d in _DAMAGE)]
    if rc != 0:
        damage.append(f"ffmpeg exit {rc}")
    if len(times) != len(frames):
        # the two reports disagree only when ffmpeg died mid-frame; keep the frames both agree on
        damage.append(f"{len(frames)} frames on the pipe, {len(times)} reported by showinfo")
        n = min(len(times), len(frames))
        frames, times = frames[:n], times[:n]
    if not frames:
        if damage:
            raise DecodeError("decode_error", f"no frame decoded: {_tail(stderr)}")
        raise DecodeError("zero_length", f"no frame at {fps} fps (duration {duration:.3f}s)")
    return DecodedVideo(frames, times, duration, width, height, damage)
