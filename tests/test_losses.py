import functools
import math

import pytest
import torch

from pretrain import losses
from two_ranks import assert_ranks_match_one_process, share


def _eq1(pos, negs, margin, scale):
    """-log e^{s(p - d)} / (e^{s(p - d)} + sum e^{s n}) by hand."""
    top = math.exp(scale * (pos - margin))
    return -math.log(top / (top + sum(math.exp(scale * n) for n in negs)))


def test_eq1_hand_computed():
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # s = v t^T = [[0.8, 0.0], [0.96, 0.8]]
    margin, scale = 0.2, 5.0
    v2t = (_eq1(0.8, [0.0], margin, scale) + _eq1(0.8, [0.96], margin, scale)) / 2
    t2v = (_eq1(0.8, [0.96], margin, scale) + _eq1(0.8, [0.0], margin, scale)) / 2
    got = losses.contrastive(v, t, scale, margin)
    assert abs(got.item() - 0.5 * (v2t + t2v)) < 1e-6
    # the margin makes the loss strictly larger
    assert got.item() > losses.contrastive(v, t, scale, 0.0).item()


def test_imposter_term_hand_computed():
    # m(i, i + s) for B = 3, shifts 0, 1: pair_scores[i, s]
    m = torch.tensor([[0.9, 0.1], [0.7, 0.4], [0.5, -0.2]])
    margin, scale = 0.1, 3.0
    video_side = sum(_eq1(m[i, 0].item(), [m[i, 1].item()], margin, scale) for i in range(3)) / 3
    # sentence l's imposter is video l-1 attended with it: m(l-1, l) = pair_scores[l-1, 1]
    text_side = sum(_eq1(m[i, 0].item(), [m[(i - 1) % 3, 1].item()], margin, scale) for i in range(3)) / 3
    got = losses.imposter_nce(m, scale, margin)
    assert abs(got.item() - 0.5 * (video_side + text_side)) < 1e-6
    assert losses.imposter_nce(m[:, :1], scale, margin).item() == 0.0
    assert losses.imposter_pairs(8, 3) == [0, 1, 2, 3]
    assert losses.imposter_pairs(2, 3) == [0, 1]


def _features(x, w):
    return torch.nn.functional.normalize(x @ w, dim=-1)


def _contrastive_loss(xv, xt, rank, world, w, scale):
    return losses.contrastive(_features(share(xv, rank, world), w), _features(share(xt, rank, world), w), scale, 0.15)


def test_gathered_negatives_match_single_process():
    gen = torch.Generator().manual_seed(0)
    xv, xt = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    w0 = torch.randn(6, 5, generator=gen)
    params = [w0, torch.tensor(7.0)]
    fn = functools.partial(_contrastive_loss, xv, xt)
    loss, _ = assert_ranks_match_one_process(fn, params)
    # without gathering, each rank only sees its own 4 negatives: a different (smaller) loss
    half = (losses.contrastive(_features(xv[:4], w0), _features(xt[:4], w0), 7.0, 0.15)
            + losses.contrastive(_features(xv[4:], w0), _features(xt[4:], w0), 7.0, 0.15)) / 2
    assert abs(half.item() - loss.item()) > 1e-3


def test_word_region_scores_hand_computed():
    # caption 0: two words, caption 1: one word (second masked); clip 0: 2 regions, clip 1: 3 regions
    words = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [9.0, 9.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    regions = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 0.0]], [[0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]])
    got = losses.word_region_scores(words, mask, regions)
    # s(i, j) = mean over valid words of the best region's dot product
    want = torch.tensor([[(1.0 + 0.6) / 2, (0.6 + 1.0) / 2],
                         [max(0.6, 0.96, 0.0), max(0.8, 1.0, -0.6)]])
    torch.testing.assert_close(got, want)
    # chunking over captions gives the same matrix
    torch.testing.assert_close(losses.word_region_scores(words, mask, regions, chunk_elements=1), want)
    # the nce on it is Eq. 1 over those scores (margin on the positive)
    scale, margin = 5.0, 0.1
    loss = losses.word_region_contrastive(regions, words, mask, scale, margin, gather=False)
    t2v = sum(-math.log(math.exp(scale * (want[i, i] - margin)) /
                        (math.exp(scale * (want[i, i] - margin)) + math.exp(scale * want[i, 1 - i]))) for i in range(2)) / 2
    v2t = sum(-math.log(math.exp(scale * (want[j, j] - margin)) /
                        (math.exp(scale * (want[j, j] - margin)) + math.exp(scale * want[1 - j, j]))) for j in range(2)) / 2
    assert abs(loss.item() - 0.5 * (t2v + v2t)) < 1e-5


def _word_region_loss(xv, xt, mask, rank, world, w):
    xv, xt, mask = (share(x, rank, world) for x in (xv, xt, mask))
    regions = torch.nn.functional.normalize(xv @ w, dim=-1)
    words = torch.nn.functional.normalize(xt @ w, dim=-1) * mask[..., None]
    return losses.word_region_contrastive(regions, words, mask, 6.0, 0.1)


def test_word_region_gathered_matches_single_process():
    gen = torch.Generator().manual_seed(1)
    xv, xt = torch.randn(8, 5, 6, generator=gen), torch.randn(8, 4, 6, generator=gen)
    mask = torch.rand(8, 4, generator=gen) > 0.3
    mask[:, 0] = True
    w0 = torch.randn(6, 5, generator=gen)
    fn = functools.partial(_word_region_loss, xv, xt, mask)
    assert_ranks_match_one_process(fn, [w0])


def test_verb_swapped_captions():
    from pretrain.hard_negatives import verb_swapped

    verbs = {"cut": "cutting", "stir": "stirring", "pour": "pouring"}
    a = verb_swapped("now we cut the red cube", verbs, seed=1)
    assert a is not None and a != "now we cut the red cube"
    assert a.split(" ")[2] in ("stir", "pour") and a.endswith(" the red cube")
    b = verb_swapped("keep cutting it", verbs, seed=1)
    assert b in ("keep stirring it", "keep pouring it")          # the -ing form stays an -ing form
    assert verb_swapped("thanks for watching", verbs, seed=1) is None
    assert verb_swapped("now we cut the red cube", verbs, seed=1) == a  # a function of the seed
    assert {verb_swapped("cut it", verbs, seed=s) for s in range(20)} == {"stir it", "pour it"}
    assert verb_swapped("cut it", {"cut": "cutting"}, seed=0) is None


def test_contrastive_hard_negative_column_by_hand():
    import math

    from pretrain.losses import contrastive

    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    hard = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    plain = contrastive(video, text, 1.0, 0.0, gather=False)
    none = contrastive(video, text, 1.0, 0.0, gather=False, hard_text=hard, hard_mask=torch.tensor([False, False]))
    assert torch.allclose(plain, none)
    got = contrastive(video, text, 1.0, 0.0, gather=False, hard_text=hard, hard_mask=torch.tensor([True, False]))
    # row 0 video->text gains a column 0.6 (its hard negative); row 1 and the text->video side are unchanged
    row0 = -math.log(math.exp(0.8) / (math.exp(0.8) + math.exp(0.6) + math.exp(0.6)))
    row1 = -math.log(math.exp(0.8) / (math.exp(0.6) + math.exp(0.8)))
    t2v = 0.5 * (-math.log(math.exp(0.8) / (math.exp(0.8) + math.exp(0.6))) * 2)
    assert got.item() == pytest.approx(0.5 * ((row0 + row1) / 2 + t2v), rel=1e-6)
    # gradients stay finite, the learnt temperature's too (a -inf mask made it NaN through 0 * inf)
    scale = torch.tensor(10.0, requires_grad=True)
    v = video.clone().requires_grad_(True)
    contrastive(v, text, scale, 0.1, gather=False, hard_text=hard, hard_mask=torch.tensor([True, False])).backward()
    assert torch.isfinite(scale.grad) and torch.isfinite(v.grad).all()
