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

import collections
import json
import logging
import os
import re
import sys
import time

if __package__ in (None, ""):  # run as a script (ray job submit -- python cluster/index.py): import the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli
from common import config as C
from common import fsio, heap
from index.config import IndexConfig

COMMANDS = ("embed", "build", "add", "mine", "search")
_DATA_SHARD = re.compile(r"^shard-(\d{6})\.tar$")
log = logging.getLogger("cluster.index")


def ray_mapper(ray, window: int | None = None):
    """mapper(fn, args) running fn as one Ray task per argument tuple, yielding results in order, one at a time.
    At most `window` tasks (default: cluster.runtime.tasks_ahead) are submitted ahead of the result being read, so
    the object store holds a window of results, not all of them; a large bytes argument that every task shares
    (the trained index) is put in the object store once, not once a task."""
    from cluster.runtime import tasks_ahead

    remotes = {}

    def mapper(fn, args):
        if fn not in remotes:
            remotes[fn] = ray.remote(num_cpus=1)(fn)
        ahead = window or tasks_ahead(ray)
        shared: dict = {}

        def once(x):
            if isinstance(x, (bytes, bytearray)) and len(x) > 1 << 20:
                if id(x) not in shared:
                    shared[id(x)] = (x, ray.put(x))  # x kept alive: its id stays its own
                return shared[id(x)][1]
            return x

        def results():
            todo, pending = iter(args), collections.deque()
            for a in todo:
                pending.append(remotes[fn].remote(*map(once, a)))
                if len(pending) >= ahead:
                    break
            while pending:
                out = ray.get(pending.popleft())
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(remotes[fn].remote(*map(once, nxt)))
                yield out

        return results()

    return mapper


def _ray(cfg: IndexConfig):
    from cluster.runtime import init_ray

    return init_ray(cfg.ray_address or None, num_cpus=cfg.num_cpus or None)


def data_shards(shards_url: str) -> list[str]:
    """Finished data shards (their stats file exists, contract 2), in name order."""
    names = set(fsio.listdir(shards_url))
    return [n for n in sorted(names) if _DATA_SHARD.match(n) and n[: -len(".tar")] + ".stats.json" in names]


def plan_embed(cfg: IndexConfig) -> tuple[list[str], list[str], str]:
    """(data shards to embed, those already embedded, the export's key), checked before any cluster starts.

    The tag's embeddings belong to one export: shards embedded by another are refused (StaleEmbeddings) unless
    embed.overwrite=true re-embeds every shard; they are never mixed."""
    from index import embshards
    from index.errors import StaleEmbeddings
    from pretrain.export_ref import Export

    cfg.validate("embed")
    if not fsio.exists(cfg.shards):
        raise C.ConfigError(f"shard set [{cfg.shards}]: not found (shards= names the output of cluster.shard)")
    shards = data_shards(cfg.shards)
    if not shards:
        raise C.ConfigError(f"shard set [{cfg.shards}]: holds no finished data shard (shard-NNNNNN.tar with its "
                            f".stats.json); run cluster.shard first")
    source = Export.of(cfg.embed.checkpoint)
    export = source.key
    # the export loads here, once, before any cluster starts: a truncated or mismatched one is the user's one
    # error line, not every embedding actor's traceback
    source.load_model()
    emb_dir = cfg.embeddings_url()
    complete = {name: stats for name, stats in embshards.list_shards(emb_dir)[0]}
    if not cfg.embed.overwrite:
        made_by = {str(st.get("export") or "") for st in complete.values()} - {export}
        if made_by:
            raise StaleEmbeddings(
                f"model tag [{cfg.model_tag}]: {emb_dir} holds embeddings of export {sorted(made_by)[0] or 'unrecorded'}"
                f", not of {cfg.embed.checkpoint} (export {export}); re-embed with embed.overwrite=true or use "
                f"another model_tag")
    todo, done = [], []
    for shard in shards:
        marked = embshards.name_for(shard) in complete
        (done if marked and not cfg.embed.overwrite else todo).append(shard)
    return todo, done, export


def run_embed(cfg: IndexConfig, ray=None) -> dict:
    todo, done, export = plan_embed(cfg)
    emb_dir = cfg.embeddings_url()
    report = {"embeddings": emb_dir, "export": export, "already_done": len(done), "embedded": 0, "samples": 0,
              "failures": {}}
    if not todo:  # finished work: nothing is written, the records stay byte-identical
        log.info("every shard of %s is embedded by export %s already: nothing to do", cfg.shards, export)
        return report
    ray = ray or _ray(cfg)
    fsio.makedirs(emb_dir)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n_actors = cfg.embed.actors or (max(1, int(gpus / cfg.embed.gpus_per_actor)) if gpus else 2)
    n_actors = min(n_actors, len(todo))
    opts = {"num_cpus": 1, "num_gpus": cfg.embed.gpus_per_actor if gpus else 0}
    actor_cls = ray.remote(EmbedWorker)
    actors = [actor_cls.options(**opts).remote(cfg.embed.checkpoint, cfg.embed.batch_size, bool(gpus))
              for _ in range(n_actors)]
    pool = ray.util.ActorPool(actors)
    t0 = time.time()
    for stats in pool.map_unordered(lambda a, s: a.embed.remote(cfg.shards, s, emb_dir, cfg.model_tag, export),
                                    todo):
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

    def embed(self, shards_url: str, shard: str, emb_dir: str, model_tag: str, export: str) -> dict:
        return self.embedder.embed_shard(shards_url, shard, emb_dir, model_tag, export)


def _need_embeddings(cfg: IndexConfig) -> str:
    from index import embshards

    emb_dir = cfg.embeddings_url()
    if not embshards.list_shards(emb_dir)[0]:
        raise C.ConfigError(f"embeddings [{emb_dir}]: no complete embedding shard (model_tag={cfg.model_tag}); "
                            f"run `cluster.index embed` first")
    return emb_dir


def run_build(cfg: IndexConfig, incremental: bool, ray=None) -> dict:
    from index import build, store

    cfg.validate("add" if incremental else "build")
    emb_dir, url = _need_embeddings(cfg), cfg.index_url()
    if incremental:
        prev = store.read_meta(url)  # NoIndex before any cluster starts
        todo, _, _ = build.plan(emb_dir, skip_names={s["name"] for s in prev.shards}, dim=prev.dim)
        build.check_export(prev, emb_dir, url)
        if not todo:
            log.info("index %s holds every embedding shard already: nothing to add", url)
            return {"index": url, "version": prev.version, "count": prev.count, "shards_added": 0,
                    "already_built": True}
        report = build.add(cfg.build, emb_dir, url, mapper=ray_mapper(ray or _ray(cfg)))
    else:
        done = build.existing(cfg.build, emb_dir, url)
        if done is not None:
            log.info("index %s holds every embedding shard already (version %d): nothing to do; "
                     "build.rebuild=true replaces it", url, done["version"])
            return done
        report = build.build(cfg.build, emb_dir, url, seed=cfg.seed, mapper=ray_mapper(ray or _ray(cfg)))
    C.dump(cfg, fsio.join(url, "config.yaml"))
    return report


_MINED_WITH = ("index_version", "k", "tau", "search_k", "nprobe", "export")


def run_mine(cfg: IndexConfig, ray=None) -> dict:
    from common import pseudo_table
    from index import build, mining, store

    cfg.validate("mine")
    m, url, out = cfg.mine, cfg.index_url(), cfg.table_url()
    meta = store.read_meta(url)  # NoIndex before any cluster starts
    build.check_export(meta, meta.embeddings, url)
    want = {"index_version": meta.version, "k": m.k, "tau": m.tau, "search_k": m.search_k,
            "nprobe": cfg.search.nprobe, "export": meta.extra.get("export", "")}
    if fsio.exists(out) and not m.overwrite:
        old = pseudo_table.read_manifest(out)  # an older format is refused here, naming mine.overwrite
        have = {k: old.get(k) for k in _MINED_WITH}
        if have == want and old.get("captions"):
            log.info("table %s was mined from this index version with these settings: nothing to do", out)
            return {k: v for k, v in old.items() if k != "parts"} | {
                "table": out, "parts": len(old["parts"]), "clips_in_table": old["counts"].get("with_positives", 0),
                "already_mined": True}
        differ = sorted(k for k in _MINED_WITH if have[k] != want[k]) or ["captions"]
        raise C.ConfigError(f"pseudo-positive table [{out}]: mined with other {', '.join(differ)} "
                            f"({ {k: have.get(k) for k in differ} }); mine.overwrite=true replaces it, mine.out= "
                            f"writes another")
    if fsio.exists(out) and not fsio.exists(fsio.join(out, pseudo_table.MANIFEST)) and \
            fsio.filesystem(out)[0].isfile(fsio.filesystem(out)[1]):
        fsio.remove(out)  # a legacy one-file table, replaced (mine.overwrite=true) by a table folder
    ray = ray or _ray(cfg)
    shards = cfg.shards if not cfg.shards or "://" in cfg.shards else os.path.abspath(cfg.shards)
    result = mining.mine(url, out, m.k, m.tau, m.search_k, m.clips_per_task, cfg.search.nprobe,
                         mapper=ray_mapper(ray), shards=shards)
    C.dump(cfg, fsio.join(out, "config.yaml"))
    return result | {"table": out}


def run_search(cfg: IndexConfig) -> str:
    from index import build
    from index.search import Searcher, format_hits

    s = cfg.validate("search").search
    searcher = Searcher(cfg.index_url(), nprobe=s.nprobe)
    build.check_export(searcher.meta, searcher.meta.embeddings, searcher.url)
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


def help_text() -> str:
    return C.parser(IndexConfig, __doc__, prog="python -m cluster.index {%s}" % ",".join(COMMANDS)
                    ).format_help()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(help_text())
        return 0
    if not argv or argv[0] not in COMMANDS:
        got = f"unknown command {argv[0]!r}" if argv else "no command"
        raise C.ConfigError(f"command [{argv[0] if argv else ''}]: {got}; use one of {', '.join(COMMANDS)} "
                            f"(python -m cluster.index --help)")
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = C.parser(IndexConfig, f"cluster.index {command}", prog=f"python -m cluster.index {command}").parse_args(rest)
    cfg = C.load(IndexConfig, args.config, args.overrides)
    if command != "embed":  # the drivers that read shard after shard (embed's work is the model's: left alone)
        heap.return_large_frees()
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
    sys.exit(cli.run(main))
