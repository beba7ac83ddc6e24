"""Building and growing an index from embedding shards: train on a sample, add groups of shards into partial
indices (independent tasks), merge them in shard order, publish a new version (index.store).

Parallelism is the caller's: every function that touches many shards takes `mapper(fn, arg_tuples) -> results`
(results in order, yielded one at a time so the driver never holds them all; cluster/index.py passes one running
Ray tasks). Ids are global and sequential in shard order, so the merged index equals one built in a single pass.
The per-vector data goes into a new column segment (index.columns) as each partial index arrives.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
import time
from typing import Callable, Sequence

import faiss
import numpy as np

from index import columns, embshards, store
from index.config import BuildSection
from index.errors import CorruptIndex, DimensionMismatch, EmbeddingShardError, IndexExists, StaleEmbeddings
from index.factory import choose_factory, is_ivf, make_index, train_size

log = logging.getLogger(__name__)
Mapper = Callable[[Callable, Sequence[tuple]], list]


def local_map(fn: Callable, args: Sequence[tuple]):
    return (fn(*a) for a in args)


# ---- GPU (faiss-gpu) -------------------------------------------------------------------------------------------

def gpu_count(mode: str) -> int:
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"build.gpu must be auto, on or off, got {mode!r}")
    n = faiss.get_num_gpus() if mode != "off" and hasattr(faiss, "StandardGpuResources") else 0
    if mode == "on" and n == 0:
        raise RuntimeError("build.gpu=on but FAISS sees no GPU (is faiss-gpu installed?)")
    return n


def _on_gpu(index: faiss.Index, mode: str, fn: Callable[[faiss.Index], None]) -> faiss.Index:
    """Run fn (train or add) on a GPU copy when there is one, returning the CPU index."""
    if gpu_count(mode) == 0:
        fn(index)
        return index
    try:
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, 0, index)
    except RuntimeError as e:  # not every index type has a GPU version
        if mode == "on":
            raise
        log.warning("GPU copy failed (%s); staying on CPU", str(e).splitlines()[0])
        fn(index)
        return index
    fn(gpu)
    return faiss.index_gpu_to_cpu(gpu)


# ---- planning -----------------------------------------------------------------------------------------------------

def plan(emb_dir: str, skip_names: set[str] = frozenset(), dim: int | None = None):
    """Complete, non-empty shards not yet indexed: ([(name, samples)], dim, skipped {reason: [names]})."""
    complete, unmarked = embshards.list_shards(emb_dir)
    skipped: dict[str, list[str]] = {"incomplete": unmarked, "empty": [], "already_indexed": []}
    todo = []
    for name, stats in complete:
        if name in skip_names:
            skipped["already_indexed"].append(name)
            continue
        if int(stats.get("samples", 0)) == 0:
            skipped["empty"].append(name)
            continue
        d = int(stats["dim"])
        if dim is None:
            dim = d
        elif d != dim:
            raise DimensionMismatch(f"{embshards.stats_url(emb_dir, name)}: dim {d}, expected {dim} "
                                    f"(embeddings of another model under the same tag?)")
        todo.append((name, int(stats["samples"])))
    for reason, names in skipped.items():
        if names and reason != "already_indexed":
            log.warning("skipped %d shard(s) (%s): %s", len(names), reason, ", ".join(names[:5]))
    return todo, dim, {k: v for k, v in skipped.items() if v}


def _read(emb_dir: str, name: str, expect: int, dim: int) -> embshards.EmbShard:
    shard = embshards.read_shard(emb_dir, name)
    if len(shard) != expect:
        raise EmbeddingShardError(f"{embshards.npz_url(emb_dir, name)}: {len(shard)} rows, stats say {expect}")
    if shard.video.shape[1] != dim:
        raise DimensionMismatch(f"{embshards.npz_url(emb_dir, name)}: dim {shard.video.shape[1]}, index dim {dim}")
    return shard


# ---- tasks (pure functions of their arguments: they run in Ray workers) --------------------------------------------

def sample_task(emb_dir: str, name: str, expect: int, dim: int, vectors: str, rows: np.ndarray) -> np.ndarray:
    shard = _read(emb_dir, name, expect, dim)
    return embshards.l2_normalise(shard.vectors(vectors)[rows])


def add_task(trained: bytes, emb_dir: str, group: Sequence[tuple[str, int, int]], dim: int, vectors: str,
             gpu: str, lists_only: bool = False) -> tuple[bytes | dict, list[dict]]:
    """Add shards [(name, samples, first_id)] to a copy of the trained index. Returns the partial index and, per
    shard, its per-vector columns (keys, video ids, times, caption vectors and texts). With `lists_only` (the
    on-disk merge, which reads nothing else of a partial) the partial is its inverted lists alone (`lists_of`):
    no quantizer, pre-transform or codebooks."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    maps = []
    for name, expect, first_id in group:
        shard = _read(emb_dir, name, expect, dim)
        x = embshards.l2_normalise(shard.vectors(vectors))
        ids = np.arange(first_id, first_id + len(shard), dtype=np.int64)
        if is_ivf(index):
            index = _on_gpu(index, gpu, lambda ix: ix.add_with_ids(x, ids))
        else:  # flat codes: ids are positions, kept sequential by adding in shard order
            if index.ntotal + group[0][2] != first_id:
                raise RuntimeError("flat partial index received shards out of order")
            index.add(x)
        maps.append({"name": name, "first_id": first_id, "keys": shard.keys, "video_ids": shard.video_ids,
                     "times": shard.times, "text": embshards.l2_normalise(shard.text), "captions": shard.captions})
    if lists_only and is_ivf(index):
        return lists_of(faiss.extract_index_ivf(index).invlists), maps
    return faiss.serialize_index(index).tobytes(), maps


def lists_of(invlists: faiss.InvertedLists) -> dict:
    """Inverted lists as arrays in list order: `sizes` (nlist,), `codes` (list 0's codes, then list 1's, ...:
    sum(sizes) x code_size bytes) and `ids` (the same order), with `nlist` and `code_size`."""
    nlist, cs = invlists.nlist, invlists.code_size
    sizes = np.fromiter((invlists.list_size(j) for j in range(nlist)), np.int64, nlist)
    codes = np.empty(int(sizes.sum()) * cs, np.uint8)
    ids = np.empty(int(sizes.sum()), np.int64)
    at = 0
    for j in np.flatnonzero(sizes).tolist():
        k = int(sizes[j])
        codes[at * cs:(at + k) * cs] = faiss.rev_swig_ptr(invlists.get_codes(j), k * cs)
        ids[at:at + k] = faiss.rev_swig_ptr(invlists.get_ids(j), k)
        at += k
    return {"nlist": nlist, "code_size": cs, "sizes": sizes, "codes": codes, "ids": ids}


# ---- driver ------------------------------------------------------------------------------------------------------

def _train(cfg: BuildSection, emb_dir: str, todo, dim: int, seed: int, mapper: Mapper) -> tuple[faiss.Index, str, int]:
    n = sum(c for _, c in todo)
    factory = cfg.factory if cfg.factory != "auto" else choose_factory(n, dim, cfg.memory_budget_mb, cfg.flat_max)
    index = make_index(factory, dim)
    if index.is_trained:
        return index, factory, 0
    m = train_size(index, n, cfg.train_size)
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    starts = np.cumsum([0] + [c for _, c in todo])
    args = []
    for (name, count), lo in zip(todo, starts[:-1]):
        rows = chosen[(chosen >= lo) & (chosen < lo + count)] - lo
        if len(rows):
            args.append((emb_dir, name, count, dim, cfg.vectors, rows))
    # filled as the samples arrive, not a list of them concatenated (twice the sample held): at 4M vectors in
    # shards of 10k each shard's ~50 rows come back inlined in the driver's heap, not in Ray's object store
    x, at = np.empty((m, dim), np.float32), 0
    for rows in mapper(sample_task, args):
        x[at:at + len(rows)] = rows
        at += len(rows)
        del rows
    if at != m:
        raise RuntimeError(f"training sample: {at} rows read of {m}")
    log.info("training %s on %d of %d vectors", factory, len(x), n)
    index = _on_gpu(index, cfg.gpu, lambda ix: ix.train(x))
    return index, factory, len(x)


def _groups(cfg: BuildSection, todo, first_id: int) -> list[list[tuple[str, int, int]]]:
    groups, nxt = [], first_id
    for i in range(0, len(todo), max(1, cfg.shards_per_task)):
        group = []
        for name, count in todo[i:i + cfg.shards_per_task]:
            group.append((name, count, nxt))
            nxt += count
        groups.append(group)
    return groups


def _partials(cfg: BuildSection, emb_dir: str, todo, first_id: int, dim: int, trained: faiss.Index,
              mapper: Mapper, segment: columns.SegmentWriter, shards: list[dict], lists_only: bool):
    """The partial indices in shard order, one at a time; each one's columns go into `segment` (and its shards'
    id ranges into `shards`) as it arrives, so the driver holds one partial's data at a time."""
    blob = faiss.serialize_index(trained).tobytes()
    results = mapper(add_task, [(blob, emb_dir, g, dim, cfg.vectors, cfg.gpu, lists_only)
                                for g in _groups(cfg, todo, first_id)])
    for part, maps in results:
        for m in maps:
            if m["first_id"] != first_id + segment.written:
                raise RuntimeError(f"id map out of order at {m['name']}")
            segment.append(m["keys"], m["video_ids"], m["times"], m["text"], m["captions"])
            shards.append({"name": m["name"], "first_id": m["first_id"], "count": len(m["keys"])})
        yield part
        del part, maps  # not held while the next one is awaited


def _copy(index: faiss.Index) -> faiss.Index:
    # clone_index can return a base class (IndexFlatIP -> IndexFlat) that merge_from then refuses
    return faiss.deserialize_index(faiss.serialize_index(index))


def _merge_memory(base: faiss.Index, partials) -> faiss.Index:
    for blob in partials:
        part = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        base.merge_from(part, 0)
    return base


# ---- the on-disk merge: an .ivfdata written list by list, one partial at a time ----------------------------------
#
# Why not OnDiskInvertedLists.merge_from_multiple: it needs every partial open at once, so the driver's memory grew
# with their number (each partial's list table, 24 B a list: 1.5 MB at IVF65536, 20 GB at 13,600 partials, plus
# whatever it maps). Here the driver keeps per list only the total size and how much of it is written (2 x 8 B x
# nlist) and one partial at a time. Pass 1 writes each partial's lists, as it arrives, to a file on the stage's
# disk and adds up the sizes; pass 2 sizes the .ivfdata exactly and writes each partial's part of every list at
# that list's running offset (pwrite: the driver maps none of it), reading one partial file at a time. The layout
# is faiss's own (per list at `offset`: capacity x code_size bytes of codes, then capacity x 8 bytes of ids), with
# capacity = size and the lists packed in list order: the file merge_from_multiple wrote, byte for byte.

def _part_path(stage: store.Stage, i: int) -> str:
    return stage.local(f"part-{i:05d}.lists")


@contextlib.contextmanager
def _open_partial(path: str):
    """One partial's (sizes, codes, ids), read whole from its file, which is removed once used (the seam that
    tests count: pass 2 has one open at a time)."""
    with open(path, "rb") as f:
        arrays = np.load(f), np.load(f), np.load(f)
    yield arrays
    os.remove(path)


def _pwrite(fd: int, buf, offset: int) -> None:
    view = memoryview(buf).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(f"pwrite wrote nothing at offset {offset}")
        view, offset = view[n:], offset + n


class _BaseLists:
    """The lists of the on-disk index an `add` grows, read list by list from its .ivfdata file by pread (nothing
    of it is mapped into the driver's resident set)."""

    def __init__(self, base: faiss.Index):
        self.il = faiss.downcast_InvertedLists(faiss.extract_index_ivf(base).invlists)
        if not isinstance(self.il, faiss.OnDiskInvertedLists):
            raise RuntimeError(f"an on-disk merge into an index whose lists are {type(self.il).__name__}")
        self.nlist, self.code_size = self.il.nlist, self.il.code_size
        self.sizes = np.fromiter((self.il.list_size(j) for j in range(self.nlist)), np.int64, self.nlist)
        self.fd = os.open(self.il.filename, os.O_RDONLY)

    def read(self, j: int) -> tuple[bytes, bytes]:
        k, cs, one = int(self.sizes[j]), self.code_size, self.il.lists.at(j)
        codes = os.pread(self.fd, k * cs, one.offset)
        ids = os.pread(self.fd, k * 8, one.offset + one.capacity * cs)
        if len(codes) != k * cs or len(ids) != k * 8:
            raise CorruptIndex(f"{self.il.filename}: shorter than its list {j} says (truncated?)")
        return codes, ids

    def close(self) -> None:
        os.close(self.fd)


def _merge_ondisk(trained: faiss.Index, base: faiss.Index | None, partials, stage: store.Stage) -> faiss.Index:
    """Inverted lists of `base` (if any) and of the partials (`lists_of` dicts, in id order), written into the
    stage's .ivfdata file; the index returned maps it (an ordinary OnDiskInvertedLists)."""
    if not is_ivf(trained):
        raise ValueError("build.merge=ondisk needs an IVF index; this one is "
                         f"{type(trained).__name__} (use merge=memory)")
    out = _copy(trained)
    ivf = faiss.extract_index_ivf(out)
    nlist, cs = ivf.nlist, ivf.code_size
    old = _BaseLists(base) if base is not None else None
    try:
        totals = old.sizes.copy() if old is not None else np.zeros(nlist, np.int64)
        n_parts = 0
        for part in partials:  # pass 1: each partial to its file as it arrives, sizes summed
            if (part["nlist"], part["code_size"]) != (nlist, cs):
                raise RuntimeError(f"partial {n_parts} has {part['nlist']} lists of {part['code_size']} B codes, "
                                   f"the index {nlist} of {cs} B")
            with open(_part_path(stage, n_parts), "wb") as f:
                for a in (part["sizes"], part["codes"], part["ids"]):
                    np.save(f, a)
            totals += part["sizes"]
            n_parts += 1
            del part  # the next one arrives while this name would still hold it
        starts = np.concatenate([[0], np.cumsum(totals * (cs + 8))])  # byte offset of each list
        path = stage.local(stage.ivfdata)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, int(starts[-1]))
            filled = np.zeros(nlist, np.int64)  # entries of each list written so far
            if old is not None:
                for j in np.flatnonzero(old.sizes).tolist():
                    codes, ids = old.read(j)
                    _pwrite(fd, codes, int(starts[j]))
                    _pwrite(fd, ids, int(starts[j] + totals[j] * cs))
                filled += old.sizes
            for i in range(n_parts):  # pass 2: one partial file at a time
                with _open_partial(_part_path(stage, i)) as (sizes, codes, ids):
                    at = 0
                    for j in np.flatnonzero(sizes).tolist():
                        k, f, start = int(sizes[j]), int(filled[j]), int(starts[j])
                        _pwrite(fd, codes[at * cs:(at + k) * cs], start + f * cs)
                        _pwrite(fd, ids[at:at + k], start + int(totals[j]) * cs + f * 8)
                        at += k
                    filled += sizes
        finally:
            os.close(fd)
        if not np.array_equal(filled, totals):
            raise RuntimeError("on-disk merge: lists not filled to their sizes")
    finally:
        if old is not None:
            old.close()
    ondisk = faiss.OnDiskInvertedLists(nlist, cs, path)
    # what merge_from_multiple would have set: the packed layout, exact sizes; no free slots (it left one spanning
    # the whole file, which a later in-place add would have written over)
    ondisk.totsize = int(starts[-1])
    sizes = totals.astype(np.uint64)  # named: swig_ptr does not keep it alive
    ondisk.set_all_lists_sizes(faiss.swig_ptr(sizes))
    if ondisk.totsize:
        ondisk.do_mmap()
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()
    out.ntotal = ivf.ntotal = int(totals.sum())
    return out


def _check_keys(new: columns.Columns, old: columns.Columns | None, where: str, part_size: int = 1 << 19) -> None:
    """No sample key twice in the index. Compared by 64-bit hashes (8 bytes a key, not the keys themselves), spilled
    into hash-partition files so that one partition of ~`part_size` hashes is in memory at a time, sorted in place
    (~9 bytes a hash; at most 256 partitions, i.e. open files, so past 134M keys a partition grows); only keys
    whose hash repeats are read back and compared."""
    def hashes(cols):
        for _, keys in cols.chunks("keys"):
            yield keys, np.fromiter((hash(k) for k in keys), np.int64, len(keys))

    total = sum(int(c.starts[-1] - c.starts[0]) for c in (new, old) if c is not None)  # keys, not end ids
    parts = min(256, max(1, -(-total // part_size)))
    suspects: set = set()
    with tempfile.TemporaryDirectory(prefix="stg-keys-") as tmp:
        def spill(cols, tag):
            files = [open(os.path.join(tmp, f"{tag}-{p}"), "wb") for p in range(parts)]
            try:
                for _, h in hashes(cols):
                    which = h % parts
                    order = np.argsort(which, kind="stable")
                    bounds = np.searchsorted(which[order], np.arange(parts + 1))
                    for p in range(parts):
                        files[p].write(h[order[bounds[p]:bounds[p + 1]]].tobytes())
            finally:
                for f in files:
                    f.close()

        spill(new, "new")
        if old is not None:
            spill(old, "old")
        for p in range(parts):
            h = np.fromfile(os.path.join(tmp, f"new-{p}"), np.int64)
            h.sort()
            suspects.update(h[1:][h[1:] == h[:-1]].tolist())
            if old is not None and len(h):
                o = np.fromfile(os.path.join(tmp, f"old-{p}"), np.int64)
                suspects.update(o[h[np.minimum(np.searchsorted(h, o), len(h) - 1)] == o].tolist())
    if not suspects:
        return
    seen: collections.Counter = collections.Counter()
    for cols in [new] + ([old] if old is not None else []):
        for keys, h in hashes(cols):
            seen.update(k for k, x in zip(keys, h.tolist()) if x in suspects)
    dup = sorted(k for k, c in seen.items() if c > 1)
    if dup:
        raise EmbeddingShardError(f"{where}: sample keys indexed twice, e.g. {dup[:3]}")


def check_export(meta: store.Meta, emb_dir: str, index_url: str) -> str:
    """The export key of the embeddings; StaleEmbeddings when the index was built from another export's."""
    export = embshards.export_of(embshards.list_shards(emb_dir)[0], emb_dir)
    built = str(meta.extra.get("export", ""))
    if built != export:
        raise StaleEmbeddings(f"index [{index_url}]: built from the embeddings of export {built or 'unrecorded'}, "
                              f"{emb_dir} now holds export {export or 'unrecorded'}; rebuild it with "
                              f"`cluster.index build build.rebuild=true`")
    return export


def existing(cfg: BuildSection, emb_dir: str, index_url: str) -> dict | None:
    """What `build` does over an index that is already there (without build.rebuild): None when there is none;
    a no-op report when it holds every complete embedding shard; otherwise an IndexExists naming what to run."""
    if cfg.rebuild or not store.exists(index_url):
        return None
    prev = store.read_meta(index_url)
    how = "`cluster.index build build.rebuild=true` replaces it"
    if prev.embeddings != emb_dir:
        raise IndexExists(f"index [{index_url}]: built from {prev.embeddings}, not {emb_dir}; {how}")
    if prev.vectors != cfg.vectors or cfg.factory not in ("auto", prev.factory):
        raise IndexExists(f"index [{index_url}]: built over {prev.vectors} vectors with {prev.factory}, asked for "
                          f"{cfg.vectors} with {cfg.factory}; {how}")
    check_export(prev, emb_dir, index_url)
    todo, _, _ = plan(emb_dir, skip_names={s["name"] for s in prev.shards}, dim=prev.dim)
    if todo:
        raise IndexExists(f"index [{index_url}]: exists without {len(todo)} new embedding shard(s) (e.g. "
                          f"{todo[0][0]}); `cluster.index add` adds them, {how}")
    return {"index": index_url, "version": prev.version, "factory": prev.factory, "count": prev.count,
            "shards_added": 0, "already_built": True}


def build(cfg: BuildSection, emb_dir: str, index_url: str, seed: int = 0, mapper: Mapper = local_map) -> dict:
    """A new index over every complete embedding shard. Over an existing one (without cfg.rebuild) this is a no-op
    when it already holds every shard, else IndexExists (see `existing`)."""
    t0 = time.time()
    done = existing(cfg, emb_dir, index_url)
    if done is not None:
        log.info("index %s already holds every embedding shard (version %d): nothing to do", index_url,
                 done["version"])
        return done
    with store.Stage(index_url, overwrite=cfg.rebuild) as stage:
        todo, dim, skipped = plan(emb_dir)
        if not todo:
            raise EmbeddingShardError(f"embeddings [{emb_dir}]: no complete, non-empty embedding shards to index "
                                      f"(skipped: { {k: len(v) for k, v in skipped.items()} }); run "
                                      f"`cluster.index embed` first")
        export = embshards.export_of(embshards.list_shards(emb_dir)[0], emb_dir)
        trained, factory, n_train = _train(cfg, emb_dir, todo, dim, seed, mapper)
        t_train = time.time()
        meta = store.Meta(factory=factory, dim=dim, vectors=cfg.vectors, embeddings=emb_dir, shards=[],
                          extra={"export": export} if export else {})
        index = _add_segment(cfg, emb_dir, todo, meta, trained, None, None, stage, mapper)
        t_add = time.time()
        meta = stage.commit(index, meta, trained=trained)
    t_end = time.time()
    return {"index": index_url, "version": meta.version, "factory": factory, "count": meta.count,
            "shards_added": len(todo), "train_points": n_train, "skipped": {k: len(v) for k, v in skipped.items()},
            "seconds": {"train": round(t_train - t0, 3), "add": round(t_add - t_train, 3),
                        "merge_and_save": round(t_end - t_add, 3)}}


def _add_segment(cfg: BuildSection, emb_dir: str, todo, meta: store.Meta, trained: faiss.Index,
                 base: faiss.Index | None, old: columns.Columns | None, stage: store.Stage,
                 mapper: Mapper) -> faiss.Index:
    """Add the shards `todo` after meta.count: their partial indices merged into `base` (or a copy of `trained`),
    their columns written as a new segment in the stage; meta's count, shards and segments extended."""
    first = meta.count
    segment = columns.SegmentWriter(stage.dir, stage.version, sum(c for _, c in todo), meta.dim)
    ondisk = (cfg.merge == "ondisk") if base is None else bool(meta.ivfdata)  # an add keeps the index's own layout
    partials = _partials(cfg, emb_dir, todo, first, meta.dim, trained, mapper, segment, meta.shards, ondisk)
    if ondisk:
        index = _merge_ondisk(trained, base, partials, stage)
    elif cfg.merge == "memory":
        index = _merge_memory(base if base is not None else _copy(trained), partials)
    else:
        raise ValueError(f"build.merge must be memory or ondisk, got {cfg.merge!r}")
    entry = {"first_id": first, **segment.close()}
    _check_keys(columns.Columns(stage.dir, [entry]), old, emb_dir)
    meta.segments = list(meta.segments) + [entry]
    meta.count = first + entry["count"]
    return index


def add(cfg: BuildSection, emb_dir: str, index_url: str, mapper: Mapper = local_map) -> dict:
    """Add embedding shards not yet in the index (incremental: the trained quantiser is reused, nothing is retrained;
    the earlier column segments are kept as they are). The previous version stays live until the new one is
    committed; with nothing new it is a no-op."""
    t0 = time.time()
    with store.Stage(index_url, overwrite=None) as stage:
        prev = stage.previous
        if prev.embeddings != emb_dir:  # shard names are only unique within one embedding dir
            raise IndexExists(f"index [{index_url}]: built from {prev.embeddings}, not {emb_dir}")
        if prev.vectors != cfg.vectors:
            raise IndexExists(f"index [{index_url}]: indexes {prev.vectors} vectors, build.vectors={cfg.vectors}")
        check_export(prev, emb_dir, index_url)
        todo, _, skipped = plan(emb_dir, skip_names={s["name"] for s in prev.shards}, dim=prev.dim)
        if not todo:
            return {"index": index_url, "version": prev.version, "count": prev.count, "shards_added": 0,
                    "already_built": True, "skipped": {k: len(v) for k, v in skipped.items()}}
        trained = store.load_trained(index_url, prev)
        base, _ = store.load(index_url, meta=prev)
        meta = store.Meta(**{**prev.__dict__, "shards": list(prev.shards), "segments": list(prev.segments)})
        index = _add_segment(cfg, emb_dir, todo, meta, trained, base, store.columns(index_url, prev), stage, mapper)
        meta = stage.commit(index, meta)
    return {"index": index_url, "version": meta.version, "count": meta.count, "shards_added": len(todo),
            "skipped": {k: len(v) for k, v in skipped.items()}, "seconds": {"add": round(time.time() - t0, 3)}}
