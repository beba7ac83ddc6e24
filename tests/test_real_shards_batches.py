"""The loader's promises on a real shard set: synthetic mp4s (shards.synthetic) cut by the shard pipeline
(ffmpeg), then read back as video-grouped batches with MIL-NCE neighbour bags (data.clips_per_video,
model.mil_windows)."""
from __future__ import annotations

import json
import os

import pytest

from pretrain import data


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory):
    from shards.config import ShardConfig
    from shards.pipeline import run
    from shards.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("real")
    generate(SyntheticConfig(out=str(root / "corpus"), seed=5, n_train=4, n_test=1, min_seconds=16,
                             max_seconds=18).validate())
    out = str(root / "shards")
    summary = run(ShardConfig(manifest=str(root / "corpus" / "train" / "manifest.csv"), output=out, size=16,
                              window_frames=2, videos_per_shard=2, distributor="sequential",
                              progress=False).validate())
    assert summary["shards_built"] == 2 and not summary["failures"]
    with open(root / "corpus" / "train" / "caption.json") as fh:
        return out, json.load(fh)


def test_video_grouped_batches_and_neighbour_bags_on_real_shards(real_shards):
    shards, captions = real_shards
    k, b = 2, 4
    loader = data.RankLoader(data.read_manifest(shards), micro_batch=b, batches_per_epoch=8, seed=0, rank=0,
                             shuffle_buffer=8, clips_per_video=k, mil_windows=1, mil_shift=0.5)
    seen, filled = set(), 0
    for _ in range(8):
        batch = loader.next()
        vids = [data.video_of(key) for key in batch["keys"]]
        assert len(set(batch["keys"])) == b                                   # no clip twice
        runs = [vids[i:i + k] for i in range(0, b, k)]
        assert all(len(set(r)) == 1 for r in runs) and len({r[0] for r in runs}) == b // k, vids
        seen.update(vids)
        for key, bag, (a, e) in zip(batch["keys"], batch["neighbours"], batch["asr_spans"]):
            # the bag: the caption.json windows of the same video nearest before / after, within 0.5 s
            cap = captions[data.video_of(key)]
            spans = list(zip(cap["start"], cap["end"], cap["text"]))
            before = [t for s, f, t in spans if f <= a and a - f <= 0.5 and (s, f) != (a, e)][-1:]
            after = [t for s, f, t in spans if s >= e and s - e <= 0.5 and (s, f) != (a, e)][:1]
            assert bag == before + after, (key, bag)
            filled += len(bag)
    assert len(seen) == 4   # every video of the set comes up
    assert filled > 8       # most windows have a neighbour: the bags are really compared
