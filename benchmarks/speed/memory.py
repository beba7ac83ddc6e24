"""Memory benchmark: the peak resident set (ru_maxrss) of each process that has to run at HowTo100M's size, at
three sizes, each step in its own fresh process. Prints one JSON object.

  OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed.memory --sizes 50000,250000,1000000 \
      --videos 10000,100000,1000000

Index steps (synthetic clustered 256-d embedding shards of 10,000 clips, IVF1024,PQ32 merged on disk so the index's
own codes are memory-mapped, the same training sample at every size; --factory, --train): `build` over all shards
but the last, `add` of the last, `search` (100 queries, hits with their keys), `mine` (whole shards of query clips
up to --mine-clips, against the whole index, writing the table), `loader` (a pretraining process's pseudo-positive
reader attaching captions to every clip of 4 shards). Caption steps (generated caption.json and manifest of N
videos, 3 segments each): `plan` (the sharding driver's plan: manifest, caption index, tasks) and, as the baseline
of the same run, `parse` (what the driver did before: json.loads of the whole caption file).

The floor of the index steps is `idle` (a process importing what they import and doing nothing), that of the
loader `idle_loader` (pretrain imports torch), that of the caption steps `idle_shards`. Growth exponents are
least-squares slopes of log(peak RSS - idle) on log(size) over the sizes; the FAISS index's own codes (index-*.faiss
and .ivfdata bytes) are reported beside them, since they grow with n by design. On Linux each step also reports its
peak anonymous and file-backed resident set apart (sampled every 5 ms): `build`, `add` and `search` map the index's
codes (the on-disk partials and .ivfdata), so their `*_anon` exponents are the ones the target is about
(`target_met_less_mapped_codes`). The index steps run with the allocator setting `python -m cluster.index` makes
(common.heap.return_large_frees); --heap default leaves glibc's default, the baseline. `build` and `add` run
their add tasks as Ray tasks on a local Ray started by the step (--mapper ray, the default: what `python -m
cluster.index build` does; their floor is `idle_ray`, a driver that started Ray) or in the driver (--mapper local).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile

DIM, PER_SHARD, ACTIONS, CLIPS_PER_VIDEO = 256, 10_000, 64, 10
FACTORY, TRAIN = os.environ.get("MEM_FACTORY", "IVF1024,PQ32"), int(os.environ.get("MEM_TRAIN", "20000"))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_embeddings(emb: str, n: int) -> None:
    """n clips in shards of PER_SHARD, generated a shard at a time (index.synthetic's model, no n-sized array)."""
    import numpy as np

    from index import embshards

    rng = np.random.default_rng(0)
    act_v = embshards.l2_normalise(rng.standard_normal((ACTIONS, DIM)))
    act_t = embshards.l2_normalise(rng.standard_normal((ACTIONS, DIM)))
    for s, lo in enumerate(range(0, n, PER_SHARD)):
        m = min(PER_SHARD, n - lo)
        r = np.random.default_rng(s + 1)
        ids = lo + np.arange(m)
        vid, seg = ids // CLIPS_PER_VIDEO, ids % CLIPS_PER_VIDEO
        act = r.integers(0, ACTIONS, size=m)
        video = embshards.l2_normalise(act_v[act] + 0.6 * r.standard_normal((m, DIM)) / math.sqrt(DIM))
        text = embshards.l2_normalise(act_t[act] + 0.2 * r.standard_normal((m, DIM)) / math.sqrt(DIM))
        shard = embshards.EmbShard(
            f"emb-{s:06d}", np.array([f"vid{v:07d}__s{g:04d}" for v, g in zip(vid, seg)]),
            np.array([f"vid{v:07d}" for v in vid]), np.stack([seg * 8.0, seg * 8.0 + 8.0], 1).astype(np.float32),
            video, text, np.array([f"caption of action {a}" for a in act]))
        embshards.write_shard(emb, shard, {"shard": f"shard-{s:06d}.tar"})


def _write_corpus(folder: str, videos: int) -> None:
    """caption.json (streamed out, one entry at a time) and manifest.csv of `videos` videos."""
    with open(os.path.join(folder, "caption.json"), "w") as f:
        f.write("{")
        for v in range(videos):
            entry = {"start": [0.0, 4.0, 8.0], "end": [4.0, 8.0, 12.0],
                     "text": [f"step {j} of video {v}: mix the flour" for j in range(3)]}
            f.write(("," if v else "") + json.dumps(f"v{v:08d}") + ":" + json.dumps(entry))
        f.write("}")
    with open(os.path.join(folder, "manifest.csv"), "w") as f:
        f.write("video_id,path\n")
        f.writelines(f"v{v:08d},videos/v{v:08d}.mp4\n" for v in range(videos))


def _status_mb() -> dict:
    """This process's resident set split as Linux reports it: anonymous (heap) and file-backed (mapped files)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024
    return out


class _Split:
    """Peak anonymous, file-backed and shared-memory resident set, sampled every 5 ms on a thread (ru_maxrss is
    their exact peak sum): the file-backed part of `build` and `add` is mostly the index codes they map (partials
    and the .ivfdata being written), which grow with n by design; the shared part is Ray's object store pages the
    driver read task results from; the anonymous part is what the process itself holds."""

    def __init__(self):
        import threading

        self.peak = {"RssAnon": 0.0, "RssFile": 0.0, "RssShmem": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for k, v in _status_mb().items():
                self.peak[k] = max(self.peak[k], v)
            self._stop.wait(0.005)

    def close(self) -> dict:
        self._stop.set()
        self._thread.join()
        for k, v in _status_mb().items():
            self.peak[k] = max(self.peak[k], v)
        return {"peak_anon_mb": round(self.peak["RssAnon"], 1), "peak_file_mb": round(self.peak["RssFile"], 1),
                "peak_shmem_mb": round(self.peak["RssShmem"], 1)}


def step(name: str, work: str, n: int) -> dict:
    """One measured step, in this (fresh) process."""
    split = _Split() if os.path.exists("/proc/self/status") else None
    out = _step(name, work, n)
    return {**out, "peak_rss_mb": round(_rss_mb(), 1), **(split.close() if split else {})}


def _mapper():
    """How build and add run their add tasks: as `python -m cluster.index` runs them (MEM_MAPPER=ray: Ray tasks
    in worker processes, the driver receiving each partial), or in this process (local: the driver also does every
    task's work, whose heap churn then stays in the measured process)."""
    from index import build

    if os.environ.get("MEM_MAPPER", "ray") == "local":
        return build.local_map
    from cluster.index import ray_mapper
    from cluster.runtime import init_ray

    return ray_mapper(init_ray(None, num_cpus=1))


def _step(name: str, work: str, n: int) -> dict:
    # the allocator setting `python -m cluster.index <name>` makes for its process (--heap default: glibc's own)
    if name in ("build", "add", "search", "mine") and os.environ.get("MEM_HEAP", "mmap") == "mmap":
        from common.heap import return_large_frees

        return_large_frees()
    emb, url, table = os.path.join(work, "emb"), os.path.join(work, "index"), os.path.join(work, "pp")
    out: dict = {}
    if name == "idle":  # the floor of the index steps: their imports
        import faiss  # noqa: F401
        import numpy  # noqa: F401

        from index import build, mining  # noqa: F401
    elif name == "idle_loader":  # the loader's floor: pretrain imports torch
        from pretrain import pseudo_positives  # noqa: F401
    elif name == "idle_shards":  # the floor of the caption steps
        from shards import corpus, pipeline  # noqa: F401
    elif name == "prep":
        _write_embeddings(emb, n)
        last = f"emb-{(n - 1) // PER_SHARD:06d}"
        os.rename(os.path.join(emb, last + ".stats.json"), os.path.join(work, "held.stats.json"))
    elif name == "idle_ray":  # the floor of build and add under Ray: a driver that started its Ray
        _mapper()
    elif name == "build":
        from index import build
        from index.config import BuildSection

        out = build.build(BuildSection(factory=FACTORY, train_size=TRAIN, merge="ondisk", shards_per_task=1), emb, url,
                          mapper=_mapper())
    elif name == "add":
        from index import build
        from index.config import BuildSection

        held = [f for f in os.listdir(work) if f == "held.stats.json"]
        last = f"emb-{(n - 1) // PER_SHARD:06d}"
        for f in held:
            os.rename(os.path.join(work, f), os.path.join(emb, last + ".stats.json"))
        out = build.add(BuildSection(factory=FACTORY, train_size=TRAIN, merge="ondisk", shards_per_task=1), emb, url,
                        mapper=_mapper())
        from index import store

        meta = store.read_meta(url)
        out["index_codes_mb"] = round(sum(os.path.getsize(os.path.join(url, f)) for f in (meta.data, meta.ivfdata))
                                      / 2**20, 2)
        out["columns_mb"] = round(sum(os.path.getsize(os.path.join(url, f)) for f in meta.column_files()) / 2**20, 1)
        out["sidecar_kb"] = round(os.path.getsize(os.path.join(url, "index.json")) / 1024, 1)
    elif name == "search":
        import numpy as np

        from index.search import Searcher

        s = Searcher(url)
        q = np.random.default_rng(1).standard_normal((100, DIM)).astype(np.float32)
        out["hits"] = sum(len(h) for h in s.search(q, 10))
    elif name == "mine":
        from index import mining

        out = mining.mine(url, table, k=5, tau=0.9, search_k=64, clips_per_task=PER_SHARD, nprobe=16,
                          max_clips=int(os.environ["MINE_CLIPS"]))
        out = {"counts": out["counts"], "parts": out["parts"]}
    elif name == "loader":
        from index import store
        from pretrain.pseudo_positives import PseudoPositives

        meta = store.read_meta(url)
        cols = store.columns(url, meta)
        pp = PseudoPositives.load(table, "")
        attached = 0
        for s in meta.shards[:4]:
            keys = cols.strings("keys", s["first_id"], s["first_id"] + s["count"])
            attached += sum(c is not None for c in pp.attach({"keys": keys, "sample_seeds": range(len(keys))}))
        out = {"attached": attached, "parts_read": len(pp.table.opened)}
    elif name == "corpus":
        _write_corpus(work, n)
    elif name in ("plan", "parse"):
        from shards import corpus, pipeline
        from shards.config import ShardConfig

        if name == "parse":
            out["videos"] = len(corpus.read_captions(os.path.join(work, "caption.json")))
        else:
            cfg = ShardConfig(manifest=os.path.join(work, "manifest.csv"), output=os.path.join(work, "shards"))
            out["tasks"] = sum(1 for _ in pipeline.iter_plan(cfg))  # as run() consumes it: one task at a time
    else:
        raise SystemExit(f"unknown step {name}")
    return out


def _run(name: str, work: str, n: int, env: dict) -> dict:
    p = subprocess.run([sys.executable, "-m", "benchmarks.speed.memory", "--step", name, "--work", work, "--n", str(n)],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"step {name} at {n} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _slope(xs: list[float], ys: list[float]) -> float | None:
    pts = [(math.log(x), math.log(max(y, 1.0))) for x, y in zip(xs, ys)]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,250000,1000000", help="index vectors per size")
    ap.add_argument("--videos", default="10000,100000,1000000", help="caption.json videos per size")
    ap.add_argument("--mine-clips", type=int, default=20000, help="query clips mined at every size (whole shards)")
    ap.add_argument("--factory", default=FACTORY, help="FAISS factory of every index built")
    ap.add_argument("--train", type=int, default=TRAIN, help="training points at every size")
    ap.add_argument("--work", default="", help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--heap", choices=("mmap", "default"), default="mmap",
                    help="the index steps' allocator: as cluster.index sets it (mmap) or glibc's default")
    ap.add_argument("--mapper", choices=("ray", "local"), default="ray",
                    help="build/add's tasks as Ray tasks (as cluster.index runs them) or in the driver's process")
    ap.add_argument("--step", default="", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.step:
        print(json.dumps(step(a.step, a.work, a.n)))
        return
    sizes = [int(x) for x in a.sizes.split(",") if x]
    if any(n < 2 * PER_SHARD for n in sizes):  # build takes all shards but the last, add the last
        ap.error(f"--sizes: each at least {2 * PER_SHARD} vectors (two shards of {PER_SHARD})")
    env = {**os.environ, "MINE_CLIPS": str(a.mine_clips), "MEM_FACTORY": a.factory, "MEM_TRAIN": str(a.train),
           "MEM_MAPPER": a.mapper, "MEM_HEAP": a.heap, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    root = a.work or tempfile.mkdtemp(prefix="stg-mem-")
    out: dict = {"dim": DIM, "factory": a.factory, "train_points": a.train, "mine_clips": a.mine_clips,
                 "mapper": a.mapper, "heap": a.heap, "index": {}, "captions": {}}
    try:
        first = _run("idle", root, 0, env)
        idle = out["idle_rss_mb"] = first["peak_rss_mb"]
        out["idle_anon_mb"] = first.get("peak_anon_mb")
        idle_shards = out["idle_shards_rss_mb"] = _run("idle_shards", root, 0, env)["peak_rss_mb"]
        idle_loader = out["idle_loader_rss_mb"] = _run("idle_loader", root, 0, env)["peak_rss_mb"]
        ray_floor = _run("idle_ray", root, 0, env) if a.mapper == "ray" else first
        out["idle_ray_rss_mb"], out["idle_ray_anon_mb"] = ray_floor["peak_rss_mb"], ray_floor.get("peak_anon_mb")

        for n in sizes:
            work = os.path.join(root, f"index-{n}")
            os.makedirs(work, exist_ok=True)
            _run("prep", work, n, env)
            out["index"][n] = {s: _run(s, work, n, env) for s in ("build", "add", "search", "mine", "loader")}
            print(json.dumps({"size": n, **out["index"][n]}), file=sys.stderr, flush=True)
            shutil.rmtree(work, ignore_errors=True)
        videos = [int(x) for x in a.videos.split(",") if x]
        for n in videos:
            work = os.path.join(root, f"captions-{n}")
            os.makedirs(work, exist_ok=True)
            _run("corpus", work, n, env)
            out["captions"][n] = {s: _run(s, work, n, env) for s in ("plan", "parse")}
            print(json.dumps({"videos": n, **out["captions"][n]}), file=sys.stderr, flush=True)
            shutil.rmtree(work, ignore_errors=True)
        growth = {}
        for s in ("build", "add", "search", "mine", "loader"):
            if len(sizes) > 1:
                floor = {"loader": idle_loader, "build": out["idle_ray_rss_mb"], "add": out["idle_ray_rss_mb"]
                         }.get(s, idle)
                growth[s] = _slope(sizes, [out["index"][n][s]["peak_rss_mb"] - floor for n in sizes])
        if len(sizes) > 1 and "peak_anon_mb" in out["index"][sizes[0]]["build"]:
            for s in ("build", "add", "search", "mine"):  # less their file-backed part: the codes they map
                floor = out["idle_ray_anon_mb"] if s in ("build", "add") else out["idle_anon_mb"]
                growth[s + "_anon"] = _slope(sizes, [out["index"][n][s]["peak_anon_mb"] - floor for n in sizes])
        if len(sizes) > 1:
            growth["index_codes"] = _slope(sizes, [out["index"][n]["add"]["index_codes_mb"] for n in sizes])
        for s in ("plan", "parse"):
            if len(videos) > 1:
                growth["shard_driver_" + s] = _slope(videos, [out["captions"][n][s]["peak_rss_mb"] - idle_shards
                                                              for n in videos])
        out["growth_exponent_rss_above_idle"] = growth
        out["target_met"] = bool(growth) and all(v is not None and v <= 0.2 for k, v in growth.items()
                                                 if k not in ("index_codes", "shard_driver_parse"))
        out["target_met_less_mapped_codes"] = bool(growth) and all(
            v is not None and v <= 0.2 for k, v in growth.items()
            if k not in ("index_codes", "shard_driver_parse", "build", "add", "search", "mine"))
    finally:
        if not a.work:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
