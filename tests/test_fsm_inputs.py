"""FSM's input paths (docs/fsm.md "Multi-scale input and backbone finetuning"): an earlier visual block's patch grid,
multi-scale region features and their cache, the differentiable (end-to-end) region features, the encoder's own
learning rate, bad combinations. The finetune under Ray that trains end to end and resumes exactly is in
tests/test_finetune_stvg.py (its corpus, export and cache)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import config as C
from common.errors import UserError
from finetune.config import FinetuneConfig, train_settings
from finetune.config import load as load_config
from tubes.config import TubeConfig
from tubes.proposals import Proposals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from pretrain_fixtures import tiny_export

    from pretrain.model import load_model

    folder = tiny_export(str(tmp_path_factory.mktemp("fsm_inputs") / "export"))
    return load_model(folder), folder


def _pixels(t: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, 32, 32, 3), dtype=np.uint8)


def _props(t: int = 2) -> Proposals:
    boxes = np.array([[[4, 2, 30, 20], [10, 10, 40, 30], [0, 0, 0, 0]]] * t, np.float32)
    valid = np.array([[True, True, False]] * t)
    return Proposals("v", np.arange(t), boxes, np.ones(valid.shape, np.float32) * valid, valid, fps=5.0)


def test_hand_roi_align_on_a_tiny_grid():
    """Two channels linear in x and y (bilinear sampling is exact on them inside the grid): a box of cells
    [1, 3] x [1, 3] with 2 x 2 bins, aligned corners, 2 samples per bin, pools the value at its centre (1.5, 1.5)
    (cell centres at 0.5 + index); L2-normalised over channels, 0 at padding."""
    from tubes.regions import pool_regions

    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    grid = torch.stack([2 * xs + ys + 1, xs - 3 * ys + 20])[None]          # (1, 2, 4, 4)
    cells = torch.tensor([[[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]]])
    out = pool_regions(grid, cells, torch.tensor([[True, False]]), output=2)
    want = F.normalize(torch.tensor([2 * 1.5 + 1.5 + 1, 1.5 - 3 * 1.5 + 20]), dim=0)
    assert torch.allclose(out[0, 0], want, atol=1e-6) and torch.equal(out[0, 1], torch.zeros(2))


def test_earlier_block_grid_and_multiscale_regions(model):
    """The block's grid has the last layer's shape, equals the tower run by hand up to that block (then ln_post,
    proj and f', as the last layer's tokens), and the multi-scale region features are the same proposals'
    RoI-Align over it."""
    from grounding.inference import CropGeometry
    from tubes.regions import encode_grid, pool_regions, region_features, to_grid

    m, _ = model
    frames = _pixels()
    glob, last, mid = encode_grid(m, frames, block=1)
    assert last.shape == mid.shape == (2, m.cfg.embed_dim, *m.grid) and not torch.allclose(last, mid)
    g0, last0 = encode_grid(m, frames)                     # the single-scale call is unchanged
    assert torch.equal(g0, glob) and torch.equal(last0, last)
    with torch.no_grad():
        visual = m.backbone.clip.visual
        x = visual.transformer.resblocks[0](visual._embeds(m.preprocess_frames(torch.from_numpy(frames))))
        tok = F.normalize(m.f_local(visual.ln_post(x)[:, 1:] @ visual.proj), dim=-1)
    gh, gw = m.grid
    assert torch.allclose(mid, tok.transpose(1, 2).reshape(2, -1, gh, gw), atol=1e-5)
    props, geo = _props(), CropGeometry(48, 32, 32)
    regions, g, regions_mid = region_features(m, frames, props, geo, output=2, block=1)
    cells = torch.from_numpy(to_grid(props.boxes, geo, (gh, gw)).astype(np.float32))
    want = pool_regions(mid, cells, torch.from_numpy(props.valid), 2).numpy()
    np.testing.assert_allclose(regions_mid, want, atol=1e-6)
    r0, _ = region_features(m, frames, props, geo, output=2)
    np.testing.assert_array_equal(r0, regions)
    assert not np.allclose(regions_mid[props.valid], regions[props.valid])


def test_cache_without_the_mid_array_is_a_miss_only_for_multiscale(tmp_path):
    from tubes.pipeline import cached_tubes
    from tubes.regions import RegionCache

    cache, props, cfg = RegionCache(str(tmp_path), "unused", "src", key="k"), _props(), TubeConfig(tubes=2)
    arrays = dict(regions=np.ones((2, 3, 4), np.float16), frames=np.ones((2, 4), np.float16), frame_ids=props.frames,
                  size=np.asarray([48.0, 32.0]), roi_output=np.int64(cfg.roi_output))
    cache.put("v", 0, **arrays)
    single = cached_tubes("v", "", props, cfg, cache)
    assert single is not None and single.regions_mid is None
    assert cached_tubes("v", "", props, cfg, cache, mid_layer=1) is None          # multi-scale asks for more
    cache.put("v", 0, **arrays, regions_mid=np.full((2, 3, 4), 2, np.float16), mid_layer=np.int64(1))
    hit = cached_tubes("v", "", props, cfg, cache, mid_layer=1)
    assert hit is not None and float(hit.regions_mid[0, 0, 0]) == 2.0
    assert cached_tubes("v", "", props, cfg, cache, mid_layer=2) is None          # another block: a miss
    np.testing.assert_array_equal(cached_tubes("v", "", props, cfg, cache).regions, single.regions)


def test_end_to_end_region_features_reach_the_encoder(model):
    """The live (differentiable) region features equal the cached path's on the same crops, and a backward from
    them reaches the patch embedding and the earlier block of the image tower."""
    from grounding.inference import CropGeometry
    from tubes.regions import live_region_features, region_features

    m, _ = model
    frames, props = _pixels(), _props()
    m.zero_grad()
    g, regions, mid = live_region_features(m, torch.from_numpy(frames)[None], torch.from_numpy(props.boxes)[None],
                                           torch.from_numpy(props.valid)[None], torch.tensor([[48.0, 32.0]]), 2, 1)
    want, want_g, want_mid = region_features(m, frames, props, CropGeometry(48, 32, 32), 2, block=1)
    np.testing.assert_allclose(regions[0].detach().numpy(), want, atol=1e-5)
    np.testing.assert_allclose(mid[0].detach().numpy(), want_mid, atol=1e-5)
    np.testing.assert_allclose(g[0].detach().numpy(), want_g, atol=1e-5)
    (regions.sum() + mid.sum()).backward()
    visual = m.backbone.clip.visual
    for p in (visual.conv1.weight, visual.transformer.resblocks[0].mlp.c_fc.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_the_encoder_learns_at_its_own_rate(model, tmp_path):
    from finetune.heads.fsm import FsmConfig
    from finetune.heads.fsm import FsmHead
    from finetune.train import FinetuneModule
    from trainer.engine import param_groups

    m, export = model
    module = FinetuneModule(FsmHead(m.cfg.embed_dim, FsmConfig(dim=16, multiscale=True)), m, 2, 1)
    cfg = C.load(FinetuneConfig, "configs/finetune/fsm_synthetic.yaml",
                 [f"checkpoint={export}", "features.end_to_end=true", "optim.encoder_lr=0.00001"])
    s = train_settings(cfg)
    groups = param_groups(module, 1e-4, s.lr_groups)
    encoder = {id(p) for p in m.parameters() if p.requires_grad}
    head = {id(p) for p in module.head.parameters()}
    by_lr = {}
    for gr in groups:
        by_lr.setdefault(gr.get("lr", s.lr), set()).update(id(p) for p in gr["params"])
    assert by_lr == {0.0005: head, 0.00001: encoder} and id(module.head.pv_mid.weight) in head
    opt = torch.optim.AdamW(groups, lr=s.lr)
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.00001, 0.0005]
    # frozen features, or no encoder_lr: one rate for everything, the groups as before
    assert train_settings(C.load(FinetuneConfig, "configs/finetune/fsm_synthetic.yaml",
                                 [f"checkpoint={export}", "optim.encoder_lr=0.00001"])).lr_groups == ()
    assert [set(g) for g in param_groups(module, 1e-4)] == [{"params", "weight_decay"}] * 2


def test_mid_block_resolution(model):
    from finetune.stvg_features import mid_block

    _, export = model
    load = (lambda *o: C.load(FinetuneConfig, "configs/finetune/fsm_synthetic.yaml", [f"checkpoint={export}", *o]))
    assert mid_block(load()) == 0                                    # single scale: nothing more is read
    assert mid_block(load("fsm.multiscale=true")) == 1               # the middle of stg-micro's 2 blocks
    assert mid_block(load("head=tube_sim", "fsm.multiscale=true")) == 0
    with pytest.raises(UserError, match=r"tubes.mid_layer \[2\]: the export's image tower has 2 blocks"):
        mid_block(load("fsm.multiscale=true", "tubes.mid_layer=2"))


def test_bad_input_combinations_are_one_error_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "finetune.train", "--config", "configs/finetune/fsm_synthetic.yaml",
                          f"checkpoint={tmp_path}/none.pt", f"run={tmp_path}/run", "head=tube_sim",
                          "features.end_to_end=true"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert "features.end_to_end on an STVG dataset is built for the fsm head only, not 'tube_sim'" in lines[0]
    assert not os.path.exists(tmp_path / "run")
    for bad, message in ((["optim.encoder_lr=-1"], "optim.encoder_lr"), (["tubes.mid_layer=-1"], "mid_layer >= 0")):
        with pytest.raises(C.ConfigError, match=message):
            load_config("configs/finetune/fsm_synthetic.yaml", ["checkpoint=x", *bad])


def test_multiscale_head_adds_the_projected_second_scale():
    """The second scale's projection is summed into each proposal's token (one token per proposal, docs/fsm.md);
    every other weight starts as the single-scale head's; a batch without the second scale is refused."""
    import dataclasses

    from finetune.heads.fsm import FsmConfig
    from finetune.heads.fsm import FsmHead
    from test_fsm import _batch

    torch.manual_seed(0)
    single = FsmHead(8, FsmConfig(dim=16, queries=3))
    torch.manual_seed(0)
    multi = FsmHead(8, FsmConfig(dim=16, queries=3, multiscale=True))
    s, m = single.state_dict(), multi.state_dict()
    assert set(m) - set(s) == {"pv_mid.weight", "pv_mid.bias"} and all(torch.equal(s[k], m[k]) for k in s)
    batch = _batch()
    with pytest.raises(ValueError, match="regions_mid"):
        multi.loss(batch)
    mid = torch.randn(batch.video.regions.shape, generator=torch.Generator().manual_seed(3))
    video = dataclasses.replace(batch.video, regions_mid=mid)
    cfg = FsmConfig(dim=16, queries=3, multiscale=True, frame_fusion=False, video_fusion=False, positions=False)
    torch.manual_seed(0)
    head = FsmHead(8, cfg)
    x, _, _ = head._memory(video, batch.text)
    assert x.shape == (2, 6, 3, 16)
    assert torch.allclose(x, head.pv(video.regions) + head.pv_mid(mid), atol=1e-6)
    loss = multi.loss(dataclasses.replace(batch, video=video))["loss"]
    loss.backward()
    assert multi.pv_mid.weight.grad.abs().sum() > 0
