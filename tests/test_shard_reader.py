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

from pretrain_fixtures import sample_members, write_tar
from shards import reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, SIZE = 4, 16


def _members(rng, vid: str, seg: int, fault: str | None = None) -> list[tuple[str, bytes]]:
    """One contract sample (real JPEG frames, the sharder's json) with one fault put in."""
    m = dict(sample_members(rng, vid, seg, FRAMES, SIZE))
    key = f"{vid}__s{seg:04d}"
    meta = json.loads(m[f"{key}.json"])
    if fault == "missing_json":
        del m[f"{key}.json"]
    elif fault == "bad_json":
        m[f"{key}.json"] = b"{oops"
    elif fault == "no_caption":
        m[f"{key}.json"] = json.dumps({**meta, "caption": "  "}).encode()
    elif fault == "missing_frames":
        del m[f"{key}.f02.jpg"]
    elif fault == "frame_count":  # five frames for four frame_times
        m[f"{key}.f04.jpg"] = m[f"{key}.f00.jpg"]
    elif fault == "bad_jpeg":
        m[f"{key}.f01.jpg"] = b"\xff\xd8 not a jpeg"
    elif fault == "bad_shape":
        m[f"{key}.f03.jpg"] = dict(sample_members(rng, vid, seg, 1, SIZE * 2))[f"{key}.f00.jpg"]
    if fault != "missing_json":  # keep json last, as the sharder writes it
        j = m.pop(f"{key}.json", None)
        if j is not None:
            m[f"{key}.json"] = j
    return list(m.items())


SAMPLE_FAULTS = ["missing_json", "bad_json", "no_caption", "missing_frames", "frame_count", "bad_jpeg", "bad_shape"]


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    """shard-000000: two good samples around one sample of each fault; shard-000001: good, then cut in the middle
    of a member (corrupt_shard); shard-000002: cut at a member boundary (short_shard); shard-000003: absent."""
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    members = _members(rng, "good", 0)
    for i, fault in enumerate(SAMPLE_FAULTS):
        members += _members(rng, f"bad{i}", 1, fault)
    members += _members(rng, "good", 2)
    write_tar(str(out / "shard-000000.tar"), members)
    whole = [m for s in range(4) for m in _members(rng, "cut", s)]
    write_tar(str(out / "shard-000001.tar"), whole)
    data = (out / "shard-000001.tar").read_bytes()
    (out / "shard-000001.tar").write_bytes(data[: len(data) // 2 + 300])  # inside a JPEG member
    write_tar(str(out / "shard-000002.tar"), [m for s in range(4) for m in _members(rng, "short", s)])
    with tarfile.open(out / "shard-000002.tar") as tar:  # cut where the third sample's first header starts
        at = next(m.offset for m in tar if m.name.startswith("short__s0002"))
    data = (out / "shard-000002.tar").read_bytes()
    (out / "shard-000002.tar").write_bytes(data[:at] + b"\0" * 1024)  # ends cleanly there
    manifest = {"shards": [{"url": f"shard-{i:06d}.tar", "samples": n} for i, n in
                           enumerate([2 + len(SAMPLE_FAULTS), 4, 4, 4])]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


def test_each_fault_has_its_reason(shard_set):
    urls = dict(reader.shard_urls(shard_set))
    counts, failed = Counter(), []
    got = list(reader.read_samples(list(urls), counts, failed, expected=urls))
    keys = [s["key"] for s in got]
    assert keys[:2] == ["good__s0000", "good__s0002"]
    assert all(k.startswith(("cut__", "short__")) for k in keys[2:])
    assert got[0]["frames"].shape == (FRAMES, SIZE, SIZE, 3) and got[0]["frames"].dtype == np.uint8
    assert got[0]["json"]["caption"].endswith("cube")
    assert counts == Counter({**{f: 1 for f in SAMPLE_FAULTS}, "corrupt_shard": 1, "short_shard": 1,
                              "unreadable_shard": 1})
    by_key = {f["key"]: f["reason"] for f in failed}
    assert {by_key[f"bad{i}__s0001"] for i in range(len(SAMPLE_FAULTS))} == set(SAMPLE_FAULTS)
    assert by_key["shard-000001.tar:end"] == "corrupt_shard" and by_key["shard-000003.tar:end"] == "unreadable_shard"
    # the cut tar keeps what precedes the cut, in order
    cut = [k for k in keys if k.startswith("cut__")]
    assert 1 <= len(cut) < 4 and cut == [f"cut__s{i:04d}" for i in range(len(cut))]


def test_pretraining_loader_counts_the_same_reasons(shard_set):
    from pretrain import data

    shards = data.read_manifest(shard_set)
    stream = data.StreamDataset(shards, micro_batch=1, seed=0, epoch=0, rank=0, streams=1, start_batch=0,
                                positions=[0], shuffle_buffer=0, max_bad_shards=50)
    skipped, keys = Counter(), set()
    for batch in zip(range(60), stream._batches(0)):
        skipped.update(batch[1]["skipped"])
        keys.update(batch[1]["keys"])
    assert set(skipped) == set(SAMPLE_FAULTS) | {"corrupt_shard", "short_shard", "unreadable_shard"}
    assert not any(k.startswith("bad") for k in keys) and "good__s0000" in keys


def test_embedding_job_counts_the_same_reasons(shard_set, tmp_path):
    from index.embed import ShardEmbedder
    from pretrain.model import build_model, save_export
    from pretrain.model_config import ModelConfig

    torch.manual_seed(0)
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=32, local_heads=2, frames_in=FRAMES,
                                        frames_selected=2, max_words=12)), str(tmp_path / "export"))
    embedder = ShardEmbedder(str(tmp_path / "export"), batch_size=4)
    stats = embedder.embed_shard(shard_set, "shard-000000.tar", str(tmp_path / "emb"), "t")
    assert stats["samples"] == 2 and stats["failures"] == {f: 1 for f in SAMPLE_FAULTS}
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
