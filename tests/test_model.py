import dataclasses
import json
import os

import open_clip
import pytest
import torch

from pretrain import ModelConfig, build_model, load_model
from pretrain.model import save_export

CAPTIONS = ["crack the eggs into a bowl", "whisk", "", "pour the batter into the hot pan and cook it slowly on "
            "a medium heat until it is golden brown and crisp"]


def _cfg(**kw):
    base = dict(backbone="stg-tiny", embed_dim=64, local_heads=2, frames_in=6, frames_selected=3, max_words=8)
    base.update(kw)
    return ModelConfig(**base)


def _batch(model, b=4, u=6, h=40, w=56, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, u, h, w, 3), generator=gen, dtype=torch.uint8)
    return {"frames": frames, "tokens": model.tokenize(CAPTIONS[:b])}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg())


def test_tiny_config_is_registered():
    assert "stg-tiny" in open_clip.list_models()
    clip = open_clip.create_model("stg-tiny")
    assert clip.visual.image_size == (64, 64)


def test_encoders_shapes(model):
    batch = _batch(model)
    x = model.preprocess_frames(batch["frames"])
    assert x.shape == (4, 6, 3, 64, 64) and x.dtype == torch.float32
    fg, fl, grid = model.encode_frames(batch["frames"])
    assert fg.shape == (4, 6, 64) and fl.shape == (4, 6, 64, 64) and grid == (8, 8)
    torch.testing.assert_close(fg.norm(dim=-1), torch.ones(4, 6))
    torch.testing.assert_close(model.encode_frames(x)[0], fg)  # preprocessed input gives the same features
    tg, tl, mask = model.encode_text(batch["tokens"])
    assert tg.shape == (4, 64) and tl.shape == (4, 8, 64) and mask.dtype == torch.bool
    # words between SOT and EOT, capped at K; an empty caption keeps its EOT as one word
    assert mask.sum(1).tolist()[1:] == [len(open_clip.tokenize(["whisk"])[0].nonzero()) - 2, 1, 8]
    assert (tl[~mask] == 0).all()
    idx = model.select_frames(fg, fl, tg, tl, mask)
    assert idx.shape == (4, 3) and (idx.diff(dim=1) > 0).all() and idx.max() < 6
    assert model.frame_scores(fg[0], tg).shape == (6, 4)
    assert model.frame_scores(fg, tg).shape == (4, 6, 4)
    torch.testing.assert_close(model.frame_scores(fg[1], tg)[2, 3], fg[1, 2] @ tg[3])


def test_forward_backward(model):
    model.train()
    model.zero_grad()
    out = model(_batch(model))
    assert set(out) >= {"loss", "loss_local", "loss_global", "selected", "logit_scale"}
    assert out["selected"].shape == (4, 3)
    assert out["loss"].requires_grad and not out["loss_local"].requires_grad
    torch.testing.assert_close(out["loss"].detach(), out["loss_local"] + out["loss_global"])
    out["loss"].backward()
    for name in ("f.weight", "g.weight", "f_local.weight", "g_local.weight", "logit_scale",
                 "local.video_self.attn.in_proj_weight", "backbone.clip.visual.conv1.weight",
                 "backbone.clip.token_embedding.weight"):
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_backbone_gets_no_grads():
    model = build_model(_cfg(freeze="all"))
    out = model(_batch(model))
    out["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.f.weight.grad is not None and model.g_local.weight.grad is not None

    model = build_model(_cfg(freeze="partial", unfrozen_blocks=1))
    model(_batch(model))["loss"].backward()
    clip = model.backbone.clip
    assert clip.visual.transformer.resblocks[0].attn.in_proj_weight.grad is None
    assert clip.transformer.resblocks[0].mlp.c_fc.weight.grad is None
    assert clip.token_embedding.weight.grad is None and clip.visual.conv1.weight.grad is None
    assert clip.visual.transformer.resblocks[-1].attn.in_proj_weight.grad.abs().sum() > 0
    assert clip.transformer.resblocks[-1].mlp.c_fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("selection,text,video", [
    ("sinkhorn", "local", "global"), ("sinkhorn", "local", "local"), ("sinkhorn", "global", "global"),
    ("sinkhorn", "global", "local"), ("topk", "local", "global"), ("none", "local", "global")])
def test_selection_modes_run(model, selection, text, video):
    model.cfg = dataclasses.replace(model.cfg, selection=selection, selection_text=text, selection_video=video)
    try:
        batch = _batch(model, b=3)
        batch["valid_frames"] = torch.tensor([6, 4, 2])
        out = model(batch)
        sel = out["selected"]
        assert sel.shape == (3, 3) and torch.isfinite(out["loss"])
        if selection != "none":
            assert (sel[1] < 4).all()  # only valid frames when there are enough
    finally:
        model.cfg = _cfg()


def test_loss_switches():
    model = build_model(_cfg(loss_local=False, frames_selected=6, selection="none"))
    out = model(_batch(model))
    assert out["loss_local"].item() == 0 and out["loss"].item() == out["loss_global"].item() > 0
    assert out["selected"].tolist()[0] == list(range(6))
    out["loss"].backward()
    assert model.f_local.weight.grad is None and model.f.weight.grad is not None
    with pytest.raises(ValueError):
        _cfg(loss_local=False, loss_global=False)
    with pytest.raises(ValueError):
        _cfg(selection="random")


def test_heatmap(model):
    batch = _batch(model, b=2)
    maps = {}
    for mode in ("word_region", "branch"):
        model.cfg = _cfg(heatmap=mode)
        try:
            with torch.no_grad():
                maps[mode] = heat = model.heatmap(batch["frames"][:, :3], batch["tokens"])
        finally:
            model.cfg = _cfg()
        assert heat.shape == (2, 3, 8, 8)
        torch.testing.assert_close(heat.sum(dim=(1, 2, 3)), torch.ones(2))
    assert not torch.allclose(maps["word_region"], maps["branch"])
    # word_region: each word's softmax over the regions of cos(g'(word), f'(region)) / t, averaged over words
    with torch.no_grad():
        _, fl, _ = model.encode_frames(batch["frames"][:, :3])
        _, tl, mask = model.encode_text(batch["tokens"])
        att = (torch.einsum("bkd,bmd->bkm", tl, fl.flatten(1, 2)) / model.cfg.attention_temperature).softmax(-1)
        want = (att * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(maps["word_region"].flatten(1), want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError):
        _cfg(heatmap="gradcam")


def test_word_region_term_switch():
    torch.manual_seed(0)
    with_term = build_model(_cfg(imposters=0))
    without = build_model(_cfg(imposters=0, word_region_weight=0.0))
    without.load_state_dict(with_term.state_dict())
    batch = _batch(with_term)
    a, b = with_term(batch), without(batch)
    # the same model, the same pooled terms: the word-region nce is what L_local gains
    assert a["loss_local"].item() > b["loss_local"].item()
    torch.testing.assert_close(a["loss_global"], b["loss_global"])


def test_pretrained_local_file_and_export_roundtrip(tmp_path):
    clip = open_clip.create_model("stg-tiny")
    weights = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), weights)
    model = build_model(_cfg(pretrained=str(weights)))
    for k, v in clip.state_dict().items():
        assert torch.equal(model.backbone.clip.state_dict()[k].reshape(v.shape), v), k  # scalars become (1,)
    with pytest.raises(FileNotFoundError):
        build_model(_cfg(pretrained=str(tmp_path / "missing.pt")))

    export = tmp_path / "export"
    save_export(model, str(export))
    assert json.loads((export / "model_config.json").read_text())["embed_dim"] == 64
    loaded = load_model(str(export))
    assert not loaded.training
    batch = _batch(model, b=2)
    model.eval()
    with torch.no_grad():
        a, b = model.encode_frames(batch["frames"])[0], loaded.encode_frames(batch["frames"])[0]
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(model.encode_text(batch["tokens"])[0], loaded.encode_text(batch["tokens"])[0])
    os.remove(weights)  # the export does not need the original backbone file
    assert torch.equal(load_model(str(export / "model.pt")).f.weight, model.f.weight)
