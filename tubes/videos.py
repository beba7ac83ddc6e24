"""What a detections file is checked against: each video's native frame rate, frame count and size, probed with
ffmpeg itself (no ffprobe ships here). A file whose frame ids, fps or boxes do not fit its video would otherwise be
matched silently to the wrong frames (tubes.regions.frames_for maps frame ids to decoded frames through the fps).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass

from common.errors import UserError

FPS_TOLERANCE = 0.006   # ffmpeg prints a rate to 0.01 (29.97 for 30000/1001): rates this close are one rate
BOX_TOLERANCE = 1.0     # pixels a box may reach past the frame's edge (detectors clip to the image; rounding)

_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: .*?, (\d{2,5})x(\d{2,5})[ ,\[].*?(\d+(?:\.\d+)?)(k?) fps")
_FRAMES = re.compile(r"frame=\s*(\d+)")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


@dataclass(frozen=True)
class VideoInfo:
    fps: float       # native frame rate (to ffmpeg's printed precision, 0.01)
    frames: int      # frames in the first video stream (its packets, counted without decoding)
    width: int       # as decoded (a 90-degree rotation tag swaps the stored size)
    height: int

    def as_dict(self) -> dict:
        return asdict(self)


def probe(path: str) -> VideoInfo:
    """One ffmpeg call that copies the video stream to nowhere: the input's stream line gives size and rate, the
    final progress line the frame count."""
    from shards.decode import ffmpeg_exe

    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", "-c", "copy",
                        "-f", "null", "-"], capture_output=True, text=True, errors="replace")
    head = r.stderr.split("Output #0", 1)[0]
    m = _STREAM.search(head)
    frames = _FRAMES.findall(r.stderr.replace("\r", "\n"))
    if r.returncode != 0 or m is None or not frames:
        tail = " | ".join(ln.strip() for ln in r.stderr.splitlines()[-2:])[:200]
        raise UserError(f"video [{path}]: ffmpeg cannot read its video stream ({tail})")
    width, height = int(m.group(1)), int(m.group(2))
    rot = _ROTATION.search(head)
    if rot and round(abs(float(rot.group(1)))) % 180 == 90:
        width, height = height, width
    fps = float(m.group(3)) * (1000 if m.group(4) else 1)
    return VideoInfo(fps, int(frames[-1]), width, height)


def check_proposals(url: str, vid: str, props, info: VideoInfo) -> None:
    """Refuse (one UserError naming the file, the video and the frame) a video's detections whose fps is not the
    video's native rate, with a frame id past its last frame, or with a box outside its frame."""
    where = f"detections file [{url} video {vid}"
    if props.fps is None:
        raise UserError(f"{where}]: no fps; frame ids count at the video's native rate, {info.fps:g} fps")
    if abs(props.fps - info.fps) > FPS_TOLERANCE:
        raise UserError(f"{where}]: fps {props.fps:g} is not the video's native rate {info.fps:g} (frame ids count "
                        "native frames: write fps as the video's, and frame ids as native frame numbers)")
    if len(props.frames) and int(props.frames[-1]) >= info.frames:
        raise UserError(f"{where} frame {int(props.frames[-1])}]: past the video's last frame "
                        f"({info.frames} frames, ids 0..{info.frames - 1})")
    for i, f in enumerate(props.frames):
        b = props.boxes[i][props.valid[i]]
        out = ((b[:, 0] < -BOX_TOLERANCE) | (b[:, 1] < -BOX_TOLERANCE) | (b[:, 2] > info.width + BOX_TOLERANCE)
               | (b[:, 3] > info.height + BOX_TOLERANCE))
        if out.any():
            raise UserError(f"{where} frame {int(f)}]: box {[round(float(c), 2) for c in b[out.argmax()]]} lies "
                            f"outside the {info.width}x{info.height} frame")


def check_detections(url: str, videos: dict, paths: dict[str, str]) -> dict[str, VideoInfo]:
    """Probe each video of a detections file ({vid: Proposals}) at paths[vid] and check it; a video without a
    path is refused by name. Returns the probed infos."""
    infos = {}
    for vid, props in videos.items():
        if vid not in paths:
            raise UserError(f"detections file [{url} video {vid}]: no such video among the videos given")
        infos[vid] = probe(paths[vid])
        check_proposals(url, vid, props, infos[vid])
    return infos
