"""caption.json read a video at a time: one streaming pass indexes where each entry lies, a sharding task reads only
its own videos' entries, and they equal what parsing the whole file gives (non-UTF-8 bytes, unicode, any chunking)."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from shards import corpus
from shards.config import ShardConfig
from shards.pipeline import CAPTION_INDEX, plan
from shard_fixtures import bad_corpus


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_corpus(str(tmp_path_factory.mktemp("capidx") / "corpus"))[0]


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_entries_equal_the_whole_file_parsed(bad, monkeypatch, chunk):
    monkeypatch.setattr(corpus, "CHUNK", chunk)  # chunk borders inside keys, values and multi-byte characters
    url = corpus.default_captions(bad)
    whole = corpus.read_captions(url)
    index = corpus.index_captions(url)
    assert sorted(index.video_ids.tolist()) == sorted(whole)
    got = corpus.captions_of(url, list(whole)[::-1] + ["not_there"], index)
    assert got == whole  # the non-UTF-8 caption included, as surrogates, exactly as the whole parse has it


def test_plan_carries_spans_and_each_task_reads_its_own(bad, tmp_path):
    url = corpus.default_captions(bad)
    whole = corpus.read_captions(url)
    cfg = ShardConfig(manifest=bad, output=str(tmp_path / "out"), videos_per_shard=3)
    tasks = plan(cfg)
    assert os.path.exists(tmp_path / "out" / CAPTION_INDEX)
    seen = {}
    for t in tasks:
        assert all(s is None or isinstance(s, tuple) for s in t.spans)  # spans, not entries, travel to the task
        seen.update({v.video_id: e for v, e in t.with_captions()})
    assert seen == {v: whole.get(v) for v in seen} and len(seen) == len(corpus.read_manifest(bad))
    # the index is reused while the file keeps its size; a changed file is indexed again
    before = open(tmp_path / "out" / CAPTION_INDEX, "rb").read()
    plan(cfg)
    assert open(tmp_path / "out" / CAPTION_INDEX, "rb").read() == before
    other = str(tmp_path / "caption.json")
    json.dump({"good_a": whole["good_a"]}, open(other, "w"))
    assert corpus.index_captions(other, cache=str(tmp_path / "out" / CAPTION_INDEX)).video_ids.tolist() == ["good_a"]


@pytest.mark.parametrize("text, problem", [('{"a": {"text": [1, 2}', "not JSON"), ('["a"]', "top level"),
                                           ('{"a": 1 "b": 2}', "expected ','"), ('{"a": 1,', "not JSON")])
def test_a_broken_file_is_one_clear_error(tmp_path, text, problem):
    url = str(tmp_path / "caption.json")
    open(url, "w").write(text)
    with pytest.raises(corpus.CorpusError, match=problem) as e:
        corpus.index_captions(url)
    assert "\n" not in str(e.value) and url in str(e.value)


def test_many_runs_and_windows_give_the_same_spans(bad, tmp_path, monkeypatch):
    """The driver looks videos up a window at a time in an index of sorted runs (bounded memory, issue 32): with
    runs and windows smaller than the corpus, every task still reads exactly its own videos' entries."""
    from shards import pipeline

    monkeypatch.setattr(corpus, "RUN", 2)
    monkeypatch.setattr(pipeline, "WINDOW_VIDEOS", 3)
    url = corpus.default_captions(bad)
    whole = corpus.read_captions(url)
    runs = corpus.caption_runs(url, str(tmp_path / "idx.npz"))
    assert runs.runs == -(-len(whole) // 2) > 1
    cfg = ShardConfig(manifest=bad, output=str(tmp_path / "out"), videos_per_shard=2)
    tasks = plan(cfg)
    assert [t.index for t in tasks] == list(range(len(tasks)))
    seen = {v.video_id: e for t in tasks for v, e in t.with_captions()}
    assert list(seen) == [v.video_id for v in corpus.read_manifest(bad)]
    assert seen == {v: whole.get(v) for v in seen} and any(e is None for e in seen.values())
    assert len(plan(dataclasses.replace(cfg, max_shards=2))) == 2
