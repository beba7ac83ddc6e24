"""HowTo100M as released: `python -m shards.manifest` over a folder tree of mp4/webm/mkv files, `caption.json` and
`raw_caption.json` (rolling ASR lines), and a 320 s video sharded with every window's frame times checked against
what ffmpeg reports for the source (its packets' presentation times) and every stored frame against ffmpeg's own
decode of the source at that time. Asserted through the shard reader's public output (shards.reader)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared_path
from shard_fixtures import caps
from shards.config import ShardConfig
from shards.corpus import clean_segments, read_captions
from shards.decode import ffmpeg_exe
from shards.pipeline import run
from shards.reader import read_samples, shard_urls

LONG, SIZE, FPS, U = "longvid0001", 32, 1.0, 4


def _ff(*args: str) -> bytes:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", *args], check=True,
                          capture_output=True).stdout


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """videos/<category>/<sub>/<id>.{mp4,webm,mkv}: a 320 s mp4 (bikes.mp4, 25 fps, looped by stream copy), a
    short webm and mkv, a video without captions; captions with one entry without a video."""
    root = tmp_path_factory.mktemp("howto")
    bikes = str(shared_path("videos", "bikes.mp4"))
    carphone = str(shared_path("videos", "carphone_pristine.mp4"))
    (root / "videos" / "Food" / "Bread").mkdir(parents=True)
    (root / "videos" / "Cars").mkdir(parents=True)
    long = root / "videos" / "Food" / "Bread" / f"{LONG}.mp4"
    _ff("-stream_loop", "31", "-i", bikes, "-map", "0:v:0", "-c", "copy", str(long))
    _ff("-i", carphone, "-t", "1", "-vf", "scale=64:48", "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used",
        "8", "-b:v", "100k", str(root / "videos" / "Cars" / "webm0001.webm"))
    _ff("-i", carphone, "-t", "2", "-map", "0:v:0", "-c", "copy", str(root / "videos" / "Cars" / "mkv00001.mkv"))
    _ff("-i", carphone, "-t", "1", "-map", "0:v:0", "-c", "copy", str(root / "videos" / "nocap0001.mp4"))
    # ASR segments over the whole video: a window near the start, the end and every ~8 s between
    segs = [(0.2, 1.0, "hello and welcome")] + [(s, s + 2.5, f"step {i} knead the dough")
                                                for i, s in enumerate(np.arange(7.3, 315, 8.1))]
    segs.append((318.4, 319.9, "thanks for watching"))
    captions = {LONG: caps(*segs), "webm0001": caps((0.1, 0.8, "a car")), "mkv00001": caps((0.5, 1.5, "a phone")),
                "gone0001": caps((1.0, 2.0, "no video for this one"))}
    (root / "caption.json").write_text(json.dumps(captions))
    return root, segs


def test_manifest_of_a_folder_tree(tree):
    root, _ = tree
    r = subprocess.run([sys.executable, "-m", "shards.manifest", str(root / "videos"), "--captions",
                        str(root / "caption.json"), "--out", str(root / "manifest.csv")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["videos"] == 3 and summary["by_extension"] == {".mp4": 1, ".webm": 1, ".mkv": 1}
    assert summary["videos_without_captions"] == 1 and summary["first_videos_without_captions"] == ["nocap0001"]
    assert summary["captions_without_videos"] == 1 and summary["first_captions_without_videos"] == ["gone0001"]
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    assert {r["video_id"] for r in rows} == {LONG, "webm0001", "mkv00001"}
    assert all(os.path.isfile(root / r["path"]) and not os.path.isabs(r["path"]) for r in rows)
    again = subprocess.run([sys.executable, "-m", "shards.manifest", str(root / "videos"), "--captions",
                            str(root / "caption.json"), "--out", str(root / "manifest.csv")], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr


def test_raw_caption_json_rolling_lines(tmp_path):
    """raw_caption.json: the same shape, rolling lines; each repeated word becomes one caption, keys trace back."""
    raw = {"v": {"start": [0.0, 2.0, 4.0, 6.0, 8.0], "end": [3.0, 5.0, 7.0, 9.0, 10.0],
                 "text": ["so today we are", "today we are going to\nmake bread", "going to make bread", "",
                          "first the flour"]}}
    (tmp_path / "raw_caption.json").write_text(json.dumps(raw))
    (tmp_path / "caption.json").write_text(json.dumps(raw))
    got = clean_segments("v", read_captions(str(tmp_path / "raw_caption.json"))["v"], 60.0)
    assert [(s.index, s.text) for s in got.segments] == [(0, "so today we are"), (1, "going to make bread"),
                                                         (4, "first the flour")]
    assert got.segments[1].end == 7.0 and [f.reason for f in got.failures] == ["bad_caption_text"]
    words = " ".join(s.text for s in got.segments).split()
    assert len(words) == len(set(words))  # no word of the speech twice
    same = clean_segments("v", read_captions(str(tmp_path / "caption.json"))["v"], 60.0)
    assert len(same.segments) == 4  # caption.json is taken as it is


def test_long_video_window_times_against_ffmpeg(tree, tmp_path):
    root, segs = tree
    manifest = root / "long.csv"
    manifest.write_text(f"video_id,path\n{LONG},videos/Food/Bread/{LONG}.mp4\n")
    cfg = ShardConfig(manifest=str(manifest), captions=str(root / "caption.json"), output=str(tmp_path / "out"),
                      fps=FPS, size=SIZE, window_frames=U, distributor="sequential", progress=False)
    summary = run(cfg)
    assert summary["failures"] == {}
    samples = list(read_samples([u for u, _ in shard_urls(str(tmp_path / "out"))]))
    assert len(samples) == len(segs)
    src = str(root / "videos" / "Food" / "Bread" / f"{LONG}.mp4")
    # ffmpeg's report of the source: every packet's presentation time (stream copy, nothing decoded) ...
    crc = _ff("-i", src, "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-").decode()
    tb = next(ln for ln in crc.splitlines() if ln.startswith("#tb 0:")).split(":")[1].strip()
    num, den = (int(x) for x in tb.split("/"))
    pts = np.sort([int(ln.split(",")[2]) * num / den for ln in crc.splitlines() if ln and not ln.startswith("#")])
    duration = pts[-1] + (pts[1] - pts[0])
    assert 300 <= duration <= 600
    # ... and its frames, decoded by ffmpeg itself and cut as the sharder cuts them
    raw = _ff("-i", src, "-map", "0:v:0", "-vf", f"scale={SIZE}:{SIZE}:force_original_aspect_ratio=increase,"
              f"crop={SIZE}:{SIZE}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-")
    native = np.frombuffer(raw, np.uint8).reshape(-1, SIZE, SIZE, 3).astype(np.float32)
    assert len(native) == len(pts)
    for s in samples:
        meta, frames = s["json"], s["frames"].astype(np.float32)
        t = np.asarray(meta["frame_times"], np.float64)
        seg = segs[[round(a, 3) for a, _, _ in segs].index(round(meta["asr_start"], 3))]
        assert len(t) == U and meta["valid_frames"] == U
        assert np.allclose(np.diff(t), 1 / FPS, atol=1 / 25 + 1e-6)
        assert 0 <= t[0] and t[-1] < duration and meta["window_end"] <= duration + 1e-6
        mid = (seg[0] + seg[1]) / 2
        assert t[0] <= mid + 1e-6 or t[0] == 0 and t[-1] >= min(mid, duration - 1) - 1 / FPS
        for k, tk in enumerate(t):
            i = int(np.argmin(np.abs(pts - tk)))
            assert abs(pts[i] - tk) < 1e-3  # the time of a real source frame, as ffmpeg reports it
            err = np.abs(native - frames[k]).mean((1, 2, 3))
            near = np.abs(np.arange(len(native)) - i) <= 12   # frames within half a second of it
            assert err[i] < 6 and err[i] <= err[~near].min()  # and that frame's picture, not one from elsewhere
