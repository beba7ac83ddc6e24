"""Pseudo-positives in pretraining: the cross-video term L_crov (hand-worked, gathered across ranks), the loader's
deterministic choice of a neighbour's caption, unknown keys, and a short Ray Train run with a mined table (and
with the switch off)."""
from __future__ import annotations

import functools
import glob
import json
import math
import os

import pytest
import torch

from common import pseudo_table
from pretrain import data, losses
from pretrain.pseudo_positives import PseudoPositives
from shards.reader import read_samples
from pretrain_fixtures import make_shards
from two_ranks import one_process, share, two_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "pretrain", "tiny.yaml")


# --- the loss term ----------------------------------------------------------------------------------------------

def test_crossvideo_term_hand_worked():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # clip 0 only: scores V0.S0 = 1, V0.P0 = 0, negative V0.S1 = 0; tau = 1, no margin:
    # -log (e^1 + e^0) / (e^1 + e^0 + e^0)
    got = losses.multi_positive_nce(v, s, p, torch.tensor([True, False]), 1.0, 0.0)
    assert got.item() == pytest.approx(math.log((math.e + 2) / (math.e + 1)), abs=1e-6)
    # both clips, scale 2, margin 0.5 on both positives: each row is -log (e^1 + e^-1) / (e^1 + e^-1 + e^0)
    got = losses.multi_positive_nce(v, s, p, torch.tensor([True, True]), 2.0, 0.5)
    row = -math.log((math.e + 1 / math.e) / (math.e + 1 / math.e + 1))
    assert got.item() == pytest.approx(row, abs=1e-6)
    # a pseudo-positive the clip already matches lowers the loss below the plain NCE row of Eq. 1
    plain = losses.nce(v @ s.t(), torch.arange(2), 0.5, 2.0)
    assert losses.multi_positive_nce(v, s, s, torch.tensor([True, True]), 2.0, 0.5) < plain
    # no clip with a pseudo-positive: nothing, and no gradient
    vg = v.clone().requires_grad_(True)
    none = losses.multi_positive_nce(vg, s, p, torch.tensor([False, False]), 2.0, 0.5)
    none.backward()
    assert none.item() == 0.0 and vg.grad.abs().sum() == 0


def _crov_loss(xv, xt, xp, mask, rank, world, w):
    f = lambda x: torch.nn.functional.normalize(share(x, rank, world) @ w, dim=-1)  # noqa: E731
    return losses.multi_positive_nce(f(xv), f(xt), f(xp), share(mask, rank, world), 5.0, 0.1)


def test_crossvideo_term_gathered_matches_single_process():
    gen = torch.Generator().manual_seed(1)
    xv, xt, xp = (torch.randn(8, 6, generator=gen) for _ in range(3))
    w0 = torch.randn(6, 5, generator=gen)
    mask = torch.tensor([True, False, True, True, False, False, False, False])  # rank 1 has none of its own
    fn = functools.partial(_crov_loss, xv, xt, xp, mask)
    got_loss, got_grad = two_ranks(fn, [w0])
    ref_loss, ref_grad = one_process(fn, [w0])
    torch.testing.assert_close(got_loss, ref_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_grad, ref_grad, atol=1e-6, rtol=1e-5)


def test_model_adds_the_term_only_when_switched_on():
    from pretrain.model import build_model
    from pretrain.model_config import ModelConfig

    def forward(**kw):
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=4,
                                        frames_selected=2, max_words=12, **kw))
        frames = torch.randint(0, 256, (4, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        batch = {"frames": frames, "tokens": model.tokenize(["cut the red cube", "pour the green cube",
                                                               "stir the blue cube", "peel the purple cube"]),
                 "pp_tokens": model.tokenize(["cut the red cube", "", "wash the cyan cube", ""]),
                 "pp_mask": torch.tensor([True, False, True, False])}
        return model(batch), model({k: batch[k] for k in ("frames", "tokens")})

    (on, plain) = forward(pseudo_positive_weight=0.5)
    assert on["loss_crossvideo"] > 0 and on["crossvideo_frac"] == 0.5
    assert on["loss"].item() == pytest.approx((on["loss_local"] + on["loss_global"]
                                               + 0.5 * on["loss_crossvideo"]).item(), rel=1e-6)
    assert "loss_crossvideo" not in plain  # no pseudo-positive inputs: no term
    off, _ = forward(cross_video=False)
    assert "loss_crossvideo" not in off and off["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-6)


# --- the loader ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("shards")), shards=3, per_shard=12, frames=4, size=32, seed=2)


def _captions(shard_dir: str) -> dict[str, str]:
    return {x["key"]: x["json"]["caption"] for x in read_samples(data.read_manifest(shard_dir).urls)}


def _shard_of(shard_dir: str) -> dict[str, str]:
    """Sample key -> the embedding shard name of its data shard (emb-NNNNNN for shard-NNNNNN.tar)."""
    return {x["key"]: "emb-" + url.rsplit("shard-", 1)[1][:6]
            for url in data.read_manifest(shard_dir).urls for x in read_samples([url])}


def _hand_table(shard_dir: str, path: str, captions_stored: bool = True, **fields) -> tuple[str, dict, dict]:
    """Every other clip gets two clips of other videos whose caption differs from its own (so an attached caption
    can only have come from the table); written as `cluster.index mine` writes it: one part per shard."""
    captions = _captions(shard_dir)
    shard_of = _shard_of(shard_dir)
    keys = sorted(captions)
    table = {}
    for key in keys[::2]:
        others = [o for o in keys if o.split("__")[0] != key.split("__")[0] and captions[o] != captions[key]]
        table[key] = [[others[0], 0.9, 0.95], [others[-1], 0.8, 0.93]]
    parts, videos = [], []
    for shard in sorted(set(shard_of.values())):
        rows = [(k, [(n, s, c, captions[n]) for n, s, c in pos]) for k, pos in table.items() if shard_of[k] == shard]
        parts.append(pseudo_table.write_part(path, shard, rows))
        videos.append(sorted({data.video_of(k) for k, _ in rows}))
    manifest = {"k": 2, "tau": 0.9, "shards": shard_dir, "captions": captions_stored,
                "counts": {"with_positives": len(table), "pairs": 2 * len(table)}, **fields}
    pseudo_table.write_manifest(path, manifest, parts, videos)
    return path, table, captions


def _loader(shard_dir, **kw):
    return data.RankLoader(data.read_manifest(shard_dir), micro_batch=4, batches_per_epoch=6, seed=3, rank=0,
                           shuffle_buffer=8, **kw)


def test_loader_attaches_a_neighbours_caption_deterministically(shard_dir, tmp_path):
    url, table, captions = _hand_table(shard_dir, str(tmp_path / "pp"))
    pp = PseudoPositives.load(url, shard_dir)
    assert pp.counts["clips"] == len(table) and pp.counts["parts"] == 3

    def draws(loader, n):
        out = []
        for _ in range(n):
            b = loader.next()
            out.append(list(zip(b["keys"], pp.attach(b))))
        return out

    a = _loader(shard_dir)
    first = draws(a, 8)
    saved = json.loads(json.dumps(a.position.to_dict()))
    rest = draws(a, 6)
    picked = set()
    for key, caption in (d for batch in first + rest for d in batch):
        if key in table:
            choices = [captions[n] for n, _, _ in table[key]]
            assert caption in choices and caption != captions[key]
            picked.add(choices.index(caption))
        else:
            assert caption is None
    assert picked == {0, 1}  # draws differ, so both neighbours get used
    assert draws(_loader(shard_dir), 14) == first + rest  # same seeds, same choices
    resumed = _loader(shard_dir, position=data.DataPosition.from_dict(saved))
    assert draws(resumed, 6) == rest  # a resume picks what the uninterrupted run picked
    # with loader processes the seeds are made in the workers: still one fixed sequence, still resumable
    two = draws(_loader(shard_dir, loader_workers=2), 10)
    assert draws(_loader(shard_dir, loader_workers=2), 10) == two


def test_model_inputs_follow_the_config(shard_dir, tmp_path):
    from pretrain.config import load
    from pretrain.model import build_model

    url, table, _ = _hand_table(shard_dir, str(tmp_path / "pp"))
    cfg = load(TINY, [f"data.shards={shard_dir}", f"data.pseudo_positives={url}"])
    model = build_model(cfg.model)
    batch = _loader(shard_dir).next()
    inputs = data.model_inputs(batch, cfg, model.tokenize, "cpu")
    assert inputs["pp_mask"].tolist() == [k in table for k in batch["keys"]]
    assert inputs["pp_tokens"].shape == inputs["tokens"].shape
    off = load(TINY, [f"data.shards={shard_dir}", f"data.pseudo_positives={url}", "model.cross_video=false"])
    assert set(data.model_inputs(batch, off, model.tokenize, "cpu")) == {"frames", "tokens", "valid_frames"}


def test_a_process_reads_only_the_parts_of_its_shards(shard_dir, tmp_path):
    """A loader over one shard opens the table's manifest, its video index and that shard's part, no other file
    (every open(2) of the process is counted by an audit hook); a part read once stays cached."""
    import sys

    url, table, captions = _hand_table(shard_dir, str(tmp_path / "pp"))
    opened: list[str] = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and
                     str(args[0]).startswith(url) else None)
    pp = PseudoPositives.load(url, shard_dir)
    one = data.ShardSet(data.read_manifest(shard_dir).urls[1:2], data.read_manifest(shard_dir).samples[1:2])
    loader = data.RankLoader(one, micro_batch=4, batches_per_epoch=3, seed=3, rank=0, shuffle_buffer=8)
    got = [c for _ in range(3) for c in pp.attach(loader.next())]
    assert any(got)
    names = [os.path.basename(p) for p in opened]
    assert set(names) == {"table.json", "videos.npy", "video_parts.npy", "part-emb-000001.npz"}
    assert names.count("part-emb-000001.npz") == 1 and pp.table.opened == ["part-emb-000001.npz"]


def test_other_shard_set_is_refused_or_counted(shard_dir, tmp_path):
    other, _, _ = _hand_table(shard_dir, str(tmp_path / "other"), shards=str(tmp_path / "elsewhere"))
    with pytest.raises(pseudo_table.UnknownTableKeys, match="elsewhere"):
        PseudoPositives.load(other, shard_dir)
    assert PseudoPositives.load(other, shard_dir, strict=False).counts["other_shard_set"] == 1


def test_old_tables_and_bad_parts_are_refused_clearly(shard_dir, tmp_path):
    old = str(tmp_path / "pp.json")  # format 2: one JSON file
    json.dump({"format": 2, "k": 2, "tau": 0.9, "shards": shard_dir, "table": {}, "captions": {}}, open(old, "w"))
    with pytest.raises(pseudo_table.TableError, match=r"pp\.json.*format 1 or 2.*cluster.index mine mine.overwrite=true") as e:
        PseudoPositives.load(old, shard_dir)
    assert "\n" not in str(e.value)
    url, _, _ = _hand_table(shard_dir, str(tmp_path / "nocap"), captions_stored=False)
    with pytest.raises(pseudo_table.TableError, match=r"nocap.*holds no captions.*cluster.index mine"):
        PseudoPositives.load(url, shard_dir)
    url, table, _ = _hand_table(shard_dir, str(tmp_path / "cut"))
    part = os.path.join(url, "part-emb-000000.npz")
    blob = open(part, "rb").read()
    open(part, "wb").write(blob[: len(blob) // 2])
    pp = PseudoPositives.load(url, shard_dir)  # parts are checked when first read
    key = next(k for k in table if pp.table.part_of(data.video_of(k)) == 0)
    with pytest.raises(pseudo_table.TableError, match=r"part-emb-000000\.npz.*truncated"):
        pp.choose(key, 0)


def test_the_table_is_read_without_any_shard_tar(shard_dir, tmp_path):
    """The caption pass is gone: with every tar of the shard set removed, the table still gives each clip the
    caption of one of its neighbours (what a rank used to read from all tars now comes from the table)."""
    import shutil

    bare = str(tmp_path / "shards_without_tars")
    url, table, captions = _hand_table(shard_dir, str(tmp_path / "pp"), shards=bare)
    shutil.copytree(shard_dir, bare, ignore=shutil.ignore_patterns("*.tar"))
    assert not [n for n in os.listdir(bare) if n.endswith(".tar")]
    pp = PseudoPositives.load(url, bare)
    key = next(iter(table))
    got = pp.choose(key, 7)
    assert got in [captions[n] for n, _, _ in table[key]]


# --- pretraining under Ray Train with a mined table -----------------------------------------------------------

@pytest.fixture(scope="module")
def mined(ray_cluster, tmp_path_factory):
    """The demo's chain at test size: a random micro export embeds the shards, a flat index, mining."""
    from cluster.index import run_build, run_embed, run_mine
    from common import config as C
    from index.config import IndexConfig
    from pretrain.model import build_model, save_export
    from pretrain.model_config import ModelConfig

    root = tmp_path_factory.mktemp("pp_train")
    shards = make_shards(str(root / "shards"), shards=4, per_shard=16, frames=4, size=32, bad_samples=1)
    torch.manual_seed(0)
    export = str(root / "export")
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=4,
                                        frames_selected=2, max_words=12)), export)
    cfg = C.parse(IndexConfig, [f"shards={shards}", "model_tag=round1", f"embed.checkpoint={export}",
                                "build.factory=Flat", "mine.k=3", "mine.search_k=60"])
    run_embed(cfg, ray=ray_cluster)
    run_build(cfg, incremental=False, ray=ray_cluster)
    report = run_mine(cfg, ray=ray_cluster)
    assert report["clips_in_table"] > 0
    mined = pseudo_table.read_manifest(report["table"])
    assert mined["format"] == 3 and mined["shards"] == os.path.abspath(shards) and mined["captions"]
    return shards, report["table"], root


def _tiny(run, shards, *extra):
    from pretrain.config import load

    return load(TINY, [f"run={run}", f"data.shards={shards}", "max_steps=3", "checkpoint_every=3", "log_every=1",
                       "progress=false", "export=false", "cluster.workers=2", *extra])


def _tensorboard_tags(run: str) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in glob.glob(os.path.join(run, "tensorboard", "events.out.tfevents.*")):
        acc = EventAccumulator(path)
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


def test_pretraining_with_the_table(mined):
    from cluster.pretrain import run_pretrain

    shards, table, root = mined
    run = str(root / "with_table")
    result = run_pretrain(_tiny(run, shards, f"data.pseudo_positives={table}", "model.pseudo_positive_weight=0.5"))
    assert result.error is None
    m = result.metrics
    assert m["step"] == 3 and m["loss_crossvideo"] > 0 and 0 < m["crossvideo_frac"] <= 1
    # the total carries the weighted term on top of Eq. 1's two losses
    assert m["loss"] == pytest.approx(m["loss_local"] + m["loss_global"] + 0.5 * m["loss_crossvideo"], rel=1e-5)
    assert "loss_crossvideo" in _tensorboard_tags(run)


def test_pretraining_with_the_switch_off(mined):
    from cluster.pretrain import run_pretrain

    shards, table, root = mined
    run = str(root / "switched_off")
    result = run_pretrain(_tiny(run, shards, f"data.pseudo_positives={table}", "model.cross_video=false"))
    assert result.error is None and result.metrics["step"] == 3
    assert "loss_crossvideo" not in result.metrics and "loss_crossvideo" not in _tensorboard_tags(run)
    assert result.metrics["loss"] == pytest.approx(result.metrics["loss_local"] + result.metrics["loss_global"],
                                                   rel=1e-5)
