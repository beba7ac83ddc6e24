"""shards.reader: good samples decode to (U, H, W, 3) uint8; corrupt ones are counted and skipped."""
from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
from PIL import Image

from shards.reader import read_samples
from shards.tarwriter import TarWriter, frame_name


def _jpeg(value: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _sample(n: int = 3, value: int = 100) -> dict[str, bytes]:
    members = {frame_name(i): _jpeg(value + i) for i in range(n)}
    members["json"] = json.dumps({"video_id": "v", "frame_times": [float(i) for i in range(n)]}).encode()
    return members


def _write(path, samples):
    with open(path, "wb") as f:
        w = TarWriter(f)
        for key, members in samples:
            w.write(key, members)
        w.close()
    return str(path)


def test_good_and_corrupt_samples(tmp_path):
    no_frame = _sample()
    del no_frame["f01.jpg"]
    bad_jpeg = _sample()
    bad_jpeg["f02.jpg"] = b"\xff\xd8 not a jpeg"
    bad_json = _sample()
    bad_json["json"] = b"{oops"
    odd_shape = _sample()
    odd_shape["f01.jpg"] = _jpeg(10, size=8)
    a = _write(tmp_path / "a.tar", [("ok1", _sample(value=50)), ("nof", no_frame), ("badj", bad_jpeg),
                                    ("badjson", bad_json), ("shape", odd_shape), ("ok2", _sample(value=200))])
    counts = Counter()
    got = list(read_samples([a, str(tmp_path / "absent.tar")], counts))
    assert [s["key"] for s in got] == ["ok1", "ok2"]
    assert got[0]["frames"].shape == (3, 16, 16, 3) and got[0]["frames"].dtype == np.uint8
    assert abs(int(got[1]["frames"][2].mean()) - 202) <= 2
    assert got[0]["json"]["video_id"] == "v"
    assert counts == Counter(missing_frames=1, bad_jpeg=1, bad_json=1, bad_shape=1, unreadable_shard=1)


def test_truncated_shard_keeps_what_came_before(tmp_path):
    full = _write(tmp_path / "full.tar", [(f"k{i}", _sample()) for i in range(4)])
    data = open(full, "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    counts = Counter()
    got = [s["key"] for s in read_samples([str(cut)], counts)]
    assert 1 <= len(got) < 4 and got == [f"k{i}" for i in range(len(got))]
    assert sum(counts.values()) == 1   # the cut sample, whichever way the cut shows
