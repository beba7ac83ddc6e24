"""s3:// output and input against the real S3-protocol server on loopback (moto), sequentially and through Ray."""
from __future__ import annotations

import os
from collections import Counter

import pytest

from cluster.shard import RayDistributor
from common import fsio
from shards.config import ShardConfig
from shards.pipeline import run
from shards.reader import read_samples, shard_urls
from shard_fixtures import good_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3corpus")
    manifest = good_corpus(str(root / "corpus"), n=3, seconds=5)
    local_out = root / "local"
    run(_cfg(manifest, local_out))
    tars = {n: (local_out / n).read_bytes() for n in sorted(os.listdir(local_out)) if n.endswith(".tar")}
    return manifest, tars


def _cfg(manifest, out, **kw) -> ShardConfig:
    kw = {"distributor": "sequential", "progress": False, "window_frames": 4, "size": 48, "videos_per_shard": 2, **kw}
    return ShardConfig(manifest=str(manifest), output=str(out), **kw)


def _s3_tars(url: str) -> dict[str, bytes]:
    return {n: fsio.read_bytes(fsio.join(url, n)) for n in fsio.listdir(url) if n.endswith(".tar")}


def test_s3_output_matches_local_output(corpus, s3_bucket):
    manifest, local_tars = corpus
    out = f"{s3_bucket}/shards/v1"
    summary = run(_cfg(manifest, out))
    assert summary["shards_built"] == 2 and summary["total_samples"] == 9
    assert _s3_tars(out) == local_tars
    names = fsio.listdir(out)
    assert {"manifest.json", "config.yaml", "shard-000000.stats.json", "shard-000001.stats.json"} <= set(names)
    assert not [n for n in names if ".tmp" in n]
    counts = Counter()
    samples = list(read_samples([u for u, _ in shard_urls(out)], counts))
    assert len(samples) == 9 and not counts and samples[0]["frames"].shape == (4, 48, 48, 3)
    again = run(_cfg(manifest, out))
    assert again["shards_skipped"] == 2 and again["shards_built"] == 0


def test_s3_input_videos_give_the_same_samples(corpus, s3_bucket, tmp_path):
    manifest, local_tars = corpus
    root = os.path.dirname(manifest)
    src = f"{s3_bucket}/corpus"
    fs, _ = fsio.filesystem(src)
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            fsio.put_file_atomic(os.path.join(dirpath, f), fsio.join(src, rel))
    # one more row whose object does not exist
    text = fsio.read_text(f"{src}/manifest.csv") + "ghost,videos/ghost.mp4\n"
    fsio.write_text_atomic(f"{src}/manifest2.csv", text)
    captions = fsio.read_json(f"{src}/caption.json")
    captions["ghost"] = {"start": [0.0], "end": [1.0], "text": ["never decoded"]}
    fsio.write_json_atomic(f"{src}/caption2.json", captions)
    summary = run(_cfg(f"{src}/manifest.csv", tmp_path / "out"))
    assert {n: (tmp_path / "out" / n).read_bytes() for n in local_tars} == local_tars
    ghost = run(_cfg(f"{src}/manifest2.csv", tmp_path / "out2", videos_per_shard=3,
                     captions=f"{src}/caption2.json"))
    assert ghost["failures"] == {"missing_file": 1}
    assert summary["total_samples"] == ghost["total_samples"] == 9


def test_ray_workers_write_to_s3(corpus, s3_bucket, ray_cluster):
    manifest, local_tars = corpus
    out = f"{s3_bucket}/ray"
    summary = run(_cfg(manifest, out, distributor="ray"), RayDistributor(ray_cluster))
    assert summary["shards_failed"] == [] and summary["shards_built"] == 2
    assert _s3_tars(out) == local_tars
