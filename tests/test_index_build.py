"""FAISS index building: partial indices merged (in memory, on disk, across Ray tasks) equal one index built at
once; incremental add; exact search for small sets; bad input gives clear errors and never clobbers an index."""
from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import weakref

import faiss
import numpy as np
import pytest

from index import build, embshards, store, synthetic
from index.config import BuildSection
from index.factory import is_ivf
from index.errors import CorruptIndex, DimensionMismatch, EmbeddingShardError, IndexExists
from index.search import Searcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 32


@pytest.fixture(scope="module")
def data():
    return synthetic.corpus(videos=150, clips_per_video=20, d=D, actions=12, seed=1)  # 3000 clips


def _emb(tmp_path, data, clips_per_shard=500, upto=None):
    emb = str(tmp_path / "embeddings" / "tag")
    sub = {k: v[:upto] for k, v in data.items()} if upto else data
    synthetic.write_shards(emb, sub, clips_per_shard)
    return emb


def _ivf(**kw) -> BuildSection:
    return BuildSection(**{"factory": "IVF32,Flat", "shards_per_task": 1, **kw})


def _at_once(url: str, x: np.ndarray) -> faiss.Index:
    """The reference: the same trained index, every vector added in one call."""
    meta = store.read_meta(url)
    ref = store.load_trained(url, meta)
    if is_ivf(ref):
        ref.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    else:
        ref.add(x)
    return ref


def _keys(url: str, meta: store.Meta) -> list[str]:
    return store.columns(url, meta).strings("keys", 0, meta.count)


def _same_results(a: faiss.Index, b: faiss.Index, q: np.ndarray, k: int = 10, nprobe: int = 8) -> None:
    for ix in (a, b):
        if is_ivf(ix):
            faiss.extract_index_ivf(ix).nprobe = nprobe
    da, ia = a.search(q, k)
    db, ib = b.search(q, k)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(da, db, rtol=1e-5, atol=1e-6)


def test_partials_merged_equal_one_build(tmp_path, data, ray_cluster):
    from cluster.index import ray_mapper

    emb = _emb(tmp_path, data)
    q = data["video"][::37]
    urls = {}
    for name, cfg, mapper in [("ray_memory", _ivf(), ray_mapper(ray_cluster)),
                              ("ray_ondisk", _ivf(merge="ondisk"), ray_mapper(ray_cluster)),
                              ("one_task", _ivf(shards_per_task=100), build.local_map)]:
        urls[name] = str(tmp_path / name)
        rep = build.build(cfg, emb, urls[name], seed=3, mapper=mapper)
        assert rep["count"] == 3000 and rep["shards_added"] == 6
    ref = _at_once(urls["one_task"], data["video"])
    for name, url in urls.items():
        index, meta = store.load(url)
        assert _keys(url, meta) == data["keys"].tolist() and index.ntotal == 3000
        assert (meta.ivfdata is not None) == (name == "ray_ondisk")
        _same_results(index, ref, q)
    # the neighbours are meaningful: a clip finds itself first
    s = Searcher(urls["ray_memory"], nprobe=32)
    hits = s.search(data["video"][:5], 3)
    assert [h[0].key for h in hits] == data["keys"][:5].tolist()
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_incremental_add_equals_full_build(tmp_path, data):
    for merge in ("memory", "ondisk"):
        emb = str(tmp_path / merge / "emb")
        url = str(tmp_path / merge / "index")
        head = {k: v[:1800] for k, v in data.items()}
        tail = {k: v[1800:] for k, v in data.items()}
        synthetic.write_shards(emb, head, 600)
        first = build.build(_ivf(merge=merge), emb, url)
        assert first["count"] == 1800 and first["version"] == 1
        synthetic.write_shards(emb, tail, 600, first_shard=3)
        rep = build.add(_ivf(merge=merge), emb, url)
        assert rep["shards_added"] == 2 and rep["count"] == 3000 and rep["skipped"] == {"already_indexed": 3}
        index, meta = store.load(url)
        assert meta.version == 2 and _keys(url, meta) == data["keys"].tolist()
        assert meta.trained == "trained-000001.faiss"  # quantiser reused, not retrained
        _same_results(index, _at_once(url, data["video"]), data["video"][::41])
        # superseded files are gone, the current ones listed
        assert sorted(f for f in os.listdir(url) if "index-" in f) == sorted(
            n for n in meta.files if n.startswith("index-"))
        again = build.add(_ivf(merge=merge), emb, url)  # nothing new: no new version
        assert again["shards_added"] == 0 and store.read_meta(url).version == 2


def test_columns_appended_by_add_equal_a_fresh_build(tmp_path, data):
    """The per-vector columns: an add writes a new segment and leaves the first one's bytes alone, and the result
    reads back, by any id range, what a fresh build of every shard gives; an old or truncated sidecar is refused."""
    emb = str(tmp_path / "emb")
    synthetic.write_shards(emb, {k: v[:1200] for k, v in data.items()}, 600)
    grown, fresh = str(tmp_path / "grown"), str(tmp_path / "fresh")
    build.build(_ivf(), emb, grown)
    first = {n: open(os.path.join(grown, n), "rb").read() for n in os.listdir(grown) if n.endswith("000001.bin")}
    synthetic.write_shards(emb, {k: v[1200:] for k, v in data.items()}, 600, first_shard=2)
    build.add(_ivf(), emb, grown)
    build.build(_ivf(), emb, fresh)
    assert {n: open(os.path.join(grown, n), "rb").read() for n in first} == first
    a, b = store.read_meta(grown), store.read_meta(fresh)
    assert [s["count"] for s in a.segments] == [1200, 1800] and [s["count"] for s in b.segments] == [3000]
    ca, cb = store.columns(grown, a), store.columns(fresh, b)
    for lo, hi in ((0, 3000), (1190, 1210), (2999, 3000)):
        for col in ("keys", "video_ids", "captions"):
            assert ca.strings(col, lo, hi) == cb.strings(col, lo, hi)
        for col in ("times", "text", "video_codes"):
            np.testing.assert_array_equal(ca.array(col, lo, hi), cb.array(col, lo, hi))
    assert ca.strings("keys", 0, 3000) == data["keys"].tolist()
    np.testing.assert_array_equal(ca.array("times", 0, 3000), data["times"])
    ids = np.array([2999, 0, 1200, 1199, 5])
    assert ca.take_strings("keys", ids).tolist() == data["keys"][ids].tolist()
    np.testing.assert_array_equal(ca.take("text", ids), embshards.l2_normalise(data["text"][ids]))
    assert os.path.getsize(os.path.join(grown, "index.json")) < 8192

    # a truncated column file is refused naming it; a format-1 sidecar (id maps in the JSON) in one line
    col = os.path.join(grown, a.segments[1]["columns"]["keys"][1])
    blob = open(col, "rb").read()
    open(col, "wb").write(blob[:-7])
    with pytest.raises(CorruptIndex, match=os.path.basename(col) + ".*truncated"):
        store.columns(grown, a)
    side = os.path.join(fresh, "index.json")
    json.dump({**json.load(open(side)), "format": 1, "keys": []}, open(side, "w"))
    with pytest.raises(CorruptIndex, match="format 1.*build.rebuild=true") as e:
        store.read_meta(fresh)
    assert "\n" not in str(e.value)


def test_small_sets_are_exact(tmp_path, data):
    emb = _emb(tmp_path, data, upto=1200)
    url = str(tmp_path / "flat")
    rep = build.build(BuildSection(shards_per_task=1), emb, url)  # auto: 1200 <= flat_max
    assert rep["factory"] == "Flat" and rep["train_points"] == 0
    s = Searcher(url)
    q = data["text"][:7]  # cross-modal query: captions against clip vectors
    scores, ids = s.search_raw(q, 10)
    brute = q @ data["video"][:1200].T
    np.testing.assert_array_equal(ids, np.argsort(-brute, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_auto_factory_large_set_uses_ivf(tmp_path, data):
    emb = _emb(tmp_path, data)
    rep = build.build(BuildSection(flat_max=1000, shards_per_task=3), emb, str(tmp_path / "auto"))
    assert rep["factory"].startswith("IVF") and rep["train_points"] > 0
    rep = build.build(BuildSection(flat_max=1000, memory_budget_mb=0.1, factory="auto"), emb, str(tmp_path / "pq"))
    assert ",PQ" in rep["factory"] or ",SQ8" in rep["factory"]


def test_bad_input(tmp_path, data):
    emb = _emb(tmp_path, data, clips_per_shard=1000)
    # an empty shard is counted and skipped; an npz without its stats marker is incomplete
    empty = embshards.EmbShard("emb-000010", np.array([], dtype=str), np.array([], dtype=str),
                               np.zeros((0, 2), np.float32), np.zeros((0, D), np.float32),
                               np.zeros((0, D), np.float32))
    embshards.write_shard(emb, empty, {"shard": "shard-000010.tar"})
    with open(os.path.join(emb, "emb-000011.npz"), "wb") as f:
        f.write(b"half-written")
    url = str(tmp_path / "ix")
    rep = build.build(_ivf(), emb, url)
    assert rep["skipped"] == {"empty": 1, "incomplete": 1} and rep["count"] == 3000

    s = Searcher(url)
    with pytest.raises(DimensionMismatch, match="16"):
        s.search(np.ones((2, 16), np.float32), 5)
    # building again over finished work: a no-op that says so, not a byte rewritten
    before = {n: open(os.path.join(url, n), "rb").read() for n in os.listdir(url)}
    again = build.build(_ivf(), emb, url)
    assert again["already_built"] and again["count"] == 3000 and again["version"] == rep["version"]
    assert {n: open(os.path.join(url, n), "rb").read() for n in os.listdir(url)} == before

    # a shard of another dimension: clear error, the index is untouched
    odd = synthetic.corpus(videos=5, clips_per_video=4, d=D * 2, actions=2, seed=9)
    odd["keys"] = np.array([f"odd{i}__s0000" for i in range(20)])
    synthetic.write_shards(emb, odd, 100, first_shard=20)
    with pytest.raises(DimensionMismatch, match="emb-000020"):
        build.add(_ivf(), emb, url)
    after = {n: open(os.path.join(url, n), "rb").read() for n in os.listdir(url)}
    assert after == before
    with pytest.raises(DimensionMismatch, match="emb-000020"):
        build.build(_ivf(), emb, url)
    os.remove(os.path.join(emb, "emb-000020.stats.json"))
    # new shards of the right dimension: `build` names `add` instead of rebuilding or failing obscurely
    more = synthetic.corpus(videos=5, clips_per_video=4, d=D, actions=2, seed=9)
    more["keys"] = np.array([f"more{i}__s0000" for i in range(20)])
    synthetic.write_shards(emb, more, 100, first_shard=30)
    with pytest.raises(IndexExists, match="cluster.index add"):
        build.build(_ivf(), emb, url)
    assert {n: open(os.path.join(url, n), "rb").read() for n in os.listdir(url)} == before
    os.remove(os.path.join(emb, "emb-000030.stats.json"))

    # a shard whose arrays disagree with its stats marker
    bad = embshards.stats_url(emb, "emb-000001")
    stats = json.load(open(bad))
    json.dump({**stats, "samples": stats["samples"] + 1}, open(bad, "w"))
    with pytest.raises(EmbeddingShardError, match="emb-000001"):
        build.build(_ivf(rebuild=True), emb, url)
    assert {n: open(os.path.join(url, n), "rb").read() for n in os.listdir(url)} == before

    # truncated and altered index files are refused with a clear error
    meta = store.read_meta(url)
    path = os.path.join(url, meta.data)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])
    with pytest.raises(CorruptIndex, match="truncated"):
        store.load(url)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    open(path, "wb").write(bytes(flipped))
    with pytest.raises(CorruptIndex, match="checksum"):
        store.load(url)
    open(path, "wb").write(b"\0" * len(blob))
    with pytest.raises(CorruptIndex, match="FAISS cannot read"):
        store.load(url, verify=False)
    open(os.path.join(url, "index.json"), "w").write("{not json")
    with pytest.raises(CorruptIndex, match="sidecar"):
        store.load(url)


@pytest.mark.parametrize("part_size", [1 << 19, 7])  # one hash partition, and hundreds of them
def test_a_key_indexed_twice_is_refused_whatever_the_partitions(tmp_path, data, monkeypatch, part_size):
    """The duplicate-key check spills hashes into partitions (its memory must not grow with the index): a key
    repeated inside one build, or between an index and an add, is found whichever partition its hash lands in."""
    check = build._check_keys
    monkeypatch.setattr(build, "_check_keys", lambda new, old, where: check(new, old, where, part_size=part_size))
    twice = {k: v[:900] for k, v in data.items()}
    twice["keys"] = twice["keys"].copy()
    twice["keys"][850] = twice["keys"][123]                   # another shard than the first copy
    emb = str(tmp_path / "twice" / "emb")
    synthetic.write_shards(emb, twice, 300)
    with pytest.raises(EmbeddingShardError, match=f"indexed twice, e.g. \\['{twice['keys'][123]}'\\]"):
        build.build(_ivf(), emb, str(tmp_path / "twice" / "index"))
    assert not os.path.exists(tmp_path / "twice" / "index" / "index.json")

    emb, url = str(tmp_path / "add" / "emb"), str(tmp_path / "add" / "index")
    synthetic.write_shards(emb, {k: v[:600] for k, v in data.items()}, 300)
    assert build.build(_ivf(merge="ondisk"), emb, url)["count"] == 600
    later = {k: v[600:900] for k, v in data.items()}
    later["keys"] = later["keys"].copy()
    later["keys"][299] = data["keys"][5]                      # already in the index
    synthetic.write_shards(emb, later, 300, first_shard=2)
    before = {n: open(os.path.join(url, n), "rb").read() for n in os.listdir(url)}
    with pytest.raises(EmbeddingShardError, match=data["keys"][5]):
        build.add(_ivf(merge="ondisk"), emb, url)
    assert {n: open(os.path.join(url, n), "rb").read() for n in os.listdir(url)} == before


def test_on_disk_partials_carry_lists_only(tmp_path, data):
    """A partial for the on-disk merge comes back as its inverted lists alone, in list order (no quantizer,
    pre-transform or codebooks), holding what the whole partial index holds."""
    emb = _emb(tmp_path, data, upto=1000)
    trained = build.make_index("OPQ4,IVF32,PQ4", D)
    trained.train(data["video"][:1000])
    blob = faiss.serialize_index(trained).tobytes()
    names = [n for n, _ in build.plan(emb)[0]]
    group = [(names[0], 500, 0), (names[1], 500, 500)]
    full, _ = build.add_task(blob, emb, group, D, "video", "off")
    lean, maps = build.add_task(blob, emb, group, D, "video", "off", lists_only=True)
    assert sorted(lean) == ["code_size", "codes", "ids", "nlist", "sizes"] and [m["first_id"] for m in maps] == [0, 500]
    kept = faiss.deserialize_index(np.frombuffer(full, np.uint8))  # the owner of `il`
    il = faiss.extract_index_ivf(kept).invlists
    assert (lean["nlist"], lean["code_size"]) == (32, 4) and lean["sizes"].sum() == 1000
    at = 0
    for j in range(32):
        k = il.list_size(j)
        assert lean["sizes"][j] == k
        assert lean["ids"][at:at + k].tolist() == faiss.rev_swig_ptr(il.get_ids(j), k).tolist()
        assert lean["codes"][at * 4:(at + k) * 4].tobytes() == faiss.rev_swig_ptr(il.get_codes(j), k * 4).tobytes()
        at += k


def _merged_as_before(url: str, emb: str, upto: int, path: str) -> faiss.Index:
    """The reference: the previous on-disk merge (every partial index open, OnDiskInvertedLists.
    merge_from_multiple) over the index's shards [0, upto), one partial a shard, with the index's trained part."""
    meta = store.read_meta(url)
    trained = store.load_trained(url, meta)
    blob = faiss.serialize_index(trained).tobytes()
    parts, first = [], 0
    for name, count in build.plan(emb)[0][:upto]:
        part, _ = build.add_task(blob, emb, [(name, count, first)], D, "video", "off")
        parts.append(faiss.deserialize_index(np.frombuffer(part, np.uint8)))
        first += count
    ivf = faiss.extract_index_ivf(trained)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, path)
    vec = faiss.InvertedListsPtrVector()
    for p in parts:
        vec.push_back(faiss.extract_index_ivf(p).invlists)
    trained.ntotal = ivf.ntotal = ondisk.merge_from_multiple(vec.data(), vec.size(), False)
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()
    return trained


def _triples(index: faiss.Index) -> list[tuple[int, int, int]]:
    od = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    assert isinstance(od, faiss.OnDiskInvertedLists)
    return [(od.lists.at(j).size, od.lists.at(j).capacity, od.lists.at(j).offset) for j in range(od.nlist)]


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF16,PQ4", "OPQ4,IVF16,PQ4"])
def test_ondisk_merge_equals_merge_from_multiple(tmp_path, data, factory):
    """The on-disk merge writes the .ivfdata itself, one partial at a time: after a build and after an add it
    holds, byte for byte, what merge_from_multiple over every partial at once wrote, at exactly the size of the
    codes and ids (no growth padding), and the index searches the same."""
    emb = str(tmp_path / "emb")
    url = str(tmp_path / "index")
    synthetic.write_shards(emb, {k: v[:1200] for k, v in data.items()}, 300)
    build.build(_ivf(factory=factory, merge="ondisk"), emb, url)
    for upto, n in ((4, 1200), (6, 1800)):
        index, meta = store.load(url)
        ref = _merged_as_before(url, emb, upto, str(tmp_path / f"ref-{upto}.ivfdata"))
        cs = faiss.extract_index_ivf(index).code_size
        assert index.ntotal == ref.ntotal == n
        ivfdata = open(os.path.join(url, meta.ivfdata), "rb").read()
        assert len(ivfdata) == n * (cs + 8)
        assert ivfdata == open(tmp_path / f"ref-{upto}.ivfdata", "rb").read()
        assert _triples(index) == _triples(ref)
        _same_results(index, ref, data["video"][:n:17], nprobe=4)
        if upto == 4:  # then an add of two more shards, merged with the index's own lists
            synthetic.write_shards(emb, {k: v[1200:1800] for k, v in data.items()}, 300, first_shard=4)
            assert build.add(_ivf(factory=factory, merge="ondisk"), emb, url)["count"] == 1800


def test_ondisk_merge_holds_one_partial_at_a_time(tmp_path, data, monkeypatch):
    """The driver never holds two partials: while a partial is being made, no earlier one is alive (each went to
    its file on arrival), and the write pass has one partial file open at a time, each once."""
    emb = _emb(tmp_path, data, clips_per_shard=300, upto=1800)
    alive = []  # weak references to each partial's arrays
    held = []

    def mapper(fn, args):
        for a in args:
            gc.collect()
            held.append(sum(r() is not None for r in alive))
            out = fn(*a)
            if isinstance(out[0], dict):
                alive.append(weakref.ref(out[0]["codes"]))
            yield out
            del out

    opened, now, most = [], [0], [0]
    real = build._open_partial

    @contextlib.contextmanager
    def counting(path):
        with real(path) as arrays:
            now[0] += 1
            most[0] = max(most[0], now[0])
            opened.append(os.path.basename(path))
            yield arrays
            now[0] -= 1

    monkeypatch.setattr(build, "_open_partial", counting)
    build.build(_ivf(merge="ondisk"), emb, str(tmp_path / "index"), mapper=mapper)
    assert len(alive) == 6 and held[-6:] == [0] * 6   # the last six calls made the partials
    assert opened == [f"part-{i:05d}.lists" for i in range(6)] and most[0] == 1


def test_s3_roundtrip(tmp_path, data, s3_bucket):
    emb = f"{s3_bucket}/shards/embeddings/tag"
    synthetic.write_shards(emb, {k: v[:2000] for k, v in data.items()}, 1000)
    local = str(tmp_path / "local")
    build.build(_ivf(merge="ondisk"), emb, local)
    remote = f"{s3_bucket}/index"
    build.build(_ivf(merge="ondisk"), emb, remote)
    synthetic.write_shards(emb, {k: v[2000:] for k, v in data.items()}, 1000, first_shard=2)
    assert build.add(_ivf(merge="ondisk"), emb, remote)["count"] == 3000
    ix, meta = store.load(remote)
    assert meta.ivfdata and meta.count == 3000
    _same_results(ix, _at_once(remote, data["video"]), data["video"][::53])


def test_search_cli_by_clip(tmp_path, data):
    emb = _emb(tmp_path, data)
    url = str(tmp_path / "cli")
    build.build(_ivf(), emb, url)
    key = str(data["keys"][123])
    out = subprocess.run([sys.executable, "-m", "cluster.index", "search", f"embeddings={emb}", f"index={url}",
                          f"search.clip={key}", "search.k=5", "search.nprobe=32"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("5 neighbours of clip") and len(lines) == 7
    rank1 = lines[2].split()
    assert rank1[0] == "1" and rank1[-1] == key and rank1[2] == str(data["video_ids"][123])
    bad = subprocess.run([sys.executable, "-m", "cluster.index", "search", f"index={url}", "embeddings=x",
                          "search.clip=nope__s0000"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "not in the index" in bad.stderr
