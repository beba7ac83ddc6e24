"""Ray job entry for embedding, index building and mining, and a search command.

  python -m cluster.index embed  shards=<shard set URL> model_tag=<tag> embed.checkpoint=<export dir>
  python -m cluster.index build  shards=<shard set URL> model_tag=<tag> [build.factory=IVF1024,PQ32 ...]
  python -m cluster.index add    shards=<shard set URL> model_tag=<tag>      # new embedding shards only
  python -m cluster.index mine   shards=<shard set URL> model_tag=<tag> mine.k=5 mine.tau=0.9
  python -m cluster.index search shards=... search.text="crack eggs"  |  search.clip=<sample key>

Each command prints one JSON report (search prints the neighbours). Config: index.config.IndexConfig, from
--config YAML and key=value overrides. Embedding runs in Ray actors (one GPU each when the cluster has GPUs);
partial indices, training samples and mining run as Ray tasks; merging happens on the driver.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time

from common import config as C
from common import fsio
from index.config import IndexConfig

COMMANDS = ("embed", "build", "add", "mine", "search")
_DATA_SHARD = re.compile(r"^shard-(\d{6})\.tar$")


def ray_mapper(ray):
    """mapper(fn, args) running fn as one Ray task per argument tuple, results in order."""
    remotes = {}

    def mapper(fn, args):
        if fn not in remotes:
            remotes[fn] = ray.remote(num_cpus=1)(fn)
        return ray.get([remotes[fn].remote(*a) for a in args])

    return mapper


def _ray(cfg: IndexConfig):
    from cluster.runtime import init_ray

    return init_ray(cfg.ray_address or None, num_cpus=cfg.num_cpus or None)


def data_shards(shards_url: str) -> list[str]:
    """Finished data shards (their stats file exists, contract 2), in name order."""
    names = set(fsio.listdir(shards_url))
    return [n for n in sorted(names) if _DATA_SHARD.match(n) and n[: -len(".tar")] + ".stats.json" in names]


def run_embed(cfg: IndexConfig, ray=None) -> dict:
    from index import embshards

    if not cfg.shards:
        raise C.ConfigError("embed needs shards=<shard set URL>")
    if not cfg.embed.checkpoint:
        raise C.ConfigError("embed needs embed.checkpoint=<pretrain export dir>")
    ray = ray or _ray(cfg)
    emb_dir = cfg.embeddings_url()
    fsio.makedirs(emb_dir)
    todo, done = [], []
    for shard in data_shards(cfg.shards):
        name = embshards.name_for(shard)
        marked = fsio.exists(embshards.stats_url(emb_dir, name))
        (done if marked and not cfg.embed.overwrite else todo).append(shard)
    report = {"embeddings": emb_dir, "already_done": len(done), "embedded": 0, "samples": 0, "failures": {}}
    if todo:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n_actors = cfg.embed.actors or (max(1, int(gpus / cfg.embed.gpus_per_actor)) if gpus else 2)
        n_actors = min(n_actors, len(todo))
        opts = {"num_cpus": 1, "num_gpus": cfg.embed.gpus_per_actor if gpus else 0}
        actor_cls = ray.remote(EmbedWorker)
        actors = [actor_cls.options(**opts).remote(cfg.embed.checkpoint, cfg.embed.batch_size, bool(gpus))
                  for _ in range(n_actors)]
        pool = ray.util.ActorPool(actors)
        t0 = time.time()
        for stats in pool.map_unordered(lambda a, s: a.embed.remote(cfg.shards, s, emb_dir, cfg.model_tag), todo):
            report["embedded"] += 1
            report["samples"] += stats["samples"]
            for k, v in stats["failures"].items():
                report["failures"][k] = report["failures"].get(k, 0) + v
        report["wall_seconds"] = round(time.time() - t0, 3)
        for a in actors:
            ray.kill(a)
    C.dump(cfg, fsio.join(emb_dir, "config.yaml"))
    return report


class EmbedWorker:
    """Holds one model; embeds whole data shards (wrapped as a Ray actor by run_embed)."""

    def __init__(self, checkpoint: str, batch_size: int, use_gpu: bool):
        from index.embed import ShardEmbedder

        self.embedder = ShardEmbedder(checkpoint, batch_size, device="cuda" if use_gpu else "cpu")

    def embed(self, shards_url: str, shard: str, emb_dir: str, model_tag: str) -> dict:
        return self.embedder.embed_shard(shards_url, shard, emb_dir, model_tag)


def run_build(cfg: IndexConfig, incremental: bool, ray=None) -> dict:
    from index import build

    ray = ray or _ray(cfg)
    emb_dir, url = cfg.embeddings_url(), cfg.index_url()
    if incremental:
        report = build.add(cfg.build, emb_dir, url, mapper=ray_mapper(ray))
    else:
        report = build.build(cfg.build, emb_dir, url, seed=cfg.seed, mapper=ray_mapper(ray))
    C.dump(cfg, fsio.join(url, "config.yaml"))
    return report


def run_mine(cfg: IndexConfig, ray=None) -> dict:
    from index import mining

    ray = ray or _ray(cfg)
    m = cfg.mine
    result = mining.mine(cfg.index_url(), m.k, m.tau, m.search_k, m.clips_per_task, cfg.search.nprobe,
                         mapper=ray_mapper(ray), put=ray.put)
    out = cfg.table_url()
    mining.write_table(out, result)
    C.dump(cfg, out + ".config.yaml")
    return {k: v for k, v in result.items() if k != "table"} | {"table": out, "clips_in_table": len(result["table"])}


def run_search(cfg: IndexConfig) -> str:
    from index.search import Searcher, format_hits

    s = cfg.search
    if bool(s.text) == bool(s.clip):
        raise C.ConfigError("search needs exactly one of search.text=<query> or search.clip=<sample key>")
    searcher = Searcher(cfg.index_url(), nprobe=s.nprobe)
    if s.clip:
        query = searcher.clip_vector(s.clip)
        what = f"clip {s.clip}"
    else:
        from index.embed import encode_texts, recorded_checkpoint

        checkpoint = cfg.embed.checkpoint or recorded_checkpoint(searcher.meta.embeddings)
        query = encode_texts(checkpoint, [s.text])[0]
        what = f"text {s.text!r}"
    hits = searcher.search(query, s.k)[0]
    return f"{len(hits)} neighbours of {what} in {searcher.url} ({searcher.meta.count} clips)\n" + format_hits(hits)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = C.parse(IndexConfig, rest, description=f"cluster.index {command}")
    if command == "search":
        print(run_search(cfg))
        return 0
    if command == "embed":
        report = run_embed(cfg)
    elif command in ("build", "add"):
        report = run_build(cfg, incremental=command == "add")
    else:
        report = run_mine(cfg)
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
