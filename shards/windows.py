"""Which decoded frames make up the sample of one ASR segment.

The paper (global_local_sinkhorn_cvpr24, Sec. 3.2) starts from U > T frames "including the video frames before and
after the ASR boundaries" and lets Sinkhorn pick T of them. We take the U consecutive frames (at the sampling fps)
centred on the segment's midpoint, shifted to stay inside the video: a short segment gets context on both sides, a
segment longer than U frames keeps its centre. A video with fewer than U frames repeats its last frame.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    indices: tuple[int, ...]    # U indices into the decoded frames (the last one repeats when valid < U)
    valid: int                  # distinct frames
    start: float                # time of the first frame
    end: float                  # end of the last distinct frame: its time plus one sampling period


def plan_window(times: list[float], asr_start: float, asr_end: float, frames: int, fps: float,
                video_end: float | None = None) -> Window:
    """The window of `frames` frames for one segment; `times` are the decoded frame times, ascending."""
    n = len(times)
    if n == 0:
        raise ValueError("no decoded frames")
    period = 1.0 / fps
    valid = min(frames, n)
    centre = 0.5 * (asr_start + asr_end)
    # first frame: the one nearest to centre - (U/2) periods, so the window's middle sits on the centre
    target = centre - 0.5 * frames * period + 0.5 * period
    i = bisect.bisect_left(times, target)
    if 0 < i < n and target - times[i - 1] <= times[i] - target:
        i -= 1
    first = max(0, min(i, n - valid))
    idx = list(range(first, first + valid)) + [first + valid - 1] * (frames - valid)
    end = times[first + valid - 1] + period
    if video_end is not None and video_end > times[first + valid - 1]:
        end = min(end, video_end)
    return Window(tuple(idx), valid, times[first], end)
