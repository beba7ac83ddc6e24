"""MIL-NCE over neighbouring ASR windows (model.mil_windows): the loss by hand, its same-video negative mask,
the gathered form, the loader's neighbour bags on a shard set, and the model's switch."""
from __future__ import annotations

import functools
import math

import pytest
import torch

from pretrain import losses
from two_ranks import assert_ranks_match_one_process, share


def _lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


VIDEO = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXT = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
BAG = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])   # one neighbour caption per clip


def test_mil_nce_by_hand():
    # clip 0 has its neighbour (score 1.0) in the bag, clip 1's is masked out
    got = losses.mil_contrastive(VIDEO, TEXT, BAG, torch.tensor([[True], [False]]), 1.0, 0.0, gather=False)
    # V.S = [[0.6, 0], [0.8, 1]]: v2t(0) = -log (e^.6 + e^1) / (e^.6 + e^0 + e^1), v2t(1) as plain Eq. 1
    v2t = [_lse(0.6, 0.0, 1.0) - _lse(0.6, 1.0), _lse(0.8, 1.0) - 1.0]
    t2v = [_lse(0.6, 0.8) - 0.6, _lse(0.0, 1.0) - 1.0]
    assert got.item() == pytest.approx(0.5 * (sum(v2t) / 2 + sum(t2v) / 2), rel=1e-6)
    # no neighbour anywhere: exactly Eq. 1 (losses.contrastive), margin included
    none = losses.mil_contrastive(VIDEO, TEXT, BAG, torch.zeros(2, 1, dtype=torch.bool), 3.0, 0.1, gather=False)
    assert none.item() == pytest.approx(losses.contrastive(VIDEO, TEXT, 3.0, 0.1, gather=False).item(), rel=1e-6)


def test_mil_nce_drops_same_video_neighbours_from_the_negatives():
    mask = torch.zeros(2, 1, dtype=torch.bool)
    ids = torch.tensor([7, 7])
    spans = torch.tensor([[0.0, 2.0], [3.0, 5.0]])            # 1 s apart
    near = losses.mil_contrastive(VIDEO, TEXT, BAG, mask, 1.0, 0.0, ids, spans, shift=2.0, gather=False)
    assert near.item() == pytest.approx(0.0, abs=1e-6)      # the only negatives were each other: dropped
    far = losses.mil_contrastive(VIDEO, TEXT, BAG, mask, 1.0, 0.0, ids, spans, shift=0.5, gather=False)
    other = losses.mil_contrastive(VIDEO, TEXT, BAG, mask, 1.0, 0.0, torch.tensor([7, 8]), spans, shift=2.0,
                                   gather=False)
    plain = losses.contrastive(VIDEO, TEXT, 1.0, 0.0, gather=False).item()
    assert far.item() == pytest.approx(plain, rel=1e-6) and other.item() == pytest.approx(plain, rel=1e-6)
    assert losses.neighbour_mask(ids, spans, ids, spans, 2.0).tolist() == [[False, True], [True, False]]


def _mil_loss(xv, xt, xb, bag_mask, ids, spans, rank, world, w, scale):
    f = lambda x: torch.nn.functional.normalize(x @ w, dim=-1)  # noqa: E731
    return losses.mil_contrastive(f(share(xv, rank, world)), f(share(xt, rank, world)), f(share(xb, rank, world)),
                                  share(bag_mask, rank, world), scale, 0.1, share(ids, rank, world),
                                  share(spans, rank, world), 2.0)


def test_mil_nce_gathered_matches_single_process():
    gen = torch.Generator().manual_seed(2)
    xv, xt, xb = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen), torch.randn(8, 2, 6, generator=gen)
    bag_mask = torch.rand(8, 2, generator=gen) > 0.4
    ids = torch.tensor([1, 1, 2, 3, 1, 2, 4, 4])            # videos 1 and 2 have windows on both ranks
    spans = torch.tensor([[0.0, 2], [3, 5], [0, 3], [0, 2], [5, 8], [9, 12], [0, 2], [10, 12]])
    fn = functools.partial(_mil_loss, xv, xt, xb, bag_mask, ids, spans)
    params = [torch.randn(6, 5, generator=gen), torch.tensor(6.0)]
    assert_ranks_match_one_process(fn, params)


def test_neighbour_captions_by_hand():
    from pretrain.data import neighbour_captions

    spans = [(0.0, 2.0, "a"), (2.0, 4.0, "b"), (4.5, 7.0, "c"), (12.0, 14.0, "d"), None]
    assert neighbour_captions(spans, 1, 2.0) == [["b"], ["a", "c"], ["b"], [], None]
    assert neighbour_captions(spans, 2, 3.0) == [["b", "c"], ["a", "c"], ["b", "a"], [], None]
    assert neighbour_captions(spans, 1, 0.0) == [["b"], ["a"], [], [], None]


def test_loader_attaches_each_clips_neighbours(tmp_path):
    """On a shard set (pretrain_fixtures: window s of a video spans ASR [2s, 2s + 2]), each clip's bag is the
    captions of windows s - 1 and s + 1 of its own video, and model_inputs turns it into the model's inputs."""
    from pretrain import data
    from pretrain.config import load
    from pretrain_fixtures import make_shards
    from shards.reader import read_samples

    shards = make_shards(str(tmp_path), shards=2, per_shard=8, frames=2, size=16)
    caption = {s["key"]: s["json"]["caption"] for s in read_samples(data.read_manifest(shards).urls)}
    loader = data.RankLoader(data.read_manifest(shards), micro_batch=4, batches_per_epoch=4, seed=1, rank=0,
                             shuffle_buffer=8, mil_windows=1, mil_shift=0.0)
    checked = 0
    for _ in range(4):
        b = loader.next()
        for key, bag in zip(b["keys"], b["neighbours"]):
            vid, seg = key.rsplit("__s", 1)
            want = [caption[f"{vid}__s{int(seg) + d:04d}"] for d in (-1, 1) if f"{vid}__s{int(seg) + d:04d}" in caption]
            assert bag == want
            checked += 1
    assert checked == 16
    cfg = load(None, [f"data.shards={shards}", "model.mil_windows=1", "model.mil_shift=0"])
    seen = []
    inputs = data.model_inputs(b, cfg, lambda t: seen.append(list(t)) or torch.zeros(len(t), 3), "cpu")
    assert inputs["mil_mask"].tolist() == [[j < len(n) for j in range(2)] for n in b["neighbours"]]
    assert seen[1] == [t for n in b["neighbours"] for t in (n + ["", ""])[:2]]
    assert inputs["asr_spans"].shape == (4, 2) and inputs["video_ids"].shape == (4,)
    plain = data.RankLoader(data.read_manifest(shards), micro_batch=4, batches_per_epoch=4, seed=1, rank=0,
                            shuffle_buffer=8)
    assert [k for k in plain.next()["keys"]] == [k for k in data.RankLoader(
        data.read_manifest(shards), micro_batch=4, batches_per_epoch=4, seed=1, rank=0, shuffle_buffer=8,
        mil_windows=1).next()["keys"]]   # the switch adds the bags, it does not change which clips are drawn


def test_model_switch_uses_the_bag():
    from pretrain import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = dict(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=4, frames_selected=2, max_words=6,
               loss_local=False)
    plain, mil = build_model(ModelConfig(**cfg)), build_model(ModelConfig(**cfg, mil_windows=1))
    mil.load_state_dict(plain.state_dict())
    frames = torch.randint(0, 256, (3, 4, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    batch = {"frames": frames, "tokens": plain.tokenize(["cut the red cube", "stir it", "pour the blue cup"])}
    bag = {"mil_tokens": plain.tokenize(["stir it", "", "", "", "", ""]),
           "mil_mask": torch.tensor([[True, False], [False, False], [False, False]])}
    base = plain(batch)["loss_global"]
    assert mil({**batch, "mil_tokens": bag["mil_tokens"], "mil_mask": torch.zeros(3, 2, dtype=torch.bool)}
               )["loss_global"].item() == pytest.approx(base.item(), rel=1e-5)
    assert mil({**batch, **bag})["loss_global"].item() != pytest.approx(base.item(), rel=1e-3)

