"""Small real corpora for the sharder tests: mp4 files made by ffmpeg's lavfi sources, plus bad inputs."""
from __future__ import annotations

import json
import os
import subprocess

from shards.decode import ffmpeg_exe


def make_video(path: str, seconds: float, size: str = "160x120", rate: int = 25, faststart: bool = False,
               source: str = "testsrc2") -> str:
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"{source}=size={size}:rate={rate}:duration={seconds}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(rate)]
    if faststart:
        cmd += ["-movflags", "+faststart"]
    subprocess.run(cmd + [path], check=True)
    return path


def write_corpus(root: str, videos: dict[str, str], captions: dict, raw_captions: bytes | None = None) -> str:
    """manifest.csv (relative paths) + caption.json under root; returns the manifest path."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("video_id,path\n")
        for vid, path in videos.items():
            rel = os.path.relpath(path, root) if path.startswith(root) else path
            f.write(f"{vid},{rel}\n")
    with open(os.path.join(root, "caption.json"), "wb") as f:
        f.write(raw_captions if raw_captions is not None else json.dumps(captions).encode())
    return os.path.join(root, "manifest.csv")


def caps(*segments: tuple[float, float, str]) -> dict:
    return {"start": [s for s, _, _ in segments], "end": [e for _, e, _ in segments],
            "text": [t for _, _, t in segments]}


def good_corpus(root: str, n: int = 4, seconds: float = 6.0) -> str:
    """n clean videos, three ASR segments each."""
    vdir = os.path.join(root, "videos")
    os.makedirs(vdir, exist_ok=True)
    videos, captions = {}, {}
    sources = ["testsrc2", "testsrc", "smptebars", "rgbtestsrc"]
    for i in range(n):
        vid = f"vid{i:03d}"
        videos[vid] = make_video(os.path.join(vdir, f"{vid}.mp4"), seconds, source=sources[i % len(sources)])
        captions[vid] = caps((0.5, 1.5, f"first step {i}"), (2.0, 3.5, f"second step {i}"),
                             (seconds - 1.5, seconds - 0.2, f"last step {i}"))
    return write_corpus(root, videos, captions)


BAD_TEXT = "\udcff\udcfe"  # stands for raw bytes 0xff 0xfe, written into caption.json below


def bad_corpus(root: str) -> tuple[str, dict]:
    """One video per kind of bad input next to good ones; returns (manifest, expected failure counts)."""
    vdir = os.path.join(root, "videos")
    os.makedirs(vdir, exist_ok=True)
    v = {}
    v["good_a"] = make_video(os.path.join(vdir, "good_a.mp4"), 8)
    v["good_b"] = make_video(os.path.join(vdir, "good_b.mp4"), 5, source="smptebars")
    v["missing"] = os.path.join(vdir, "missing.mp4")
    v["corrupt"] = os.path.join(vdir, "corrupt.mp4")
    with open(v["corrupt"], "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    full = make_video(os.path.join(vdir, "full.mp4"), 10, faststart=True)
    v["truncated"] = os.path.join(vdir, "truncated.mp4")
    with open(full, "rb") as f, open(v["truncated"], "wb") as g:
        data = f.read()
        g.write(data[: int(len(data) * 0.5)])
    os.remove(full)
    v["zero"] = os.path.join(vdir, "zero.mp4")
    open(v["zero"], "wb").close()
    v["nocaps"] = make_video(os.path.join(vdir, "nocaps.mp4"), 3)
    captions = {
        # good_a: one caption past the end, one with non-UTF-8 bytes, two good
        "good_a": caps((0.0, 2.0, "crack eggs"), (3.0, 5.0, BAD_TEXT), (5.0, 7.5, "whisk the eggs"),
                       (20.0, 22.0, "after the end")),
        "good_b": caps((1.0, 2.0, "pour milk")),
        "missing": caps((0.0, 1.0, "never seen")),
        "corrupt": caps((0.0, 1.0, "never seen")),
        "truncated": caps((0.0, 1.0, "early part"), (9.0, 9.5, "lost part")),
        "zero": caps((0.0, 1.0, "never seen")),
    }
    raw = json.dumps(captions, ensure_ascii=False).encode("utf-8", "surrogateescape")
    manifest = write_corpus(root, v, captions, raw_captions=raw)
    expected = {"caption_past_end": 1, "bad_caption_text": 1, "missing_file": 1, "corrupt_video": 1,
                "decode_error": 1, "zero_length": 1, "no_captions": 1}
    return manifest, expected
