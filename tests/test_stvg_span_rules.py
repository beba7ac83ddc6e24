"""Each STVG head's span decision on hand-made scores is the rule its paper gives (issue 34):
- FSM (Sec. III, after TubeDETR): t_s, t_e maximise the joint start x end probability with t_s <= t_e (the other
  combinations masked out) -- finetune/heads/fsm.py decode_span;
- WINNER: the chosen clip cell (a, z) of segments a..z is the span, from the first feature frame of segment a to the
  end of segment z's last frame -- finetune/heads/winner.py _sted with heads/stvg.py's native_spans;
- VCMA (Sec. 3.6): "the segment with the highest z^T" -- read as the contiguous run of largest sum of mean-centred
  z^T (finetune/predict.py best_segment, what predict_stvg applies to a head's frame_scores)."""
from __future__ import annotations

import numpy as np
import torch

from finetune.heads.fsm import decode_span
from finetune.heads.winner import _sted
from finetune.predict import best_segment


def test_fsm_span_is_the_argmax_of_the_joint_start_end_probability_with_start_before_end():
    # start peaks at 4, end peaks at 1: the independent argmaxes (4, 1) are an invalid pair; among t_s <= t_e
    # the best joint product is (1, 1) (0.3*0.6=.18) vs (4, 4) (0.4*0.1=.04), (0, 1) (0.2*0.6=.12)
    ps = torch.tensor([[0.2, 0.3, 0.05, 0.05, 0.4]])
    pe = torch.tensor([[0.05, 0.6, 0.15, 0.1, 0.1]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    assert decode_span(ps.log(), pe.log(), mask).tolist() == [[1, 1]]
    # brute force over every valid pair on random logits, padded frames never chosen
    g = torch.Generator().manual_seed(0)
    s, e = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    got = decode_span(s, e, mask).tolist()
    for b in range(3):
        n = int(mask[b].sum())
        p_s, p_e = s[b, :n].softmax(0), e[b, :n].softmax(0)
        best = max(((i, j) for i in range(n) for j in range(i, n)), key=lambda ij: p_s[ij[0]] * p_e[ij[1]])
        assert tuple(got[b]) == best


def test_winner_span_is_its_clip_cell_in_native_frames():
    # 6 feature frames at native frames 0, 5, 10, ... in 3 segments of 2 frames; the chosen cell (a=1, z=2)
    seg = torch.tensor([[0, 0, 1, 1, 2, 2]])
    a, z = torch.tensor([1]), torch.tensor([1])
    inside = (seg >= a[:, None]) & (seg <= z[:, None])
    frame_ids = torch.tensor([[0, 5, 10, 15, 20, 25]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    # segment 1 = feature frames 2, 3: native [10, 20) (frame 15 stands until the next feature frame, 20)
    assert _sted(inside, mask, frame_ids).tolist() == [[10, 20]]
    z = torch.tensor([2])   # to the video's end: its last valid frame stands for itself alone
    inside = (seg >= a[:, None]) & (seg <= z[:, None])
    assert _sted(inside, mask, frame_ids).tolist() == [[10, 26]]


def test_vcma_span_is_the_segment_of_highest_temporal_assignment():
    # a Gaussian z^T centred at frame 6 of 12 (sigma 1.5): the run above the video's mean, around the centre
    t = np.arange(12)
    zt = np.exp(-0.5 * ((t - 6) / 1.5) ** 2)
    a, b = best_segment(zt)
    assert a <= 6 <= b and (a, b) == (4, 8), (a, b)
    # two bumps far apart: the larger mass wins, not the single highest frame
    zt = np.array([0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0.7, 0.8, 0.7, 0.75, 0, 0, 0])
    assert best_segment(zt) == (9, 12)
