"""WSRA losses (finetune/losses_wsra.py) on cases worked out by hand, the top/last-K sampling's choices, and the
head's composition of Eq. 11 with each weight switchable."""
from __future__ import annotations

import math

import pytest
import torch

from finetune import losses_wsra as L
from finetune.config import FinetuneConfig
from finetune.heads.wsra import WsraConfig
from finetune.heads import TextBatch, TrainBatch, VideoBatch, build_head

B = torch.tensor


def test_referring_attention_is_a_softmax_over_valid_frames():
    alpha = L.referring_attention(B([[0.0, math.log(3.0), 7.0]]), B([[True, True, False]]))
    assert alpha.tolist()[0] == pytest.approx([0.25, 0.75, 0.0])


def test_foreground_background_eq1():
    v = B([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])           # the third frame is padding
    fg, bg = L.foreground_background(v, B([[0.25, 0.75, 0.0]]), B([[True, True, False]]))
    assert fg.tolist()[0] == pytest.approx([0.25, 0.75])
    # 1/(T-1) sum (1 - alpha_t) v_t with T = 2 valid frames: 0.75 [1, 0] + 0.25 [0, 1]
    assert bg.tolist()[0] == pytest.approx([0.75, 0.25])


def test_loss_bg_eq3():
    # gamma (s_n - s_p + m) = 10 (0.3 - 0.8 + 0.2) = -3 and 10 (0.5 - 0.6 + 0.2) = 1
    got = L.loss_bg(B([0.8, 0.6]), B([0.3, 0.5]), margin=0.2, gamma=10.0)
    assert float(got) == pytest.approx(math.log(1 + math.exp(-3) + math.exp(1)), abs=1e-6)


def _sim_row0(values):
    sim = torch.zeros(len(values), len(values))
    sim[0] = B(values)
    return sim


def test_top_last_k_drops_the_most_and_least_similar():
    # row 0's others by similarity: j=1 (.9), 4 (.7), 3 (.5), 5 (.3), 2 (.1)
    sim = _sim_row0([1.0, 0.9, 0.1, 0.5, 0.7, 0.3])
    neg = L.top_last_k_negatives(sim, top_k=1, last_k=1)
    assert torch.nonzero(neg[0]).flatten().tolist() == [3, 4, 5]
    neg = L.top_last_k_negatives(sim, top_k=2, last_k=2)
    assert torch.nonzero(neg[0]).flatten().tolist() == [3]
    assert not neg.diagonal().any()                         # a query is never its own negative
    neg = L.top_last_k_negatives(sim, top_k=0, last_k=0)
    assert torch.nonzero(neg[0]).flatten().tolist() == [1, 2, 3, 4, 5]


def test_top_last_k_shrinks_the_last_cut_first_when_too_few_remain():
    sim = _sim_row0([1.0, 0.9, 0.1, 0.5, 0.7, 0.3])
    # 5 others, K = 3 + 2 would keep none: the last cut gives way, j=5 (.3, the 4th) survives
    assert torch.nonzero(L.top_last_k_negatives(sim, 3, 2)[0]).flatten().tolist() == [5]
    # with 5 + 2 the top cut must give way too: only the least similar is left
    assert torch.nonzero(L.top_last_k_negatives(sim, 5, 2)[0]).flatten().tolist() == [2]


def test_top_last_k_respects_candidates_and_ties():
    sim = _sim_row0([1.0, 0.5, 0.5, 0.5, 0.5])
    cand = ~torch.eye(5, dtype=torch.bool)
    cand[0, 4] = False                                       # e.g. a clip of the same video
    neg = L.top_last_k_negatives(sim, 1, 1, cand)
    assert torch.nonzero(neg[0]).flatten().tolist() == [2]   # ties in index order: 1 is "top", 3 is "last"


def test_loss_vas_eq5():
    s_pos = B([0.6, 0.5])
    s_neg = B([[0.0, 0.5], [0.9, 0.0]])                      # [i, j] = psi(t^j, v_f^i)
    neg = B([[False, True], [True, False]])
    # row 0: max(0, .2 + .5 - .6) = .1; row 1: max(0, .2 + .9 - .5) = .6; mean over the 2 kept pairs
    assert float(L.loss_vas(s_pos, s_neg, neg, 0.2)) == pytest.approx(0.35)
    none = torch.zeros(2, 2, dtype=torch.bool)
    assert float(L.loss_vas(s_pos, s_neg, none, 0.2)) == 0.0


def test_loss_ins_vas_eq6():
    alpha = torch.zeros(2, 2, 2)
    phi = torch.zeros(2, 2, 2)
    alpha[0, 0], phi[0, 0] = B([0.5, 0.5]), B([0.8, 0.4])    # alpha+ psi+ of video 0: [.4, .2]
    alpha[0, 1], phi[0, 1] = B([0.25, 0.75]), B([0.4, 0.8])  # alpha- psi- : [.1, .6]
    alpha[1, 1], phi[1, 1] = B([1.0, 0.0]), B([0.9, 0.3])    # video 1 has one valid frame
    alpha[1, 0], phi[1, 0] = B([1.0, 0.0]), B([0.5, 0.9])
    neg = B([[False, True], [True, False]])
    mask = B([[True, True], [True, False]])
    # hinges (m = .1): video 0: max(0, .1 + .1 - .4) = 0, max(0, .1 + .6 - .2) = .5; video 1: max(0, .1 + .5 - .9)
    # = 0 (its padded frame does not count): mean over 3 terms
    assert float(L.loss_ins_vas(alpha, phi, neg, mask, 0.1)) == pytest.approx(0.5 / 3)


def test_cross_video_attention_eqs7_8_and_loss_crov_eq9():
    u = B([[[1.0, 0.0], [0.0, 1.0]]])
    v_f = B([[1.0, 0.0]])
    u_f, u_b = L.cross_video_attention(u, B([[True, True]]), v_f)
    g = math.e / (math.e + 1)                                # softmax([cos 1, cos 0])
    assert u_f.tolist()[0] == pytest.approx([g, 1 - g], abs=1e-6)
    assert u_b.tolist()[0] == pytest.approx([1 - g, g], abs=1e-6)
    norm = math.hypot(g, 1 - g)
    expected = 0.7 + (1 - g) / norm - g / norm              # m + cos(u_b, v_f) - cos(u_f, v_f) > 0
    # a second row with a large hinge but gate 0 must not count
    u_f2 = torch.cat([u_f, B([[0.0, 1.0]])])
    u_b2 = torch.cat([u_b, B([[1.0, 0.0]])])
    v_f2 = torch.cat([v_f, B([[1.0, 0.0]])])
    got = L.loss_crov(u_f2, u_b2, v_f2, B([1.0, 0.0]), margin=0.7)
    assert float(got) == pytest.approx(expected, abs=1e-6)
    assert float(L.loss_crov(u_f, u_b, v_f, B([1.0]), margin=0.2)) == 0.0   # already separated by more than m


def test_crov_gate_eq10():
    assert L.crov_gate(B([0.95, 0.9, 0.5]), 0.9).tolist() == [1.0, 0.0, 0.0]


def test_video_query_nce_both_directions_and_same_video_rows():
    pooled = B([[1.0, 0.0], [0.5, 0.25]])          # [video, query]
    # rows (video -> its query): -log softmax([1, 0])[0], -log softmax([0.5, 0.25])[1]
    rows = math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.25))
    # columns (query -> its video): -log softmax([1, 0.5])[0], -log softmax([0, 0.25])[1]
    cols = math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(-0.25))
    got = L.loss_video_query_nce(pooled, 1.0)
    assert float(got) == pytest.approx(0.5 * (rows / 2 + cols / 2), abs=1e-6)
    # two queries of the same video are not each other's negatives: nothing left to contrast
    assert float(L.loss_video_query_nce(pooled, 1.0, groups=B([3, 3]))) == pytest.approx(0.0, abs=1e-6)
    assert float(L.loss_video_query_nce(pooled, 0.5)) != pytest.approx(float(got), abs=1e-3)  # temperature


def _batch(n=6, t=5, d=8, seed=0, positives=False):
    g = torch.Generator().manual_seed(seed)
    frames = torch.nn.functional.normalize(torch.randn(n, t, d, generator=g), dim=-1)
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[0, -2:] = False
    text = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    pos, gate = None, None
    if positives:
        pos = VideoBatch(torch.nn.functional.normalize(torch.randn(n, t, d, generator=g), dim=-1), mask.clone())
        gate = torch.tensor([1.0, 0.0] * (n // 2))
    return TrainBatch(VideoBatch(frames, mask), TextBatch(text), pos, gate)


def _head(**weights):
    cfg = FinetuneConfig(wsra=WsraConfig(dropout=0.0, top_k=1, last_k=1, **weights))
    torch.manual_seed(0)
    return build_head("wsra", 8, cfg)


def test_head_sums_eq11_and_each_weight_switches_its_term():
    batch = _batch(positives=True)
    out = _head(alpha=0.5, beta=0.25, gamma=2.0, delta=1.5)(batch)
    for k in ("loss_bg", "loss_vas", "loss_ins_vas", "loss_crov"):
        assert k in out and out[k] > 0
    total = 0.5 * out["loss_bg"] + 0.25 * out["loss_crov"] + 2.0 * out["loss_vas"] + 1.5 * out["loss_ins_vas"]
    assert float(out["loss"].detach()) == pytest.approx(float(total), rel=1e-6)
    only_vas = _head(alpha=0.0, beta=0.0, gamma=1.0, delta=0.0)(batch)
    assert set(k for k in only_vas if k.startswith("loss_")) == {"loss_vas"}
    assert float(only_vas["loss"].detach()) == pytest.approx(float(out["loss_vas"]), rel=1e-6)
    # without pseudo-positives the cross-video term is off whatever its weight
    no_pos = _head(alpha=0.5, beta=0.25, gamma=2.0, delta=1.5)(_batch(positives=False))
    assert "loss_crov" not in no_pos and "loss_nce" not in no_pos   # our NCE is off unless epsilon > 0
    with_nce = _head(alpha=0.5, beta=0.0, gamma=0.0, delta=0.0, epsilon=2.0)(batch)
    assert set(k for k in with_nce if k.startswith("loss_")) == {"loss_bg", "loss_nce"}
    assert float(with_nce["loss"].detach()) == pytest.approx(
        float(0.5 * with_nce["loss_bg"] + 2.0 * with_nce["loss_nce"]), rel=1e-6)


def test_head_nce_pools_phi_by_eq2_attention_over_valid_frames():
    def pooled(phi, mask, tau):  # how the head pools: Eq. 2's weights at temperature tau applied to phi itself
        return (L.referring_attention(phi / tau, mask) * phi).sum(-1)

    phi = B([[0.2, 0.8, 0.5]])
    every = torch.ones(1, 3, dtype=torch.bool)
    assert float(pooled(phi, every, 1e-4)) == pytest.approx(0.8, abs=1e-6)    # cold: the maximum
    assert float(pooled(phi, every, 1e4)) == pytest.approx(0.5, abs=1e-4)     # hot: the mean
    w = math.exp(0.2 / 0.1) / (math.exp(0.2 / 0.1) + math.exp(0.5 / 0.1))
    got = pooled(phi, B([[True, False, True]]), 0.1)                         # 0.8 is padding
    assert float(got) == pytest.approx(w * 0.2 + (1 - w) * 0.5, abs=1e-6)

    head = _head(alpha=0.0, beta=0.0, gamma=0.0, delta=0.0, epsilon=1.0, attention_temperature=0.1)
    batch = _batch()                                                         # video 0 has 2 padded frames
    out = head(batch)
    phi_all = head.pair_scores(batch.video.frames, batch.text.sentence)
    expected = L.loss_video_query_nce(pooled(phi_all, batch.video.mask.unsqueeze(1), 0.1), head.cfg.nce_temperature)
    assert float(out["loss_nce"]) == pytest.approx(float(expected), rel=1e-6)
    frames = batch.video.frames.clone()
    frames[0, -2:] = 5.0                                                     # what sits in padding does not count
    again = head(TrainBatch(VideoBatch(frames, batch.video.mask), batch.text))
    assert float(again["loss_nce"]) == pytest.approx(float(out["loss_nce"]), rel=1e-6)


def test_head_loss_trains_phi_and_scores_are_per_frame():
    head = _head(alpha=0.1, beta=0.0, gamma=1.0, delta=1.0)
    batch = _batch()
    out = head(batch)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in head.named_parameters()
               if n.startswith(("fc_v", "fc_t", "out")))
    scores = head.frame_scores(batch.video, batch.text)
    assert scores.shape == (6, 5) and bool(((scores > 0) & (scores < 1)).all())
    # query b scores video b: row 2 equals scoring video 2 alone with query 2
    alone = head.frame_scores(VideoBatch(batch.video.frames[2:3], batch.video.mask[2:3]),
                              TextBatch(batch.text.sentence[2:3]))
    assert torch.allclose(scores[2:3], alone)
