"""Windows cut by the reader from format-2 shards (one sample per video) are the samples format 1 wrote (one per
ASR segment): the same frames bit for bit after decode, frame times, window times and valid_frames, on real mp4s
(../shared/videos and lavfi ones), with videos shorter than U seconds and segments at both ends of each video."""
from __future__ import annotations

import io
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from shard_fixtures import caps, make_video, write_corpus
from shards import jpeg, reader
from shards.config import ShardConfig
from shards.decode import decode_video
from shards.pipeline import run
from shards.shard import _jpeg_encoder
from shards.tarwriter import sample_key
from shards.windows import plan_window

U, SIZE, FPS = 6, 48, 1.0


def format1_sample(path: str, start: float, end: float) -> dict:
    """The reference: what the format-1 sharder wrote for one segment (decode at fps and size, JPEG each frame,
    the U frames of plan_window), read back as the format-1 reader did."""
    dec = decode_video(path, FPS, SIZE, transform=_jpeg_encoder(ShardConfig.jpeg_quality))
    duration = dec.duration if dec.duration > 0 else dec.times[-1] + 1 / FPS
    win = plan_window(dec.times, start, end, U, FPS, video_end=duration)
    frames = np.stack([np.asarray(Image.open(io.BytesIO(dec.frames[i])).convert("RGB")) for i in win.indices])
    return {"frames": frames, "frame_times": [dec.times[i] for i in win.indices], "valid_frames": win.valid,
            "window_start": win.start, "window_end": win.end}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from conftest import shared_path

    root = tmp_path_factory.mktemp("corpus")
    videos = {"lavfi12": make_video(str(root / "lavfi12.mp4"), 12, size="320x240", source="testsrc2"),
              "lavfi3": make_video(str(root / "lavfi3.mp4"), 3, source="smptebars")}  # shorter than U seconds
    for name in ("bikes", "bigbuckbunny", "carphone_pristine"):  # 10 s, 5.3 s and 4 s: the last two < U
        src = shared_path("videos", f"{name}.mp4")
        videos[name] = str(shutil.copy(src, root / f"{name}.mp4"))
    lengths = {"lavfi12": 12.0, "lavfi3": 3.0, "bikes": 10.0, "bigbuckbunny": 5.3, "carphone_pristine": 4.0}
    captions = {vid: caps((0.0, 0.4, "at the start"), (d / 2 - 0.3, d / 2 + 0.2, "in the middle"),
                          (1.0, d - 1.0, "most of it"), (d - 0.6, d - 0.1, "at the end"))
                for vid, d in lengths.items()}
    manifest = write_corpus(str(root), videos, captions)
    out = str(root / "shards")
    summary = run(ShardConfig(manifest=manifest, output=out, distributor="sequential", progress=False,
                              window_frames=U, size=SIZE, fps=FPS, videos_per_shard=2))
    assert summary["failures"] == {} and summary["total_samples"] == 4 * len(videos)
    return {"videos": videos, "captions": captions, "shards": out}


def test_cut_windows_equal_format_1_samples(corpus):
    urls = [u for u, _ in reader.shard_urls(corpus["shards"])]
    counts = Counter()
    got = {s["key"]: s for s in reader.read_samples(urls, counts)}
    assert not counts and len(got) == 4 * len(corpus["videos"])
    short = 0
    for vid, path in corpus["videos"].items():
        c = corpus["captions"][vid]
        for seg, (start, end, text) in enumerate(zip(c["start"], c["end"], c["text"])):
            window, ref = got[sample_key(vid, seg)], format1_sample(path, start, end)
            assert window["json"]["caption"] == text and window["json"]["segment"] == seg
            assert window["frames"].shape == (U, SIZE, SIZE, 3)
            assert np.array_equal(window["frames"], ref["frames"]), (vid, seg)
            for k in ("frame_times", "valid_frames", "window_start", "window_end"):
                assert window["json"][k] == ref[k], (vid, seg, k)
            short += ref["valid_frames"] < U
    # lavfi3 (3 s) and carphone (4 s) repeat their last frame; bigbuckbunny's 5.3 s fill six 1 s slots (decode keeps
    # the first frame of each slot, shards/decode.py)
    assert short >= 2 * 4


def test_each_frame_is_decoded_once_per_video(corpus):
    """Reading a video's windows decodes each frame they hold once, however many windows share it."""
    url = reader.shard_urls(corpus["shards"])[0][0]
    before = jpeg.decoded_frames
    windows = list(reader.read_samples([url]))
    held = {(w["json"]["video_id"], t) for w in windows for t in w["json"]["frame_times"]}
    assert jpeg.decoded_frames - before == len(held) < sum(w["json"]["valid_frames"] for w in windows)


def test_a_shard_holds_each_frame_once(corpus):
    """Format 2 stores a video's frames once: the tar's frame members are the decoded frames, not U per segment."""
    import tarfile

    names = []
    for url, _ in reader.shard_urls(corpus["shards"]):
        with tarfile.open(url) as tar:
            names += tar.getnames()
    frames = Counter(n.split(".", 1)[0] for n in names if n.endswith(".jpg"))
    assert frames["lavfi12"] == 12 and frames["bikes"] == 10 and frames["lavfi3"] == 3
    assert sum(n.endswith(".json") for n in names) == len(corpus["videos"])
