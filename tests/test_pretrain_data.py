"""The pretraining data stream: contract shards in, deterministic resumable batches out, bad data counted."""
from __future__ import annotations

import json
import os

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


def test_format_1_shard_set_is_refused_in_one_line(tmp_path):
    """A shard set of format 1 (one sample per ASR segment, no "format" in manifest.json) is refused by the loader
    and by the reader, with what to re-run."""
    from shards import reader

    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [{"url": "shard-000000.tar", "samples": 3}],
                                                        "total_samples": 3}))
    for read in (data.read_manifest, reader.shard_urls):
        with pytest.raises(reader.ShardFormatError, match="format 1 .*re-run the sharder") as e:
            read(str(tmp_path))
        assert "\n" not in str(e.value)
    raw = {"__key__": "v__s0000", "__url__": "x.tar", "json": json.dumps(
        {"video_id": "v", "caption": "x", "frame_times": [0.0], "window_start": 0, "window_end": 1}).encode()}
    with pytest.raises(reader.ShardFormatError, match="x.tar sample v__s0000: shard format 1"):
        reader.check_json(raw)


def _stream(shard_dir, device=None, **kw):
    args = dict(micro_batch=4, seed=3, epoch=0, rank=0, streams=1, start_batch=0, positions=[0], shuffle_buffer=8,
                max_bad_shards=5, device=device)
    return data.StreamDataset(data.read_manifest(shard_dir), **{**args, **kw})._batches(0)


def test_decode_switch_runs_the_device_path_on_cpu(shard_dir):
    """data.decode's device path (torchvision.io.decode_jpeg, batched, on a torch device) run with device cpu
    gives the CPU path's batches: the same windows, frames within the decoders' tolerance."""
    plain, device = _stream(shard_dir), _stream(shard_dir, device=torch.device("cpu"))
    for _ in range(3):
        a, b = next(plain), next(device)
        assert a["keys"] == b["keys"] and a["valid_frames"].tolist() == b["valid_frames"].tolist()
        assert b["frames"].dtype == torch.uint8 and b["frames"].shape == a["frames"].shape
        diff = (a["frames"].int() - b["frames"].int()).abs()
        assert diff.max().item() <= 2 and diff.float().mean().item() < 0.5
    with pytest.raises(data.DataError, match="CUDA" if not torch.cuda.is_available() else "loader_workers"):
        loader(shard_dir, decode="gpu", loader_workers=0 if not torch.cuda.is_available() else 2)
    assert loader(shard_dir, decode="auto", loader_workers=2).decode_device is None


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


def test_window_frames_is_chosen_at_training_time(shard_dir):
    """data.window_frames cuts windows of another U from the same shards (format 2 stores frames, not windows):
    the U frames centred on each segment, here the middle two of each 4-frame action."""
    short, full = loader(shard_dir, window_frames=2).next(), loader(shard_dir).next()
    assert short["keys"] == full["keys"] and full["frames"].shape == (4, 4, 32, 32, 3)
    assert short["frames"].shape == (4, 2, 32, 32, 3) and short["valid_frames"].tolist() == [2] * 4
    assert torch.equal(short["frames"], full["frames"][:, 1:3])
