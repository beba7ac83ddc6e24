"""model.frame_pool=max: L_global scores a (clip, caption) pair by its best frame. The loss by hand, its gathered
form against one process, and the model's switch (mean stays the paper's Eq. 1 on the mean frame)."""
from __future__ import annotations

import functools
import math

import pytest
import torch

from pretrain import losses
from two_ranks import assert_ranks_match_one_process, share


def _lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_best_frame_nce_by_hand():
    # clip 0's frames: [1, 0] and [0, 1]; clip 1's: [0.6, 0.8] twice. Captions: [1, 0] and [0, 1].
    frames = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.6, 0.8]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = losses.frame_max_contrastive(frames, text, 1.0, 0.0, gather=False)
    # best-frame scores s(i, j) = max_t <frame_it, text_j>: [[1, 1], [0.6, 0.8]] (the mean frame would give
    # [[.5, .5], [.6, .8]]); v2t rows of s, t2v rows of s transposed
    v2t = [_lse(1.0, 1.0) - 1.0, _lse(0.6, 0.8) - 0.8]
    t2v = [_lse(1.0, 0.6) - 1.0, _lse(1.0, 0.8) - 0.8]
    assert got.item() == pytest.approx(0.5 * (sum(v2t) / 2 + sum(t2v) / 2), rel=1e-6)
    # one frame per clip: exactly Eq. 1, margin and a hard-negative column included
    one = frames[:, :1]
    hard, mask = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([True, False])
    assert losses.frame_max_contrastive(one, text, 3.0, 0.1, False, hard, mask).item() == pytest.approx(
        losses.contrastive(one[:, 0], text, 3.0, 0.1, False, hard, mask).item(), rel=1e-6)


def _loss(xf, xt, rank, world, w, scale):
    f = lambda x: torch.nn.functional.normalize(x @ w, dim=-1)  # noqa: E731
    return losses.frame_max_contrastive(f(share(xf, rank, world)), f(share(xt, rank, world)), scale, 0.1)


def test_best_frame_nce_gathered_matches_single_process():
    gen = torch.Generator().manual_seed(3)
    xf, xt = torch.randn(8, 3, 6, generator=gen), torch.randn(8, 6, generator=gen)
    fn = functools.partial(_loss, xf, xt)
    params = [torch.randn(6, 5, generator=gen), torch.tensor(5.0)]
    assert_ranks_match_one_process(fn, params)


def test_model_switch():
    from common.config import ConfigError
    from pretrain import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = dict(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=4, frames_selected=2, max_words=6,
               loss_local=False)
    mean, best = build_model(ModelConfig(**cfg)), build_model(ModelConfig(**cfg, frame_pool="max"))
    best.load_state_dict(mean.state_dict())
    frames = torch.randint(0, 256, (3, 4, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    batch = {"frames": frames, "tokens": mean.tokenize(["cut the red cube", "stir it", "pour the blue cup"])}
    a, b = mean(batch), best(batch)
    assert torch.equal(a["selected"], b["selected"])          # same frames chosen, only the pair score differs
    assert a["loss_global"].item() != pytest.approx(b["loss_global"].item(), rel=1e-3)
    with pytest.raises(ConfigError, match="frame_pool"):
        ModelConfig(**cfg, frame_pool="median")
    with pytest.raises(ConfigError, match="MIL-NCE"):
        ModelConfig(**cfg, frame_pool="max", mil_windows=1)
