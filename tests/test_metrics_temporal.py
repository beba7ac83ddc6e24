"""Temporal metrics on hand-worked cases: DiDeMo, Charades-STA (2D-TAN), MiningYouTube IoU/IoD."""
import collections
import json

import numpy as np
import pytest

from conftest import shared_path
from grounding.metrics import charades_metrics, didemo_chunk_iou, didemo_metrics, frame_iou_iod, nms_1d, segment_iou


def test_didemo_chunk_iou_inclusive():
    assert didemo_chunk_iou([0, 0], [0, 0]) == 1.0
    assert didemo_chunk_iou([0, 1], [1, 2]) == pytest.approx(1 / 3)  # 1 shared chunk of 3
    assert didemo_chunk_iou([0, 0], [5, 5]) == 0.0
    assert didemo_chunk_iou([6, 7], [0, 5]) == 0.0  # out of range: no overlap, no error


def test_didemo_metrics_hand_worked():
    ranked = [
        np.array([[0, 0], [1, 1], [2, 2]]),  # ious [1,1,0,0] -> top3 mean 2/3; ranks [1,1,2,3] -> mean 4/3
        np.array([[3, 3], [6, 7]]),  # all annotators agree on the top-1
        np.zeros((0, 2), dtype=int),  # no prediction
    ]
    times = [np.array([[0, 0], [0, 0], [1, 1], [2, 2]]), np.array([[3, 3]] * 4), np.array([[1, 2]] * 4)]
    m = didemo_metrics(ranked, times)
    assert m["R@1"] == pytest.approx(1 / 3)
    assert m["R@5"] == pytest.approx(2 / 3)
    assert m["mIoU"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_didemo_fewer_annotators_and_unranked_truth():
    # one annotator: mean over what there is; the truth at rank 2
    m = didemo_metrics([np.array([[0, 0], [0, 1]])], [np.array([[0, 1]])])
    assert (m["R@1"], m["R@5"], m["mIoU"]) == (0.0, 1.0, pytest.approx(0.5))
    # truth missing from the ranked list: rank infinity, never recalled
    m = didemo_metrics([np.array([[0, 0]])], [np.array([[4, 5]] * 4)])
    assert (m["R@1"], m["R@5"], m["mIoU"]) == (0.0, 0.0, 0.0)


def test_didemo_reproduces_official_prior_numbers():
    """LocalizingMoments' utils/eval.py prints R@1 0.186842 and IoU 0.252216 for the moment-frequency prior on
    val; both depend only on the top-1 moment, the most frequent one."""
    val = json.loads(shared_path("benchmarks", "didemo", "val_data.json").read_text())
    freq = collections.Counter(tuple(t) for d in val for t in d["times"])
    prior = np.array(sorted(freq, key=lambda m: -freq[m]))
    m = didemo_metrics([prior] * len(val), [np.array(d["times"]) for d in val])
    assert m["R@1"] == pytest.approx(0.186842, abs=1e-6)
    assert m["mIoU"] == pytest.approx(0.252216, abs=1e-6)


def test_segment_iou_edge_cases():
    assert segment_iou([0, 10], [5, 15])[0, 0] == pytest.approx(1 / 3)
    assert segment_iou([5, 5], [0, 10])[0, 0] == 0.0  # zero-length prediction
    assert segment_iou([3, 3], [3, 3])[0, 0] == 0.0  # empty union: 0, not NaN
    assert segment_iou([20, 30], [0, 10])[0, 0] == 0.0
    assert segment_iou([[0, 10], [0, 5]], [[0, 10], [5, 10]]).shape == (2, 2)


def test_nms_1d():
    kept = nms_1d([[0, 10], [1, 10], [20, 30]], 0.5)  # overlap 9/10 > 0.5 suppressed
    np.testing.assert_array_equal(kept, [[0, 10], [20, 30]])
    np.testing.assert_array_equal(nms_1d([[0, 10], [20, 30], [40, 50]], 0.5, top_k=2), [[0, 10], [20, 30]])
    assert len(nms_1d(np.zeros((0, 2)), 0.5)) == 0


def test_charades_metrics_hand_worked():
    ranked = [
        np.array([[20, 30], [0, 6], [0, 10]]),  # clipped to [12,12] (IoU 0); [0,10] removed by NMS against [0,6]
        np.array([[2, 4]]),
        np.zeros((0, 2)),
    ]
    gt = np.array([[0, 10], [2, 4], [1, 3]])
    m = charades_metrics(ranked, gt, durations=np.array([12.0, 30.0, 30.0]))
    for t in (0.3, 0.5, 0.7):
        assert m[f"R1@{t}"] == pytest.approx(1 / 3)
    assert m["R5@0.3"] == pytest.approx(2 / 3)
    assert m["R5@0.5"] == pytest.approx(2 / 3)  # IoU 0.6 > 0.5
    assert m["R5@0.7"] == pytest.approx(1 / 3)
    assert m["mIoU"] == pytest.approx(1 / 3)
    # without NMS the [0,10] moment survives in the top 5
    m = charades_metrics(ranked, gt, durations=np.array([12.0, 30.0, 30.0]), nms_thresh=None)
    assert m["R5@0.7"] == pytest.approx(2 / 3)


def test_charades_threshold_is_strict():
    m = charades_metrics([np.array([[0, 5]])], np.array([[0, 10]]))  # IoU exactly 0.5
    assert m["R1@0.3"] == 1.0 and m["R1@0.5"] == 0.0 and m["mIoU"] == 0.5


def test_frame_iou_iod_hand_worked():
    gt = [np.array([1, 1, 0, 0, 2, 2]), np.array([0, 0])]
    pred = [np.array([1, 0, 0, 2, 2, 2]), np.array([1, 1])]
    m = frame_iou_iod(gt, pred)
    # video 1: IoU per class (0,1,2) = 1/3, 1/2, 2/3; IoD = 1/2, 1, 2/3. video 2: background never hit -> 0
    assert m["IoU"] == pytest.approx(((1 / 3 + 1 / 2 + 2 / 3) / 3 + 0) / 2)
    assert m["IoD"] == pytest.approx(((1 / 2 + 1 + 2 / 3) / 3 + 0) / 2)
    assert m["IoU_no_bg"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["IoD_no_bg"] == pytest.approx((1 + 2 / 3) / 2)


def test_metric_input_errors():
    with pytest.raises(ValueError):
        didemo_metrics([], [])
    with pytest.raises(ValueError):
        charades_metrics([np.zeros((0, 2))], np.zeros((2, 2)))
    with pytest.raises(ValueError):
        frame_iou_iod([np.array([0, 1])], [np.array([0])])


def test_frame_action_accuracy_and_pool_chance_exact():
    from grounding.metrics.actions import frame_accuracy, obj, pool_chance, verb

    truth = ["cut red cube", "cut red cube", "stir blue bowl", "pour red cube"]
    pred = ["cut red cube", "background", "stir red cube", "cut red cube"]
    assert frame_accuracy(truth, pred) == 0.25
    assert frame_accuracy(truth, pred, verb) == 0.5     # frames 0 and 2 (background is never right)
    assert frame_accuracy(truth, pred, obj) == 0.5      # frames 0 and 3
    assert frame_accuracy(truth, [None] * 4) == 0.0
    assert pool_chance([4, 4, 2, 2]) == 0.375
    with pytest.raises(ValueError):
        frame_accuracy(truth, pred[:3])
