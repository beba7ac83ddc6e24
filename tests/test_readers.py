"""Readers on the real benchmark files in ../shared/benchmarks and on small files in the same formats."""
import json

import numpy as np
import pytest

from conftest import shared_path
from grounding.readers import (
    InputError,
    norm_label,
    parse_srt,
    read_charades_sta,
    read_didemo,
    read_groundingyoutube,
    read_hcstvg,
    read_miningyoutube,
    read_vidstg,
    read_youcook_interactions,
)


def test_didemo_real():
    val = read_didemo(str(shared_path("benchmarks", "didemo", "val_data.json")))
    test = read_didemo(str(shared_path("benchmarks", "didemo", "test_data.json")))
    assert len(val) == 4180 and len(test) == 4021
    assert test[0].key == "1" and test[0].times.shape == (7, 2) and test[0].times.dtype == np.int64
    assert all(((q.times >= 0) & (q.times <= 5)).all() for q in val + test)


def test_didemo_rejects_bad_times(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"annotation_id": 7, "times": [[3, 1]]}]))
    with pytest.raises(InputError, match="annotation_id 7"):
        read_didemo(str(p))


def test_charades_real_clips_to_length():
    queries, dropped = read_charades_sta(str(shared_path("benchmarks", "charades_sta", "charades_sta_test.txt")))
    assert len(queries) == 3720 and dropped == []
    assert queries[0].key == "0" and queries[0].video == "3MSZA" and queries[0].sentence == "person turn a light on"
    raw_ends = [float(ln.split("##")[0].split()[2])
                for ln in shared_path("benchmarks", "charades_sta", "charades_sta_test.txt").read_text().splitlines()]
    clipped = [q for q, e in zip(queries, raw_ends) if e > q.duration]
    assert len(clipped) == 562 and all(q.end == q.duration for q in clipped)
    assert all(q.start < q.end <= q.duration for q in queries)


def test_charades_drops_empty_and_needs_durations(tmp_path):
    (tmp_path / "charades_sta_test.txt").write_text("A 1.0 5.0##a.\nB 9.0 12.0##b.\nC 0 1##c.\n")
    (tmp_path / "Charades_v1_test.csv").write_text("id,length\nA,4.0\nB,8.0\n")
    queries, dropped = read_charades_sta(str(tmp_path / "charades_sta_test.txt"))
    assert [(q.key, q.end) for q in queries] == [("0", 4.0)]
    assert dict(dropped) == {"1": "empty after clipping to the video length", "2": "no duration for video"}
    (tmp_path / "charades_sta_train.txt").write_text("A 1 2##a.\n")
    with pytest.raises(InputError, match="Charades_v1_train.csv"):
        read_charades_sta(str(tmp_path / "charades_sta_train.txt"))


def test_vidstg_real_without_boxes():
    qs = read_vidstg(str(shared_path("benchmarks", "vidstg", "test_annotations.json")))
    assert len(qs) == 10303  # the VidSTG test set size TubeDETR reports
    assert sum(q.qtype == "declarative" for q in qs) == 4610
    assert sum(q.qtype == "interrogative" for q in qs) == 5693
    first = qs[0]
    assert (first.key, first.video, first.qtype, first.span, first.tube) == ("0", "7771650716", "interrogative",
                                                                             (0, 479), (0, 390))
    assert qs[1].qtype == "declarative" and qs[1].video == first.video
    assert all(q.boxes is None for q in qs)


def test_vidstg_with_boxes_file(tmp_path):
    item = json.loads(shared_path("benchmarks", "vidstg", "test_annotations.json").read_text())[0]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([item]))
    traj = {str(f): {"bbox": [10, 20, 30, 40]} for f in range(0, 400)}
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"trajectories": {item["vid"]: {"0": traj}}}))
    qs = read_vidstg(str(ann), str(boxes))
    assert len(qs) == 2
    assert sorted(qs[0].boxes) == list(range(0, 390))  # only the tube's frames, half-open
    np.testing.assert_array_equal(qs[0].boxes[5], [10, 20, 40, 60])  # xywh -> xyxy
    boxes.write_text(json.dumps({item["vid"]: {"3": traj}}))
    with pytest.raises(InputError, match="target 0"):
        read_vidstg(str(ann), str(boxes))


def test_hcstvg_v1_and_v2(tmp_path):
    v1 = {"clip_a.mp4": {"bbox": [[1, 2, 3, 4], [2, 2, 3, 4]], "st_frame": 11, "st_time": 1.0, "ed_time": 1.1,
                         "img_num": 300, "caption": "a man walks", "width": 640, "height": 360}}
    p = tmp_path / "test.json"
    p.write_text(json.dumps(v1))
    (q,) = read_hcstvg(str(p))
    assert (q.key, q.tube, q.span, q.video_fps, q.sentence) == ("clip_a", (11, 13), (0, 299), 15.0, "a man walks")
    np.testing.assert_array_equal(q.boxes[12], [2, 2, 5, 6])
    v2 = {"clip_b.mp4": {"bbox": [[0, 0, 5, 5]], "st_frame": 3, "img_num": 400, "English": "she sits",
                         "img_size": [360, 640]}}
    p.write_text(json.dumps(v2))
    (q,) = read_hcstvg(str(p))
    assert (q.key, q.sentence, q.video_fps) == ("clip_b", "she sits", 20.0)
    p.write_text(json.dumps({"clip_c.mp4": {"bbox": [], "st_frame": 1, "img_num": 10}}))
    with pytest.raises(InputError, match="clip_c"):
        read_hcstvg(str(p))


def test_groundingyoutube_real():
    root = shared_path("benchmarks", "groundingyoutube")
    videos = read_groundingyoutube(str(root))
    assert len(videos) == 250
    v = videos["-1okAudsnAc"]
    assert v.segments[0] == (76, 82, "crack eggs")
    assert v.boxes[76] == ("crack eggs", [186.0, 244.0, 388.0, 452.0])
    assert "background" in v.pool and v.size is not None
    assert sum(len(x.segments) for x in videos.values()) == 5018
    assert sum(len(x.boxes) for x in videos.values()) == 17316
    # a path to one of the files reads the same folder
    assert read_groundingyoutube(str(root / "ground_seg.json")).keys() == videos.keys()


def test_groundingyoutube_synthetic_split_layout(tmp_path):
    truth = tmp_path / "test" / "truth"
    truth.mkdir(parents=True)
    (truth / "ground_seg.json").write_text(json.dumps(
        {"v0": [{"segment": [1.5, 4.0], "id": 0, "sentence": "cut red cube"}]}))
    (truth / "GroundingYouTubeBox.json").write_text(json.dumps(
        {"v0": {str(t): {"box": [1, 2, 3, 4], "step": "cut red cube"} for t in (2, 3, 4)}}))
    (truth / "vid2step.json").write_text(json.dumps({"v0": ["cut red cube", "background"]}))
    (truth / "id2wh.json").write_text(json.dumps({"v0": [64, 48]}))
    videos = read_groundingyoutube(str(tmp_path / "test"))
    v = videos["v0"]
    assert v.segments == [(2, 4, "cut red cube")] and sorted(v.boxes) == [2, 3, 4] and v.size == (64, 48)
    (truth / "GroundingYouTubeBox.json").write_text(json.dumps({"v9": {}}))
    with pytest.raises(InputError, match="v9"):
        read_groundingyoutube(str(truth))
    with pytest.raises(InputError, match="ground_seg.json"):
        read_groundingyoutube(str(tmp_path))


def test_youcook_interactions_real():
    frames, videos = read_youcook_interactions(str(shared_path("benchmarks", "youcook_interactions")))
    segments = json.loads(shared_path("benchmarks", "youcook_interactions", "segments.json").read_text())
    boxes = json.loads(shared_path("benchmarks", "youcook_interactions", "boxes.json").read_text())
    expected = sum(1 for vid, s, e in segments for t in range(s, e + 1) if str(t) in boxes.get(vid, {}))
    assert len(frames) == expected == 2496
    assert set(videos) == {s[0] for s in segments} | set(boxes) and len(videos) == 92
    f = frames[0]
    assert list(f.box) == boxes[f.video][str(f.second)]


def test_miningyoutube_real_and_srt_parsing(tmp_path):
    videos = read_miningyoutube(str(shared_path("benchmarks", "miningyoutube", "srt")))
    assert len(videos) == 250
    first = videos["2--rBUf69DM"][0]
    assert first == (pytest.approx(14.218), pytest.approx(29.963), "crack eggs")
    assert all("_" not in lab for ivs in videos.values() for _, _, lab in ivs)
    text = ("\ufeff1\r\n00:00:01,500 --> 00:00:03,000\r\ncrack_eggs\r\n\r\n"
            "2\r\n00:01:00,000 --> 00:01:02,250\r\nWhisk  Egg\r\n")
    assert parse_srt(text) == [(1.5, 3.0, "crack eggs"), (60.0, 62.25, "whisk egg")]
    with pytest.raises(InputError, match="no action label"):
        parse_srt("1\n00:00:01,000 --> 00:00:02,000\n")
    # GroundingYouTube's segments serve the same evaluation (inclusive seconds -> half-open)
    gyt = read_miningyoutube(str(shared_path("benchmarks", "groundingyoutube")))
    assert gyt["-1okAudsnAc"][0] == (76.0, 83.0, "crack eggs")


def test_norm_label_and_bad_json(tmp_path):
    assert norm_label(" Crack_Eggs ") == "crack eggs"
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_didemo(str(p))
    with pytest.raises(InputError, match="not found"):
        read_didemo(str(tmp_path / "missing.json"))
