"""Pseudo-positive mining: the caption gate (cosine > tau), never a clip's own video, equal to a brute-force
reference and to the one-JSON implementation it replaced, the same through Ray tasks; the table folder (one part
per embedding shard) read back whole or lazily, refusing keys it does not know, older formats and truncated parts."""
from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from common import pseudo_table
from index import build, mining, store, synthetic
from index.config import BuildSection
from index.errors import IndexInputError, UnknownKeys

D = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mining")
    data = synthetic.corpus(videos=60, clips_per_video=10, d=D, actions=8, seed=4, text_spread=0.35)
    emb = str(tmp / "emb")
    synthetic.write_shards(emb, data, 150)
    url = str(tmp / "flat")
    build.build(BuildSection(factory="Flat", shards_per_task=2), emb, url)
    return data, emb, url


def _mine(url, out, **kw):
    """Mine into the folder `out` and read the whole table back as {key: [[neighbour, score, cosine], ...]}."""
    res = mining.mine(url, str(out), **kw)
    res["table"] = {k: [list(p[:3]) for p in pos] for k, pos in pseudo_table.Table(str(out))}
    return res


def brute_force(data, k, tau):
    """Reference: for each clip, clips of other videos with caption cosine > tau, by video similarity."""
    vsim = data["video"] @ data["video"].T
    tsim = data["text"] @ data["text"].T
    other = data["video_ids"][:, None] != data["video_ids"][None, :]
    out = {}
    for i in range(len(vsim)):
        cand = np.flatnonzero(other[i] & (tsim[i] > tau))
        best = cand[np.argsort(-vsim[i, cand], kind="stable")][:k]
        if len(best):
            out[str(data["keys"][i])] = [str(data["keys"][j]) for j in best]
    return out


def test_gate_and_other_videos(corpus, tmp_path):
    data, emb, url = corpus
    res = _mine(url, tmp_path / "t", k=5, tau=0.9, search_k=600, clips_per_task=200)
    table = res["table"]
    row = {k: i for i, k in enumerate(data["keys"].tolist())}
    tsim = data["text"] @ data["text"].T
    assert res["counts"]["clips"] == 600 and res["counts"]["rejected_text_gate"] > 0
    assert res["counts"]["rejected_same_video"] >= 600  # at least each clip itself
    pairs = 0
    for key, pos in table.items():
        assert 1 <= len(pos) <= 5
        for nkey, score, tcos in pos:
            i, j = row[key], row[nkey]
            assert data["video_ids"][i] != data["video_ids"][j]
            assert tsim[i, j] > 0.9 and tcos == pytest.approx(tsim[i, j], abs=1e-4)
            pairs += 1
        assert [p[1] for p in pos] == sorted((p[1] for p in pos), reverse=True)
    assert pairs == res["counts"]["pairs"] > 0
    # with every clip a candidate, mining equals the brute-force definition exactly
    assert {k: [p[0] for p in v] for k, v in table.items()} == brute_force(data, 5, 0.9)
    # the gate matters: a looser tau admits pairs whose captions disagree
    loose = _mine(url, tmp_path / "loose", k=5, tau=-1.0, search_k=600, clips_per_task=600)
    assert loose["counts"]["pairs"] > res["counts"]["pairs"]
    assert any(tsim[row[k], row[p[0]]] <= 0.9 for k, v in loose["table"].items() for p in v)
    # pseudo-positives mostly share the hidden action (captions agree because actions do)
    act = data["action"]
    same = np.mean([act[row[k]] == act[row[p[0]]] for k, v in table.items() for p in v])
    assert same > 0.95


def test_ray_equals_local(corpus, ray_cluster, tmp_path):
    from cluster.index import ray_mapper

    data, emb, url = corpus
    local = _mine(url, tmp_path / "local", k=3, tau=0.9, search_k=64, clips_per_task=100)
    remote = _mine(url, tmp_path / "remote", k=3, tau=0.9, search_k=64, clips_per_task=100,
                   mapper=ray_mapper(ray_cluster))
    assert remote["table"] == local["table"] and remote["counts"] == local["counts"]
    # over an IVF index the neighbours are approximate but the rules still hold
    ivf = str(tmp_path / "ivf")
    build.build(BuildSection(factory="IVF16,Flat"), emb, ivf)
    approx = _mine(ivf, tmp_path / "approx", k=3, tau=0.9, search_k=64, clips_per_task=300, nprobe=4)
    vid = dict(zip(data["keys"].tolist(), data["video_ids"].tolist()))
    assert approx["counts"]["pairs"] > 0
    # equal to the one-process implementation it replaced (every caption vector in memory, one search of all clips)
    index, _ = store.load(ivf)
    faiss.extract_index_ivf(index).nprobe = 4
    scores, ids = index.search(data["video"], 64)
    before = {}
    for i in range(len(ids)):
        pos = [(j, sc) for j, sc in zip(ids[i], scores[i]) if j >= 0 and data["video_ids"][j] != data["video_ids"][i]
               and float(data["text"][j] @ data["text"][i]) > 0.9][:3]
        if pos:
            before[str(data["keys"][i])] = [(str(data["keys"][j]), float(sc)) for j, sc in pos]
    assert {k: [(p[0], pytest.approx(p[1], abs=1e-6)) for p in v] for k, v in approx["table"].items()} == before
    assert all(vid[k] != vid[p[0]] and p[2] > 0.9 for k, v in approx["table"].items() for p in v)


def test_table_roundtrip_and_unknown_keys(corpus, tmp_path):
    data, emb, url = corpus
    out = str(tmp_path / "pp")
    res = _mine(url, out, k=2, tau=0.9, search_k=64, clips_per_task=1000)
    known = set(data["keys"].tolist())
    table, counts = mining.read_table(out, known)
    assert counts == {} and table == {k: [tuple(p) for p in v] for k, v in res["table"].items()}

    out = str(tmp_path / "pp.json")  # a legacy one-file table (format 2), still read by read_table (finetune)
    json.dump({"format": 2, "table": res["table"], "captions": {}}, open(out, "w"))
    raw = json.load(open(out))
    first = next(iter(raw["table"]))
    raw["table"]["ghost__s0000"] = [[first, 0.9, 0.95]]
    raw["table"][first].append(["elsewhere__s0001", 0.5, 0.95])
    json.dump(raw, open(out, "w"))
    with pytest.raises(UnknownKeys, match="ghost__s0000|elsewhere__s0001"):
        mining.read_table(out, known)
    table, counts = mining.read_table(out, known, strict=False)
    assert counts == {"unknown_clip": 1, "unknown_neighbour": 1}
    assert "ghost__s0000" not in table and all(p[0] in known for v in table.values() for p in v)

    open(out, "w").write('{"table": []}')
    with pytest.raises(IndexInputError, match="not a pseudo-positive table"):
        mining.read_table(out, known)
    with pytest.raises(ValueError, match="search_k"):
        mining.mine(url, str(tmp_path / "x"), k=10, tau=0.9, search_k=5, clips_per_task=100)


def test_job_entry_build_add_mine(tmp_path, ray_cluster):
    """The Ray job entry (cluster.index) end to end: build, incremental add, mine, with a parsed IndexConfig."""
    from cluster.index import run_build, run_mine
    from common import config as C
    from index.config import IndexConfig

    data = synthetic.corpus(videos=40, clips_per_video=10, d=D, actions=5, seed=7)
    shards = str(tmp_path / "shards")
    cfg = C.parse(IndexConfig, [f"shards={shards}", "model_tag=tiny", "build.factory=IVF8,Flat",
                                "build.shards_per_task=1", "mine.k=3", "search.nprobe=8"])
    emb = cfg.embeddings_url()
    assert emb == os.path.join(shards, "embeddings", "tiny")
    synthetic.write_shards(emb, {k: v[:300] for k, v in data.items()}, 100)
    assert run_build(cfg, incremental=False, ray=ray_cluster)["count"] == 300
    synthetic.write_shards(emb, {k: v[300:] for k, v in data.items()}, 100, first_shard=3)
    assert run_build(cfg, incremental=True, ray=ray_cluster)["count"] == 400
    report = run_mine(cfg, ray=ray_cluster)
    assert report["table"] == os.path.join(emb, "index", "pseudo_positives")
    assert report["counts"]["clips"] == 400 and report["clips_in_table"] > 0
    table, counts = mining.read_table(report["table"], set(data["keys"].tolist()))
    assert len(table) == report["clips_in_table"] and counts == {}
    assert os.path.exists(os.path.join(emb, "index", "config.yaml"))
