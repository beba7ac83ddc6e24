"""Index benchmark: recall@10 against exact search and the query-speed ratio, on >= 200k clustered 512-d vectors
(and on real embedding shards when given --embeddings). Prints one JSON object.

  .venv/bin/python -m benchmarks.speed.index_search                       # synthetic, 200k x 512
  .venv/bin/python -m benchmarks.speed.index_search --embeddings <shards>/embeddings/<tag>
  OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed.index_search --sizes 50000,100000,200000 --dim 256 --mine
      # the same measurement at each size (synthetic only), with the growth exponent of every cost (docs/scale.md)

`--mine-recall CLIPS` compares the pseudo-positives mined for a sample of clips with the same mining over exact
search (recall of the exact mining's pairs; the fraction of clips whose list is the same).

`--mine` also times pseudo-positive mining (index.mining.mine: every clip searched against the index, the
caption gate, the table) on the built index, with cluster.index's default settings (k=5, search_k=64, nprobe=16).

The index is built through the real pipeline (embedding shards -> sample training -> partial indices -> merge ->
atomic save -> load); the baseline is exact inner-product search (IndexFlatIP) over the same vectors, same queries,
same threads, in the same run. Target: recall@10 >= 0.95 at >= 10x the exact query speed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from common import pseudo_table  # noqa: E402
from index import build, embshards, mining, store, synthetic  # noqa: E402
from index.config import BuildSection  # noqa: E402
from index.factory import ivf_lists  # noqa: E402
from index.search import Searcher, set_nprobe  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed_search(index: faiss.Index, q: np.ndarray, k: int, repeats: int) -> tuple[np.ndarray, np.ndarray, float]:
    index.search(q[:10], k)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        d, i = index.search(q, k)
        best = min(best, time.perf_counter() - t)
    return d, i, best


def synthetic_shards(emb_dir: str, x: np.ndarray, per_shard: int) -> None:
    n = len(x)
    data = {"keys": np.array([f"v{i // 20:07d}__s{i % 20:04d}" for i in range(n)]),
            "video_ids": np.array([f"v{i // 20:07d}" for i in range(n)]),
            "times": np.zeros((n, 2), np.float32), "video": x, "text": x}
    synthetic.write_shards(emb_dir, data, per_shard)


def load_all(emb_dir: str, which: str) -> np.ndarray:
    complete, _ = embshards.list_shards(emb_dir)
    parts = [embshards.read_shard(emb_dir, name).vectors(which) for name, st in complete if st["samples"]]
    return embshards.l2_normalise(np.concatenate(parts))


def growth(sizes: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) on log(size): cost ~ size ** slope (1 linear, 2 quadratic)."""
    pts = [(np.log(n), np.log(v)) for n, v in zip(sizes, values) if v and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return round(float(np.polyfit(x, y, 1)[0]), 2)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the cluster centre")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", default="1,2,4,8,16,32,64")
    p.add_argument("--factory", default="auto", help="auto, a FAISS factory string, or a template with {nlist} "
                   "(e.g. 'IVF{nlist},PQ32': the auto rule's list count for each size)")
    p.add_argument("--memory-budget-mb", type=float, default=4096)
    p.add_argument("--flat-max", type=int, default=20000)
    p.add_argument("--per-shard", type=int, default=20000)
    p.add_argument("--embeddings", help="real embedding dir (contract 4) instead of synthetic vectors")
    p.add_argument("--vectors", default="video")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", help="comma-separated vector counts: the run at each (synthetic), plus growth exponents")
    p.add_argument("--mine", action="store_true", help="also time pseudo-positive mining on the built index")
    p.add_argument("--mine-tau", type=float, default=0.9, help="caption gate of --mine (-1: every other-video "
                   "neighbour passes, the table's largest size)")
    p.add_argument("--mine-recall", type=int, default=0, metavar="CLIPS",
                   help="also mine the first shards holding CLIPS query clips (cluster.index's settings, "
                   "--mine-tau) and compare their pseudo-positives with the same mining over exact search")
    a = p.parse_args(argv)
    if not a.sizes:
        out = measure(a, a.n)
        print(json.dumps(out, indent=1))
        return out
    if a.embeddings:
        p.error("--sizes measures synthetic vectors; it does not take --embeddings")
    try:
        sizes = sorted({int(v) for v in a.sizes.split(",") if v.strip()})
    except ValueError:
        p.error(f"--sizes takes comma-separated integers, got {a.sizes!r}")
    runs = [measure(a, n) for n in sizes]
    keys = {"build_seconds": lambda r: r["build_seconds"], "build_cpu_seconds": lambda r: r["build_cpu_seconds"],
            "index_mb": lambda r: r["index_mb"],
            "peak_rss_mb": lambda r: r["peak_rss_mb"], "exact_query_ms": lambda r: r["exact_query_ms"],
            "best_query_ms": lambda r: r["best"]["query_ms"], "sidecar_mb": lambda r: r["sidecar_mb"],
            "train_seconds": lambda r: r["build_phases"].get("train"),
            "add_seconds": lambda r: r["build_phases"].get("add")}
    if a.mine:
        keys["mine_seconds"] = lambda r: r["mine"]["seconds"]
        keys["mine_cpu_seconds"] = lambda r: r["mine"]["cpu_seconds"]
        keys["table_mb"] = lambda r: r["mine"]["table_mb"]
    out = {"sizes": sizes, "dim": a.dim, "factory_requested": a.factory, "threads": faiss.omp_get_max_threads(),
           "growth_exponent": {k: growth(sizes, [f(r) for r in runs]) for k, f in keys.items()},
           "runs": runs}
    print(json.dumps(out, indent=1))
    return out


def measure(a, n_vectors: int) -> dict:
    """The whole measurement at one size (n_vectors synthetic vectors, or the --embeddings shards)."""
    work = tempfile.mkdtemp(prefix="stg-bench-index-")
    try:
        t0 = time.perf_counter()
        if a.embeddings:
            emb_dir = a.embeddings
            x = load_all(emb_dir, a.vectors)
            source = {"embeddings": emb_dir, "vectors": a.vectors}
        else:
            emb_dir = os.path.join(work, "emb")
            pts, _ = synthetic.clustered(n_vectors + a.queries, a.dim, a.clusters, a.spread, a.seed)
            x, held_out = pts[:n_vectors], pts[n_vectors:]  # queries: unseen points of the same clusters
            synthetic_shards(emb_dir, x, a.per_shard)
            source = {"synthetic": {"clusters": a.clusters, "spread": a.spread, "seed": a.seed}}
        n, dim = x.shape
        rng = np.random.default_rng(a.seed + 1)
        if a.embeddings:  # real: queries are captions when indexing clips (text -> video search), else clips
            qv = load_all(emb_dir, "text" if a.vectors == "video" else "video")
            q = qv[rng.choice(n, size=min(a.queries, n), replace=False)]
        else:
            q = held_out
        t_data = time.perf_counter() - t0

        exact = faiss.IndexFlatIP(dim)
        exact.add(x)
        _, gt, t_exact = _timed_search(exact, q, a.k, a.repeats)
        del exact

        url = os.path.join(work, "index")
        # a template such as IVF{nlist},PQ32 takes the list count the auto rule would pick for n (index.factory)
        factory = a.factory.format(nlist=ivf_lists(n)) if "{nlist}" in a.factory else a.factory
        cfg = BuildSection(factory=factory, memory_budget_mb=a.memory_budget_mb, flat_max=a.flat_max,
                           vectors=a.vectors, shards_per_task=1)
        rss_before = _rss_mb()
        t, c = time.perf_counter(), time.process_time()
        report = build.build(cfg, emb_dir, url, seed=a.seed)
        t_build, c_build = time.perf_counter() - t, time.process_time() - c
        meta = store.read_meta(url)
        index_bytes = sum(f["size"] for name, f in meta.files.items()  # the codes: not the trained part or columns
                          if not name.startswith("trained-") and name not in meta.column_files())
        rss_built = _rss_mb()
        s = Searcher(url)
        rss_loaded = _rss_mb()
        runs = []
        for nprobe in [int(v) for v in a.nprobe.split(",")] if report["factory"] != "Flat" else [1]:
            set_nprobe(s.index, nprobe)
            _, ids, t_ann = _timed_search(s.index, q, a.k, a.repeats)
            recall = float(np.mean([len(set(ids[i]) & set(gt[i])) / a.k for i in range(len(q))]))
            runs.append({"nprobe": nprobe, f"recall@{a.k}": round(recall, 4),
                         "speedup_vs_exact": round(t_exact / t_ann, 2), "query_ms": round(1e3 * t_ann / len(q), 4)})
        ok = [r for r in runs if r[f"recall@{a.k}"] >= 0.95]
        best = max(ok, key=lambda r: r["speedup_vs_exact"]) if ok else max(runs, key=lambda r: r[f"recall@{a.k}"])
        out = {
            "vectors": n, "dim": dim, "queries": len(q), "k": a.k, "source": source,
            "factory": report["factory"], "threads": faiss.omp_get_max_threads(),
            "exact_query_ms": round(1e3 * t_exact / len(q), 4),
            "best": best, "target_met": bool(best[f"recall@{a.k}"] >= 0.95 and best["speedup_vs_exact"] >= 10),
            "runs": runs,
            # CPU seconds of this process: on a shared, loaded machine they track the work, wall seconds do not
            "build_seconds": round(t_build, 2), "build_cpu_seconds": round(c_build, 2),
            "build_phases": report["seconds"], "train_points": report["train_points"],
            "index_mb": round(index_bytes / 2**20, 1), "flat_vectors_mb": round(n * dim * 4 / 2**20, 1),
            # the sidecar commits a version (counts, files, hashes); the per-vector data is in column files
            "sidecar_mb": round(os.path.getsize(os.path.join(url, "index.json")) / 2**20, 4),
            "columns_mb": round(sum(os.path.getsize(os.path.join(url, f)) for f in store.read_meta(url).column_files())
                                / 2**20, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_mb": {"before_build": round(rss_before, 1),
                                                               "after_build": round(rss_built, 1),
                                                               "after_load": round(rss_loaded, 1)},
            "data_seconds": round(t_data, 2),
        }
        if a.mine:
            del s
            t, c = time.perf_counter(), time.process_time()
            folder = os.path.join(work, "pseudo_positives")
            table = mining.mine(url, folder, k=5, tau=a.mine_tau, search_k=64, clips_per_task=20000, nprobe=16)
            out["mine"] = {"seconds": round(time.perf_counter() - t, 2),
                           "cpu_seconds": round(time.process_time() - c, 2), "k": 5, "search_k": 64, "nprobe": 16,
                           "tau": a.mine_tau, "pairs": table["counts"].get("pairs", 0),
                           "table_mb": round(sum(os.path.getsize(os.path.join(folder, f))
                                                 for f in os.listdir(folder)) / 2**20, 2),
                           "clips": table["counts"].get("clips", 0), "with_positives":
                           table["counts"].get("with_positives", 0), "peak_rss_mb": round(_peak_rss_mb(), 1)}
        if a.mine_recall:
            out["mine_recall"] = mine_recall(url, x, a.mine_recall, a.mine_tau, os.path.join(work, "recall_table"))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def mine_recall(url: str, x: np.ndarray, clips: int, tau: float, folder: str, k: int = 5, search_k: int = 64,
                nprobe: int = 16) -> dict:
    """Pseudo-positives of the first shards holding `clips` query clips as `cluster.index mine` writes them (the
    index, Ray-less), against the baseline: the same mining step (index.mining.mine_block: search_k neighbours,
    other videos only, caption gate, best k) over exact inner-product search of the same vectors `x` (ids in
    index order). recall = mined pairs that the exact mining also gives / the exact mining's pairs."""
    meta = store.read_meta(url)
    report = mining.mine(url, folder, k=k, tau=tau, search_k=search_k, clips_per_task=20000, nprobe=nprobe,
                         max_clips=clips)
    cols = store.columns(url, meta)
    m = int(report["counts"]["clips"])
    keys = cols.strings("keys", 0, meta.count)
    pos = {key: i for i, key in enumerate(keys)}
    mined = {pos[key]: [pos[p[0]] for p in pairs] for key, pairs in pseudo_table.Table(folder)}
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    ids = np.arange(m)
    qtext, qcodes = cols.take("text", ids), cols.take("video_codes", ids)
    found = same = exact_pairs = hit = 0
    for lo in range(0, m, mining.BLOCK):
        res, _ = mining.mine_block(exact, x[lo:min(m, lo + mining.BLOCK)], qtext[lo:lo + mining.BLOCK],
                                   qcodes[lo:lo + mining.BLOCK], cols, k, tau, search_k)
        for r, pairs in enumerate(res):
            want, got = [n for n, _, _ in pairs], mined.get(lo + r, [])
            exact_pairs += len(want)
            found += len(got)
            hit += len(set(want) & set(got))
            same += want == got
    return {"clips": m, "k": k, "search_k": search_k, "nprobe": nprobe, "tau": tau, "exact_pairs": exact_pairs,
            "mined_pairs": found, "recall": round(hit / exact_pairs, 4) if exact_pairs else None,
            "same_list_fraction": round(same / m, 4) if m else None}


if __name__ == "__main__":
    main()
