"""On-disk merge benchmark: the time `build.merge=ondisk` spends merging partials into the .ivfdata, per partial, at
a list count the auto factory picks at HowTo100M's size. Prints one JSON object.

  OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed.merge_ondisk --nlist 65536 --partials 20

Partials are generated (each --per-partial vectors spread uniformly over the lists, random --code-size byte
codes, sequential ids), as an add task of the on-disk merge returns them (index.build.lists_of's arrays). Timed:
index.build._merge_ondisk over them into a real stage (pass 1: each partial to its file as it arrives; pass 2:
the .ivfdata written by pwrite, one partial file at a time). Baseline, in the same run over the same lists: what
the merge did before, OnDiskInvertedLists.merge_from_multiple over every partial held at once (in-memory
ArrayInvertedLists, so the baseline does not pay the partial files or the mapping the old merge had: a lower bound
on its time). Both produce the same file (checked here, and in tests/test_index_build.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time

import faiss
import numpy as np

from index import build, store


def _partials(nlist: int, count: int, per: int, code_size: int, seed: int):
    rng = np.random.default_rng(seed)
    for p in range(count):
        sizes = np.bincount(rng.integers(0, nlist, per), minlength=nlist).astype(np.int64)
        yield {"nlist": nlist, "code_size": code_size, "sizes": sizes,
               "codes": rng.integers(0, 256, per * code_size, dtype=np.uint8),
               "ids": np.arange(p * per, (p + 1) * per, dtype=np.int64)}


@contextlib.contextmanager
def _quiet_stdout():
    saved = os.dup(1)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _array_lists(part: dict) -> faiss.ArrayInvertedLists:
    il = faiss.ArrayInvertedLists(part["nlist"], part["code_size"])
    at, cs = 0, part["code_size"]
    for j in np.flatnonzero(part["sizes"]).tolist():
        k = int(part["sizes"][j])
        ids, codes = part["ids"][at:at + k], part["codes"][at * cs:(at + k) * cs]
        il.add_entries(j, k, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        at += k
    return il


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nlist", type=int, default=65536)
    p.add_argument("--partials", type=int, default=20)
    p.add_argument("--per-partial", type=int, default=10000, help="vectors per partial (one shard a task)")
    p.add_argument("--code-size", type=int, default=16, help="bytes per code (PQ16: the auto factory's at 136M)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.nlist < 1 or a.partials < 1 or a.per_partial < 1 or a.code_size < 1:
        p.error("--nlist, --partials, --per-partial and --code-size must be positive")
    # an IVF index with the lists' shape; the merge reads only its nlist and code_size (and copies it)
    trained = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(a.code_size), a.code_size, a.nlist,
                                            faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    assert trained.code_size == a.code_size
    work = tempfile.mkdtemp(prefix="stg-bench-merge-")
    try:
        with store.Stage(os.path.join(work, "index"), overwrite=False) as stage:
            t, c = time.perf_counter(), time.process_time()
            merged = build._merge_ondisk(trained, None, _partials(a.nlist, a.partials, a.per_partial, a.code_size,
                                                                  a.seed), stage)
            t_new, c_new = time.perf_counter() - t, time.process_time() - c
            new_bytes = open(stage.local(stage.ivfdata), "rb").read()
            assert merged.ntotal == a.partials * a.per_partial

        held = [_array_lists(part) for part in _partials(a.nlist, a.partials, a.per_partial, a.code_size, a.seed)]
        path = os.path.join(work, "baseline.ivfdata")
        ondisk = faiss.OnDiskInvertedLists(a.nlist, a.code_size, path)
        vec = faiss.InvertedListsPtrVector()
        for il in held:
            vec.push_back(il)
        with _quiet_stdout():  # faiss prints "resizing <file>" there; the JSON must be all of stdout
            t, c = time.perf_counter(), time.process_time()
            total = ondisk.merge_from_multiple(vec.data(), vec.size(), False)
            t_old, c_old = time.perf_counter() - t, time.process_time() - c
        del ondisk
        same = new_bytes == open(path, "rb").read()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    nonempty = a.nlist * (1 - np.exp(-a.per_partial / a.nlist))  # expected non-empty lists per partial
    out = {"nlist": a.nlist, "partials": a.partials, "per_partial": a.per_partial, "code_size": a.code_size,
           "threads": faiss.omp_get_max_threads(), "vectors": int(total), "same_file_as_baseline": same,
           "ivfdata_mb": round(len(new_bytes) / 2**20, 2),
           "merge_seconds_per_partial": round(t_new / a.partials, 4),
           "merge_cpu_seconds_per_partial": round(c_new / a.partials, 4),
           "baseline_seconds_per_partial": round(t_old / a.partials, 4),
           "baseline_cpu_seconds_per_partial": round(c_old / a.partials, 4),
           "ratio_to_baseline": round(t_new / t_old, 2) if t_old > 0 else None,
           "expected_nonempty_lists_per_partial": round(float(nonempty)),
           "merge_us_per_nonempty_list": round(1e6 * t_new / a.partials / nonempty, 2)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
