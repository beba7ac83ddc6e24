"""The pretraining data stream: contract shards in, deterministic resumable batches out, bad data counted."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from pretrain import data
from pretrain_fixtures import make_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("shards")), shards=3, per_shard=12, frames=4, size=32)


def loader(shards_url, **kw):
    args = dict(micro_batch=4, batches_per_epoch=6, seed=3, rank=0, loader_workers=0, shuffle_buffer=8)
    args.update(kw)
    return data.RankLoader(data.read_manifest(shards_url), **args)


def test_manifest_and_batch_format(shard_dir):
    ss = data.read_manifest(shard_dir)
    assert ss.total_samples == 36 and len(ss.urls) == 3
    assert all(os.path.isabs(u) for u in ss.urls)
    b = loader(shard_dir).next()
    assert b["frames"].shape == (4, 4, 32, 32, 3) and b["frames"].dtype == torch.uint8
    assert len(b["captions"]) == 4 and all(c.endswith("cube") for c in b["captions"])
    assert all("__s" in k for k in b["keys"])
    # a red clip is red where the action's square is: decoding kept the pixel layout (RGB, H, W)
    red = [i for i, c in enumerate(b["captions"]) if "red" in c]
    if red:
        f = b["frames"][red[0], 0].numpy().reshape(-1, 3).astype(int)
        assert ((f[:, 0] > 180) & (f[:, 1] < 90)).sum() >= 16


def test_steps_per_epoch():
    assert data.steps_per_epoch(1000, 4, 2, 8) == 15
    assert data.steps_per_epoch(3, 4, 1, 2) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_is_deterministic_and_resumes_exactly(shard_dir, workers):
    a = loader(shard_dir, loader_workers=workers)
    keys, saved = [], None
    for i in range(14):  # crosses two epoch boundaries (6 batches each)
        keys.append(tuple(a.next()["keys"]))
        if i == 7:
            saved = json.loads(json.dumps(a.position.to_dict()))  # as stored in a checkpoint
    assert saved["epoch"] == 1 and saved["batch"] == 2
    again = loader(shard_dir, loader_workers=workers)
    assert [tuple(again.next()["keys"]) for _ in range(14)] == keys
    resumed = loader(shard_dir, loader_workers=workers, position=data.DataPosition.from_dict(saved))
    assert [tuple(resumed.next()["keys"]) for _ in range(6)] == keys[8:14]
    # a new epoch is a new draw, not a replay of the previous one
    assert keys[0:6] != keys[6:12]


def test_ranks_and_seeds_get_different_streams(shard_dir):
    first = lambda **kw: [tuple(loader(shard_dir, **kw).next()["keys"]) for _ in range(1)]
    assert first(rank=0) != first(rank=1)
    assert first(seed=1) != first(seed=2)


def test_resume_needs_same_worker_count(shard_dir):
    with pytest.raises(data.DataError, match="loader_workers"):
        loader(shard_dir, loader_workers=2, position=data.DataPosition(0, 3, [5]))


def test_corrupt_samples_and_shards_are_skipped_and_counted(tmp_path, caplog):
    url = make_shards(str(tmp_path), shards=3, per_shard=8, bad_samples=3, truncated_shards=1, missing_shards=1)
    # garbage where a shard should be
    with open(os.path.join(url, "shard-000001.tar"), "wb") as f:
        f.write(b"\x00garbage" * 300)
    ld = loader(url, shuffle_buffer=0, batches_per_epoch=100)
    seen = set()
    with caplog.at_level("WARNING"):
        for _ in range(10):
            b = ld.next()
            seen.update(b["keys"])
            assert b["frames"].shape == (4, 4, 32, 32, 3)
    counts = dict(ld.skipped)
    assert counts.get("bad_jpeg", 0) >= 1
    assert counts.get("unreadable_shard", 0) >= 1  # listed in the manifest, absent on storage
    assert counts.get("corrupt_shard", 0) + counts.get("short_shard", 0) >= 1
    bad = {f"v{s:03d}00__s{j:04d}" for s in range(3) for j in range(3)}
    assert not seen & bad  # the broken samples never reach a batch
    assert "skipping" in caplog.text


def test_all_shards_broken_is_a_clear_error(tmp_path):
    url = make_shards(str(tmp_path), shards=1, per_shard=4, missing_shards=2)
    os.remove(os.path.join(url, "shard-000000.tar"))
    ld = loader(url, max_bad_shards=5)
    with pytest.raises(data.DataError, match="gave no sample"):
        ld.next()


def test_missing_manifest(tmp_path):
    with pytest.raises(data.DataError, match="manifest.json"):
        data.read_manifest(str(tmp_path))


def test_shards_on_s3(tmp_path, s3_bucket):
    from common import fsio

    local = make_shards(str(tmp_path / "s"), shards=2, per_shard=8)
    url = f"{s3_bucket}/shards"
    for name in os.listdir(local):
        fsio.put_file_atomic(os.path.join(local, name), fsio.join(url, name))
    remote = [tuple(loader(url).next()["keys"]) for _ in range(1)]
    here = [tuple(loader(local).next()["keys"]) for _ in range(1)]
    assert remote == here  # same draws whatever the storage


def test_decode_rejects_bad_samples():
    with pytest.raises(data.SampleError) as e:
        data.decode_sample({"__key__": "k", "json": b"{", "f00.jpg": b""})
    assert e.value.reason == "bad_json"
    with pytest.raises(data.SampleError) as e:
        data.decode_sample({"__key__": "k", "f01.jpg": b"", "json": json.dumps(
            {"video_id": "v", "caption": "x", "frame_times": [0.0, 1.0], "window_start": 0, "window_end": 2}).encode()})
    assert e.value.reason == "missing_frames"
    with pytest.raises(data.SampleError) as e:
        data.decode_sample({"__key__": "k", "json": b'{"caption": ""}'})
    assert e.value.reason == "no_caption"
    rng = np.random.default_rng(0)
    from pretrain_fixtures import sample_members

    raw = {"__key__": "v__s0000", **{n.split(".", 1)[1]: d for n, d in sample_members(rng, "v", 0, 3, 16)}}
    frames, caption, meta = data.decode_sample(raw)
    assert frames.shape == (3, 16, 16, 3) and meta["valid_frames"] == 3 and caption == meta["caption"]


@pytest.mark.parametrize("k", [2, 4])
def test_video_grouped_batches_hold_k_clips_of_each_video(shard_dir, k):
    """clips_per_video=k: every batch of 4 is 4/k videos with k distinct clips each (every video here has 4)."""
    a = loader(shard_dir, clips_per_video=k)
    batches = [a.next()["keys"] for _ in range(12)]
    videos_seen = set()
    for keys in batches:
        assert len(set(keys)) == 4, keys                          # never the same clip twice
        vids = [data.video_of(key) for key in keys]
        runs = [vids[i:i + k] for i in range(0, 4, k)]
        assert all(len(set(r)) == 1 for r in runs), vids          # k consecutive clips of one video ...
        assert len({r[0] for r in runs}) == 4 // k, vids          # ... and another video in each run
        videos_seen.update(vids)
    assert len(videos_seen) > 4  # the groups are drawn across the shard set, not one shard's videos in order
    # ungrouped batches of the same stream mostly mix videos (what the switch changes)
    plain = [loader(shard_dir, shuffle_buffer=32).next()["keys"]]
    assert len({data.video_of(key) for key in plain[0]}) > 4 // k or k == 4


def test_video_grouped_stream_resumes_exactly(shard_dir):
    a = loader(shard_dir, clips_per_video=2)
    keys, saved = [], None
    for i in range(10):
        keys.append(tuple(a.next()["keys"]))
        if i == 4:
            saved = json.loads(json.dumps(a.position.to_dict()))
    resumed = loader(shard_dir, clips_per_video=2, position=data.DataPosition.from_dict(saved))
    assert [tuple(resumed.next()["keys"]) for _ in range(5)] == keys[5:10]


def test_clips_per_video_must_divide_the_micro_batch():
    from common.config import ConfigError
    from pretrain.config import load, validate

    with pytest.raises(ConfigError, match="clips_per_video"):
        validate(load(None, ["data.shards=x", "data.micro_batch=4", "data.clips_per_video=3"]))


def test_model_inputs_carry_verb_swapped_hard_negatives(shard_dir):
    from pretrain.config import load

    cfg = load(None, [f"data.shards={shard_dir}", "data.verb_swap={cut: cutting, stir: stirring, pour: pouring}"])
    batch = loader(shard_dir).next()
    seen = []
    inputs = data.model_inputs(batch, cfg, lambda texts: seen.append(list(texts)) or torch.zeros(len(texts), 3),
                               "cpu")
    captions, hard = seen[0], seen[1]
    assert inputs["hard_mask"].tolist() == [any(v in c.split() for v in ("cut", "stir", "pour")) for c in captions]
    for c, h, m in zip(captions, hard, inputs["hard_mask"].tolist()):
        assert (h != c and h.split()[1:] == c.split()[1:]) if m else h == ""
    plain = data.model_inputs(batch, load(None, [f"data.shards={shard_dir}"]), lambda t: torch.zeros(len(t), 3), "cpu")
    assert "hard_tokens" not in plain
