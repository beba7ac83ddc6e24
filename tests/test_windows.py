"""Windows of U frames around ASR segments, caption cleaning, deterministic tar members."""
from __future__ import annotations

import io
import math
import tarfile

import pytest

from shards.corpus import clean_segments
from shards.tarwriter import TarWriter, sample_key
from shards.windows import plan_window

GRID = [float(i) for i in range(60)]


def test_short_segment_gets_context_on_both_sides():
    w = plan_window(GRID, 20.0, 22.0, 16, 1.0)
    assert w.valid == 16 and len(w.indices) == 16
    assert w.indices == tuple(range(13, 29))
    assert w.start < 20.0 and w.end > 22.0          # reaches beyond the ASR boundaries
    assert 0.5 * (w.start + w.end) == pytest.approx(21.0, abs=0.5)


def test_window_is_shifted_inside_the_video():
    first = plan_window(GRID, 0.0, 1.0, 16, 1.0)
    assert first.indices[0] == 0 and first.start == 0.0
    last = plan_window(GRID, 58.0, 59.5, 16, 1.0, video_end=59.7)
    assert last.indices[-1] == 59 and last.end == pytest.approx(59.7)


def test_long_segment_keeps_its_centre():
    w = plan_window(GRID, 10.0, 50.0, 16, 1.0)
    assert w.start >= 10.0 and w.end <= 50.0
    assert 0.5 * (w.start + w.end) == pytest.approx(30.0, abs=0.5)


def test_short_video_repeats_the_last_frame():
    w = plan_window(GRID[:5], 1.0, 2.0, 16, 1.0, video_end=5.3)
    assert w.valid == 5 and w.indices == (0, 1, 2, 3, 4) + (4,) * 11
    assert w.end == pytest.approx(5.0)


def test_other_fps_uses_the_decoded_times():
    times = [0.5 * i for i in range(40)]
    w = plan_window(times, 10.0, 11.0, 8, 2.0)
    assert [times[i] for i in w.indices] == [8.5 + 0.5 * k for k in range(8)]


def test_clean_segments_counts_each_bad_kind():
    entry = {"start": [0.0, 1.0, 2.0, 3.0, 90.0, "x", 5.0], "end": [1.0, 2.0, 3.0, 4.0, 91.0, 1.0, 4.0],
             "text": ["ok", "bad \udcff bytes", "", "  spaced   out ", "late", "t", "end before start"]}
    c = clean_segments("v", entry, 60.0)
    assert [(s.index, s.text) for s in c.segments] == [(0, "ok"), (3, "spaced out")]
    assert sorted(f.reason for f in c.failures) == sorted(
        ["bad_caption_text", "bad_caption_text", "caption_past_end", "bad_caption_time", "bad_caption_time"])
    assert [f.reason for f in clean_segments("v", None, 10.0).failures] == ["no_captions"]
    assert [f.reason for f in clean_segments("v", {"start": [], "end": [], "text": []}, 10.0).failures] == ["no_captions"]
    misaligned = clean_segments("v", {"start": [0.0], "end": [1.0, 2.0], "text": ["a"]}, math.inf)
    assert [f.reason for f in misaligned.failures] == ["bad_caption_time"]


def _tar(samples) -> bytes:
    buf = io.BytesIO()
    w = TarWriter(buf)
    for key, members in samples:
        w.write(key, members)
    w.close()
    return buf.getvalue()


def test_tar_members_are_deterministic_and_ordered():
    members = {"json": b"{}", "f10.jpg": b"c", "f02.jpg": b"b", "f00.jpg": b"a"}
    a = _tar([("k__s0000", members)])
    b = _tar([("k__s0000", dict(reversed(list(members.items()))))])
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as t:
        infos = t.getmembers()
    assert [i.name for i in infos] == ["k__s0000.f00.jpg", "k__s0000.f02.jpg", "k__s0000.f10.jpg", "k__s0000.json"]
    assert {(i.mtime, i.uid, i.gid, i.uname) for i in infos} == {(0, 0, 0, "")}


def test_sample_key_never_splits_in_webdataset():
    assert sample_key("-0EjXRJjz_Y", 7) == "-0EjXRJjz_Y__s0007"
    assert sample_key("a.b/c", 12) == "a_b_c__s0012"
