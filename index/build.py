"""Building and growing an index from embedding shards: train on a sample, add groups of shards into partial
indices (independent tasks), merge them in shard order, publish a new version (index.store).

Parallelism is the caller's: every function that touches many shards takes `mapper(fn, arg_tuples) -> results`
(a list comprehension by default; cluster/index.py passes one running Ray tasks). Ids are global and sequential
in shard order, so the merged index equals one built in a single pass.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence

import faiss
import numpy as np

from index import embshards, store
from index.config import BuildSection
from index.errors import DimensionMismatch, EmbeddingShardError, IndexExists, StaleEmbeddings
from index.factory import choose_factory, is_ivf, make_index, train_size

log = logging.getLogger(__name__)
Mapper = Callable[[Callable, Sequence[tuple]], list]


def local_map(fn: Callable, args: Sequence[tuple]) -> list:
    return [fn(*a) for a in args]


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
             gpu: str) -> tuple[bytes, list[dict]]:
    """Add shards [(name, samples, first_id)] to a copy of the trained index. Returns the partial index and, per
    shard, its id map (keys, video ids, times)."""
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
        maps.append({"name": name, "first_id": first_id, "keys": shard.keys.tolist(),
                     "video_ids": shard.video_ids.tolist(), "times": shard.times.tolist()})
    return faiss.serialize_index(index).tobytes(), maps


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
    x = np.concatenate(mapper(sample_task, args))
    log.info("training %s on %d of %d vectors", factory, len(x), n)
    index = _on_gpu(index, cfg.gpu, lambda ix: ix.train(x))
    return index, factory, len(x)


def _partials(cfg: BuildSection, emb_dir: str, todo, first_id: int, dim: int, trained: faiss.Index,
              mapper: Mapper) -> tuple[list[bytes], list[dict]]:
    groups, nxt = [], first_id
    for i in range(0, len(todo), max(1, cfg.shards_per_task)):
        group = []
        for name, count in todo[i:i + cfg.shards_per_task]:
            group.append((name, count, nxt))
            nxt += count
        groups.append(group)
    blob = faiss.serialize_index(trained).tobytes()
    results = mapper(add_task, [(blob, emb_dir, g, dim, cfg.vectors, cfg.gpu) for g in groups])
    return [r[0] for r in results], [m for r in results for m in r[1]]


def _copy(index: faiss.Index) -> faiss.Index:
    # clone_index can return a base class (IndexFlatIP -> IndexFlat) that merge_from then refuses
    return faiss.deserialize_index(faiss.serialize_index(index))


def _merge_memory(base: faiss.Index, partials: list[bytes]) -> faiss.Index:
    for blob in partials:
        part = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        base.merge_from(part, 0)
    return base


def _merge_ondisk(trained: faiss.Index, base: faiss.Index | None, partials: list[bytes],
                  stage: store.Stage) -> faiss.Index:
    """Inverted lists of `base` (if any) and of the partials, merged into the stage's .ivfdata file."""
    if not is_ivf(trained):
        raise ValueError("build.merge=ondisk needs an IVF index; this one is "
                         f"{type(trained).__name__} (use merge=memory)")
    lists = []
    keep = []  # the python objects must outlive the merge
    if base is not None:
        lists.append(faiss.extract_index_ivf(base).invlists)
    for i, blob in enumerate(partials):
        path = stage.local(f"part-{i:05d}.faiss")
        with open(path, "wb") as f:
            f.write(blob)
        part = faiss.read_index(path, faiss.IO_FLAG_MMAP)
        keep.append(part)
        lists.append(faiss.extract_index_ivf(part).invlists)
    out = _copy(trained)
    ivf = faiss.extract_index_ivf(out)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, stage.local(stage.ivfdata))
    vec = faiss.InvertedListsPtrVector()
    for il in lists:
        vec.push_back(il)
    total = ondisk.merge_from_multiple(vec.data(), vec.size(), False)
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()
    out.ntotal = ivf.ntotal = total
    for i in range(len(partials)):
        os.remove(stage.local(f"part-{i:05d}.faiss"))
    return out


def _check_keys(known: set[str], maps: list[dict], where: str) -> None:
    seen = set(known)
    for m in maps:
        dup = seen.intersection(m["keys"])
        if dup:
            raise EmbeddingShardError(f"{where}/{m['name']}.npz: keys already indexed, e.g. {sorted(dup)[:3]}")
        seen.update(m["keys"])


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
        partials, maps = _partials(cfg, emb_dir, todo, 0, dim, trained, mapper)
        _check_keys(set(), maps, emb_dir)
        t_add = time.time()
        if cfg.merge == "ondisk":
            index = _merge_ondisk(trained, None, partials, stage)
        elif cfg.merge == "memory":
            index = _merge_memory(_copy(trained), partials)
        else:
            raise ValueError(f"build.merge must be memory or ondisk, got {cfg.merge!r}")
        meta = store.Meta(factory=factory, dim=dim, vectors=cfg.vectors, embeddings=emb_dir, shards=[], keys=[],
                          video_ids=[], times=[], extra={"export": export} if export else {})
        _extend(meta, maps)
        meta = stage.commit(index, meta, trained=trained)
    t_end = time.time()
    return {"index": index_url, "version": meta.version, "factory": factory, "count": meta.count,
            "shards_added": len(todo), "train_points": n_train, "skipped": {k: len(v) for k, v in skipped.items()},
            "seconds": {"train": round(t_train - t0, 3), "add": round(t_add - t_train, 3),
                        "merge_and_save": round(t_end - t_add, 3)}}


def add(cfg: BuildSection, emb_dir: str, index_url: str, mapper: Mapper = local_map) -> dict:
    """Add embedding shards not yet in the index (incremental: the trained quantiser is reused, nothing is retrained).
    The previous version stays live until the new one is committed; with nothing new it is a no-op."""
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
        partials, maps = _partials(cfg, emb_dir, todo, prev.count, prev.dim, trained, mapper)
        _check_keys(set(prev.keys), maps, emb_dir)
        if prev.ivfdata:
            index = _merge_ondisk(trained, base, partials, stage)
        else:
            index = _merge_memory(base, partials)
        meta = store.Meta(**{**prev.__dict__, "shards": list(prev.shards), "keys": list(prev.keys),
                             "video_ids": list(prev.video_ids), "times": list(prev.times)})
        _extend(meta, maps)
        meta = stage.commit(index, meta)
    return {"index": index_url, "version": meta.version, "count": meta.count, "shards_added": len(todo),
            "skipped": {k: len(v) for k, v in skipped.items()}, "seconds": {"add": round(time.time() - t0, 3)}}


def _extend(meta: store.Meta, maps: list[dict]) -> None:
    for m in maps:
        if m["first_id"] != meta.count:
            raise RuntimeError(f"id map out of order at {m['name']}")
        meta.shards.append({"name": m["name"], "first_id": m["first_id"], "count": len(m["keys"])})
        meta.keys.extend(m["keys"])
        meta.video_ids.extend(m["video_ids"])
        meta.times.extend(m["times"])
