"""shards.reader, the one reader of contract 2: real tars holding each fault, the same reason wherever it is met
(the reader itself, pretraining's loader, the embedding job), and the reasons documented in docs/contracts.md."""
from __future__ import annotations

import json
import os
import re
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from pretrain_fixtures import video_members, write_tar
from shards import reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, SIZE = 4, 16


def _members(rng, vid: str, segs: list[int], fault: str | None = None) -> list[tuple[str, bytes]]:
    """One video sample of the contract (real JPEG frames, the sharder's json), windows of FRAMES frames each,
    with one fault put in: a whole-sample fault, or one in the window of its first segment (frames 0..3)."""
    m = dict(video_members(rng, vid, segs, FRAMES, SIZE))
    meta = json.loads(m[f"{vid}.json"])
    if fault == "missing_json":
        del m[f"{vid}.json"]
    elif fault == "bad_json":
        m[f"{vid}.json"] = b"{oops"
    elif fault == "no_caption":
        meta["segments"][0]["caption"] = "  "
        m[f"{vid}.json"] = json.dumps(meta).encode()
    elif fault == "missing_frames":
        del m[f"{vid}.f00002.jpg"]
    elif fault == "frame_count":  # a frame member beyond the frame_times
        m[f"{vid}.f{len(meta['frame_times']):05d}.jpg"] = m[f"{vid}.f00000.jpg"]
    elif fault == "bad_jpeg":
        m[f"{vid}.f00001.jpg"] = b"\xff\xd8 not a jpeg"
    elif fault == "bad_shape":
        m[f"{vid}.f00003.jpg"] = dict(video_members(rng, vid, [0], 1, SIZE * 2))[f"{vid}.f00000.jpg"]
    if fault != "missing_json":  # keep json last, as the sharder writes it
        m[f"{vid}.json"] = m.pop(f"{vid}.json")
    return list(m.items())


SAMPLE_FAULTS = ["missing_json", "bad_json", "frame_count"]         # the whole video sample is lost
WINDOW_FAULTS = ["no_caption", "missing_frames", "bad_jpeg", "bad_shape"]  # its first window only


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """shard-000000: a good video of two windows, one video of two windows with each fault, a good one again;
    shard-000001: four videos, cut in the middle of a member (corrupt_shard); shard-000002: cut at a member
    boundary (short_shard); shard-000003: absent."""
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    members = _members(rng, "good", [0, 1])
    for i, fault in enumerate(SAMPLE_FAULTS + WINDOW_FAULTS):
        members += _members(rng, f"bad{i}", [1, 2], fault)
    members += _members(rng, "good2", [2])
    write_tar(str(out / "shard-000000.tar"), members)
    whole = [m for s in range(4) for m in _members(rng, f"cut{s}", [0])]
    write_tar(str(out / "shard-000001.tar"), whole)
    data = (out / "shard-000001.tar").read_bytes()
    (out / "shard-000001.tar").write_bytes(data[: len(data) // 2 + 300])  # inside a JPEG member
    write_tar(str(out / "shard-000002.tar"), [m for s in range(4) for m in _members(rng, f"short{s}", [0])])
    with tarfile.open(out / "shard-000002.tar") as tar:  # cut where the third video's first header starts
        at = next(m.offset for m in tar if m.name.startswith("short2"))
    data = (out / "shard-000002.tar").read_bytes()
    (out / "shard-000002.tar").write_bytes(data[:at] + b"\0" * 1024)  # ends cleanly there
    n0 = 2 + len(SAMPLE_FAULTS + WINDOW_FAULTS)
    manifest = {"format": 2, "shards": [{"url": f"shard-{i:06d}.tar", "videos": v, "samples": w} for i, (v, w) in
                                        enumerate([(n0, 2 * n0 - 1), (4, 4), (4, 4), (4, 4)])]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


def test_each_fault_has_its_reason(shard_set):
    urls = dict(reader.shard_urls(shard_set))
    counts, failed = Counter(), []
    got = list(reader.read_samples(list(urls), counts, failed, expected=urls))
    keys = [s["key"] for s in got]
    n = len(SAMPLE_FAULTS)
    # a whole-sample fault loses the video, a window fault its first window only
    assert keys[:2 + len(WINDOW_FAULTS) + 1] == ["good__s0000", "good__s0001"] + \
        [f"bad{n + i}__s0002" for i in range(len(WINDOW_FAULTS))] + ["good2__s0002"]
    assert all(k.startswith(("cut", "short")) for k in keys[2 + len(WINDOW_FAULTS) + 1:])
    assert got[0]["frames"].shape == (FRAMES, SIZE, SIZE, 3) and got[0]["frames"].dtype == np.uint8
    assert got[0]["json"]["caption"].endswith("cube") and got[0]["json"]["frame_times"] == [0.0, 1.0, 2.0, 3.0]
    assert counts == Counter({**{f: 1 for f in SAMPLE_FAULTS + WINDOW_FAULTS}, "corrupt_shard": 1,
                              "short_shard": 1, "unreadable_shard": 1})
    by_key = {f["key"]: f["reason"] for f in failed}
    assert {by_key[f"bad{i}"] for i in range(n)} == set(SAMPLE_FAULTS)
    assert {by_key[f"bad{n + i}__s0001"] for i in range(len(WINDOW_FAULTS))} == set(WINDOW_FAULTS)
    assert by_key["shard-000001.tar:end"] == "corrupt_shard" and by_key["shard-000003.tar:end"] == "unreadable_shard"
    # the cut tar keeps what precedes the cut, in order
    cut = [k for k in keys if k.startswith("cut")]
    assert 1 <= len(cut) < 4 and cut == [f"cut{i}__s0000" for i in range(len(cut))]


def test_pretraining_loader_counts_the_same_reasons(shard_set):
    from pretrain import data

    shards = data.read_manifest(shard_set)
    stream = data.StreamDataset(shards, micro_batch=1, seed=0, epoch=0, rank=0, streams=1, start_batch=0,
                                positions=[0], shuffle_buffer=0, max_bad_shards=50)
    skipped, keys = Counter(), set()
    for batch in zip(range(60), stream._batches(0)):
        skipped.update(batch[1]["skipped"])
        keys.update(batch[1]["keys"])
    assert set(skipped) == set(SAMPLE_FAULTS + WINDOW_FAULTS) | {"corrupt_shard", "short_shard", "unreadable_shard"}
    assert not any(k.startswith("bad") and k.endswith("s0001") for k in keys) and "good__s0000" in keys


def test_embedding_job_counts_the_same_reasons(shard_set, tmp_path):
    from index.embed import ShardEmbedder
    from pretrain.model import build_model, save_export
    from pretrain.model_config import ModelConfig

    torch.manual_seed(0)
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=32, local_heads=2, frames_in=FRAMES,
                                        frames_selected=2, max_words=12)), str(tmp_path / "export"))
    embedder = ShardEmbedder(str(tmp_path / "export"), batch_size=4)
    stats = embedder.embed_shard(shard_set, "shard-000000.tar", str(tmp_path / "emb"), "t")
    assert stats["samples"] == 3 + len(WINDOW_FAULTS)
    assert stats["failures"] == {f: 1 for f in SAMPLE_FAULTS + WINDOW_FAULTS}
    assert embedder.embed_shard(shard_set, "shard-000001.tar", str(tmp_path / "emb"), "t")["failures"] == \
        {"corrupt_shard": 1}
    assert embedder.embed_shard(shard_set, "shard-000003.tar", str(tmp_path / "emb"), "t")["failures"] == \
        {"unreadable_shard": 1}


def test_reasons_are_documented_once():
    """docs/contracts.md section 2 lists exactly the reader's reasons (the sharder's own failures apart)."""
    text = open(os.path.join(ROOT, "docs", "contracts.md")).read()
    section = text[text.index("Shard reader failure reasons"):text.index("## 3.")]
    assert set(re.findall(r"^- `(\w+)`", section, re.M)) == set(reader.REASONS)
    for name in ("no_json", "shape_mismatch", "bad_sample", "truncated_shard"):  # the old readers' names
        assert name not in text
