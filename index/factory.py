"""Choosing the FAISS factory string from the vector count, the dimension and a memory budget.

Rules (FAISS's own guidelines): exact search while it is cheap; else an IVF with about 4*sqrt(n) lists
(a power of two, at least 39 training points per list) and the richest codes the budget holds:
full vectors, then 8-bit scalar quantisation, then product quantisation.
"""
from __future__ import annotations

import math

import faiss

ID_BYTES = 8  # IVF inverted lists store an int64 id beside every code


def ivf_lists(n: int) -> int:
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(4, round(math.log2(target)))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    return nlist


def choose_factory(n: int, d: int, memory_budget_mb: float, flat_max: int) -> str:
    budget = memory_budget_mb * 2**20
    if n <= flat_max:
        if n * d * 4 > budget:
            raise ValueError(f"{n} vectors of dim {d} need {n * d * 4 / 2**20:.0f} MiB for exact search; "
                             f"raise memory_budget_mb or lower flat_max")
        return "Flat"
    nlist = ivf_lists(n)
    fixed = nlist * d * 4
    if fixed + n * (4 * d + ID_BYTES) <= budget:
        return f"IVF{nlist},Flat"
    if fixed + n * (d + ID_BYTES) <= budget:
        return f"IVF{nlist},SQ8"
    for m in (64, 48, 32, 24, 16, 8, 4):
        if d % m == 0 and fixed + n * (m + ID_BYTES) <= budget:
            return f"IVF{nlist},PQ{m}"
    raise ValueError(f"{n} vectors of dim {d} do not fit in {memory_budget_mb} MiB even as 4-byte PQ codes; "
                     f"raise memory_budget_mb or give a factory string (build.factory=...)")


def make_index(factory: str, d: int) -> faiss.Index:
    """An empty inner-product index; a bad factory string is a clear error, not a FAISS abort."""
    try:
        return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot build factory {factory!r} for dim {d}: {str(e).splitlines()[0]}") from e


def is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def train_size(index: faiss.Index, n: int, requested: int) -> int:
    if requested > 0:
        return min(requested, n)
    if not is_ivf(index):
        return min(n, 10000) if not index.is_trained else 0
    nlist = faiss.extract_index_ivf(index).nlist
    # PQ/SQ codebooks want ~10k points of their own (256 centroids x 39)
    return min(n, max(64 * nlist, 10000))
