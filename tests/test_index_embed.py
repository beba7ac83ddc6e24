"""The embedding job (`cluster.index embed`) on a real shard set with a real (tiny, random) export, through Ray
actors: vectors equal the model's own, runs resume, bad samples and a broken tar are counted and skipped, and the
embeddings feed build, mine and search."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

from common import config as C
from common import pseudo_table
from index import embshards, mining, store
from index.config import IndexConfig
from pretrain_fixtures import make_shards
from shards import reader

SHARDS, PER_SHARD, FRAMES = 4, 8, 4


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from pretrain.model import build_model, save_export
    from pretrain.model_config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=FRAMES,
                                    frames_selected=2, max_words=12))
    out = str(tmp_path_factory.mktemp("export"))
    save_export(model, out)
    return out


@pytest.fixture(scope="module")
def embedded(ray_cluster, export, tmp_path_factory):
    """4 shards of 8 samples: the first sample of each has an undecodable JPEG, the last shard is cut short."""
    from cluster.index import run_embed

    shards = make_shards(str(tmp_path_factory.mktemp("shards")), shards=SHARDS, per_shard=PER_SHARD,
                         frames=FRAMES, size=32, seed=5, bad_samples=1, truncated_shards=1)
    cfg = _cfg(shards, export)
    return shards, cfg, run_embed(cfg, ray=ray_cluster)


def _cfg(shards: str, export: str, *extra: str) -> IndexConfig:
    return C.parse(IndexConfig, [f"shards={shards}", "model_tag=micro", f"embed.checkpoint={export}",
                                 "embed.batch_size=3", "build.factory=Flat", "mine.k=3", "mine.search_k=64",
                                 *extra])


def _samples(tar_path: str) -> dict[str, tuple[dict, np.ndarray]]:
    """{window key: (window json, (U, H, W, 3) frames)} of the usable windows of a tar (the readable part of a cut
    one), cut by the shard reader."""
    return {s["key"]: (s["json"], s["frames"]) for s in reader.read_samples([tar_path])}


def _read_all(emb_dir: str) -> dict[str, embshards.EmbShard]:
    complete, _ = embshards.list_shards(emb_dir)
    return {name: embshards.read_shard(emb_dir, name) for name, _ in complete}


def test_embed_report_and_failures(embedded):
    shards, cfg, report = embedded
    emb = cfg.embeddings_url()
    assert report["embedded"] == SHARDS and report["already_done"] == 0
    stats = {n: s for n, s in embshards.list_shards(emb)[0]}
    assert sorted(stats) == [f"emb-{i:06d}" for i in range(SHARDS)]
    for name in sorted(stats)[:-1]:  # whole shards: all but the broken sample
        assert stats[name]["samples"] == PER_SHARD - 1 and stats[name]["failures"] == {"bad_jpeg": 1}
        (bad,) = stats[name]["failed"]
        assert bad["key"].endswith("__s0000") and bad["reason"] == "bad_jpeg" and "f00001.jpg" in bad["detail"]
        assert stats[name]["checkpoint"] == cfg.embed.checkpoint and stats[name]["dim"] == 64
    cut = stats[f"emb-{SHARDS - 1:06d}"]
    # the cut tar keeps what precedes the cut; the break itself is one counted failure
    readable = len(_samples(os.path.join(shards, f"shard-{SHARDS - 1:06d}.tar")))  # the reader skips the bad one
    assert 0 < cut["samples"] == readable < PER_SHARD - 1
    assert cut["failures"].get("corrupt_shard") == 1
    assert report["samples"] == sum(s["samples"] for s in stats.values())
    assert report["failures"]["bad_jpeg"] == SHARDS
    from pretrain.export_key import export_key

    assert report["export"] == export_key(cfg.embed.checkpoint) and {s["export"] for s in stats.values()} == \
        {report["export"]}
    assert os.path.exists(os.path.join(emb, "config.yaml"))


def test_vectors_equal_direct_model_computation(embedded, export):
    from pretrain.model import load_model

    shards, cfg, _ = embedded
    model = load_model(export)
    emb = _read_all(cfg.embeddings_url())
    raw = _samples(os.path.join(shards, "shard-000001.tar"))
    shard = emb["emb-000001"]
    assert "v00100__s0000" not in shard.keys.tolist()  # the broken sample was skipped
    for row in (0, 3, len(shard) - 1):
        key = str(shard.keys[row])
        meta, frames = raw[key]
        frames = torch.from_numpy(frames)
        with torch.no_grad():
            fg, _, _ = model.encode_frames(frames[None])
            video = fg[0, : meta["valid_frames"]].mean(0)
            text, _, _ = model.encode_text(model.tokenize([meta["caption"]]))
        np.testing.assert_allclose(shard.video[row], (video / video.norm()).numpy(), atol=2e-5)
        np.testing.assert_allclose(shard.text[row], text[0].numpy(), atol=2e-5)
        assert shard.video_ids[row] == meta["video_id"]
        assert shard.times[row].tolist() == [meta["window_start"], meta["window_end"]]
    assert np.allclose(np.linalg.norm(shard.video, axis=1), 1, atol=1e-5)


def test_embed_resumes(embedded, export, capsys):
    from cluster.index import main, run_embed

    shards, cfg, _ = embedded
    emb = cfg.embeddings_url()
    before = _read_all(emb)
    mtimes = {n: os.path.getmtime(embshards.npz_url(emb, n)) for n in before}
    # the job entry, a second time: everything is marked done, nothing is embedded again, not a byte rewritten
    # (config.yaml included), also when the same export is named by another path
    digest = _folder_digest(emb)
    copy = shutil.copytree(export, os.path.join(os.path.dirname(shards), "same-export-elsewhere"))
    assert main(["embed", f"shards={shards}", "model_tag=micro", f"embed.checkpoint={copy}"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["already_done"] == SHARDS and again["embedded"] == 0
    assert {n: os.path.getmtime(embshards.npz_url(emb, n)) for n in before} == mtimes
    assert _folder_digest(emb) == digest
    # a run that died after the npz but before the marker: only that shard is redone, to the same vectors
    os.remove(embshards.stats_url(emb, "emb-000002"))
    redo = run_embed(cfg)
    assert redo["embedded"] == 1 and redo["already_done"] == SHARDS - 1
    after = embshards.read_shard(emb, "emb-000002")
    assert after.keys.tolist() == before["emb-000002"].keys.tolist()
    np.testing.assert_allclose(after.video, before["emb-000002"].video, atol=1e-6)


def _folder_digest(folder: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_another_export_under_the_same_tag_is_refused_or_reembedded(embedded, export, ray_cluster, tmp_path):
    """Stale embeddings: another export under a used tag is refused before anything is written (not mixed, config
    untouched); embed.overwrite=true re-embeds every shard with it; the index built from the old ones is then
    refused by add/mine/search until rebuilt. On a copy of the fixture's shard set and embeddings, so the tests that
    follow read the fixture's as they were."""
    from cluster.index import run_build, run_embed, run_mine, run_search
    from index.errors import StaleEmbeddings
    from pretrain.export_key import export_key
    from pretrain.model import build_model, save_export
    from pretrain.model_config import ModelConfig

    shards = str(tmp_path / "shards")
    shutil.copytree(embedded[0], shards)
    cfg = _cfg(shards, export)
    emb = cfg.embeddings_url()
    torch.manual_seed(1)
    other = str(tmp_path / "other-export")
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=FRAMES,
                                        frames_selected=2, max_words=12)), other)
    old, new = export_key(export), export_key(other)
    assert old != new
    built = run_build(cfg, incremental=False, ray=ray_cluster)
    digest = _folder_digest(emb)
    with pytest.raises(StaleEmbeddings, match=f"micro.*{old}.*{new}"):
        run_embed(_cfg(shards, other), ray=ray_cluster)
    assert _folder_digest(emb) == digest
    redo = run_embed(_cfg(shards, other, "embed.overwrite=true"), ray=ray_cluster)
    assert redo["embedded"] == SHARDS and redo["already_done"] == 0
    assert {s["export"] for _, s in embshards.list_shards(emb)[0]} == {new}
    for stale in (lambda: run_build(cfg, incremental=True, ray=ray_cluster), lambda: run_build(cfg, False),
                  lambda: run_mine(cfg), lambda: run_search(_cfg(shards, other, "search.clip=x"))):
        with pytest.raises(StaleEmbeddings, match="rebuild"):
            stale()
    rebuilt = run_build(_cfg(shards, other, "build.rebuild=true"), incremental=False, ray=ray_cluster)
    assert rebuilt["version"] == built["version"] + 1


def test_build_mine_search_on_embeddings(embedded, ray_cluster):
    from cluster.index import run_build, run_mine, run_search

    shards, cfg, _ = embedded
    emb = _read_all(cfg.embeddings_url())
    keys = [k for s in emb.values() for k in s.keys.tolist()]
    built = run_build(cfg, incremental=False, ray=ray_cluster)
    assert built["count"] == len(keys) and built["factory"] == "Flat"
    index_files = _folder_digest(cfg.index_url())
    # the index's columns read back exactly what the embedding shards hold (and the JSON sidecar used to)
    meta = store.read_meta(cfg.index_url())
    cols = store.columns(cfg.index_url(), meta)
    cat = lambda f: np.concatenate([f(s) for s in emb.values()])  # noqa: E731
    assert cols.strings("keys", 0, meta.count) == keys
    assert cols.strings("video_ids", 0, meta.count) == cat(lambda s: s.video_ids).tolist()
    assert cols.strings("captions", 0, meta.count) == cat(lambda s: s.captions).tolist()
    np.testing.assert_array_equal(cols.array("times", 0, meta.count), cat(lambda s: s.times))
    np.testing.assert_array_equal(cols.array("text", 0, meta.count), embshards.l2_normalise(cat(lambda s: s.text)))
    assert cols.strings("keys", 5, 9) == keys[5:9]  # by id range, across segments or not
    assert os.path.getsize(os.path.join(cfg.index_url(), "index.json")) < 4096  # no per-vector data in the JSON

    report = run_mine(cfg, ray=ray_cluster)
    # finished work: build, add and mine again are no-ops that say so and rewrite nothing
    assert run_build(cfg, incremental=False)["already_built"] and run_build(cfg, incremental=True)["already_built"]
    table_files = _folder_digest(cfg.index_url())
    assert run_mine(cfg)["already_mined"] and _folder_digest(cfg.index_url()) == table_files
    assert {k: v for k, v in table_files.items() if k in index_files} == index_files
    captions = {}
    for i in range(SHARDS):
        captions.update({k: m["caption"] for k, (m, _) in _samples(os.path.join(shards, f"shard-{i:06d}.tar")).items()})
    table, dropped = mining.read_table(report["table"], set(captions))
    assert dropped == {} and report["counts"]["clips"] == len(keys)
    # the table carries the neighbours' captions, as the tars hold them, one part per embedding shard
    carried = {p[0]: p[3] for _, pos in pseudo_table.Table(report["table"]) for p in pos}
    assert carried and carried == {n: captions[n] for pos in table.values() for n, _, _ in pos}
    assert report["parts"] == len(emb)
    video_of = {k: k.split("__")[0] for k in keys}
    for key, pos in table.items():
        assert 1 <= len(pos) <= 3 and all(video_of[n] != video_of[key] and cos > 0.9 for n, _, cos in pos)
    # identical captions embed identically (cosine 1 > tau): with every clip a candidate (search_k >= count),
    # each clip sharing its caption with a clip of another video has pseudo-positives
    shares = {k for k in keys if any(captions[o] == captions[k] and video_of[o] != video_of[k] for o in keys)}
    assert shares and shares <= set(table)

    by_clip = run_search(_cfg(shards, cfg.embed.checkpoint, f"search.clip={keys[5]}", "search.k=4"))
    lines = by_clip.splitlines()
    assert f"({len(keys)} clips)" in lines[0] and len(lines) == 2 + 4
    assert lines[2].split()[-1] == keys[5] and float(lines[2].split()[1]) == pytest.approx(1.0, abs=1e-4)
    # a text query finds the checkpoint recorded at embed time
    by_text = run_search(C.parse(IndexConfig, [f"shards={shards}", "model_tag=micro", "search.text=cut the red cube",
                                               "search.k=3"]))
    assert "text 'cut the red cube'" in by_text and len(by_text.splitlines()) == 2 + 3
