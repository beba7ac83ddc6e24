"""Spatial and spatio-temporal metrics on hand-worked cases: boxes, pointing game, TubeDETR's STVG protocol,
GroundingYouTube's IoU+Point and video mAP."""
import numpy as np
import pytest

from grounding.metrics import (
    Tube,
    average_precision,
    box_iou_aligned,
    iou_plus_point,
    label_runs,
    point_in_box,
    pointing_game,
    sample_frame_ids,
    stvg_query_metrics,
    summarize_stvg,
    tube_iou,
    video_map,
)
from grounding.metrics.spatiotemporal import IGNORE


def test_box_iou_and_degenerate_boxes():
    assert box_iou_aligned([0, 0, 10, 10], [5, 0, 15, 10])[0] == pytest.approx(50 / 150)
    assert box_iou_aligned([0, 0, 10, 10], [20, 20, 30, 30])[0] == 0.0
    assert box_iou_aligned([5, 5, 5, 5], [5, 5, 5, 5])[0] == 0.0  # empty union


def test_pointing_game_borders_inclusive():
    box = [0, 0, 10, 10]
    assert point_in_box([[10, 10], [0, 0], [10.01, 5], [5, -1]], [box] * 4).tolist() == [True, True, False, False]
    acc = pointing_game([[5, 5], [5, 5], [50, 5]], [box] * 3, has_point=[True, False, True])
    assert acc == pytest.approx(1 / 3)  # a frame without a point is a miss
    with pytest.raises(ValueError):
        pointing_game(np.zeros((0, 2)), np.zeros((0, 4)))


def _tubedetr_frames(start, end, video_fps, fps=5, max_len=200):
    """The sampling loop as TubeDETR's evaluators describe it, written out as a plain reference."""
    rate = fps / video_fps
    ids = [start]
    for f in range(start, end):
        if int(ids[-1] * rate) < int(f * rate):
            ids.append(f)
    if len(ids) > max_len:
        ids = [ids[(j * len(ids)) // max_len] for j in range(max_len)]
    return ids


def test_sample_frame_ids():
    assert sample_frame_ids(0, 30, 30.0).tolist() == [0, 6, 12, 18, 24]
    assert sample_frame_ids(7, 7, 30.0).tolist() == [7]
    long = sample_frame_ids(0, 3000, 25.0)  # 600 frames at 5 fps -> 200, every third
    assert len(long) == 200 and long[:3].tolist() == [0, 15, 30]
    rng = np.random.default_rng(0)
    for _ in range(200):
        fps = float(rng.choice([29.97002997002997, 24.0, 25.0, 15.0, 10.0, 23.976]))
        s = int(rng.integers(0, 500))
        e = s + int(rng.integers(0, 4000))
        assert sample_frame_ids(s, e, fps).tolist() == _tubedetr_frames(s, e, fps)


def test_stvg_query_hand_worked():
    frames = sample_frame_ids(0, 10, 5.0)  # every frame 0..9
    gt_boxes = {f: np.array([0.0, 0, 10, 10]) for f in range(2, 6)}
    pred_boxes = {4: np.array([0.0, 0, 10, 10]), 5: np.array([5.0, 0, 15, 10])}
    m = stvg_query_metrics(frames, (2, 6), (4, 8), gt_boxes, pred_boxes)
    assert m["tIoU"] == pytest.approx(2 / 6)
    assert m["vIoU"] == pytest.approx((1 + 1 / 3) / 6)  # frames 4,5 in both; hull [2, 8) has 6 sampled frames
    assert stvg_query_metrics(frames, (2, 6), (4, 8)) == {"tIoU": pytest.approx(1 / 3)}  # no boxes: tIoU only
    disjoint = stvg_query_metrics(frames, (0, 2), (5, 8), gt_boxes, {})
    assert disjoint == {"tIoU": 0.0, "vIoU": 0.0}
    empty = stvg_query_metrics(frames, (2, 6), (4, 4), gt_boxes, {})  # zero-length predicted tube
    assert empty == {"tIoU": 0.0, "vIoU": 0.0}
    with pytest.raises(KeyError, match="frame 5"):
        stvg_query_metrics(frames, (2, 6), (4, 8), gt_boxes, {4: pred_boxes[4]})


def test_summarize_stvg_strict_thresholds():
    rows = [{"tIoU": t, "vIoU": v} for t, v in [(0.5, 0.3), (0.5, 0.31), (1.0, 0.5), (0.0, 0.6)]]
    s = summarize_stvg(rows)
    assert s["m_tIoU"] == pytest.approx(0.5)
    assert s["m_vIoU"] == pytest.approx(1.71 / 4)
    assert s["vIoU@0.3"] == pytest.approx(3 / 4) and s["vIoU@0.5"] == pytest.approx(1 / 4)
    assert set(summarize_stvg([{"tIoU": 0.2}])) == {"m_tIoU"}


def test_label_runs():
    assert label_runs(np.array([0, 1, 1, 0, 2, 2, 2, 1])) == [(1, 1, 3), (2, 4, 7), (1, 7, 8)]
    assert label_runs(np.zeros(3, dtype=int)) == [] and label_runs(np.zeros(0, dtype=int)) == []


def test_tube_iou_leaves_out_unboxed_seconds():
    b = [0.0, 0, 10, 10]
    pred = Tube(np.array([0, 1, 2, 3]), np.array([b] * 4))
    gt = Tube(np.array([1, 2, 3]), np.array([b, b, [np.nan] * 4]))  # second 3 annotated without a box
    assert tube_iou(pred, gt) == pytest.approx(200 / 300)
    far = Tube(np.array([10]), np.array([b]))
    assert tube_iou(far, gt) == 0.0


def test_average_precision_all_point():
    assert average_precision(np.array([1, 0, 1]), 2) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision(np.array([]), 3) == 0.0
    assert average_precision(np.array([1, 1]), 4) == pytest.approx(0.5)


def test_video_map_hand_worked():
    b = [0.0, 0, 10, 10]
    half = [0.0, 0, 10, 3]  # box IoU 0.3 with b

    def tube(secs, box):
        return Tube(np.array(secs), np.array([box] * len(secs)))

    gts = [(1, "a", tube([0, 1, 2], b)), (1, "b", tube([0, 1, 2], b)), (2, "a", tube([5], b))]
    dets = [
        (1, "a", 0.9, tube([0, 1, 2], b)),  # IoU 1
        (1, "a", 0.85, tube([0, 1, 2], b)),  # duplicate: the tube is taken -> FP
        (1, "c", 0.8, tube([0, 1], b)),  # wrong video -> FP
        (1, "b", 0.7, tube([0, 1, 2], half)),  # IoU 0.3
        (3, "a", 0.99, tube([0], b)),  # class without ground truth: ignored
    ]
    m = video_map(dets, gts, thresholds=(0.2, 0.3, 0.5))
    # class 1: tp [1,0,0,1] at 0.2 -> AP 0.5 + 0.5 * 2/4; at 0.3 and 0.5 (strict) -> 0.5. class 2: no detection -> 0
    assert m[0.2] == pytest.approx((0.75 + 0) / 2)
    assert m[0.3] == pytest.approx(0.25) and m[0.5] == pytest.approx(0.25)


def test_iou_plus_point_hand_worked():
    g = np.array([0, 1, 1, 1, IGNORE, 2])
    p = np.array([1, 1, 1, 0, 2, 2])
    hit = np.array([False, True, False, True, False, True])
    # class 1: correct only at index 1 (index 2 misses the box) over union {0,1,2,3}; class 2: 1/1
    assert iou_plus_point([g, np.zeros(3, int)], [p, np.ones(3, int)], [hit, np.zeros(3, bool)]) == \
        pytest.approx((1 / 4 + 1) / 2)
    with pytest.raises(ValueError):
        iou_plus_point([np.zeros(2, int)], [np.zeros(2, int)], [np.zeros(2, bool)])
