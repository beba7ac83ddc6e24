"""H.264 mp4 out of raw RGB frames through the ffmpeg binary, and the way back (for tests and pictures).

Frames are streamed into ffmpeg's stdin while the next ones are rendered, so Python and x264 overlap. One encoder
thread and the bitexact flags make the same frames give the same file (no version string, no thread-dependent
slicing); tests still compare decoded frames, which is what the contract promises.
"""
from __future__ import annotations

import subprocess
import tempfile
from typing import Iterable

import imageio_ffmpeg
import numpy as np


class EncodeError(RuntimeError):
    pass


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def encode_command(path: str, width: int, height: int, fps: int, crf: int = 20, threads: int = 1) -> list[str]:
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
            "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", str(crf), "-pix_fmt", "yuv420p",
            "-threads", str(threads), "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
            "-f", "mp4", path]


def write_mp4(path: str, frames: Iterable[np.ndarray], width: int, height: int, fps: int, crf: int = 20,
              threads: int = 1) -> int:
    """Encode uint8 (height, width, 3) frames into `path`; returns the number of frames written."""
    n = 0
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty ffmpeg can never block us
        proc = subprocess.Popen(encode_command(path, width, height, fps, crf, threads), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        try:
            for f in frames:
                if f.shape != (height, width, 3) or f.dtype != np.uint8:
                    raise EncodeError(f"frame {n} is {f.dtype} {f.shape}, expected uint8 {(height, width, 3)}")
                proc.stdin.write(f.tobytes())
                n += 1
        except BrokenPipeError:
            pass  # ffmpeg died; its message is read below
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            raise EncodeError(f"ffmpeg failed ({rc}) writing {path}: {err.read().decode(errors='replace')[-2000:]}")
    return n


def read_frames(path: str, width: int, height: int) -> np.ndarray:
    """Every frame of an mp4 as uint8 (n, height, width, 3), decoded by ffmpeg (no resampling, no resize)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", path,
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough", "-"]
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0:
        raise EncodeError(f"ffmpeg could not decode {path}: {res.stderr.decode(errors='replace')[-2000:]}")
    size = width * height * 3
    if len(res.stdout) % size:
        raise EncodeError(f"{path}: decoded {len(res.stdout)} bytes, not a whole number of {width}x{height} frames")
    return np.frombuffer(res.stdout, np.uint8).reshape(-1, height, width, 3)
