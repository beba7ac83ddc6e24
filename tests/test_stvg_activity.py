"""The span rule `span.rule` of STVG predictions (docs/stvg.md "The span rule"): a tube's activity (tubes/activity.py)
on hand-made region features, each head output kind decoded under head / activity / mix, the one native-span
convention, and the config's refusals. The rule on real features and a finished run: tests/test_finetune_stvg.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common import config as C
from finetune import predict as P
from finetune.config import FinetuneConfig, SpanConfig
from finetune.heads.stvg import TubeOutput, native_spans
from grounding.tube import Tube
from tubes.activity import activity_span, moving_mean, native_span, tube_activity
from tubes.pipeline import VideoTubes
from tubes.proposals import Proposals

E = np.eye(3, dtype=np.float32)


def _video():
    """10 native frames (one feature frame each), 2 proposals a frame, two linked tubes: tube 0 on proposal 0 over
    frames 2..9, at rest (e0) but for frames 5-6 (e1) and bridged at frame 7; tube 1 on proposal 1 over every
    frame, at rest (e2) but for frames 1-2 (e0)."""
    frames = np.arange(10)
    regions = np.zeros((10, 2, 3), np.float32)
    regions[:, 0] = E[0]
    regions[5:7, 0] = E[1]
    regions[:, 1] = E[2]
    regions[1:3, 1] = E[0]
    box0, box1 = np.array([0, 0, 10, 10.0]), np.array([50, 50, 60, 60.0])
    t0 = Tube(np.arange(2, 10), np.tile(box0, (8, 1)), index=np.array([0, 0, 0, 0, 0, -1, 0, 0]))
    t1 = Tube(frames, np.tile(box1, (10, 1)), index=np.ones(10, np.int64))
    boxes = np.tile(np.stack([box0, box1])[None], (10, 1, 1)).astype(np.float32)
    valid = np.ones((10, 2), bool)
    props = Proposals("v", frames, boxes, np.ones((10, 2), np.float32), valid, fps=5.0)
    return VideoTubes("v", props, regions, np.zeros((10, 3), np.float32), [t0, t1], size=(100.0, 100.0))


def test_activity_is_the_distance_from_the_tubes_rest_appearance():
    vt = _video()
    act = tube_activity(vt.regions, vt.tubes[0], vt.proposals.frames)
    # at rest 0, acted on 1 (orthogonal features); frame 7 bridged: between frame 6 (1) and frame 8 (0);
    # frames 0-1 lie before the tube: its least activity
    np.testing.assert_allclose(act, [0, 0, 0, 0, 0, 1, 1, 0.5, 0, 0], atol=1e-6)
    assert activity_span(act, vt.proposals.frames) == (5, 8)
    assert activity_span(tube_activity(vt.regions, vt.tubes[1], vt.proposals.frames), vt.proposals.frames) == (1, 3)
    # what a video holds, computed once: every tube's activity
    np.testing.assert_allclose(vt.tube_activities[0], act)
    # a tube without any region says nothing
    empty = Tube(np.arange(3), np.zeros((3, 4)), index=np.full(3, -1))
    assert not tube_activity(vt.regions, empty, vt.proposals.frames).any()


def test_native_span_is_native_spans_for_one_row():
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = np.sort(rng.choice(200, size=int(rng.integers(1, 20)), replace=False))
        a = int(rng.integers(len(ids)))
        b = int(rng.integers(a, len(ids)))
        batched = native_spans(torch.from_numpy(ids)[None], torch.tensor([a]), torch.tensor([b]),
                               torch.tensor([len(ids)]))[0].tolist()
        assert native_span(ids, a, b) == tuple(batched)


def test_moving_mean_keeps_length_and_means():
    x = np.array([0, 0, 3, 0, 0.0])
    np.testing.assert_allclose(moving_mean(x, 3), [0, 1, 1, 1, 0])
    np.testing.assert_allclose(moving_mean(x, 1), x)


@pytest.mark.parametrize("kind", ["tube_scores", "region_scores", "boxes"])
def test_each_output_kind_takes_its_span_by_the_rule(kind):
    """The head's frame scores point at frames 0-3; its tube choice is tube 0, whose object is acted on at 5-6."""
    vt = _video()
    frames = vt.proposals.frames
    ids = np.full((10, 2), -1)
    ids[2:, 0] = 0
    ids[7, 0] = -1
    ids[:, 1] = 1
    scores = torch.tensor([[1.0, 1, 1, 1, 0, 0, 0, 0, 0, 0]])
    out = TubeOutput(frame_scores=scores)
    if kind == "tube_scores":
        out.tube_scores = torch.tensor([[2.0, 1.0]])
    elif kind == "region_scores":
        out.region_scores = torch.from_numpy(np.where(ids == 0, 1.0, 0.0)[None].astype(np.float32))
    else:
        out.boxes = torch.from_numpy(np.tile(np.array([0, 0, 10, 10.0], np.float32), (1, 10, 1)))
    head = P.stvg_tube(out, 0, vt, frames, ids, SpanConfig("head"))
    assert head.span == (0, 4)
    act = P.stvg_tube(out, 0, vt, frames, ids, SpanConfig("activity"))
    assert act.span == (5, 8)
    assert P.stvg_tube(out, 0, vt, frames, ids, None).span == head.span
    # mix: the head's scores weigh in by span.weight
    assert P.stvg_tube(out, 0, vt, frames, ids, SpanConfig("mix", weight=0.0)).span == (5, 8)
    assert P.stvg_tube(out, 0, vt, frames, ids, SpanConfig("mix", weight=100.0)).span == (0, 4)
    # the boxes stay the head's tube's (boxes: the head's own regression)
    np.testing.assert_allclose(act.boxes, np.tile([0, 0, 10, 10.0], (len(act.frames), 1)))


def test_span_settings_are_refused_in_one_line():
    base = ["checkpoint=x", "dataset.kind=synthetic_stvg", "dataset.root=x", "head=vcma"]
    cfg = C.load(FinetuneConfig, None, base + ["span.rule=activity", "span.smooth=3"])
    assert cfg.span == SpanConfig("activity", 1.0, 3)
    from finetune.config import validate

    validate(cfg)
    for bad, match in ((["span.rule=first"], "span.rule must be one of"), (["span.smooth=0"], "span.smooth"),
                       (["span.weight=-1", "span.rule=mix"], "span.weight")):
        with pytest.raises(C.ConfigError, match=match):
            validate(C.load(FinetuneConfig, None, base + bad))
    with pytest.raises(C.ConfigError, match="ranks moments"):
        validate(C.load(FinetuneConfig, None, ["checkpoint=x", "dataset.root=x", "head=wsra", "span.rule=activity"]))


def test_region_activity_is_each_regions_value_on_its_tube_standardised():
    from tubes.activity import region_activity

    vt = _video()
    ra = region_activity(vt.regions, vt.tubes, vt.proposals.frames)
    raw = np.zeros((10, 2))
    on = np.zeros((10, 2), bool)
    raw[2:, 0] = tube_activity(vt.regions, vt.tubes[0], vt.proposals.frames)[2:]
    on[2:, 0] = True
    on[7, 0] = False                                     # bridged: no region there
    raw[:, 1] = tube_activity(vt.regions, vt.tubes[1], vt.proposals.frames)
    on[:, 1] = True
    v = raw[on]
    np.testing.assert_allclose(ra[on], (v - v.mean()) / v.std(), atol=1e-5)
    assert not ra[~on].any()


def test_an_stvg_batch_carries_each_regions_activity():
    from finetune.stvg_batches import video_batch
    from tubes.activity import region_activity

    vt = _video()
    batch = video_batch([vt, vt], max_frames=5)
    full = region_activity(vt.regions, vt.tubes, np.arange(10))
    rows = batch.geometry.frame_ids[0].numpy()
    np.testing.assert_allclose(batch.geometry.activity[1].numpy(), full[rows], atol=1e-6)


def test_the_busier_tube_wins_where_the_words_fit_both():
    from tubes.activity import choose_tube, tube_peak

    vt = _video()
    frames = vt.proposals.frames
    # tube 0 is acted on for 2.5 frames' worth, tube 1 for 2: their peaks over their top 3 frames of 10
    acts = [tube_activity(vt.regions, t, frames) for t in vt.tubes]
    assert tube_peak(acts[0], share=0.3) == pytest.approx(2.5 / 3)
    assert tube_peak(acts[1], share=0.3) == pytest.approx(2 / 3)
    assert tube_peak(acts[1]) == pytest.approx(1.0)                                      # top quarter: 2 frames
    assert choose_tube(np.array([1.0, 1.0]), np.array([0.2, 0.9]), 1.0) == 1
    assert choose_tube(np.array([1.0, 0.0]), np.array([0.2, 0.9]), 0.0) == 0           # weight 0: the head's
    assert choose_tube(np.array([1.0, 0.0, 0.5]), np.array([0.0, 0.0, 5.0]), 1.0) == 2
    assert choose_tube(np.array([1.0, -np.inf]), np.array([0.0, 9.0]), 10.0) == 0      # out of the span: out


def test_otsu_threshold_and_a_centred_best_segment_on_hand_numbers():
    """Another cut of one activity: best_segment above a given centre instead of the mean, at Otsu's threshold."""
    from tubes.activity import best_segment, otsu_threshold

    assert otsu_threshold([0, 0, 0, 1, 1, 10, 10, 10]) == 5.5     # two groups: {0, 0, 0, 1, 1} and {10, 10, 10}
    assert otsu_threshold([3, 3]) == 3.0
    act = np.array([0] * 6 + [1, 1, 0, 4, 4] + [0] * 6, float)  # mean 10/17: the 1s join the 4s over the dip
    assert best_segment(act) == (6, 10)
    assert otsu_threshold(act) == 2.5 and best_segment(act, otsu_threshold(act)) == (9, 10)  # the 4s alone
    act = np.array([0, 0, 2, 2, 1, 3, 3, 0, 0, 0], float)
    assert best_segment(act, otsu_threshold(act)) == (2, 6)     # cut at 1.5: 0.5 + 0.5 - 0.5 + 1.5 + 1.5
    assert best_segment(act, 2.0) == (5, 6)                      # cut at 2: only the 3s are above
