"""Real ffmpeg decoding of the shared mp4 files, checked against what ffmpeg itself reports (framemd5)."""
from __future__ import annotations

import hashlib
import os
import subprocess

import numpy as np
import pytest

from shards.decode import DecodeError, build_command, decode_video, ffmpeg_exe
from conftest import shared_path
from shard_fixtures import make_video

SHARED = {  # file: (coded width, height, container duration) as the files' headers give them
    "bikes.mp4": (640, 272, 10.0),
    "bigbuckbunny.mp4": (1280, 720, 5.31),
    "carphone_pristine.mp4": (176, 144, 4.0),
}


def framemd5(path: str, fps: float, size: int) -> list[tuple[float, str]]:
    """(time, md5 of the rgb24 frame) of the first source frame in each 1/fps slot: ffmpeg's own framemd5 report of
    every source frame (a plain -vf scale and crop, no sampling), the slots picked here."""
    vf = f"scale={size}:{size}:force_original_aspect_ratio=increase,crop={size}:{size}"
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", path, "-map", "0:v:0", "-vf", vf,
                          "-pix_fmt", "rgb24", "-f", "framemd5", "-"], check=True, capture_output=True, text=True)
    rows, tb = [], None
    for line in out.stdout.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = int(num) / int(den)
        elif line and not line.startswith("#"):
            _, _, pts, _, _, md5 = [c.strip() for c in line.split(",")]
            rows.append((int(pts) * tb, md5))
    rows.sort()
    slots = [int(np.floor(t * fps + 1e-9)) for t, _ in rows]
    return [r for i, r in enumerate(rows) if i == 0 or slots[i] > slots[i - 1]]


@pytest.mark.parametrize("name", sorted(SHARED))
@pytest.mark.parametrize("fps", [1.0, 2.0])
def test_frames_and_times_match_ffmpeg(name, fps):
    path = str(shared_path("videos", name))
    size = 64
    dec = decode_video(path, fps=fps, size=size)
    ref = framemd5(path, fps, size)
    assert len(dec.frames) == len(ref) > 0
    assert dec.times == pytest.approx([t for t, _ in ref], abs=1e-6)
    assert [hashlib.md5(f.tobytes()).hexdigest() for f in dec.frames] == [m for _, m in ref]
    w, h, duration = SHARED[name]
    assert (dec.width, dec.height) == (w, h)
    assert dec.duration == pytest.approx(duration, abs=0.01)
    assert dec.frames[0].shape == (size, size, 3) and dec.frames[0].dtype == np.uint8
    assert not dec.damage
    # the fps grid covers the whole video: one frame per period, none past the end
    assert len(dec.frames) == pytest.approx(duration * fps, abs=1.0)


def test_one_ffmpeg_call_with_the_documented_filters():
    cmd = build_command("/x/in.mp4", 1.0, 224, threads=1)
    assert cmd[0] == ffmpeg_exe()
    graph = cmd[cmd.index("-filter_complex") + 1]
    for part in ("select=", "prev_selected_t", "scale=224:224:force_original_aspect_ratio=increase", "crop=224:224", "showinfo"):
        assert part in graph
    assert cmd[cmd.index("-pix_fmt") + 1] == "rgb24" and "pipe:" in cmd


def test_transform_sees_every_frame_once():
    path = str(shared_path("videos", "carphone_pristine.mp4"))
    seen = []
    dec = decode_video(path, 1.0, 32, transform=lambda a: seen.append(a.shape) or len(seen))
    assert dec.frames == [1, 2, 3, 4] and seen == [(32, 32, 3)] * 4


def test_centre_crop_keeps_the_middle(tmp_path):
    # left third red, middle green, right third blue: a 3:1 frame cropped to a square keeps only green
    src = tmp_path / "bands.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=red:s=100x100:d=2,format=rgb24[a];color=green:s=100x100:d=2,format=rgb24[b];"
                    "color=blue:s=100x100:d=2,format=rgb24[c];[a][b][c]hstack=3",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p", str(src)], check=True)
    dec = decode_video(str(src), 1.0, 48)
    mean = dec.frames[0].reshape(-1, 3).mean(0)
    assert mean[1] > 100 and mean[0] < 30 and mean[2] < 30
    assert (dec.width, dec.height) == (300, 100)


def test_garbage_and_empty_files_are_corrupt(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(DecodeError) as e:
        decode_video(str(bad))
    assert e.value.reason == "corrupt_video"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError):
        decode_video(str(empty))


def test_truncated_file_keeps_the_frames_before_the_cut(tmp_path):
    full = make_video(str(tmp_path / "full.mp4"), 10, faststart=True)
    cut = tmp_path / "cut.mp4"
    data = open(full, "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    dec = decode_video(str(cut), 1.0, 32)
    assert dec.damage, "ffmpeg's complaints about the cut file are reported"
    assert 0 < len(dec.frames) < 10 and dec.duration == pytest.approx(10.0)
    ref = decode_video(full, 1.0, 32)
    # what did decode is exactly the start of the intact file
    k = len(dec.frames) - 1  # the last frame before a cut may be a partial picture
    assert all(np.array_equal(a, b) for a, b in zip(dec.frames[:k], ref.frames[:k]))
    os.remove(full)
